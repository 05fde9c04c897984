"""The Noise-encrypted trio stream (SecureStream), over memory streams and real loopback TCP."""

import os
import struct

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from corelog.replication._noise import keypair
from corelog.replication._secure import CONTINUE_BODY, START_BODY, SecureStream, secure_stream
from corelog.replication.errors import FrameTooLarge, HandshakeError, ProtocolError

MiB = 1 << 20
MESSAGE_SIZES = [0, 1, START_BODY, START_BODY + 1, 65519, 65520, START_BODY + CONTINUE_BODY + 1, MiB]


async def _pair(a, b, kw_a=None, kw_b=None) -> tuple[SecureStream, SecureStream]:
    out = {}

    async def side(name, stream, initiator, kw):
        out[name] = await secure_stream(stream, initiator=initiator, **(kw or {}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "a", a, True, kw_a)
        nursery.start_soon(side, "b", b, False, kw_b)
    return out["a"], out["b"]


async def _memory_pair(**kw):
    return await _pair(*trio.testing.memory_stream_pair(), **kw)


async def _recv_exactly(stream, n):
    buf = bytearray()
    for _ in range(n + 1):  # each call returns at least one byte
        if len(buf) >= n:
            break
        data = await stream.receive_some()
        assert data, "unexpected EOF"
        buf += data
    return bytes(buf)


async def _tcp_streams():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return client, server


async def _exchange_messages(a, b, sizes):
    """Both directions at once: every size from a to b and from b to a, in order."""
    sent_a = [os.urandom(n) for n in sizes]
    sent_b = [os.urandom(n) for n in sizes]
    got_a, got_b = [], []

    async def send(stream, messages):
        for m in messages:
            await stream.send_message(m)

    async def receive(stream, into):
        for _ in sizes:
            into.append(await stream.receive_message())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, a, sent_a)
        nursery.start_soon(send, b, sent_b)
        nursery.start_soon(receive, a, got_b)
        nursery.start_soon(receive, b, got_a)
    assert got_a == sent_a and got_b == sent_b


# --- round trips -------------------------------------------------------------------------------------------


async def test_handshake_hashes_and_keys():
    with trio.fail_after(10):
        ka, kb = os.urandom(32), os.urandom(32)
        a, b = await _memory_pair(kw_a={"static_private": ka}, kw_b={"static_private": kb})
        assert a.handshake_hash == b.handshake_hash and len(a.handshake_hash) == 64
        assert a.public_key == keypair(ka)[1] == b.remote_public_key
        assert b.public_key == keypair(kb)[1] == a.remote_public_key
        c, d = await _memory_pair()  # generated keys: fresh identities, a fresh hash
        assert len(c.public_key) == 32 and c.public_key != d.public_key
        assert c.remote_public_key == d.public_key and c.handshake_hash != a.handshake_hash


@pytest.mark.parametrize("size", MESSAGE_SIZES)
async def test_message_round_trip_both_ways(size):
    with trio.fail_after(10):
        a, b = await _memory_pair()
        await _exchange_messages(a, b, [size, size, 3])


@pytest.mark.parametrize("size", [1, 65519, 65520, MiB])
async def test_byte_stream_round_trip_both_ways(size):
    with trio.fail_after(10):
        a, b = await _memory_pair()
        msg_a, msg_b = os.urandom(size), os.urandom(size)
        got = {}

        async def receive(stream, name):
            got[name] = await _recv_exactly(stream, size)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.send_all, msg_a)
            nursery.start_soon(b.send_all, msg_b)
            nursery.start_soon(receive, b, "b")
            nursery.start_soon(receive, a, "a")
        assert got == {"b": msg_a, "a": msg_b}
        assert await a.send_all(b"") is None  # sends nothing
        await a.send_all(b"xyz")
        assert await b.receive_some(2) == b"xy" and await b.receive_some(2) == b"z"


