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
from ._transport import report_closed

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
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    active = 0
    per_peer: dict[str, int] = {}

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal active
        try:
            peer = str(stream.socket.getpeername()[0])
        except OSError:
            peer = "?"
        if active >= max_connections or (max_per_peer is not None and per_peer.get(peer, 0) >= max_per_peer):
            _log.warning("refusing a connection from %s: connection limit reached", peer)
            await trio.aclose_forcefully(stream)
            return
        active += 1
        per_peer[peer] = per_peer.get(peer, 0) + 1
        try:
            await replicate(stream, source, initiator=False, live=live, **kw)
        except Exception as exc:  # the h11 rule: one peer's connection, never the server
            report_closed(_log, peer, exc, handler_errors)
        finally:
            active -= 1
            per_peer[peer] -= 1
            if not per_peer[peer]:
                del per_peer[peer]

    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        await trio.serve_listeners(handler, listeners, handler_nursery=nursery)


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
