"""WebRTC data channels (aiortc in its own asyncio thread) as trio streams, loopback only.

Every peer here uses iceServers=[] and host candidates restricted to exactly
127.0.0.1. CI also runs this file inside a network namespace with only lo up:

    unshare --net sh -c 'ip link set lo up && python -m pytest tests/test_webrtc.py -q'
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from contextlib import asynccontextmanager

import aioice.ice
import pytest
import trio
import trio.testing

from corelog.replication import memory_signaling_pair, replicate
from corelog.replication._signaling import (
    StreamSignaling,
    open_tcp_signaling,
    open_unix_signaling,
    open_unix_signaling_listener,
)
from corelog.replication._webrtc import AsyncioThread, WebRTCError, connect_webrtc
from corelog.replication.errors import ProtocolError


def _asyncio_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("corelog-asyncio") and t.is_alive()]


@pytest.fixture(autouse=True)
def no_leaked_asyncio_threads():
    baseline = len(_asyncio_threads())
    yield
    assert len(_asyncio_threads()) == baseline, "an asyncio thread outlived its streams"


@asynccontextmanager
async def signaling_pair(kind: str, tmp_path):
    """Two connected signaling ends: in-process, TCP on 127.0.0.1, or a unix socket."""
    if kind == "memory":
        a, b = memory_signaling_pair()
        yield a, b
        return
    if kind == "tcp":
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        a = await open_tcp_signaling("127.0.0.1", port)
    else:
        path = tmp_path / "signal.sock"
        listener = await open_unix_signaling_listener(path)
        a = await open_unix_signaling(path)
    b = StreamSignaling(await listener.accept())
    try:
        yield a, b
    finally:
        for s in (a, b, listener):
            await s.aclose()


async def connect_pair(sig_a, sig_b, **kw):
    out = {}

    async def side(name, sig, initiator):
        out[name] = await connect_webrtc(sig, initiator=initiator, **kw)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "a", sig_a, True)
        nursery.start_soon(side, "b", sig_b, False)
    return out["a"], out["b"]


@asynccontextmanager
async def webrtc_pair(kind="memory", tmp_path=None, **kw):
    async with signaling_pair(kind, tmp_path) as (sa, sb):
        a, b = await connect_pair(sa, sb, **kw)
    try:
        yield a, b
    finally:
        with trio.CancelScope(shield=True):
            await a.aclose()
            await b.aclose()


async def read_exactly(stream, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some()
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def candidates(sdp):
    """(transport, address, type) of each a=candidate line, parsed independently of the library."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            f = line[len("a=candidate:") :].split()
            out.append((f[2].lower(), f[4], f[f.index("typ") + 1]))
    return out


# --- loopback only ---------------------------------------------------------------------------


