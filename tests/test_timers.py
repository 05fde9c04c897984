"""Delayed transitions and invoked services on the runtime: recorded, durable, driven from the log.

Expected values follow XState v5 (stately.ai/docs/delayed-transitions, /docs/invoke):
a timer starts on entering its state and is cancelled on leaving it, the first
due wins a race, an invocation is stopped when its state is left, its outcome
is an event (``xstate.done.actor.<id>`` / ``xstate.error.actor.<id>``).
"""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corelog import Store
from corelog.machine import Coremachine, Event, FakeClock, Machine, Statechart, TimerHeap
from corelog.machine._interpreter import Snapshot, stamp_invocations
from corelog.machine._scheduler import due_timers
from corelog.machine.errors import EventNotAccepted
from tests.test_statecharts import INV_IMPL, INVOKING, TIMED

T0 = 1_700_000_000_000
TIMED_CHART_KW = {"guards": {"isFast": lambda ctx, ev: ctx["fast"]}, "delays": {"SHORT": 500}}


def timed_chart():
    return Statechart(TIMED, **TIMED_CHART_KW)


def test_due_timers_fire_once_and_are_recorded(store):
    clock = FakeClock(T0)
    m = Machine(store.get("t"), timed_chart(), clock=clock)
    assert m.snapshot.timers == {
        "xstate.after.1000.t.waiting": T0 + 1000,
        "xstate.after.SHORT.t.waiting": T0 + 500,
    }
    assert m.run_due_timers() == []
    clock.advance(499)
    assert m.run_due_timers() == []
    clock.advance(1)
    fired = m.run_due_timers()
    assert [s.value for s in fired] == ["short"]
    assert m.history[-1].event.type == "xstate.after.SHORT.t.waiting" and m.history[-1].time == T0 + 500
    assert m.snapshot.timers == {"xstate.after.200.t.short": T0 + 700}  # the 1000 ms timer was cancelled
    assert m.run_due_timers() == []
    clock.advance(200)
    assert [s.value for s in m.run_due_timers()] == ["waiting"]  # re-entered: both timers re-armed
    assert m.snapshot.timers["xstate.after.SHORT.t.waiting"] == T0 + 1200


def test_leaving_the_state_cancels_its_timers(store):
    clock = FakeClock(T0)
    m = Machine(store.get("t"), timed_chart(), clock=clock)
    m.send("LEAVE")
    clock.advance(5000)
    assert m.run_due_timers() == [] and m.state == "away" and m.snapshot.timers == {}


def test_timers_are_rearmed_on_reopen_and_fire_once_after_downtime(tmp_path):
    clock = FakeClock(T0)
    with Store(tmp_path / "s", sync=False) as s:
        Machine(s.get("t"), timed_chart(), clock=clock)
    clock.advance(60_000)  # the process was down at both due times
    with Store(tmp_path / "s", sync=False) as s:
        m = Machine(s.get("t"), timed_chart(), clock=clock)
        assert m.snapshot.timers["xstate.after.SHORT.t.waiting"] == T0 + 500  # from the recorded entry
        fired = m.run_due_timers()
        # the earliest fires (once); it leaves `waiting`, which cancels the 1000 ms one; `short`'s own
        # 200 ms timer starts at the firing time, so it is not due yet
        assert [s.value for s in fired] == ["short"] and len(m.history) == 2
        assert m.snapshot.timers == {"xstate.after.200.t.short": T0 + 60_200}
    with Store(tmp_path / "s", sync=False) as s:
        m = Machine(s.get("t"), timed_chart(), clock=clock)
        assert m.run_due_timers() == [] and len(m.history) == 2  # nothing fires twice


def test_timer_heap_orders_many_machines_and_drops_stale_entries():
    chart = timed_chart()
    heap = TimerHeap()
    snaps = {}
    for i in range(50):
        snaps[i] = chart.initial(T0 + i)
        heap.sync(i, snaps[i])
    assert len(heap) == 100 and heap.next_due() == T0 + 500
    # machine 0 leaves `waiting`: its timers are cancelled
    heap.sync(0, chart.transition(snaps[0], Event("LEAVE", None, T0 + 1)))
    due = heap.pop_due(T0 + 510)
    assert [(k, d) for k, _, d in due] == [(i, T0 + 500 + i) for i in range(1, 11)]
    assert all(e == "xstate.after.SHORT.t.waiting" for _, e, _ in due)
    assert heap.next_due() == T0 + 511
    heap.remove(11)
    assert heap.next_due() == T0 + 512


