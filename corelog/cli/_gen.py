"""``corelog gen``: a typed Python facade for a Mermaid diagram or a JSON definition."""

from __future__ import annotations

from pathlib import Path

import click

from ._app import cli
from ._common import UsageProblem


@cli.command()
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Module to write (default: stdout).",
)
@click.option("--class-name", default=None, help="Name of the base class (default: <MachineId>Base).")
def gen(source: Path, output: Path | None, class_name: str | None) -> None:
    """Write a typed base class for the machine in SOURCE (a stateDiagram-v2 .mmd or a JSON definition).

    The module holds the definition, Literal event and state names, TypedDict
    payloads, and an abstract base class whose methods are the actions, guards,
    delays and services: subclass it in your own module and fill them in.
    """
    from corelog.machine import DefinitionError
    from corelog.machine._gen import generate, load_definition

    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageProblem(f"cannot read {source}: {exc.strerror or exc}") from None
    try:
        module = generate(load_definition(text, str(source)), source.name, class_name)
    except DefinitionError as exc:
        raise UsageProblem(f"{source}: {exc}") from None
    if output is None:
        click.echo(module, nl=False)
        return
    if not output.parent.exists():
        raise UsageProblem(f"cannot write {output}: folder {output.parent} does not exist")
    output.write_text(module, encoding="utf-8")
