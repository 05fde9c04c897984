"""Signed heads, and when a writer signs them.

A head is what a log's writer vouches for: (fork, length, tree hash) under an
Ed25519 signature over ``_crypto.signable(key, tree hash, length, fork)``.

When heads are signed
---------------------
Ed25519 is deterministic: a head's signature is a pure function of the head and
the secret key, which the store that writes a log holds (it derives it from its
seed). So that store does not sign at commit time: an append, a truncation or a
fleet commit stores its new head with the signature field zeroed (``UNSIGNED``)
in the same LMDB transaction as its blocks and nodes, and the ``Log`` signs a
head when it is read: ``Log.head()``, ``proof()`` / ``upgrade_proof()``,
``check_head`` (for a conflict's details), ``audit()``, and so everything built on
them (both replication protocols, the CLI, a machine's open check). The
signature is cached per log, keyed by (fork, length, tree hash), so rereading an
unchanged head signs nothing more; concurrent readers may both sign the same
head (same bytes), and the cache entry is one tuple replaced whole, so nobody
reads the signature of another head. A sequential writer whose heads nobody
reads signs nothing; every head that leaves the store is signed.

Only a store that owns the log's key pair signs, only a head whose blocks it
holds (``contig >= length``), and a read-only store signs in memory and writes
nothing. A replica stores the signature its peer sent, as it is; heads stored
signed (by older versions, or received from peers) are read as they are.
libsodium never accepts the all-zero signature (its R is a small-order point),
so an ``UNSIGNED`` head can never pass for a signed one.
"""

from __future__ import annotations

from typing import NamedTuple

from . import _crypto

UNSIGNED = bytes(_crypto.SIGNATURE_SIZE)  # the signature field of a head this store signs when read


class Head(NamedTuple):
    """A signed head: what the writer vouches for."""

    fork: int
    length: int
    tree_hash: bytes
    signature: bytes  # 64 raw bytes; ``encoded_signature`` gives Hypercore's 68-byte form
    byte_length: int

    @property
    def encoded_signature(self) -> bytes:
        return _crypto.encode_signature(self.signature)

    def signable(self, key: bytes) -> bytes:
        return _crypto.signable(key, self.tree_hash, self.length, self.fork)


def stored_signature(sig: bytes, owned: bool) -> bytes | None:
    """A stored head's signature field as ``LogState.signature`` holds it: None for a head the
    store signs when read (its own log), ``b""`` for an unsigned head of a replica."""
    if sig != UNSIGNED:
        return sig
    return None if owned else b""
