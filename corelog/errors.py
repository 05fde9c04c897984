"""Typed errors for corelog, machine and replication.

Every error says what happened and what to do about it. They all derive from
:class:`CorelogError`, so ``except CorelogError`` catches anything the library
raises on purpose; where a builtin fits (``IndexError``, ``KeyError``,
``ValueError``) the error also derives from it so idiomatic code keeps working.
"""

from __future__ import annotations


class CorelogError(Exception):
    """Base class of every error raised on purpose by corelog."""


# --- the log and the store -------------------------------------------------


class StoreLocked(CorelogError):
    """Another process (or another Store object) has the store open for writing."""


class StoreNotFound(CorelogError):
    """A read-only open of a store directory that does not exist."""


class StoreFull(CorelogError):
    """The LMDB map is full; reopen the store with a larger ``map_size``."""


class LogNotFound(CorelogError, KeyError):
    """No log of that name or key in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else "log not found"


class InvalidKey(CorelogError, ValueError):
    """A key, seed or discovery key of the wrong type or size."""


class NotWritable(CorelogError):
    """A write to a log this store does not hold the secret key of (a replica)."""


class OutOfRange(CorelogError, IndexError):
    """An index or length outside the log."""


class BlockNotAvailable(OutOfRange):
    """The index is within the signed length but the block was not downloaded yet."""


class VerificationError(CorelogError):
    """Data from elsewhere (a peer, a file) failed cryptographic verification; nothing was written."""


class InvalidSignature(VerificationError):
    """A signed head whose Ed25519 signature does not verify against the log key."""


class InvalidProof(VerificationError):
    """A Merkle proof (nodes, blocks or roots) that does not hash to the signed tree."""


class Corrupt(CorelogError):
    """Stored data that does not match what was written (bit rot, tampering, bad copy)."""


class Conflict(CorelogError):
    """Two valid signed heads with the same fork and length but different trees."""


# --- machines --------------------------------------------------------------


class MachineError(CorelogError):
    """Base class of errors about machine definitions and runtimes."""


class DefinitionError(MachineError, ValueError):
    """A machine definition with problems; ``problems`` lists ``(path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = list(problems)
        lines = "\n".join(f"  {path or '<root>'}: {msg}" for path, msg in self.problems)
        super().__init__(
            f"invalid machine definition ({len(self.problems)} problem(s)):\n{lines}\n"
            "Fix the definition (or pass the missing actions/guards) and try again."
        )


class EventNotAccepted(MachineError):
    """No enabled transition for the event in the current state; nothing was recorded."""


class EndlessLoop(MachineError):
    """Eventless (``always``) transitions kept firing past the microstep limit."""


class NotAtHead(MachineError):
    """A send while the history cursor is in the past; call ``live()`` or ``truncate()`` first."""


class DefinitionMismatch(MachineError):
    """The log was recorded with a different definition; pass ``migrate=True`` to switch."""


class NotAMachineLog(MachineError):
    """The log's first entry is not a corelog machine header."""


class UnserializableContext(MachineError, TypeError):
    """The context (or event data) cannot be stored as msgpack; nothing was recorded."""


# --- replication ------------------------------------------------------------


class ProtocolError(CorelogError):
    """The remote peer broke the replication protocol; the connection is closed."""


class HandshakeError(ProtocolError):
    """The encrypted handshake failed (wrong peer, garbage, or tampering)."""


class FrameTooLarge(ProtocolError):
    """A frame over the negotiated maximum size."""


class RemoteError(ProtocolError):
    """The remote peer closed the connection and told us why."""
