"""Replication benchmarks: TCP (two processes, Noise-encrypted), live latency, many logs, WebRTC.

Plain script: ``python benchmarks/bench_replication.py [--quick] [--no-webrtc]``. Prints a table.
The raw verify-and-commit cost (no network, one process) is measured in the same run.
Targets (issue 4): initial sync of 100,000 x 100 B entries over loopback TCP between two
processes >= 50,000 entries/s; live median append->commit < 5 ms; WebRTC entries/s reported;
1,000 logs x 100 entries over one TCP connection: time reported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from corelog import Store  # noqa: E402
from corelog.replication import connect_tcp, serve_tcp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, run_anchor  # noqa: E402

BLOCK = b"x" * 100
HERE = Path(__file__).resolve()


def build(path: Path, name: str, n: int, logs: int = 1) -> list[bytes]:
    keys = []
    with Store(path, sync=False) as s:
        for i in range(logs):
            log = s.get(f"{name}{i}" if logs > 1 else name)
            for start in range(0, n, 10_000):
                log.append([BLOCK] * min(10_000, n - start))
            keys.append(log.key)
    return keys


def raw_verify_commit(root: Path, n: int, batch: int = 4096) -> float:
    """In one process, no network: proof() on the writer, apply() on the replica."""
    with Store(root / "raw-w", sync=False) as w, Store(root / "raw-r", sync=False) as r:
        log = w.get("raw")
        for start in range(0, n, 10_000):
            log.append([BLOCK] * min(10_000, n - start))
        rep = r.get(key=log.key)
        proofs = [log.proof(s, min(n, s + batch), have=s) for s in range(0, n, batch)]
        t = time.perf_counter()
        for p in proofs:
            rep.apply(p)
        dt = time.perf_counter() - t
        assert rep.contiguous_length == n
    return n / dt


# --- child process: a serving peer -------------------------------------------------------------


def serve_main(path: str, port_file: str, live_n: int, live_interval: float) -> None:
    async def main() -> None:
        with Store(path, sync=False) as s:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(serve_tcp, s)
                Path(port_file).write_text(str(port))
                if live_n:
                    log = s.get("live")
                    await trio.sleep(1.0)  # let the reader connect and sync
                    for _ in range(live_n):
                        await trio.sleep(live_interval)
                        log.append(struct.pack("<d", time.monotonic()) + b"." * 92)
                    await trio.sleep(1.0)
                    nursery.cancel_scope.cancel()

    trio.run(main)


def spawn_server(
    path: Path, root: Path, live_n: int = 0, live_interval: float = 0.01
) -> tuple[subprocess.Popen, int]:
    port_file = root / f"port-{os.getpid()}-{time.monotonic_ns()}"
    proc = subprocess.Popen(
        [sys.executable, str(HERE), "--serve", str(path), str(port_file), str(live_n), str(live_interval)],
        env=dict(os.environ, PYTHONPATH=str(HERE.parent.parent)),
    )
    deadline = time.monotonic() + 20
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("the serving process did not start")
        time.sleep(0.02)
    return proc, int(port_file.read_text())


def tcp_sync(root: Path, name: str, n: int, logs: int = 1, timeout: float = 300) -> float:
    """Seconds for a reader process-pair sync of ``logs`` logs of ``n`` entries over loopback TCP."""
    wpath = root / f"{name}-w"
    keys = build(wpath, "log", n, logs=logs)
    proc, port = spawn_server(wpath, root)
    try:
        with Store(root / f"{name}-r", sync=False) as r:
            reps = [r.get(key=k) for k in keys]

            async def run() -> float:
                t = time.perf_counter()
                with trio.fail_after(timeout):
                    await connect_tcp(r, "127.0.0.1", port, live=False)
                return time.perf_counter() - t

            dt = trio.run(run)
            assert all(rep.contiguous_length == n and rep.audit().ok for rep in reps)
    finally:
        proc.kill()
        proc.wait()
    return dt


def tcp_live_latency(root: Path, count: int) -> list[float]:
    wpath = root / "live-w"
    with Store(wpath, sync=False) as s:
        key = s.get("live").key
    proc, port = spawn_server(wpath, root, live_n=count, live_interval=0.01)
    delays: list[float] = []
    try:
        with Store(root / "live-r", sync=False) as r:
            rep = r.get(key=key)

            def on_commit(log) -> None:
                now = time.monotonic()
                sent = struct.unpack_from("<d", log.get(log.contiguous_length - 1))[0]
                delays.append((now - sent) * 1000)

            rep.watch(on_commit)

            async def run() -> None:
                with trio.move_on_after(count * 0.01 + 15):
                    try:
                        await connect_tcp(r, "127.0.0.1", port, live=True)
                    except Exception:
                        pass  # the server ends the connection when it is done

            trio.run(run)
    finally:
        proc.kill()
        proc.wait()
    return delays


def webrtc_sync(root: Path, n: int) -> float | str:
    try:
        from corelog.replication import connect_webrtc, memory_signaling_pair  # type: ignore[attr-defined]
    except ImportError as exc:
        return f"not available ({exc})"
    from corelog.replication import replicate

    wpath = root / "rtc-w"
    (key,) = build(wpath, "log", n)
    with Store(wpath, sync=False) as w, Store(root / "rtc-r", sync=False) as r:
        rep = r.get(key=key)

        async def run() -> float:
            sa, sb = memory_signaling_pair()
            t = time.perf_counter()
            async with trio.open_nursery() as nursery:
                streams: dict[str, object] = {}

                async def side(name: str, sig, initiator: bool) -> None:
                    streams[name] = await connect_webrtc(sig, initiator=initiator)

                nursery.start_soon(side, "a", sa, True)
                nursery.start_soon(side, "b", sb, False)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: replicate(streams["a"], w, initiator=True, live=False))
                nursery.start_soon(lambda: replicate(streams["b"], r, initiator=False, live=False))
            return time.perf_counter() - t

        dt = trio.run(run)
        assert rep.contiguous_length == n
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-webrtc", action="store_true")
    ap.add_argument("--no-js", action="store_true", help="skip the Hypercore (JS) anchor")
    ap.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve_main(args.serve[0], args.serve[1], int(args.serve[2]), float(args.serve[3]))
        return
    n = 20_000 if args.quick else 100_000
    many = (100, 100) if args.quick else (1000, 100)
    root = Path(tempfile.mkdtemp(prefix="corelog-repl-bench-"))
    rows: list[tuple[str, str, str]] = []
    try:
        raw = raw_verify_commit(root, n)
        rows.append(("raw verify+commit (no network, 1 process)", f"{raw:,.0f} entries/s", "baseline"))
        r = max(n / tcp_sync(root / f"s{i}", "tcp", n) for i in range(2))
        rows.append(
            (
                f"initial sync {n:,} x 100 B, TCP, 2 processes",
                f"{r:,.0f} entries/s",
                f">= 50,000 {'OK' if r >= 50_000 else 'MISS'}  ({r / raw:.2f} x raw)",
            )
        )
        if not args.no_js:
            js = run_anchor("bench_replicate.mjs", 10_000)
            if isinstance(js, dict):
                rows.append(
                    (
                        "hypercore 11 (JS) replicate, in-process",
                        f"{js['blocks_per_s']:,.0f} blocks/s",
                        f"corelog over TCP is {r / js['blocks_per_s']:.1f} x",
                    )
                )
            else:
                rows.append(("hypercore 11 (JS) replicate", js, ""))
        delays = tcp_live_latency(root, 100 if args.quick else 300)
        if delays:
            med = statistics.median(delays)
            p99 = sorted(delays)[int(len(delays) * 0.99) - 1]
            rows.append(
                (
                    f"live append -> reader commit, TCP ({len(delays)} samples)",
                    f"median {med:.2f} ms",
                    f"< 5 ms {'OK' if med < 5 else 'MISS'} (p99 {p99:.2f} ms)",
                )
            )
        dt = tcp_sync(root, "many", many[1], logs=many[0])
        rows.append(
            (
                f"{many[0]:,} logs x {many[1]} entries, one TCP connection",
                f"{dt:.2f} s",
                f"{many[0] * many[1] / dt:,.0f} entries/s",
            )
        )
        if not args.no_webrtc:
            r = webrtc_sync(root, 5_000 if args.quick else 20_000)
            if isinstance(r, str):
                rows.append(("WebRTC data channel sync", r, ""))
            else:
                rows.append(
                    (
                        "WebRTC data channel sync (in-process peers)",
                        f"{r:,.0f} entries/s",
                        f"~{r * 100 / 1e6:.2f} MB/s payload",
                    )
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table("corelog replication benchmark", rows)


if __name__ == "__main__":
    main()
