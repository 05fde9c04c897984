"""The writer's fast paths: flat parts (no nested transaction), batched wake-ups; heads of many logs verify."""

import threading
import time

import lmdb
import pytest
import trio

from corelog import Store, _crypto
from corelog._keys import BLOCK, HEAD, KEY, NODE, head_key
from corelog.errors import LengthMismatch, StoreFull


def _hold_writer(store):
    """Occupy the writer with a part that blocks; returns (release, thread)."""
    entered, go = threading.Event(), threading.Event()

    def part(txn, st):
        entered.set()
        assert go.wait(10)
        return None, st

    t = threading.Thread(target=store._writer.run, args=(None, part))
    t.start()
    assert entered.wait(10)
    return go.set, t


def _queue(store, calls):
    """Run ``calls`` (name -> fn) in threads while the writer is held, so they share one commit."""
    results = {}

    def run(name, fn):
        try:
            results[name] = fn()
        except Exception as exc:
            results[name] = exc

    before = store.commits
    release, holder = _hold_writer(store)
    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(store._writer._queue) < len(threads):
        assert time.monotonic() < deadline, "writers never queued"
        time.sleep(0.001)
    release()
    for t in [holder, *threads]:
        t.join(10)
    return results, store.commits - before


def test_flat_batch_isolates_a_failing_append(store):
    logs = [store.get(f"l{i}") for i in range(4)]
    logs[0].append(b"x")
    calls = {f"good{i}": (lambda lg=lg: lg.append(b"a")) for i, lg in enumerate(logs)}
    calls["bad"] = lambda: logs[1].append(b"never", expected_length=5)
    calls["more"] = lambda: logs[2].append([b"b", b"c"])
    results, commits = _queue(store, calls)
    assert commits == 2  # the held part's commit, then everything queued in one
    assert isinstance(results["bad"], LengthMismatch) and results["bad"].expected == 5
    assert results["good0"] == 2 and results["good1"] == 1 and results["good3"] == 1
    assert logs[2].length == 3 and results["more"] in (1, 3) and results["good2"] in (1, 3)
    assert b"never" not in list(logs[1])
    for lg in logs:
        assert lg.audit().ok


def test_flat_batch_spoilt_by_an_lmdb_error_reruns_nested(store):
    """An lmdb error in the middle of a flat part (after a write) spoils the transaction: the batch
    is run again part by part, so the others commit and the failing part writes nothing."""
    good = [store.get(f"g{i}") for i in range(3)]
    bad = store.get("bad")
    runs = []

    def spoil(txn, st):
        runs.append(1)
        txn.put(KEY.pack(bad.id, NODE, 999), b"half-written", db=bad._db)
        raise lmdb.MapFullError("simulated: the map is full")

    calls = {f"g{i}": (lambda lg=lg: lg.append(b"ok")) for i, lg in enumerate(good)}
    calls["bad"] = lambda: store._writer.run(bad, spoil, True)
    results, commits = _queue(store, calls)
    assert isinstance(results["bad"], StoreFull)
    assert all(results[f"g{i}"] == 1 for i in range(3)) and commits == 2
    assert len(runs) == 2  # flat, then again in its own nested transaction
    with store._env.begin() as txn:
        assert txn.get(KEY.pack(bad.id, NODE, 999), db=bad._db) is None
    for lg in [*good, bad]:
        assert lg.audit().ok


def test_many_logs_in_one_commit_are_signed_and_verify(tmp_path):
    with Store(tmp_path / "s", sync=False) as s:
        with s.batch():
            logs = [s.get(f"log{i}") for i in range(80)]
            for i, lg in enumerate(logs):
                lg.append(b"%d" % i)
        for lg in logs:
            h = lg.head()
            assert _crypto.verify(h.signable(lg.key), h.signature, lg.public_key)
            assert h.signature == _crypto.sign(
                _crypto.signable(lg.key, h.tree_hash, h.length, h.fork), lg._secret
            )
            assert lg.audit().ok


async def test_trio_tasks_woken_together(tmp_path):
    """Many trio tasks across many logs: every append lands, few commits, each task its own result."""
    with Store(tmp_path / "s", sync=True) as s:
        with s.batch():
            logs = [s.get(f"log{i}") for i in range(60)]
        before = s.commits
        got = {}

        async def one(lg, k):
            for j in range(3):
                got[(k, j)] = await lg.append_async(b"%d.%d" % (k, j), expected_length=j)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for k, lg in enumerate(logs):
                    nursery.start_soon(one, lg, k)
        assert all(got[(k, j)] == j + 1 for k in range(60) for j in range(3))
        assert s.commits - before < 180
        for k, lg in enumerate(logs):
            assert list(lg) == [b"%d.%d" % (k, j) for j in range(3)] and lg.audit().ok


