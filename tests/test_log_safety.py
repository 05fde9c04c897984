"""Log-layer bugs of issue 8 and reorg safety of issue 9: each test fails on the old code."""

import threading
import time

import pytest

import corelog._crypto as crypto_mod
from corelog import MAX_BLOCK_SIZE, Proof, Store
from corelog._tree import Node
from corelog.errors import (
    BlockTooLarge,
    Conflict,
    IncompleteLog,
    InvalidProof,
    NotWritable,
    OutOfRange,
    StoreClosed,
)


def _blocks(tag, n, start=0):
    return [b"%s%d" % (tag, i) for i in range(start, start + n)]


def _snapshot(log):
    return log.head(), list(log), log.conflict


# --- hostile numbers ---------------------------------------------------------------


@pytest.mark.parametrize("size", [2**64 - 1, 2**63, 2**53 + 1])
def test_node_size_near_2_64_is_invalid_proof(make_store, size):
    w = make_store().get("w")
    w.append(_blocks(b"b", 6))
    rep = make_store().get(key=w.key)
    rep.apply(w.proof(0, 2))
    good = w.proof(4, 5, have=2)
    assert len(good.nodes) == 2
    forged = Proof(
        good.fork,
        good.length,
        good.signature,
        good.start,
        good.blocks,
        tuple(Node(n.index, size, n.hash) for n in good.nodes),
        good.have,
        good.manifest,
    )
    before = _snapshot(rep)
    with pytest.raises(InvalidProof):
        rep.apply(forged)
    with pytest.raises(InvalidProof):
        rep.verify(forged)
    with pytest.raises(InvalidProof):
        Proof.from_bytes(forged.to_bytes())
    # sizes each under the cap whose sum overflows: still InvalidProof, never struct.error
    big = Proof(
        good.fork,
        good.length,
        good.signature,
        0,
        (),
        tuple(Node(x, 2**53, b"\0" * 32) for x in (3, 9)),
        0,
        good.manifest,
    )
    with pytest.raises(InvalidProof):
        rep.apply(big)
    assert _snapshot(rep) == before


def test_bad_indexes_are_typed(store):
    log = store.get("a")
    log.append(_blocks(b"x", 3))
    with pytest.raises(OutOfRange):
        list(log.iter(-1))
    with pytest.raises(OutOfRange):
        log.get(2**70)
    with pytest.raises(OutOfRange):
        log.get(-(2**70))
    with pytest.raises(OutOfRange):
        log.proof(-1)
    with pytest.raises(TypeError):
        log.get("0")
    with pytest.raises(OutOfRange):
        log.truncate(2**70)
    assert list(log.iter(1)) == [b"x1", b"x2"] and log.get(-1) == b"x2"


def test_block_size_limit(store):
    log = store.get("big")
    with pytest.raises(BlockTooLarge) as info:
        log.append(b"x" * (MAX_BLOCK_SIZE + 1))
    assert "MAX_BLOCK_SIZE" in str(info.value) and str(MAX_BLOCK_SIZE) in str(info.value)
    assert log.length == 0
    log.append(b"y" * MAX_BLOCK_SIZE)
    from corelog.replication._messages import DEFAULT_MAX_FRAME

    # the largest block, with its proof, fits a replication frame with room to spare
    assert len(log.proof(0).to_bytes()) + 16 * 1024 < DEFAULT_MAX_FRAME


def test_store_closed_is_one_error(tmp_path):
    s = Store(tmp_path / "s", sync=False)
    log = s.get("a")
    log.append(b"1")
    s.close()
    for call in (
        lambda: log.append(b"2"),
        lambda: log.get(0),
        lambda: list(log.iter()),
        lambda: log.truncate(0),
        lambda: s.get("a"),
        lambda: s.get("b"),
        lambda: s.find(log.discovery_key),
        lambda: s.batch(),
        lambda: s.keys(),
        lambda: s.list(),
        lambda: list(s),
        lambda: "a" in s,
        lambda: log.key in s,
        lambda: log.proof(0, 1),
        lambda: log.audit(),
        lambda: log[0:1],
    ):
        with pytest.raises(StoreClosed):
            call()


def _race_close(path) -> list[tuple[str, str]]:
    """Six reader threads loop on one kind of read each while the store closes under them."""
    s = Store(path, sync=False)
    logs = [s.get(f"l{i}") for i in range(4)]
    for log in logs:
        log.append([b"x" * 100] * 300)
    go = threading.Event()
    outcomes: list[tuple[str, str]] = []
    calls = {
        "keys": lambda: s.keys(),
        "list": lambda: s.list(),
        "in": lambda: logs[0].key in s,
        "proof": lambda: logs[1].proof(0, 300),
        "audit": lambda: logs[2].audit(),
        "iter": lambda: list(logs[3].iter()),
    }

    def reader(name, call):
        go.wait()
        for _ in range(100_000):  # bounded; the store closes within ~20 ms
            try:
                call()
            except StoreClosed:
                outcomes.append((name, "closed"))
                return
            except Exception as exc:
                outcomes.append((name, repr(exc)))
                return
        outcomes.append((name, "never closed"))

    threads = [threading.Thread(target=reader, args=kv) for kv in calls.items()]
    for t in threads:
        t.start()
    go.set()
    time.sleep(0.02)
    s.close()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    return outcomes