async def test_over_loopback_tcp():
    with trio.fail_after(10):
        a, b = await _pair(*await _tcp_streams())
        assert a.handshake_hash == b.handshake_hash and a.remote_public_key == b.public_key
        await _exchange_messages(a, b, MESSAGE_SIZES)
        payload = os.urandom(MiB + 7)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.send_all, payload)
            assert await _recv_exactly(b, len(payload)) == payload
        await a.aclose()
        with pytest.raises(trio.EndOfChannel):
            await b.receive_message()
        await b.aclose()


async def test_apis_mix_at_message_boundaries():
    with trio.fail_after(10):
        a, b = await _memory_pair()
        await a.send_message(b"hello")
        assert await b.receive_some() == b"hello"  # a message read as stream bytes
        await a.send_all(b"stream bytes")
        assert await b.receive_message() == b"stream bytes"  # small send_all data arrives as one message
        await a.send_message(b"")
        await a.send_message(b"after empty")
        assert await b.receive_some() == b"after empty"  # empty messages are not EOF
        await a.send_message(b"abcdef")
        assert await b.receive_some(3) == b"abc"
        with pytest.raises(RuntimeError, match="middle of a message"):
            await b.receive_message()
        assert await b.receive_some() == b"def"


async def test_receive_some_returns_what_is_ready_then_the_error():
    with trio.fail_after(10):
        a, b = await _memory_pair()
        good = a._encode_message(b"one") + a._encode_message(b"two") + a._encode_message(b"three")
        bad = bytearray(a._encode_message(b"four"))
        bad[-1] ^= 1
        await a.inner.send_all(good + bytes(bad))
        assert await b.receive_some() == b"onetwothree"  # the good records, in one piece
        with pytest.raises(HandshakeError, match="altered"):
            await b.receive_some()  # then the tampered one
        with pytest.raises(ProtocolError, match="broken"):
            await b.receive_some()


async def test_concurrent_senders_and_receivers_are_serialised():
    with trio.fail_after(10):
        a, b = await _memory_pair()
        messages = [bytes([i]) * (1 + 40_000 * (i % 5)) for i in range(20)]
        received = []

        async def receiver():
            for _ in range(5):
                received.append(await b.receive_message())

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(receiver)
            for m in messages:
                nursery.start_soon(a.send_message, m)
        assert sorted(received) == sorted(messages)  # each whole, each once


