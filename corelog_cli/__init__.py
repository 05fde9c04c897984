"""The ``corelog`` command-line tool: inspect, audit, export and sync corelog stores.

It composes the three packages (``corelog``, ``machine``, ``replication``), which
is why it lives in its own package: the library layers stay independent.
Stores are opened read-only for every reading command, so they work while a
writer is running. User errors print one clear line and exit non-zero, never
a traceback (``--debug`` shows it).

Exit codes: 0 success (audit: clean), 1 problems found or data corrupt,
2 usage error (bad arguments, missing store, unknown log, bad key).
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import lmdb
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from corelog import Log, Store
from corelog.errors import CorelogError, LogNotFound, NotAMachineLog, StoreLocked, StoreNotFound

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

USAGE, PROBLEMS = 2, 1


class UsageProblem(Exception):
    """A user error: printed as one line, exit code 2."""


def _fail(message: str, code: int = USAGE) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise SystemExit(code)


def open_store(path: str) -> Store:
    p = Path(path)
    if not (p / "data.mdb").exists():
        raise UsageProblem(f"no corelog store at {path} (a store is a directory holding data.mdb)")
    return Store(p, readonly=True)


def find_log(store: Store, spec: str) -> Log:
    """A log by name, full hex key, or unique hex-key prefix (>= 4 characters)."""
    if spec in store:
        return store.get(spec, create=False)
    lowered = spec.lower()
    if all(c in "0123456789abcdef" for c in lowered) and len(lowered) >= 4:
        if len(lowered) == 64:
            try:
                return store.get(key=bytes.fromhex(lowered), create=False)
            except LogNotFound:
                raise UsageProblem(f"no log with key {lowered} in {store.path}") from None
        matches = [k for k in store.keys() if k.hex().startswith(lowered)]
        if len(matches) == 1:
            return store.get(key=matches[0], create=False)
        if len(matches) > 1:
            raise UsageProblem(
                f"key prefix {spec!r} is ambiguous ({len(matches)} logs); give more characters"
            )
    raise UsageProblem(
        f"no log named {spec!r} in {store.path} (give a name, a 64-hex-digit key or a unique key prefix; "
        "`corelog ls STORE` lists them)"
    )


def machine_header(log: Log) -> dict | None:
    """The machine header of a log (entry 0), or None if it is not a machine log."""
    from machine import decode_entry

    if log.contiguous_length == 0:
        return None
    try:
        entry = decode_entry(0, log.get(0))
    except NotAMachineLog:
        return None
    return {
        "id": (entry.definition or {}).get("id"),
        "definition_hash": entry.definition_hash,
        "definition": entry.definition,
    }


def _short(b: bytes) -> str:
    return b.hex()[:16] + "…"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageProblem as exc:
            _fail(str(exc), USAGE)
        except (StoreNotFound, LogNotFound) as exc:
            _fail(str(exc), USAGE)
        except StoreLocked as exc:
            _fail(str(exc), USAGE)
        except (CorelogError, lmdb.Error) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            kind = "the store is damaged" if isinstance(exc, lmdb.Error) else type(exc).__name__
            _fail(f"{kind}: {exc}", PROBLEMS)
        except (click.exceptions.Exit, click.ClickException, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            _fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", PROBLEMS)


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="corelog")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Inspect, audit, export and replicate corelog stores."""
    ctx.obj = {"debug": debug}


@cli.command("ls")
@click.argument("store")
def ls_cmd(store: str) -> None:
    """List the logs in STORE."""
    with open_store(store) as s:
        table = Table(title=f"logs in {store}")
        for col in ("name", "key", "length", "fork", "writable", "size", "machine"):
            table.add_column(col, justify="right" if col in ("length", "fork", "size") else "left")
        for info in s.list():
            header = machine_header(s.get(key=info.key, create=False))
            table.add_row(
                info.name or "-",
                _short(info.key),
                str(info.length),
                str(info.fork),
                "yes" if info.writable else "replica",
                _size(info.byte_length),
                (header or {}).get("id") or ("yes" if header else "-"),
            )
        console.print(table)


