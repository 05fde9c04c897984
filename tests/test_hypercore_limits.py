"""Connection caps and handshake/idle/write timeouts of ``serve_hypercore`` (parity with ``serve_tcp``).

Silent, trickling or non-reading peers lose their slot in bounded time; connections over the
caps are closed at once; the server keeps serving everyone else. 127.0.0.1 only.
"""

import pytest
import trio
import trio.testing

from corelog.replication.hypercore import HypercoreSession, PeerTimeout, connect_hypercore, serve_hypercore
from corelog.replication.hypercore._secretstream import SecretStream

from ._peers import Attacker, take_every_slot

FAST = {"timeout": 1.0, "handshake_timeout": 1.0}


@pytest.fixture
def served(store):
    log = store.get("w")
    log.append([b"block %d" % i for i in range(100)])
    return store, log


async def syncs(port, log, make_store) -> None:
    replica = make_store().get(key=log.key)
    with trio.fail_after(10):
        await connect_hypercore(replica, "127.0.0.1", port)
    assert replica.contiguous_length == log.length and replica.head().tree_hash == log.head().tree_hash


async def wait_for_errors(errors, n: int) -> None:
    with trio.fail_after(3):  # the handler records an error just after the socket closes
        while len(errors) < n:
            await trio.sleep(0.01)


async def test_connection_cap_refuses_extra_peers_and_silent_hogs_lose_their_slots(served, make_store):
    store, log = served
    errors: list = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_hypercore(
                store, max_connections=2, handler_errors=errors, task_status=task_status, **FAST
            )
        )
        held = await take_every_slot(port, 2)
        # the hogs never close: the server drops them within the handshake timeout ...
        with trio.fail_after(3):
            for s in held:
                assert await s.receive_some(100) == b""
        await wait_for_errors(errors, 2)
        assert all(isinstance(e, PeerTimeout) and "handshake" in str(e) for e in errors), errors
        # ... and then serves again
        await syncs(port, log, make_store)
        nursery.cancel_scope.cancel()


async def test_connection_cap_serves_again_once_hogs_go_away(served, make_store):
    store, log = served
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_hypercore(store, max_connections=2, task_status=task_status)
        )
        held = [await Attacker.connect(port), await Attacker.connect(port)]  # handshaken, then idle
        await trio.sleep(0.1)
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(1):
            assert await extra.receive_some(100) == b""  # over the cap: closed at once
        for a in held:
            await a.sock.aclose()
        await trio.sleep(0.1)
        await syncs(port, log, make_store)
        nursery.cancel_scope.cancel()


async def test_per_peer_cap_keeps_one_address_from_taking_every_slot(served, make_store):
    store, log = served
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_hypercore(store, max_per_peer=2, task_status=task_status)
        )
        held = await take_every_slot(port, 2)  # a third from the same address: refused
        await held[0].aclose()
        await trio.sleep(0.1)
        await syncs(port, log, make_store)  # a freed slot serves again while held[1] keeps its own
        await syncs(port, log, make_store)
        await held[1].aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickling"])
async def test_an_unfinished_handshake_is_dropped_in_bounded_time(served, make_store, trickle):
    """Silence, or the first handshake message one byte every 0.2 s (each well within the 1 s idle
    timeout), ends the connection within the 1 s handshake timeout; the server keeps serving."""
    store, log = served
    errors: list = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_hypercore(store, handler_errors=errors, task_status=task_status, **FAST)
        )
        sock = await trio.open_tcp_stream("127.0.0.1", port)
        hello = SecretStream(True).data_to_send()
        assert len(hello) > 20

        async def trickle_bytes() -> None:
            for i in range(len(hello) - 1):  # never the last byte: the handshake never completes
                await sock.send_all(hello[i : i + 1])
                await trio.sleep(0.2)

        start = trio.current_time()
        async with trio.open_nursery() as inner:
            if trickle:
                inner.start_soon(trickle_bytes)
            with trio.fail_after(3):
                try:
                    assert await sock.receive_some(100) == b""
                except trio.BrokenResourceError:
                    pass
            inner.cancel_scope.cancel()
        assert trio.current_time() - start < 2.5
        await wait_for_errors(errors, 1)
        assert isinstance(errors[0], PeerTimeout) and "handshake in 1 s" in str(errors[0])
        await syncs(port, log, make_store)
        nursery.cancel_scope.cancel()


async def test_a_peer_that_reads_nothing_is_dropped(served):
    """A write that makes no progress for ``timeout`` seconds ends the connection."""
    store, _ = served
    ours, theirs = trio.testing.lockstep_stream_pair()  # send_all waits for the peer to read
    session = HypercoreSession(ours, store, initiator=True, timeout=0.5, handshake_timeout=10)
    with trio.fail_after(3):
        with pytest.raises(PeerTimeout, match="read nothing"):
            await session.run()
    await theirs.aclose()
