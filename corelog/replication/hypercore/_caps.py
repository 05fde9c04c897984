"""Namespaces, capabilities, stream ids and discovery keys (``hypercore/lib/caps.js``,
``hypercore-crypto``, ``@hyperswarm/secret-stream``).

A capability proves, on one connection only, that its sender knows a core's
*key* (not just its public discovery key): it is BLAKE2b-256 keyed with the
Noise handshake hash over the sender's role namespace and the key.
"""

from __future__ import annotations

import hashlib

from corelog._crypto import discovery_key


def _h(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def namespace(name: bytes, count: int) -> list[bytes]:
    """``hypercore-crypto.namespace``: ``H(H(name) || byte(i))`` for i < count."""
    ns = _h(name)
    return [_h(ns + bytes([i])) for i in range(count)]


TREE, REPLICATE_INITIATOR, REPLICATE_RESPONDER, MANIFEST, DEFAULT_NAMESPACE = namespace(b"hypercore", 5)
NS_INITIATOR, NS_RESPONDER, NS_SEND = namespace(b"hyperswarm/secret-stream", 3)


def capability(handshake_hash: bytes, key: bytes, initiator: bool) -> bytes:
    """The capability the ``initiator`` (or responder) side sends for core ``key``."""
    ns = REPLICATE_INITIATOR if initiator else REPLICATE_RESPONDER
    return hashlib.blake2b(ns + key, digest_size=32, key=handshake_hash).digest()


def stream_id(handshake_hash: bytes, initiator: bool) -> bytes:
    """The 32-byte id each side puts in its secret-stream header frame."""
    ns = NS_INITIATOR if initiator else NS_RESPONDER
    return hashlib.blake2b(ns, digest_size=32, key=handshake_hash).digest()


__all__ = [
    "DEFAULT_NAMESPACE",
    "MANIFEST",
    "NS_INITIATOR",
    "NS_RESPONDER",
    "NS_SEND",
    "REPLICATE_INITIATOR",
    "REPLICATE_RESPONDER",
    "TREE",
    "capability",
    "discovery_key",
    "namespace",
    "stream_id",
]
