"""Live updates pushed on parked tail requests: a live replica that holds everything the peer
announced parks one request for the blocks after the peer's end; the peer answers it right
after its Head when the log grows (half a round trip), on both sides of a connection at once."""

from __future__ import annotations

import os

import trio
import trio.testing

from corelog import Store
from corelog.replication import Session
from corelog.replication._messages import Data, Head, Request, encode
from corelog.replication._replicator import Replicator
from tests.test_replication_protocol import frames

FAST = {"idle_timeout": 10.0, "progress_timeout": 10.0}


def pump(a: Replicator, b: Replicator, a2b: bytes, b2a: bytes) -> None:
    for _ in range(200):
        if not a2b and not b2a:
            return
        x = b.receive_data(a2b) if a2b else b""
        y = a.receive_data(b2a) if b2a else b""
        a2b, b2a = y, x
        assert a.error is None and b.error is None, (a.error, b.error)
    raise AssertionError("peers did not go quiet")


def live_pair(ws: Store, rs: Store, **kw) -> tuple[Replicator, Replicator]:
    hh = os.urandom(64)
    a = Replicator(ws, handshake_hash=hh, initiator=True, live=True, **kw)
    b = Replicator(rs, handshake_hash=hh, initiator=False, live=True, **kw)
    pump(a, b, a.start(), b.start())
    return a, b


def test_an_append_reaches_a_live_replica_with_its_head_without_a_request(make_store):
    ws, rs = make_store("w"), make_store("r")
    log = ws.get("log")
    log.append([b"entry %d" % i for i in range(100)])
    rep = rs.get(key=log.key)
    a, b = live_pair(ws, rs, batch_blocks=16)
    assert rep.contiguous_length == 100 and b.synced
    assert b.stats.tails_sent == 1 and sum(len(v) for v in a._answers.parked.values()) == 1  # parked with a
    log.append([b"live 1", b"live 2"])
    out = frames(a.local_changed(log))
    assert [type(m) for m in out] == [Head, Data]  # the Head and the blocks, in one flight
    back = frames(b.receive_data(b"".join(_encode(m) for m in out)))
    assert [type(m) for m in back] == [Request] and back[0].start == 102  # only the next tail
    assert rep.contiguous_length == 102 and rep[-1] == b"live 2" and rep.head() == log.head()
    assert b.stats.pushed == 2 and b.synced
    assert a.receive_data(b"".join(_encode(m) for m in back)) == b""  # parked: nothing to say yet
    # more than a tail's range at once: the tail brings its part, ordinary requests the rest,
    # and no block comes twice
    received = b.stats.blocks_received
    log.append([b"burst %d" % i for i in range(50)])
    pump(a, b, a.local_changed(log), b"")
    assert rep.contiguous_length == 152 and list(rep) == list(log) and rep.audit().ok
    assert b.stats.blocks_received - received == 50


def test_a_tail_answered_with_nodata_is_not_parked_again_until_a_new_head(make_store):
    ws, rs = make_store("w"), make_store("r")
    log = ws.get("log")
    log.append([b"x"] * 10)
    rep = rs.get(key=log.key)
    a, b = live_pair(ws, rs)
    ((dkey, parked),) = a._answers.parked.items()
    ch, msg = parked.pop()
    del a._answers.parked[dkey]
    a._answers.no_data(ch, msg.id, "not now")  # a peer that refuses to keep tails
    back = frames(b.receive_data(a.data_to_send()))
    assert not any(isinstance(m, Request) for m in back) and b.synced  # no retry loop
    assert b.stats.tails_sent == 1
    log.append(b"y")
    out = a.local_changed(log)
    assert [type(m) for m in frames(out)] == [Head]
    back = frames(b.receive_data(out))
    assert [type(m) for m in back] == [Request] and back[0].start == 10  # an ordinary request
    pump(a, b, a.receive_data(b"".join(_encode(m) for m in back)), b"")
    assert rep.contiguous_length == 11 and b.stats.pushed == 0 and b.stats.tails_sent == 2


def test_a_parked_tail_follows_a_truncation(make_store):
    ws, rs = make_store("w"), make_store("r")
    log = ws.get("log")
    log.append([b"old %d" % i for i in range(100)])
    rep = rs.get(key=log.key)
    a, b = live_pair(ws, rs)
    log.truncate(40)
    log.append([b"new %d" % i for i in range(5)])
    pump(a, b, a.local_changed(log), b"")
    assert rep.fork == 1 and list(rep) == list(log) and rep.head() == log.head() and rep.audit().ok


def test_tails_are_a_quarter_of_the_credit_at_most(make_store):
    ws, rs = make_store("w"), make_store("r")
    logs = [ws.get(f"l{i}") for i in range(40)]
    for lg in logs:
        lg.append(b"x")
        rs.get(key=lg.key)
    a, b = live_pair(ws, rs, max_inflight=16, max_requests=16)
    assert b.synced and b.stats.tails_sent == 4 and sum(len(v) for v in a._answers.parked.values()) == 4
    for lg in logs:  # channels with a tail get pushed; the others still follow Heads
        lg.append(b"y")
        pump(a, b, a.local_changed(lg), b"")
    assert all(rs.get(key=lg.key).contiguous_length == 2 for lg in logs)


def _encode(msg) -> bytes:
    return encode(msg)


async def _until(predicate, seconds: float = 20.0) -> None:
    with trio.fail_after(seconds):
        while not predicate():
            await trio.sleep(0.005)


