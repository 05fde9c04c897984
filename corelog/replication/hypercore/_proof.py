"""Hypercore-shaped Merkle proofs: generated from a corelog Log's nodes, checked into corelog Proofs.

Responder side (:func:`generate`) follows ``MerkleTree.proof`` of hypercore 11
(no ``seek``): a block below the reader's length comes with the sibling path up
``nodes`` levels; an upgrade carries the subtrees that grow the reader's roots
to the requested length (with the block path standing in for the subtree that
holds the block), and ``additional`` nodes up to our current head when we have
grown since. Given the same tree it reproduces the JS bytes exactly.

Reader side: :func:`verify_block_path` hashes a block up its sibling path to a
node the reader already trusts; :func:`upgrade_length` and :class:`NodeSource`
turn an upgrade into the nodes a corelog :class:`~corelog.Proof` needs, so that
``Log.apply`` checks the signature and commits in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable

from corelog import _crypto, _flat
from corelog._tree import Node, parent_node

from .errors import ProofError


def _contains(node: int, x: int) -> bool:
    """Does the subtree of flat index ``node`` span flat index ``x``?"""
    half = (1 << _flat.depth(node)) - 1
    return node - half <= x <= node + half


def nodes_to_root(index: int, nodes: int, head: int) -> int:
    x = index
    for _ in range(nodes):
        x = _flat.parent(x)
        if _contains(x, head):
            raise ProofError("nodes is out of bounds: the request walks past the root")
    return x


def _path(get: Callable[[int], Node], index: int, root: int, with_self: bool) -> list[Node]:
    out = [get(index)] if with_self else []
    x = index
    while x != root:
        out.append(get(_flat.sibling(x)))
        x = _flat.parent(x)
    return out


class Generated:
    __slots__ = ("node", "upgrade", "additional")

    def __init__(self) -> None:
        self.node: list[Node] | None = None
        self.upgrade: list[Node] | None = None
        self.additional: list[Node] | None = None


def generate(
    length: int,
    get: Callable[[int], Node],
    *,
    block: tuple[int, int] | None = None,
    hash: tuple[int, int] | None = None,
    upgrade: tuple[int, int] | None = None,
) -> Generated:
    """The nodes answering a request against a tree of ``length`` blocks (``get`` reads a node)."""
    head = 2 * length
    frm = 2 * upgrade[0] if upgrade else 0
    to = frm + 2 * upgrade[1] if upgrade else head
    if frm >= to or to > head:
        raise ProofError(f"invalid upgrade {upgrade} for a log of length {length}")
    node: tuple[int, int, bool, int] | None = None  # flat index, nodes, is-block, last block index
    if block is not None:
        node = (2 * block[0], block[1], True, block[0])
    elif hash is not None:
        node = (hash[0], hash[1], False, _flat.leaf_span(hash[0])[1] - 1)
    if node is not None and (2 * (node[3] + 1) > head if not upgrade else False):
        raise ProofError("the requested block or hash is beyond the log")
    p = Generated()
    sub_tree = head
    if node is not None and (not upgrade or node[3] < upgrade[0]):
        sub_tree = nodes_to_root(node[0], node[1], to)
        p.node = _path(get, node[0], sub_tree, not node[2])
    elif node is not None and upgrade:
        sub_tree = node[0]
    if upgrade:
        p.upgrade = _upgrade(get, node, frm, to, sub_tree, p)
        if head > to:
            p.additional = _upgrade(get, None, to, head, head, p)
    return p


def _upgrade(get, node, frm: int, to: int, sub_tree: int, p: Generated) -> list[Node]:
    out: list[Node] = []
    connected = frm == 0
    for root in _flat.full_roots(to // 2):
        half = 1 << _flat.depth(root)
        if root + half < frm:
            continue  # the reader has this whole tree
        if not connected and _contains(root, frm - 2):
            connected = True
            target = frm - 2
            x = target
            while x != root:
                s = _flat.sibling(x)
                if s > target:
                    if node is not None and p.node is None and _contains(s, sub_tree):
                        p.node = _path(get, node[0], s, not node[2])
                    else:
                        out.append(get(s))
                x = _flat.parent(x)
            continue
        connected = True
        if node is not None and p.node is None and _contains(root, sub_tree):
            p.node = _path(get, node[0], root, not node[2])
            continue
        out.append(get(root))
    return out


def verify_block_path(
    index: int, value: bytes, nodes: list[Node], trusted: Callable[[int], Node | None]
) -> dict[int, Node] | None:
    """Hash block ``index`` up its siblings to a trusted node; returns every node on the way.

    None when the path ends at a node we do not hold (yet): the caller may wait for it.
    """
    cur = Node(2 * index, len(value), _crypto.leaf_hash(value))
    learnt = {cur.index: cur}
    for n in nodes:
        if n.index != _flat.sibling(cur.index):
            raise ProofError(f"block {index}: proof node {n.index} is not the sibling of {cur.index}")
        cur = parent_node(cur, n) if n.index > cur.index else parent_node(n, cur)
        learnt[n.index] = n
        learnt[cur.index] = cur
    top = trusted(cur.index)
    if top is None:
        return None
    if top != cur:
        raise ProofError(f"block {index} does not match the signed tree (tampered block or proof)")
    return learnt


def upgrade_length(start: int, length: int, additional: list[Node]) -> int:
    """The signed length an upgrade answer proves (``additional`` nodes extend it)."""
    n = start + length
    if additional:
        end = _flat.leaf_span(additional[-1].index)[1]
        if end <= n:
            raise ProofError("additional upgrade nodes do not extend the upgrade")
        n = end
    return n


class NodeSource:
    """Nodes from a proof plus a fallback (the reader's store); parents computed on demand."""

    def __init__(self, given: list[Node], fallback: Callable[[int], Node | None], limit: int = 4096):
        self.given = {n.index: n for n in given}
        self.fallback = fallback
        self.used: dict[int, Node] = {}
        self._budget = limit

    def get(self, x: int) -> Node | None:
        n = self.given.get(x) or self.used.get(x)
        if n is None:
            n = self.fallback(x)
        if n is None and _flat.depth(x) > 0:
            self._budget -= 1
            if self._budget < 0:
                raise ProofError("the proof needs too many computed nodes")
            left, right = _flat.children(x)
            a = self.get(left)
            b = self.get(right) if a is not None else None
            if a is None or b is None:
                return None
            n = parent_node(a, b)
        if n is not None:
            self.used[x] = n
        return n
