"""Transport failures as one typed error, and a nursery's exception group as its root cause.

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
