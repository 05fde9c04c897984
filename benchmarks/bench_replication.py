"""Replication benchmarks: TCP (two processes, Noise-encrypted), both ways at once, live latency,
many logs, event-loop stalls, memory under load and under attack, WebRTC.

Plain script: ``python benchmarks/bench_replication.py [--quick] [--no-webrtc]``. Prints a table.
The raw verify-and-commit cost (no network, one process) and the one-way rate are measured in the
same run, as baselines. Targets (issue 9): both directions at once, 100,000 x 100 B each way, TCP,
two processes >= 0.8 x the one-way rate; 2,000 logs x 5 entries each way over one connection
< 5 s; one way >= 0.9 x raw verify+commit; live append -> replica commit p50 < 2 ms; max
event-loop stall during a 100,000-entry sync into a sync=True store < 20 ms; peak RSS of a server
under 200 concurrent connections and of a replica fed hostile frames < 200 MB.
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
            s.find(b"\0" * 32)  # (warm the discovery-key index before clients come)
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


def vm(pid: int | str, field: str) -> int:
    """VmRSS / VmHWM of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def build_pair(root: Path, n: int, logs: int = 1) -> tuple[Path, Path, list[bytes], list[bytes]]:
    """Two stores; each writes ``logs`` logs of ``n`` entries and holds empty replicas of the other's."""
    pa, pb = root / "both-a", root / "both-b"
    ka = build(pa, "a", n, logs=logs)
    kb = build(pb, "b", n, logs=logs)
    with Store(pa, sync=False) as a, Store(pb, sync=False) as b:
        for k in kb:
            a.get(key=k)
        for k in ka:
            b.get(key=k)
    return pa, pb, ka, kb


def tcp_both_ways(root: Path, n: int, logs: int = 1, timeout: float = 300) -> float:
    """Seconds until both directions are complete (the client ends when the server holds all too)."""
    pa, pb, ka, kb = build_pair(root, n, logs)
    proc, port = spawn_server(pa, root)
    try:
        with Store(pb, sync=False) as b:

            async def run() -> float:
                t = time.perf_counter()
                with trio.fail_after(timeout):
                    await connect_tcp(b, "127.0.0.1", port, live=False)
                return time.perf_counter() - t

            dt = trio.run(run)
            assert all(b.get(key=k).contiguous_length == n for k in ka)
    finally:
        proc.kill()
        proc.wait()
    with Store(pa, readonly=True) as a:
        assert all(a.get(key=k).contiguous_length == n for k in kb), "the server got everything too"
    return dt


def loop_stall_sync_true(root: Path, n: int, owned: bool = False) -> tuple[float, float]:
    """Max event-loop stall (ms) of a replica process syncing n entries into a sync=True store.

    ``owned``: with the interpreter settings ``corelog sync``/``serve`` make in their own process
    (``own_process``: GIL switch interval 1 ms, gc.freeze), restored afterwards."""
    if owned:
        import gc

        from corelog.cli._net import SWITCH_INTERVAL

        before = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        gc.freeze()
        try:
            return loop_stall_sync_true(root, n)
        finally:
            sys.setswitchinterval(before)
            gc.unfreeze()
    wpath = root / "stall-w"
    (key,) = build(wpath, "log", n)
    proc, port = spawn_server(wpath, root)
    try:
        with Store(root / "stall-r", sync=True) as r:
            rep = r.get(key=key)

            async def run() -> tuple[float, float]:
                worst = 0.0
                done = trio.Event()

                async def watchdog() -> None:
                    nonlocal worst
                    while not done.is_set():
                        t = time.perf_counter()
                        await trio.sleep(0.001)
                        worst = max(worst, time.perf_counter() - t - 0.001)

                t0 = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watchdog)
                    await connect_tcp([rep], "127.0.0.1", port, live=False)
                    done.set()
                return worst * 1000, n / (time.perf_counter() - t0)

            out = trio.run(run)
            assert rep.contiguous_length == n
    finally:
        proc.kill()
        proc.wait()
    return out


def server_rss_many_connections(root: Path, conns: int, n: int) -> tuple[int, float]:
    """Peak RSS (VmHWM) of a serving process while ``conns`` clients sync at once."""
    wpath = root / "conns-w"
    keys = build(wpath, "log", n, logs=conns)
    proc, port = spawn_server(wpath, root)
    try:
        base = vm(proc.pid, "VmRSS")
        with Store(root / "conns-r", sync=False) as r:
            reps = [r.get(key=k) for k in keys]

            async def run() -> float:
                t = time.perf_counter()
                with trio.fail_after(300):
                    async with trio.open_nursery() as nursery:
                        for rep in reps:
                            nursery.start_soon(
                                lambda rep=rep: connect_tcp(
                                    [rep], "127.0.0.1", port, live=False, progress_timeout=120
                                )
                            )
                return time.perf_counter() - t

            dt = trio.run(run)
            assert all(rep.contiguous_length == n for rep in reps)
        peak = vm(proc.pid, "VmHWM")
    finally:
        proc.kill()
        proc.wait()
    return peak - base, dt


