"""Hypercore wire protocol, stage 1: every byte vector of wire-seed07.json (from the JS modules) reproduced."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corelog import Node, _crypto
from corelog.replication._noise import ED25519, NoiseXX
from corelog.replication.errors import ProtocolError
from corelog.replication.hypercore import _caps
from corelog.replication.hypercore import _messages as m
from corelog.replication.hypercore._encoding import Reader, Writer, encode_uint
from corelog.replication.hypercore._proof import generate, verify_block_path
from corelog.replication.hypercore._protomux import Closed, Message, Mux, Opened, RemoteOpen
from corelog.replication.hypercore._secretstream import SecretStream
from corelog.replication.hypercore.errors import MuxError, ProofError, StreamError, WireError

VEC = Path(__file__).parent / "vectors"
W = json.loads((VEC / "wire-seed07.json").read_text())
H = json.loads((VEC / "hypercore11-seed07.json").read_text())
N = W["noise"]
HH = bytes.fromhex(N["handshakeHash"])
KEY = bytes.fromhex(W["core"]["key"])
DKEY = bytes.fromhex(W["core"]["discoveryKey"])


def b(name: str) -> bytes:
    return bytes.fromhex(W["messages"][name])


@pytest.fixture
def core(store):
    log = store.get("seed7", key_seed=bytes.fromhex(H["seed"]))
    log.append([bytes.fromhex(x) for x in H["blocks"][:6]])
    return log


def test_namespaces_and_keys():
    assert _caps.TREE == _crypto.TREE and _caps.MANIFEST == _crypto.MANIFEST
    assert (
        _caps.REPLICATE_INITIATOR.hex() == "51812a2a359b50369536775df89e18e47740f3db72ac0ae70b29594c194dc316"
    )
    assert (
        _caps.REPLICATE_RESPONDER.hex() == "0438492d02970cc13528ac0262bca0074e0926260256865accc0bf15bd79127d"
    )
    assert _caps.DEFAULT_NAMESPACE.hex() == "4144eea531e483d54e0c14f4ca68e0644f355343ff6fcb0f005200e12cd747cb"
    assert _caps.NS_INITIATOR.hex() == "a931a0155b5c09e6d28628236af83c4b8a6af9af60986edeede9dc5d63192bf7"
    assert _caps.NS_RESPONDER.hex() == "742c9d833d430af4c48a8705e91631eecf295442bbca18996e597097723b1061"
    assert _caps.NS_SEND.hex() == "aab97d097471f56651b0460ffc8aaa7d3342f7377597d60b925a1dac689adcbf"
    assert _caps.discovery_key(KEY) == DKEY
    assert _crypto.log_key(bytes.fromhex(W["core"]["manifest"])) == KEY


@pytest.mark.parametrize(
    "n, hexed",
    [
        (0, "00"),
        (0xFC, "fc"),
        (0xFD, "fdfd00"),
        (0xFFFF, "fdffff"),
        (0x10000, "fe00000100"),
        (2**32, "ff0000000001000000"),
    ],
)
def test_uint(n, hexed):
    assert encode_uint(n).hex() == hexed
    assert Reader(bytes.fromhex(hexed)).uint() == n


def test_uint_limits_and_truncation():
    with pytest.raises(ValueError):
        encode_uint(2**53)
    with pytest.raises(WireError, match="2\\*\\*53"):
        Reader(b"\xff" + (2**53).to_bytes(8, "little")).uint()
    assert Reader(b"\xfd\x05\x00").uint() == 5  # non-minimal encodings decode, as in JS
    with pytest.raises(WireError, match="truncated"):
        Reader(b"\xfe\x01").uint()
    with pytest.raises(WireError):
        Reader(b"\x05abc").buffer()
    with pytest.raises(WireError):
        Reader(encode_uint(0x100001)).array(Reader.uint)
    r = Reader(Writer().uint32array([1, 2**32 - 1]).bytes())
    assert r.uint32array() == [1, 2**32 - 1]


def test_noise_xx_ed25519_vector():
    i = NoiseXX(
        True,
        bytes.fromhex(N["initiatorStaticSeed"]),
        ephemeral_private=bytes.fromhex(N["initiatorEphemeralSeed"]),
        dh=ED25519,
    )
    r = NoiseXX(
        False,
        bytes.fromhex(N["responderStaticSeed"]),
        ephemeral_private=bytes.fromhex(N["responderEphemeralSeed"]),
        dh=ED25519,
    )
    assert i.public_key.hex() == N["initiatorStaticPublicKey"]
    m1 = i.write_message()
    assert m1.hex() == N["msg1"] == N["initiatorEphemeralPublicKey"]
    r.read_message(m1)
    m2 = r.write_message()
    assert m2.hex() == N["msg2"] and len(m2) == 96
    i.read_message(m2)
    m3 = i.write_message()
    assert m3.hex() == N["msg3"] and len(m3) == 64
    r.read_message(m3)
    assert i.handshake_hash == r.handshake_hash == HH
    assert i.remote_static.hex() == N["responderStaticPublicKey"]
    assert r.remote_static.hex() == N["initiatorStaticPublicKey"]
    tx, rx = i.split()
    assert tx.k.hex() == N["initiatorTx"] and rx.k.hex() == N["initiatorRx"]
    rtx, rrx = r.split()
    assert rtx.k == rx.k and rrx.k == tx.k


def test_noise_ed25519_refuses_bad_points():
    r = NoiseXX(False, bytes(32), dh=ED25519)
    r.read_message(bytes(32))  # -> e (not used in a DH yet)
    with pytest.raises(ProtocolError, match="invalid Ed25519"):
        r.write_message()  # ee with the all-zero point


def test_stream_ids_and_capabilities():
    assert _caps.stream_id(HH, True).hex() == W["streamId"]["initiator"]
    assert _caps.stream_id(HH, False).hex() == W["streamId"]["responder"]
    assert _caps.capability(HH, KEY, True).hex() == W["capability"]["initiator"]
    assert _caps.capability(HH, KEY, False).hex() == W["capability"]["responder"]


def pair(**kw):
    a = SecretStream(
        True,
        bytes.fromhex(N["initiatorStaticSeed"]),
        ephemeral_seed=bytes.fromhex(N["initiatorEphemeralSeed"]),
        **kw,
    )
    c = SecretStream(
        False,
        bytes.fromhex(N["responderStaticSeed"]),
        ephemeral_seed=bytes.fromhex(N["responderEphemeralSeed"]),
        **kw,
    )
    wire = []
    for _ in range(4):
        x = a.data_to_send()
        wire.append(x)
        c.receive_data(x)
        y = c.data_to_send()
        wire.append(y)
        a.receive_data(y)
    return a, c, wire


def test_secret_stream_handshake_bytes():
    a, c, wire = pair()
    assert wire[0].hex() == "200000" + N["msg1"]
    assert wire[1].hex() == "600000" + N["msg2"]
    assert wire[2][:67].hex() == "400000" + N["msg3"]
    assert wire[2][67:70].hex() == "380000" and wire[2][70:102].hex() == W["streamId"]["initiator"]
    assert wire[3][:35].hex() == "380000" + W["streamId"]["responder"]
    assert a.is_open and c.is_open and a.handshake_hash == HH
    a.send(b"one")
    a.send(b"")  # a keep-alive: 20 bytes on the wire, dropped by the receiver
    a.send(b"two")
    out = a.data_to_send()
    assert len(out) == (3 + 17 + 3) * 2 + 20
    assert c.receive_data(out[:10]) == []  # partial frames wait
    assert c.receive_data(out[10:]) == [b"one", b"two"]


def test_secret_stream_decrypts_js_frames():
    ss = W["secretstream"]
    r = SecretStream.from_handshake(
        False, tx=bytes.fromhex(N["initiatorRx"]), rx=bytes.fromhex(N["initiatorTx"]), handshake_hash=HH
    )
    assert r.data_to_send()[:35].hex() == "380000" + W["streamId"]["responder"]
    assert r.receive_data(bytes.fromhex(ss["headerFrame"])) == []
    got = [r.receive_data(bytes.fromhex(f)) for f in ss["encryptedFrames"]]
    assert got == [[bytes.fromhex(p)] if p else [] for p in ss["plaintexts"]]
    assert bytes.fromhex(ss["plaintexts"][0]) == bytes.fromhex(W["frames"]["open"])


def test_secret_stream_rejects_and_sticks():
    r = SecretStream.from_handshake(
        False, tx=bytes(32), rx=bytes.fromhex(N["initiatorTx"]), handshake_hash=HH
    )
    bad = bytearray(bytes.fromhex(W["secretstream"]["headerFrame"]))
    bad[5] ^= 1
    with pytest.raises(StreamError, match="invalid header"):
        r.receive_data(bytes(bad))
    with pytest.raises(StreamError):
        r.receive_data(b"")  # errors stick
    r = SecretStream.from_handshake(
        False, tx=bytes(32), rx=bytes.fromhex(N["initiatorTx"]), handshake_hash=HH
    )
    r.receive_data(bytes.fromhex(W["secretstream"]["headerFrame"]))
    frame = bytearray(bytes.fromhex(W["secretstream"]["encryptedFrames"][1]))
    frame[10] ^= 0x40
    with pytest.raises(StreamError, match="decrypt"):
        r.receive_data(bytes(frame))
    a, c, _ = pair(max_frame=1000)
    with pytest.raises(StreamError, match="frame of 1001 bytes"):
        c.receive_data(b"\xe9\x03\x00")  # refused from the announced length alone
    x = SecretStream(False)
    with pytest.raises(StreamError, match="frame of"):
        x.receive_data(b"\xff\xff\xff")  # during the handshake frames are small


def test_protomux_frames_match_js():
    mux = Mux()
    hs = m.encode_handshake(m.Handshake(bytes.fromhex(W["capability"]["initiator"]), seeks=True))
    ch = mux.open(m.PROTOCOL, DKEY, hs)
    assert mux.frames() == [bytes.fromhex(W["frames"]["open"])]
    peer_open = bytes.fromhex(W["frames"]["open"])
    (ev,) = mux.receive(peer_open)
    assert isinstance(ev, Opened) and ev.channel is ch and ch.remote_id == 1
    assert m.decode_handshake(ch.remote_handshake).capability.hex() == W["capability"]["initiator"]
    mux.cork()
    mux.send(ch, m.SYNC, m.encode(m.Sync(0, 6, 0, has_manifest=True)))
    mux.send(ch, m.RANGE, m.encode(m.Range(0, 6)))
    mux.uncork()
    assert mux.frames() == [bytes.fromhex(W["frames"]["batch_sync_range"])]
    mux.send(ch, m.SYNC, m.encode(m.Sync(0, 6, 0, has_manifest=True)))
    assert mux.frames() == [bytes.fromhex(W["frames"]["sync"])]
    evs = mux.receive(bytes.fromhex(W["frames"]["batch_sync_range"]))
    assert [(type(e), e.type) for e in evs] == [(Message, m.SYNC), (Message, m.RANGE)]
    assert m.decode(m.RANGE, evs[1].payload) == m.Range(0, 6)
    mux.close(ch)
    assert mux.frames() == [bytes.fromhex(W["frames"]["close"])]
    mux2 = Mux()
    (ev,) = mux2.receive(peer_open)
    assert isinstance(ev, RemoteOpen) and ev.id == DKEY
    mux2.reject(ev.remote_id)
    assert mux2.frames() == [bytes.fromhex(W["frames"]["reject"])]


def test_protomux_ids_and_violations():
    mux = Mux()
    a = mux.open("p", b"a", b"")
    c = mux.open("p", b"c", b"")
    assert (a.local_id, c.local_id) == (1, 2)
    mux.receive(b"\x00\x01\x01\x01p\x01a")
    mux.close(a)  # paired: id 1 is free again
    assert mux.open("p", b"d", b"").local_id == 1
    with pytest.raises(MuxError, match="out of sequence"):
        mux.receive(b"\x00\x01\x05\x01p\x01x")  # a gap in the peer's ids
    mux = Mux()
    mux.receive(b"\x00\x01\x01\x01p\x01a")
    with pytest.raises(MuxError, match="in use"):
        mux.receive(b"\x00\x01\x01\x01p\x01b")
    with pytest.raises(MuxError, match="reject"):
        Mux().receive(b"\x00\x02\x07")
    mux = Mux(max_buffered=2000)
    (ev,) = mux.receive(b"\x00\x01\x01\x01p\x01a")
    with pytest.raises(MuxError, match="not opened yet"):
        for _ in range(10):
            mux.receive(b"\x01\x00" + bytes(300))
    mux = Mux()
    assert mux.receive(b"\x09\x00hello") == []  # unknown channel: ignored
    assert mux.receive(b"") == []
    mux.receive(b"\x00\x01\x01\x01p\x01a")
    ch = mux.open("p", b"a", b"")
    assert isinstance(mux.receive(b"\x00\x03\x01")[-1], Closed) and ch.closed


@pytest.mark.parametrize(
    "name, msg",
    [
        ("sync_writer", m.Sync(0, 6, 0, True, True, True, True)),
        ("sync_reader0", m.Sync(0, 0, 0, True, True, True, False)),
        ("request_upgrade_manifest", m.Request(1, 0, upgrade=(0, 6), manifest=True)),
        ("request_block3_nodes2", m.Request(6, 0, block=(3, 2))),
        ("request_block5_upgrade_2_4", m.Request(2, 0, block=(5, 0), upgrade=(2, 4))),
        ("noData_notAvailable", m.NoData(9, m.NOT_AVAILABLE)),
        ("cancel", m.Cancel(7)),
        ("want", m.Want(0, 2**21)),
        ("bitfield", m.Bitfield(0, [0x3F])),
        ("range_0_6", m.Range(0, 6)),
        ("range_single_5", m.Range(5, 1)),
        ("range_drop_5_1", m.Range(5, 1, drop=True)),
    ],
)
def test_messages(name, msg):
    assert m.encode(msg).hex() == W["messages"][name]
    assert m.decode(m.type_of(msg), b(name)) == msg
    if name != "want":  # (its optional flags are absent, so extra bytes would be read as flags)
        assert m.decode(m.type_of(msg), b(name) + b"\x07\x07") == msg  # trailing bytes are ignored


def answer(core, req):
    g = generate(core.length, core.get_node, block=req.block, hash=req.hash, upgrade=req.upgrade)
    head = core.head()
    return m.Data(
        req.id,
        head.fork,
        block=m.DataBlock(req.block[0], core.get(req.block[0]), g.node) if req.block else None,
        upgrade=m.DataUpgrade(
            req.upgrade[0], req.upgrade[1], g.upgrade, g.additional or [], head.encoded_signature
        )
        if req.upgrade
        else None,
        manifest=core.manifest if req.manifest else None,
    )


@pytest.mark.parametrize(
    "req, data",
    [
        ("request_upgrade_manifest", "data_upgrade_manifest"),
        ("request_block3_nodes2", "data_block3"),
        ("request_block5_upgrade_2_4", "data_block5_upgrade_2_4"),
    ],
)
def test_data_answers_from_a_corelog_log(core, req, data):
    assert core.key == KEY and core.head().tree_hash.hex() == W["core"]["treeHash"]
    assert core.head().encoded_signature.hex() == W["core"]["signature"]
    got = answer(core, m.decode(m.REQUEST, b(req)))
    assert m.encode(got).hex() == W["messages"][data]
    assert m.decode(m.DATA, b(data)) == got


def test_proofs_grow_and_refuse(core):
    core.append([b"x", b"y"])  # 6 -> 8: upgrade{6,2} sends [13]; additional nodes when we grew
    assert [n.index for n in generate(8, core.get_node, upgrade=(6, 2)).upgrade] == [13]
    g = generate(8, core.get_node, upgrade=(0, 6))
    assert [n.index for n in g.upgrade] == [3, 9] and [n.index for n in g.additional] == [13]
    with pytest.raises(ProofError, match="out of bounds"):
        generate(8, core.get_node, block=(3, 4))
    with pytest.raises(ProofError, match="invalid upgrade"):
        generate(8, core.get_node, upgrade=(6, 5))
    g = generate(8, core.get_node, block=(3, 3))
    trusted = {7: core.get_node(7)}
    learnt = verify_block_path(3, core.get(3), g.node, trusted.get)
    assert learnt is not None and learnt[3] == core.get_node(3)
    assert verify_block_path(3, core.get(3), g.node, {}.get) is None  # ends at a node we do not hold
    with pytest.raises(ProofError, match="does not match"):
        verify_block_path(3, core.get(3) + b"!", g.node, trusted.get)
    with pytest.raises(ProofError, match="not the sibling"):
        verify_block_path(3, core.get(3), g.node[::-1], trusted.get)
    assert isinstance(g.node[0], Node)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 9), st.binary(max_size=80))
def test_decoders_never_crash(type_, payload):
    try:
        m.decode(type_, payload)
    except WireError:
        pass
    mux = Mux()
    mux.receive(b"\x00\x01\x01\x01p\x01a")
    mux.open("p", b"a", b"")
    try:
        mux.receive(payload)
    except MuxError:
        pass


def test_two_sans_io_protocols_replicate_and_announce_at_once(make_store):
    from corelog.replication.hypercore import Protocol

    w = make_store().get("w")
    w.append([b"e%d" % i for i in range(300)])
    replica = make_store().get(key=w.key)
    reader, writer = Protocol(True), Protocol(False, w.store)
    reader.open(replica)

    def pump() -> None:
        for _ in range(1000):
            x, y = reader.data_to_send(), writer.data_to_send()
            if not x and not y:
                return
            writer.receive_data(x)
            reader.receive_data(y)
        raise AssertionError("no quiescence")

    pump()
    assert replica.contiguous_length == 300 and replica.head().tree_hash == w.head().tree_hash
    assert reader.done
    w.append(b"live")
    writer.local_changed(w)
    out = writer.data_to_send()
    assert out  # the announcement is ready at once, not on the next read
    reader.receive_data(out)
    pump()
    assert replica.contiguous_length == 301 and replica.get(300) == b"live"
