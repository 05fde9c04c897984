"""The ``corelog`` click group and its single error-handling wrapper.

Command modules (``_inspect``, ``_net``, ``_diagram``, ...) register their commands on
``cli`` with ``@cli.command()``; ``corelog/cli/__init__.py`` imports them all.

Every error ends the same way (:func:`_exit_for`): one line on stderr and an exit
code: 2 for usage errors (bad arguments, missing store, unknown log, busy port,
unreachable host), 1 for problems found or damaged data, 130 for Ctrl-C (quiet).
Errors raised inside trio nurseries arrive as exception groups; the one real
error inside is what gets reported. ``--debug`` re-raises for the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, NoReturn

import click
import lmdb

from corelog.errors import CorelogError, LogNotFound, StoreLocked, StoreNotFound

from ._common import PROBLEMS, USAGE, Corrupted, UsageProblem, fail, single

INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def _exit_for(exc: BaseException, debug: bool) -> NoReturn:
    """Turn ``exc`` into one line on stderr and an exit code (or re-raise it with --debug)."""
    exc = single(exc)
    if isinstance(exc, KeyboardInterrupt):
        raise SystemExit(INTERRUPTED) from None
    if isinstance(exc, BrokenPipeError):  # `corelog log ... | head`: the reader has what it wanted
        _quiet_stdout()
        raise SystemExit(0) from None
    if isinstance(exc, (click.exceptions.Exit, click.ClickException, SystemExit)):
        raise exc
    if debug:  # the traceback, then the same one line and exit code as without --debug
        known = (UsageProblem, StoreNotFound, LogNotFound, StoreLocked, Corrupted, CorelogError, lmdb.Error)
        if not isinstance(exc, known):
            raise exc
        traceback.print_exception(exc)
    if isinstance(exc, (UsageProblem, StoreNotFound, LogNotFound, StoreLocked)):
        fail(str(exc), USAGE)
    if isinstance(exc, Corrupted):
        fail(str(exc), PROBLEMS)
    if isinstance(exc, (CorelogError, lmdb.Error)):
        kind = "the store is damaged" if isinstance(exc, lmdb.Error) else type(exc).__name__
        fail(f"{kind}: {exc}", PROBLEMS)
    fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", PROBLEMS)
    raise AssertionError("unreachable")


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BaseException as exc:
            if isinstance(exc, (click.exceptions.Exit, click.ClickException, SystemExit)):
                raise
            _exit_for(exc, bool(ctx.obj and ctx.obj.get("debug")))


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="corelog")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Inspect, audit, export and replicate corelog stores.

    STORE is a store directory (it holds data.mdb); reading and serving
    commands open it read-only and never create one, so they work while the
    app that writes it runs. LOG is a log name, its 64-hex-digit key, or a
    unique prefix of the key (8+ hex digits).

    \b
    Exit status: 0 success (audit: clean); 1 problems found, damaged data,
    or an unexpected error; 2 usage error (bad arguments, not a store,
    unknown or ambiguous log, bad key, busy port, unreachable host);
    130 interrupted (Ctrl-C). --debug shows the traceback of any error.
    """
    ctx.obj = {"debug": debug}


def _quiet_stdout() -> None:
    """The reader of stdout left: point stdout at /dev/null so the final flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main() -> None:
    """Console-script entry point: click's own usage errors become one line too."""
    try:
        rv = cli.main(prog_name="corelog", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:  # bad option values, missing arguments, unknown commands
        ctx = getattr(exc, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        click.echo(f"error: {exc.format_message()}{where}", err=True)
        raise SystemExit(exc.exit_code) from None
    except click.exceptions.Abort:  # Ctrl-C or EOF at a prompt, inside click
        raise SystemExit(INTERRUPTED) from None
    except KeyboardInterrupt:  # Ctrl-C outside a command (e.g. while importing)
        raise SystemExit(INTERRUPTED) from None
    except BrokenPipeError:  # `corelog log ... | head`: the reader has what it wanted
        _quiet_stdout()
        raise SystemExit(0) from None
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
    raise SystemExit(rv if isinstance(rv, int) else 0)