def hostile_main() -> None:
    """Child process: a replica fed hostile frames over real sessions; prints its VmHWM."""
    import msgpack

    from corelog.replication import Session
    from corelog.replication._connection import Connection
    from corelog.replication._messages import Head, Hello, Open, Ping, Pong, Request, encode

    hh = os.urandom(64)

    class Secured(trio.abc.Stream):
        handshake_hash = hh
        remote_public_key = bytes(32)

        def __init__(self, inner):
            self.inner = inner

        async def send_all(self, data):
            await self.inner.send_all(data)

        async def wait_send_all_might_not_block(self):
            await self.inner.wait_send_all_might_not_block()

        async def receive_some(self, max_bytes=None):
            return await self.inner.receive_some(max_bytes)

        async def aclose(self):
            await self.inner.aclose()

    root = Path(tempfile.mkdtemp(prefix="corelog-hostile-"))
    with Store(root / "w", sync=False) as w, Store(root / "victim", sync=False) as v:
        log = w.get("log")
        log.append([BLOCK] * 1000)
        own = v.get("own")
        own.append([BLOCK] * 1000)
        big = 2**53 - 1
        bombs = [
            b"\x91" * (4 * 1024 * 1024 - 8) + b"\x00",
            msgpack.packb([0, [[] for _ in range(1_000_000)]]),
            msgpack.packb([0, [b"ab"] * 1_000_000]),
            msgpack.packb([0, [{i: i} for i in range(200_000)]]),
        ]

        async def attack(frames_for) -> None:
            import trio.testing

            a, b = trio.testing.memory_stream_pair()
            rep = v.get(key=log.key)
            session = Session(Secured(b), v, initiator=False, idle_timeout=1, progress_timeout=1)
            conn = Connection(hh, initiator=True)

            async def victim() -> None:
                try:
                    await session.run()
                except Exception:
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(victim)
                try:
                    for chunk in frames_for(conn, rep):
                        await a.send_all(chunk)
                    with trio.move_on_after(3):
                        while await a.receive_some(1 << 20):
                            pass
                except Exception:
                    pass
                await a.aclose()

        def bomb(data):
            return lambda conn, rep: [len(data).to_bytes(4, "big") + data]

        def flood(conn, rep):
            yield conn.hello() + conn.open(own.discovery_key, own.key) + conn.send(Ping(0))
            yield b"".join(encode(Request(0, i, 0, 0, 0, 1000)) for i in range(1500))

        def huge_head(conn, rep):
            yield encode(Hello(1, big, big)) + conn.open(rep.discovery_key, rep.key) + encode(Pong(0))
            yield encode(Head(0, 0, big, os.urandom(32), os.urandom(64), big, big))

        def oversize(conn, rep):
            yield (2**32 - 1).to_bytes(4, "big") + bytes(65536)

        for make in [*(bomb(b) for b in bombs), flood, huge_head, oversize] * 3:
            trio.run(attack, make)
        assert own.length == 1000 and own.audit().ok
        assert Open
    print(vm("self", "VmHWM"))
    shutil.rmtree(root, ignore_errors=True)


def hostile_rss() -> int:
    out = subprocess.run(
        [sys.executable, str(HERE), "--hostile"],
        env=dict(os.environ, PYTHONPATH=str(HERE.parent.parent)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return int(out.stdout.strip().splitlines()[-1])


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
    ap.add_argument("--hostile", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve_main(args.serve[0], args.serve[1], int(args.serve[2]), float(args.serve[3]))
        return
    if args.hostile:
        hostile_main()
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
                f"one way {n:,} x 100 B, TCP, 2 processes",
                f"{r:,.0f} entries/s",
                f">= 0.9 x raw {'OK' if r >= 0.9 * raw else 'MISS'}  ({r / raw:.2f} x raw)",
            )
        )
        both = max(n / tcp_both_ways(root / f"b{i}", n) for i in range(2))
        rows.append(
            (
                f"both ways at once {n:,} x 100 B each way, TCP, 2 processes",
                f"{both:,.0f} entries/s each way",
                f">= 0.8 x one way {'OK' if both >= 0.8 * r else 'MISS'}  ({both / r:.2f} x)",
            )
        )
        m = 500 if args.quick else 2000
        dt = tcp_both_ways(root / "many-both", 5, logs=m)
        rows.append(
            (
                f"{m:,} logs x 5 entries each way, one TCP connection",
                f"{dt:.2f} s",
                f"< 5 s {'OK' if dt < 5 else 'MISS'}",
            )
        )
        for owned, how in [(False, "library defaults"), (True, "as corelog sync runs")]:
            runs = [loop_stall_sync_true(root / f"stall{int(owned)}{i}", n, owned) for i in range(3)]
            stalls = sorted(s for s, _ in runs)
            rate = statistics.median(r for _, r in runs)
            rows.append(
                (
                    f"max event-loop stall, {n:,}-entry sync into sync=True, {how} (3 runs)",
                    f"median {stalls[1]:.1f} ms",
                    f"< 20 ms {'OK' if stalls[1] < 20 else 'MISS'}  (runs: {', '.join(f'{s:.1f}' for s in stalls)} ms;"
                    f" {rate:,.0f} entries/s)",
                )
            )
        conns = 50 if args.quick else 200
        grew, dt = server_rss_many_connections(root, conns, 1000)
        rows.append(
            (
                f"server peak RSS growth, {conns} concurrent connections",
                f"{grew / 1e6:.0f} MB",
                f"< 200 MB {'OK' if grew < 200e6 else 'MISS'}  (all synced in {dt:.1f} s)",
            )
        )
        peak = hostile_rss()
        rows.append(
            (
                "replica fed hostile frames (bombs, floods, fake heads), peak RSS",
                f"{peak / 1e6:.0f} MB",
                f"< 200 MB {'OK' if peak < 200e6 else 'MISS'}",
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
                    f"< 2 ms {'OK' if med < 2 else 'MISS'} (p99 {p99:.2f} ms)",
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