@cli.command()
@click.argument("store")
@click.argument("log")
def info(store: str, log: str) -> None:
    """Key, discovery key, signed head and machine of one LOG."""
    with open_store(store) as s:
        lg = find_log(s, log)
        h = lg.head()
        table = Table(show_header=False, title=f"log {lg.name or _short(lg.key)}")
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        rows = [
            ("name", lg.name or "-"),
            ("key", lg.key.hex()),
            ("discovery key", lg.discovery_key.hex()),
            ("writable", "yes" if lg.owned else "no (replica)"),
            ("fork", str(h.fork)),
            ("length", str(h.length)),
            ("contiguous", str(lg.contiguous_length)),
            ("byte length", str(h.byte_length)),
            ("tree hash", h.tree_hash.hex()),
            ("signature", h.encoded_signature.hex() if h.signature else "-"),
            ("conflict", json.dumps(lg.conflict) if lg.conflict else "no"),
        ]
        header = machine_header(lg)
        if header:
            rows += [("machine id", str(header["id"])), ("definition hash", str(header["definition_hash"]))]
        else:
            rows.append(("machine", "no (not a machine log)"))
        for k, v in rows:
            table.add_row(k, v)
        console.print(table)


def _entries(lg: Log, start: int, stop: int | None):
    from machine import decode_entry

    stop = lg.contiguous_length if stop is None else min(stop, lg.contiguous_length)
    for i, data in enumerate(lg.iter(start, stop), start):
        yield decode_entry(i, data)


def _diff(before: dict | None, after: dict) -> str:
    if before is None:
        return json.dumps(after, ensure_ascii=False)
    parts = []
    for k in sorted(set(before) | set(after)):
        if k not in after:
            parts.append(f"-{k}")
        elif before.get(k, object()) != after[k]:
            parts.append(f"{k}={json.dumps(after[k], ensure_ascii=False)}")
    return ", ".join(parts) or "(unchanged)"


def _entry_dict(e) -> dict:
    d = e.to_dict()
    if e.kind == "header":
        d["definition_hash"] = e.definition_hash
    return d


@cli.command()
@click.argument("store")
@click.argument("log")
def key(store: str, log: str) -> None:
    """Print LOG's key in hex (for scripts: `corelog sync DIR $(corelog key STORE LOG) HOST:PORT`)."""
    with open_store(store) as s:
        click.echo(find_log(s, log).key.hex())


