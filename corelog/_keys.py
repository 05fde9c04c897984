"""How a log's records are keyed and packed in the store's ``data`` database.

Every record of a log lives in ONE named database ("data"), keyed
``u32 log id || kind || u64 index``, kinds sorting head < forks < nodes < blocks.
One B-tree per commit keeps durable (fsync) commits close to raw LMDB, and the
blocks, the bulk of the data, sort last so appends fill pages at the right edge.
"""

from __future__ import annotations

import struct
from itertools import islice
from operator import itemgetter
from typing import Any

from ._tree import Node

# head value: fork, length (signed), contiguous length, byte length, tree hash, signature
HEAD = struct.Struct(">QQQQ32s64s")
HEAD_FORK_LENGTH = struct.Struct(">QQ")  # a head's first two fields: ``HEAD_FORK_LENGTH.unpack_from(raw)``
KEY = struct.Struct(">IBQ")
HEAD_KIND, FORK, NODE, BLOCK = 0, 1, 2, 3
_HEAD_KEY = struct.Struct(">IB")
NODE_VALUE = struct.Struct("<Q")  # size, then the 32-byte hash
FORK_VALUE = struct.Struct(">QQ")  # previous fork, length kept by the truncation


def block_key(log_id: int, index: int) -> bytes:
    return KEY.pack(log_id, BLOCK, index)


def node_key(log_id: int, index: int) -> bytes:
    return KEY.pack(log_id, NODE, index)


def fork_key(log_id: int, fork: int) -> bytes:
    return KEY.pack(log_id, FORK, fork)


def head_key(log_id: int) -> bytes:
    return _HEAD_KEY.pack(log_id, HEAD_KIND)


def node_value(n: tuple[int, int, bytes]) -> bytes:
    """A node's stored value (``n`` is a Node or a plain (index, size, hash) tuple)."""
    return NODE_VALUE.pack(n[1]) + n[2]


def decode_node(index: int, value: bytes) -> Node:
    return Node(index, NODE_VALUE.unpack_from(value)[0], bytes(value[8:40]))


DENSE_MAX = 1 << 17  # the longest range dense_values reads at once (an audit chunk's nodes fit)
_first = itemgetter(0)
_second = itemgetter(1)


def dense_values(txn: Any, db: Any, log_id: int, kind: int, lo: int, hi: int) -> list[bytes] | None:
    """The values of keys ``(log_id, kind, lo)`` .. ``(log_id, kind, hi - 1)`` if every one is
    stored, in order, and no other key lies between them; else None (look closer one by one)."""
    n = hi - lo
    if n <= 0:
        return []
    if n > DENSE_MAX:  # an open-ended range (e.g. "every node from lo"): no single read of it
        return None
    cur = txn.cursor(db=db)
    if not cur.set_key(KEY.pack(log_id, kind, lo)):
        return None
    items = list(islice(cur, n))  # sorted, distinct: the first, the last and the count pin them all
    if len(items) != n or items[-1][0] != KEY.pack(log_id, kind, hi - 1):
        return None
    if set(map(len, map(_first, items))) != {KEY.size}:
        return None
    return list(map(_second, items))
