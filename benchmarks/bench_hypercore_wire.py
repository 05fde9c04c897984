"""Hypercore wire protocol: corelog against real JS hypercore 11.37.1 peers, JS<->JS measured in the same run.

Plain script: ``python benchmarks/bench_hypercore_wire.py [--blocks 100000] [--size 100] [--live 200]``
(needs node and ``npm ci`` at the repository root). Measures, over 127.0.0.1 TCP:

* a JS reader downloading N x size B from ``serve_hypercore`` vs from a JS writer (JS<->JS);
* ``connect_hypercore`` downloading N x size B from a JS writer into a corelog replica (verified and
  committed) vs a JS reader downloading the same core (JS<->JS);
* live append -> JS reader holds it: p50/p90 for a corelog writer and for a JS writer (the JS figure
  includes one extra stdin round trip to ask the writer to append).

Each download is timed from "connect" to "holds every block" as seen by the reading side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._common import print_table  # noqa: E402
from corelog import Store  # noqa: E402
from corelog.replication.hypercore import connect_hypercore, serve_hypercore  # noqa: E402
from tests.hypercore_js import HAVE_JS, REASON, start_js  # noqa: E402


async def main(n: int, size: int, live: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-hc-"))
    rows: list[tuple[str, str, str]] = []
    block = bytes(size)
    peers = []
    try:
        # the JS writer both baselines read from
        writer = await start_js(
            "writer", "--blocks", str(n), "--size", str(size), "--listen", "--dir", str(tmp / "jw")
        )
        peers.append(writer)
        key = writer.ready["cores"][0]["key"]

        # 1. JS reader <- JS writer (baseline)
        jr = await start_js("reader", "--key", key, "--dir", str(tmp / "jr1"))
        peers.append(jr)
        t = time.perf_counter()
        await jr.acmd(connect=writer.port)
        got = await jr.acmd(timeout=600, wait=[0, n, 0, 600000, 2, True])
        js_js = time.perf_counter() - t
        print(f"JS <- JS: {js_js:.1f} s", file=sys.stderr, flush=True)
        assert got["contiguousLength"] == n, got

        # 2. JS reader <- corelog writer
        with Store(tmp / "cw", sync=False) as s:
            log = s.get("bench")
            for i in range(0, n, 10000):
                log.append([block] * min(10000, n - i))
            async with trio.open_nursery() as nursery:
                port = await nursery.start(lambda task_status: serve_hypercore(s, task_status=task_status))
                jr2 = await start_js("reader", "--key", log.key.hex(), "--dir", str(tmp / "jr2"))
                peers.append(jr2)
                t = time.perf_counter()
                await jr2.acmd(connect=port)
                got = await jr2.acmd(timeout=600, wait=[0, n, 0, 600000, 2, True])
                py_js = time.perf_counter() - t
                print(f"JS <- corelog: {py_js:.1f} s", file=sys.stderr, flush=True)
                assert got["treeHash"] == log.head().tree_hash.hex(), got

                # 3a. live append -> JS reader (corelog writer)
                lat = []
                for i in range(live):
                    t = time.perf_counter()
                    log.append(block)
                    got = await jr2.acmd(wait=[0, n + i + 1, 0, 10000, 1, True])
                    lat.append(time.perf_counter() - t)
                    assert got["length"] == n + i + 1
                nursery.cancel_scope.cancel()

        # 4. corelog replica <- JS writer
        with Store(tmp / "cr", sync=False) as s:
            replica = s.get(key=bytes.fromhex(key))
            t = time.perf_counter()
            await connect_hypercore(replica, "127.0.0.1", writer.port)
            js_py = time.perf_counter() - t
            print(f"corelog <- JS: {js_py:.1f} s", file=sys.stderr, flush=True)
            assert replica.contiguous_length == n
            assert replica.head().tree_hash.hex() == writer.ready["cores"][0]["treeHash"]

        # 3b. live append -> JS reader (JS writer; jr follows the writer live)
        jlat = []
        for i in range(live):
            t = time.perf_counter()
            await writer.acmd(append=[0, 1, size])
            got = await jr.acmd(wait=[0, n + i + 1, 0, 10000, 1, True])
            jlat.append(time.perf_counter() - t)
    finally:
        for p in peers:
            p.close()

    def rate(sec: float) -> str:
        return f"{n / sec:,.0f} blocks/s"

    rows.append((f"JS reader <- JS writer, {n:,} x {size} B (baseline)", rate(js_js), "-"))
    rows.append((f"JS reader <- corelog serve_hypercore, {n:,} x {size} B", rate(py_js), "-"))
    rows.append(("  ratio corelog / JS", f"{js_js / py_js:.2f}x", ">= 1.0"))
    rows.append((f"corelog connect_hypercore <- JS writer, {n:,} x {size} B", rate(js_py), "-"))
    rows.append(("  ratio corelog / JS", f"{js_js / js_py:.2f}x", ">= 1.0"))
    q = statistics.quantiles
    rows.append(
        (
            f"live append -> JS reader (corelog writer), {live} appends",
            f"p50 {statistics.median(lat) * 1e3:.2f} ms",
            f"p90 {q(lat, n=10)[-1] * 1e3:.2f} ms",
        )
    )
    rows.append(
        (
            f"live append -> JS reader (JS writer), {live} appends",
            f"p50 {statistics.median(jlat) * 1e3:.2f} ms",
            f"p90 {q(jlat, n=10)[-1] * 1e3:.2f} ms",
        )
    )
    print_table("bench_hypercore_wire", rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--live", type=int, default=200)
    a = ap.parse_args()
    if not HAVE_JS:
        sys.exit(f"bench_hypercore_wire: {REASON}")
    trio.run(main, a.blocks, a.size, a.live)
