"""TCP (and in-memory) entry points: a server that keeps serving whatever one peer does, a client.

Both run :func:`._session.replicate` over a trio stream; a TCP connection is
Noise-encrypted by the session itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import trio

from corelog import Log, Store

from ._session import Session, replicate
from ._transport import serve_capped

_log = logging.getLogger("corelog.replication")


async def serve_tcp(
    source: Store | Log | Iterable[Log],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    live: bool = True,
    handler_errors: list[BaseException] | None = None,
    max_connections: int = 1024,
    max_per_peer: int | None = 256,
    task_status=trio.TASK_STATUS_IGNORED,
    **kw,
) -> None:
    """Accept replication connections on TCP; ``task_status.started(port)``.

    Each connection runs as a responder in its own task. Anything a peer does
    (garbage, floods, silence, a crash of its handler) ends only its own
    connection, with a logged reason (appended to ``handler_errors`` if given).
    Connections over ``max_connections``, or over ``max_per_peer`` from one
    address, are closed at once.
    """

    async def run(stream: trio.SocketStream) -> None:
        await replicate(stream, source, initiator=False, live=live, **kw)

    await serve_capped(
        run,
        host,
        port,
        log=_log,
        max_connections=max_connections,
        max_per_peer=max_per_peer,
        handler_errors=handler_errors,
        task_status=task_status,
    )


async def connect_tcp(
    source: Store | Log | Iterable[Log],
    host: str,
    port: int,
    *,
    live: bool = True,
    **kw,
) -> Session:
    """Connect to a ``serve_tcp`` peer and replicate (as the initiator)."""
    stream = await trio.open_tcp_stream(host, port)
    return await replicate(stream, source, initiator=True, live=live, **kw)


def memory_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """Two connected in-memory streams (for tests and in-process peers)."""
    import trio.testing

    return trio.testing.memory_stream_pair()