async def test_sdp_has_only_127_0_0_1_host_candidates():
    with trio.fail_after(30):
        async with webrtc_pair() as (a, b):
            for s in (a, b):  # no STUN/TURN server configured, none reached by aioice
                assert s._pc._RTCPeerConnection__configuration.iceServers == []
                ice = s._pc.sctp.transport.transport.iceGatherer._connection
                assert ice.stun_server is None and ice.turn_server is None
            for sdp in (a.local_sdp, a.remote_sdp, b.local_sdp, b.remote_sdp):
                cands = candidates(sdp)
                assert cands, sdp
                assert set(cands) == {("udp", "127.0.0.1", "host")}, cands
                for word in ("srflx", "relay", "prflx", ".local", "IN IP6"):
                    assert word not in sdp
                ipv4 = set(re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", sdp))
                assert ipv4 <= {"127.0.0.1", "0.0.0.0"}, ipv4  # 0.0.0.0 is the o= line's placeholder
            assert a.local_sdp == b.remote_sdp and b.local_sdp == a.remote_sdp
            assert a.fingerprints == b.fingerprints[::-1]
            assert a.fingerprints[0].startswith("sha-256 ") and a.fingerprints[0] != a.fingerprints[1]
    # outside connect_webrtc, aioice enumerates addresses as it always did
    patched = aioice.ice.get_host_addresses
    assert patched(True, True) == patched.__wrapped__(True, True)


class TamperingSignaling:
    """Rewrites the candidate address of outgoing SDPs, as a peer offering a LAN address would."""

    def __init__(self, inner, address):
        self.inner, self.address = inner, address

    async def send(self, message):
        sdp = re.sub(
            r"^(a=candidate:\S+ \d+ \S+ \d+) 127\.0\.0\.1", rf"\1 {self.address}", message["sdp"], flags=re.M
        )
        await self.inner.send({**message, "sdp": sdp})

    async def receive(self):
        return await self.inner.receive()

    async def aclose(self):
        await self.inner.aclose()


@pytest.mark.parametrize("address", ["192.0.2.1", "abcd.local", "::1"])
async def test_non_loopback_peer_candidates_are_refused(address):
    with trio.fail_after(30):
        sa, sb = memory_signaling_pair()
        errors = {}

        async def side(name, sig, initiator):
            try:
                await connect_webrtc(sig, initiator=initiator, timeout=10)
            except (WebRTCError, ProtocolError) as exc:
                errors[name] = exc
            finally:
                await sig.aclose()  # the other side sees the signaling go away

        async with trio.open_nursery() as nursery:
            nursery.start_soon(side, "a", TamperingSignaling(sa, address), True)
            nursery.start_soon(side, "b", sb, False)
        assert isinstance(errors["b"], WebRTCError) and address in str(errors["b"])
        assert "a" in errors


async def test_connect_times_out_with_a_clear_error():
    with trio.fail_after(30):
        sa, _sb = memory_signaling_pair()  # nobody answers
        with pytest.raises(WebRTCError, match=r"timed out after 0\.5s waiting for the SDP answer"):
            await connect_webrtc(sa, initiator=True, timeout=0.5)


# --- bytes both ways -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "tcp", "unix"])
async def test_round_trip_both_ways(kind, tmp_path):
    with trio.fail_after(60):
        async with webrtc_pair(kind, tmp_path) as (a, b):
            for size in (1, 100 * 1024, 2 << 20):
                for tx, rx in ((a, b), (b, a)):
                    data = os.urandom(size)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(tx.send_all, data)
                        assert await read_exactly(rx, size) == data


async def test_concurrent_both_directions():
    with trio.fail_after(60):
        async with webrtc_pair() as (a, b):
            ab, ba = os.urandom(2 << 20), os.urandom(2 << 20)
            got = {}

            async def recv(name, stream, n):
                got[name] = await read_exactly(stream, n)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(a.send_all, ab)
                nursery.start_soon(b.send_all, ba)
                nursery.start_soon(recv, "b", b, len(ab))
                nursery.start_soon(recv, "a", a, len(ba))
            assert got["b"] == ab and got["a"] == ba


async def test_receive_some_max_bytes_and_message_size():
    with trio.fail_after(30):
        async with webrtc_pair(message_size=64 * 1024) as (a, b):
            assert a.message_size == 64 * 1024
            data = bytes(range(256)) * 1024
            await a.send_all(bytearray(data))
            buf = bytearray()
            while len(buf) < len(data):
                chunk = await b.receive_some(1000)
                assert 0 < len(chunk) <= 1000
                buf += chunk
            assert buf == data
            with pytest.raises(ValueError):
                await b.receive_some(0)


# --- EOF and close ---------------------------------------------------------------------------


async def test_eof_after_close_delivers_everything_first():
    with trio.fail_after(30):
        async with webrtc_pair() as (a, b):
            data = os.urandom(300 * 1024)
            await a.send_all(data)
            await a.aclose()  # graceful: what was sent is delivered before the EOF
            assert await read_exactly(b, len(data)) == data
            assert await b.receive_some() == b""
            assert await b.receive_some() == b""
            with pytest.raises(trio.BrokenResourceError):
                await b.send_all(b"too late")
            with pytest.raises(trio.ClosedResourceError):
                await a.send_all(b"closed")
            with pytest.raises(trio.ClosedResourceError):
                await a.receive_some()


async def test_close_wakes_a_blocked_reader_and_the_peer():
    with trio.fail_after(30):
        async with webrtc_pair() as (a, b):
            async with trio.open_nursery() as nursery:

                async def reader():
                    assert await a.receive_some() == b""

                nursery.start_soon(reader)
                await trio.sleep(0.05)
                await b.aclose()


# --- flow control ----------------------------------------------------------------------------


async def test_sender_blocks_when_the_receiver_does_not_read():
    window = 256 * 1024
    with trio.fail_after(60):
        async with webrtc_pair(receive_window=window) as (a, b):
            total, piece = 4 << 20, 16 * 1024
            data = os.urandom(total)
            sent = 0

            async def sender():
                nonlocal sent
                for i in range(0, total, piece):
                    await a.send_all(data[i : i + piece])
                    sent += piece

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                with trio.fail_after(10):  # the sender blocks within 10 s (well under 1 s unloaded)
                    while True:
                        before = sent
                        await trio.sleep(0.5)
                        if sent == before and sent > 0:
                            break
                # blocked, with nothing buffered beyond the receive window / the sender's high water
                assert 0 < sent <= window
                assert b.queued_bytes <= window
                assert a.buffered_amount <= a.high_water + a.message_size
                # reading lets it finish, with the bytes intact
                assert await read_exactly(b, total) == data
            assert sent == total


async def test_one_big_send_all_blocks_and_can_be_cancelled():
    window = 128 * 1024
    with trio.fail_after(30):
        async with webrtc_pair(receive_window=window) as (a, b):
            with trio.move_on_after(1.0) as scope:
                await a.send_all(os.urandom(8 << 20))
            assert scope.cancelled_caught
            await trio.sleep(0.2)
            assert b.queued_bytes <= window
            assert a.buffered_amount <= a.high_water + a.message_size


async def test_busy_send_is_refused():
    with trio.fail_after(30):
        async with webrtc_pair(receive_window=64 * 1024) as (a, _b):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(a.send_all, os.urandom(1 << 20))
                await trio.sleep(0.2)
                with pytest.raises(trio.BusyResourceError):
                    await a.send_all(b"x")
                nursery.cancel_scope.cancel()


# --- the asyncio thread ----------------------------------------------------------------------


async def test_asyncio_thread_call_results_errors_and_cancellation():
    with trio.fail_after(30):
        async with AsyncioThread("corelog-asyncio-test") as t:
            assert await t.call(lambda x: x + 1, 41) == 42

            async def in_asyncio(x):
                await asyncio.sleep(0)
                return threading.current_thread().name, x

            assert await t.call(in_asyncio, "y") == ("corelog-asyncio-test", "y")

            async def boom():
                raise KeyError("boom")

            with pytest.raises(KeyError):
                await t.call(boom)

            state = []

            async def slow():
                try:
                    await asyncio.sleep(30)
                finally:
                    state.append("cancelled in asyncio")

            with trio.move_on_after(0.2):
                await t.call(slow)
            assert state == ["cancelled in asyncio"]  # the asyncio task ended before call() returned
            thread = t._thread
        assert not thread.is_alive()
        with pytest.raises(trio.ClosedResourceError):
            await t.call(lambda: None)


async def test_threads_return_to_baseline():
    with trio.fail_after(60):
        baseline = len(_asyncio_threads())
        async with webrtc_pair() as (a, b), webrtc_pair() as (c, d):
            assert len(_asyncio_threads()) == baseline + 1  # all streams share one asyncio thread
            await a.send_all(b"ping")
            await d.send_all(b"pong")
            assert await read_exactly(b, 4) == b"ping"
            assert await read_exactly(c, 4) == b"pong"
        assert len(_asyncio_threads()) == baseline
        # a caller-owned thread is used instead of the shared one, and closed by its owner
        async with AsyncioThread("corelog-asyncio-own") as own:
            async with webrtc_pair(thread=own) as (a, b):
                await a.send_all(b"x")
                assert await read_exactly(b, 1) == b"x"
                assert [t.name for t in _asyncio_threads()].count("corelog-asyncio-own") == 1
            assert own.is_running
        assert len(_asyncio_threads()) == baseline


# --- signaling -------------------------------------------------------------------------------


async def test_stream_signaling_limits():
    with trio.fail_after(10):
        left, right = trio.testing.memory_stream_pair()
        a, b = StreamSignaling(left, max_line=1000), StreamSignaling(right, max_line=1000)
        await a.send({"type": "offer", "sdp": "v=0\r\n"})
        assert await b.receive() == {"type": "offer", "sdp": "v=0\r\n"}
        with pytest.raises(ProtocolError):
            await a.send({"sdp": "x" * 2000})
        await left.send_all(b"[1, 2]\n")
        with pytest.raises(ProtocolError, match="not a JSON object"):
            await b.receive()
        await left.send_all(b"x" * 5000)
        with pytest.raises(ProtocolError, match="limit"):
            await b.receive()


# --- replication over WebRTC -----------------------------------------------------------------


async def test_replication_over_webrtc_sync_and_live(make_store):
    ws, rs = make_store("w"), make_store("r")
    log = ws.get("log")
    log.append([b"entry %d" % i for i in range(3000)])
    rep = rs.get(key=log.key)
    with trio.fail_after(60):
        async with webrtc_pair() as (a, b):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: replicate(a, ws, initiator=True))
                nursery.start_soon(lambda: replicate(b, rs, initiator=False))
                while rep.contiguous_length < 3000:
                    await trio.sleep(0.01)
                log.append(b"live")
                while rep.contiguous_length < 3001:
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
    assert list(rep) == list(log) and rep.audit().ok
