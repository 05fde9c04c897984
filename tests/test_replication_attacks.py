"""Every attack class of issue 9 against a real Session: the victim's store stays unchanged (or only
gains verified data), its memory stays bounded (RSS sampled), it ends within a time limit, and a
server keeps serving everyone else."""

from __future__ import annotations

import os

import msgpack
import pytest
import trio
import trio.testing

from corelog.replication import Limits, connect_tcp, replicate
from corelog.replication._messages import (
    Data,
    Done,
    Error,
    Head,
    Hello,
    NoData,
    Open,
    Ping,
    Pong,
    Request,
)
from corelog.replication._session import READ_BATCH
from corelog.replication.errors import ProtocolError, RemoteError, SyncIncomplete, SyncTimeout

from ._peers import Evil, RssPeak, server_thread, take_every_slot

MB = 1024 * 1024
FAST = {"idle_timeout": 1.0, "progress_timeout": 1.5, "handshake_timeout": 2.0}


@pytest.fixture
def writer(make_store):
    ws = make_store("writer")
    log = ws.get("log")
    log.append([b"entry %03d" % i + bytes(90) for i in range(300)])
    return ws, log


@pytest.fixture
def victim(make_store, writer):
    """A replica holding the first 100 of the writer's 300 entries."""
    _, log = writer
    rs = make_store("victim")
    rep = rs.get(key=log.key)
    rep.apply(log.proof(0, 100))
    assert rep.contiguous_length == 100
    return rs, rep


def _head(log, channel=0, contiguous=None):
    h = log.head()
    return Head(channel, h.fork, h.length, h.tree_hash, h.signature, h.byte_length, contiguous or log.length)


def _data(number, rid, proof):
    return Data.from_proof(number, rid, proof)


async def _against_evil_server(rep, script, *, limits=None, time_limit=8.0, **kw):
    """Run a one-shot replica sync of ``rep`` against a scripted evil server; returns (error, evil, rss)."""
    a, b = trio.testing.lockstep_stream_pair()
    evil = Evil(b, initiator=False)
    peak = RssPeak()
    outcome: list[BaseException | None] = []

    async def victim_side():
        try:
            await replicate(a, [rep], initiator=True, live=False, limits=limits, **{**FAST, **kw})
            outcome.append(None)
        except Exception as exc:  # what the victim ends with (typed errors expected)
            outcome.append(exc)

    async def evil_side():
        try:
            await evil.handshake()
            await script(evil)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the victim hung up on us

    start = trio.current_time()
    with trio.fail_after(time_limit):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peak.run)
            nursery.start_soon(evil_side)
            await victim_side()
            nursery.cancel_scope.cancel()
    return outcome[0], evil, peak, trio.current_time() - start


async def _open_dance(evil, log, *, head=True, hello=None):
    """Behave like an honest server up to the barrier: Hello, Open (proven), Head, Pong, Ping."""
    first = await evil.receive(lambda m: isinstance(m, Ping))
    opens = [m for m in first if isinstance(m, Open)]
    assert len(opens) == 1 and opens[0].discovery_key == log.discovery_key
    frames = [hello or Hello(1, 4 * MB, 16), Open(0, log.discovery_key, evil.capability(log.key))]
    if head:
        frames.append(_head(log))
    frames += [Pong(0), Ping(0)]
    await evil.send(*frames)


async def test_silent_server_times_out(victim):
    _, rep = victim
    before = rep.head()

    async def silent(evil):
        await trio.sleep_forever()

    err, _, _, took = await _against_evil_server(rep, silent)
    assert isinstance(err, SyncTimeout) and took < 4
    assert rep.head() == before and rep.contiguous_length == 100


async def test_ping_only_server_times_out(victim):
    _, rep = victim

    async def pings(evil):
        await evil.send(Hello(1, 4 * MB, 16))
        for i in range(1000):
            await evil.send(Ping(i + 1))
            await evil.receive(lambda m: isinstance(m, Pong), timeout=0.5)
            await trio.sleep(0.05)

    err, _, _, took = await _against_evil_server(rep, pings)
    assert isinstance(err, SyncTimeout) and "progress" in str(err) and took < 5
    assert rep.contiguous_length == 100


