"""Flat-tree index arithmetic (the in-order numbering Hypercore uses).

Block ``i`` is node ``2 * i``; parents are odd. A node's *depth* is the number of
trailing one bits of its index, its *offset* the position among nodes of that
depth. A node of depth ``d`` covers ``2 ** d`` leaves starting at leaf
``offset << d``. Everything here is pure integer math on Python ints.
"""

from __future__ import annotations


def depth(index: int) -> int:
    """Number of trailing one bits: 0 for leaves."""
    return ((index + 1) & ~index).bit_length() - 1


def offset(index: int) -> int:
    return index >> (depth(index) + 1)


def index(d: int, off: int) -> int:
    """Flat index of the node at depth ``d`` and offset ``off``."""
    return (off << (d + 1)) | ((1 << d) - 1)


def leaf_span(index_: int) -> tuple[int, int]:
    """Half-open range of leaf (block) numbers ``[start, end)`` the node covers."""
    d = depth(index_)
    start = (index_ >> (d + 1)) << d
    return start, start + (1 << d)


def children(index_: int) -> tuple[int, int]:
    d = depth(index_)
    if d == 0:
        raise ValueError(f"node {index_} is a leaf and has no children")
    half = 1 << (d - 1)
    return index_ - half, index_ + half


def parent(index_: int) -> int:
    d = depth(index_)
    return index(d + 1, (index_ >> (d + 1)) >> 1)


def sibling(index_: int) -> int:
    d = depth(index_)
    return index(d, (index_ >> (d + 1)) ^ 1)


def full_roots(length: int) -> list[int]:
    """Flat indices of the roots (peaks) of a log of ``length`` blocks, biggest first.

    They are the perfect subtrees given by the set bits of ``length``: length 6
    has roots 3 (blocks 0-3) and 9 (blocks 4-5).
    """
    roots = []
    start = 0
    remaining = length
    while remaining:
        size = 1 << (remaining.bit_length() - 1)
        roots.append(2 * start + size - 1)
        start += size
        remaining -= size
    return roots


def crossing_ancestors(length: int, limit: int) -> list[int]:
    """Nodes that cover leaf ``length - 1`` and end after ``length`` but not after ``limit``.

    Truncating a tree of ``limit`` blocks to ``length`` must delete exactly these
    plus every node starting at or after ``length`` (flat index >= ``2 * length``).
    Ancestors only grow, so the walk stops at the first one ending past ``limit``.
    """
    out: list[int] = []
    if length == 0:
        return out
    node = 2 * (length - 1)
    while True:
        node = parent(node)
        end = leaf_span(node)[1]
        if end > limit:
            return out
        if end > length:
            out.append(node)
