"""Fleet: many machines in one store, sends from threads and trio, eviction, bad input, listeners."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import trio

from corelog import Store
from corelog.machine import (
    ActionFailed,
    DefinitionMismatch,
    EventNotAccepted,
    Fleet,
    FleetClosed,
    InvalidMachineId,
    Machine,
    UnknownKind,
    UnknownMachine,
    UnserializableContext,
)

CHAT = {
    "id": "chat",
    "initial": "idle",
    "context": {"turns": 0},
    "states": {
        "idle": {"on": {"INQUIRY": {"target": "open", "actions": "name"}}},
        "open": {"on": {"MSG": {"actions": "inc"}, "BOOM": {"actions": "boom"}, "CLOSE": "closed"}},
        "closed": {"type": "final"},
    },
}


def _boom(ctx, ev):
    raise RuntimeError("kaboom")


CHAT_IMPL = {
    "inc": lambda c, e: {"turns": c["turns"] + 1},
    "name": lambda c, e: {"name": (e.data or {}).get("name")},
    "boom": _boom,
}
TICKET = {"id": "ticket", "initial": "new", "states": {"new": {"on": {"ASSIGN": "assigned"}}, "assigned": {}}}


def clock():
    return 1_700_000_000_000


def _state_of_store(store: Store) -> tuple:
    with store._env.begin() as txn:
        meta = sorted((bytes(k), bytes(v)) for k, v in txn.cursor(db=store._dbs.meta))
    return (meta, sorted((i.name, i.length) for i in store.list()))


def test_send_creates_restores_and_is_an_ordinary_machine_log(fleet):
    with fleet:
        s = fleet.send("c1", "INQUIRY", {"name": "ryan"})
        assert s.value == "open" and s.context == {"turns": 0, "name": "ryan"}
        assert fleet.send("c1", "MSG").context["turns"] == 1
        assert fleet.info("c1").kind == "chat" and fleet.info("c1").length == 3
        assert [e.kind for e in fleet.history("c1")] == ["header", "transition", "transition"]
        assert [m.id for m in fleet.machines(state="open")] == ["c1"]
    log = fleet.store.get("fleet:c1")
    assert log.audit().ok and log.length == 3
    m = Machine(log, CHAT, actions=CHAT_IMPL)  # the same log through the ordinary runtime
    assert m.context["turns"] == 1
    m.send("MSG")
    m.close()
    with Fleet(fleet.store, clock=clock) as f2:  # a new fleet restores from the log, appended outside or not
        f2.register("chat", CHAT, CHAT_IMPL)
        assert f2.send("c1", "MSG").context["turns"] == 3
        assert f2.snapshot("c1").context["turns"] == 3


def test_bad_input_is_a_typed_error_and_writes_nothing(tmp_path):
    f = Fleet(Store(tmp_path / "s", sync=False), clock=clock)
    f.register("chat", CHAT, CHAT_IMPL)
    f.register("ticket", TICKET)
    f.listener("l", lambda c, s, send: None)
    with f:
        f.send("c1", "INQUIRY", {"name": "a"}, kind="chat")
        assert f.listeners.wait_idle(10)
        before = _state_of_store(f.store)
        with pytest.raises(UnknownKind):
            f.send("c2", "INQUIRY", kind="nope")
        with pytest.raises(UnknownKind, match="say which kind"):
            f.send("c2", "INQUIRY")  # two kinds: a new machine needs one
        with pytest.raises(UnknownKind, match="is a 'chat'"):
            f.send("c1", "ASSIGN", kind="ticket")
        with pytest.raises(EventNotAccepted):
            f.send("c1", "NOPE")
        with pytest.raises(EventNotAccepted):
            f.send("c3", "MSG", kind="chat")  # a new machine whose first event fails is not created
        with pytest.raises(ActionFailed, match="kaboom") as exc:
            f.send("c1", "BOOM")
        assert isinstance(exc.value.__cause__, RuntimeError)
        with pytest.raises(UnserializableContext):
            f.send("c1", "MSG", {"x": {1, 2}})
        with pytest.raises(UnserializableContext):
            f.send("c1", "MSG", float("nan"))
        for bad in ("", "a\x00b", "x" * 300, 7, "\ud800"):  # (a lone surrogate cannot be stored)
            with pytest.raises(InvalidMachineId):
                f.send(bad, "MSG")  # type: ignore[arg-type]
        with pytest.raises(UnknownMachine):
            f.info("c3")
        assert _state_of_store(f.store) == before
        # a failing send batched with good ones fails alone
        waits = [f.post("c1", "MSG"), f.post("c1", "NOPE"), f.post("c1", "MSG")]
        assert waits[0]().context["turns"] == 1
        with pytest.raises(EventNotAccepted):
            waits[1]()
        assert waits[2]().context["turns"] == 2
    with pytest.raises(FleetClosed):
        f.send("c1", "MSG")
    f.store.close()


def test_threads_and_trio_tasks_across_many_machines(fleet):
    n_machines, per = 60, 15
    with fleet:

        def worker(t):
            for j in range(per):
                for i in range(t, n_machines, 4):
                    fleet.send(f"m{i}", "INQUIRY" if j == 0 else "MSG", {"name": f"u{i}"})

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()

        async def main():
            async with trio.open_nursery() as nursery:
                for i in range(n_machines):

                    async def one(i=i):
                        await fleet.asend(f"t{i}", "INQUIRY", {"name": "x"})
                        for _ in range(per - 1):
                            await fleet.asend(f"t{i}", "MSG")

                    nursery.start_soon(one)

        trio.run(main)
        for t in threads:
            t.join(30)
        for i in range(n_machines):
            assert fleet.snapshot(f"m{i}").context["turns"] == per - 1
            assert fleet.snapshot(f"t{i}").context["turns"] == per - 1
        assert fleet.batches < 2 * n_machines * per  # commits were shared
    assert all(fleet.store.get(f"fleet:t{i}").audit().ok for i in range(0, n_machines, 7))


def test_lru_eviction_keeps_memory_bounded_and_restores(tmp_path):
    with Fleet(Store(tmp_path / "s", sync=False), cache_size=8, clock=clock) as f:
        f.register("chat", CHAT, CHAT_IMPL)
        for r in range(3):
            waits = [f.post(f"m{i}", "INQUIRY" if r == 0 else "MSG", {"name": "n"}) for i in range(200)]
            for w in waits:
                w()
            assert len(f._cache) <= 8
        assert all(f.snapshot(f"m{i}").context["turns"] == 2 for i in range(200))
        assert len(f.machines(kind="chat")) == 200
    f.store.close()


def test_changed_definition_needs_migrate(tmp_path):
    store = Store(tmp_path / "s", sync=False)
    with Fleet(store, clock=clock) as f:
        f.register("chat", CHAT, CHAT_IMPL)
        f.send("c", "INQUIRY", {"name": "a"})
    changed = {**CHAT, "context": {"turns": 0, "v": 2}}
    with Fleet(store, clock=clock) as f:
        f.register("chat", changed, CHAT_IMPL)
        with pytest.raises(DefinitionMismatch, match="migrate=True"):
            f.send("c", "MSG")
    with Fleet(store, clock=clock) as f:
        f.register("chat", changed, CHAT_IMPL, migrate=True)
        assert f.send("c", "MSG").context["turns"] == 1
        assert [e.kind for e in f.history("c")] == ["header", "transition", "header", "transition"]
    assert Machine(store.get("fleet:c"), changed, actions=CHAT_IMPL).context["turns"] == 1
    store.close()


# --- listeners --------------------------------------------------------------------------------


def test_listener_gets_every_change_in_machine_order(fleet):
    fleet.recent_max_rows = 30  # most batches are read back from the durable feed, not from memory
    seen: list = []
    fleet.listener(
        "rec", lambda c, services, send: seen.append((c.id, c.prev.value, c.snapshot.value, c.event.type))
    )
    with fleet:
        for i in range(20):
            fleet.send(f"c{i}", "INQUIRY", {"name": "x"})
        waits = [fleet.post(f"c{i}", "MSG") for _ in range(5) for i in range(20)]
        for w in waits:
            w()
        assert fleet.listeners.wait_idle(10)
    assert len(seen) == 20 * 6 and (fleet._recent_rows <= 30 or len(fleet._recent) == 1)
    for i in range(20):
        mine = [s for s in seen if s[0] == f"c{i}"]
        assert mine[0] == (f"c{i}", "idle", "open", "INQUIRY")
        assert [s[3] for s in mine[1:]] == ["MSG"] * 5


def test_follow_up_sends_commit_with_the_cursor_exactly_once(tmp_path, monkeypatch):
    from corelog.machine import _fleet_store as fs
    from corelog.machine._listeners import _Runner

    store = Store(tmp_path / "s", sync=False)
    f = Fleet(store, clock=clock)
    f.register("chat", CHAT, CHAT_IMPL)
    f.register("ticket", TICKET)
    seqs: dict[str, int] = {}

    def open_ticket(change, services, send):
        if change.event.type == "INQUIRY":
            seqs[change.id] = change.seq
            send(f"ticket-{change.id}", "ASSIGN", kind="ticket")

    def durable(mid: str) -> tuple[int, bool]:
        """(the listener's stored cursor, whether the follow-up's machine exists) as committed now."""
        with store._env.begin() as txn:
            return fs.cursors(txn, store._dbs)["tickets"], fs.index_row(txn, store._dbs, mid) is not None

    # look at the store just before and just after each commit that carries a follow-up; the
    # listener's thread is inside that commit, so no other cursor write of its own is in flight
    observed: list[tuple[str, int, tuple, tuple]] = []
    write = _Runner._write_meta

    def watched(self, puts, deletes, sends=None):
        mid = sends[0].mid if sends else None
        before = durable(mid) if mid else None
        out = write(self, puts, deletes, sends)
        if mid:
            observed.append((mid, seqs[mid[len("ticket-") :]], before, durable(mid)))
        return out

    monkeypatch.setattr(_Runner, "_write_meta", watched)
    f.listener("tickets", open_ticket, kinds=["chat"])
    with f:
        for i in range(10):
            f.send(f"c{i}", "INQUIRY", {"name": "x"}, kind="chat")
        assert f.listeners.wait_idle(10)
        assert {m.id for m in f.machines(kind="ticket", state="assigned")} == {
            f"ticket-c{i}" for i in range(10)
        }
    assert [o[0] for o in observed] == [f"ticket-c{i}" for i in range(10)]
    for mid, seq, (cursor_before, existed), (cursor_after, exists) in observed:
        # one commit made the follow-up's machine AND moved the cursor past its change: a crash
        # leaves both or neither, so the follow-up is never sent twice nor lost
        assert not existed and cursor_before < seq, (mid, seq, cursor_before)
        assert exists and cursor_after >= seq, (mid, seq, cursor_after)
    # a restart redelivers nothing (the cursor moved with the follow-ups): still one entry each
    f2 = Fleet(store, clock=clock)
    f2.register("chat", CHAT, CHAT_IMPL)
    f2.register("ticket", TICKET)
    f2.listener("tickets", open_ticket, kinds=["chat"])
    with f2:
        assert f2.listeners.wait_idle(10)
        assert all(f2.info(f"ticket-c{i}").length == 2 for i in range(10))
    assert len(observed) == 10
    store.close()


def test_failing_listener_retries_then_parks_and_replays(fleet):
    calls: dict[str, int] = {}
    healthy = threading.Event()

    def flaky(change, services, send):
        calls[change.id] = calls.get(change.id, 0) + 1
        if change.id == "bad" and not healthy.is_set():
            raise ConnectionError("smtp down")
        if change.id == "retry" and calls["retry"] < 3:
            raise ConnectionError("try again")

    fleet.listener("mail", flaky, max_attempts=4, backoff=0.001)
    with fleet:
        for mid in ("ok", "retry", "bad", "after"):
            fleet.send(mid, "INQUIRY", {"name": mid})
        assert fleet.listeners.wait_idle(10)
        assert calls == {"ok": 1, "retry": 3, "bad": 4, "after": 1}
        (dead,) = fleet.listeners.dead_letters()
        assert dead["id"] == "bad" and dead["listener"] == "mail" and "smtp down" in dead["error"]
        assert dead["attempts"] == 4
        healthy.set()
        assert fleet.listeners.replay("mail") == 1
        deadline = time.monotonic() + 10
        while fleet.listeners.dead_letters() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fleet.listeners.dead_letters() == [] and calls["bad"] == 5
        assert fleet.listeners.stats()["mail"]["replayed"] == 1


def test_slow_listener_blocks_neither_sends_nor_other_listeners(fleet):
    release = threading.Event()
    fast: list = []
    fleet.listener("slow", lambda c, s, send: release.wait(20))
    fleet.listener("fast", lambda c, s, send: fast.append(c.seq))
    with fleet:
        t0 = time.monotonic()
        for i in range(50):
            fleet.send(f"c{i}", "INQUIRY", {"name": "x"})
        deadline = time.monotonic() + 10
        while len(fast) < 50 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(fast) == 50 and time.monotonic() - t0 < 10
        assert fleet.listeners.stats()["slow"]["delivered"] == 0
        release.set()
        assert fleet.listeners.wait_idle(10)


def test_listener_resumes_from_its_cursor_and_the_feed_is_trimmed(tmp_path):
    store = Store(tmp_path / "s", sync=False)
    got: list = []
    f = Fleet(store, clock=clock)
    f.register("chat", CHAT, CHAT_IMPL)
    f.listener("a", lambda c, s, send: got.append(c.seq))
    with f:
        f.send("x", "INQUIRY", {"name": "x"})
        assert f.listeners.wait_idle(10)
    # listener "a" is away while 30 more changes commit; a second fleet has no listener registered
    with Fleet(store, clock=clock) as f2:
        f2.register("chat", CHAT, CHAT_IMPL)
        for _ in range(30):
            f2.send("x", "MSG")
    f3 = Fleet(store, clock=clock)
    f3.register("chat", CHAT, CHAT_IMPL)
    f3.listener("a", lambda c, s, send: got.append(c.seq))
    with f3:
        assert f3.listeners.wait_idle(10)
        for _ in range(70):
            f3.send("x", "MSG")
        assert f3.listeners.wait_idle(10)
    assert got == list(range(1, 102))
    with store._env.begin() as txn:
        left = sum(1 for k, _ in txn.cursor(db=store._dbs.meta) if bytes(k).startswith(b"fleet/f/"))
    assert left < 101  # rows every listener is done with are deleted
    store.close()


REPLAY_IMPL = {"actions": CHAT_IMPL}  # for `corelog audit --replay tests.test_fleet:REPLAY_IMPL`


def test_a_fleet_machine_replicates_and_audits_by_replay_like_any_machine_log(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from corelog.cli import cli

    path = tmp_path / "s"
    with Fleet(Store(path, sync=False), clock=clock) as f:
        f.register("chat", CHAT, CHAT_IMPL)
        f.send("c1", "INQUIRY", {"name": "ann"})
        for _ in range(5):
            f.send("c1", "MSG")
        log = f.log("c1")
        assert f.store.find(log.discovery_key).key == log.key  # a replication server finds it
        with Store(tmp_path / "replica", sync=False) as other:  # a verified download, as replication does
            replica = other.get(key=log.key)
            replica.apply(log.proof(0, log.length))
            assert replica.length == 7 and replica.audit().ok
            assert Machine(replica).context["turns"] == 5  # a read-only Machine follows the replica
            assert other.find(log.discovery_key) is not None
    f.store.close()
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    result = CliRunner().invoke(
        cli, ["audit", str(path), "fleet:c1", "--replay", "tests.test_fleet:REPLAY_IMPL"]
    )
    assert result.exit_code == 0, result.output


def test_values_handed_out_are_read_only_and_event_data_is_copied(fleet):
    seen = []
    fleet.listener("spy", lambda change, services, send: seen.append(change), start="beginning")
    with fleet:
        data = {"name": "ann", "tags": ["a"]}
        wait = fleet.post("c1", "INQUIRY", data)
        data["name"] = "bob"  # the caller's dict changes after posting: what is recorded does not
        snap = wait()
        assert snap.context["name"] == "ann"
        with pytest.raises(TypeError):
            snap.context["turns"] = 99
        assert fleet.send("c1", "MSG").context["turns"] == 1
        assert fleet.listeners.wait_idle(10)
        with pytest.raises(TypeError):
            seen[-1].snapshot.context["turns"] = 99
        fleet._cache.clear()  # restored from the log: read-only as well
        with pytest.raises(TypeError):
            fleet.snapshot("c1").context["turns"] = 99
        assert fleet.send("c1", "MSG").context["turns"] == 2
    assert [e.event.data for e in fleet.history("c1")[1:]] == [{"name": "ann", "tags": ["a"]}, None, None]
