"""The store writer: group commit across threads, trio tasks and logs; batches; versions; closing."""

import gc
import threading
import time

import pytest
import trio

from corelog import Store
from corelog.errors import LengthMismatch, NotWritable, StoreClosed


def _wait_queued(store, n, limit=5.0):
    deadline = time.monotonic() + limit
    while len(store._writer._queue) < n:
        assert time.monotonic() < deadline, "writers never queued"
        time.sleep(0.001)


def test_lone_caller_commits_at_once(store):
    log = store.get("a")
    before = store.commits
    for i in range(5):
        assert log.append(b"%d" % i) == i + 1
    assert store.commits == before + 5


def test_threads_across_logs_share_commits(tmp_path):
    with Store(tmp_path / "s", sync=True) as s:
        logs = [s.get(f"log{i}") for i in range(40)]
        before = s.commits
        errors = []

        def worker(k):
            try:
                for j in range(10):
                    log = logs[(k + j) % len(logs)]
                    log.append(b"t%d-%d" % (k, j))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(32)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert time.monotonic() - t0 < 30 and not errors
        assert sum(log.length for log in logs) == 320
        assert s.commits - before < 320  # coalesced: fewer transactions than appends
        for log in logs:
            assert log.audit().ok
            assert sorted(log) == sorted(set(log))  # no block written twice
    with Store(tmp_path / "s") as s:  # and all of it is on disk
        assert sum(s.get(f"log{i}").length for i in range(40)) == 320


def test_many_objects_one_log_serialised(store):
    log = store.get("one")
    n_threads, per = 16, 25

    def worker(k):
        for _ in range(per):
            while True:  # compare-and-append: a counter that never skips or repeats
                n = log.length
                try:
                    log.append(b"%d" % n, expected_length=n)
                    break
                except LengthMismatch:
                    continue

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert list(log) == [b"%d" % i for i in range(n_threads * per)]


def test_one_failure_fails_only_its_caller(store):
    a, b, c = store.get("a"), store.get("b"), store.get("c")
    a.append(b"a0")
    results = {}

    def run(name, fn):
        try:
            results[name] = fn()
        except Exception as exc:
            results[name] = exc

    before = store.commits
    with store.batch():  # hold the writer so the threads below queue up together
        threads = [
            threading.Thread(target=run, args=("good-a", lambda: a.append(b"a1"))),
            threading.Thread(target=run, args=("bad-b", lambda: b.append(b"b0", expected_length=7))),
            threading.Thread(target=run, args=("good-c", lambda: c.append([b"c0", b"c1"]))),
            threading.Thread(target=run, args=("bad-trunc", lambda: c.truncate(99))),
        ]
        for t in threads:
            t.start()
        _wait_queued(store, len(threads))
    for t in threads:
        t.join(10)
    assert store.commits == before + 1  # the batch and everything queued: one transaction
    assert results["good-a"] == 2 and results["good-c"] == 2
    assert isinstance(results["bad-b"], LengthMismatch) and results["bad-b"].actual == 0
    assert isinstance(results["bad-trunc"], IndexError)
    assert list(a) == [b"a0", b"a1"] and b.length == 0 and list(c) == [b"c0", b"c1"]
    for log in (a, b, c):
        assert log.audit().ok


def test_compare_and_append(store):
    log = store.get("x")
    assert log.append(b"0", expected_length=0) == 1
    with pytest.raises(LengthMismatch) as info:
        log.append(b"1", expected_length=0)
    assert info.value.expected == 0 and info.value.actual == 1 and "retry" in str(info.value)
    assert log.length == 1