async def test_nodata_only_server_backs_off_then_ends(victim, writer):
    _, rep = victim
    _, log = writer

    async def nodata(evil):
        await _open_dance(evil, log)
        while True:
            for m in await evil.requests():
                await evil.send(NoData(0, m.id, "no"))

    err, evil, _, took = await _against_evil_server(rep, nodata, limits=Limits(backoff=0.01))
    assert isinstance(err, SyncIncomplete) and "did not deliver" in str(err)
    asked = [m for m in evil.received if isinstance(m, Request)]
    assert 3 <= len(asked) <= 200, "backs off instead of re-requesting in a loop"
    assert rep.contiguous_length == 100 and took < 5


async def test_data_past_held_is_not_used_and_the_sync_ends(victim, writer):
    _, rep = victim
    _, log = writer

    async def past(evil):
        await _open_dance(evil, log)
        while True:
            for m in await evil.requests():  # valid data, but starting past what the replica holds
                await evil.send(_data(0, m.id, log.proof(250, 260)))

    err, evil, _, _ = await _against_evil_server(rep, past, limits=Limits(backoff=0.01))
    assert isinstance(err, SyncIncomplete)
    assert rep.contiguous_length == 100 and rep.audit().ok


async def test_crash_frame_node_size_near_2_64_closes_only_the_connection(victim, writer):
    _, rep = victim
    _, log = writer
    before = rep.head()

    async def crash(evil):
        await _open_dance(evil, log)
        for m in await evil.receive(lambda m: isinstance(m, Request)):
            if isinstance(m, Request):
                d = _data(0, m.id, log.proof(100, 110, have=100))
                nodes = [[0, 2**64 - 1, bytes(32)]]
                raw = msgpack.packb([Data.CODE, *[getattr(d, f) for f in d.__slots__][:7], nodes, 100, None])
                await evil.send(len(raw).to_bytes(4, "big") + raw)
        await evil.drain()

    err, evil, _, _ = await _against_evil_server(rep, crash)
    assert isinstance(err, ProtocolError)
    assert any(isinstance(m, Error) for m in evil.received), "the peer is told why"
    assert rep.head() == before and rep.contiguous_length == 100


async def test_fake_huge_hello_and_head_on_a_fresh_replica_stay_bounded(make_store, writer):
    _, log = writer
    rep = make_store("fresh").get(key=log.key)  # no manifest yet: the head cannot be checked
    huge = 2**53 - 1

    async def liar(evil):
        head = Head(0, 0, huge, os.urandom(32), os.urandom(64), huge, huge)
        await _open_dance(evil, log, head=False, hello=Hello(1, huge, huge))
        await evil.send(head)
        await evil.receive(timeout=30)  # never answers

    err, evil, peak, took = await _against_evil_server(rep, liar, time_limit=10)
    asked = [m for m in evil.received if isinstance(m, Request)]
    assert 1 <= len(asked) <= Limits().max_requests, len(asked)
    assert isinstance(err, SyncTimeout) and took < 5
    assert peak.growth < 60 * MB, peak.growth
    assert rep.contiguous_length == 0


async def test_nested_msgpack_frame_before_hello(victim):
    _, rep = victim
    bombs = [
        b"\x91" * (4 * MB - 8) + b"\x00",  # deep nesting
        msgpack.packb([0, [[] for _ in range(400_000)]]),  # wide: many small arrays
        msgpack.packb([0, [b"ab"] * 65537]),  # one array over the element limit
        msgpack.packb([0, {i: i for i in range(1000)}]),  # maps do not exist in the protocol
    ]
    for bomb in bombs:

        async def send_bomb(evil, bomb=bomb):
            await evil.send(len(bomb).to_bytes(4, "big") + bomb)
            await evil.drain()

        err, evil, peak, took = await _against_evil_server(rep, send_bomb)
        assert isinstance(err, ProtocolError), err
        assert any(isinstance(m, Error) for m in evil.received)
        assert peak.growth < 60 * MB, peak.growth
        assert rep.contiguous_length == 100


async def test_oversized_frame_is_refused_before_buffering(victim):
    _, rep = victim

    async def big(evil):
        await evil.send((64 * MB).to_bytes(4, "big") + bytes(1024))
        await evil.drain()

    err, _, peak, _ = await _against_evil_server(rep, big)
    assert isinstance(err, ProtocolError) and "limit" in str(err)
    assert peak.growth < 30 * MB


