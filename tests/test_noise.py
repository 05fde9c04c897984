"""Noise_XX_25519_ChaChaPoly_BLAKE2b: published vectors byte for byte, noiseprotocol interop, tampering."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corelog.replication._noise import MAX_MESSAGE, CipherState, NoiseXX, keypair
from corelog.replication.errors import HandshakeError, ProtocolError

# Two vector cases copied (only the values needed) from github.com/mcginty/snow at commit
# 8ac60f51cfe3e010c84f0a454cc575ad9204fa12, the entries "Noise_XX_25519_ChaChaPoly_BLAKE2b" of
#   tests/vectors/cacophony.txt (the cacophony vectors; the same entry is in rweather/noise-c
#   tests/vector/cacophony.txt), which has a handshake hash, and
#   tests/vectors/snow.txt (snow's own vectors: other keys, a longer prologue, 32-byte payloads).
# Messages alternate initiator, responder, initiator, ... including the transport messages after split.
CACOPHONY = {
    "prologue": "4a6f686e2047616c74",
    "init_static": "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1",
    "init_ephemeral": "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a",
    "resp_static": "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893",
    "resp_ephemeral": "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b",
    "handshake_hash": "8cf47d7b3cb5804c0109d48e8bcdbee2cbb65687d8ea2c92994ca361fb86151a"
    "d93627b98936cbb32de56e8abb21def3925011ac3e35db9cbeea73ab9a4392c2",
    "messages": [
        (
            "4c756477696720766f6e204d69736573",
            "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c79444c756477696720766f6e204d69736573",
        ),
        (
            "4d757272617920526f746862617264",
            "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f1448088430505b6745ce64a5f33f0e8e3b83f11ce88"
            "02bca507f4f2d8b564dbe277e1966116e132faa2dfd70b8b077b9f94b913df5056ae1319469b824a98d54bbaa82c325595"
            "587064f978c4b6d104f7596e6f",
        ),
        (
            "462e20412e20486179656b",
            "99579e1c1ee15e422a57ddd6b16d37087b17558e8369c18991b4b2ca3a824abf904cdcf5458b5431a75af034ca9e9b98"
            "2de039eaaf156775e2d580cd4e5ebae89c3f8cb2594b556d8a8169",
        ),
        ("4361726c204d656e676572", "fc56eea290b3f3a21aac0c70cd5787b5ee99be37d2f4d751329b55"),
        (
            "4a65616e2d426170746973746520536179",
            "bb31c9da10d5639a4cdb88a12f5c61de41bbc7df09bf75d94f8184fe4157f5c68f",
        ),
        (
            "457567656e2042f6686d20766f6e2042617765726b",
            "f6199cadb152fb27f82be0a0891ec76a33598ae92a46cab2fb5a8ed5bf48b7f267f8370af7",
        ),
    ],
}

SNOW = {
    "prologue": "5468657265206973206e6f20726967687420616e642077726f6e672e2054686572652773206f6e6c79"
    "2066756e20616e6420626f72696e672e",
    "init_static": "842752777821bd4c9a6a84c777cb9028ba2446c864e035c8d380632dca3a7702",
    "init_ephemeral": "5dfce6be0b767fc60a51e1d627711c67d63e97115cb3957a64a66919747ea47c",
    "resp_static": "8885e7006b27a44bec4a6e7bfcc37032a3564a73bf9588585bd1166829d80d8a",
    "resp_ephemeral": "9c012e056ed37994a4bfb09f57a7505bf44c07e9784c3c2bcefd8880b2d85e21",
    "handshake_hash": None,  # not in snow.txt
    "messages": [
        (
            "bcb708376354e0dc837fc3f7e0e9c8c59849fd907a129a3c0afde64e79d1ac09",
            "50a7da541baa50d563e3fd3526f53e9b7e4af8083a4180b5d1f8cd49fbe30518"
            "bcb708376354e0dc837fc3f7e0e9c8c59849fd907a129a3c0afde64e79d1ac09",
        ),
        (
            "77783888d07aa30dfeccf96d8da0a293546232bc8a460b5fbca479e3da54d3b2",
            "6b0ae570deada82b6f3071c87bd361014c34f8d15fee49ed0078f38a9c05bb703c2eb46ccc2734a9c07555b85d6f0b5a"
            "e29f24aaa2c351d815acd2e1de7770344339d0d854daf5a4468b189caf7ff643d6c5645e9e7fd5edcad6755ea0a01f51"
            "f552650ab99b7a0eba09f64b9dc0737f5756688682897c0912890a6ec56d72f8",
        ),
        (
            "420d0154f4e26a4224c201f3ecceddc06eb8896b78386978fb25b21dd276c6fb",
            "386d9e2549dcb9a016db7e05f45c19d2c4fd4e7a61d1c06dbd01d21012d448b34761826aa7b3fc8d0c5cc73d487c1f19"
            "ac29de837b4ccd361603f03d12f8971ae0534fbd8096fd5bc2c7bdc77026207623514afa5804d07a3b0c316f9e5a9c12",
        ),
        (
            "58f929d4d8eda457fb01b3a09bb6391aac0d93477df9e3042355741747744571",
            "c81ba3d22336cd78d64ff9e2161d339db9fd3a5407a3fb594fb7a59d718e83c6054b1002721e63ffb2a2d2d8bfd670bc",
        ),
        (
            "c86af330a6b59de9d7ead76260204ef7e897a1323bdc0a9c5ea4450556ed0bf6",
            "1207c87bc8ec9b6d5db3a3d3ed5caab43c98e71492a424b7d7302ea8313d1b0e3644c9b3c479a80cdb3da1e92466b8ac",
        ),
    ],
}


def _vector_pair(v):
    h = bytes.fromhex
    i = NoiseXX(
        True, h(v["init_static"]), prologue=h(v["prologue"]), ephemeral_private=h(v["init_ephemeral"])
    )
    r = NoiseXX(
        False, h(v["resp_static"]), prologue=h(v["prologue"]), ephemeral_private=h(v["resp_ephemeral"])
    )
    return i, r


def _handshake(i, r, payloads=(b"", b"", b"")):
    r.read_message(i.write_message(payloads[0]))
    i.read_message(r.write_message(payloads[1]))
    r.read_message(i.write_message(payloads[2]))
    return i, r


def _random_pair(**kw):
    return NoiseXX(True, os.urandom(32), **kw), NoiseXX(False, os.urandom(32), **kw)


@pytest.mark.parametrize("vector", [CACOPHONY, SNOW], ids=["cacophony", "snow"])
def test_published_vector_byte_for_byte(vector):
    i, r = _vector_pair(vector)
    messages = [(bytes.fromhex(p), bytes.fromhex(c)) for p, c in vector["messages"]]
    sides = [i, r]
    for n, (payload, ct) in enumerate(messages[:3]):
        writer, reader = sides[n % 2], sides[(n + 1) % 2]
        assert not writer.complete
        msg = writer.write_message(payload)
        assert msg.hex() == ct.hex(), f"handshake message {n}"
        assert reader.read_message(msg) == payload
    assert i.complete and r.complete
    assert i.handshake_hash == r.handshake_hash and len(i.handshake_hash) == 64
    if vector["handshake_hash"]:
        assert i.handshake_hash.hex() == vector["handshake_hash"]
    assert i.remote_static == r.public_key == keypair(bytes.fromhex(vector["resp_static"]))[1]
    assert r.remote_static == i.public_key == keypair(bytes.fromhex(vector["init_static"]))[1]
    ciphers = [i.split(), r.split()]  # (send, receive) each
    for n, (payload, ct) in enumerate(messages[3:], start=3):
        writer, reader = n % 2, (n + 1) % 2
        assert ciphers[writer][0].encrypt_with_ad(b"", payload).hex() == ct.hex(), f"transport message {n}"
        assert ciphers[reader][1].decrypt_with_ad(b"", ct) == payload


# --- interop with the noiseprotocol package (an independent implementation) ---------------------------------


def _noiseprotocol(initiator, static_private, prologue):
    connection = pytest.importorskip(
        "noise.connection", reason="the noiseprotocol package (test-only interop check) is not installed"
    )
    conn = connection.NoiseConnection.from_name(b"Noise_XX_25519_ChaChaPoly_BLAKE2b")
    conn.set_as_initiator() if initiator else conn.set_as_responder()
    conn.set_keypair_from_private_bytes(connection.Keypair.STATIC, static_private)
    conn.set_prologue(prologue)
    conn.start_handshake()
    return conn


@pytest.mark.parametrize("we_initiate", [True, False])
def test_interop_with_noiseprotocol(we_initiate):
    ours_private, theirs_private, prologue = os.urandom(32), os.urandom(32), b"corelog interop"
    theirs = _noiseprotocol(not we_initiate, theirs_private, prologue)
    ours = NoiseXX(we_initiate, ours_private, prologue=prologue)
    payloads = [b"one", b"two" * 100, b""]
    for n, payload in enumerate(payloads):
        if (n % 2 == 0) == we_initiate:
            assert bytes(theirs.read_message(ours.write_message(payload))) == payload
        else:
            assert ours.read_message(bytes(theirs.write_message(payload))) == payload
    assert ours.complete and theirs.handshake_finished
    assert ours.handshake_hash == bytes(theirs.get_handshake_hash())
    assert ours.remote_static == keypair(theirs_private)[1]
    send, receive = ours.split()
    for size in (0, 1, 1000, MAX_MESSAGE - 16):
        data = os.urandom(size)
        assert bytes(theirs.decrypt(send.encrypt_with_ad(b"", data))) == data
        assert receive.decrypt_with_ad(b"", bytes(theirs.encrypt(data))) == data


# --- tampering and misuse --------------------------------------------------------------------------------


def _flip(message: bytes, pos: int, bit: int) -> bytes:
    bad = bytearray(message)
    bad[pos % len(bad)] ^= 1 << bit
    return bytes(bad)


@settings(max_examples=150, deadline=None)
@given(
    which=st.integers(0, 2), pos=st.integers(0, 10_000), bit=st.integers(0, 7), payload=st.binary(max_size=40)
)
def test_any_flipped_handshake_bit_is_rejected(which, pos, bit, payload):
    i, r = _random_pair(prologue=b"p")
    m1 = i.write_message(payload)
    if which == 0:
        # message 1 (-> e, payload) is unauthenticated by design; the change is in the transcript
        # hash, so it surfaces at the latest when the initiator reads message 2
        with pytest.raises(HandshakeError):
            r.read_message(_flip(m1, pos, bit))
            i.read_message(r.write_message(payload))
        return
    r.read_message(m1)
    m2 = r.write_message(payload)
    if which == 1:
        msg, reader = m2, i
    else:
        i.read_message(m2)
        msg, reader = i.write_message(payload), r
    with pytest.raises(HandshakeError):
        reader.read_message(_flip(msg, pos, bit))
    assert reader.remote_static is None  # no unproven identity is exposed
    with pytest.raises(HandshakeError, match="already failed"):
        reader.read_message(msg)  # a failed handshake stays failed


@settings(max_examples=100, deadline=None)
@given(which=st.integers(1, 2), cut=st.integers(0, 200))
def test_truncated_or_extended_handshake_messages_are_rejected(which, cut):
    i, r = _random_pair()
    r.read_message(i.write_message())
    m2 = r.write_message()
    if which == 1:
        msg, reader = m2, i
    else:
        i.read_message(m2)
        msg, reader = i.write_message(), r
    bad = msg[: cut % len(msg)] if cut < 100 else msg + os.urandom(cut - 99)
    with pytest.raises(HandshakeError):
        reader.read_message(bad)


def test_short_messages_and_bad_keys_are_handshake_errors():
    with pytest.raises(HandshakeError, match="truncated"):
        NoiseXX(False, os.urandom(32)).read_message(b"x" * 31)
    # an all-zero (low-order) ephemeral key: the DH is refused, not used
    r = NoiseXX(False, os.urandom(32))
    r.read_message(bytes(32))
    with pytest.raises(HandshakeError, match="invalid X25519"):
        r.write_message()
    # message 2 whose payload tag is cut short (less than 16 bytes left after e and s)
    i, r = _random_pair()
    r.read_message(i.write_message())
    with pytest.raises(HandshakeError):
        i.read_message(r.write_message()[:-5])
    with pytest.raises(HandshakeError):
        NoiseXX(True, os.urandom(32)).read_message(b"x" * 100)  # not our turn
    with pytest.raises(HandshakeError):
        NoiseXX(False, os.urandom(32)).write_message()  # not our turn
    i, r = _random_pair()
    with pytest.raises(HandshakeError, match="not complete"):
        _ = i.handshake_hash
    with pytest.raises(HandshakeError, match="not complete"):
        i.split()
    with pytest.raises(ValueError):
        i.write_message(bytes(MAX_MESSAGE))
    with pytest.raises(ValueError):
        NoiseXX(True, b"short")


def test_prologue_mismatch_fails_at_message_2():
    i, r = NoiseXX(True, os.urandom(32), prologue=b"one"), NoiseXX(False, os.urandom(32), prologue=b"two")
    r.read_message(i.write_message())
    with pytest.raises(HandshakeError, match="altered"):
        i.read_message(r.write_message())


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=300), pos=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_flipped_transport_bit_is_rejected_and_nonce_kept(data, pos, bit):
    i, r = _handshake(*_random_pair())
    (send, _), (_, receive) = i.split(), r.split()
    ct = send.encrypt_with_ad(b"", data)
    with pytest.raises(HandshakeError):
        receive.decrypt_with_ad(b"", _flip(ct, pos, bit))
    with pytest.raises(HandshakeError):
        receive.decrypt_with_ad(b"", ct[: pos % len(ct)])
    assert receive.decrypt_with_ad(b"", ct) == data  # the failures did not move the counter


def test_transport_order_replay_and_nonce_exhaustion():
    i, r = _handshake(*_random_pair())
    (send, _), (_, receive) = i.split(), r.split()
    c1 = send.encrypt_with_ad(b"", b"hello")
    c2 = send.encrypt_with_ad(b"", b"world")
    with pytest.raises(HandshakeError):
        receive.decrypt_with_ad(b"", c2)  # out of order
    assert receive.decrypt_with_ad(b"", c1) == b"hello"
    with pytest.raises(HandshakeError):
        receive.decrypt_with_ad(b"", c1)  # replayed
    assert receive.decrypt_with_ad(b"", c2) == b"world"

    key = os.urandom(32)
    a, b = CipherState(key), CipherState(key)
    a.n = b.n = 2**64 - 2  # the last usable nonce
    assert b.decrypt_with_ad(b"ad", a.encrypt_with_ad(b"ad", b"last")) == b"last"
    with pytest.raises(ProtocolError, match="nonce exhausted"):
        a.encrypt_with_ad(b"", b"one too many")
    with pytest.raises(ProtocolError, match="nonce exhausted"):
        b.decrypt_with_ad(b"", bytes(32))
    assert CipherState().encrypt_with_ad(b"", b"clear") == b"clear"  # no key yet: identity
