"""Noise_XX_25519_ChaChaPoly_BLAKE2b against a published test vector, plus tampering."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corelog.errors import HandshakeError
from replication._noise import NoiseXX

# From the cacophony vectors as shipped in github.com/mcginty/snow, tests/vectors/cacophony.txt,
# entry "Noise_XX_25519_ChaChaPoly_BLAKE2b".
V = {
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
    ],
}


def _pair():
    h = bytes.fromhex
    i = NoiseXX(
        True, h(V["init_static"]), prologue=h(V["prologue"]), ephemeral_private=h(V["init_ephemeral"])
    )
    r = NoiseXX(
        False, h(V["resp_static"]), prologue=h(V["prologue"]), ephemeral_private=h(V["resp_ephemeral"])
    )
    return i, r


def test_cacophony_vector_byte_for_byte():
    i, r = _pair()
    sides = [i, r]
    for n, (payload, ct) in enumerate(V["messages"][:3]):
        writer, reader = sides[n % 2], sides[(n + 1) % 2]
        msg = writer.write_message(bytes.fromhex(payload))
        assert msg.hex() == ct, f"handshake message {n}"
        assert reader.read_message(msg) == bytes.fromhex(payload)
    assert i.complete and r.complete
    assert i.handshake_hash.hex() == V["handshake_hash"] == r.handshake_hash.hex()
    assert i.remote_static == r.s[1] and r.remote_static == i.s[1]
    _, i_recv = i.split()
    r_send, _ = r.split()
    payload, ct = V["messages"][3]  # senders keep alternating: the 4th message is the responder's
    assert r_send.encrypt_with_ad(b"", bytes.fromhex(payload)).hex() == ct
    assert i_recv.decrypt_with_ad(b"", bytes.fromhex(ct)) == bytes.fromhex(payload)


@settings(max_examples=60, deadline=None)
@given(which=st.integers(0, 2), data=st.data())
def test_any_flipped_handshake_byte_is_rejected(which, data):
    i, r = NoiseXX(True, os.urandom(32)), NoiseXX(False, os.urandom(32))
    m1 = i.write_message(b"one")
    if which == 0:
        # message 1 is unauthenticated by design (just e); tampering shows up later, in message 2
        pos = data.draw(st.integers(0, len(m1) - 1))
        bad = bytearray(m1)
        bad[pos] ^= 1 << data.draw(st.integers(0, 7))
        r.read_message(bytes(bad))
        m2 = r.write_message(b"two")
        with pytest.raises(HandshakeError):
            i.read_message(m2)
        return
    r.read_message(m1)
    m2 = r.write_message(b"two")
    if which == 1:
        msg, reader = m2, i
    else:
        i.read_message(m2)
        msg, reader = i.write_message(b"three"), r
    pos = data.draw(st.integers(0, len(msg) - 1))
    bad = bytearray(msg)
    bad[pos] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(HandshakeError):
        reader.read_message(bytes(bad))


def test_transport_tamper_and_replay_rejected():
    i, r = NoiseXX(True, os.urandom(32)), NoiseXX(False, os.urandom(32))
    r.read_message(i.write_message())
    i.read_message(r.write_message())
    r.read_message(i.write_message())
    send, _ = i.split()
    _, recv = r.split()
    c1 = send.encrypt_with_ad(b"", b"hello")
    c2 = send.encrypt_with_ad(b"", b"world")
    with pytest.raises(HandshakeError):
        recv.decrypt_with_ad(b"", c2)  # out of order
    assert recv.decrypt_with_ad(b"", c1) == b"hello"
    with pytest.raises(HandshakeError):
        recv.decrypt_with_ad(b"", c1)  # replayed
    with pytest.raises(HandshakeError):
        NoiseXX(True, os.urandom(32)).read_message(b"x")  # not our turn
