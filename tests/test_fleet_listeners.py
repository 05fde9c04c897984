"""Fleet listeners that misbehave: BaseExceptions, a delivery thread that dies, Ctrl-C, start="beginning"."""

from __future__ import annotations

import _thread
import logging
import threading
import time

import pytest

from corelog import Store
from corelog.machine import Fleet, MachineError
from corelog.machine._listeners import _Runner

from .test_fleet import CHAT, CHAT_IMPL, clock


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_a_listener_raising_a_base_exception_is_retried_then_parked(fleet, raised, caplog):
    calls: dict[str, int] = {}

    def listener(change, services, send):
        calls[change.id] = calls.get(change.id, 0) + 1
        if change.id == "bad" or (change.id == "flaky" and calls["flaky"] == 1):
            raise raised()

    fleet.listener("base", listener, max_attempts=3, backoff=0.001)
    with caplog.at_level(logging.WARNING, logger="corelog.fleet"), fleet:
        for mid in ("bad", "flaky", "ok"):
            fleet.send(mid, "INQUIRY", {"name": mid})
        assert fleet.listeners.wait_idle(10)  # no wedge: the thread lives on after the BaseException
        stats = fleet.listeners.stats()["base"]
        assert stats == {"cursor": 3, "delivered": 2, "failures": 4, "parked": 1, "replayed": 0}
        assert calls == {"bad": 3, "flaky": 2, "ok": 1}
        (dead,) = fleet.listeners.dead_letters()
        assert dead["id"] == "bad" and dead["attempts"] == 3 and dead["error"].startswith(raised.__name__)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 4 and all(f"raised {raised.__name__}" in m for m in warned)


def test_a_delivery_thread_that_stops_on_an_error_is_raised_by_wait_idle(fleet, monkeypatch, caplog):
    def cannot_write(self, *args, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_Runner, "_park", cannot_write)  # the dead-letter write fails
    fleet.listener("doomed", lambda c, s, send: 1 / 0, max_attempts=1)
    with caplog.at_level(logging.ERROR, logger="corelog.fleet"), fleet:
        fleet.send("c1", "INQUIRY", {"name": "x"})
        t = time.monotonic()
        with pytest.raises(MachineError, match="listener 'doomed' stopped at cursor 0: OSError") as exc:
            fleet.listeners.wait_idle(30)
        assert time.monotonic() - t < 10 and isinstance(exc.value.__cause__, OSError)
    assert any("listener doomed stopped" in r.getMessage() and r.exc_info for r in caplog.records)


def test_ctrl_c_in_the_main_thread_still_interrupts_while_a_listener_is_busy(fleet):
    release = threading.Event()
    fleet.listener("slow", lambda c, s, send: release.wait(20))
    with fleet:
        fleet.send("c1", "INQUIRY", {"name": "x"})
        timer = threading.Timer(0.2, _thread.interrupt_main)  # what Ctrl-C does: KeyboardInterrupt in main
        timer.start()
        try:
            t = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                fleet.listeners.wait_idle(20)
            assert time.monotonic() - t < 10
        finally:
            timer.cancel()
            release.set()
        assert fleet.listeners.wait_idle(10)
        assert fleet.listeners.stats()["slow"]["delivered"] == 1


def test_start_beginning_is_the_oldest_change_the_feed_still_holds(tmp_path):
    store = Store(tmp_path / "s", sync=False)
    got: dict[str, list] = {"first": [], "late": []}

    def fleet(*listeners: tuple[str, str]) -> Fleet:
        f = Fleet(store, clock=clock)
        f.register("chat", CHAT, CHAT_IMPL)
        for name, start in listeners:
            f.listener(name, lambda c, s, send, name=name: got[name].append(c.id), start=start)
        return f

    with fleet() as f:  # no listener known to the store: no feed is written
        f.send("before", "INQUIRY", {"name": "a"})
    with fleet(("first", "beginning")) as f:  # the feed starts here
        f.send("during", "INQUIRY", {"name": "b"})
        assert f.listeners.wait_idle(10)
    with fleet(("first", "now"), ("late", "beginning")) as f:
        f.send("after", "INQUIRY", {"name": "c"})
        assert f.listeners.wait_idle(10)
    # "beginning" is not the store's history: "before" committed while no listener was known
    assert got == {"first": ["during", "after"], "late": ["during", "after"]}
    got["new"] = []
    with fleet(("first", "now"), ("late", "now"), ("new", "now")) as f:
        assert f.listeners.wait_idle(10) and got["new"] == []  # "now": nothing committed before
        f.send("next", "INQUIRY", {"name": "d"})
        assert f.listeners.wait_idle(10) and got["new"] == ["next"]
        assert [e.kind for e in f.history("before")] == ["header", "transition"]  # still in its log
    store.close()