@cli.command("log")
@click.argument("store")
@click.argument("log")
@click.option("--from", "start", type=int, default=0, help="First entry index.")
@click.option("--to", "stop", type=int, default=None, help="Stop before this index.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
def log_cmd(store: str, log: str, start: int, stop: int | None, as_json: bool) -> None:
    """Entries of a machine LOG: event, state, and what changed in the context."""
    with open_store(store) as s:
        lg = find_log(s, log)
        if not machine_header(lg):
            raise UsageProblem(f"log {log!r} is not a machine log (its first entry is not a machine header)")
        if as_json:
            for e in _entries(lg, max(0, start), stop):
                sys.stdout.write(json.dumps(_entry_dict(e), ensure_ascii=False) + "\n")
            return
        table = Table(title=f"{log}: entries {start}..{(stop or lg.contiguous_length) - 1}")
        for col in ("#", "time", "event", "data", "state", "context change"):
            table.add_column(col)
        prev = None
        if start > 0:
            prev = next(_entries(lg, start - 1, start)).context
        for e in _entries(lg, max(0, start), stop):
            from datetime import UTC, datetime

            when = datetime.fromtimestamp(e.time / 1000, UTC).strftime("%H:%M:%S.%f")[:-3] if e.time else "-"
            ev = e.event.type if e.event else "(header)"
            data = json.dumps(e.event.data) if e.event and e.event.data is not None else ""
            state = e.state if isinstance(e.state, str) else json.dumps(e.state)
            table.add_row(str(e.index), when, ev, data, state, _diff(prev, e.context))
            prev = e.context
        console.print(table)


def _load_replay(spec: str) -> Callable[[dict], Any]:
    """MODULE:ATTR -> a function building a Statechart for a stored definition."""
    from machine import Statechart

    if ":" not in spec:
        raise UsageProblem(f"--replay takes MODULE:ATTR (e.g. myapp.machines:IMPL), got {spec!r}")
    mod_name, attr = spec.split(":", 1)
    sys.path.insert(0, str(Path.cwd()))
    try:
        obj = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageProblem(f"cannot load {spec}: {exc}") from None
    if isinstance(obj, Statechart):
        return lambda definition: obj
    if isinstance(obj, dict) and ("actions" in obj or "guards" in obj):
        return lambda definition: Statechart(definition, obj.get("actions"), obj.get("guards"))
    if callable(obj):
        return lambda definition: obj(definition)
    raise UsageProblem(f"{spec} must be a Statechart, a dict with actions/guards, or a callable(definition)")


def _replay(lg: Log, make_chart: Callable[[dict], Any], progress: Callable[[int], None]) -> str | None:
    """Re-run every recorded event; the first entry whose recorded snapshot differs, described."""
    chart = snap = None
    for e in _entries(lg, 0, None):
        progress(e.index)
        if e.kind == "header":
            chart = make_chart(e.definition)
            if chart.hash != e.definition_hash:
                return f"entry {e.index}: the implementation's definition hash differs from the recorded one"
            snap = chart.snapshot_from(e.state, e.context)
            continue
        try:
            snap = chart.transition(snap, e.event)
        except Exception as exc:
            return f"entry {e.index} ({e.event.type}): replay raised {type(exc).__name__}: {exc}"
        if snap.value != e.state or dict(snap.context) != e.context:
            return (
                f"entry {e.index} ({e.event.type}): recorded {json.dumps(e.state)} {json.dumps(e.context)}, "
                f"replayed {json.dumps(snap.value)} {json.dumps(dict(snap.context))}"
            )
    return None


@cli.command()
@click.argument("store")
@click.argument("log", required=False)
@click.option(
    "--replay",
    metavar="MODULE:ATTR",
    help="Also re-run every event through this implementation (a Statechart, a dict "
    "{'actions': ..., 'guards': ...}, or a callable(definition) -> Statechart).",
)
def audit(store: str, log: str | None, replay: str | None) -> None:
    """Verify every node and signed head of LOG (or of every log in STORE).

    Exit 0 when clean, 1 when problems are found, 2 on usage errors.
    """
    make_chart = _load_replay(replay) if replay else None
    with open_store(store) as s:
        logs = [find_log(s, log)] if log else list(s)
        results = []
        show = console.is_terminal
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
            console=console,
            disable=not show,
            transient=True,
        ) as bar:
            for lg in logs:
                label = lg.name or _short(lg.key)
                task = bar.add_task(f"audit {label}", total=lg.contiguous_length)
                report = lg.audit(progress=lambda done, total, t=task: bar.update(t, completed=done))
                problems = list(report.problems)
                first_bad = report.first_bad
                if make_chart is not None and report.ok and machine_header(lg):
                    t2 = bar.add_task(f"replay {label}", total=lg.contiguous_length)
                    found = _replay(lg, make_chart, lambda i, t=t2: bar.update(t, completed=i + 1))
                    if found:
                        problems.append(f"replay: {found}")
                        first_bad = int(found.split()[1].rstrip(":")) if first_bad is None else first_bad
                results.append((label, lg, report, problems, first_bad))
        table = Table(title=f"audit of {store}")
        for col in ("log", "length", "fork", "result", "first bad index", "details"):
            table.add_column(col)
        for label, lg, report, problems, first_bad in results:
            table.add_row(
                label,
                str(report.length),
                str(lg.fork),
                "[green]ok[/]" if not problems else "[red]BAD[/]",
                "-" if first_bad is None else str(first_bad),
                "; ".join(problems)[:300] or "-",
            )
        console.print(table)
        bad = [r for r in results if r[3]]
        for label, lg, _report, problems, first_bad in bad:
            console.print(f"log {label} ({lg.key.hex()}): first bad index {first_bad}: {problems[0]}")
        if bad:
            raise SystemExit(PROBLEMS)
        console.print(f"{len(results)} log(s) clean")


