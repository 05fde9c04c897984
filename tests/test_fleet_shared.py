"""A Fleet and Machine/Coremachine objects on the same ``fleet:<id>`` log, at once.

The README says ``Machine`` accepts fleet logs. The fleet writes its machines' blocks in its own
part of the store writer, beside the per-log core that every Machine/Coremachine shares, so the
two must never overwrite (or silently drop) each other's entries: every acknowledged send is in
the log, in an order consistent with what each sender saw, and the history replays.
"""

from __future__ import annotations

import threading
import time

import pytest
import trio

from corelog import Store
from corelog.cli._inspect import _replay
from corelog.machine import Coremachine, Fleet, HeadMoved, Machine, Statechart, decode_entry
from corelog.machine import _fleet_shared as fleet_shared

from .test_fleet import CHAT, CHAT_IMPL

DEADLINE = 60.0  # seconds for a whole concurrent run (each finishes in well under a second or two)


def _recorded(log, start: int = 0) -> dict[tuple[str, int], int]:
    """(src, i) of every MSG entry -> the ``turns`` its entry recorded, checking each source's order."""
    out: dict[tuple[str, int], int] = {}
    last: dict[str, int] = {}
    for index in range(start, log.length):
        e = decode_entry(index, log[index])
        if e.kind == "header" or e.event is None or e.event.type != "MSG":
            continue
        src, i = e.event.data["src"], e.event.data["i"]
        assert (src, i) not in out, f"{(src, i)} recorded twice"
        assert i > last.get(src, -1), f"{src} {i} recorded after {last[src]}: not in the sender's order"
        last[src] = i
        out[(src, i)] = e.context["turns"]
    return out


def _check_history(log, acked: dict[tuple[str, int], int], total: int, start: int = 0) -> None:
    """Every acknowledged send is in the log with the snapshot its sender got; the log replays."""
    rec = _recorded(log, start)
    missing = sorted(a for a in acked if a not in rec)
    assert not missing, f"{len(missing)} acknowledged sends are not in the log: {missing[:10]}"
    assert len(rec) == len(acked) == total  # and nothing recorded that was not acknowledged
    wrong = [(a, turns, rec[a]) for a, turns in acked.items() if rec[a] != turns]
    assert not wrong, f"a sender got a snapshot other than the one recorded: {wrong[:5]}"
    assert log.audit().ok
    assert _replay(log, lambda d: Statechart(d, CHAT_IMPL), lambda i: None) is None  # audit --replay


def _chat_fleet(tmp_path, **kw) -> tuple[Store, Fleet]:
    """A fresh sync=False store with a Fleet of the chat kind (tests/test_fleet.py)."""
    store = Store(tmp_path / "s", sync=False)
    f = Fleet(store, **kw)
    f.register("chat", CHAT, CHAT_IMPL)
    return store, f


def _sender(src: str, n: int, send, acked: dict, errors: list) -> threading.Thread:
    def run() -> None:
        for i in range(n):
            try:
                snap = send({"src": src, "i": i})
            except BaseException as exc:  # reported by the test (and then not in the log)
                errors.append((src, exc))
                continue
            acked[(src, i)] = snap.context["turns"]

    return threading.Thread(target=run, name=f"send-{src}")


