"""``corelog diagram``: the stored definition as Mermaid."""

from __future__ import annotations

import click

from corelog.machine import to_mermaid as mermaid

from ._app import cli
from ._common import UsageProblem, find_log, machine_header, open_store


@cli.command()
@click.argument("store")
@click.argument("log")
def diagram(store: str, log: str) -> None:
    """A Mermaid stateDiagram-v2 of the stored definition, the current state marked."""
    from corelog.machine import decode_entry

    with open_store(store) as s:
        lg = find_log(s, log)
        if not machine_header(lg):
            raise UsageProblem(f"log {log!r} is not a machine log")
        last = decode_entry(lg.contiguous_length - 1, lg.get(lg.contiguous_length - 1))
        header = last if last.kind == "header" else decode_entry(last.header, lg.get(last.header))
        click.echo(mermaid(header.definition or {}, last.state))