def test_a_new_log_stores_no_head_but_hands_out_a_signed_one(tmp_path):
    path = tmp_path / "s"
    with Store(path, sync=False) as s:
        log = s.get("fresh")
        with s._env.begin() as txn:  # creating it signed nothing and wrote no head
            assert txn.get(head_key(log.id), db=s._dbs.data) is None
        h = log.head()
        assert (h.fork, h.length, h.byte_length) == (0, 0, 0)
        assert _crypto.verify(h.signable(log.key), h.signature, log.public_key)
        assert h.signature == _crypto.sign(_crypto.signable(log.key, h.tree_hash, 0, 0), log._secret)
        assert log.upgrade_proof(0).signature == h.signature
        assert log.audit().ok
        with Store(path, readonly=True) as r:  # a reader in another Store signs it the same way
            assert r.get("fresh").head() == h
    with Store(path, sync=False) as s:  # reopened: still no head stored, the same signed head
        log = s.get("fresh")
        assert log.head() == h and log.audit().ok
        log.append(b"a")
        with s._env.begin() as txn:
            assert HEAD.unpack(txn.get(head_key(log.id), db=s._dbs.data))[1] == 1
        h1 = log.head()
        assert _crypto.verify(h1.signable(log.key), h1.signature, log.public_key) and log.audit().ok


def test_a_replica_of_a_new_log_gets_a_verifiable_head(make_store):
    w, r = make_store(), make_store()
    log = w.get("new")
    replica = r.get(key=log.key)
    empty = log.head()
    log.append(b"x")
    assert replica.apply(log.proof(0)) and replica.head() == log.head()
    assert replica.check_head(empty) is False  # the empty head verifies (it is older)


def test_single_appends_keep_the_tree_hash_of_their_roots(store):
    log = store.get("t")
    for i in range(70):
        if i == 40:
            log.append([b"m1", b"m2", b"m3"])  # a multi-block append between single ones
        log.append(b"%d" % i)
        h = log.head()
        assert h.tree_hash == _crypto.tree_hash(log.roots())
        assert _crypto.verify(h.signable(log.key), h.signature, log.public_key)
    assert log.audit().ok


def test_audit_and_reads_see_a_gap_hidden_by_a_stray_key(store):
    """Reads and audit take a whole range at once when its first and last keys and its count
    match; a stray key of another length in place of a missing block must not pass for it."""
    from corelog.errors import Corrupt

    log = store.get("g")
    log.append([b"%d" % i for i in range(40)])
    with store._env.begin(write=True) as txn:
        txn.delete(KEY.pack(log.id, BLOCK, 7), db=log._db)
        txn.put(KEY.pack(log.id, BLOCK, 7) + b"\0", b"stray", db=log._db)  # sorts where 7 was
    with pytest.raises(Corrupt):
        log[0:40]
    report = log.audit()
    assert not report.ok and report.first_bad == 7 and any("block 7 is missing" in p for p in report.problems)


def test_audit_finds_a_missing_node_in_a_whole_chunk(store):
    log = store.get("n")
    log.append([b"%d" % i for i in range(64)])
    with store._env.begin(write=True) as txn:
        txn.delete(KEY.pack(log.id, NODE, 9), db=log._db)  # a parent of blocks 4-5
    report = log.audit()
    assert not report.ok and report.first_bad == 4


async def test_trio_task_cancelled_while_its_append_commits_gets_the_outcome(store):
    """Cancelled after a leader took its part (but before the commit ended), a task waits for the
    outcome and gets its result; the cancellation surfaces at its next checkpoint."""
    a, b = store.get("a"), store.get("b")
    entered, go = threading.Event(), threading.Event()

    def slow(txn, st):
        entered.set()
        assert go.wait(10)
        return "slow", st

    async def queued(n):
        with trio.fail_after(10):
            while len(store._writer._queue) < n:
                await trio.sleep(0.001)

    got = {}

    async def append_b(scope_box):
        with trio.CancelScope() as scope:
            scope_box.append(scope)
            got["b"] = await b.append_async(b"x")
            got["after"] = "no checkpoint yet"
            await trio.lowlevel.checkpoint()
            got["after"] = "not cancelled"

    release, holder = _hold_writer(store)
    box: list = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store._writer.run_async, a, slow)
        await queued(1)
        nursery.start_soon(append_b, box)
        await queued(2)
        release()  # the holder's commit ends; the first task leads [slow, b's append] in a thread
        assert await trio.to_thread.run_sync(entered.wait, 10)
        box[0].cancel()  # b's part is taken, its commit not done
        await trio.sleep(0.05)
        go.set()
    holder.join(10)
    assert got == {"b": 1, "after": "no checkpoint yet"} and b.length == 1 and list(b) == [b"x"]
