"""Transport failures as one typed error, a nursery's exception group as its root cause, and the
TCP accept loop both servers share (connection caps, one logged line per failed connection).

Every transport (TCP, memory streams, WebRTC data channels, the secure stream over
them) reports a dead connection in its own way: ``trio.BrokenResourceError``
(wrapping ``ConnectionResetError``, ``BrokenPipeError``, ...),
``trio.ClosedResourceError``, a raw ``OSError``. The session turns each into
:class:`ConnectionLost`, which says what happened and that the sync can be
resumed, so callers catch one typed error; :func:`root_cause` picks the error
that explains a connection's end out of the group its tasks' nursery raises.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable

import trio

from corelog.errors import CorelogError

from .errors import ConnectionLost

TRANSPORT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
RESUME = "everything committed so far was verified and is kept: sync again to resume"


def _os_reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0)
    why = (exc.strerror or str(exc) or type(exc).__name__).lower()
    return f"{why} ({name})" if name else why


def reason(exc: BaseException) -> str:
    """What a transport exception says happened, in a few words (the OS error under trio's, if any)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # trio raises BrokenResourceError from the OSError
        seen.add(id(e))
        if isinstance(e, OSError):
            return _os_reason(e)
        e = e.__cause__ or e.__context__
    if isinstance(exc, trio.ClosedResourceError):
        return f"the stream was closed under the session ({exc or 'closed'})"
    return str(exc) or type(exc).__name__


def connection_lost(exc: BaseException, doing: str) -> ConnectionLost:
    """The typed error for a transport failure met while ``doing`` ("receiving", "sending")."""
    return ConnectionLost(f"the connection was lost while {doing}: {reason(exc)}; {RESUME}")


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) groups, or ``[exc]``."""
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    found: list[BaseException] = []
    for e in exc.exceptions:
        found.extend(leaves(e))
    return found


def root_cause(exc: BaseException, protocol_error: BaseException | None = None) -> BaseException:
    """The one error that explains why a connection ended, out of its tasks' exception group.

    ``trio.Cancelled`` is only a consequence. A ``protocol_error`` found on the connection
    (what the peer did wrong) outranks the connection breaking afterwards (the peer hung up
    while our Error frame went out), and any other error outranks a ConnectionLost. Returns
    ``exc`` itself when several unrelated errors remain (a bug: keep them all).
    """
    real = [e for e in leaves(exc) if not isinstance(e, trio.Cancelled)]
    if not real:
        return exc
    lost = [e for e in real if isinstance(e, ConnectionLost)]
    other = [e for e in real if not isinstance(e, ConnectionLost)]
    if protocol_error is not None and all(e is protocol_error or e in lost for e in real):
        return protocol_error
    if not other:
        return lost[0]
    return other[0] if len(other) == 1 else exc


def describe(exc: BaseException) -> str:
    """One line for a log: the root cause's type and message (never a bare "ExceptionGroup")."""
    cause = root_cause(exc)
    if isinstance(cause, BaseExceptionGroup):
        parts = [f"{type(e).__name__}: {e}" for e in leaves(cause) if not isinstance(e, trio.Cancelled)]
        return "; ".join(parts).replace("\n", " ")
    return f"{type(cause).__name__}: {cause}".replace("\n", " ")


def report_closed(
    log: logging.Logger, peer: str, exc: BaseException, handler_errors: list[BaseException] | None
) -> None:
    """A server's one log line for a connection that ended with ``exc`` (its root cause, one line:
    INFO for a typed error, the peer's doing or a lost connection; ERROR for anything else, a bug),
    and the root cause appended to ``handler_errors`` if given."""
    cause = root_cause(exc)
    level = logging.INFO if isinstance(cause, CorelogError) else logging.ERROR
    log.log(level, "closed a connection from %s: %s", peer, describe(cause))
    if handler_errors is not None:
        handler_errors.append(cause)


async def serve_capped(
    run: Callable[[trio.SocketStream], Awaitable[object]],
    host: str,
    port: int,
    *,
    log: logging.Logger,
    max_connections: int,
    max_per_peer: int | None,
    handler_errors: list[BaseException] | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept TCP connections on ``host:port`` and ``await run(stream)`` for each in its own task;
    ``task_status.started(port)`` (the bound port).

    The h11 rule: whatever ``run`` raises for one connection ends only that connection, with one
    line on ``log`` (see :func:`report_closed`). A connection over ``max_connections`` open at
    once, or over ``max_per_peer`` from one IP address (``None``: no per-address cap), is closed
    at once without a byte, so one address cannot take every slot; a slot is freed as soon as its
    connection ends (``run`` must end a silent or stalled peer in bounded time).
    """
    if max_connections < 1 or (max_per_peer is not None and max_per_peer < 1):
        raise ValueError("max_connections and max_per_peer must be at least 1")
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
            log.warning("refusing a connection from %s: connection limit reached", peer)
            await trio.aclose_forcefully(stream)
            return
        active += 1
        per_peer[peer] = per_peer.get(peer, 0) + 1
        try:
            await run(stream)
        except Exception as exc:  # the h11 rule: one peer's connection, never the server
            report_closed(log, peer, exc, handler_errors)
        finally:
            active -= 1
            per_peer[peer] -= 1
            if not per_peer[peer]:
                del per_peer[peer]

    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        await trio.serve_listeners(handler, listeners, handler_nursery=nursery)
