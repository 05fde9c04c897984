"""Machine benchmarks, with raw baselines (corelog appends, plain LMDB, one Ed25519 sign) in the same run.

Plain script: ``python benchmarks/bench_machine.py [--quick] [--no-js]``. Prints a table.
Statechart rows (issue 13, ``--statecharts`` runs only them): pure transition() on a chart with
history and ``after`` >= 100,000/s; 10,000 pending timers fire within 5 ms of due (p99), CPU
reported; Mermaid import of a 200-state diagram < 50 ms.
Targets (issue 3): send sync=False >= 15,000 events/s; pure transition() >= 100,000/s;
reopen+restore at 1,000,000 entries < 10 ms; subscriber via ``async for`` >= 10,000
snapshots/s. Issue 8: 1,000 machines in one sync=True store, 10 events each sent
concurrently from trio tasks >= 6 x the raw LMDB put+fsync commit rate; one machine
sync=True >= 0.9 x raw durable append; one machine sync=False >= 0.75 x the "raw LMDB
put+commit + one sign" limit; 100,000 machines created in one store >= 5,000/s, with the
RSS per live machine. With node available, runs coremachine (../shared/anchors) in the
same run and prints the ratio.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lmdb
import msgpack
import nacl.bindings
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


def sends(path: Path, n: int, sync: bool, read_head: bool = False) -> float:
    """``read_head``: read the log's head after each send (signs it: one signature per event)."""
    with Store(path, sync=sync) as s:
        log = s.get("m")
        m = Machine(log, COUNTER, **IMPL)
        m.send("START", 0)
        t = time.perf_counter()
        if read_head:
            for _ in range(n):
                m.send("INCREMENT")
                log.head()
        else:
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


def raw_lmdb(path: Path, n: int, sync: bool, sign: bool = False) -> float:
    """Plain LMDB: one put and one commit per op (fsync'd if ``sync``); ``sign``: plus one Ed25519 sign."""
    path.mkdir(parents=True)
    env = lmdb.open(str(path), map_size=1 << 30, sync=sync, metasync=sync)
    _, secret = nacl.bindings.crypto_sign_seed_keypair(b"\x07" * 32)
    message = b"\x01" * 112  # what a log signs: key, tree hash, length, fork and a namespace
    try:
        t = time.perf_counter()
        for i in range(n):
            if sign:
                nacl.bindings.crypto_sign(message, secret)
            with env.begin(write=True) as txn:
                txn.put(i.to_bytes(8, "big"), ENTRY)
        return n / (time.perf_counter() - t)
    finally:
        env.close()


def many_machines(path: Path, machines: int, each: int) -> tuple[float, float]:
    """``machines`` Coremachines in one sync=True store, ``each`` events apiece from concurrent trio tasks.

    Returns (events/s, events per LMDB commit): the store writer coalesces concurrent sends.
    """

    async def main() -> tuple[float, float]:
        with Store(path, sync=True) as s:
            with s.batch():  # creating them is not what is measured
                cms = [Coremachine(s.get(f"m{i}"), COUNTER, **IMPL) for i in range(machines)]
            commits = s._writer.commits

            async def drive(cm: Coremachine) -> None:
                await cm.send("START", 0)
                for _ in range(each - 1):
                    await cm.send("INCREMENT")

            t = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for cm in cms:
                    nursery.start_soon(drive, cm)
            dt = time.perf_counter() - t
            assert all(cm.context["counter"] == each - 1 for cm in cms)
            events = machines * each
            return events / dt, events / max(1, s._writer.commits - commits)

    return trio.run(main)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def create_many(path: Path, n: int, batch: int) -> tuple[float, float]:
    """Create ``n`` machines in one sync=False store (``batch`` per ``store.batch()``, 0: no batch).

    Returns (machines/s, RSS bytes per live machine: all are kept alive and open).
    """
    with Store(path, sync=False) as s:
        gc.collect()
        before = rss()
        live: list[Machine] = []
        t = time.perf_counter()
        if batch:
            for k in range(0, n, batch):
                with s.batch():
                    live.extend(Machine(s.get(f"m{i}"), COUNTER, **IMPL) for i in range(k, min(n, k + batch)))
        else:
            live.extend(Machine(s.get(f"m{i}"), COUNTER, **IMPL) for i in range(n))
        dt = time.perf_counter() - t
        per = (rss() - before) / n
        assert len(live) == n and live[-1].state == "idle"
        return n / dt, per


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


# --- statecharts (issue 13): history + after transitions, many pending timers, Mermaid import ------------