def test_closing_while_threads_read_gives_store_closed_or_an_answer(tmp_path):
    """Readers racing ``close()`` (keys, list, membership, proofs, audits, blocks) get
    StoreClosed, never a bare lmdb.Error (py-lmdb fails their transactions mid-block)."""
    outcomes = [o for trial in range(5) for o in _race_close(tmp_path / f"s{trial}")]
    assert len(outcomes) == 5 * 6
    assert all(o[1] == "closed" for o in outcomes), [o for o in outcomes if o[1] != "closed"]


def test_find_uses_the_index(tmp_path, monkeypatch):
    with Store(tmp_path / "s", sync=False) as s, s.batch():
        keys = [s.get(f"l{i}").key for i in range(300)]
    with Store(tmp_path / "s", sync=False) as s:  # a fresh object: nothing cached
        calls = []
        real = crypto_mod.discovery_key
        monkeypatch.setattr(crypto_mod, "discovery_key", lambda k: calls.append(k) or real(k))
        assert s.find(real(keys[123])).key == keys[123]
        assert s.find(b"\1" * 32) is None and s.find(b"short") is None
        assert len(calls) <= 1  # the Log object computes its own discovery key, nothing is scanned


def test_index_is_built_for_an_old_store(tmp_path):
    with Store(tmp_path / "s", sync=False) as s:
        key = s.get("a").key
        with s._env.begin(write=True) as txn:  # as written before the index existed
            txn.drop(s._dbs.dkeys, delete=False)
    with Store(tmp_path / "s", sync=False) as s:
        assert s.find(crypto_mod.discovery_key(key)).key == key


# --- a writer that does not hold its own log ----------------------------------------


def test_partial_replica_of_own_log_never_signs(make_store):
    a = make_store("a")
    w = a.get("mine")
    w.append(_blocks(b"w", 10))
    b = make_store("b", seed=a.seed)  # restored from the seed
    rep = b.get(key=w.key)
    rep.apply(w.proof(0, 5))
    assert rep.length == 10 and rep.contiguous_length == 5
    mine = b.get("mine")  # it is this store's log: it becomes the writer...
    assert mine.writable
    with pytest.raises(IncompleteLog):  # ...but cannot sign over blocks it does not have
        mine.append(b"new")
    with pytest.raises(NotWritable):
        mine.truncate(3)
    assert mine.head() == w.head()
    assert mine.apply(w.proof(5, 10, have=5))  # the rest arrives from a peer
    assert mine.contiguous_length == 10
    assert mine.append(b"w10") == 11
    w.append(b"w10")
    assert mine.head() == w.head() and mine.audit().ok


# --- equivocation ---------------------------------------------------------------------


def _equivocating_pair(make_store, n_a, n_b, tag_b=b"evil"):
    """Two stores with the same seed writing different histories of one log."""
    a = make_store("a")
    wa = a.get("log")
    wa.append(_blocks(b"good", n_a))
    b = make_store("b", seed=a.seed)
    wb = b.get("log")
    wb.append(_blocks(tag_b, n_b))
    assert wa.key == wb.key and wa.fork == wb.fork == 0
    return wa, wb


@pytest.mark.parametrize("n_b, have_range", [(12, (0, 12)), (12, (10, 12)), (8, (0, 8)), (10, (0, 10))])
def test_equivocation_at_any_length_is_recorded(make_store, n_b, have_range):
    wa, wb = _equivocating_pair(make_store, 10, n_b)
    r = make_store("r")
    rep = r.get(key=wa.key)
    rep.apply(wa.proof(0, 10))
    before = (rep.head(), list(rep))
    start, end = have_range
    with pytest.raises(Conflict) as info:
        rep.apply(wb.proof(start, end))
    assert "key was used twice" in str(info.value)
    assert (rep.head(), list(rep)) == before  # nothing overwritten
    assert rep.audit().ok
    c = rep.conflict
    assert c and c["fork"] == 0 and c["theirs_length"] == n_b and c["ours_length"] == 10
    assert [i.conflict for i in r.list()] == [True]
    with pytest.raises(Conflict):  # and it refuses further data
        rep.apply(wa.proof(0, 10))
    r.close()
    with Store(r.path, readonly=True) as ro:  # recorded on disk
        assert ro.get(key=wa.key).conflict["theirs"] == c["theirs"]


