"""Network commands: serve and sync."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import click
from rich.markup import escape

from corelog import Store
from corelog.errors import CorelogError

from ._app import cli
from ._common import PORT, PROBLEMS, UsageProblem, err_console, open_store, short, single

FOLLOW_INTERVAL = 0.2  # seconds between looks at the writer's commits when serving read-only
SWITCH_INTERVAL = (
    0.001  # seconds: the GIL switch interval of a process corelog owns (Python's default: 0.005)
)


def own_process() -> None:
    """Tune the interpreter for replication, in a process corelog owns (``corelog serve``/``sync``).

    Replication verifies and commits in a worker thread (pure Python, holding the
    GIL) while the event loop thread reads, decrypts and writes; every socket call
    and decryption releases the GIL, and taking it back waits up to the switch
    interval while the worker computes. At Python's default (5 ms) a few such
    waits in one loop turn stall the loop for 20-50 ms; at 1 ms the worst turn of
    a 100,000-entry sync into a sync=True store stays well under 20 ms
    (benchmarks/bench_replication.py). ``gc.freeze()`` moves the objects of
    start-up (modules, classes, the open store) out of the cyclic collector's
    view, so a full collection does not walk them again during a sync.

    A library never changes these process-wide settings on import; an application
    that embeds replication next to a latency-sensitive loop can make the same calls.
    """
    import gc

    global _owned
    sys.setswitchinterval(SWITCH_INTERVAL)
    if not _owned:  # (once: a test runner may invoke commands in its own process many times)
        _owned = True
        gc.freeze()


_owned = False


async def follow_writer(store: Store, interval: float = FOLLOW_INTERVAL) -> None:
    """Announce the commits another process makes to a store we opened read-only.

    A read-only Store sees the writer's commits (each read transaction is a fresh
    snapshot) but nobody calls its logs' watchers, so replication would never
    announce new entries. Every ``interval`` this compares each open log's head
    with the last one seen and, when it moved, wakes the log's watchers (the
    replication sessions), which announce the new head to their peers.
    """
    import trio

    seen: dict[bytes, tuple[int, int, int]] = {}
    while True:
        for lg in list(store._logs.values()):
            now = (lg.fork, lg.length, lg.contiguous_length)
            if seen.get(lg.key) != now:  # also on first sight: it may have moved since it was opened
                seen[lg.key] = now
                lg._notify()  # a spurious wake-up is harmless: sessions announce only what is new
        await trio.sleep(interval)


def run_server(main: Callable[[], Awaitable[None]], host: str, port: int) -> None:
    """``trio.run(main)``, turning a failure to bind ``host:port`` into a one-line usage error."""
    import trio

    try:
        trio.run(main)
    except Exception as exc:
        problem = _bind_problem(exc, host, port)
        if problem is None:
            raise
        raise problem from None


def _bind_problem(exc: BaseException, host: str, port: int) -> UsageProblem | None:
    exc = single(exc)
    if isinstance(exc, OSError):
        why = exc.strerror or str(exc)
        return UsageProblem(f"cannot serve on {host}:{port}: {why} (choose another --port or --host)")
    return None


@cli.command()
@click.argument("store")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=7400, show_default=True, type=PORT, help="TCP port (0: any free port).")
@click.option("--hypercore", is_flag=True, help="Speak Hypercore's wire protocol (JS Hypercore peers).")
def serve(store: str, host: str, port: int, hypercore: bool) -> None:
    """Serve every log of STORE to peers over TCP (Noise-encrypted), live, until Ctrl-C.

    The store is opened read-only, so this runs beside the app that writes it:
    new commits of that app reach connected peers within a fraction of a second.
    With --hypercore the first line printed is JSON: {"port": P, ...}.
    """
    import logging

    import trio

    if hypercore:
        from ._hypercore import serve_hypercore_command

        return serve_hypercore_command(store, host, port)

    from corelog.replication import serve_tcp

    # one line on stderr per connection closed for a peer's fault (the h11 rule: only that one)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="corelog serve: %(message)s")
    with open_store(store) as s:
        own_process()

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(serve_tcp, s, host, port)
                nursery.start_soon(follow_writer, s)
                click.echo(f"serving {len(s.keys())} log(s) from {store} on {host}:{bound}")
                sys.stdout.flush()

        run_server(main, host, port)


def _parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise UsageProblem(f"ADDRESS is HOST:PORT, got {address!r}")
    if not 0 < int(port) <= 65535:
        raise UsageProblem(f"port {port} in {address!r} is not a TCP port (1-65535)")
    return host, int(port)


def _remove_new_store(path: Path, existed: bool, created_dir: bool) -> None:
    """Remove a store this command created when it ended up holding nothing."""
    if existed:
        return
    if created_dir:
        shutil.rmtree(path, ignore_errors=True)
    else:
        for name in ("data.mdb", "lock.mdb", "corelog.lock"):
            (path / name).unlink(missing_ok=True)


@cli.command()
@click.argument("store")
@click.argument("key")
@click.argument("address")
@click.option("--live", is_flag=True, help="Keep following new entries until interrupted.")
@click.option("--hypercore", is_flag=True, help="Speak Hypercore's wire protocol (a JS Hypercore peer).")
@click.option(
    "--timeout", default=30.0, show_default=True, help="Seconds of silence (or no progress) before giving up."
)
def sync(store: str, key: str, address: str, live: bool, hypercore: bool, timeout: float) -> None:
    """Replicate the log with KEY (hex) from a peer at HOST:PORT into STORE.

    Only that log is offered to the peer (never the other logs of STORE).
    STORE is created if needed; a sync that fails before anything was received
    removes the store it created. With --hypercore the last line printed is
    JSON: {"ok", "length", "fork", "treeHash", ...}. Exit status 0: the log
    holds everything the peer has; 1: a conflict (the writer equivocated), the
    peer does not hold or share the log, the sync timed out, was cut or is
    incomplete, or the peer sent bad data; 130: interrupted.
    """
    import trio

    from corelog.replication import connect_tcp

    try:
        raw_key = bytes.fromhex(key)
        if len(raw_key) != 32:
            raise ValueError
    except ValueError:
        raise UsageProblem(f"a log key is 64 hex digits, got {key!r}") from None
    host, port = _parse_address(address)
    path = Path(store)
    if path.exists() and not path.is_dir():
        raise UsageProblem(f"{store} is a file, not a corelog store directory")
    if hypercore:
        from ._hypercore import sync_hypercore_command

        return sync_hypercore_command(store, raw_key, host, port, live, timeout)
    existed, created_dir = (path / "data.mdb").exists(), not path.exists()
    kept = False
    problems: list[str] = []
    try:
        with Store(path, sync=True) as s:
            lg = s.get(key=raw_key)
            own_process()
            interrupted = False
            session = None
            try:
                session = trio.run(
                    lambda: connect_tcp(
                        [lg],  # this log only: the other logs of STORE are never offered
                        host,
                        port,
                        live=live,
                        handshake_timeout=timeout,
                        idle_timeout=timeout,
                        progress_timeout=timeout,
                    )
                )
            except BaseException as exc:
                leaf = single(exc)
                if isinstance(leaf, KeyboardInterrupt) and live:
                    interrupted = True  # the usual end of a live sync: say where it got to, exit 130
                elif isinstance(leaf, OSError):
                    raise UsageProblem(f"cannot connect to {address}: {leaf.strerror or leaf}") from None
                elif isinstance(leaf, CorelogError):
                    problems.append(f"sync failed: {type(leaf).__name__}: {leaf}")
                else:
                    raise
            finally:
                kept = lg.length > 0 or s.keys() != [raw_key]
            if session is not None and lg in session.unanswered:
                problems.append(f"the peer at {address} does not hold this log (or does not share it)")
            if lg.conflict is not None:
                c = lg.conflict
                problems.append(
                    f"CONFLICT: two valid heads at fork {c['fork']}, length {c['length']}: the writer's key "
                    "was used twice (equivocation); the log is marked and takes no more data"
                )
            audit_ok = lg.audit().ok
            if not audit_ok:
                problems.append("audit FAILED: run `corelog audit` for details")
            click.echo(
                f"{short(raw_key)}: {lg.contiguous_length} entries, fork {lg.fork}, "
                f"audit {'ok' if audit_ok else 'FAILED'}" + (", CONFLICT" if lg.conflict is not None else "")
            )
            if interrupted:
                raise KeyboardInterrupt
        for problem in problems:
            err_console.print(f"[bold red]error:[/] {escape(problem)}", soft_wrap=True)  # one line each
        if problems:
            raise SystemExit(PROBLEMS)
    except BaseException:
        if not kept:
            _remove_new_store(path, existed, created_dir)
        raise