async def test_receive_message_is_cancellation_safe():
    with trio.fail_after(10):
        a, b = await _memory_pair()
        message = os.urandom(3 * CONTINUE_BODY)
        wire = a._encode_message(message)
        await a.inner.send_all(wire[: len(wire) // 2])
        with trio.move_on_after(0.05) as scope:
            await b.receive_message()
        assert scope.cancelled_caught
        await a.inner.send_all(wire[len(wire) // 2 :])
        assert await b.receive_message() == message


# --- limits, EOF and bad peers ------------------------------------------------------------------------------


async def test_oversized_message_is_rejected_before_buffering():
    with trio.fail_after(10):
        a, b = await _memory_pair(kw_b={"max_message": MiB})
        await a.send_message(bytes(MiB))  # exactly the limit is fine
        assert len(await b.receive_message()) == MiB
        wire = a._encode_message(bytes(MiB + 1))
        await a.inner.send_all(wire[:100])  # only the start of the first record: the header says it all
        await a.inner.send_all(wire[100 : 65535 + 2])
        with pytest.raises(FrameTooLarge, match="over max_message"):
            await b.receive_message()
        assert len(b._raw) == 0 and not b._parts
        with pytest.raises(ProtocolError, match="broken"):
            await b.receive_message()  # it stays broken
        with pytest.raises(FrameTooLarge):
            await b.send_message(bytes(MiB + 1))  # the sender checks its own limit too


async def test_eof_handling():
    with trio.fail_after(10):
        a, b = await _memory_pair()
        await a.send_message(b"last words")
        await a.aclose()
        assert await b.receive_message() == b"last words"
        with pytest.raises(trio.EndOfChannel):
            await b.receive_message()
        assert await b.receive_some() == b"" and await b.receive_some() == b""
        with pytest.raises(trio.ClosedResourceError):
            await a.send_message(b"after close")

        # EOF inside a message (whole records, but not all of them)
        a, b = await _memory_pair()
        wire = a._encode_message(os.urandom(2 * CONTINUE_BODY))
        await a.inner.send_all(wire[: 2 + 65535])
        await a.inner.aclose()
        with pytest.raises(ProtocolError, match="bytes of a message due"):
            await b.receive_message()

        # EOF inside a record
        a, b = await _memory_pair()
        await a.inner.send_all(b"\x00\x30partial")
        await a.inner.aclose()
        with pytest.raises(ProtocolError, match="inside an encrypted record"):
            await b.receive_some()


def _record(stream, plaintext: bytes) -> bytes:
    ct = stream._send.encrypt_with_ad(b"", plaintext)
    return struct.pack(">H", len(ct)) + ct


@pytest.mark.parametrize(
    "records, error",
    [
        ([b""], "empty record"),
        ([b"\x07hello"], "unknown record type"),
        ([b"\x00orphan"], "outside any message"),
        ([b"\x01\x00\x00"], "too short"),
        ([b"\x01\x00\x00\x00\x02abc"], "holds 3 bytes of a 2-byte message"),
        ([b"\x01\x00\x00\x00\x09abc", b"\x01\x00\x00\x00\x01x"], "new message began"),
        ([b"\x01\x00\x00\x00\x09abc", b"\x00"], "continuation record of 0 bytes"),
        ([b"\x01\x00\x00\x00\x05abc", b"\x00xyz"], "continuation record of 3 bytes where 2"),
    ],
)
async def test_protocol_violations_inside_valid_records(records, error):
    with trio.fail_after(10):
        a, b = await _memory_pair()
        await a.inner.send_all(b"".join(_record(a, r) for r in records))
        with pytest.raises(ProtocolError, match=error):
            await b.receive_message()


@settings(max_examples=40, deadline=None)
@given(pos=st.integers(0, 10**9), bit=st.integers(0, 7), size=st.sampled_from([0, 5, START_BODY + 100]))
async def test_any_flipped_bit_on_the_wire_is_an_error(pos, bit, size):
    with trio.fail_after(10):
        a, b = await _memory_pair()
        message = os.urandom(size)
        wire = bytearray(a._encode_message(message))
        wire[pos % len(wire)] ^= 1 << bit
        await a.inner.send_all(bytes(wire))
        await a.inner.aclose()
        with pytest.raises(ProtocolError):  # HandshakeError (altered) or a framing error, never data
            await b.receive_message()


async def test_garbage_silence_and_wrong_prologue_fail_the_handshake():
    with trio.fail_after(10):
        for garbage in [b"\x00\x05hello", b"\x00\x00", os.urandom(2000), b"\x00\x20" + bytes(32)]:
            a, b = trio.testing.memory_stream_pair()
            await a.send_all(garbage)
            await a.aclose()
            with pytest.raises(HandshakeError):
                await secure_stream(b, initiator=False)
            a, b = trio.testing.memory_stream_pair()
            await b.send_all(garbage)
            await b.aclose()
            with pytest.raises(HandshakeError):
                await secure_stream(a, initiator=True)
        a, b = trio.testing.memory_stream_pair()
        with pytest.raises(HandshakeError, match="within"):
            await secure_stream(b, initiator=False, handshake_timeout=0.2)
        a, b = trio.testing.memory_stream_pair()
        await a.send_all(b"\xff\xff" + bytes(100))  # a long message that never comes
        with pytest.raises(HandshakeError, match="within"):
            await secure_stream(b, initiator=False, handshake_timeout=0.2)
        errors = await _both_fail({"prologue": b"one"}, {"prologue": b"two"})
        assert len(errors) == 2


async def _both_fail(kw_a, kw_b, relay=None):
    """Handshake two sides (through ``relay`` if given); returns the HandshakeErrors they raised."""
    results = await _handshake_results(kw_a, kw_b, relay)
    return [r for r in results.values() if isinstance(r, HandshakeError)]


async def _handshake_results(kw_a, kw_b, relay=None):
    """{"initiator": SecureStream or HandshakeError, "responder": ...}"""
    a, b = trio.testing.memory_stream_pair()
    results = {}

    async def side(name, stream, initiator, kw):
        try:
            results[name] = await secure_stream(stream, initiator=initiator, handshake_timeout=1, **kw)
        except HandshakeError as exc:
            results[name] = exc

    async with trio.open_nursery() as nursery:
        if relay is not None:
            (a, m1), (m2, b) = trio.testing.memory_stream_pair(), trio.testing.memory_stream_pair()
            nursery.start_soon(relay, m1, m2)
        nursery.start_soon(side, "initiator", a, True, kw_a)
        nursery.start_soon(side, "responder", b, False, kw_b)
    return results


# offsets into the handshake bytes: message 1 is 2 + 32 bytes, message 2 is 2 + 96, message 3 is 2 + 64
M1, M2, M3 = 0, 34, 34 + 98


@pytest.mark.parametrize(
    "flip_at", [M1 + 1, M1 + 2 + 5, M2 + 1, M2 + 2 + 5, M2 + 2 + 40, M2 + 2 + 90, M3 + 2 + 10, M3 + 2 + 60]
)
async def test_tampering_relay_fails_the_handshake(flip_at):
    """A man in the middle that changes one bit of the handshake.

    Up to message 2 both sides fail. Message 3 is the last, so the initiator has finished when the
    responder rejects it; the responder closes, and the initiator's first read finds the end.
    """

    async def relay(left, right):
        seen = 0

        async def pump(src, dst):
            nonlocal seen
            try:
                for _ in range(100):
                    data = bytearray(await src.receive_some())
                    if not data:
                        break
                    if seen <= flip_at < seen + len(data):
                        data[flip_at - seen] ^= 0x10
                    seen += len(data)
                    await dst.send_all(bytes(data))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # the other direction closed both
            await dst.aclose()

        with trio.move_on_after(3):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, left, right)
                nursery.start_soon(pump, right, left)
        await left.aclose()
        await right.aclose()

    with trio.fail_after(10):
        results = await _handshake_results({}, {}, relay=relay)
        assert isinstance(results["responder"], HandshakeError), results
        if flip_at < M3:
            assert isinstance(results["initiator"], HandshakeError), results
        else:
            initiator = results["initiator"]
            assert isinstance(initiator, SecureStream)
            with pytest.raises(trio.EndOfChannel):
                await initiator.receive_message()


async def test_key_substituting_mitm_is_visible():
    """A MITM that runs its own handshakes with each side succeeds only by showing its own key.

    Each side then sees the MITM's public key instead of the peer's, and the two handshake hashes
    differ, so capabilities bound to one connection fail on the other.
    """
    with trio.fail_after(10):
        (a_raw, m_left), (m_right, b_raw) = (
            trio.testing.memory_stream_pair(),
            trio.testing.memory_stream_pair(),
        )
        mitm_key = os.urandom(32)
        a, m1 = await _pair(a_raw, m_left, kw_b={"static_private": mitm_key})
        m2, b = await _pair(m_right, b_raw, kw_a={"static_private": mitm_key})
        assert a.remote_public_key == keypair(mitm_key)[1] != b.public_key
        assert a.handshake_hash != b.handshake_hash


async def test_send_after_a_cancelled_send_is_refused():
    with trio.fail_after(10):
        client, server = await _tcp_streams()
        a, b = await _pair(client, server, kw_a={"max_message": 128 * MiB})
        with trio.move_on_after(0.2):
            await a.send_message(bytes(64 * MiB))  # nobody reads: the socket buffers fill, then cancel
        with pytest.raises(trio.BrokenResourceError):
            await a.send_message(b"more")
        await a.aclose()
        await b.aclose()