@pytest.mark.parametrize("turns", [True, False], ids=["taking-turns", "detection-only"])
def test_fleet_and_machines_in_threads_lose_no_acknowledged_send(tmp_path, monkeypatch, turns):
    """Two fleet senders and two Machine objects on one log, each in its own thread.

    ``detection-only``: the fleet does not take the log core's lock (it sees no core), so only
    the checks inside the transaction keep the history whole; a Machine send may then give up
    (HeadMoved, recording nothing) after its retries, never be acknowledged and lost.
    """
    if not turns:
        monkeypatch.setattr(fleet_shared, "cores_of", lambda store, keys: [])
    store, f = _chat_fleet(tmp_path)
    acked: dict[tuple[str, int], int] = {}
    errors: list = []
    n = 200
    with f:
        f.send("c1", "INQUIRY", {"name": "a"})
        log = store.get("fleet:c1")
        m1 = Machine(log, CHAT, actions=CHAT_IMPL)
        m2 = Machine(log, CHAT, actions=CHAT_IMPL)  # a second object on the log: the same core
        threads = [
            _sender("fleet-a", n, lambda d: f.send("c1", "MSG", d), acked, errors),
            _sender("fleet-b", n, lambda d: f.send("c1", "MSG", d), acked, errors),
            _sender("machine-1", n, lambda d: m1.send("MSG", d), acked, errors),
            _sender("machine-2", n, lambda d: m2.send("MSG", d), acked, errors),
        ]
        for t in threads:
            t.start()
        end = time.monotonic() + DEADLINE
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "the senders did not finish in time"
        if turns:
            assert not errors, errors
        assert all(src.startswith("machine") and isinstance(e, HeadMoved) for src, e in errors), errors
        total = len(acked)
        assert total >= 2 * n  # the fleet's sends all went through
        _check_history(log, acked, total)
        # every view agrees on the head: the Machine objects, the fleet, and the fleet's index
        assert m1.context["turns"] == m2.context["turns"] == total
        assert f.snapshot("c1").context["turns"] == total
        assert f.send("c1", "MSG", {"src": "last", "i": 0}).context["turns"] == total + 1
        assert m1.send("MSG", {"src": "last", "i": 1}).context["turns"] == total + 2
        assert f.info("c1").length == log.length - 1  # the index catches up at the fleet's next event
    store.close()


def test_fleet_asend_and_coremachines_in_trio_tasks_lose_no_acknowledged_send(tmp_path):
    store, f = _chat_fleet(tmp_path)
    acked: dict[tuple[str, int], int] = {}
    n = 150

    async def main() -> None:
        log = store.get("fleet:c1")
        offloaded = Coremachine(log, CHAT, actions=CHAT_IMPL, offload=True)  # commits via append_async
        inline = Coremachine(log, CHAT, actions=CHAT_IMPL, offload=False)

        async def run(src: str, send) -> None:
            for i in range(n):
                snap = await send({"src": src, "i": i})
                acked[(src, i)] = snap.context["turns"]

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "fleet-a", lambda d: f.asend("c1", "MSG", d))
                nursery.start_soon(run, "fleet-b", lambda d: f.asend("c1", "MSG", d))
                nursery.start_soon(run, "core-offload", lambda d: offloaded.send("MSG", d))
                nursery.start_soon(run, "core-inline", lambda d: inline.send("MSG", d))
        assert offloaded.context["turns"] == inline.context["turns"] == 4 * n

    with f:
        f.send("c1", "INQUIRY", {"name": "a"})
        trio.run(main)
        log = store.get("fleet:c1")
        _check_history(log, acked, 4 * n)
        assert f.snapshot("c1").context["turns"] == 4 * n
    store.close()


def test_fleet_and_machine_alternating_see_each_others_entries(tmp_path):
    """Strict alternation (deterministic), with the fleet's cached machine evicted and reloaded."""
    store, f = _chat_fleet(tmp_path, cache_size=1)
    seen: list[tuple[int, dict]] = []  # (entry index, event data) of the changes a listener is given
    f.listener("seen", lambda change, services, send: seen.append((change.index, change.event.data)))
    with f:
        f.send("c1", "INQUIRY", {"name": "a"})
        log = store.get("fleet:c1")
        m = Machine(log, CHAT, actions=CHAT_IMPL)
        acked: dict[tuple[str, int], int] = {}
        turns = 0
        for step in range(12):
            turns += 1
            if step % 2 == 0:
                snap = f.send("c1", "MSG", {"src": "fleet", "i": step})
            else:
                snap = m.send("MSG", {"src": "machine", "i": step})
            acked[("fleet" if step % 2 == 0 else "machine", step)] = snap.context["turns"]
            assert snap.value == "open" and snap.context["turns"] == turns
            # both views are the head just recorded, whoever recorded it
            assert m.context["turns"] == turns and m.position == log.length - 1 == turns + 1 and m.at_head
            assert f.snapshot("c1").context == snap.context
            assert dict(m.context) == dict(snap.context) == {"name": "a", "turns": turns}
            if step % 3 == 2:  # evict c1 from the fleet's cache: the next fleet send reloads it from its log
                f.send(f"other{step}", "INQUIRY", {"name": "b"})
                assert "c1" not in f._cache
            # the index row is the fleet's last event's (a Machine's entries do not update it)
            assert f.info("c1").length == (log.length if step % 2 == 0 else log.length - 1)
        _check_history(log, acked, 12)
        assert f.info("c1").state == "open"
        assert f.listeners.wait_idle(10)
        # listeners are called for the fleet's own transitions only, at the entries the fleet recorded
        mine = [(i, dict(data)) for i, data in seen if data.get("src") == "fleet"]
        assert mine == [(2 + step, {"src": "fleet", "i": step}) for step in range(0, 12, 2)]
        assert not [data for _, data in seen if data.get("src") == "machine"]
    # a new fleet and a new Machine both continue from the same head
    with Fleet(store) as f2:
        f2.register("chat", CHAT, CHAT_IMPL)
        assert f2.send("c1", "MSG", {"src": "fleet", "i": 100}).context["turns"] == 13
    assert Machine(store.get("fleet:c1"), CHAT, actions=CHAT_IMPL).context["turns"] == 13
    store.close()


