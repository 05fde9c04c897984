"""Heads of a log this store writes are stored unsigned and signed when read (``corelog._heads``).

Signatures are counted by wrapping libsodium's ``crypto_sign`` (every signature corelog
makes goes through it): appends sign nothing, a head read signs once, and every head
that leaves the store verifies with the log's public key.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from functools import partial

import nacl.bindings
import pytest
import trio
import trio.testing

from corelog import Store, _crypto
from corelog._heads import UNSIGNED
from corelog._keys import HEAD, head_key
from corelog.errors import Conflict
from corelog.replication import replicate
from corelog.replication.hypercore import connect_hypercore, serve_hypercore

from .test_crash import WRITER, _spawn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def signs(monkeypatch):
    """How many Ed25519 signatures were made (a one-item list, read with ``signs[0]``)."""
    count = [0]
    real = nacl.bindings.crypto_sign

    def counting(message: bytes, secret: bytes) -> bytes:
        count[0] += 1
        return real(message, secret)

    monkeypatch.setattr(nacl.bindings, "crypto_sign", counting)
    return count


def _stored_sig(store: Store, log) -> bytes:
    with store._env.begin() as txn:
        return HEAD.unpack(txn.get(head_key(log.id), db=store._dbs.data))[5]


def _verifies(log, h) -> bool:
    return _crypto.verify(h.signable(log.key), h.signature, log.public_key)


@pytest.mark.parametrize("sync", [False, True])
def test_appends_sign_nothing_and_a_read_signs_once(tmp_path, signs, sync):
    with Store(tmp_path / "s", sync=sync) as s:
        log = s.get("a")
        n = 200 if not sync else 20
        for i in range(n):
            log.append(b"%d" % i)
        log.append([b"x", b"y", b"z"])
        log.truncate(n)
        log.append(b"after")
        assert signs[0] == 0
        assert _stored_sig(s, log) == UNSIGNED
        h = log.head()
        assert signs[0] == 1 and _verifies(log, h)
        assert (h.fork, h.length) == (1, n + 1)
        # the all-zero signature field of a stored head can never pass for a signature
        assert not _crypto.verify(h.signable(log.key), UNSIGNED, log.public_key)
        for _ in range(3):  # an unchanged head: no more signatures, whatever reads it
            assert log.head() == h
            assert log.proof(0).signature == h.signature
            assert log.upgrade_proof(n).signature == h.signature
        assert log.audit().ok
        assert signs[0] == 1
        assert _stored_sig(s, log) == UNSIGNED  # signing a head on read writes nothing
        log.append(b"more")
        assert signs[0] == 1
        h2 = log.head()
        assert signs[0] == 2 and _verifies(log, h2) and h2.length == n + 2


def test_a_proof_read_first_signs_once_and_verifies(store, signs):
    log = store.get("p")
    log.append([b"%d" % i for i in range(50)])
    p = log.proof(10, 20)
    assert signs[0] == 1
    assert log.verify(p).tree_hash == log.head().tree_hash
    assert signs[0] == 1  # head() found the signature proof() made
    assert _crypto.verify(_crypto.signable(log.key, log.head().tree_hash, 50, 0), p.signature, log.public_key)


def test_group_commit_batches_with_reads(tmp_path, signs):
    with Store(tmp_path / "s", sync=True) as s:
        with s.batch():
            logs = [s.get(f"log{i}") for i in range(40)]
        assert signs[0] == 0
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def worker(k: int) -> None:
            try:
                barrier.wait(timeout=10)
                for j in range(5):
                    for lg in logs[k::8]:
                        lg.append(b"%d.%d" % (k, j))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors and not any(t.is_alive() for t in threads)
        assert signs[0] == 0  # batched commits of many logs: no signature either
        with s.batch():
            for lg in logs:
                lg.append(b"last")
            assert signs[0] == 0
        for lg in logs:
            h = lg.head()
            assert h.length == 6 and _verifies(lg, h) and lg.audit().ok
        assert signs[0] == len(logs)
        for lg in logs:
            lg.head()
        assert signs[0] == len(logs)


def test_read_only_store_signs_in_memory_and_writes_nothing(tmp_path, signs):
    path = tmp_path / "s"
    with Store(path, sync=False) as s:
        log = s.get("ro")
        log.append([b"a", b"b", b"c"])
        fresh = s.get("fresh")  # no head stored at all
    assert signs[0] == 0
    before = (path / "data.mdb").read_bytes()
    with Store(path, readonly=True) as r:
        lr = r.get("ro")
        assert not lr.writable and lr.owned
        h = lr.head()
        assert _verifies(lr, h) and h.length == 3
        assert lr.proof(0, 3).signature == h.signature and lr.audit().ok
        lf = r.get(key=fresh.key)
        assert _verifies(lf, lf.head())
        assert signs[0] == 2
    assert (path / "data.mdb").read_bytes() == before
    with Store(path, sync=False) as s:  # the writer signs the same bytes
        assert s.get("ro").head() == h


def test_heads_stored_signed_read_as_they_are(tmp_path, signs):
    """A head written signed (by an older version) is handed out without signing again."""
    path = tmp_path / "s"
    with Store(path, sync=False) as s:
        log = s.get("old")
        log.append([b"a", b"b"])
        h = log.head()
        with s._env.begin(write=True) as txn:  # what an older version stored: the signature
            raw = txn.get(head_key(log.id), db=s._dbs.data)
            fork, length, contig, byte_length, th, _ = HEAD.unpack(raw)
            txn.put(
                head_key(log.id),
                HEAD.pack(fork, length, contig, byte_length, th, h.signature),
                db=s._dbs.data,
            )
    signs[0] = 0
    with Store(path, sync=False) as s:
        log = s.get("old")
        assert log.head() == h and log.proof(0, 2).signature == h.signature and log.audit().ok
        assert signs[0] == 0
        log.append(b"c")  # and the next head is stored unsigned again
        assert _stored_sig(s, log) == UNSIGNED and _verifies(log, log.head())


def test_replicas_store_the_peers_signature(make_store, signs):
    w, r = make_store(), make_store()
    log = w.get("w")
    log.append([b"%d" % i for i in range(30)])
    replica = r.get(key=log.key)
    assert replica.apply(log.proof(0, 30))
    assert signs[0] == 1  # the writer signed its head for the proof; the replica signs nothing
    assert _stored_sig(r, replica) == log.head().signature
    assert replica.head() == log.head() and _verifies(replica, replica.head())
    assert signs[0] == 1
    r.close()
    with Store(r.path, readonly=True) as ro:
        assert ro.get(key=log.key).head() == log.head()
    assert signs[0] == 1


def test_our_own_head_still_catches_equivocation(make_store, signs):
    a = make_store("a")
    wa = a.get("log")
    wa.append([b"good%d" % i for i in range(5)])
    b = make_store("b", seed=a.seed)
    wb = b.get("log")
    wb.append([b"evil%d" % i for i in range(5)])
    assert signs[0] == 0
    with pytest.raises(Conflict):  # a validly signed head of our own log, at our length: not ours
        wa.check_head(wb.head())
    c = wa.conflict
    ours = bytes.fromhex(c["ours_signature"])
    assert _crypto.verify(_crypto.signable(wa.key, bytes.fromhex(c["ours"]), 5, 0), ours, wa.public_key)


async def test_replicated_heads_verify_both_protocols(make_store):
    w = make_store("w")
    logs = [w.get(f"l{i}") for i in range(3)]
    for i, lg in enumerate(logs):
        lg.append([b"%d-%d" % (i, j) for j in range(20 + i)])
    for proto in ("corelog", "hypercore"):
        r = make_store(f"r-{proto}")
        replicas = [r.get(key=lg.key) for lg in logs]
        with trio.fail_after(30):
            if proto == "corelog":
                a, b = trio.testing.memory_stream_pair()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(partial(replicate, a, w, initiator=True, live=False))
                    await replicate(b, r, initiator=False, live=False)
            else:  # over TCP on 127.0.0.1, as a Hypercore peer would
                async with trio.open_nursery() as nursery:
                    port = await nursery.start(
                        lambda task_status: serve_hypercore(logs, task_status=task_status)
                    )
                    await connect_hypercore(replicas, "127.0.0.1", port)
                    nursery.cancel_scope.cancel()
        for lg, rep in zip(logs, replicas, strict=True):
            assert rep.contiguous_length == lg.length and rep.head() == lg.head()
            assert _verifies(rep, rep.head()) and _stored_sig(r, rep) == lg.head().signature
            assert rep.audit().ok


def test_many_readers_while_others_append(tmp_path):
    """Every head read while appends go on verifies (the signature cache is never torn)."""
    with Store(tmp_path / "s", sync=False) as s:
        logs = [s.get("x"), s.get("y")]
        for lg in logs:
            lg.append(b"0")
        stop = threading.Event()
        bad: list[str] = []
        reads = [0]

        def reader() -> None:
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                for lg in logs:
                    h = lg.head()
                    if not _verifies(lg, h):
                        bad.append(f"head {h.length} of {lg.name}")
                    p = lg.upgrade_proof(0)
                    if not _crypto.verify(
                        _crypto.signable(lg.key, lg.verify(p).tree_hash, p.length, p.fork),
                        p.signature,
                        lg.public_key,
                    ):
                        bad.append(f"proof {p.length} of {lg.name}")
                    reads[0] += 1

        def writer(lg) -> None:
            for i in range(400):
                lg.append(b"%d" % i)

        readers = [threading.Thread(target=reader) for _ in range(4)]
        writers = [threading.Thread(target=writer, args=(lg,)) for lg in logs]
        for t in readers + writers:
            t.start()
        for t in writers:
            t.join(timeout=60)
        stop.set()
        for t in readers:
            t.join(timeout=60)
        assert not bad, bad[:5]
        assert reads[0] > 0 and all(lg.length == 401 and lg.audit().ok for lg in logs)


def test_sigkill_of_a_sync_writer_then_the_head_signs_on_first_read(tmp_path, signs):
    path = str(tmp_path / "store")
    proc = _spawn(WRITER, path)  # test_crash's sync=True writer: appends and prints each length
    reported = 0
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while reported < 40:
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline
            reported = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    with Store(path, sync=False) as s:
        log = s.get("crash")
        assert log.length >= reported and _stored_sig(s, log) == UNSIGNED
        assert signs[0] == 0
        h = log.head()
        assert signs[0] == 1 and _verifies(log, h)
        report = log.audit()
        assert report.ok, report.problems
        assert list(log) == [b"entry %d" % j for j in range(log.length)]


def test_fleet_commits_sign_nothing(tmp_path, signs):
    from corelog.machine import Fleet

    chart = {
        "id": "c",
        "initial": "a",
        "context": {"n": 0},
        "states": {"a": {"on": {"GO": {"actions": "inc"}}}},
    }
    with Store(tmp_path / "s", sync=False) as s:
        with Fleet(s, clock=lambda: 1_700_000_000_000) as f:
            f.register("c", chart, {"inc": lambda c, e: {"n": c["n"] + 1}})
            for i in range(20):
                f.send(f"m{i % 4}", "GO", kind="c")
            assert signs[0] == 0
        for i in range(4):
            lg = s.get(f"fleet:m{i}")
            assert _stored_sig(s, lg) == UNSIGNED
            h = lg.head()
            assert _verifies(lg, h) and lg.audit().ok
        assert signs[0] == 4


def test_a_partial_replica_of_our_own_log_hands_out_the_peers_signature(make_store, signs):
    a = make_store("a")
    w = a.get("mine")
    w.append([b"w%d" % i for i in range(10)])
    theirs = w.head()
    b = make_store("b", seed=a.seed)  # restored from the seed: it owns the key pair
    b.get(key=w.key).apply(w.proof(0, 5))
    mine = b.get("mine")
    assert mine.writable and mine.contiguous_length == 5 and mine.length == 10
    signs[0] = 0
    assert mine.head() == theirs and mine.proof(0, 5).signature == theirs.signature
    assert mine.audit().ok
    assert signs[0] == 0  # it never signs a head over blocks it does not hold
    assert _stored_sig(b, mine) == theirs.signature
    # even a head stored unsigned (it should never be) is not signed while blocks are missing
    with b._env.begin(write=True) as txn:
        fork, length, contig, byte_length, th, _ = HEAD.unpack(txn.get(head_key(mine.id), db=b._dbs.data))
        txn.put(head_key(mine.id), HEAD.pack(fork, length, contig, byte_length, th, UNSIGNED), db=b._dbs.data)
    b.close()
    with Store(b.path, sync=False) as again:
        lg = again.get("mine")
        assert lg.head().signature == b"" and lg.proof(0, 5).signature == UNSIGNED
        assert "the head is not signed" in lg.audit().problems
        assert signs[0] == 0