def test_timer_heap_breaks_ties_by_event_name_like_due_timers():
    # armed "wait" first, then "deadline", both due at the same ms: the heap fires them in the order a
    # Machine does (due_timers: due, then event name), not in arming order
    snap = Snapshot(
        "racing", {}, False, None, {}, {"xstate.after.wait.j.r": T0, "xstate.after.deadline.j.r": T0}
    )
    heap = TimerHeap()
    heap.sync("m", snap)
    assert (
        [e for _, e, _ in heap.pop_due(T0)]
        == [e for _, e in due_timers(snap, T0)]
        == [
            "xstate.after.deadline.j.r",
            "xstate.after.wait.j.r",
        ]
    )


def trio_clock_ms():
    return int(trio.current_time() * 1000)


def run_trio(fn):
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def test_coremachine_runs_timers_itself(store):
    async def main():
        cm = Coremachine(store.get("t"), timed_chart(), clock=trio_clock_ms)
        seen = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cm.run)
            async for snap in cm:
                seen.append((snap.value, trio_clock_ms()))
                if snap.value == "short" and len(seen) >= 3:
                    nursery.cancel_scope.cancel()
        t0 = cm.history[0].time
        assert [(v, t - t0) for v, t in seen[:3]] == [("short", 500), ("waiting", 700), ("short", 1200)]

    run_trio(main)


def test_invocation_outcomes_are_recorded_and_left_states_cancel_them(store):
    async def main():
        calls = []

        async def fetch_user(input, context, key):
            calls.append(key)
            await trio.sleep(1)
            return {"name": "Ada", "id": input["id"]}

        cm = Coremachine(store.get("w"), Statechart(INVOKING, **INV_IMPL), clock=trio_clock_ms)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cm.run, {"fetchUser": fetch_user})
            await trio.sleep(0.5)
            await cm.send("CANCEL")  # leaves `loading`: the service is cancelled
            await trio.sleep(5)
            assert cm.state == "idle" and len(cm.history) == 2
            await cm.send("RETRY")  # re-enters: a new invocation, a new key
            await trio.sleep(1.5)
            assert cm.state == "ready" and cm.context["user"] == {"name": "Ada", "id": 42}
            nursery.cancel_scope.cancel()
        assert len(calls) == 2 and calls[0] != calls[1]
        assert calls == ["0:0:0.w.loading", "0:2:0.w.loading"]
        assert [e.event.type for e in cm.history[1:]] == ["CANCEL", "RETRY", "xstate.done.actor.0.w.loading"]

    run_trio(main)


def test_retries_with_backoff_then_error(store):
    d = {**INVOKING, "states": {**INVOKING["states"]}}
    d["states"]["loading"] = {
        **INVOKING["states"]["loading"],
        "invoke": {
            **INVOKING["states"]["loading"]["invoke"],
            "retry": {"attempts": 3, "backoff": 100, "factor": 2},
        },
    }

    async def main():
        tries = []

        async def flaky(input, context, key):
            tries.append((trio_clock_ms(), key))
            if len(tries) < 3:
                raise ConnectionError("down")
            return "ok"

        cm = Coremachine(store.get("a"), Statechart(d, **INV_IMPL), clock=trio_clock_ms)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cm.run, {"fetchUser": flaky})
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
        assert cm.state == "ready" and cm.context["user"] == "ok"
        t0 = tries[0][0]
        assert [t - t0 for t, _ in tries] == [0, 100, 300] and len({k for _, k in tries}) == 1

        async def broken(input, context, key):
            raise ValueError("no such user")

        cm2 = Coremachine(store.get("b"), Statechart(d, **INV_IMPL), clock=trio_clock_ms)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cm2.run, {"fetchUser": broken})
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
        assert cm2.state == "failed"
        assert cm2.context["error"] == {"error": "ValueError", "message": "no such user"}

    run_trio(main)


