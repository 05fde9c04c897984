"""Network commands: serve and sync."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from corelog import Store

from ._app import cli
from ._common import UsageProblem, short


@cli.command()
@click.argument("store")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=7400, show_default=True, type=int)
def serve(store: str, host: str, port: int) -> None:
    """Serve every log of STORE to peers over TCP (Noise-encrypted), live, until interrupted."""
    import trio

    from corelog.replication import serve_tcp

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

    from corelog.replication import connect_tcp

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
            f"{short(raw_key)}: {lg.contiguous_length} entries, fork {lg.fork}, "
            f"audit {'ok' if lg.audit().ok else 'FAILED'}"
        )
