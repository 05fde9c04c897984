"""The ``corelog`` command-line tool: inspect, audit, export and sync corelog stores.

It composes the three layers (``corelog``, ``corelog.machine``,
``corelog.replication``); the log layers never import it. Commands live in
one module per concern (``_inspect``, ``_net``, ``_diagram``, ...), each
registering on the group defined in ``_app``; import a new module below.
Stores are opened read-only for every reading command, so they work while a
writer is running. User errors print one clear line and exit non-zero, never
a traceback (``--debug`` shows it).

Exit codes: 0 success (audit: clean), 1 problems found or data corrupt,
2 usage error (bad arguments, missing store, unknown log, bad key).
"""

from __future__ import annotations

from corelog.machine import to_mermaid as mermaid

# command modules register their commands on ``cli`` when imported
from . import _diagram, _fleet, _gen, _inspect, _net  # noqa: F401
from ._app import cli, main

__all__ = ["cli", "main", "mermaid"]
