"""The trio Coremachine: serialised sends, subscriptions over the log, pipes, replicas, close."""

from __future__ import annotations

import threading
from collections import deque

import pytest
import trio
import trio.testing

from corelog.errors import NotWritable
from corelog.machine import Coremachine, Machine
from corelog.machine.errors import EventNotAccepted
from corelog.replication import memory_pair, replicate
from tests.test_interpreter import COUNTER, COUNTER_IMPL


async def test_readme_scenario_and_concurrent_sends(store):
    cm = Coremachine(store.get("m"), COUNTER, **COUNTER_IMPL)
    await cm.send("START", 0)
    returned: list[int] = []

    async def worker():
        for _ in range(20):
            snap = await cm.send("INCREMENT")
            returned.append(snap.context["counter"])

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(worker)
    assert cm.context["counter"] == 1000 and len(cm.history) == 1002
    # log order == the order in which sends returned; nothing lost, nothing doubled
    assert [e.context["counter"] for e in cm.history[2:]] == returned == list(range(1, 1001))
    with pytest.raises(EventNotAccepted):
        await cm.send("START", 1)
    assert len(cm.history) == 1002


async def test_durable_sends_run_in_a_thread(make_store):
    s = make_store(sync=True)
    cm = Coremachine(s.get("m"), COUNTER, **COUNTER_IMPL)
    assert cm._offload
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await cm.send("START", 0)
        for _ in range(20):
            await cm.send("INCREMENT")
        nursery.cancel_scope.cancel()
    assert cm.context["counter"] == 20 and ticks > 20  # the event loop kept running during fsyncs


async def test_subscribe_replays_then_follows(store):
    cm = Coremachine(store.get("m"), COUNTER, **COUNTER_IMPL)
    await cm.send("START", 0)
    for _ in range(5):
        await cm.send("INCREMENT")
    seen = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def reader():
                async for entry in cm.subscribe(from_index=3):
                    seen.append(entry.index)
                    if entry.index == 9:
                        return

            nursery.start_soon(reader)
            await trio.sleep(0.01)
            assert seen == [3, 4, 5, 6]
            for _ in range(3):
                await cm.send("INCREMENT")
    assert seen == list(range(3, 10))


async def test_slow_consumer_does_not_make_the_writer_buffer(store):
    cm = Coremachine(store.get("m"), COUNTER, **COUNTER_IMPL)
    await cm.send("START", 0)
    got = []

    async def slow():
        async for snap in cm:
            got.append(snap.context["counter"])
            if len(got) % 100 == 0:
                await trio.sleep(0.001)
            if len(got) == 2000:
                return

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            await trio.sleep(0)
            for _ in range(2000):
                await cm.send("INCREMENT")
            # the writer is done long before the reader: what is pending lives in the log only
            assert len(cm._waits) <= 1 and len(got) < 2000
            assert largest_container(cm) < 10  # no queue, list or buffer grew with the events
    assert got == list(range(1, 2001))


def largest_container(cm) -> int:
    """The longest list/dict/set/deque the runtime holds (outside the stored definition)."""
    sizes = [0]
    core = cm._face.core
    objs = [
        cm.__dict__,
        {n: getattr(cm._face, n) for n in type(cm._face).__slots__},
        {n: getattr(core, n) for n in core.__slots__ if n != "__weakref__"},
    ]
    for obj in objs:
        for v in obj.values():
            if isinstance(v, list | dict | set | tuple | deque) and not hasattr(v, "_fields"):
                sizes.append(len(v))  # (a named tuple, e.g. the recorded head, is a fixed-size record)
    sizes.append(len(cm.log._waiters or ()))  # wake-ups parked on the log: one per waiting subscriber
    return max(sizes)


async def test_pipes_and_close(store):
    cm = Coremachine(store.get("m"), COUNTER, **COUNTER_IMPL)
    events_tx, events_rx = trio.open_memory_channel(0)
    snaps_tx, snaps_rx = trio.open_memory_channel(0)
    out = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cm.pipe_to, snaps_tx)
            await trio.sleep(0)
            nursery.start_soon(cm.pipe_from, events_rx)
            async with events_tx:
                await events_tx.send(("START", 10))
                await events_tx.send("INCREMENT")
                await events_tx.send({"type": "STOP"})
            async for snap in snaps_rx:
                out.append((snap.value, snap.context["counter"]))
                if len(out) == 3:
                    await cm.aclose()  # ends pipe_to, which closes snaps_tx
    assert out == [("running", 10), ("running", 11), ("idle", 11)]
    with pytest.raises(trio.ClosedResourceError):
        await cm.send("START", 1)