def test_batch_is_one_transaction_and_rolls_back(tmp_path):
    with Store(tmp_path / "s", sync=True) as s:
        logs = [s.get(f"l{i}") for i in range(20)]
        before = s.commits
        with s.batch():
            for i in range(200):
                assert logs[i % 20].append(b"%d" % i) == i // 20 + 1
            assert logs[0].length == 0  # reads see the last commit until the block exits
        assert s.commits == before + 1
        assert [log.length for log in logs] == [10] * 20
        v = logs[0].version
        with pytest.raises(RuntimeError), s.batch():
            logs[0].append(b"lost")
            s.get("new-in-failed-batch")
            raise RuntimeError("boom")
        assert logs[0].length == 10 and logs[0].version == v and "new-in-failed-batch" not in s
        with s.batch(), s.batch():  # nested: the outer one commits
            logs[1].append(b"n")
        assert logs[1].length == 11
        assert all(log.audit().ok for log in logs)
    with Store(tmp_path / "s") as s:
        assert s.get("l0").length == 10 and s.get("l0").audit().ok


async def test_trio_tasks_group_commit(tmp_path):
    with Store(tmp_path / "s", sync=True) as s:
        logs = [s.get(f"log{i}") for i in range(100)]
        before = s.commits
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await trio.sleep(0)

        async def task(i):
            for j in range(3):
                await logs[i].append_async(b"%d-%d" % (i, j), expected_length=j)

        with trio.fail_after(30):
            async with trio.open_nursery() as outer:
                outer.start_soon(ticker)
                async with trio.open_nursery() as n:
                    for i in range(100):
                        n.start_soon(task, i)
                outer.cancel_scope.cancel()
        assert [log.length for log in logs] == [3] * 100
        assert s.commits - before < 150  # 300 appends, far fewer fsyncs
        assert ticks > 10  # the event loop kept running while commits were in flight


async def test_trio_cancel_while_queued_writes_nothing(store):
    log = store.get("c")
    entered = threading.Event()
    release = threading.Event()

    def hold():
        with store.batch():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    entered.wait(5)
    with trio.move_on_after(0.1) as scope:
        await log.append_async(b"never")
    assert scope.cancelled_caught
    release.set()
    t.join(5)
    assert log.length == 0
    assert await log.append_async(b"yes") == 1


def test_versions_and_waiting(store):
    log, other = store.get("v"), store.get("w")
    v0 = log.version
    assert log.wait_changed(v0, timeout=0.05) == v0  # nothing happened
    log.append(b"1")
    v1 = log.version
    assert v1 > v0
    other.append(b"x")
    assert log.version == v1  # other logs' commits do not bump it
    log.truncate(0)
    assert log.version > v1
    got = []
    t = threading.Thread(target=lambda: got.append(log.wait_changed(log.version, timeout=10)))
    v2 = log.version
    t.start()
    time.sleep(0.05)
    threading.Thread(target=log.append, args=(b"2",)).start()
    t.join(10)
    assert got and got[0] > v2


async def test_wait_changed_async(store):
    log = store.get("v")
    v = log.version
    async with trio.open_nursery() as n:
        n.start_soon(trio.to_thread.run_sync, lambda: (time.sleep(0.05), log.append(b"x")))
        with trio.fail_after(10):
            assert await log.wait_changed_async(v) > v
    with trio.move_on_after(0.05):  # cancellation leaves no waiter behind
        await log.wait_changed_async(log.version)
    assert not log._waiters


def test_readonly_store_sees_versions(tmp_path):
    with Store(tmp_path / "s", sync=False) as w:
        log = w.get("a")
        with Store(tmp_path / "s", readonly=True) as r:
            rlog = r.get(key=log.key)
            v = rlog.version
            threading.Timer(0.05, log.append, args=(b"x",)).start()
            assert rlog.wait_changed(v, timeout=10) > v
            assert rlog.length == 1
            with pytest.raises(NotWritable):
                rlog.append(b"no")


class _Watcher:
    def __init__(self, log):
        self.calls = 0
        log.watch(self.on_change)

    def on_change(self, log):
        self.calls += 1


def test_dropped_watchers_do_not_pile_up(store):
    log = store.get("w")
    kept = _Watcher(log)
    for _ in range(5000):
        _Watcher(log)  # dropped at once, never unsubscribed
    gc.collect()
    log.append(b"1")
    assert kept.calls == 1
    assert len(log._watchers) == 1  # dead weak references were pruned
    seen = []
    unsubscribe = log.watch(lambda lg: seen.append(lg.length))  # plain callables: held strongly
    log.append(b"2")
    unsubscribe()
    log.append(b"3")
    assert seen == [2] and kept.calls == 3