async def test_request_flood_is_cut_at_the_announced_credit(writer):
    ws, log = writer
    a, b = trio.testing.lockstep_stream_pair()
    evil = Evil(a, initiator=True)
    peak = RssPeak()
    errors = []

    async def server():
        try:
            await replicate(b, ws, initiator=False, live=True, **FAST)
        except Exception as exc:
            errors.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peak.run)
            nursery.start_soon(server)
            await evil.handshake()
            await evil.send(
                Hello(1, 4 * MB, 16), Open(0, log.discovery_key, evil.capability(log.key)), Ping(0)
            )
            await evil.receive(lambda m: isinstance(m, Pong))
            await evil.send(*[Request(0, i, 0, 0, 0, 300) for i in range(1500)])
            await evil.drain()
            nursery.cancel_scope.cancel()
    assert errors and isinstance(errors[0], ProtocolError) and "requests in flight" in str(errors[0])
    assert peak.growth < 60 * MB


async def test_answers_are_built_only_as_fast_as_the_peer_reads(make_store):
    ws = make_store("big")
    log = ws.get("log")
    log.append([bytes(1000)] * 4000)
    a, b = trio.testing.lockstep_stream_pair()
    evil = Evil(a, initiator=True)
    from corelog.replication import Session

    session = Session(b, ws, initiator=False, batch_blocks=200, **FAST)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            await evil.handshake()
            await evil.send(
                Hello(1, 4 * MB, 16), Open(0, log.discovery_key, evil.capability(log.key)), Ping(0)
            )
            await evil.receive(lambda m: isinstance(m, Pong))
            await evil.send(*[Request(0, i, 0, 0, i * 200, i * 200 + 200) for i in range(16)])
            await trio.sleep(0.5)  # read nothing: the server must not build 16 answers meanwhile
            # at most one hop of answers (READ_BATCH bytes, or one bigger answer alone) exists
            assert session.stats.bytes_sent <= READ_BATCH + 200 * 1000 < 16 * 200 * 1000
            got = await evil.receive(lambda m: isinstance(m, Data) and m.id == 15)
            assert sum(len(m.blocks) for m in got if isinstance(m, Data)) == 3200
            nursery.cancel_scope.cancel()


async def test_hostile_peers_never_stop_a_server_from_serving_others(make_store, writer):
    ws, log = writer
    replica = ws.get(key=os.urandom(32))  # a log the server only replicates (it will request it)
    other = make_store("other")
    other_log = other.get("x")
    other_log.append(b"x")
    replica_key = replica.key
    # the server's replica gets the key of a log the evil peer "writes"
    errors: list[BaseException] = []
    with server_thread(ws, handler_errors=errors, **FAST) as port:
        async with trio.open_nursery() as nursery:
            # 1. crash frame on a channel of a log the server requests from us
            s = await trio.open_tcp_stream("127.0.0.1", port)
            evil = Evil(s, initiator=True)
            await evil.handshake()
            dkey = replica.discovery_key
            fake_head = Head(0, 0, 10, os.urandom(32), os.urandom(64), 10, 10)
            await evil.send(Hello(1, 4 * MB, 16), Open(0, dkey, evil.capability(replica_key)), Ping(0))
            await evil.receive(lambda m: isinstance(m, Pong))
            await evil.send(fake_head)
            reqs = await evil.receive(lambda m: isinstance(m, Request))
            rid = [m for m in reqs if isinstance(m, Request)][0].id
            nodes = [[0, 2**64 - 1, bytes(32)]]
            raw = msgpack.packb([Data.CODE, 0, rid, 0, 10, bytes(64), 0, [b"x"], nodes, 0, None])
            await evil.send(len(raw).to_bytes(4, "big") + raw)
            await evil.drain()
            assert any(isinstance(m, Error) for m in evil.received)
            # 2. a nested-msgpack bomb before Hello
            s = await trio.open_tcp_stream("127.0.0.1", port)
            evil = Evil(s, initiator=True)
            await evil.handshake()
            bomb = b"\x91" * (2 * MB)
            await evil.send(len(bomb).to_bytes(4, "big") + bomb)
            await evil.drain()
            # 3. a silent peer, left hanging while an honest peer syncs
            silent = await trio.open_tcp_stream("127.0.0.1", port)
            rep = other.get(key=log.key)
            with trio.fail_after(10):
                session = await connect_tcp([rep], "127.0.0.1", port, live=False)
            assert rep.contiguous_length == 300 and session.synced
            await silent.aclose()
            nursery.cancel_scope.cancel()
    assert replica.length == 0 and replica.contiguous_length == 0  # nothing unverified kept
    assert sum(isinstance(e, ProtocolError) for e in errors) >= 2
    assert not any(isinstance(e, RemoteError) and "Done" in str(e) for e in errors)
    assert Done  # (imported for symmetry with the protocol tests)


