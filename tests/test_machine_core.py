"""One runtime per log: shared cores across objects and threads, compare-and-append, no leaks,
and values handed out that are not the log."""

from __future__ import annotations

import copy
import gc
import json
import threading

import msgpack
import pytest
import trio

from corelog import Store
from corelog.cli._inspect import _replay
from corelog.machine import Coremachine, Event, FrozenDict, HeadMoved, Machine, Snapshot, Statechart, thaw
from corelog.machine._core import live_cores
from corelog.machine._entries import encode_transition
from tests.test_interpreter import COUNTER, COUNTER_IMPL

ITEMS = {
    "id": "items",
    "initial": "on",
    "context": {"items": [], "last": None, "meta": {"n": 0}},
    "states": {"on": {"on": {"ADD": {"actions": "add"}, "POKE": {"actions": "poke"}}}},
}


def add(ctx, ev):
    ctx["items"].append(ev.data)  # keeps the event's own data object in the new context
    ctx["last"] = ev.data
    ctx["meta"]["n"] += 1


def poke(ctx, ev):
    ev.data["x"] = 1  # an action trying to change the event it was given


ITEMS_IMPL = {"actions": {"add": add, "poke": poke}}


def replays(log, impl) -> bool:
    found = _replay(log, lambda d: Statechart(d, **impl), lambda i: None)
    assert found is None, found
    return True


def test_two_machines_on_one_log_driven_from_two_threads_replay(store):
    log = store.get("c")
    a = Machine(log, COUNTER, **COUNTER_IMPL)
    a.send("START", 0)
    b = Machine(store.get("c"), json.loads(json.dumps(COUNTER)), actions=dict(COUNTER_IMPL["actions"]))
    assert a._face.core is b._face.core  # one core per log, whatever the objects
    start = threading.Barrier(2)
    errors = []

    def run(m):
        try:
            start.wait(10)
            for _ in range(1000):
                m.send("INCREMENT")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(m,)) for m in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert len(log) == 2 + 2000  # header, START, 2,000 increments: nothing interleaved
    assert a.context["counter"] == b.context["counter"] == 2000
    assert [e.context["counter"] for e in a.history[2:]] == list(range(1, 2001))
    assert log.audit().ok and replays(log, COUNTER_IMPL)


def raw_increment(log, counter: int) -> bytes:
    return encode_transition(
        Event("INCREMENT", None, 1), Snapshot("running", {"running": True, "counter": counter}), 0
    )


def test_a_writer_bypassing_the_runtime_is_caught_up_with(store):
    log = store.get("c")
    m = Machine(log, COUNTER, **COUNTER_IMPL)
    m.send("START", 0)
    interfere = [2]  # the first two runs of the action find a raw append racing them

    def increment(ctx, ev):
        if interfere[0]:
            interfere[0] -= 1
            log.append(raw_increment(log, ctx["counter"] + 1))  # lands before the send's append
        ctx["counter"] += 1

    racy = Machine(log, COUNTER, actions={**COUNTER_IMPL["actions"], "increment": increment})
    snap = racy.send("INCREMENT")
    # the two raw entries, then the send run again on the head they made: nothing lost or doubled
    assert snap.context["counter"] == 3 and len(log) == 5 and m.context["counter"] == 3
    assert replays(log, COUNTER_IMPL)

    def always(ctx, ev):
        log.append(raw_increment(log, ctx["counter"] + 1))
        ctx["counter"] += 1

    hopeless = Machine(log, COUNTER, actions={**COUNTER_IMPL["actions"], "increment": always})
    before = len(log)
    with pytest.raises(HeadMoved, match="nothing was recorded"):
        hopeless.send("INCREMENT")
    assert len(log) == before + 8  # only the 8 raw entries; the event itself was not recorded
    assert m.context["counter"] == 3 + 8 and replays(log, COUNTER_IMPL)


def test_dropped_machines_leave_nothing_behind(store):
    log = store.get("m")
    keep = Machine(log, COUNTER, **COUNTER_IMPL)
    keep.send("START", 0)
    for _ in range(5000):
        assert Machine(log, COUNTER, **COUNTER_IMPL).context["counter"] == 0  # opened, dropped unclosed
    assert not log._watchers and live_cores(store) == 1
    assert keep.send("INCREMENT").context["counter"] == 1
    # machines on many logs, dropped: their cores go with them
    for i in range(200):
        Machine(store.get(f"x{i}"), COUNTER, **COUNTER_IMPL).send("START", i)
    assert live_cores(store) == 1
    del keep
    assert live_cores(store) == 0 and not log._watchers


