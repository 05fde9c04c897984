"""Typed errors of the Hypercore wire protocol; each ends only the connection it happened on."""

from __future__ import annotations

from corelog.replication.errors import ProtocolError


class WireError(ProtocolError):
    """The peer sent bytes that do not decode as the Hypercore wire format."""


class StreamError(ProtocolError):
    """The peer broke the secret-stream framing or encryption; the connection must close."""


class MuxError(ProtocolError):
    """The peer broke the protomux framing (bad open/reject, too many channels, ...)."""


class ProofError(WireError):
    """A request we cannot answer (out of bounds, bad upgrade) or a proof that does not check."""


class CapabilityError(ProtocolError):
    """The peer's capability for a core is wrong: it does not know the key, or replays another connection's."""


class PeerTimeout(ProtocolError):
    """The peer sent nothing (not even a keep-alive) for longer than the timeout."""
