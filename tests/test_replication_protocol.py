"""The sans-IO replication protocol: sync, live, reorg, relay, and every kind of bad peer.

Peers are driven directly (bytes in, bytes out), so a test can rewrite any frame
on its way, exactly like a malicious peer would.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corelog import MAX_BLOCK_SIZE
from corelog.errors import InvalidProof, InvalidSignature
from corelog.replication._connection import Connection
from corelog.replication._messages import (
    Data,
    FrameDecoder,
    Head,
    Open,
    Request,
    decode,
    encode,
)
from corelog.replication._replicator import Replicator
from corelog.replication.errors import FrameTooLarge, ProtocolError, RemoteError

HH = bytes(range(64))


def pair(a_source, b_source, **kw):
    hh = os.urandom(64)
    return (
        Replicator(a_source, handshake_hash=hh, initiator=True, **kw),
        Replicator(b_source, handshake_hash=hh, initiator=False, **kw),
    )


def frames(data: bytes):
    dec = FrameDecoder()
    dec.feed(data)
    out = []
    while (body := dec.next_frame()) is not None:
        out.append(decode(body))
    return out


def pump(a, b, a2b=None, b2a=None, *, tamper=None, rounds=200):
    """Shuttle bytes until both are quiet; ``tamper(msg)`` may rewrite a->b messages."""
    a2b = a.start() if a2b is None else a2b
    b2a = b.start() if b2a is None else b2a
    for _ in range(rounds):
        if not a2b and not b2a:
            return
        if tamper and a2b:
            a2b = b"".join(encode(tamper(m)) for m in frames(a2b))
        x = b.receive_data(a2b) if a2b else b""
        y = a.receive_data(b2a) if b2a else b""
        a2b, b2a = y, x
        if a.error or b.error:
            # deliver the Error frames once more, then stop
            if x:
                a.receive_data(x)
            if y and not b.error:
                b.receive_data(y)
            return
    raise AssertionError("peers did not go quiet")


@pytest.fixture
def writer(make_store):
    s = make_store("writer")
    log = s.get("log")
    log.append([b"entry %d" % i for i in range(300)])
    return s, log


def test_initial_sync_live_updates_and_truncation(writer, make_store):
    ws, log = writer
    rs = make_store("reader")
    rep = rs.get(key=log.key)
    a, b = pair(ws, rs, batch_blocks=64)
    pump(a, b)
    assert rep.length == 300 and list(rep) == list(log) and b.synced and b.remote_done
    log.append([b"live 1", b"live 2"])
    pump(a, b, a.local_changed(log), b"")
    assert rep[-1] == b"live 2" and rep.head() == log.head()
    log.truncate(100)
    log.append(b"after truncate")
    pump(a, b, a.local_changed(log), b"")
    assert rep.fork == 1 and rep.length == 101 and list(rep) == list(log)
    assert rep.audit().ok


def test_a_request_window_opens_small_and_doubles_to_the_batch(writer, make_store):
    ws, log = writer
    rs = make_store("reader")
    rep = rs.get(key=log.key)
    asked: list[tuple[int, int]] = []

    def spy(msg):
        if isinstance(msg, Request):
            asked.append((msg.start, msg.end))
        return msg

    a, b = pair(rs, ws, batch_blocks=64)  # the replica initiates: its requests go a -> b
    pump(a, b, tamper=spy)
    assert rep.length == 300 and list(rep) == list(log) and rep.audit().ok
    sizes = [end - start for start, end in asked]
    assert sizes[:5] == [4, 8, 16, 32, 64] and set(sizes[5:-1]) == {64}, sizes
    assert [s for s, _ in asked] == [0, *[e for _, e in asked[:-1]]], "contiguous, in order, no gaps"


def test_relay_a_to_b_to_c(writer, make_store):
    ws, log = writer
    bs, cs = make_store("b"), make_store("c")
    b_rep, c_rep = bs.get(key=log.key), cs.get(key=log.key)
    ab_a, ab_b = pair(ws, bs)
    pump(ab_a, ab_b)
    bc_b, bc_c = pair(bs, cs)
    pump(bc_b, bc_c)
    assert list(c_rep) == list(log)
    log.append(b"fresh")
    pump(ab_a, ab_b, ab_a.local_changed(log), b"")
    pump(bc_b, bc_c, bc_b.local_changed(b_rep), b"")
    assert c_rep[-1] == b"fresh" and c_rep.head() == log.head() and c_rep.audit().ok


def test_peer_without_the_key_learns_nothing(writer, make_store):
    ws, log = writer
    a = Replicator(ws, handshake_hash=HH, initiator=False)
    a.start()
    spy = Connection(HH, initiator=True)
    wire = spy.hello() + spy.send(Open(0, log.discovery_key, os.urandom(32)))
    answer = frames(a.receive_data(wire))
    assert a.stats.rejected_opens == 1 and a.error is None
    assert not any(isinstance(m, Open | Head | Data) for m in answer), answer
    # a capability computed on another connection (replayed) is useless too
    other = Connection(os.urandom(64), initiator=True)
    a2 = Replicator(ws, handshake_hash=HH, initiator=False)
    a2.start()
    replay = Connection(HH, initiator=True)
    wire = replay.hello() + encode(Open(0, log.discovery_key, other.local_capability(log.key)))
    answer = frames(a2.receive_data(wire))
    assert a2.stats.rejected_opens == 1
    assert not any(isinstance(m, Open | Head | Data) for m in answer)


def _synced_replica(writer, make_store):
    ws, log = writer
    rs = make_store("reader")
    rep = rs.get(key=log.key)
    a, b = pair(ws, rs)
    pump(a, b)
    assert rep.length == 300
    log.append([b"more %d" % i for i in range(50)])
    return ws, log, rs, rep


def _evil(tamper, writer, make_store):
    ws, log, rs, rep = _synced_replica(writer, make_store)
    before = rep.head()
    a, b = pair(ws, rs, batch_blocks=10)  # small batches: proofs carry nodes
    pump(a, b, tamper=tamper)
    assert b.error is not None
    assert rep.head() == before and rep.contiguous_length == 300
    assert rep.audit().ok
    assert isinstance(a.error, RemoteError), "the bad peer is told why the connection closed"
    return b.error


def test_tampered_block_is_rejected(writer, make_store):
    def tamper(m):
        if isinstance(m, Data) and m.blocks:
            blocks = list(m.blocks)
            blocks[len(blocks) // 2] = b"evil" + blocks[len(blocks) // 2]
            return Data(*[getattr(m, f) for f in m.__slots__][:6], blocks, *[m.nodes, m.have, m.manifest])
        return m

    assert isinstance(_evil(tamper, writer, make_store), InvalidProof)


def test_wrong_node_is_rejected(writer, make_store):
    def tamper(m):
        if isinstance(m, Data) and m.nodes:
            nodes = [list(n) for n in m.nodes]
            nodes[0][2] = bytes(32)
            return Data(
                m.channel, m.id, m.fork, m.length, m.signature, m.start, m.blocks, nodes, m.have, m.manifest
            )
        return m

    assert isinstance(_evil(tamper, writer, make_store), InvalidProof)


def test_forged_head_signature_is_rejected(writer, make_store):
    def tamper(m):
        if isinstance(m, Head):
            return Head(m.channel, m.fork, m.length, m.tree_hash, bytes(64), m.byte_length, m.contiguous)
        return m

    assert isinstance(_evil(tamper, writer, make_store), InvalidSignature)


def test_replayed_signature_is_rejected(writer, make_store):
    ws, log = writer
    old_sig = log.head().signature  # valid for length 300, replayed for 350

    def tamper(m):
        if isinstance(m, Head):
            return Head(m.channel, m.fork, m.length, m.tree_hash, old_sig, m.byte_length, m.contiguous)
        if isinstance(m, Data):
            return Data(
                m.channel, m.id, m.fork, m.length, old_sig, m.start, m.blocks, m.nodes, m.have, m.manifest
            )
        return m

    assert isinstance(_evil(tamper, writer, make_store), InvalidSignature | InvalidProof)


def _data_with(m: Data, **changes) -> Data:
    fields = {f: getattr(m, f) for f in m.__slots__}
    fields.update(changes)
    return Data(**fields)


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda m: {"signature": m.signature[:63]}, "signature must be 64 bytes"),
        (lambda m: {"have": m.start + 1}, "range is inconsistent"),
        (lambda m: {"length": m.start + len(m.blocks) - 1}, "range is inconsistent"),
    ],
)
def test_data_the_frame_decoder_accepts_but_that_makes_no_proof_is_rejected(change, says, writer, make_store):
    # The replica builds its Proof with Proof.from_checked (the decoder checked types and integer
    # bounds): the checks left to it still happen, before anything is verified or written.
    def tamper(m):
        return _data_with(m, **change(m)) if isinstance(m, Data) and m.blocks else m

    err = _evil(tamper, writer, make_store)
    assert isinstance(err, InvalidProof) and says in str(err), err


def test_a_block_over_max_block_size_is_rejected_when_the_frame_limit_would_carry_it(writer, make_store):
    ws, log, rs, rep = _synced_replica(writer, make_store)
    before = rep.head()
    a, b = pair(ws, rs, batch_blocks=10, max_frame=2 * MAX_BLOCK_SIZE)

    def tamper(m):
        if isinstance(m, Data) and m.blocks:
            return _data_with(m, blocks=[b"x" * (MAX_BLOCK_SIZE + 1), *m.blocks[1:]])
        return m

    pump(a, b, tamper=tamper)
    assert isinstance(b.error, InvalidProof) and "over MAX_BLOCK_SIZE" in str(b.error), b.error
    assert rep.head() == before and rep.contiguous_length == 300 and rep.audit().ok


def test_unsolicited_data_is_rejected(writer, make_store):
    ws, log, rs, rep = _synced_replica(writer, make_store)
    a, b = pair(ws, rs)
    pump(a, b)  # channel open, everything synced
    log.append(b"x")
    proof = log.proof(350, 351, have=350)
    number = a.conn.channel_number(log.discovery_key)
    evil = encode(
        Data(
            number,
            999,
            proof.fork,
            proof.length,
            proof.signature,
            proof.start,
            list(proof.blocks),
            [list(n) for n in proof.nodes],
            proof.have,
            proof.manifest,
        )
    )
    before = rep.head()
    out = b.receive_data(evil)
    assert isinstance(b.error, ProtocolError) and "unsolicited" in str(b.error)
    assert any(type(m).__name__ == "Error" for m in frames(out))
    assert rep.head() == before


@pytest.mark.parametrize(
    "wire, error",
    [
        (b"\x00\x00\x00\x05garbage!!", ProtocolError),
        (b"\xff\xff\xff\xff", FrameTooLarge),
        (encode(Request(0, 0, 0, 0, 0, 5)), ProtocolError),  # before Hello
    ],
)
def test_garbage_and_oversized_frames(writer, wire, error, make_store):
    ws, log = writer
    a = Replicator(ws, handshake_hash=HH, initiator=False, max_frame=1 << 20)
    a.start()
    out = a.receive_data(wire)
    assert isinstance(a.error, error)
    assert type(frames(out)[-1]).__name__ == "Error"
    assert log.audit().ok


def test_conflict_is_detected_and_marked(make_store):
    seed = os.urandom(32)
    w1, w2 = make_store("w1", seed=seed), make_store("w2", seed=seed)
    l1, l2 = w1.get("same"), w2.get("same")
    assert l1.key == l2.key
    l1.append([b"a", b"b"])
    l2.append([b"a", b"B"])  # same key, same fork, same length, different tree
    rs = make_store("reader")
    rep = rs.get(key=l1.key)
    pump(*pair(w1, rs))
    assert list(rep) == [b"a", b"b"]
    a, b = pair(w2, rs)
    pump(a, b)
    assert rep.conflict is not None and b.stats.conflicts == [rep.key]
    assert b.error is None  # the connection survives; only the channel closed
    assert list(rep) == [b"a", b"b"]


def test_cut_mid_sync_resumes_without_loss_or_duplicates(writer, make_store):
    ws, log = writer
    log.append([b"bulk %d" % i for i in range(5000)])
    rs = make_store("reader")
    rep = rs.get(key=log.key)
    a, b = pair(ws, rs, batch_blocks=100, max_inflight=2)
    a2b, b2a = a.start(), b.start()
    for _ in range(6):  # a few exchanges, then the connection is cut
        a2b, b2a = b.receive_data(a2b) if a2b else b"", a.receive_data(b2a) if b2a else b""
        a2b, b2a = b2a, a2b
    partial = rep.contiguous_length
    assert 0 < partial < log.length
    assert rep.audit().ok
    pump(*pair(ws, rs))  # reconnect
    assert list(rep) == list(log) and rep.audit().ok


def test_thousand_logs_over_one_connection(make_store):
    ws, rs = make_store("w"), make_store("r")
    logs = [ws.get(f"log{i}") for i in range(1000)]
    for i, lg in enumerate(logs):
        lg.append([b"%d-%d" % (i, j) for j in range(5)])
    reps = [rs.get(key=lg.key) for lg in logs]
    a, b = pair(ws, rs)
    pump(a, b, rounds=5000)
    assert all(r.length == 5 and r[4] == b"%d-4" % i for i, r in enumerate(reps))
    assert b.synced


def test_store_wide_replication_and_unknown_logs(make_store):
    ws, rs = make_store("w"), make_store("r")
    wanted, private = ws.get("wanted"), ws.get("private")
    wanted.append(b"w")
    private.append(b"p")
    rep = rs.get(key=wanted.key)
    a, b = pair(ws, rs)
    pump(a, b)
    assert rep[0] == b"w"
    assert private.key not in rs  # never offered to someone who did not ask by key


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(1, 40)),
            st.tuples(st.just("truncate"), st.floats(0, 1)),
            st.tuples(st.just("step"), st.integers(1, 3)),
        ),
        max_size=25,
    )
)
def test_random_appends_truncates_and_partial_delivery_converge(make_store, ops):
    ws, rs = make_store(), make_store()
    log = ws.get("w")
    rep = rs.get(key=log.key)
    a, b = pair(ws, rs, batch_blocks=7, max_inflight=3)
    a2b, b2a = a.start(), b.start()
    counter = 0
    for op, arg in ops:
        if op == "append":
            log.append([b"%d" % (counter + i) for i in range(arg)])
            counter += arg
            a2b += a.local_changed(log)
        elif op == "truncate":
            log.truncate(int(arg * log.length))
            a2b += a.local_changed(log)
        else:  # deliver a few rounds, leaving the rest in flight
            for _ in range(arg):
                a2b, b2a = (a.receive_data(b2a) if b2a else b""), (b.receive_data(a2b) if a2b else b"")
                a2b, b2a = a2b, b2a
        assert a.error is None and b.error is None, (a.error, b.error)
        assert rep.audit().ok
    pump(a, b, a2b, b2a, rounds=2000)
    assert a.error is None and b.error is None
    assert list(rep) == list(log) and rep.audit().ok
    if log.length or log.fork:  # an untouched empty log has nothing to replicate
        assert rep.head() == log.head()
