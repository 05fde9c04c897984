"""The ``corelog`` click group and its single error-handling wrapper.

Command modules (``_inspect``, ``_net``, ``_diagram``, ...) register their commands on
``cli`` with ``@cli.command()``; ``corelog/cli/__init__.py`` imports them all.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click
import lmdb

from corelog.errors import CorelogError, LogNotFound, StoreLocked, StoreNotFound

from ._common import PROBLEMS, USAGE, UsageProblem, fail


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageProblem as exc:
            fail(str(exc), USAGE)
        except (StoreNotFound, LogNotFound) as exc:
            fail(str(exc), USAGE)
        except StoreLocked as exc:
            fail(str(exc), USAGE)
        except (CorelogError, lmdb.Error) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            kind = "the store is damaged" if isinstance(exc, lmdb.Error) else type(exc).__name__
            fail(f"{kind}: {exc}", PROBLEMS)
        except (click.exceptions.Exit, click.ClickException, SystemExit, KeyboardInterrupt, BrokenPipeError):
            raise
        except Exception as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", PROBLEMS)


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="corelog")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Inspect, audit, export and replicate corelog stores.

    STORE is a store directory (it holds data.mdb); reading commands open it
    read-only, so they work while a writer runs. LOG is a log name, its
    64-hex-digit key, or a unique prefix of the key (8+ hex digits).

    \b
    Exit status: 0 success (audit: clean); 1 problems found, damaged data,
    or an unexpected error; 2 usage error (bad arguments, missing store,
    unknown or ambiguous log, bad key, store locked by a writer).
    """
    ctx.obj = {"debug": debug}


def main() -> None:
    """Console-script entry point."""
    try:
        cli(prog_name="corelog")
    except BrokenPipeError:  # `corelog log ... | head`: the reader left; exit quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(1) from None