HISTORY_AFTER = {
    "id": "player",
    "initial": "on",
    "context": {"n": 0},
    "states": {
        "on": {
            "initial": "playing",
            "states": {
                "playing": {
                    "after": {"30000": "paused"},
                    "on": {"PAUSE": "paused", "TICK": {"actions": "count"}},
                },
                "paused": {"after": {"60000": "#player.off"}, "on": {"PLAY": "playing"}},
                "hist": {"type": "history", "history": "deep"},
            },
            "on": {"POWER": "off"},
        },
        "off": {"on": {"POWER": "on.hist"}},
    },
}


def pure_history_after(n: int) -> float:
    """transition() cycling PAUSE/PLAY/POWER/POWER: every step exits/enters states with timers and history."""
    chart = Statechart(HISTORY_AFTER, actions={"count": lambda ctx, ev: {"n": ctx["n"] + 1}})
    s = chart.initial(0)
    events = [Event(t, None, i) for i, t in enumerate(["PAUSE", "POWER", "POWER", "PLAY", "TICK"])]
    t = time.perf_counter()
    for i in range(n):
        s = chart.transition(s, events[i % 5])
    return n / (time.perf_counter() - t)


def pending_timers(path: Path, machines: int, window_ms: int) -> tuple[float, float, float, float]:
    """``machines`` Machines, each with one pending timer due within ``window_ms``; one TimerHeap and one
    trio loop fire them all (each firing recorded). Returns (p50 ms late, p99 ms late, max, CPU %)."""
    from corelog.machine import TimerHeap

    d = {
        "initial": "idle",
        "states": {"idle": {"on": {"ARM": "wait"}}, "wait": {"after": {"1000": "fired"}}, "fired": {}},
    }
    rng = __import__("random").Random(7)
    fake: list[int | None] = [None]

    def clock() -> int:
        return fake[0] if fake[0] is not None else int(time.time() * 1000)

    chart = Statechart(d)
    with Store(path, sync=False) as s:
        t0 = time.perf_counter()
        ms = {i: Machine(s.get(f"m{i}"), chart, clock=clock) for i in range(machines)}
        created = time.perf_counter() - t0
        # arm every timer (ARM entered at a chosen time, so each is due at start + its offset)
        start = int(time.time() * 1000) + int(1.5 * created * 1000) + 1000
        heap = TimerHeap()
        for i, m in ms.items():
            fake[0] = start + rng.randrange(window_ms) - 1000
            heap.sync(i, m.send("ARM"))
        fake[0] = None
        assert heap.next_due() >= time.time() * 1000, "arming took longer than planned"
        late: list[float] = []

        async def loop() -> None:
            while True:
                nd = heap.next_due()
                if nd is None:
                    return
                now = time.time() * 1000
                if nd > now:
                    await trio.sleep((nd - now) / 1000)
                now_ms = time.time() * 1000
                for key, event, due in heap.pop_due(int(now_ms)):
                    snap = ms[key].send(event)
                    late.append(time.time() * 1000 - due)
                    heap.sync(key, snap)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        trio.run(loop)
        cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0) * 100
    late.sort()
    return late[len(late) // 2], late[int(len(late) * 0.99)], late[-1], cpu


def mermaid_200() -> str:
    lines = ["stateDiagram-v2", "  [*] --> s0"]
    n = 0
    for block in range(20):  # 20 composites of 8 states + choices and plain states: 200 states
        lines.append(f"  state c{block} {{")
        lines.append(f"    [*] --> c{block}_0")
        for j in range(8):
            lines.append(f"    c{block}_{j} --> c{block}_{(j + 1) % 8} : NEXT [ok] / act")
        lines.append(f"    c{block}_7 --> [*] : END")
        lines.append("  }")
        n += 9
    for k in range(200 - n - 1):
        lines.append(f"  s{k} --> s{k + 1} : GO")
        lines.append(f"  s{k} : a note about s{k}")
    lines.append(f"  state pick <<choice>>\n  s{200 - n - 1} --> pick : DECIDE")
    lines.append("  pick --> c0 : [left]\n  pick --> c1 : else")
    return "\n".join(lines)


def mermaid_import_ms() -> tuple[float, int]:
    from corelog.machine import from_mermaid

    text = mermaid_200()
    d = from_mermaid(text)
    states = len(Statechart(d, implementations=False)._nodes) - 1
    times = []
    for _ in range(20):
        t = time.perf_counter()
        from_mermaid(text)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), states


def statechart_rows(p, quick: bool) -> list[tuple[str, str, str]]:
    rows = []
    base = max(pure(50_000) for _ in range(2))
    r = max(pure_history_after(50_000 if quick else 100_000) for _ in range(3))
    rows.append(
        (
            "pure transition(), history + after chart",
            f"{r:,.0f} /s",
            f">= 100,000 {'OK' if r >= 100_000 else 'MISS'} ({r / base:.2f} x counter {base:,.0f}/s)",
        )
    )
    n = 2_000 if quick else 10_000
    p50, p99, worst, cpu = pending_timers(p("timers"), n, 4_000 if quick else 10_000)
    rows.append(
        (
            f"{n:,} pending timers (1 heap, fired + recorded)",
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms late (max {worst:.1f})",
            f"p99 <= 5 ms {'OK' if p99 <= 5 else 'MISS'}; CPU {cpu:.0f}% of one core",
        )
    )
    ms, states = mermaid_import_ms()
    rows.append(
        (f"Mermaid import, {states}-state diagram", f"{ms:.2f} ms", f"< 50 ms {'OK' if ms < 50 else 'MISS'}")
    )
    return rows


