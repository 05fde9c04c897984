"""The writer parts of a writable log: append blocks, truncate.

Each function runs inside the store writer's transaction (``_writer``) and
computes from the log's pending state (``LogState``), returning the caller's
result and the new state; the writer writes the head once per log per batch,
unsigned: the log signs it when it is read (``_heads``), so an append makes no
signature. ``append_part`` is a *flat* part: it raises nothing but ``lmdb.Error``
after its first write, so a group commit can run it in the batch transaction
itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import lmdb

from . import _crypto, _flat
from ._crypto import LEAF_HASHER, PARENT_HASHER, ROOT, ROOT_SIZE, ROOTS_HASHER
from ._keys import BLOCK, FORK_VALUE, KEY, NODE, NODE_VALUE, block_key, fork_key, node_key
from ._tree import MAX_BLOCK_SIZE, MAX_LENGTH, Node
from ._writer import LogState
from .errors import BlockTooLarge, LengthMismatch, OutOfRange

if TYPE_CHECKING:
    from ._log import Log

_new = tuple.__new__  # a NamedTuple from a tuple of its fields, without its Python-level __new__


def blocks_arg(data: bytes | bytearray | memoryview | Iterable[bytes]) -> list[bytes]:
    if type(data) is bytes and len(data) <= MAX_BLOCK_SIZE:  # the common case, quickly
        return [data]
    if isinstance(data, bytes | bytearray | memoryview):
        blocks = [bytes(data)]
    elif isinstance(data, str):
        raise TypeError("append() takes bytes or a list of bytes, not str; encode it first")
    else:
        blocks = []
        for b in data:
            if not isinstance(b, bytes | bytearray | memoryview):
                raise TypeError(f"append() takes bytes blocks, got {type(b).__name__}")
            blocks.append(bytes(b))
    for b in blocks:
        if len(b) > MAX_BLOCK_SIZE:
            raise BlockTooLarge(
                f"a {len(b)}-byte block is over corelog.MAX_BLOCK_SIZE ({MAX_BLOCK_SIZE} bytes), the "
                "largest block replication can carry; split it into several blocks"
            )
    return blocks


def append_part(
    log: Log, txn: lmdb.Transaction, st: LogState, blocks: list[bytes], expected: int | None
) -> tuple[int, LogState]:
    """Append ``blocks`` after ``st`` (compare-and-append with ``expected``): the new length and state."""
    if expected is not None and st.length != expected:
        raise LengthMismatch(
            f"expected log {log.key.hex()[:16]}… at length {expected} but it is at {st.length}; "
            "another writer appended first: re-read and retry",
            expected=expected,
            actual=st.length,
        )
    start = st.length
    if st.contig < start:
        log._check_complete(st)  # raises IncompleteLog
    if not blocks:
        return start, st
    length = start + len(blocks)
    if length >= MAX_LENGTH:
        raise OutOfRange(f"a log holds fewer than {MAX_LENGTH} blocks")
    lid, pack = log.id, KEY.pack
    # nothing above writes; nothing below raises but lmdb.Error: the writer's "flat" part
    if len(blocks) == 1:  # the common case, without lists: block, leaf, the parents it completes
        # (the writer's transactions default to the data database: no ``db=`` per put;
        # _crypto.leaf_hash / parent_hash inlined; u64 size also starts the node's value)
        put, npack = txn.put, NODE_VALUE.pack
        block = blocks[0]
        size = len(block)
        u = npack(size)
        hasher = LEAF_HASHER.copy()
        hasher.update(u)
        hasher.update(block)
        h = hasher.digest()
        x = 2 * start
        put(pack(lid, BLOCK, start), block)
        put(pack(lid, NODE, x), u + h)
        roots = st.roots
        enc = st.encoded_roots
        if enc is None:
            enc = _crypto.encode_roots(roots)
        merges = ((start + 1) & ~start).bit_length() - 1
        if merges:
            keep = len(roots) - merges
            for left in reversed(roots[keep:]):  # the roots it completes, right to left
                size += left[1]
                x = (left[0] + x) >> 1
                u = npack(size)
                hasher = PARENT_HASHER.copy()
                hasher.update(u + left[2] + h)
                h = hasher.digest()
                put(pack(lid, NODE, x), u + h)
            roots = (*roots[:keep], _new(Node, (x, size, h)))
            enc = enc[: keep * ROOT_SIZE] + h + ROOT.pack(x, size)
        else:
            roots = (*roots, _new(Node, (x, size, h)))
            enc += h + ROOT.pack(x, size)
        hasher = ROOTS_HASHER.copy()
        hasher.update(enc)
        th = hasher.digest()
        # LogState(...) without its Python-level __new__
        return length, _new(
            LogState, (st.fork, length, length, st.byte_length + len(block), th, None, roots, st.record, enc)
        )
    else:
        # append_nodes' loop, writing (key, value) pairs as it goes: no Node per new node
        # _crypto.leaf_hash / parent_hash inlined (see _audit); u64 size is also the node value's start
        npack, leaf, parent = NODE_VALUE.pack, LEAF_HASHER.copy, PARENT_HASHER.copy
        stack: list[tuple[int, int, bytes]] = list(st.roots)
        block_items, node_items = [], []
        i = start
        for b in blocks:
            size = len(b)
            u = npack(size)
            hasher = leaf()
            hasher.update(u)
            hasher.update(b)
            h = hasher.digest()
            x = 2 * i
            block_items.append((pack(lid, BLOCK, i), b))
            node_items.append((pack(lid, NODE, x), u + h))
            merges = ((i + 1) & ~i).bit_length() - 1
            while merges:
                lx, lsize, lh = stack.pop()
                size += lsize
                x = (lx + x) >> 1
                u = npack(size)
                hasher = parent()
                hasher.update(u + lh + h)
                h = hasher.digest()
                node_items.append((pack(lid, NODE, x), u + h))
                merges -= 1
            stack.append((x, size, h))
            i += 1
        cur = txn.cursor(db=log._db)
        cur.putmulti(block_items)
        cur.putmulti(node_items)
        roots = tuple(Node(*r) for r in stack)
        enc = _crypto.encode_roots(roots)
        byte_length = st.byte_length + sum(map(len, blocks))
    th = _crypto.tree_hash_encoded(enc)
    return length, LogState(st.fork, length, length, byte_length, th, None, roots, st.record, enc)


def truncate_part(log: Log, txn: lmdb.Transaction, st: LogState, length: int) -> tuple[None, LogState]:
    """Cut the log to ``length`` blocks: fork + 1, the fork recorded; the new head is signed when read."""
    if not 0 <= length <= st.length:
        raise OutOfRange(f"cannot truncate to {length}: the log has {st.length} blocks")
    log._check_complete(st)
    roots = tuple(log._node(txn, r) for r in _flat.full_roots(length))
    fork = st.fork + 1
    delete_from(log, txn, length, st.length)
    txn.put(fork_key(log.id, fork), FORK_VALUE.pack(st.fork, length), db=log._db)
    th = _crypto.tree_hash(roots)
    return None, LogState(fork, length, length, sum(r.size for r in roots), th, None, roots, st.record)


def delete_from(log: Log, txn: lmdb.Transaction, length: int, old_length: int) -> None:
    """Delete every block >= length and every node not wholly inside [0, length)."""
    lid, db = log.id, log._db
    for start, prefix in (
        (block_key(lid, length), block_key(lid, 0)[:5]),
        (node_key(lid, 2 * length), node_key(lid, 0)[:5]),
    ):
        cur = txn.cursor(db=log._db)
        if cur.set_range(start):
            while cur.key()[: len(prefix)] == prefix:
                if not cur.delete():
                    break
    for x in _flat.crossing_ancestors(length, max(old_length, length)):
        txn.delete(node_key(lid, x), db=db)
