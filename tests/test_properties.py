"""Property tests (hypothesis) for the Merkle tree, proofs and tamper detection."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corelog import Proof, Store, _crypto, _flat
from corelog._log import HEAD, block_key, head_key, node_key
from corelog._tree import needed_nodes
from corelog.errors import InvalidProof, VerificationError

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
blocks_st = st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=12)
ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("append"), blocks_st),
        st.tuples(st.just("truncate"), st.floats(0, 1)),
    ),
    min_size=1,
    max_size=12,
)

_counter = itertools.count()


@pytest.fixture(scope="module")
def shared_store():
    with tempfile.TemporaryDirectory() as d:
        with Store(Path(d) / "s", sync=False) as s:
            yield s


def fresh_log(store):
    return store.get(f"log{next(_counter)}")


def reference_roots(blocks: list[bytes]):
    """The roots computed naively, straight from the definition (no flat-tree shortcuts)."""
    out = []
    start = 0
    for r in _flat.full_roots(len(blocks)):
        lo, hi = _flat.leaf_span(r)
        assert lo == start
        start = hi

        def node(lo, hi):
            if hi - lo == 1:
                return len(blocks[lo]), _crypto.leaf_hash(blocks[lo])
            mid = (lo + hi) // 2
            ls, lh = node(lo, mid)
            rs, rh = node(mid, hi)
            return ls + rs, _crypto.parent_hash(ls + rs, lh, rh)

        size, h = node(lo, hi)
        out.append((r, size, h))
    return out


@SETTINGS
@given(ops=ops_st)
def test_append_truncate_keeps_audit_clean(shared_store, ops):
    log = fresh_log(shared_store)
    model: list[bytes] = []
    forks = 0
    for op, arg in ops:
        if op == "append":
            log.append(arg if len(arg) > 1 else arg[0])
            model.extend(arg)
        else:
            n = int(arg * len(model))
            log.truncate(n)
            del model[n:]
            forks += 1
        assert log.length == len(model) and log.fork == forks
        assert log.byte_length == sum(map(len, model))
    assert list(log) == model
    assert [(r.index, r.size, r.hash) for r in log.roots()] == reference_roots(model)
    report = log.audit()
    assert report.ok, report.problems


@SETTINGS
@given(blocks=st.lists(st.binary(max_size=30), min_size=1, max_size=40), data=st.data())
def test_proof_for_every_index_and_range_verifies(shared_store, blocks, data):
    log = fresh_log(shared_store)
    log.append(blocks)
    for i in range(len(blocks)):
        v = log.verify(Proof.from_bytes(log.proof(i).to_bytes()))
        assert v.tree_hash == log.head().tree_hash
    a = data.draw(st.integers(0, len(blocks)))
    b = data.draw(st.integers(a, len(blocks)))
    have = data.draw(st.integers(0, a))
    proof = log.proof(a, b, have=have)
    assert [n.index for n in proof.nodes] == needed_nodes(len(blocks), have, a, b)
    v = log.verify(proof) if have else log.verify(Proof.from_bytes(proof.to_bytes()))
    assert v.byte_length == log.byte_length


@SETTINGS
@given(blocks=st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=20), data=st.data())
def test_any_flipped_byte_in_a_proof_is_rejected(shared_store, blocks, data):
    log = fresh_log(shared_store)
    log.append(blocks)
    i = data.draw(st.integers(0, len(blocks) - 1))
    encoded = log.proof(i, min(len(blocks), i + 2)).to_bytes()
    positions = data.draw(st.lists(st.integers(0, len(encoded) - 1), min_size=1, max_size=25, unique=True))
    for pos in positions:
        bit = data.draw(st.integers(0, 7))
        bad = bytearray(encoded)
        bad[pos] ^= 1 << bit
        with pytest.raises(VerificationError):
            log.verify(Proof.from_bytes(bytes(bad)))


def _replica(make_store, log):
    r = make_store()
    return r, r.get(key=log.key)


@SETTINGS
@given(n=st.integers(2, 40), data=st.data())
def test_replica_commits_only_verified_ranges(make_store, n, data):
    w = make_store()
    log = w.get("w")
    log.append([b"block %d" % i for i in range(n)])
    _, rep = _replica(make_store, log)
    pos = 0
    while pos < n:
        step = data.draw(st.integers(1, n - pos))
        proof = log.proof(pos, pos + step, have=pos)
        # tamper with one thing; the replica must refuse and stay as it was
        kind = data.draw(st.sampled_from(["block", "node", "sig", "fork", "length", "none"]))
        bad = proof
        if kind == "block":
            j = data.draw(st.integers(0, step - 1))
            blocks = list(proof.blocks)
            blocks[j] = blocks[j] + b"!"
            bad = Proof(
                proof.fork,
                proof.length,
                proof.signature,
                proof.start,
                tuple(blocks),
                proof.nodes,
                proof.have,
                proof.manifest,
            )
        elif kind == "node" and proof.nodes:
            nodes = list(proof.nodes)
            nd = nodes[0]
            nodes[0] = type(nd)(nd.index, nd.size, bytes([nd.hash[0] ^ 1]) + nd.hash[1:])
            bad = Proof(
                proof.fork,
                proof.length,
                proof.signature,
                proof.start,
                proof.blocks,
                tuple(nodes),
                proof.have,
                proof.manifest,
            )
        elif kind == "sig":
            sig = bytes([proof.signature[0] ^ 0x80]) + proof.signature[1:]
            bad = Proof(
                proof.fork,
                proof.length,
                sig,
                proof.start,
                proof.blocks,
                proof.nodes,
                proof.have,
                proof.manifest,
            )
        elif kind == "fork":
            bad = Proof(
                proof.fork + 1,
                proof.length,
                proof.signature,
                proof.start,
                proof.blocks,
                proof.nodes,
                proof.have,
                proof.manifest,
            )
        elif kind == "length" and proof.length > proof.end:
            bad = Proof(
                proof.fork,
                proof.length - 1,
                proof.signature,
                proof.start,
                proof.blocks,
                proof.nodes,
                proof.have,
                proof.manifest,
            )
        if bad is not proof:
            before = rep.head()
            try:
                changed = rep.apply(bad)
            except (InvalidProof, VerificationError):
                pass
            else:  # only a claim older than our head may be ignored, and then nothing changes
                assert changed is False and bad.length < rep.length
            assert rep.head() == before and rep.contiguous_length == pos
        assert rep.apply(proof)
        pos += step
        assert rep.contiguous_length == pos and rep.length == n
        assert rep.audit().ok
    assert list(rep) == list(log)
    assert rep.head() == log.head()
    assert not rep.apply(log.proof(n, n, have=n))  # nothing new: no change


def _flip(store, db, key, pos=None):
    with store._env.begin(write=True) as txn:
        value = bytearray(txn.get(key, db=db))
        p = len(value) // 2 if pos is None else pos
        value[p] ^= 0x01
        txn.put(key, bytes(value), db=db)


@pytest.mark.parametrize("what", ["block", "leaf", "parent", "tree_hash", "signature", "length", "fork"])
def test_audit_finds_single_flipped_byte(make_store, what):
    s = make_store()
    log = s.get("a")
    log.append([b"entry %03d" % i for i in range(50)])
    assert log.audit().ok
    if what == "block":
        _flip(s, s._dbs.data, block_key(log.id, 17))
    elif what == "leaf":
        _flip(s, s._dbs.data, node_key(log.id, 34), pos=20)
    elif what == "parent":
        _flip(s, s._dbs.data, node_key(log.id, 35), pos=12)
    else:
        offsets = {"fork": 7, "length": 15, "tree_hash": 40, "signature": 90}
        _flip(s, s._dbs.data, head_key(log.id), pos=offsets[what])
    report = log.audit()
    assert not report.ok
    if what in ("block", "leaf"):
        assert report.first_bad == 17
    if what == "parent":
        assert report.first_bad == _flat.leaf_span(35)[0]
    assert HEAD.size == 128


def test_replica_from_higher_fork_reorgs(make_store):
    w = make_store()
    log = w.get("w")
    log.append([b"a%d" % i for i in range(10)])
    _, rep = _replica(make_store, log)
    assert rep.apply(log.proof(0, 10))
    log.truncate(6)
    log.append([b"b%d" % i for i in range(7)])
    keep = log.common_prefix(rep.fork, rep.contiguous_length)
    assert keep == 6
    proof = log.proof(keep, log.length, have=keep)
    assert rep.apply(proof)
    assert rep.fork == 1 and rep.length == 13 and list(rep) == list(log)
    assert rep.audit().ok
    # the replica remembers the truncation and can serve a third peer at the old fork
    assert rep.common_prefix(0, 10) == 6