def ok(ratio: float, target: float) -> str:
    return f"{ratio:.2f} x (>= {target}) {'OK' if ratio >= target else 'MISS'}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-js", action="store_true")
    ap.add_argument("--statecharts", action="store_true", help="only the statechart rows (issue 13)")
    args = ap.parse_args()
    n = 5_000 if args.quick else 30_000
    n_sync = 300 if args.quick else 2_000
    big = 50_000 if args.quick else 1_000_000
    fleet = 200 if args.quick else 1_000
    created = 10_000 if args.quick else 100_000
    root = Path(tempfile.mkdtemp(prefix="corelog-machine-bench-"))
    rows = []
    try:

        def p(name: str) -> Path:
            path = root / f"{name}-{time.monotonic_ns()}"
            return path

        if args.statecharts:
            print_table("corelog statechart benchmark", statechart_rows(p, args.quick))
            return

        # one machine, sync=False: interleaved with its baselines, medians of 3
        runs = [
            (
                raw_append(p("raw"), n, False),
                raw_lmdb(p("lmdbs"), n, False, sign=True),
                sends(p("send"), n, False),
                sends(p("sendh"), n, False, read_head=True),
            )
            for _ in range(3)
        ]
        raw, limit, r, r_head = (statistics.median(x[i] for x in runs) for i in range(4))
        rows.append(("raw log append (1 entry, sync=False)", f"{raw:,.0f} /s", "baseline"))
        rows.append(("raw LMDB put+commit + one Ed25519 sign", f"{limit:,.0f} /s", "baseline (the limit)"))
        rows.append(
            (
                "send, counter machine, sync=False",
                f"{r:,.0f} events/s",
                f"{ok(r / limit, 0.75)} the limit; {r / raw:.2f} x raw append; "
                f">= 15,000/s {'OK' if r >= 15_000 else 'MISS'}",
            )
        )
        rows.append(
            (
                "send + read the head (signs it), sync=False",
                f"{r_head:,.0f} events/s",
                f"{r_head / limit:.2f} x the limit (information: one signature per event)",
            )
        )
        r = max(pure(100_000) for _ in range(3))
        rows.append(("pure transition()", f"{r:,.0f} /s", f">= 100,000 {'OK' if r >= 100_000 else 'MISS'}"))
        rows.extend(statechart_rows(p, args.quick))
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
                raw_lmdb(p("lmdbd"), n_sync, True),
                *many_machines(p("fleet"), fleet, 10),
            )
            for _ in range(3)
        ]
        rawd, r, cmt, cmi, lmdbd, many, per_commit = (statistics.median(x[i] for x in runs) for i in range(7))
        rows.append(("raw log append (1 entry, sync=True)", f"{rawd:,.0f} /s", "baseline"))
        rows.append(("send, sync=True", f"{r:,.0f} events/s", f"{ok(r / rawd, 0.9)} raw durable append"))
        rows.append(
            (
                "Coremachine send, sync=True (append_async)",
                f"{cmt:,.0f} events/s",
                f"{cmt / rawd:.2f} x raw",
            )
        )
        rows.append(
            ("Coremachine send, sync=True, append inline", f"{cmi:,.0f} events/s", f"{cmi / rawd:.2f} x raw")
        )
        rows.append(("raw LMDB put+fsync commit", f"{lmdbd:,.0f} /s", "baseline"))
        rows.append(
            (
                f"{fleet:,} Coremachines, sync=True, 10 events each, concurrent",
                f"{many:,.0f} events/s",
                f"{ok(many / lmdbd, 6)} raw LMDB fsync commits; {per_commit:.1f} events per commit",
            )
        )
        rate, per = create_many(p("create"), created, 0)
        rows.append(
            (
                f"create {created:,} machines, one store (sync=False)",
                f"{rate:,.0f} /s",
                f">= 5,000 {'OK' if rate >= 5_000 else 'MISS'}; RSS {per / 1024:.1f} KiB per live machine",
            )
        )
        rate, per = create_many(p("createb"), created, 1_000)
        rows.append(
            (
                f"create {created:,} machines, store.batch() of 1,000",
                f"{rate:,.0f} /s",
                f">= 5,000 {'OK' if rate >= 5_000 else 'MISS'}; RSS {per / 1024:.1f} KiB per live machine",
            )
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
