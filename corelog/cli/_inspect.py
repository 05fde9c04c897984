"""Reading commands: ls, info, key, log, audit (with --replay), export."""

from __future__ import annotations

import csv
import functools
import importlib
import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from corelog import Log
from corelog.errors import CorelogError
from corelog.machine.errors import DefinitionError, NotAMachineLog

from ._app import cli
from ._common import (
    PROBLEMS,
    UsageProblem,
    conflict_line,
    console,
    diff,
    entries,
    entry_dict,
    err_console,
    find_log,
    machine_header,
    open_store,
    short,
    size,
    value,
    when,
)


@cli.command("ls")
@click.argument("store")
def ls_cmd(store: str) -> None:
    """List the logs in STORE.

    "held" is how many entries from 0 this store holds (contiguous), "signed" the
    length of the newest signed head it knows; a replica still syncing holds fewer.
    A log marked conflicted (its writer signed two histories) shows CONFLICT in
    its fork column and one line under the table naming the log and fork.
    """
    with open_store(store) as s:
        table = Table(title=f"logs in {store}")
        for col in ("name", "key", "held", "signed", "fork", "writable", "size", "machine"):
            table.add_column(col, justify="right" if col in ("held", "signed", "fork", "size") else "left")
        conflicted: list[Log] = []
        for info in s.list():
            lg = s.get(key=info.key, create=False)
            header = machine_header(lg)
            if info.conflict:
                conflicted.append(lg)
            held = str(info.contiguous_length)
            table.add_row(
                info.name or "-",
                short(info.key),
                held if info.contiguous_length == info.length else f"[yellow]{held}[/]",
                str(info.length),
                f"[bold red]{info.fork} CONFLICT[/]" if info.conflict else str(info.fork),
                "yes" if info.writable else "replica",
                size(info.byte_length),
                (header or {}).get("id") or ("yes" if header else "-"),
            )
        console.print(table)
        for lg in conflicted:
            console.print(conflict_line(lg), soft_wrap=True)


