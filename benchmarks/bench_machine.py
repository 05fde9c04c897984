"""Machine benchmarks, with the raw log append measured in the same run.

Plain script: ``python benchmarks/bench_machine.py [--quick] [--no-js]``. Prints a table.
Targets (issue 3): send sync=False >= 15,000 events/s; pure transition() >= 100,000/s;
send sync=True >= 0.7 x raw durable single append; reopen+restore at 1,000,000 entries
< 10 ms; subscriber via ``async for`` >= 10,000 snapshots/s. With node available, runs
coremachine (../shared/anchors) in the same run and prints the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from corelog import Store  # noqa: E402
from corelog.machine import Coremachine, Event, Machine, Statechart  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, run_anchor  # noqa: E402

# the README's quickstart machine (examples/counter.py)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from counter import IMPL  # noqa: E402
from counter import definition as COUNTER  # noqa: E402

ENTRY = msgpack.packb(
    {
        "event": {"type": "INCREMENT"},
        "state": "running",
        "context": {"running": True, "counter": 1},
        "time": 1700000000000,
    }
)


def raw_append(path: Path, n: int, sync: bool) -> float:
    with Store(path, sync=sync) as s:
        log = s.get("raw")
        t = time.perf_counter()
        for _ in range(n):
            log.append(ENTRY)
        return n / (time.perf_counter() - t)


def sends(path: Path, n: int, sync: bool) -> float:
    with Store(path, sync=sync) as s:
        m = Machine(s.get("m"), COUNTER, **IMPL)
        m.send("START", 0)
        t = time.perf_counter()
        for _ in range(n):
            m.send("INCREMENT")
        dt = time.perf_counter() - t
        assert m.context["counter"] == n
        return n / dt


def cm_sends(path: Path, n: int, sync: bool, offload: bool) -> float:
    """Coremachine.send from one trio task; ``offload``: the append (and fsync) in a worker thread."""

    async def main() -> float:
        with Store(path, sync=sync) as s:
            cm = Coremachine(s.get("m"), COUNTER, **IMPL, offload=offload)
            await cm.send("START", 0)
            t = time.perf_counter()
            for _ in range(n):
                await cm.send("INCREMENT")
            dt = time.perf_counter() - t
            assert cm.context["counter"] == n
            await cm.aclose()
            return n / dt

    return trio.run(main)


def pure(n: int) -> float:
    chart = Statechart(COUNTER, **IMPL)
    s = chart.transition(chart.initial(), Event("START", 0))
    ev = Event("INCREMENT", None, 0)
    t = time.perf_counter()
    for _ in range(n):
        s = chart.transition(s, ev)
    return n / (time.perf_counter() - t)


def reopen(path: Path, n: int) -> float:
    with Store(path, sync=False) as s:
        m = Machine(s.get("m"), COUNTER, **IMPL)
        m.send("START", 0)
        m.close()
        log = s.get("m")
        for start in range(0, n - 2, 10_000):
            log.append([ENTRY] * min(10_000, n - 2 - start))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        with Store(path, sync=False) as s:
            m = Machine(s.get("m"), COUNTER, **IMPL)
            assert m.state == "running" and len(m.history) == n
            times.append(time.perf_counter() - t)
            m.close()
    return statistics.median(times) * 1000


def subscriber(path: Path, n: int) -> float:
    async def main() -> float:
        with Store(path, sync=False) as s:
            cm = Coremachine(s.get("m"), COUNTER, **IMPL)
            await cm.send("START", 0)
            got = 0
            t = time.perf_counter()
            async with trio.open_nursery() as nursery:

                async def consume() -> None:
                    nonlocal got
                    async for _snap in cm:
                        got += 1
                        if got == n:
                            return

                nursery.start_soon(consume)
                await trio.sleep(0)
                for _ in range(n):
                    await cm.send("INCREMENT")
            return n / (time.perf_counter() - t)

    return trio.run(main)


def coremachine(n: int) -> dict | str:
    return run_anchor("bench_coremachine.mjs", n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-js", action="store_true")
    args = ap.parse_args()
    n = 5_000 if args.quick else 30_000
    n_sync = 300 if args.quick else 2_000
    big = 50_000 if args.quick else 1_000_000
    root = Path(tempfile.mkdtemp(prefix="corelog-machine-bench-"))
    rows = []
    try:

        def p(name: str) -> Path:
            path = root / f"{name}-{time.monotonic_ns()}"
            return path

        raw = max(raw_append(p("raw"), n, False) for _ in range(2))
        rows.append(("raw log append (1 entry, sync=False)", f"{raw:,.0f} /s", "baseline"))
        r = max(sends(p("send"), n, False) for _ in range(3))
        rows.append(
            (
                "send, counter machine, sync=False",
                f"{r:,.0f} events/s",
                f">= 15,000 {'OK' if r >= 15_000 else 'MISS'} ({r / raw:.2f} x raw append)",
            )
        )
        r = max(pure(100_000) for _ in range(3))
        rows.append(("pure transition()", f"{r:,.0f} /s", f">= 100,000 {'OK' if r >= 100_000 else 'MISS'}"))
        r = max(cm_sends(p("cm"), n, False, False) for _ in range(2))
        rows.append(
            ("Coremachine send, sync=False (append inline)", f"{r:,.0f} events/s", f"{r / raw:.2f} x raw")
        )
        # fsync timings drift: measure raw and machine in interleaved runs and take medians
        runs = [
            (
                raw_append(p("rawd"), n_sync, True),
                sends(p("sendd"), n_sync, True),
                cm_sends(p("cmt"), n_sync, True, True),
                cm_sends(p("cmi"), n_sync, True, False),
            )
            for _ in range(3)
        ]
        rawd, r, cmt, cmi = (statistics.median(x[i] for x in runs) for i in range(4))
        rows.append(("raw log append (1 entry, sync=True)", f"{rawd:,.0f} /s", "baseline"))
        rows.append(
            (
                "send, sync=True",
                f"{r:,.0f} events/s",
                f"{r / rawd:.2f} x raw durable (>= 0.7) {'OK' if r / rawd >= 0.7 else 'MISS'}",
            )
        )
        rows.append(
            (
                "Coremachine send, sync=True, append in a thread",
                f"{cmt:,.0f} events/s",
                f"{cmt / rawd:.2f} x raw",
            )
        )
        rows.append(
            ("Coremachine send, sync=True, append inline", f"{cmi:,.0f} events/s", f"{cmi / rawd:.2f} x raw")
        )
        ms = reopen(p("big"), big)
        rows.append(
            (f"reopen + restore, {big:,} entries", f"{ms:.2f} ms", f"< 10 ms {'OK' if ms < 10 else 'MISS'}")
        )
        r = max(subscriber(p("sub"), 5_000 if args.quick else 20_000) for _ in range(2))
        rows.append(
            (
                "send -> async for subscriber, end to end",
                f"{r:,.0f} snapshots/s",
                f">= 10,000 {'OK' if r >= 10_000 else 'MISS'}",
            )
        )
        if not args.no_js:
            js = coremachine(2_000 if args.quick else 10_000)
            if isinstance(js, dict):
                ours = max(sends(p("cmp"), 10_000, False) for _ in range(2))
                rows.append(
                    (
                        "coremachine 1.1.0 (JS) action()",
                        f"{js['actions_per_s']:,.0f} actions/s",
                        f"corelog is {ours / js['actions_per_s']:.1f} x faster (sync=False)",
                    )
                )
                rows.append(
                    ("coremachine reopen+restore (10k entries)", f"{js['reopen_restore_ms']:.1f} ms", "")
                )
            else:
                rows.append(("coremachine 1.1.0 (JS)", js, ""))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table("corelog machine benchmark", rows)


if __name__ == "__main__":
    main()
