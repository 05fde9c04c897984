"""Audit: recompute a log's tree from its blocks and check the signed head.

A head of a log this store writes is stored unsigned (``_heads``): audit signs it
(and checks the signature against the manifest's public key, so a key pair that
does not match the log is caught), and since no stored signature then covers
the head's fork, checks it against the truncation records instead (the head's
fork is the last one recorded, or 0 if there is none), as it checks the length
and tree hash against the recomputed tree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import lmdb

from . import _crypto, _flat
from ._heads import UNSIGNED
from ._keys import FORK, HEAD, KEY, NODE, NODE_VALUE, block_key, dense_values, node_key
from ._tree import MAX_BYTES, Node
from .errors import BlockNotAvailable, Corrupt, InvalidProof

if TYPE_CHECKING:
    from ._log import Log

_AUDIT_CHUNK = 1 << 15


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The result of :meth:`Log.audit`. ``ok`` is true when nothing is wrong."""

    key: bytes
    length: int
    checked: int
    first_bad: int | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok


def audit(self: Log, progress: Callable[[int, int], None] | None = None) -> AuditReport:
    """Recompute every stored node from the blocks and check the signed head.

    Reads in one snapshot (a read transaction), so a concurrent writer does
    not disturb it. ``progress(done, total)`` is called after each chunk.
    """
    with self._read() as txn:
        raw = txn.get(self._hkey, db=self._db)
        if raw is None:
            return AuditReport(self.key, 0, 0, None, ())
        fork, length, contig, byte_length, th, sig = HEAD.unpack(raw)
        problems: list[str] = []
        first_bad: int | None = None

        def bad(index: int, msg: str) -> None:
            nonlocal first_bad
            if first_bad is None or index < first_bad:
                first_bad = index
            problems.append(msg)

        # completed subtrees so far (like append's roots) as (index, size, hash, tainted):
        # tainted says it sits above a problem already reported, so one bad block is reported once
        stack: list[tuple[int, int, bytes, bool]] = []
        # _crypto.leaf_hash / parent_hash inlined: H(0x00 || u64 size || block), H(0x01 || u64
        # size || left || right); a node's stored value is u64 size (the same bytes) || hash
        # (BLAKE2b states that have hashed the prefix, copied per hash: ``_crypto.LEAF_HASHER``)
        npack, leaf, parent = NODE_VALUE.pack, _crypto.LEAF_HASHER.copy, _crypto.PARENT_HASHER.copy
        node_get = txn.get
        nodes_db = self._db
        lid = self.id
        i = 0
        while i < contig:
            end = min(contig, i + _AUDIT_CHUNK)
            try:
                blocks = self._blocks(txn, i, end)
            except Corrupt:
                blocks = []
                for j in range(i, end):
                    v = txn.get(block_key(lid, j), db=self._db)
                    if v is None:
                        bad(j, f"block {j} is missing")
                        v = b""
                    blocks.append(v)
            stored = stored_nodes(self, txn, 2 * i, 2 * end - 1)
            get = stored.get
            j = i
            for data in blocks:
                size = len(data)
                u = npack(size)
                hasher = leaf()
                hasher.update(u)
                hasher.update(data)
                h = hasher.digest()
                x = 2 * j
                tainted = get(x) != u + h
                if tainted:
                    bad(j, f"block {j} does not match its stored leaf node (block or node altered)")
                merges = ((j + 1) & ~j).bit_length() - 1
                while merges:
                    lx, lsize, lh, left_tainted = stack.pop()
                    size += lsize
                    if size > MAX_BYTES:
                        raise InvalidProof(f"a tree node of {size} bytes is over the {MAX_BYTES}-byte limit")
                    x = (lx + x) >> 1
                    u = npack(size)
                    hasher = parent()
                    hasher.update(u + lh + h)
                    h = hasher.digest()
                    tainted = tainted or left_tainted
                    v = get(x)
                    if v is None:
                        v = node_get(node_key(lid, x), db=nodes_db)
                    if v != u + h and not tainted:
                        span = _flat.leaf_span(x)
                        bad(span[0], f"node {x} (blocks {span[0]}-{span[1] - 1}) is altered")
                        tainted = True
                    merges -= 1
                stack.append((x, size, h, tainted))
                j += 1
            i = end
            if progress is not None:
                progress(i, contig)
        # roots of the signed length: computed (if we hold every block) or stored
        if contig == length:
            roots = [Node(x, size, h) for x, size, h, _ in stack]
        else:
            try:
                roots = [self._node(txn, r) for r in _flat.full_roots(length)]
            except BlockNotAvailable:
                roots = []
                bad(contig, "a node needed for the signed head is missing")
        if [r.index for r in roots] != _flat.full_roots(length):
            bad(0, "the stored tree does not have the roots of the signed length")
        computed = _crypto.tree_hash(roots)
        if computed != th:
            bad(first_bad if first_bad is not None else 0, "the tree hash does not match the stored head")
        if sum(r.size for r in roots) != byte_length:
            bad(first_bad if first_bad is not None else 0, "the byte length does not match the tree")
        if sig == UNSIGNED and self.owned:  # our own head, signed when read: sign it now
            if last_fork(self, txn) != fork:
                bad(first_bad if first_bad is not None else 0, "the head's fork is not the last one recorded")
            sig = self._signature(fork, length, contig, th) or UNSIGNED
        if sig != UNSIGNED and self._manifest is not None:
            if not _crypto.verify(_crypto.signable(self.key, th, length, fork), sig, self.public_key or b""):
                bad(length, "the head signature does not verify (head or key altered)")
        elif sig == UNSIGNED and length:
            bad(length, "the head is not signed")
    return AuditReport(self.key, length, contig, first_bad, tuple(problems))


def stored_nodes(self: Log, txn: lmdb.Transaction, lo: int, hi: int) -> dict[int, bytes]:
    dense = dense_values(txn, self._db, self.id, NODE, lo, hi)
    if dense is not None:  # every node of a whole chunk: no key to decode
        return dict(zip(range(lo, hi), dense, strict=True))
    out: dict[int, bytes] = {}
    cur = txn.cursor(db=self._db)
    if cur.set_range(node_key(self.id, lo)):
        unpack = KEY.unpack
        for k, v in cur:
            if len(k) != KEY.size:
                break
            lid, kind, idx = unpack(k)
            if lid != self.id or kind != NODE or idx >= hi:
                break
            out[idx] = v
    return out


def last_fork(self: Log, txn: lmdb.Transaction) -> int:
    """The fork of the last truncation recorded for the log (0: none)."""
    cur = txn.cursor(db=self._db)
    # the key just before the log's first node key: its last fork record, if it has any
    if cur.prev() if cur.set_range(node_key(self.id, 0)) else cur.last():
        key = cur.key()
        if len(key) == KEY.size:
            lid, kind, fork = KEY.unpack(key)
            if lid == self.id and kind == FORK:
                return fork
    return 0