class Gate:
    """Holds every durable commit of ``cm`` in a worker thread (as the store writer runs one) until
    ``release`` is set."""

    def __init__(self, cm, monkeypatch):
        self.started, self.release = threading.Event(), threading.Event()

        async def gated(core, entry, expected):
            def commit():
                self.started.set()
                assert self.release.wait(10)
                return core.append_locked(entry, expected)

            return await trio.to_thread.run_sync(commit, abandon_on_cancel=False)

        monkeypatch.setattr(type(cm._face.core), "append_async_locked", gated)

    async def appending(self):
        while not self.started.is_set():
            await trio.sleep(0.001)


async def test_cancel_while_waiting_records_nothing_cancel_while_appending_completes(store, monkeypatch):
    cm = Coremachine(store.get("m"), COUNTER, **COUNTER_IMPL, offload=True)
    await cm.send("START", 0)
    gate = Gate(cm, monkeypatch)
    results = []
    scopes = [trio.CancelScope(), trio.CancelScope()]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def sender(scope):
                with scope:
                    results.append(await cm.send("INCREMENT"))

            nursery.start_soon(sender, scopes[0])
            await gate.appending()  # the first send is appending in its thread
            nursery.start_soon(sender, scopes[1])
            await trio.testing.wait_all_tasks_blocked()  # the second waits for its turn
            for scope in scopes:
                scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
    # the append in progress ran to its end and was committed (and returned); the waiting one did nothing
    assert [s.context["counter"] for s in results] == [1]
    assert len(cm.history) == 3 and cm.context["counter"] == 1 and cm.history[-1].context == cm.context
    assert (await cm.send("INCREMENT")).context["counter"] == 2


async def test_aclose_fails_waiting_sends_clearly_and_ends_subscribers(store, monkeypatch):
    cm = Coremachine(store.get("m"), COUNTER, **COUNTER_IMPL, offload=True)
    await cm.send("START", 0)
    gate = Gate(cm, monkeypatch)
    outcomes = []
    ended = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def sender():
                try:
                    outcomes.append((await cm.send("INCREMENT")).context["counter"])
                except trio.ClosedResourceError as exc:
                    outcomes.append(str(exc))

            async def reader():
                async for _ in cm.subscribe(0):
                    pass
                ended.append(True)

            nursery.start_soon(reader)
            nursery.start_soon(sender)
            await gate.appending()
            nursery.start_soon(sender)
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(cm.aclose)  # waits for the send being recorded; the two waiting ones fail
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
    assert len(cm.history) == 3 and ended == [True]
    assert outcomes[0] == 1 and len(outcomes) == 3
    assert all("closed while this send waited" in o for o in outcomes[1:])
    async for _ in cm:
        raise AssertionError("a closed machine yields nothing")
    with pytest.raises(trio.ClosedResourceError):
        await cm.send("INCREMENT")


async def test_truncate_rewinds_subscribers(store):
    cm = Coremachine(store.get("m"), COUNTER, **COUNTER_IMPL)
    await cm.send("START", 0)
    for _ in range(4):
        await cm.send("INCREMENT")
    seen = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def reader():
                async for e in cm.subscribe(0):
                    seen.append((e.index, e.event.type if e.event else None))
                    if e.index == 4 and e.event.type == "START":
                        return

            nursery.start_soon(reader)
            await trio.sleep(0.01)
            assert len(seen) == 6
            cm.truncate(3)
            await cm.send("STOP")
            await cm.send("START", 9)
    assert seen[6:] == [(3, "STOP"), (4, "START")]  # replayed from the cut on
    assert cm.context["counter"] == 9


async def test_coremachine_on_a_read_only_store_polls(tmp_path):
    from corelog import Store

    with Store(tmp_path / "s", sync=False) as ws, Store(tmp_path / "s", readonly=True) as rs:
        m = Machine(ws.get("m"), COUNTER, **COUNTER_IMPL)
        m.send("START", 0)
        viewer = Coremachine(rs.get("m"))
        seen = []
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:

                async def follow():
                    async for snap in viewer:
                        seen.append(snap.context["counter"])
                        if len(seen) == 3:
                            return

                nursery.start_soon(follow)
                await trio.testing.wait_all_tasks_blocked()  # the follower waits at the head
                for _ in range(3):
                    m.send("INCREMENT")  # as another process would: no callback reaches the viewer
        assert seen == [1, 2, 3] and viewer.context["counter"] == 3
        await viewer.aclose()


