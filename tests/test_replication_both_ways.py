"""Both directions at once, where it used to deadlock: real TCP between processes, lockstep streams
(zero buffering), many logs each way, relays A -> B -> C with a cut mid-sync."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio
import trio.testing

from corelog import Store
from corelog.replication import connect_tcp, replicate, serve_tcp

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
FAST = {"idle_timeout": 10.0, "progress_timeout": 10.0}


def _pair_of_writers(sa: Store, sb: Store, n: int, size: int = 100):
    """Each store writes one log of n entries and holds an empty replica of the other's."""
    la, lb = sa.get("a"), sb.get("b")
    la.append([b"a%07d" % i + bytes(size - 8) for i in range(n)])
    lb.append([b"b%07d" % i + bytes(size - 8) for i in range(n)])
    return la, lb, sb.get(key=la.key), sa.get(key=lb.key)


def _many_logs(sa: Store, sb: Store, n: int):
    mine_a = [sa.get(f"a{i}") for i in range(n)]
    mine_b = [sb.get(f"b{i}") for i in range(n)]
    for i, (x, y) in enumerate(zip(mine_a, mine_b, strict=True)):
        x.append([b"a%d-%d" % (i, j) for j in range(5)])
        y.append([b"b%d-%d" % (i, j) for j in range(5)])
    for x in mine_a:
        sb.get(key=x.key)
    for y in mine_b:
        sa.get(key=y.key)
    return mine_a, mine_b


async def test_both_ways_over_lockstep_streams(make_store):
    sa, sb = make_store("a"), make_store("b")
    la, lb, ra, rb = _pair_of_writers(sa, sb, 5000)  # 500 KB each way: far more than any buffer
    a, b = trio.testing.lockstep_stream_pair()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: replicate(a, sa, initiator=True, live=False, **FAST))
            await replicate(b, sb, initiator=False, live=False, **FAST)
    assert ra.contiguous_length == 5000 and rb.contiguous_length == 5000
    assert ra.head() == la.head() and rb.head() == lb.head() and ra[4999] == la[4999]


async def test_many_logs_both_ways_over_lockstep_streams(make_store):
    sa, sb = make_store("a"), make_store("b")
    mine_a, mine_b = _many_logs(sa, sb, 300)
    a, b = trio.testing.lockstep_stream_pair()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: replicate(a, sa, initiator=True, live=False, **FAST))
            await replicate(b, sb, initiator=False, live=False, **FAST)
    assert all(sb.get(key=x.key).contiguous_length == 5 for x in mine_a)
    assert all(sa.get(key=y.key)[4] == y[4] for y in mine_b)


_SERVE = """
import sys, trio
from corelog import Store
from corelog.replication import serve_tcp
async def main():
    with Store(sys.argv[1], sync=sys.argv[2] == "fsync") as s:
        async with trio.open_nursery() as n:
            port = await n.start(serve_tcp, s)
            print("serving on 127.0.0.1:%d" % port, flush=True)
try:
    trio.run(main)
except KeyboardInterrupt:
    pass
"""


def _serve_process(path: Path, *, fsync: bool = True) -> tuple[subprocess.Popen, int]:
    """serve_tcp on a writable store (sync=True: fsync per commit) in another process.

    (`corelog serve` opens its store read-only beside the writing app, so it only serves.)
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(path), "fsync" if fsync else "nosync"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=ENV,
    )
    line = proc.stdout.readline()
    assert line.startswith("serving"), line
    return proc, int(line.rsplit(":", 1)[1])


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_both_ways_over_tcp_between_processes(tmp_path):
    n = 20000  # 2 MB each way; the benchmark runs 100,000
    with Store(tmp_path / "a", sync=False) as sa, Store(tmp_path / "b", sync=False) as sb:
        la, lb, _, _ = _pair_of_writers(sa, sb, n)
        la_head, lb_head, la_key = la.head(), lb.head(), la.key
    proc, port = _serve_process(tmp_path / "a")
    try:
        with Store(tmp_path / "b", sync=False) as sb:
            trio.run(lambda: _with_timeout(connect_tcp(sb, "127.0.0.1", port, live=False, **FAST), 60))
            assert sb.get(key=la_key).head() == la_head
    finally:
        _stop(proc)
    with Store(tmp_path / "a", readonly=True) as sa:
        rb = sa.get(key=_key_in(sa, lb_head))
        assert rb.head() == lb_head and rb.contiguous_length == n


def test_many_logs_both_ways_over_tcp_between_processes(tmp_path):
    n = 2000
    with Store(tmp_path / "a", sync=False) as sa, Store(tmp_path / "b", sync=False) as sb:
        mine_a, mine_b = _many_logs(sa, sb, n)
        keys_a, keys_b = [x.key for x in mine_a], [y.key for y in mine_b]
    proc, port = _serve_process(tmp_path / "a", fsync=False)  # 2,000 fsyncs would time the disk
    try:
        with Store(tmp_path / "b", sync=False) as sb:
            trio.run(lambda: _with_timeout(connect_tcp(sb, "127.0.0.1", port, live=False, **FAST), 60))
            assert all(sb.get(key=k).contiguous_length == 5 for k in keys_a)
    finally:
        _stop(proc)
    with Store(tmp_path / "a", readonly=True) as sa:
        assert all(sa.get(key=k).contiguous_length == 5 for k in keys_b)


async def test_relay_a_b_c_with_a_cut_mid_sync(make_store):
    a, b, c = make_store("a"), make_store("b"), make_store("c")
    log = a.get("log")
    log.append([b"%06d" % i + bytes(100) for i in range(20000)])
    b.get(key=log.key)
    c_rep = c.get(key=log.key)
    async with trio.open_nursery() as nursery:
        port_a = await nursery.start(serve_tcp, a)
        port_b = await nursery.start(serve_tcp, b)
        nursery.start_soon(lambda: connect_tcp(b, "127.0.0.1", port_a, **FAST))
        with trio.move_on_after(30):  # cut C's first connection as soon as it has something
            async with trio.open_nursery() as inner:
                inner.start_soon(lambda: connect_tcp(c, "127.0.0.1", port_b, **FAST))
                while c_rep.contiguous_length == 0:
                    await trio.sleep(0.001)
                inner.cancel_scope.cancel()
        cut_at = c_rep.contiguous_length
        assert c_rep.audit().ok
        nursery.start_soon(lambda: connect_tcp(c, "127.0.0.1", port_b, **FAST))
        log.append(b"live after the cut")
        with trio.fail_after(30):
            while c_rep.contiguous_length < 20001:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert 0 < cut_at and c_rep.head() == log.head() and c_rep.audit().ok
    assert c_rep[20000] == b"live after the cut"


async def _with_timeout(coro, seconds):
    with trio.fail_after(seconds):
        return await coro


def _key_in(store: Store, head) -> bytes:
    for k in store.keys():
        lg = store.get(key=k)
        if not lg.writable and lg.head().tree_hash == head.tree_hash:
            return k
    raise AssertionError("no replica with that head")