def test_equivocation_in_a_node_held_past_the_contiguous_end(make_store):
    """A stored node inside a proof's own block range is compared by one cursor walk, the others
    by lookup: both find the first node that differs, and nodes we do not hold never count."""
    from corelog import _apply

    a, b = make_store("a"), make_store("b")
    wa = a.get("log")
    wa.append(_blocks(b"good", 8))
    wb = make_store("b2", seed=a.seed).get("log")
    wb.append(_blocks(b"good", 4))
    wb.append(_blocks(b"evil", 12, start=4))
    rep = b.get(key=wa.key)
    assert rep.apply(wa.proof(0, 4))  # holds [0, 4), the node over A's [4, 8) (11) and the root (7)
    with b._env.begin() as txn:
        ours = rep._node(txn, 11)
        other = (11, ours.size, bytes(32))
        for span in [(4, 8), (0, 0), (4, 6)]:
            assert _apply._mismatch(rep, txn, {11: other, 9: (9, 200, bytes(32))}, 8, span) == 11
            assert _apply._mismatch(rep, txn, {11: tuple(ours), 13: (13, 1, bytes(32))}, 8, span) is None
            assert _apply._mismatch(rep, txn, {11: other}, 4, span) is None  # past the limit
    with pytest.raises(Conflict):
        rep.apply(wb.proof(4, 8, have=4))
    assert rep.conflict and rep.conflict["theirs_length"] == 16 and rep.contiguous_length == 4
    fresh = make_store("c").get(key=wa.key)
    assert fresh.apply(wb.proof(0, 4)) and fresh.apply(wb.proof(4, 8, have=4))  # one history: fine
    assert fresh.conflict is None and fresh.contiguous_length == 8


def test_consistent_stale_proof_is_not_a_conflict(make_store):
    w = make_store("w").get("log")
    w.append(_blocks(b"x", 8))
    old = w.proof(0, 8)
    w.append(_blocks(b"x", 4, start=8))
    rep = make_store("r").get(key=w.key)
    assert rep.apply(w.proof(0, 12))
    assert rep.apply(old) is False and rep.conflict is None and rep.length == 12


# --- reorganisation ----------------------------------------------------------------------


def test_reorg_keeps_every_block_the_new_head_proves(make_store):
    w = make_store("w").get("log")
    w.append(_blocks(b"x", 20))
    rep = make_store("r").get(key=w.key)
    rep.apply(w.proof(0, 20))
    w.truncate(12)
    w.append(_blocks(b"y", 3, start=12))
    # a relay claims only [0, 4) is common; the replica checks [4, 12) itself
    proof = w.proof(12, 15, have=4)
    assert rep.apply(proof)
    assert rep.fork == 1 and rep.length == 15 and rep.contiguous_length == 15
    assert list(rep) == list(w) and rep.audit().ok and rep.conflict is None


def test_reorg_drops_what_changed_and_nothing_else(make_store):
    w = make_store("w").get("log")
    w.append(_blocks(b"x", 16))
    rep = make_store("r").get(key=w.key)
    rep.apply(w.proof(0, 16))
    w.truncate(9)
    w.append(_blocks(b"z", 5, start=9))
    rep.apply(w.upgrade_proof(0))  # only the new roots: blocks [0, 8) are proven by root 7
    assert rep.fork == 1 and rep.length == 14
    assert rep.contiguous_length == 8  # block 8 was not provable from the roots alone; 9+ changed
    assert list(rep) == list(w)[:8]
    rep.apply(w.proof(8, 14, have=8))
    assert list(rep) == list(w) and rep.audit().ok


# --- property: replicas follow any history of appends and truncations ------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 9)),
        st.tuples(st.just("truncate"), st.integers(0, 100)),
        st.tuples(st.just("sync"), st.integers(0, 100)),
        st.tuples(st.just("stale"), st.integers(0, 100)),
    ),
    min_size=1,
    max_size=14,
)


def _common(rep, w):
    n = 0
    for a, b in zip(rep, w, strict=False):
        if a != b:
            break
        n += 1
    return n


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_replica_follows_any_history(tmp_path_factory, ops):
    root = tmp_path_factory.mktemp("prop")
    with Store(root / "w", sync=False) as ws, Store(root / "r", sync=False) as rs:
        w = ws.get("log")
        rep = rs.get(key=w.key)
        old_proofs = []
        counter = 0
        for op, arg in ops:
            if op == "append":
                w.append([b"b%d" % (counter + i) for i in range(arg)])
                counter += arg
                old_proofs.append(w.proof(0, w.length))
            elif op == "truncate":
                w.truncate(arg % (w.length + 1))
            elif op == "stale" and old_proofs:
                before = (rep.head(), list(rep))
                proof = old_proofs[arg % len(old_proofs)]
                stale = proof.fork < rep.fork or (proof.fork == rep.fork and proof.length <= rep.length)
                try:
                    rep.apply(proof)  # an old head: ignored; a newer one (for the replica): taken
                except InvalidProof:
                    pass
                if stale:
                    assert (rep.head(), list(rep)) == before
            elif op == "sync":
                # a peer claims any prefix up to what really is common; the replica never loses more
                common = _common(rep, w) if rep.fork <= w.fork else 0
                have = arg % (common + 1)
                assert rep.apply(w.proof(have, w.length, have=have)) in (True, False)
                assert list(rep) == list(w) and rep.head() == w.head()
            assert rep.conflict is None
            kept = list(rep)
            assert kept == list(w)[: len(kept)] or rep.fork < w.fork
        rep.apply(w.proof(0, w.length))
        assert list(rep) == list(w) and rep.audit().ok and w.audit().ok
