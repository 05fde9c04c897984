"""Typed errors of the log layer (``corelog``): the store, logs, proofs.

Every error says what happened and what to do about it. They all derive from
:class:`CorelogError`, so ``except CorelogError`` catches anything the library
raises on purpose (``corelog.machine.errors`` and ``corelog.replication.errors``
derive from it); where a builtin fits (``IndexError``, ``KeyError``,
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


class StoreClosed(CorelogError):
    """The store was closed (maybe by another thread); reopen it to go on."""


class LengthMismatch(CorelogError):
    """``append(..., expected_length=n)`` found the log at another length; nothing was written.

    ``expected`` and ``actual`` say both; re-read the log and retry (compare-and-append).
    """

    def __init__(self, message: str, *, expected: int, actual: int):
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class BlockTooLarge(CorelogError, ValueError):
    """A block over ``corelog.MAX_BLOCK_SIZE`` bytes; split it (replication carries one block per frame)."""


class IncompleteLog(NotWritable):
    """This store writes the log but does not hold every block yet (e.g. restored from its seed).

    Signing a head over blocks it does not have would fork the log; replicate the
    missing blocks from a peer first (``contiguous_length`` must reach ``length``).
    """