async def _live_both_ways(sa: Store, sb: Store, a_stream, b_stream, appends: int, size: int) -> list[Session]:
    la, lb = sa.get("a"), sb.get("b")
    la.append(b"a-first")
    lb.append(b"b-first")
    ra, rb = sb.get(key=la.key), sa.get(key=lb.key)
    sessions = [
        Session(a_stream, sa, initiator=True, live=True, **FAST),
        Session(b_stream, sb, initiator=False, live=True, **FAST),
    ]
    async with trio.open_nursery() as nursery:
        for s in sessions:
            nursery.start_soon(s.run)
        await _until(lambda: ra.contiguous_length == 1 and rb.contiguous_length == 1)
        for i in range(appends):  # both sides write at once while the other follows
            la.append([b"a%d-%d" % (i, j) for j in range(size)])
            lb.append([b"b%d-%d" % (i, j) for j in range(size)])
            await trio.sleep(0.01)
        total = 1 + appends * size
        await _until(lambda: ra.contiguous_length == total and rb.contiguous_length == total)
        nursery.cancel_scope.cancel()
    assert list(ra) == list(la) and list(rb) == list(lb) and ra.head() == la.head() and rb.head() == lb.head()
    return sessions


async def test_live_both_ways_over_real_tcp_is_pushed(make_store):
    sa, sb = make_store("a"), make_store("b")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    sessions = await _live_both_ways(sa, sb, client, server, appends=30, size=1)
    for s in sessions:
        assert s.stats.pushed > 0 and s.stats.tails_sent > 1  # both sides park and get pushed
        assert s.stats.blocks_received == 31  # nothing asked twice


async def test_live_both_ways_over_lockstep_streams(make_store):
    sa, sb = make_store("a"), make_store("b")
    a, b = trio.testing.lockstep_stream_pair()
    sessions = await _live_both_ways(sa, sb, a, b, appends=5, size=700)  # bursts over a tail's range
    for s in sessions:
        assert s.stats.pushed > 0 and s.stats.blocks_received == 3501


async def test_live_relay_a_b_c_pushes_through(make_store):
    sa, sb, sc = make_store("a"), make_store("b"), make_store("c")
    log = sa.get("log")
    log.append(b"0")
    sb.get(key=log.key)
    rc = sc.get(key=log.key)
    ab, ba = trio.testing.memory_stream_pair()
    bc, cb = trio.testing.memory_stream_pair()
    to_c = Session(cb, sc, initiator=False, live=True, **FAST)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(Session(ab, sa, initiator=True, live=True, **FAST).run)
        nursery.start_soon(Session(ba, sb, initiator=False, live=True, **FAST).run)
        nursery.start_soon(Session(bc, sb, initiator=True, live=True, **FAST).run)
        nursery.start_soon(to_c.run)
        await _until(lambda: rc.contiguous_length == 1)
        for i in range(20):
            log.append(b"%d" % (i + 1))
            await trio.sleep(0.01)
        await _until(lambda: rc.contiguous_length == 21)
        nursery.cancel_scope.cancel()
    assert list(rc) == list(log) and rc.head() == log.head() and to_c.stats.pushed > 0


class _Recorded(trio.abc.Stream):
    """A plaintext stream that passes for a secure one (it has a handshake hash, so the Session
    runs no handshake) and records, in order, every chunk it sends and receives."""

    def __init__(self, inner: trio.abc.Stream, hh: bytes, timeline: list[tuple[str, bytes]]):
        self.inner, self.handshake_hash, self.timeline = inner, hh, timeline
        self.remote_public_key = bytes(32)

    async def send_all(self, data) -> None:
        self.timeline.append(("sent", bytes(data)))
        await self.inner.send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self.inner.receive_some(max_bytes)
        self.timeline.append(("received", data))
        return data

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_reader_never_echoes_a_head_it_received(make_store):
    """Every frame the reader sends over a real live session (lockstep streams: each send waits
    for the peer's read) is decoded in order with what it received: none is a Head for a head the
    writer had announced to it, neither after the first sync nor after live appends."""
    from corelog.replication._messages import FrameDecoder, decode

    ws, rs = make_store("w"), make_store("r")
    log = ws.get("log")
    log.append([b"%d" % i for i in range(300)])
    rep = rs.get(key=log.key)
    hh = os.urandom(64)
    w_stream, r_stream = trio.testing.lockstep_stream_pair()
    timeline: list[tuple[str, bytes]] = []
    reader = Session(_Recorded(r_stream, hh, timeline), [rep], initiator=False, live=True, **FAST)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(Session(_Recorded(w_stream, hh, []), [log], initiator=True, live=True, **FAST).run)
        nursery.start_soon(reader.run)
        with trio.fail_after(20):
            await reader.wait_synced()
            for n in range(5):  # live appends: each a new Head the reader receives, then its Data
                log.append([b"live %d.%d" % (n, i) for i in range(1 + n * 7)])
                while rep.contiguous_length < log.length:
                    await trio.sleep(0.01)
            await trio.sleep(0.2)  # time for a (wrong) echo of the last head to go out
        nursery.cancel_scope.cancel()
    assert rep.head() == log.head()
    decoders = {"sent": FrameDecoder(1 << 24), "received": FrameDecoder(1 << 24)}
    heard: set[tuple[int, int, bytes]] = set()
    received_heads = sent_frames = 0
    for direction, chunk in timeline:
        decoders[direction].feed(chunk)
        while (body := decoders[direction].next_frame()) is not None:
            msg = decode(body)
            if direction == "received":
                if isinstance(msg, Head):
                    heard.add((msg.fork, msg.length, msg.tree_hash))
                    received_heads += 1
                continue
            sent_frames += 1
            if isinstance(msg, Head):
                assert (msg.fork, msg.length, msg.tree_hash) not in heard, f"the reader echoed {msg}"
    assert received_heads >= 6 and sent_frames > 0  # (the first head and one per live append)
