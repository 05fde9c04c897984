"""Fleet commands: ``corelog fleet ls | history | listeners | dead-letters | replay``."""

from __future__ import annotations

import collections
import json
import sys

import click
from rich.markup import escape
from rich.table import Table

from corelog import Store
from corelog.errors import StoreLocked
from corelog.machine import _fleet_store as fs
from corelog.machine._fleet_records import list_machines

from ._app import cli
from ._common import UsageProblem, console, open_store, value, when
from ._inspect import log_cmd


@cli.group()
def fleet() -> None:
    """Machines of a fleet (corelog.machine.Fleet) in STORE: list, history, listeners, dead letters."""


@fleet.command("ls")
@click.argument("store")
@click.option("--kind", help="Only machines of this kind.")
@click.option("--state", help='Only machines in this state ("open", "order.paying").')
@click.option("--json", "as_json", is_flag=True, help="JSON lines (one machine each) instead of a table.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=200, show_default=True, help="Rows in the table."
)
def fleet_ls(store: str, kind: str | None, state: str | None, as_json: bool, limit: int) -> None:
    """List machines by kind and state (the table ends with a count per kind and state)."""
    with open_store(store) as s:
        rows = list_machines(s, kind, state)
    if as_json:
        for m in rows:
            row = {"id": m.id, "kind": m.kind, "state": m.state, "done": m.done, "length": m.length}
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    if not rows:
        console.print(f"no fleet machines in {escape(store)}" + (" matching" if kind or state else ""))
        return
    table = Table(
        title=f"machines in {store}" + (f" (first {limit} of {len(rows)})" if len(rows) > limit else "")
    )
    for col in ("id", "kind", "state", "done", "entries"):
        table.add_column(col, justify="right" if col == "entries" else "left", overflow="fold")
    for m in rows[:limit]:
        table.add_row(escape(m.id), m.kind, escape(value(m.state)), "yes" if m.done else "", str(m.length))
    console.print(table)
    counts = collections.Counter((m.kind, value(m.state)) for m in rows)
    summary = Table(title="count by kind and state")
    for col in ("kind", "state", "machines"):
        summary.add_column(col, justify="right" if col == "machines" else "left")
    for (k, st), n in sorted(counts.items()):
        summary.add_row(k, escape(st), str(n))
    console.print(summary)


@fleet.command("history")
@click.argument("store")
@click.argument("machine")
@click.option("-n", "--last", type=click.IntRange(min=1), default=None, help="Only the last N entries.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines (one entry each) instead of a table.")
@click.pass_context
def fleet_history(ctx: click.Context, store: str, machine: str, last: int | None, as_json: bool) -> None:
    """Every entry of one MACHINE (by id): time, event, state, context change (as `corelog log`)."""
    with open_store(store) as s:
        if (fs.LOG_PREFIX + machine) not in s:
            raise UsageProblem(
                f"no fleet machine {machine!r} in {store}; `corelog fleet ls {store}` lists them"
            )
    ctx.invoke(
        log_cmd,
        store=store,
        log=fs.LOG_PREFIX + machine,
        start=None,
        stop=None,
        last=last,
        show_all=last is None,
        as_json=as_json,
    )


@fleet.command("listeners")
@click.argument("store")
def fleet_listeners(store: str) -> None:
    """Each listener's durable cursor, how far behind the feed it is, and its dead letters."""
    with open_store(store) as s, s._env.begin() as txn:
        seq = fs.last_seq(txn, s._dbs)
        cursors = fs.cursors(txn, s._dbs)
        dead = collections.Counter(r["listener"] for r in fs.dead_letters(txn, s._dbs))
    table = Table(title=f"listeners in {store} (feed at {seq})")
    for col in ("listener", "cursor", "behind", "dead letters"):
        table.add_column(col, justify="left" if col == "listener" else "right")
    for name in sorted(set(cursors) | set(dead)):
        c = cursors.get(name, 0)
        table.add_row(escape(name), str(c), str(max(0, seq - c)), str(dead.get(name, 0)))
    console.print(table)


@fleet.command("dead-letters")
@click.argument("store")
@click.option("--listener", help="Only this listener's.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
def fleet_dead_letters(store: str, listener: str | None, as_json: bool) -> None:
    """Deliveries a listener gave up on (after its max attempts), with the last error."""
    with open_store(store) as s, s._env.begin() as txn:
        rows = fs.dead_letters(txn, s._dbs, listener)
    if as_json:
        for r in rows:
            sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
        return
    if not rows:
        console.print("no dead letters")
        return
    table = Table(title=f"dead letters in {store}")
    for col in ("listener", "seq", "machine", "entry", "attempts", "parked (UTC)", "requeued", "error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            escape(r["listener"]),
            str(r["seq"]),
            escape(r["id"]),
            str(r["index"]),
            str(r["attempts"]),
            when(r.get("time")),
            "yes" if r.get("requeued") else "",
            escape(r.get("error", "")),
        )
    console.print(table)


@fleet.command("replay")
@click.argument("store")
@click.option("--listener", help="Only this listener's dead letters.")
@click.option("--seq", type=int, help="Only the dead letter with this feed seq.")
def fleet_replay(store: str, listener: str | None, seq: int | None) -> None:
    """Requeue dead letters: the fleet delivers them again when it next starts.

    Needs the store closed by its fleet (one writer per store); in a running fleet call
    ``fleet.listeners.replay()`` instead.
    """
    with open_store(store):
        pass  # a clear error if there is no store
    try:
        s = Store(store)
    except StoreLocked as exc:
        raise UsageProblem(f"{exc}. A running fleet replays with fleet.listeners.replay()") from None
    with s, s._env.begin(write=True) as txn:
        n = fs.requeue(txn, s._dbs, listener, seq)
    if n == 0:
        raise UsageProblem("no dead letters matched; `corelog fleet dead-letters STORE` lists them")
    console.print(f"requeued {n} dead letter(s); the fleet delivers them when it next starts")