def test_a_machine_whose_log_was_not_told_of_fleet_writes_runs_its_event_again(tmp_path, monkeypatch):
    """The check inside the Machine's compare-and-append, alone: the fleet neither takes turns with
    the core nor tells the open Log of its commits, so the Log's state is stale at every Machine send."""
    monkeypatch.setattr(fleet_shared, "cores_of", lambda store, keys: [])
    store, f = _chat_fleet(tmp_path)
    acked: dict[tuple[str, int], int] = {}
    with f:
        f.send("c1", "INQUIRY", {"name": "a"})
        log = store.get("fleet:c1")
        m = Machine(log, CHAT, actions=CHAT_IMPL)
        monkeypatch.setattr(fleet_shared, "publish", lambda log: None)
        monkeypatch.setattr("corelog.machine._fleet.publish", lambda log: None)
        for i in range(5):
            acked[("fleet", i)] = f.send("c1", "MSG", {"src": "fleet", "i": i}).context["turns"]
            assert log.length == 2 * i + 2  # the Log object still holds the head before the fleet's send
            snap = m.send("MSG", {"src": "machine", "i": i})  # finds the fleet's head, runs again on it
            acked[("machine", i)] = snap.context["turns"]
            assert snap.context["turns"] == 2 * i + 2 and log.length == 2 * i + 4
        _check_history(log, acked, 10)
    store.close()


def test_a_fleet_send_behind_a_machine_send_pending_in_the_same_batch_waits_for_it(tmp_path):
    """The fleet's check for a write of its own batch, not committed yet: deferred to the next batch."""
    store, f = _chat_fleet(tmp_path)
    with f:
        f.send("c1", "INQUIRY", {"name": "a"})
        log = store.get("fleet:c1")
        m = Machine(log, CHAT, actions=CHAT_IMPL)
        deferred = fleet_shared.Shared.check
        calls = []

        def check(self, txn, st, op):
            try:
                deferred(self, txn, st, op)
            except fleet_shared.Deferred:
                calls.append(st.length)
                raise

        with store.batch():  # this thread is the store's writer until the block ends
            assert m.send("MSG", {"src": "machine", "i": 0}).context["turns"] == 1  # pending in the batch
            wait = f.post("c1", "MSG", {"src": "fleet", "i": 0})
            end = time.monotonic() + 10
            while not store._writer._queue and time.monotonic() < end:  # the fleet's part queues behind
                time.sleep(0.001)
            assert store._writer._queue
            fleet_shared.Shared.check = check
        try:
            snap = wait(10)
        finally:
            fleet_shared.Shared.check = deferred
        assert calls == [2]  # it saw the Machine's entry pending after the head (length 2) and waited
        assert snap.context["turns"] == 2 and m.context["turns"] == 2
        _check_history(log, {("machine", 0): 1, ("fleet", 0): 2}, 2)
    store.close()


