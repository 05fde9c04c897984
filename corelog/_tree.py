"""The Merkle tree over a log: nodes, roots, and proofs.

Theory of operation
-------------------
A log of ``n`` blocks is a forest of perfect binary trees (the *roots*), one for
each set bit of ``n`` (see ``_flat``). Every complete subtree is a stored node
``(index, size, hash)``; appending block ``i`` adds leaf ``2i`` and merges it with
the previous roots like a binary counter. The *tree hash* commits to the roots,
and the signed head is a signature over (key, tree hash, length, fork).

A proof lets someone who trusts only the log key check blocks ``[start, end)``
against a signed head of length ``n``. The verifier may already hold a verified
prefix ``[0, have)`` (``have <= start``): nodes inside it come from its own store.
Every other subtree the roots of ``n`` depend on is either computed from the
given blocks (if it lies inside ``[start, end)``), or must be sent (if it lies
wholly outside both ranges), or is split into its two children. ``needed_nodes``
walks that decision from each root, left to right, and yields exactly the nodes
to send; the verifier walks the same decision (``resolve``), so a proof with a
missing, extra or altered node, block, size or signature never verifies.

An *upgrade* proof is the special case ``start == end == have``: no blocks, just
the subtrees covering ``[have, n)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from . import _crypto, _flat
from .errors import InvalidProof

MAX_BLOCK_SIZE = 4 * 1024 * 1024 - 64 * 1024
"""The largest block a log takes (4 MiB - 64 KiB): one block with its proof always fits one
4 MiB replication frame (the proof's nodes, signature and manifest take under 8 KiB)."""

MAX_LENGTH = 2**53
"""Lengths, forks and block indexes are below this (every number a peer announces is capped)."""

MAX_BYTES = 2**53
"""Node sizes (bytes under a subtree) and byte lengths are at most this."""


class Node(NamedTuple):
    """A tree node: flat index, byte size of the blocks it covers, BLAKE2b-256 hash."""

    index: int  # type: ignore[assignment]  # shadows tuple.index, as Hypercore names it
    size: int
    hash: bytes


def parent_node(left: Node, right: Node) -> Node:
    size = left.size + right.size
    if size > MAX_BYTES:
        raise InvalidProof(f"a tree node of {size} bytes is over the {MAX_BYTES}-byte limit: forged sizes")
    return Node((left.index + right.index) >> 1, size, _crypto.parent_hash(size, left.hash, right.hash))


def append_nodes(roots: list[Node], start: int, blocks: Sequence[bytes]) -> tuple[list[Node], list[Node]]:
    """Nodes created by appending ``blocks`` at index ``start`` to a tree with ``roots``.

    Returns ``(new_nodes, new_roots)``; ``roots`` is not modified.
    """
    roots = list(roots)
    new: list[Node] = []
    leaf_hash = _crypto.leaf_hash
    parent_hash = _crypto.parent_hash
    for i, data in enumerate(blocks, start):
        node = Node(2 * i, len(data), leaf_hash(data))
        new.append(node)
        # number of merges = trailing one bits of i
        merges = ((i + 1) & ~i).bit_length() - 1
        for _ in range(merges):
            left = roots.pop()
            size = left.size + node.size
            node = Node((left.index + node.index) >> 1, size, parent_hash(size, left.hash, node.hash))
            new.append(node)
        roots.append(node)
    return new, roots


def needed_nodes(length: int, have: int, start: int, end: int) -> list[int]:
    """Flat indices a prover must send to prove ``[start, end)`` against length ``length``.

    The verifier holds ``[0, have)``; ``have <= start <= end <= length``.
    """
    out: list[int] = []

    def walk(x: int) -> None:
        lo, hi = _flat.leaf_span(x)
        if hi <= have or (start <= lo and hi <= end):
            return
        if lo >= have and (hi <= start or lo >= end):
            out.append(x)
            return
        left, right = _flat.children(x)
        walk(left)
        walk(right)

    for r in _flat.full_roots(length):
        walk(r)
    walk = None  # type: ignore[assignment]  # (it refers to itself: break the cycle, see verify)
    return out


@dataclass(frozen=True, slots=True)
class Proof:
    """Blocks ``[start, start + len(blocks))`` with the nodes to check them against a signed head.

    ``have`` is the prefix the verifier is assumed to hold already. ``manifest``
    travels with a proof so a fresh replica (that knows only the key) can learn
    the signer's public key; it is checked against the key.
    """

    fork: int
    length: int
    signature: bytes
    start: int
    blocks: tuple[bytes, ...]
    nodes: tuple[Node, ...]
    have: int = 0
    manifest: bytes | None = None

    @property
    def end(self) -> int:
        return self.start + len(self.blocks)

    def to_bytes(self) -> bytes:
        return msgpack.packb(
            [
                1,
                self.fork,
                self.length,
                self.signature,
                self.start,
                list(self.blocks),
                [[n.index, n.size, n.hash] for n in self.nodes],
                self.have,
                self.manifest,
            ],
            use_bin_type=True,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Proof:
        """Decode a proof; any malformed input raises InvalidProof."""
        try:
            v = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
            version, fork, length, signature, start, blocks, nodes, have, manifest = v
            if version != 1:
                raise ValueError(f"unknown proof version {version}")
            return cls.build(fork, length, signature, start, blocks, nodes, have, manifest)
        except InvalidProof:
            raise
        except Exception as exc:  # msgpack raises many types on garbage
            raise InvalidProof(f"malformed proof encoding ({exc}); the peer sent garbage") from None

    @classmethod
    def build(cls, fork, length, signature, start, blocks, nodes, have, manifest) -> Proof:
        """Construct from untrusted plain values, checking every type and bound."""
        ints = (fork, length, start, have)
        if not all(type(i) is int and 0 <= i < MAX_LENGTH for i in ints):
            raise InvalidProof(f"proof fork/length/start/have must be integers in [0, {MAX_LENGTH})")
        if type(signature) is not bytes:
            raise InvalidProof("proof signature must be 64 bytes")
        # (type of every block checked in a C loop: thousands of blocks per received proof)
        if not isinstance(blocks, list) or not set(map(type, blocks)) <= {bytes}:
            raise InvalidProof("proof blocks must be a list of byte strings")
        if manifest is not None and type(manifest) is not bytes:
            raise InvalidProof("proof manifest must be bytes or nil")
        if not isinstance(nodes, list):
            raise InvalidProof("proof nodes must be a list")
        for n in nodes:
            if (
                not isinstance(n, list | tuple)
                or len(n) != 3
                or type(n[0]) is not int
                or type(n[1]) is not int
                or not 0 <= n[0] < 2 * MAX_LENGTH
                or not 0 <= n[1] <= MAX_BYTES
                or type(n[2]) is not bytes
                or len(n[2]) != 32
            ):
                raise InvalidProof("each proof node must be [index, size, 32-byte hash]")
        return cls.from_checked(fork, length, signature, start, blocks, nodes, have, manifest)

    @classmethod
    def from_checked(
        cls,
        fork: int,
        length: int,
        signature: bytes,
        start: int,
        blocks: list[bytes],
        nodes: list[list[Any]] | list[tuple[Any, ...]],
        have: int,
        manifest: bytes | None,
        block_bytes: int | None = None,
    ) -> Proof:
        """Construct from values whose types and integer bounds are already checked.

        The caller guarantees what ``build`` checks first: fork, length, start and
        have are ints in ``[0, MAX_LENGTH)``; ``signature`` is bytes; ``manifest``
        bytes or None; every block is bytes; every node is ``[index, size, hash]``
        with ``index < 2 * MAX_LENGTH``, ``size <= MAX_BYTES`` and a 32-byte hash
        (replication's frame decoder checks all of this for a Data frame). This
        checks the rest, once: the signature's length, every block's size, and the
        range. ``block_bytes`` (the blocks' total size, if the caller has summed
        it) lets the size check skip its pass over the blocks when the total is
        within ``MAX_BLOCK_SIZE``, as it always is for frames under the limit.
        """
        if len(signature) != _crypto.SIGNATURE_SIZE:
            raise InvalidProof("proof signature must be 64 bytes")
        if (block_bytes is None or block_bytes > MAX_BLOCK_SIZE) and max(
            map(len, blocks), default=0
        ) > MAX_BLOCK_SIZE:
            raise InvalidProof(f"a proof block is over MAX_BLOCK_SIZE ({MAX_BLOCK_SIZE} bytes)")
        if not have <= start <= start + len(blocks) <= length:
            raise InvalidProof(
                f"proof range is inconsistent: have={have} start={start} "
                f"end={start + len(blocks)} length={length}"
            )
        out_nodes = tuple([Node(n[0], n[1], n[2]) for n in nodes])
        return cls(fork, length, signature, start, tuple(blocks), out_nodes, have, manifest)


class Verified(NamedTuple):
    """The outcome of checking a proof: the new roots, tree hash and every node learnt."""

    roots: list[Node]
    tree_hash: bytes
    nodes: dict[int, tuple[int, int, bytes]]  # every node computed or received (not the ones looked
    # up), as (index, size, hash): a Node or a plain tuple, which compares equal to the Node
    byte_length: int


def verify(
    proof: Proof,
    key: bytes,
    public_key: bytes,
    lookup: Callable[[int], Node | None] | None = None,
) -> Verified:
    """Check ``proof`` against ``key``; raise InvalidProof unless every byte is right.

    ``lookup`` returns nodes of the verifier's trusted prefix ``[0, proof.have)``.
    """
    have, start, end, length = proof.have, proof.start, proof.end, proof.length
    if not 0 <= have <= start <= end <= length < MAX_LENGTH or not 0 <= proof.fork < MAX_LENGTH:
        raise InvalidProof(
            f"proof range have={have} start={start} end={end} length={length} is out of bounds"
        )
    if any(not 0 <= n.size <= MAX_BYTES for n in proof.nodes):
        raise InvalidProof(f"a proof node is over the {MAX_BYTES}-byte size limit")
    if have and lookup is None:
        raise InvalidProof("a proof that assumes a prefix needs the verifier's stored nodes")
    expected = needed_nodes(length, have, start, end)
    if [n.index for n in proof.nodes] != expected:
        raise InvalidProof(
            "proof carries the wrong set of nodes for its range; it does not match the signed head"
        )
    # Nodes computed here are plain (index, size, hash) tuples: CPython stops tracking exact tuples
    # of ints and bytes at their first collection, whereas every Node (a tuple subclass) stays
    # tracked, so thousands of them per proof were promoted into the oldest generation and made the
    # cyclic collector run full passes often (long pauses in whichever thread triggers them).
    learnt: dict[int, tuple[int, int, bytes]] = {n.index: n for n in proof.nodes}
    blocks = proof.blocks
    parent_hash = _crypto.parent_hash

    def subtree(lo: int, hi: int) -> tuple[int, int, bytes]:
        """Every node of the perfect subtree over blocks [lo, hi) (inside [start, end)) into
        ``learnt``, leaves first, as ``_append.append_part`` does (leaf and parent hashes inlined);
        returns its root."""
        # (BLAKE2b states that have hashed the prefix, copied per hash: ``_crypto.LEAF_HASHER``)
        pack, leaf, parent = _crypto.U64.pack, _crypto.LEAF_HASHER.copy, _crypto.PARENT_HASHER.copy
        stack: list[tuple[int, int, bytes]] = []
        j = 0
        for data in blocks[lo - start : hi - start]:
            size = len(data)
            x = 2 * (lo + j)
            hasher = leaf()
            hasher.update(pack(size))
            hasher.update(data)
            h = hasher.digest()
            learnt[x] = n = (x, size, h)
            merges = ((j + 1) & ~j).bit_length() - 1  # (lo is a multiple of the subtree's width)
            while merges:
                lx, lsize, lh = stack.pop()
                size += lsize
                if size > MAX_BYTES:
                    raise InvalidProof(
                        f"a tree node of {size} bytes is over the {MAX_BYTES}-byte limit: forged sizes"
                    )
                x = (lx + x) >> 1
                hasher = parent()
                hasher.update(pack(size) + lh + h)
                h = hasher.digest()
                learnt[x] = n = (x, size, h)
                merges -= 1
            stack.append(n)
            j += 1
        return n

    def resolve(x: int) -> tuple[int, int, bytes]:
        n = learnt.get(x)
        if n is not None:
            return n
        lo, hi = _flat.leaf_span(x)
        if hi <= have:
            n = lookup(x)  # type: ignore[misc]
            if n is None:
                raise InvalidProof(f"proof assumes node {x} of our prefix, which we do not hold")
            return n
        if lo >= start and hi <= end:  # a whole subtree inside [start, end): bottom up
            return subtree(lo, hi)
        else:
            left, right = _flat.children(x)
            ln, rn = resolve(left), resolve(right)
            size = ln[1] + rn[1]
            if size > MAX_BYTES:
                raise InvalidProof(
                    f"a tree node of {size} bytes is over the {MAX_BYTES}-byte limit: forged sizes"
                )
            n = (x, size, parent_hash(size, ln[2], rn[2]))
        learnt[x] = n
        return n

    try:
        roots = [Node(*resolve(r)) for r in _flat.full_roots(length)]
    finally:
        # resolve() refers to itself through its closure cell: drop that reference cycle, or
        # everything the closure holds (learnt nodes, blocks, the caller's transaction) waits for
        # the cyclic garbage collector
        resolve = None  # type: ignore[assignment]
    th = _crypto.tree_hash(roots)
    if not _crypto.verify(_crypto.signable(key, th, length, proof.fork), proof.signature, public_key):
        raise InvalidProof(
            f"proof for blocks [{start}, {end}) does not verify against the signed head "
            f"(fork {proof.fork}, length {length}): a block, node or the signature was altered"
        )
    return Verified(roots, th, learnt, sum(r.size for r in roots))
