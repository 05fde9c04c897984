"""WebRTC data channels (aiortc in its own asyncio thread), loopback only.

Every peer here uses iceServers=[] and host candidates restricted to exactly
127.0.0.1; CI also runs the suite inside ``unshare --net`` with only lo up.
"""

from __future__ import annotations

import os

import trio

from replication import (
    StreamSignaling,
    candidate_addresses,
    connect_webrtc,
    memory_signaling_pair,
    replicate,
)


async def _pair(sig_a, sig_b):
    out = {}

    async def side(name, sig, initiator):
        out[name] = await connect_webrtc(sig, initiator=initiator)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "a", sig_a, True)
        nursery.start_soon(side, "b", sig_b, False)
    return out["a"], out["b"]


async def _read(stream, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some()
        assert chunk
        buf += chunk
    return bytes(buf)


async def test_loopback_only_round_trip_and_eof():
    with trio.fail_after(30):
        a, b = await _pair(*memory_signaling_pair())
        for sdp in (a.local_sdp, a.remote_sdp, b.local_sdp):
            addrs = candidate_addresses(sdp)
            assert addrs and set(addrs) == {"127.0.0.1"}, addrs
            assert "typ srflx" not in sdp and "typ relay" not in sdp
        assert a.fingerprints[0] == b.fingerprints[1] and a.fingerprints[1] == b.fingerprints[0]
        big = os.urandom(2 << 20)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.send_all, big)
            nursery.start_soon(b.send_all, b"x")
            assert await _read(b, len(big)) == big
            assert await _read(a, 1) == b"x"
        await a.aclose()
        assert await b.receive_some() == b""
        await b.aclose()


async def test_signaling_over_loopback_tcp():
    with trio.fail_after(30):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listeners[0].accept()
        a, b = await _pair(StreamSignaling(client), StreamSignaling(server))
        await a.send_all(b"hello over webrtc")
        assert await _read(b, 17) == b"hello over webrtc"
        for s in (a, b, client, server, listeners[0]):
            await s.aclose()


async def test_replication_over_webrtc_sync_and_live(make_store):
    ws, rs = make_store("w"), make_store("r")
    log = ws.get("log")
    log.append([b"entry %d" % i for i in range(3000)])
    rep = rs.get(key=log.key)
    with trio.fail_after(60):
        a, b = await _pair(*memory_signaling_pair())
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


async def test_signaling_over_a_unix_socket(tmp_path):
    with trio.fail_after(30):
        sock_path = str(tmp_path / "signal.sock")
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(sock_path)
        sock.listen(1)
        listener = trio.SocketListener(sock)
        async with trio.open_nursery() as nursery:
            accepted = {}

            async def accept():
                accepted["s"] = await listener.accept()

            nursery.start_soon(accept)
            client = await trio.open_unix_socket(sock_path)
        a, b = await _pair(StreamSignaling(client), StreamSignaling(accepted["s"]))
        await b.send_all(b"via unix signaling")
        assert await _read(a, 18) == b"via unix signaling"
        for s in (a, b, client, accepted["s"], listener):
            await s.aclose()
