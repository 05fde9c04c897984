"""The fleet's one scheduler: delayed transitions and invoked services of every machine, and their recovery."""

from __future__ import annotations

import threading
import time

import pytest

from corelog import Store
from corelog.machine import Fleet, MachineError
from corelog.machine import _fleet_store as fs

T0 = 1_700_000_000_000

WAITER = {
    "id": "waiter",
    "initial": "idle",
    "states": {
        "idle": {"on": {"START": "waiting"}},
        "waiting": {"after": {"100": "expired"}, "on": {"ANSWER": "answered", "POKE": "waiting"}},
        "expired": {},
        "answered": {},
    },
}
FETCH = {
    "id": "fetch",
    "initial": "idle",
    "context": {"user": None, "error": None},
    "states": {
        "idle": {"on": {"GO": "loading"}},
        "loading": {
            "invoke": {
                "src": "fetchUser",
                "input": {"id": 42},
                "retry": {"attempts": 3, "backoff": 1},
                "onDone": {"target": "ready", "actions": "save"},
                "onError": {"target": "failed", "actions": "fail"},
            }
        },
        "ready": {},
        "failed": {},
    },
}
FETCH_ACTIONS = {"save": lambda c, e: {"user": e.data}, "fail": lambda c, e: {"error": e.data}}


