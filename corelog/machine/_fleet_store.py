"""What a fleet keeps in its store, and the one-transaction commit of many machines.

Layout (keys in the store's ``meta`` database, beside the log layer's own keys;
every fleet key starts with ``fleet/``)::

    fleet/seq                    u64: the last change-feed sequence number assigned
    fleet/m/<id>                 msgpack [kind, log key, state value, done, length]  (the machine index)
    fleet/f/<u64 seq>            msgpack [id, kind, log id, entry index]             (the change feed)
    fleet/c/<listener>           u64: the last feed seq the listener is done with    (its cursor)
    fleet/d/<listener>\\0<u64>   msgpack {id, kind, lid, index, error, attempts, ...} (a dead letter)

Each machine is an ordinary writable log named ``fleet:<id>`` (signed, Merkle,
replicable, auditable). A fleet commit writes, in ONE LMDB transaction, the new
logs' records, every machine's blocks, tree nodes and head, the index rows, the
feed rows and the listener cursors, so a crash leaves all of it or none of it.
Heads are written unsigned, as the log layer's own appends write them: the
``Log`` signs a head when it is read (``corelog._heads``), so a fleet commit
makes no signature.

A fleet batch is ONE part of the store's group-commit writer (``corelog._writer``),
so it shares the transaction and the fsync with whatever else the store commits.
Inside it the fleet writes its machines' blocks, nodes and heads itself (the
same keys and values as ``corelog._keys``), then tells any open ``Log`` object
(``Log._load``). A machine whose ``Log`` is open is checked against its head
first (compare-and-append), so appends made outside the fleet are reloaded,
never overwritten.
"""

from __future__ import annotations

import struct
from typing import Any

import lmdb
import msgpack

from corelog import _crypto, _flat
from corelog._heads import UNSIGNED
from corelog._keys import BLOCK, HEAD, KEY, NODE, NODE_VALUE, head_key
from corelog._tree import Node, append_nodes

from ._entries import _pack

U64 = struct.Struct(">Q")
SEQ_KEY = b"fleet/seq"
M_PREFIX = b"fleet/m/"
F_PREFIX = b"fleet/f/"
C_PREFIX = b"fleet/c/"
D_PREFIX = b"fleet/d/"
LOG_PREFIX = "fleet:"
MAX_ID_BYTES = 200  # LMDB keys are at most 511 bytes


def machine_key(mid: str) -> bytes:
    return M_PREFIX + mid.encode()


def feed_key(seq: int) -> bytes:
    return F_PREFIX + U64.pack(seq)


def cursor_key(listener: str) -> bytes:
    return C_PREFIX + listener.encode()


def dead_key(listener: str, seq: int) -> bytes:
    return D_PREFIX + listener.encode() + b"\x00" + U64.pack(seq)


def pack(value: Any) -> bytes:
    return _pack(value)  # a per-thread Packer (``msgpack.packb`` makes one, with its buffer, per call)


def unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False)


class LogState:
    """What a commit needs to extend one log: id, key, roots, length (no secret: heads are
    written unsigned, and the ``Log`` signs them when read)."""

    __slots__ = ("lid", "key", "name", "roots", "length", "byte_length", "fork", "manifest")

    def __init__(self, name: str, key: bytes, manifest: bytes):
        self.name = name
        self.key = key
        self.manifest = manifest
        self.lid = 0  # assigned when the log is created (in the commit that first writes it)
        self.roots: list[Node] = []
        self.length = 0
        self.byte_length = 0
        self.fork = 0


def new_log_state(store_seed: bytes, name: str) -> LogState:
    public, _ = _crypto.keypair_from_seed(_crypto.derive_seed(store_seed, name))
    manifest = _crypto.manifest_for(public)
    return LogState(name, _crypto.log_key(manifest), manifest)


def read_head(txn: lmdb.Transaction, dbs: Any, lid: int) -> tuple[int, int, int] | None:
    """(fork, length, byte length) of log ``lid``'s head, or None."""
    raw = txn.get(head_key(lid), db=dbs.data)
    if raw is None:
        return None
    fork, length, _contig, byte_length, _th, _sig = HEAD.unpack(raw)
    return fork, length, byte_length


def load_log_state(txn: lmdb.Transaction, dbs: Any, key: bytes) -> LogState | None:
    """The write state of an existing writable log (None if the store does not hold it)."""
    raw = txn.get(key, db=dbs.logs)
    if raw is None:
        return None
    record = msgpack.unpackb(raw)
    if not record.get("writable"):
        return None
    st = LogState(record.get("name") or "", key, record.get("manifest"))
    st.lid = record["id"]
    head = read_head(txn, dbs, st.lid)
    if head is not None:
        st.fork, st.length, st.byte_length = head
    st.roots = [read_node(txn, dbs, st.lid, r) for r in _flat.full_roots(st.length)]
    return st


def read_node(txn: lmdb.Transaction, dbs: Any, lid: int, index: int) -> Node:
    raw = txn.get(KEY.pack(lid, NODE, index), db=dbs.data)
    if raw is None:
        from corelog.errors import Corrupt

        raise Corrupt(f"tree node {index} of log {lid} is missing; run `corelog audit`")
    return Node(index, NODE_VALUE.unpack_from(raw)[0], bytes(raw[8:40]))


def read_block(txn: lmdb.Transaction, dbs: Any, lid: int, index: int) -> bytes | None:
    raw = txn.get(KEY.pack(lid, BLOCK, index), db=dbs.data)
    return None if raw is None else bytes(raw)


