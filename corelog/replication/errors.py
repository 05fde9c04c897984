"""Typed errors of ``corelog.replication``: protocol violations, handshakes, frames, WebRTC set-up.

They derive from :class:`corelog.errors.CorelogError`; the log layer knows nothing of them.
"""

from __future__ import annotations

from corelog.errors import CorelogError


class ProtocolError(CorelogError):
    """The remote peer broke the replication protocol; the connection is closed."""


class HandshakeError(ProtocolError):
    """The encrypted handshake failed (wrong peer, garbage, or tampering)."""


class FrameTooLarge(ProtocolError):
    """A frame over the negotiated maximum size."""


class RemoteError(ProtocolError):
    """The remote peer closed the connection and told us why."""


class SyncTimeout(ProtocolError):
    """The peer went silent, or talked without making progress, for longer than the timeout."""


class SyncIncomplete(ProtocolError):
    """A one-shot sync ended without everything: the peer withheld data or the connection was cut."""


class ConnectionLost(SyncIncomplete):
    """The connection went away before the sync finished: reset by the peer, a broken pipe, EOF
    (inside a frame or before the peer's end of sync), or a stream closed under the session.

    Nothing the peer sent was trusted because of it: every block committed before the cut was
    verified first and is kept, so syncing again resumes from there. Raised instead of the
    transport's own exception (``trio.BrokenResourceError``, ``OSError``, ...) on every transport.
    """


class WebRTCError(ProtocolError):
    """A WebRTC data channel could not be set up: timeout, refused candidates, bad signaling."""