def until(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return False


def test_timers_fire_once_from_one_scheduler_and_cancelled_ones_never(tmp_path):
    now = [T0]
    with Fleet(Store(tmp_path / "s", sync=False), clock=lambda: now[0]) as f:
        f.register("waiter", WAITER)
        for i in range(50):
            f.send(f"w{i}", "START")
        f.send("w0", "ANSWER")  # leaves the state: its timer is cancelled
        now[0] += 60
        f.send("w1", "POKE")  # a self-transition keeps the timer (no re-entry)
        assert f.snapshot("w1").timers == {"xstate.after.100.waiter.waiting": T0 + 100}
        assert f.scheduler.pending >= 50 and threading.active_count() < 20  # no thread per machine
        now[0] += 50
        assert until(lambda: f.snapshot("w49").value == "expired")
        assert until(lambda: all(f.snapshot(f"w{i}").value == "expired" for i in range(1, 50)))
        time.sleep(0.1)
        assert f.snapshot("w0").value == "answered"
        assert [e.event.type for e in f.history("w2") if e.event] == [
            "START",
            "xstate.after.100.waiter.waiting",
        ]
    f.store.close()


def test_pending_timers_survive_a_restart(tmp_path):
    now = [T0]
    store = Store(tmp_path / "s", sync=False)
    with Fleet(store, clock=lambda: now[0]) as f:
        f.register("waiter", WAITER)
        f.send("a", "START")
        f.send("b", "START")
        f.send("b", "ANSWER")
    now[0] += 500  # overdue while nothing ran
    with Fleet(store, clock=lambda: now[0]) as f:
        f.register("waiter", WAITER)
        assert f.recovered == (1, 0)
        assert until(lambda: f.snapshot("a").value == "expired")
        assert f.snapshot("b").value == "answered"
    store.close()


def test_invoked_service_retries_then_its_outcome_is_an_event(tmp_path):
    calls: list = []

    def flaky(inp, context, key):
        calls.append((inp, key))
        if len(calls) < 3:
            raise ConnectionError("try again")
        return {"id": inp["id"], "name": "Ada"}  # the key is the same on every retry

    with Fleet(Store(tmp_path / "s", sync=False)) as f:
        f.register("fetch", FETCH, FETCH_ACTIONS, services={"fetchUser": flaky})
        f.send("u", "GO")
        assert until(lambda: f.snapshot("u").value == "ready")
        assert f.snapshot("u").context["user"] == {"id": 42, "name": "Ada"} and len(calls) == 3
        assert len({key for _, key in calls}) == 1 and calls[0][1] == "0:1:0.fetch.loading"  # fork 0, entry 1
    f.store.close()
    with Fleet(Store(tmp_path / "t", sync=False)) as f:
        f.register("fetch", FETCH, FETCH_ACTIONS, services={"fetchUser": lambda inp, ctx, key: 1 / 0})
        f.send("u", "GO")
        assert until(lambda: f.snapshot("u").value == "failed")
        assert f.snapshot("u").context["error"] == {
            "error": "ZeroDivisionError",
            "message": "division by zero",
        }
    f.store.close()
    with pytest.raises(MachineError, match="fetchUser"):
        Fleet(Store(tmp_path / "x", sync=False)).register("fetch", FETCH, FETCH_ACTIONS)


def test_an_invocation_in_flight_at_close_runs_again_on_open(tmp_path):
    gate, started = threading.Event(), threading.Event()

    def stuck(inp, ctx, key):
        started.set()
        gate.wait(10)
        return "late"

    store = Store(tmp_path / "s", sync=False)
    with Fleet(store) as f:
        f.register("fetch", FETCH, FETCH_ACTIONS, services={"fetchUser": stuck})
        f.send("u", "GO")
        assert started.wait(10)
    gate.set()  # its outcome arrives after the close: dropped, nothing recorded
    time.sleep(0.05)
    with Fleet(store) as f:
        f.register("fetch", FETCH, FETCH_ACTIONS, services={"fetchUser": lambda inp, ctx, key: "again"})
        assert f.recovered == (0, 1)
        assert until(lambda: f.snapshot("u").value == "ready")
        assert f.snapshot("u").context["user"] == "again"
    store.close()


RESTARTER = {
    "id": "r",
    "initial": "idle",
    "states": {
        "idle": {"on": {"START": "waiting"}},
        "waiting": {"after": {"100": "expired"}, "on": {"RESTART": {"target": "waiting", "reenter": True}}},
        "expired": {},
    },
}


def test_a_commit_during_the_recovery_scan_keeps_the_timer_it_re_armed(tmp_path, monkeypatch):
    now = [T0]
    store = Store(tmp_path / "s", sync=False)
    with Fleet(store, clock=lambda: now[0]) as f:
        f.register("r", RESTARTER)
        f.send("a", "START")  # due T0 + 100
    f = Fleet(store, clock=lambda: now[0]).start()
    scan = fs.iter_index
    racer: list[threading.Thread] = []

    def restart() -> None:
        now[0] = T0 + 50
        f.send("a", "RESTART")  # re-armed: due T0 + 150

    def scan_with_a_send(txn, dbs, start=""):
        # `register` below recovers the kind's timers from this scan: a send (another thread) that
        # commits while the scan runs must not have its new due time overwritten by the scan's row
        if not racer:
            racer.append(threading.Thread(target=restart))
            racer[0].start()
            racer[0].join(0.3)  # the fleet holds the send back until the scan is over
        yield from scan(txn, dbs, start)

    monkeypatch.setattr(fs, "iter_index", scan_with_a_send)
    f.register("r", RESTARTER)
    racer[0].join(10)
    monkeypatch.undo()
    assert f.snapshot("a").timers == {"xstate.after.100.r.waiting": T0 + 150}
    now[0] = T0 + 120  # the old due time: nothing fires
    time.sleep(0.1)
    assert f.snapshot("a").value == "waiting"
    now[0] = T0 + 160
    assert until(lambda: f.snapshot("a").value == "expired", 3)
    f.close()
    store.close()


def test_registering_a_kind_again_does_not_run_its_running_invocations_twice(tmp_path):
    gate, calls = threading.Event(), []

    def stuck(inp, ctx, key):
        calls.append(key)
        gate.wait(10)
        return "once"

    with Fleet(Store(tmp_path / "s", sync=False)) as f:
        f.register("fetch", FETCH, FETCH_ACTIONS, services={"fetchUser": stuck})
        f.send("u", "GO")
        assert until(lambda: len(calls) == 1)
        # registered again while running: recovers the kind, but this process already runs `u`'s service
        f.register("fetch", FETCH, FETCH_ACTIONS, services={"fetchUser": stuck})
        assert f.recovered == (0, 0)
        gate.set()
        assert until(lambda: f.snapshot("u").value == "ready")
        f.register("fetch", FETCH, FETCH_ACTIONS, services={"fetchUser": stuck})  # nothing left to run
        time.sleep(0.05)
        assert calls == ["0:1:0.fetch.loading"] and f.recovered == (0, 0)
    f.store.close()