@cli.command()
@click.argument("store")
@click.argument("log")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, writable=True), help="File (default: stdout)."
)
def export(store: str, log: str, fmt: str, output: str | None) -> None:
    """Export the entries of a machine LOG as JSON lines or CSV."""
    with open_store(store) as s:
        lg = find_log(s, log)
        if not machine_header(lg):
            raise UsageProblem(f"log {log!r} is not a machine log")
        out = open(output, "w", newline="") if output else io.TextIOWrapper(sys.stdout.buffer, newline="")
        try:
            if fmt == "jsonl":
                for e in _entries(lg, 0, None):
                    out.write(json.dumps(_entry_dict(e), ensure_ascii=False) + "\n")
            else:
                w = csv.writer(out)
                w.writerow(["index", "kind", "time", "event", "data", "state", "context"])
                for e in _entries(lg, 0, None):
                    w.writerow(
                        [
                            e.index,
                            e.kind,
                            e.time,
                            e.event.type if e.event else "",
                            json.dumps(e.event.data) if e.event and e.event.data is not None else "",
                            e.state if isinstance(e.state, str) else json.dumps(e.state),
                            json.dumps(e.context, ensure_ascii=False),
                        ]
                    )
        finally:
            out.flush()
            if output:
                out.close()
            else:
                out.detach()


def mermaid(definition: dict, current: Any = None) -> str:
    """A Mermaid ``stateDiagram-v2`` of a definition, the active states marked."""
    active: set[str] = set()

    def mark(value: Any, prefix: str = "") -> None:
        if isinstance(value, str):
            active.add(prefix + value)
        elif isinstance(value, dict):
            for k, v in value.items():
                active.add(prefix + k)
                mark(v, f"{prefix}{k}.")

    if current is not None:
        mark(current)
    lines = ["stateDiagram-v2"]

    def sid(path: str) -> str:
        return path.replace(".", "__").replace("-", "_") or "root"

    ids: dict[str, str] = {}

    def index_ids(node: dict, path: str) -> None:
        if node.get("id") and path:
            ids[node["id"]] = path
        for k, child in (node.get("states") or {}).items():
            index_ids(child, f"{path}.{k}" if path else k)

    index_ids(definition, "")

    def target_path(source: str, target: str) -> str:
        if target.startswith("#"):
            head, _, rest = target[1:].partition(".")
            base = ids.get(head, "" if head == definition.get("id") else head)
            return ".".join(p for p in (base, rest) if p)
        if target.startswith("."):
            return f"{source}{target}"
        parent = source.rpartition(".")[0]
        return f"{parent}.{target}" if parent else target

    def emit(node: dict, path: str, indent: str) -> None:
        children = node.get("states") or {}
        parallel = node.get("type") == "parallel"
        if node.get("initial") and not parallel:
            first = f"{path}.{node['initial']}" if path else node["initial"]
            lines.append(f"{indent}[*] --> {sid(first)}")
        for n, (key, child) in enumerate(children.items()):
            cpath = f"{path}.{key}" if path else key
            if child.get("states"):
                lines.append(f'{indent}state "{key}" as {sid(cpath)} {{')
                emit(child, cpath, indent + "  ")
                lines.append(f"{indent}}}")
            else:
                lines.append(f'{indent}state "{key}" as {sid(cpath)}')
            if child.get("type") == "final":
                lines.append(f"{indent}{sid(cpath)} --> [*]")
            if parallel and n < len(children) - 1:
                lines.append(f"{indent}--")
        for key, child in children.items():
            cpath = f"{path}.{key}" if path else key
            for ev, tr in (child.get("on") or {}).items():
                for cand in tr if isinstance(tr, list) else [tr]:
                    cand = {"target": cand} if isinstance(cand, str) else cand
                    guard = cand.get("guard")
                    gname = guard if isinstance(guard, str) else (guard or {}).get("type")
                    label = ev + (f" [{gname}]" if gname else "")
                    targets = cand.get("target")
                    for t in (targets if isinstance(targets, list) else [targets]) if targets else [None]:
                        dest = sid(target_path(cpath, t)) if t else sid(cpath)
                        lines.append(f"{indent}{sid(cpath)} --> {dest} : {label}")
            for cand in child.get("always") or []:
                cand = {"target": cand} if isinstance(cand, str) else cand
                if cand.get("target"):
                    lines.append(
                        f"{indent}{sid(cpath)} --> {sid(target_path(cpath, cand['target']))} : always"
                    )

    emit(definition, "", "  ")
    if active:
        lines.append("  classDef current fill:#ffd54f,stroke:#f57f17,stroke-width:2px")
        for path in sorted(active):
            lines.append(f"  class {sid(path)} current")
    return "\n".join(lines)