def test_close_while_threads_append(tmp_path):
    s = Store(tmp_path / "s", sync=False)
    logs = [s.get(f"l{i}") for i in range(8)]
    outcomes = []
    go = threading.Event()

    def worker(log):
        go.wait()
        n = 0
        while True:
            try:
                log.append(b"%d" % n)
                n += 1
                log.get(0)
            except StoreClosed:
                outcomes.append(("closed", log.name, n))
                return
            except Exception as exc:
                outcomes.append(("bad", repr(exc)))
                return

    threads = [threading.Thread(target=worker, args=(log,)) for log in logs]
    for t in threads:
        t.start()
    go.set()
    time.sleep(0.1)
    s.close()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert len(outcomes) == 8 and all(o[0] == "closed" for o in outcomes), outcomes
    waiter = logs[0]
    with pytest.raises(StoreClosed):
        waiter.wait_changed(waiter.version, timeout=1)
    with Store(tmp_path / "s") as s2:  # everything that returned is there, intact
        for _, name, n in outcomes:
            got = s2.get(name)
            assert got.length >= n and got.audit().ok


def test_readme_durability_example_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Durability, group commit and batches", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(
        out
    ):  # the block keeps its store in a temporary folder and prints lengths
        exec(compile(code, "README.md", "exec"), {"Store": Store})
    assert out.getvalue().split() == ["11", "10"]
    assert list(tmp_path.iterdir()) == []


async def test_close_while_trio_tasks_append(tmp_path):
    s = Store(tmp_path / "s", sync=False)
    logs = [s.get(f"l{i}") for i in range(20)]
    outcomes = []

    async def task(log):
        n = 0
        while True:
            try:
                await log.append_async(b"%d" % n)
                n += 1
            except StoreClosed:
                outcomes.append(n)
                return

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for log in logs:
                nursery.start_soon(task, log)
            await trio.sleep(0.2)
            await trio.to_thread.run_sync(s.close)
    assert len(outcomes) == 20 and sum(outcomes) > 0
    with Store(tmp_path / "s") as s2:
        for log in logs:
            assert s2.get(log.name).audit().ok


async def test_trio_cancellation_never_wedges_the_writer(store):
    log = store.get("c")
    with trio.CancelScope() as cs:
        cs.cancel()
        await log.append_async(b"never")  # cancelled on entry: nothing is written
    assert log.length == 0
    # many tasks cancelled at random points while leading or queued: each append is all or nothing
    for round_ in range(20):
        async with trio.open_nursery() as n:
            for i in range(10):
                n.start_soon(log.append_async, b"%d-%d" % (round_, i))
            await trio.sleep(0)
            n.cancel_scope.cancel()
    with trio.fail_after(10):  # the writer is still free
        assert await log.append_async(b"after") == log.length
    assert log.audit().ok and store._writer._busy is False


async def test_trio_task_promoted_to_leader_while_cancelled_still_commits(store):
    log = store.get("p")
    entered, release = threading.Event(), threading.Event()

    def slow_part(txn, state):  # a commit in progress while the task queues behind it
        entered.set()
        release.wait(10)
        return None, state

    def hold():
        store._writer.run(None, slow_part)

    t = threading.Thread(target=hold)
    t.start()
    entered.wait(5)
    cs = trio.CancelScope()
    got = []

    async def appender():
        with cs:
            got.append(await log.append_async(b"x"))

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(appender)
            while not store._writer._queue:
                await trio.sleep(0.001)
            part = store._writer._queue[0]
            release.set()
            t.join(10)  # blocks this thread: that commit ends and promotes the queued task
            assert part.status == 2  # _LEAD
            cs.cancel()  # ...and only then is that task cancelled
    assert store._writer._busy is False and log.length == 1 and got == [1]
    assert await log.append_async(b"y") == 2