async def test_coremachines_and_their_subscribers_leave_nothing_behind(store):
    log = store.get("m")
    keep = Coremachine(log, COUNTER, **COUNTER_IMPL)
    await keep.send("START", 0)
    with trio.fail_after(20):
        for _ in range(500):  # opened, sent to, dropped without aclose()
            cm = Coremachine(log, COUNTER, **COUNTER_IMPL)
            await cm.send("INCREMENT")
        del cm
        assert not log._watchers and live_cores(store) == 1
        # subscribers wait on the log's change version; closing their machines ends them and
        # leaves no waiter on the log
        seen = []
        async with trio.open_nursery() as nursery:
            cms = [Coremachine(log, COUNTER, **COUNTER_IMPL) for _ in range(50)]

            async def follow(c):
                async for snap in c:
                    seen.append(snap.context["counter"])

            for c in cms:
                nursery.start_soon(follow, c)
            await trio.testing.wait_all_tasks_blocked()
            assert len(log._waiters) == 50
            await keep.send("INCREMENT")
            await trio.testing.wait_all_tasks_blocked()
            for c in cms:
                await c.aclose()
        assert seen == [501] * 50 and not log._waiters
    del keep, cms, c
    gc.collect()
    assert not log._watchers and not log._waiters and live_cores(store) == 0


async def test_coremachines_and_a_thread_share_one_log(store):
    log = store.get("c")
    a = Coremachine(log, COUNTER, **COUNTER_IMPL)
    b = Coremachine(log, COUNTER, **COUNTER_IMPL, offload=True)
    await a.send("START", 0)
    m = Machine(log, COUNTER, **COUNTER_IMPL)

    def thread_sends():
        for _ in range(200):
            m.send("INCREMENT")

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:

            async def sends(cm):
                for _ in range(200):
                    await cm.send("INCREMENT")

            for cm in (a, a, b):
                nursery.start_soon(sends, cm)
            nursery.start_soon(trio.to_thread.run_sync, thread_sends)
    assert len(log) == 2 + 800 and a.context["counter"] == b.context["counter"] == m.context["counter"] == 800
    assert [e.context["counter"] for e in a.history[2:]] == list(range(1, 801))
    assert replays(log, COUNTER_IMPL)


def test_contexts_snapshots_and_event_data_handed_out_are_not_the_log(store):
    log = store.get("i")
    m = Machine(log, ITEMS, **ITEMS_IMPL)
    payload = {"tags": ["a"]}
    snap = m.send("ADD", payload)
    payload["tags"].append("mutated")  # the caller's own object: changing it later changes nothing
    payload["new"] = 1
    for ctx in (m.context, snap.context, m.snapshot.context):
        assert isinstance(ctx, dict) and isinstance(ctx, FrozenDict)
        with pytest.raises(TypeError, match="read-only"):
            ctx["items"] = []
        with pytest.raises(TypeError, match="read-only"):
            ctx["items"].append(1)
        with pytest.raises(TypeError, match="read-only"):
            ctx["meta"].update(n=100)
    mine = copy.deepcopy(m.context)  # a mutable copy is one call away
    mine["items"].append("x")
    assert thaw(m.context) == {"items": [{"tags": ["a"]}], "last": {"tags": ["a"]}, "meta": {"n": 1}}
    assert json.loads(json.dumps(m.context)) == thaw(m.context)
    m.send("ADD", 2)
    assert m.history[-1].context == {"items": [{"tags": ["a"]}, 2], "last": 2, "meta": {"n": 2}}
    assert m.history[1].event.data == {"tags": ["a"]}
    # an action cannot change the event it is given: it raises and nothing is recorded
    with pytest.raises(TypeError, match="read-only"):
        m.send("POKE", {"y": 1})
    assert len(log) == 3
    # a snapshot from the history (the cursor) is read-only too
    past = m.backward()
    with pytest.raises(TypeError):
        past.context["meta"]["n"] = 9
    m.live()
    assert replays(log, ITEMS_IMPL)