@cli.command()
@click.argument("store")
@click.argument("log")
def info(store: str, log: str) -> None:
    """Key, discovery key, signed head, held entries and machine of one LOG."""
    with open_store(store) as s:
        lg = find_log(s, log)
        h = lg.head()
        held = lg.contiguous_length
        missing = (
            "" if held == h.length else f" (incomplete: {h.length - held} signed entries not held; sync)"
        )
        rows = [
            ("name", lg.name or "-"),
            ("key", lg.key.hex()),
            ("discovery key", lg.discovery_key.hex()),
            ("writable", "yes" if lg.owned else "no (replica)"),
            ("fork", str(h.fork)),
            ("signed length", str(h.length)),
            ("held", f"{held}{missing}"),
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
        for k, v in rows:  # one unwrapped line each, so keys and hashes can be copied and grepped
            console.print(f"[bold]{k + ':':<16}[/] {escape(v)}", soft_wrap=True)


@cli.command()
@click.argument("store")
@click.argument("log")
def key(store: str, log: str) -> None:
    """Print LOG's key in hex (for scripts: `corelog sync DIR $(corelog key STORE LOG) HOST:PORT`)."""
    with open_store(store) as s:
        click.echo(find_log(s, log).key.hex())


DEFAULT_LAST = 20


@cli.command("log")
@click.argument("store")
@click.argument("log")
@click.option("--from", "start", type=click.IntRange(min=0), default=None, help="First entry index.")
@click.option("--to", "stop", type=click.IntRange(min=0), default=None, help="Stop before this index.")
@click.option(
    "-n", "--last", type=click.IntRange(min=1), default=None, help=f"The last N entries [{DEFAULT_LAST}]."
)
@click.option("--all", "show_all", is_flag=True, help="Every entry (streamed).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines (one entry each) instead of rows.")
def log_cmd(
    store: str, log: str, start: int | None, stop: int | None, last: int | None, show_all: bool, as_json: bool
) -> None:
    """Entries of a machine LOG: time (UTC), event, state, and what changed in the context.

    Without --from/--to/--all it shows the last 20 entries (a hint on stderr
    says so). Rows are printed as they are read, so any range starts at once
    and `corelog log ... --all | head` returns immediately. Every entry is
    checked against its Merkle leaf; a damaged one ends the listing (exit 1).
    LOG is a name, a 64-hex-digit key or a unique key prefix (8+ hex digits).
    """
    if (
        sum(x is not None and x is not False for x in (last, show_all or None))
        + (start is not None or stop is not None)
        > 1
    ):
        raise UsageProblem("give one of --from/--to, -n/--last or --all")
    with open_store(store) as s:
        lg = find_log(s, log)
        if not machine_header(lg):
            raise UsageProblem(f"log {log!r} is not a machine log (its first entry is not a machine header)")
        length = lg.contiguous_length
        if show_all:
            start, stop = 0, length
        elif start is None and stop is None:
            start, stop = max(0, length - (last or DEFAULT_LAST)), length
            if start > 0 and last is None:
                err_console.print(
                    f"[dim]showing the last {DEFAULT_LAST} of {length} entries; --all for every one, "
                    "--from/--to for a range, -n N for the last N[/]",
                    soft_wrap=True,
                )
        else:
            start = start or 0
            stop = length if stop is None else min(stop, length)
        if start >= length or stop <= start:
            raise UsageProblem(
                f"nothing in --from {start} --to {stop}: log {log!r} has entries 0..{length - 1}"
            )
        if as_json:
            for e in entries(lg, start, stop):
                sys.stdout.write(json.dumps(entry_dict(e), ensure_ascii=False) + "\n")
            return
        width = len(str(stop - 1))
        click.echo(f"{log}: entries {start}..{stop - 1} of {length}")
        click.echo(f"{'#':>{width}}  {'time (UTC)':<23}  {'event':<20}  {'state':<14}  context change")
        prev = next(entries(lg, start - 1, start)).context if start > 0 else None
        for e in entries(lg, start, stop):
            ev = e.event.type if e.event else "(header)" if e.index == 0 else "(migration)"
            if e.event and e.event.data is not None:
                ev += " " + json.dumps(e.event.data, ensure_ascii=False)
            click.echo(
                f"{e.index:>{width}}  {when(e.time):<23}  {ev:<20}  {value(e.state):<14}  {diff(prev, e.context)}"
            )
            prev = e.context


REPLAY_HELP = """Also re-run every recorded event through your implementation and compare
with the recorded snapshots. MODULE:ATTR is imported (the current directory is on
the path) and ATTR is one of: a dict {"actions": {...}, "guards": {...}} (the
usual case: a Statechart is built for each stored definition); a
machine.Statechart (used as is); or a callable taking the stored definition dict
and returning a Statechart. Each header entry (entry 0 and every migration)
resets the chart; entry 0 must equal the chart's initial snapshot. Without LOG,
every machine log is replayed with the same ATTR: for a store of several
machines, use a callable that picks the implementation by definition["id"]."""


def _brief(problems: list[str]) -> str:
    """The first problem's first line, shortened for a table cell."""
    if not problems:
        return "-"
    first = problems[0].splitlines()[0]
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return (first[:60] + "…" if len(first) > 60 else first) + more


def _result(problems: list[str], conflict: dict | None) -> str:
    """The result cell of an audit row: damage wins over a conflict mark."""
    if problems:
        return "[red]BAD[/]" + (" [red]CONFLICT[/]" if conflict is not None else "")
    return "[red]CONFLICT[/]" if conflict is not None else "[green]ok[/]"


def _load_replay(spec: str) -> Callable[[dict], Any]:
    """MODULE:ATTR -> a function building a Statechart for a stored definition."""
    from corelog.machine import Statechart

    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise UsageProblem(f"--replay takes MODULE:ATTR (e.g. myapp.machines:IMPL), got {spec!r}")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UsageProblem(f"cannot load {spec}: {exc}") from None
    if isinstance(obj, Statechart):
        return lambda definition: obj
    if isinstance(obj, dict):
        unknown = set(obj) - {"actions", "guards"}
        if unknown:
            raise UsageProblem(
                f"{spec} is a dict with unknown keys {sorted(unknown)}; use 'actions' and 'guards'"
            )
        return lambda definition: Statechart(definition, obj.get("actions"), obj.get("guards"))
    if callable(obj):

        def build(definition: dict) -> Statechart:
            chart = obj(definition)
            if not isinstance(chart, Statechart):
                raise UsageProblem(
                    f"{spec}(definition) returned {type(chart).__name__}, not a machine.Statechart"
                )
            return chart

        return build
    raise UsageProblem(
        f"{spec} is a {type(obj).__name__}: give a dict with actions/guards, a Statechart, or a callable(definition)"
    )


def _replay(
    lg: Log, make_chart: Callable[[dict], Any], progress: Callable[[int], None]
) -> tuple[int, str] | None:
    """Re-run every recorded event; (index, description) of the first entry that differs, or None."""
    from corelog.machine import decode_entry

    chart: Any = None
    snap: Any = None

    def differs(index: int, what: str, recorded, replayed) -> tuple[int, str]:
        return index, (
            f"entry {index} ({what}): recorded {value(recorded.value)} {json.dumps(dict(recorded.context))}, "
            f"replayed {value(replayed.value)} {json.dumps(dict(replayed.context))}"
            + (f" (done {recorded.done} vs {replayed.done})" if recorded.done != replayed.done else "")
        )

    for index, data in enumerate(lg.iter(0, lg.contiguous_length)):
        progress(index)
        try:
            e = decode_entry(index, data)
        except NotAMachineLog as exc:
            return index, f"entry {index}: {exc}"
        if e.kind == "header":
            assert e.definition is not None  # a header entry always carries its definition
            try:
                chart = make_chart(e.definition)
            except DefinitionError as exc:
                why = "; ".join(f"{path or '<root>'}: {msg}" for path, msg in exc.problems)
                return index, f"entry {index} (header): the implementation does not fit the definition: {why}"
            except CorelogError as exc:
                return index, f"entry {index} (header): the implementation does not fit the definition: {exc}"
            if chart.hash != e.definition_hash:
                return index, (
                    f"entry {index} (header): the stored definition hash {e.definition_hash} is not the "
                    f"implementation's {chart.hash}"
                )
            recorded = chart.snapshot_from(e.state, e.context, None, e.extras)
            if index == 0:
                try:
                    start = chart.initial(e.time)
                except Exception as exc:
                    return index, f"entry 0 (header): the initial snapshot raised {type(exc).__name__}: {exc}"
                if start.value != e.state or dict(start.context) != e.context:
                    return differs(index, "initial snapshot", recorded, start)
            snap = recorded
            continue
        event = e.event
        if chart is None or event is None:
            return index, f"entry {index}: an event entry before any header"
        try:
            snap_next = chart.transition(snap, event)
        except Exception as exc:
            return index, f"entry {index} ({event.type}): replay raised {type(exc).__name__}: {exc}"
        recorded = e.snapshot
        if snap_next.value != e.state or dict(snap_next.context) != e.context or snap_next.done != e.done:
            return differs(index, event.type, recorded, snap_next)
        snap = snap_next
    return None


def _advance(bar: Progress, task: TaskID, done: int, total: int) -> None:
    bar.update(task, completed=done, total=total)


def _advance_to(bar: Progress, task: TaskID, index: int) -> None:
    bar.update(task, completed=index + 1)


@cli.command()
@click.argument("store")
@click.argument("log", required=False)
@click.option("--replay", metavar="MODULE:ATTR", help=REPLAY_HELP)
def audit(store: str, log: str | None, replay: str | None) -> None:
    """Verify every block, tree node and signed head of LOG (or of every log in STORE).

    The store is opened read-only, so an audit can run while a writer is working.
    A log marked conflicted (its writer signed two histories) is a problem too.
    Exit status: 0 when clean, 1 when problems are found, 2 on usage errors.
    """
    make_chart = _load_replay(replay) if replay else None
    with open_store(store) as s:
        logs = [find_log(s, log)] if log else list(s)
        if make_chart is not None and log and not machine_header(logs[0]):
            raise UsageProblem(
                f"log {log!r} is not a machine log, so --replay has nothing to re-run; audit it without --replay"
            )
        results = []
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
            transient=True,
        ) as bar:
            for lg in logs:
                label = lg.name or short(lg.key)
                task = bar.add_task(f"audit {label}", total=lg.contiguous_length)
                report = lg.audit(progress=functools.partial(_advance, bar, task))
                problems = [str(p) for p in report.problems]
                first_bad = report.first_bad
                replayed = "-"
                if make_chart is not None:
                    if not machine_header(lg):
                        replayed = "not a machine log"
                    elif not report.ok:
                        replayed = "skipped (log damaged)"
                    else:
                        t2 = bar.add_task(f"replay {label}", total=lg.contiguous_length)
                        found = _replay(lg, make_chart, functools.partial(_advance_to, bar, t2))
                        replayed = "ok" if found is None else "DIFFERS"
                        if found:
                            first_bad, message = found
                            problems.append(f"replay: {message}")
                results.append((label, lg, report, problems, first_bad, replayed))
        table = Table(title=f"audit of {store}")
        for col in ("log", "held", "signed", "fork", "result", "first bad", "replay"):
            table.add_column(col, no_wrap=col not in ("log", "replay"), overflow="fold")
        table.add_column("details", overflow="fold", ratio=1)
        for label, lg, report, problems, first_bad, replayed in results:
            table.add_row(
                label,
                str(lg.contiguous_length),
                str(report.length),
                str(lg.fork),
                _result(problems, lg.conflict),
                "-" if first_bad is None else str(first_bad),
                replayed,
                _brief(problems)
                if problems or lg.conflict is None
                else f"conflict in fork {lg.conflict['fork']}",
            )
        console.print(table)
        bad = [r for r in results if r[3]]
        for label, lg, _report, problems, first_bad, _ in bad:
            console.print(
                f"log {label} ({lg.key.hex()}): first bad index {first_bad}: {problems[0]}", soft_wrap=True
            )
        # a conflict mark is evidence that the writer signed two histories, even when every block is sound
        conflicted = [r[1] for r in results if r[1].conflict is not None]
        for lg in conflicted:
            console.print(conflict_line(lg), soft_wrap=True)
        if bad or conflicted:
            raise SystemExit(PROBLEMS)
        summary = f"{len(results)} log(s) clean"
        if make_chart is not None:
            skipped = sum(r[5] == "not a machine log" for r in results)
            summary += f"; {len(results) - skipped} replayed"
            if skipped:
                summary += f", {skipped} not a machine log (not replayed)"
        partial = [r[0] for r in results if r[1].contiguous_length < r[2].length]
        if partial:
            summary += f"; {len(partial)} incomplete (held < signed: {', '.join(partial)}; sync again)"
        console.print(summary, soft_wrap=True)


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
        # a file is written beside its target and renamed into place only when complete, so an
        # export stopped by a damaged entry (or an error, or Ctrl-C) leaves no partial file behind
        partial = f"{output}.partial" if output else None
        if partial:
            try:
                out = open(partial, "w", newline="")
            except OSError as exc:
                raise UsageProblem(f"cannot write {output}: {exc.strerror or exc}") from None
        else:
            out = io.TextIOWrapper(sys.stdout.buffer, newline="")
        complete = False
        try:
            if fmt == "jsonl":
                for e in entries(lg, 0, None):
                    out.write(json.dumps(entry_dict(e), ensure_ascii=False) + "\n")
            else:
                w = csv.writer(out)
                w.writerow(["index", "kind", "time", "event", "data", "state", "context"])
                for e in entries(lg, 0, None):
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
            complete = True
        finally:
            out.flush()
            if partial and output:
                out.close()
                if complete:
                    os.replace(partial, output)
                else:
                    os.unlink(partial)
            else:
                out.detach()
