"""``serve --hypercore`` and ``sync --hypercore``: Hypercore's wire protocol, for JS Hypercore peers.

``serve --hypercore`` prints one JSON line first (``{"port": P, ...}``) so a
script can read the port; ``sync --hypercore`` prints one JSON line last
(``{"ok": ..., "length": ..., "fork": ..., "treeHash": ...}``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from corelog import Store
from corelog.errors import CorelogError

from ._common import PROBLEMS, UsageProblem, fail, open_store, single


def serve_hypercore_command(store: str, host: str, port: int) -> None:
    import trio

    from corelog.replication.hypercore import serve_hypercore

    from ._net import follow_writer, run_server

    with open_store(store) as s:

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(
                    lambda task_status: serve_hypercore(s, host, port, task_status=task_status)
                )
                nursery.start_soon(follow_writer, s)
                line = {
                    "port": bound,
                    "host": host,
                    "protocol": "hypercore/alpha",
                    "logs": [k.hex() for k in s.keys()],
                }
                click.echo(json.dumps(line))
                sys.stdout.flush()

        run_server(main, host, port)


def sync_hypercore_command(
    store: str, raw_key: bytes, host: str, port: int, live: bool, timeout: float
) -> None:
    """Exit 1 with the JSON line and one ``error:`` line when the sync failed (a typed error: a lost
    connection, a timeout, a bad or refusing peer); whatever was committed was verified and is kept."""
    import trio

    from corelog.replication.hypercore import connect_hypercore

    from ._net import _remove_new_store

    path = Path(store)
    existed, created_dir = (path / "data.mdb").exists(), not path.exists()
    kept = False
    try:
        with Store(path, sync=True) as s:
            lg = s.get(key=raw_key)
            error: BaseException | None = None
            try:
                trio.run(
                    lambda: connect_hypercore(
                        lg, host, port, live=live, timeout=timeout, handshake_timeout=timeout
                    )
                )
            except BaseException as exc:
                leaf = single(exc)
                if isinstance(leaf, OSError):  # mid-sync transport failures are ConnectionLost
                    error = UsageProblem(f"cannot connect to {host}:{port}: {leaf.strerror or leaf}")
                else:
                    error = leaf
            finally:
                kept = lg.length > 0 or s.keys() != [raw_key]
            head = lg.head()
            result = {
                "ok": error is None and lg.contiguous_length == lg.length and bool(lg.audit()),
                "key": raw_key.hex(),
                "length": lg.length,
                "contiguousLength": lg.contiguous_length,
                "fork": lg.fork,
                "treeHash": head.tree_hash.hex(),
            }
            if error is not None:
                result["error"] = f"{type(error).__name__}: {error}"
            click.echo(json.dumps(result))
            if isinstance(error, CorelogError):
                fail(f"sync failed: {type(error).__name__}: {error}", PROBLEMS)
            if error is not None:
                raise error
    except BaseException:
        if not kept:
            _remove_new_store(path, existed, created_dir)
        raise