def test_fleet_after_a_machine_truncated_the_log_continues_from_the_cut(tmp_path):
    store, f = _chat_fleet(tmp_path)
    with f:
        f.send("c1", "INQUIRY", {"name": "a"})
        for i in range(4):
            f.send("c1", "MSG", {"src": "fleet", "i": i})
        log = store.get("fleet:c1")
        m = Machine(log, CHAT, actions=CHAT_IMPL)
        assert m.truncate(3).context["turns"] == 1  # header, INQUIRY, one MSG
        assert f.snapshot("c1").context["turns"] == 1
        snap = f.send("c1", "MSG", {"src": "fleet", "i": 10})
        assert snap.context["turns"] == 2 and log.length == 4 and log.fork == 1
        assert m.send("MSG", {"src": "machine", "i": 0}).context["turns"] == 3
        _check_history(log, {("fleet", 0): 1, ("fleet", 10): 2, ("machine", 0): 3}, 3)
    store.close()


def test_fleet_takes_turns_with_the_log_core_and_never_waits_on_it_for_long(tmp_path, monkeypatch):
    store, f = _chat_fleet(tmp_path)
    with f:
        f.send("c1", "INQUIRY", {"name": "a"})
        log = store.get("fleet:c1")
        m = Machine(log, CHAT, actions=CHAT_IMPL)
        core = m._face.core
        published = []
        real_publish = fleet_shared.publish

        def publish(lg):
            # does the fleet hold the core's lock (taken in its part) while it publishes?
            published.append(core.lock in f._shared.held.values() and core.lock.locked())
            real_publish(lg)

        monkeypatch.setattr("corelog.machine._fleet.publish", publish)
        assert f.send("c1", "MSG", {"src": "fleet", "i": 0}).context["turns"] == 1
        assert published == [True] and not core.lock.locked()
        # the core's lock held (as by a Machine send under way, or a slow action): the fleet defers
        # the event once, waits a little for it, then records it without the lock (checked in the txn)
        deferrals = []
        real_check = fleet_shared.Shared.check

        def check(self, txn, st, op):
            try:
                real_check(self, txn, st, op)
            except fleet_shared.Deferred:
                deferrals.append(op.yielded)
                raise

        monkeypatch.setattr(fleet_shared.Shared, "check", check)
        with core.lock:
            t = time.monotonic()
            snap = f.post("c1", "MSG", {"src": "fleet", "i": 1})(10)
            assert time.monotonic() - t < 5
        assert deferrals == [True] and published == [True, False]
        assert snap.context["turns"] == 2 and m.context["turns"] == 2
        assert m.send("MSG", {"src": "machine", "i": 0}).context["turns"] == 3
        _check_history(log, {("fleet", 0): 1, ("fleet", 1): 2, ("machine", 0): 3}, 3)
    store.close()


def test_evicted_and_reloaded_machines_shared_with_machines_in_threads(tmp_path):
    """Five machines through a fleet caching two (so each is evicted and reloaded over and over),
    three of them also written by Machine objects, from three threads."""
    store, f = _chat_fleet(tmp_path, cache_size=2)
    acked: dict[tuple[str, int], int] = {}
    errors: list = []
    n = 150
    with f:
        for k in range(5):
            f.send(f"c{k}", "INQUIRY", {"name": "a"})
        logs = [store.get(f"fleet:c{k}") for k in range(5)]
        ms = [Machine(logs[k], CHAT, actions=CHAT_IMPL) for k in range(3)]
        threads = [
            _sender("fleet-send", n, lambda d: f.send(f"c{d['i'] % 5}", "MSG", d), acked, errors),
            _sender("fleet-post", n, lambda d: f.post(f"c{d['i'] * 7 % 5}", "MSG", d)(30), acked, errors),
            _sender("machine", n, lambda d: ms[d["i"] % 3].send("MSG", d), acked, errors),
        ]
        for t in threads:
            t.start()
        end = time.monotonic() + DEADLINE
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "the senders did not finish in time"
        assert not errors, errors
        recorded: dict[tuple[str, int], int] = {}
        for log in logs:
            rec = _recorded(log)
            assert not set(rec) & set(recorded)
            recorded.update(rec)
            assert log.audit().ok
            assert _replay(log, lambda d: Statechart(d, CHAT_IMPL), lambda i: None) is None
            mid = log.name.removeprefix("fleet:")
            assert f.snapshot(mid).context["turns"] == len(rec) == log.length - 2
        assert recorded == acked  # every acknowledged send, with the snapshot its sender got
        assert all(m.context["turns"] == logs[k].length - 2 for k, m in enumerate(ms))
    store.close()