# a chart with every kind of extra a snapshot carries: a pending timer, a running invocation and a
# history state that remembers a child
EXTRAS = {
    "id": "x",
    "initial": "on",
    "context": {"n": 0},
    "states": {
        "on": {
            "initial": "a",
            "invoke": {"id": "job", "src": "work", "input": {"k": 1}},
            "states": {
                "a": {"after": {"100000": "b"}, "on": {"INC": {"actions": "inc"}, "NEXT": "b"}},
                "b": {"on": {"INC": {"actions": "inc"}}},
                "hist": {"type": "history"},
            },
            "on": {"OFF": "off"},
        },
        "off": {"on": {"ON": "on.hist"}},
    },
}
EXTRAS_IMPL = {"actions": {"inc": lambda c, e: {"n": c["n"] + 1}}}


def _try_mutations(snap: Snapshot) -> int:
    """Try every way to change the snapshot's extras; each must raise. Returns how many were tried."""
    attempts = [
        lambda: snap.timers.clear(),
        lambda: snap.timers.__setitem__("xstate.after.1.x.on.a", 0),
        lambda: snap.invocations.clear(),
        lambda: snap.history.__setitem__("x.on.hist", ["on.a"]),
    ]
    attempts += [lambda v=v: v.__setitem__("input", {"k": 2}) for v in snap.invocations.values()]
    attempts += [lambda v=v: v.append("on.a") for v in snap.history.values()]
    for attempt in attempts:
        with pytest.raises(TypeError, match="read-only"):
            attempt()
    return len(attempts)


def test_history_timers_and_invocations_handed_out_are_read_only(store):
    """Clearing a handed-out snapshot's timers (or invocations, or history) must not change what
    the next entry records: they were the runtime's own dicts."""
    log = store.get("x")
    m = Machine(log, EXTRAS, **EXTRAS_IMPL)
    first = m.snapshot
    assert first.timers and first.invocations
    assert _try_mutations(first) == 5
    assert _try_mutations(m.send("INC")) == 5
    m.send("NEXT")
    off = m.send("OFF")
    assert off.history and not off.timers and _try_mutations(off) == 5
    back = m.send("ON")
    assert back.matches("on.b")  # the history state remembered b
    # what was recorded is what the interpreter computed, whatever was attempted on the copies
    recorded = [m.history[i].snapshot for i in range(1, len(m.history))]
    assert recorded[0].timers and recorded[0].invocations["job"]["input"] == {"k": 1}
    assert recorded[2].history == {"x.on.hist": ["on.b"]}
    assert sum(_try_mutations(past) for past in recorded) >= 20
    # the pure interpreter hands out read-only extras as well
    chart = Statechart(EXTRAS, **EXTRAS_IMPL)
    pure = chart.transition(chart.initial(0), Event("INC", None, 1))
    assert isinstance(pure.timers, FrozenDict) and isinstance(pure.invocations, FrozenDict)
    assert replays(log, EXTRAS_IMPL)


def test_the_definition_is_copied_on_load(store):
    definition = json.loads(json.dumps(COUNTER))
    m = Machine(store.get("c"), definition, **COUNTER_IMPL)
    definition["states"]["idle"]["on"]["START"]["target"] = "idle"
    definition["context"]["counter"] = 99
    assert m.send("START", 5).value == "running" and m.chart.definition == COUNTER
    assert m.definition == COUNTER
    with pytest.raises(TypeError):
        m.definition["id"] = "other"
    header = msgpack.unpackb(m.log.get(0))
    assert header["definition"] == COUNTER


def test_sync_stores_share_a_core_only_within_one_store(tmp_path):
    with Store(tmp_path / "a", sync=False) as s1, Store(tmp_path / "b", sync=False) as s2:
        m1 = Machine(s1.get("c"), COUNTER, **COUNTER_IMPL)
        m2 = Machine(s2.get("c"), COUNTER, **COUNTER_IMPL)
        assert m1._face.core is not m2._face.core
        m1.send("START", 1)
        assert m2.state == "idle"


def test_sends_inside_a_store_batch_commit_together_or_not_at_all(store):
    m = Machine(store.get("c"), COUNTER, **COUNTER_IMPL)
    commits = store._writer.commits
    with store.batch():
        m.send("START", 0)
        for _ in range(5):
            m.send("INCREMENT")
        assert m.context["counter"] == 5
    assert store._writer.commits == commits + 1 and len(m.log) == 7 and m.context["counter"] == 5
    with pytest.raises(RuntimeError, match="rolled back"):
        with store.batch():
            m.send("INCREMENT")
            assert m.context["counter"] == 6
            raise RuntimeError("rolled back")
    assert len(m.log) == 7 and m.context["counter"] == 5  # the head follows the log back
    assert m.send("INCREMENT").context["counter"] == 6 and replays(m.log, COUNTER_IMPL)