def create_log(txn: lmdb.Transaction, store: Any, st: LogState) -> None:
    """Write a new writable log's record, name and discovery-key row (its head is written by ``append``)."""
    dbs = store._dbs
    existing = txn.get(st.key, db=dbs.logs)
    if existing is not None:  # a log made outside the fleet under this name, or a replica of it
        from .errors import MachineError

        raise MachineError(f"the store already holds a log {st.name!r}; a fleet machine cannot take it over")
    record = {"id": store._new_id(txn), "name": st.name, "writable": True, "manifest": st.manifest}
    st.lid = record["id"]
    txn.put(st.key, store._pack_record(record), db=dbs.logs)
    txn.put(st.name.encode(), st.key, db=dbs.names)
    if getattr(dbs, "dkeys", None) is not None:
        txn.put(_crypto.discovery_key(st.key), st.key, db=dbs.dkeys)


def put_blocks(
    txn: lmdb.Transaction, dbs: Any, st: LogState, blocks: list[bytes]
) -> tuple[list[Node], int, int, bytes]:
    """Put ``blocks`` and their tree nodes; returns (roots, length, byte length, tree hash) for
    the head that ``put_head`` writes (``st`` is not modified)."""
    start = st.length
    new_nodes, roots = append_nodes(st.roots, start, blocks)
    length = start + len(blocks)
    byte_length = st.byte_length + sum(map(len, blocks))
    lid, kp, data = st.lid, KEY.pack, dbs.data
    put = txn.put
    for i, b in enumerate(blocks, start):
        put(kp(lid, BLOCK, i), b, db=data)
    for n in new_nodes:
        put(kp(lid, NODE, n.index), NODE_VALUE.pack(n.size) + n.hash, db=data)
    return roots, length, byte_length, _crypto.tree_hash(roots)


def put_head(txn: lmdb.Transaction, dbs: Any, st: LogState, length: int, byte_length: int, th: bytes) -> None:
    """Write the machine log's new head, unsigned: its ``Log`` signs it when read (``corelog._heads``)."""
    txn.put(head_key(st.lid), HEAD.pack(st.fork, length, length, byte_length, th, UNSIGNED), db=dbs.data)


# --- reading (also from a read-only store: the CLI) -------------------------------------


def index_row(txn: lmdb.Transaction, dbs: Any, mid: str) -> list | None:
    raw = txn.get(machine_key(mid), db=dbs.meta)
    return None if raw is None else unpack(bytes(raw))


def iter_index(txn: lmdb.Transaction, dbs: Any, start: str = ""):
    """Yield (id, [kind, key, state, done, length]) in id order."""
    cur = txn.cursor(db=dbs.meta)
    if not cur.set_range(M_PREFIX + start.encode()):
        return
    for kb, vb in cur:
        k, v = bytes(kb), bytes(vb)
        if not k.startswith(M_PREFIX):
            break
        yield k[len(M_PREFIX) :].decode(), unpack(v)


def last_context(txn: lmdb.Transaction, dbs: Any, key: bytes) -> Any:
    """The context in the last entry of the log with ``key`` (for a service restarted on open)."""
    raw = txn.get(key, db=dbs.logs)
    if raw is None:
        return None
    lid = msgpack.unpackb(raw)["id"]
    head = read_head(txn, dbs, lid)
    block = read_block(txn, dbs, lid, head[1] - 1) if head and head[1] else None
    return None if block is None else unpack(block).get("context")


def last_seq(txn: lmdb.Transaction, dbs: Any) -> int:
    raw = txn.get(SEQ_KEY, db=dbs.meta)
    return 0 if raw is None else U64.unpack(raw)[0]


def read_feed(txn: lmdb.Transaction, dbs: Any, after: int, limit: int) -> list[tuple[int, list]]:
    """Up to ``limit`` feed rows with seq > ``after``: [(seq, [id, kind, lid, index])]."""
    out: list[tuple[int, list]] = []
    cur = txn.cursor(db=dbs.meta)
    if not cur.set_range(feed_key(after + 1)):
        return out
    for kb, vb in cur:
        k, v = bytes(kb), bytes(vb)
        if not k.startswith(F_PREFIX) or len(out) >= limit:
            break
        out.append((U64.unpack(k[len(F_PREFIX) :])[0], unpack(v)))
    return out


def cursors(txn: lmdb.Transaction, dbs: Any) -> dict[str, int]:
    out = {}
    cur = txn.cursor(db=dbs.meta)
    if cur.set_range(C_PREFIX):
        for kb, vb in cur:
            k, v = bytes(kb), bytes(vb)
            if not k.startswith(C_PREFIX):
                break
            out[k[len(C_PREFIX) :].decode()] = U64.unpack(v)[0]
    return out


def dead_letters(txn: lmdb.Transaction, dbs: Any, listener: str | None = None) -> list[dict]:
    """Every parked delivery (optionally of one listener), in listener then seq order."""
    prefix = D_PREFIX + (listener.encode() + b"\x00" if listener is not None else b"")
    out = []
    cur = txn.cursor(db=dbs.meta)
    if cur.set_range(prefix):
        for kb, vb in cur:
            k, v = bytes(kb), bytes(vb)
            if not k.startswith(prefix):
                break
            name, _, seq = k[len(D_PREFIX) :].partition(b"\x00")
            row = unpack(v)
            row["listener"] = name.decode()
            row["seq"] = U64.unpack(seq)[0]
            out.append(row)
    return out


def requeue(txn: lmdb.Transaction, dbs: Any, listener: str | None = None, seq: int | None = None) -> int:
    """Mark parked deliveries for redelivery (by the fleet, when it next runs); returns how many."""
    n = 0
    for row in dead_letters(txn, dbs, listener):
        if seq is not None and row["seq"] != seq:
            continue
        name, s = row.pop("listener"), row.pop("seq")
        row["requeued"] = True
        txn.put(dead_key(name, s), pack(row), db=dbs.meta)
        n += 1
    return n