def test_coremachine_needs_trio(store):
    with pytest.raises(RuntimeError, match="inside trio"):
        Coremachine(store.get("m"), COUNTER, **COUNTER_IMPL)


async def test_cancelled_send_leaves_log_and_snapshot_consistent(make_store):
    s = make_store(sync=True)
    cm = Coremachine(s.get("m"), COUNTER, **COUNTER_IMPL)
    await cm.send("START", 0)
    for _ in range(30):
        with trio.move_on_after(0.0001):
            await cm.send("INCREMENT")
        # either the entry was appended and the snapshot shows it, or neither happened
        assert cm.context["counter"] == len(cm.history) - 2


async def test_replica_coremachine_follows_apply_from_another_thread(make_store):
    ws, rs = make_store("w"), make_store("r")
    wlog = ws.get("m")
    writer = Coremachine(wlog, COUNTER, **COUNTER_IMPL)
    await writer.send("START", 0)
    rlog = rs.get(key=wlog.key)
    rlog.apply(wlog.proof(0, wlog.length))
    calls = []
    counting = {"actions": {k: lambda c, e, k=k: calls.append(k) for k in COUNTER_IMPL["actions"]}}
    reader = Coremachine(rlog, COUNTER, **counting)
    with pytest.raises(NotWritable, match="replica"):
        await reader.send("INCREMENT")  # before any work: no action ran
    assert calls == [] and rlog.length == 2 and reader.context["counter"] == 0
    seen = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def follow():
                async for snap in reader:
                    seen.append(snap.context["counter"])
                    if len(seen) == 6:
                        return

            nursery.start_soon(follow)
            await trio.sleep(0)
            for batch in (1, 3, 2):
                for _ in range(batch):
                    await writer.send("INCREMENT")
                have = rlog.contiguous_length
                # replication commits in a worker thread: the wake-up crosses threads
                await trio.to_thread.run_sync(rlog.apply, wlog.proof(have, wlog.length, have=have))
    assert seen == [1, 2, 3, 4, 5, 6] and reader.context["counter"] == 6 and reader.at_head


async def test_replica_coremachine_yields_replicated_snapshots(make_store):
    ws, rs = make_store("w"), make_store("r")
    writer = Coremachine(ws.get("m"), COUNTER, **COUNTER_IMPL)
    await writer.send("START", 0)
    rlog = rs.get(key=writer.log.key)
    a, b = memory_pair()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: replicate(a, ws, initiator=True))
            nursery.start_soon(lambda: replicate(b, rs, initiator=False))
            while rlog.contiguous_length < 2:
                await trio.sleep(0.005)
            reader = Coremachine(rlog)
            assert reader.state == "running"
            with pytest.raises(NotWritable):
                await reader.send("INCREMENT")
            seen = []

            async def follow():
                async for snap in reader:
                    seen.append(snap.context["counter"])
                    if len(seen) == 5:
                        return

            nursery.start_soon(follow)
            for _ in range(5):
                await writer.send("INCREMENT")
            while len(seen) < 5:
                await trio.sleep(0.005)
            nursery.cancel_scope.cancel()
    assert seen == [1, 2, 3, 4, 5]


async def test_a_send_takes_its_free_turn_without_waiting_but_a_failing_one_still_yields(store):
    """With offload, a free turn is taken without a checkpoint (append_async checkpoints before
    writing); a send that fails before its append must still let other tasks run."""
    cm = Coremachine(store.get("m"), COUNTER, **COUNTER_IMPL, offload=True)
    await cm.send("START", 0)
    ran: list[int] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def other() -> None:
                ran.append(1)

            nursery.start_soon(other)
            for _ in range(30):  # (trio may run a batch's tasks in either order: one yield is a coin flip)
                with pytest.raises(EventNotAccepted):
                    await cm.send("NOPE")
            assert ran == [1]  # the failing sends were scheduling points
    assert len(cm.history) == 2
    assert (await cm.send("INCREMENT")).context["counter"] == 1