async def test_no_handshake_at_all_times_out(victim):
    _, rep = victim
    a, b = trio.testing.lockstep_stream_pair()
    with trio.fail_after(5):
        with pytest.raises(SyncTimeout, match="handshake"):
            await replicate(a, [rep], initiator=True, live=False, **{**FAST, "handshake_timeout": 0.5})
    assert rep.contiguous_length == 100


async def test_ping_flood_without_reading_is_cut(writer):
    ws, log = writer
    a, b = trio.testing.lockstep_stream_pair()  # zero buffering: the victim's Pongs back up at once
    evil = Evil(a, initiator=True)
    errors = []

    async def server():
        try:
            await replicate(b, ws, initiator=False, live=True, **FAST)
        except Exception as exc:
            errors.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server)
            await evil.handshake()
            await evil.send(Hello(1, 4 * MB, 16))
            await evil.receive(lambda m: isinstance(m, Hello))
            with trio.move_on_after(3):
                await evil.send(*[Ping(i + 1) for i in range(200)])  # and never read the Pongs
            while not errors:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert isinstance(errors[0], ProtocolError) and "Pings" in str(errors[0])


async def test_bogus_opens_keep_bounded_state_and_a_channel_cap(writer):
    from corelog.replication import Session

    ws, log = writer
    a, b = trio.testing.memory_stream_pair()
    evil = Evil(a, initiator=True)
    session = Session(b, ws, initiator=False, max_rejected=100, max_channels=3000, **FAST)
    errors = []

    async def run():
        try:
            await session.run()
        except ProtocolError as exc:
            errors.append(exc)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await evil.handshake()
            await evil.send(
                Hello(1, 4 * MB, 16), *[Open(i, os.urandom(32), os.urandom(32)) for i in range(2000)]
            )
            await evil.send(Ping(0))
            await evil.receive(lambda m: isinstance(m, Pong))
            rep = session.replicator
            assert rep.stats.rejected_opens == 2000 and len(rep._rejected) == 100
            await evil.send(*[Open(2000 + i, os.urandom(32), os.urandom(32)) for i in range(1001)])
            got = await evil.receive(lambda m: isinstance(m, Error))
            assert any(isinstance(m, Error) and "channels" in m.message for m in got)
            nursery.cancel_scope.cancel()
    assert errors and "3000 channels" in str(errors[0])


async def test_server_connection_cap_refuses_extra_peers_and_serves_again_later(writer, make_store):
    ws, log = writer
    from corelog.replication import serve_tcp

    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_tcp(ws, max_connections=2, task_status=task_status, **FAST)
        )
        held = await take_every_slot(port, 2)
        for s in held:
            await s.aclose()
        await trio.sleep(0.1)
        rep = make_store("late").get(key=log.key)
        with trio.fail_after(10):
            await connect_tcp([rep], "127.0.0.1", port, live=False)
        assert rep.contiguous_length == 300
        nursery.cancel_scope.cancel()


async def test_per_peer_cap_keeps_one_address_from_taking_every_slot(writer, make_store):
    ws, log = writer
    from corelog.replication import serve_tcp

    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_tcp(ws, max_per_peer=2, task_status=task_status, **FAST)
        )
        held = await take_every_slot(port, 2)  # a third from the same address: refused
        await held[0].aclose()
        await trio.sleep(0.1)
        rep = make_store("fair").get(key=log.key)
        with trio.fail_after(10):
            await connect_tcp([rep], "127.0.0.1", port, live=False)  # a freed slot serves again
        assert rep.contiguous_length == 300
        await held[1].aclose()
        nursery.cancel_scope.cancel()
