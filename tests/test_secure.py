"""The Noise-encrypted trio stream, over memory pipes and loopback TCP."""

import os

import pytest
import trio
import trio.testing

from corelog.errors import HandshakeError, ProtocolError
from replication._secure import secure_stream


async def _pair(a, b, **kw):
    out = {}

    async def side(name, stream, initiator):
        out[name] = await secure_stream(stream, initiator=initiator, **kw)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "a", a, True)
        nursery.start_soon(side, "b", b, False)
    return out["a"], out["b"]


async def _recv_exactly(stream, n):
    buf = bytearray()
    while len(buf) < n:
        data = await stream.receive_some()
        assert data, "unexpected EOF"
        buf += data
    return bytes(buf)


@pytest.mark.parametrize("size", [1, 65519, 65520, 1 << 20])
async def test_round_trip_both_ways(size):
    with trio.fail_after(10):
        a, b = await _pair(*trio.testing.memory_stream_pair())
        assert a.handshake_hash == b.handshake_hash and len(a.handshake_hash) == 64
        assert a.remote_public_key == b.public_key and b.remote_public_key == a.public_key
        msg_a, msg_b = os.urandom(size), os.urandom(size)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.send_all, msg_a)
            nursery.start_soon(b.send_all, msg_b)
            assert await _recv_exactly(b, size) == msg_a
            assert await _recv_exactly(a, size) == msg_b
        await a.aclose()
        assert await b.receive_some() == b""


async def test_over_loopback_tcp():
    with trio.fail_after(10):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listeners[0].accept()
        a, b = await _pair(client, server)
        await a.send_all(b"over tcp")
        assert await _recv_exactly(b, 8) == b"over tcp"
        await a.aclose()
        await b.aclose()
        await listeners[0].aclose()


async def test_garbage_and_silence_fail_the_handshake():
    with trio.fail_after(10):
        a, b = trio.testing.memory_stream_pair()
        await a.send_all(b"\x00\x05hello")
        with pytest.raises(HandshakeError):
            await secure_stream(b, initiator=False)
        a, b = trio.testing.memory_stream_pair()
        with pytest.raises(HandshakeError, match="within"):
            await secure_stream(b, initiator=False, handshake_timeout=0.2)
        errors = await _mismatched_prologue()
        assert len(errors) == 2 and all(isinstance(e, HandshakeError) for e in errors)


async def _mismatched_prologue():
    a, b = trio.testing.memory_stream_pair()
    errors = []

    async def side(stream, initiator, prologue):
        try:
            await secure_stream(stream, initiator=initiator, prologue=prologue)
        except HandshakeError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, a, True, b"one")
        nursery.start_soon(side, b, False, b"two")
    return errors


async def test_tampered_record_is_rejected():
    with trio.fail_after(10):
        a, b = await _pair(*trio.testing.memory_stream_pair())
        record = bytearray(a._send.encrypt_with_ad(b"", b"secret"))
        record[3] ^= 0x40
        await a.inner.send_all(len(record).to_bytes(2, "big") + bytes(record))
        with pytest.raises(HandshakeError, match="altered"):
            await b.receive_some()


async def test_truncated_record_at_eof_is_an_error():
    with trio.fail_after(10):
        a, b = await _pair(*trio.testing.memory_stream_pair())
        await a.inner.send_all(b"\x00\x30partial")
        await a.inner.aclose()
        with pytest.raises(ProtocolError):
            await b.receive_some()