def test_a_started_invocation_without_outcome_runs_again_after_a_restart(store):
    keys = []

    async def hangs(input, context, key):
        keys.append(key)
        await trio.sleep_forever()

    async def works(input, context, key):
        keys.append(key)
        return "done"

    async def first():
        cm = Coremachine(store.get("w"), Statechart(INVOKING, **INV_IMPL), clock=trio_clock_ms)
        with trio.move_on_after(3):  # "crash": the driver stops with the service still running
            await cm.run({"fetchUser": hangs})

    async def second():
        cm = Coremachine(store.get("w"), Statechart(INVOKING, **INV_IMPL), clock=trio_clock_ms)
        assert list(cm.snapshot.invocations) == ["0.w.loading"]
        with trio.move_on_after(3):
            await cm.run({"fetchUser": works})
        assert cm.state == "ready" and cm.context["user"] == "done"

    run_trio(first)
    run_trio(second)
    assert keys == ["0:0:0.w.loading", "0:0:0.w.loading"]  # the same idempotency key


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["LEAVE", "RETRY", "CANCEL", "tick", "done", "error"]), st.integers(0, 1500)
        ),
        max_size=12,
    )
)
def test_replaying_a_recorded_log_reproduces_every_snapshot(tmp_path_factory, steps):
    clock = FakeClock(T0)
    d = {"id": "r", "type": "parallel", "states": {"t": TIMED, "w": INVOKING}}
    d = {
        **d,
        "states": {
            "t": {k: v for k, v in TIMED.items() if k != "id"},
            "w": {k: v for k, v in INVOKING.items() if k != "id"},
        },
    }
    d["states"]["t"]["context"] = d["states"]["w"]["context"] = None
    d["states"]["t"].pop("context")
    d["states"]["w"].pop("context")
    d["context"] = {"fast": False, "user": None, "error": None}
    chart = Statechart(d, guards=TIMED_CHART_KW["guards"], delays={"SHORT": 500}, actions=INV_IMPL["actions"])
    with Store(tmp_path_factory.mktemp("r") / "s", sync=False) as s:
        m = Machine(s.get("r"), chart, clock=clock)
        for kind, dt in steps:
            clock.advance(dt)
            try:
                if kind == "tick":
                    m.run_due_timers()
                elif kind in ("done", "error"):
                    m.send(f"xstate.{kind}.actor.0.r.w.loading", {"n": dt})
                else:
                    m.send(kind)
            except EventNotAccepted:
                pass
        rows = list(m.history)
        fork = m.log.fork
    snap = chart.snapshot_from(rows[0].state, rows[0].context, rows[0].done, rows[0].extras)
    assert snap.timers and snap.invocations
    for row in rows[1:]:
        snap = stamp_invocations(chart.transition(snap, row.event), row.index, fork)
        assert (snap.value, dict(snap.context), snap.done) == (row.state, row.context, row.done)
        assert snap.extras() == (row.extras or {})


KILLED_CHILD = """
import sys
import trio
from corelog import Store
from corelog.machine import Coremachine, Statechart
from tests.test_statecharts import INV_IMPL, INVOKING

async def fetch_user(input, context, key):
    print("started", key, flush=True)
    await trio.sleep_forever()

async def main():
    with Store(sys.argv[1], sync=True) as s:
        cm = Coremachine(s.get("w"), Statechart(INVOKING, **INV_IMPL))
        await cm.run({"fetchUser": fetch_user})

trio.run(main)
"""


def test_sigkill_during_an_invocation_then_reopen_completes_it(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, str(tmp_path / "s")], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        line = child.stdout.readline()  # the service is running (its start is recorded)
        assert line.startswith("started "), line
        first_key = line.split()[1]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    keys = []

    async def fetch_user(input, context, key):
        keys.append(key)
        return {"name": "Ada"}

    async def until_ready():
        with Store(tmp_path / "s", sync=True) as s:
            cm = Coremachine(s.get("w"), Statechart(INVOKING, **INV_IMPL))
            assert cm.state == "loading"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cm.run, {"fetchUser": fetch_user})
                with trio.fail_after(10):
                    async for snap in cm:
                        if snap.value == "ready":
                            break
                nursery.cancel_scope.cancel()
            return cm.state, dict(cm.context), [e.event.type for e in cm.history[1:]]

    state, context, events = trio.run(until_ready)
    assert state == "ready" and context["user"] == {"name": "Ada"}
    assert events == ["xstate.done.actor.0.w.loading"]
    assert keys == [first_key] == ["0:0:0.w.loading"]


def test_an_unhandled_event_that_fires_an_always_transition_is_recorded(store):
    d = {
        "initial": "idle",
        "states": {"idle": {"always": {"target": "busy", "guard": "ping"}}, "busy": {}},
    }
    m = Machine(store.get("a"), Statechart(d, guards={"ping": lambda ctx, ev: ev.type == "PING"}))
    try:
        m.send("OTHER")
    except EventNotAccepted:
        pass
    else:
        raise AssertionError("OTHER changes nothing: it must be refused")
    assert len(m.history) == 1  # nothing recorded
    m.send("PING")  # no state handles PING, but the always guard (given PING) passes
    assert m.state == "busy" and [e.event.type for e in m.history[1:]] == ["PING"]
