"""Hashes, namespaces, manifests, keys and signatures of Hypercore 11's default format.

Byte-compatible with hypercore 11 (single writer, default manifest, compat off):
BLAKE2b-256 everywhere, little-endian u64s, Ed25519 over a 112-byte signable.
"""

from __future__ import annotations

import hashlib
import struct

import nacl.bindings
import nacl.exceptions

from .errors import InvalidKey, InvalidSignature

U64 = struct.Struct("<Q")  # public: leaf and parent hashes are inlined in hot loops (``_tree.verify``)
_NODE = struct.Struct("<QQ")  # index, size (tree hash encoding)
LEAF_PREFIX = b"\x00"
PARENT_PREFIX = b"\x01"
_ROOT_PREFIX = b"\x02"


def _h(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def _namespace(i: int) -> bytes:
    return _h(_h(b"hypercore") + bytes([i]))


TREE = _namespace(0)
MANIFEST = _namespace(3)
DEFAULT_NAMESPACE = _namespace(4)

SIGNATURE_SIZE = 64
ENCODED_SIGNATURE_SIZE = 68
_SIG_HEADER = b"\x01\x00"
_SIG_TRAILER = b"\x00\x00"


# BLAKE2b-256 states that have hashed their prefix: ``.copy()`` one, ``update`` the rest and
# ``digest``: the same bytes as hashing prefix and rest at once, a third cheaper for small inputs
# (no argument parsing, no concatenation of the prefix). Never updated themselves, so copying
# them from any thread is safe.
LEAF_HASHER = hashlib.blake2b(LEAF_PREFIX, digest_size=32)
PARENT_HASHER = hashlib.blake2b(PARENT_PREFIX, digest_size=32)
ROOTS_HASHER = hashlib.blake2b(_ROOT_PREFIX, digest_size=32)


def leaf_hash(data: bytes) -> bytes:
    """H(0x00 || u64(len) || data): the hash of one block."""
    h = LEAF_HASHER.copy()
    h.update(U64.pack(len(data)))
    h.update(data)
    return h.digest()


def parent_hash(size: int, left: bytes, right: bytes) -> bytes:
    """H(0x01 || u64(size_left + size_right) || left || right)."""
    h = PARENT_HASHER.copy()
    h.update(U64.pack(size) + left + right)
    return h.digest()


def tree_hash(roots) -> bytes:
    """H(0x02 || for each root: hash || u64(index) || u64(size)); ``roots`` are Nodes."""
    return _h(_ROOT_PREFIX + encode_roots(roots))


ROOT_SIZE = 48
ROOT = _NODE  # a root's encoding after its hash: u64 index, u64 size (``encode_roots``)


def encode_roots(roots) -> bytes:
    """What ``tree_hash`` hashes after its prefix: ``ROOT_SIZE`` bytes per root, in order."""
    pack = _NODE.pack
    return b"".join([r[2] + pack(r[0], r[1]) for r in roots])


def tree_hash_encoded(encoded_roots: bytes) -> bytes:
    """``tree_hash`` of roots given as ``encode_roots`` gives them (an append re-encodes only its new root)."""
    h = ROOTS_HASHER.copy()
    h.update(encoded_roots)
    return h.digest()


def manifest_for(public_key: bytes) -> bytes:
    """The 70-byte default single-signer manifest for an Ed25519 public key."""
    if len(public_key) != 32:
        raise InvalidKey(f"an Ed25519 public key is 32 bytes, got {len(public_key)}")
    return b"\x01\x00\x00\x01\x01\x00" + DEFAULT_NAMESPACE + public_key


def public_key_of(manifest: bytes) -> bytes:
    """Extract the signer's public key from a default manifest (validating its shape)."""
    if (
        len(manifest) != 70
        or manifest[:6] != b"\x01\x00\x00\x01\x01\x00"
        or manifest[6:38] != DEFAULT_NAMESPACE
    ):
        raise InvalidKey(
            "unsupported manifest: only Hypercore 11's default single-signer manifest is supported"
        )
    return manifest[38:]


def log_key(manifest: bytes) -> bytes:
    """The log key: H(MANIFEST || manifest)."""
    return _h(MANIFEST + manifest)


def discovery_key(key: bytes) -> bytes:
    """BLAKE2b-256 keyed with the log key over b"hypercore": safe to publish, reveals nothing."""
    if len(key) != 32:
        raise InvalidKey(f"a log key is 32 bytes, got {len(key)}")
    return hashlib.blake2b(b"hypercore", digest_size=32, key=key).digest()


def signable(key: bytes, root_hash: bytes, length: int, fork: int) -> bytes:
    """The 112 bytes a head signature covers: TREE || key || treeHash || u64(length) || u64(fork)."""
    return TREE + key + root_hash + U64.pack(length) + U64.pack(fork)


def encode_signature(signature: bytes) -> bytes:
    """Hypercore's 68-byte stored form of a single-signer signature."""
    return _SIG_HEADER + signature + _SIG_TRAILER


def decode_signature(encoded: bytes) -> bytes:
    if len(encoded) != ENCODED_SIGNATURE_SIZE or encoded[:2] != _SIG_HEADER or encoded[-2:] != _SIG_TRAILER:
        raise InvalidSignature("malformed signature encoding (expected 68 bytes: 01 00 | sig | 00 00)")
    return encoded[2:66]


def keypair_from_seed(seed: bytes) -> tuple[bytes, bytes]:
    """(public key, 64-byte libsodium secret key) from a 32-byte seed."""
    if len(seed) != 32:
        raise InvalidKey(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
    return nacl.bindings.crypto_sign_seed_keypair(seed)


def derive_seed(primary_seed: bytes, name: str) -> bytes:
    """A log's key seed from the store's primary seed and the log's name (like corestore)."""
    return hashlib.blake2b(
        name.encode("utf-8"), digest_size=32, key=primary_seed, person=b"corelog/name-key"
    ).digest()


def sign(message: bytes, secret_key: bytes) -> bytes:
    return nacl.bindings.crypto_sign(message, secret_key)[:SIGNATURE_SIZE]


def verify(message: bytes, signature: bytes, public_key: bytes) -> bool:
    if len(signature) != SIGNATURE_SIZE:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except nacl.exceptions.BadSignatureError:
        return False
    return True