@cli.command()
@click.argument("store")
@click.argument("log")
def diagram(store: str, log: str) -> None:
    """A Mermaid stateDiagram-v2 of the stored definition, the current state marked."""
    from machine import decode_entry

    with open_store(store) as s:
        lg = find_log(s, log)
        if not machine_header(lg):
            raise UsageProblem(f"log {log!r} is not a machine log")
        last = decode_entry(lg.contiguous_length - 1, lg.get(lg.contiguous_length - 1))
        header = last if last.kind == "header" else decode_entry(last.header, lg.get(last.header))
        click.echo(mermaid(header.definition or {}, last.state))


@cli.command()
@click.argument("store")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=7400, show_default=True, type=int)
def serve(store: str, host: str, port: int) -> None:
    """Serve every log of STORE to peers over TCP (Noise-encrypted), live, until interrupted."""
    import trio

    from replication import serve_tcp

    with Store(Path(store), sync=True) as s:

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(serve_tcp, s, host, port)
                click.echo(f"serving {len(s.keys())} log(s) from {store} on {host}:{bound}")
                sys.stdout.flush()

        try:
            trio.run(main)
        except KeyboardInterrupt:
            pass


@cli.command()
@click.argument("store")
@click.argument("key")
@click.argument("address")
@click.option("--live", is_flag=True, help="Keep following new entries until interrupted.")
def sync(store: str, key: str, address: str, live: bool) -> None:
    """Replicate the log with KEY (hex) from a peer at HOST:PORT into STORE."""
    import trio

    from replication import connect_tcp

    try:
        raw_key = bytes.fromhex(key)
        if len(raw_key) != 32:
            raise ValueError
    except ValueError:
        raise UsageProblem(f"a log key is 64 hex digits, got {key!r}") from None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageProblem(f"ADDRESS is HOST:PORT, got {address!r}")
    with Store(Path(store), sync=True) as s:
        lg = s.get(key=raw_key)
        try:
            trio.run(lambda: connect_tcp(s, host, int(port), live=live))
        except OSError as exc:
            raise UsageProblem(f"cannot connect to {address}: {exc.strerror or exc}") from None
        except KeyboardInterrupt:
            pass
        click.echo(
            f"{_short(raw_key)}: {lg.contiguous_length} entries, fork {lg.fork}, "
            f"audit {'ok' if lg.audit().ok else 'FAILED'}"
        )


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="corelog")


__all__ = ["cli", "main", "mermaid"]
