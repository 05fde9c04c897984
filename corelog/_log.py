"""One signed Merkle log inside a Store: append, read, truncate, prove, verify, audit.

A ``Log`` is cheap: a handful of cached integers, the current roots (at most 64
nodes) and references to the Store's LMDB databases. Every change (append,
truncate, a verified download) is one LMDB write transaction holding the new
blocks, the new nodes and the new signed head, so a crash leaves either the old
head or the new one.

Writers keep their head in memory (they are the only writer: the Store holds an
exclusive lock). Logs of a read-only Store re-read the head on each access, so a
reader in another process always sees a consistent, committed head.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import lmdb

from . import _crypto, _flat
from ._tree import Node, Proof, Verified, append_nodes, needed_nodes, parent_node, verify
from .errors import (
    BlockNotAvailable,
    Conflict,
    Corrupt,
    InvalidKey,
    InvalidProof,
    InvalidSignature,
    NotWritable,
    OutOfRange,
    StoreFull,
)

if TYPE_CHECKING:
    from ._store import Store

_log = logging.getLogger("corelog")

# heads value: fork, length (signed), contiguous length, byte length, tree hash, signature
HEAD = struct.Struct(">QQQQ32s64s")
# Every record of a log lives in ONE named database ("data"), keyed
# u32 log id || kind || u64 index, kinds sorting head < forks < nodes < blocks.
# One B-tree per commit keeps durable (fsync) commits close to raw LMDB, and the
# blocks, the bulk of the data, sort last so appends fill pages at the right edge.
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


_AUDIT_CHUNK = 1 << 15


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


class _ConflictFound(Exception):
    def __init__(self, head: Head):
        self.head = head


def _node_value(n: Node) -> bytes:
    return NODE_VALUE.pack(n.size) + n.hash


def _decode_node(index: int, value: bytes) -> Node:
    return Node(index, NODE_VALUE.unpack_from(value)[0], value[8:40])


class Log:
    """A signed, append-only Merkle log (Hypercore 11 format) stored in a :class:`Store`.

    Get one with ``store.get(name)`` (writable) or ``store.get(key=...)`` (replica).
    """

    def __init__(self, store: Store, log_id: int, key: bytes, record: dict):
        self._store = store
        self._env: lmdb.Environment = store._env
        self._dbs = store._dbs
        self.id = log_id
        self.key = key
        self.discovery_key = _crypto.discovery_key(key)
        self.name: str | None = record.get("name")
        self._manifest: bytes | None = record.get("manifest")
        self._record = record
        self._secret: bytes | None = None
        self._hkey = head_key(log_id)
        self._blocks_db = self._data = store._dbs.data
        self._lock = threading.RLock()
        self._watchers: list[Callable[[Log], None]] = []
        self._roots: list[Node] = []
        self._closed = False
        if record.get("writable") and not store.readonly:
            seed = record.get("key_seed") or _crypto.derive_seed(store._seed, self.name or "")
            _, self._secret = _crypto.keypair_from_seed(seed)
        self._load()

    # --- state ---------------------------------------------------------------

    def _load(self, txn: lmdb.Transaction | None = None) -> None:
        if txn is None:
            with self._env.begin(buffers=False) as t:
                return self._load(t)
        raw = txn.get(self._hkey, db=self._data)
        if raw is None:
            self._fork = self._length = self._contig = self._byte_length = 0
            self._tree_hash = _crypto.tree_hash([])
            self._signature = b""
        else:
            (self._fork, self._length, self._contig, self._byte_length, self._tree_hash, self._signature) = (
                HEAD.unpack(raw)
            )
        if self._secret is not None:
            self._roots = [self._node(txn, r) for r in _flat.full_roots(self._length)]

    def _fresh(self) -> None:
        """Reload the head when another process may be writing (read-only stores)."""
        if self._store.readonly:
            self._load()

    @property
    def writable(self) -> bool:
        """True when this store holds the log's secret key (and is not read-only)."""
        return self._secret is not None

    @property
    def store(self) -> Store:
        """The Store this log lives in."""
        return self._store

    @property
    def owned(self) -> bool:
        """True when this store holds the writer's key pair (even if opened read-only)."""
        return bool(self._record.get("writable"))

    @property
    def manifest(self) -> bytes | None:
        """The 70-byte manifest, or None for a replica that has not received it yet."""
        return self._manifest

    @property
    def public_key(self) -> bytes | None:
        return None if self._manifest is None else _crypto.public_key_of(self._manifest)

    @property
    def length(self) -> int:
        """The signed length (a replica may not hold every block yet; see ``contiguous_length``)."""
        self._fresh()
        return self._length

    @property
    def contiguous_length(self) -> int:
        """How many blocks from index 0 are held locally (== length for a writer)."""
        self._fresh()
        return self._contig

    @property
    def byte_length(self) -> int:
        self._fresh()
        return self._byte_length

    @property
    def fork(self) -> int:
        """Incremented by every truncation."""
        self._fresh()
        return self._fork

    @property
    def conflict(self) -> dict | None:
        """Details if two valid heads with the same fork and length but different trees were seen."""
        return self._record.get("conflict")

    def head(self) -> Head:
        """The current signed head."""
        self._fresh()
        return Head(self._fork, self._length, self._tree_hash, self._signature, self._byte_length)

    def roots(self) -> list[Node]:
        """The roots of the current signed tree."""
        with self._env.begin(buffers=False) as txn:
            return [self._node(txn, r) for r in _flat.full_roots(self._length)]

    def __len__(self) -> int:
        return self.contiguous_length

    def __repr__(self) -> str:
        kind = "writable" if self.writable else "replica"
        label = f" {self.name!r}" if self.name else ""
        return f"<Log{label} {self.key.hex()[:16]}… {kind} length={self._length} fork={self._fork}>"

    # --- reading -------------------------------------------------------------

    def get(self, index: int) -> bytes:
        """Block ``index`` (negative counts from the end); raises OutOfRange / BlockNotAvailable."""
        contig = self.contiguous_length
        if index < 0:
            index += contig
        if not 0 <= index < self._length:
            raise OutOfRange(f"block {index} is outside the log (length {self._length})")
        with self._env.begin(buffers=False) as txn:
            data = txn.get(block_key(self.id, index), db=self._blocks_db)
        if data is None:
            if index >= contig:
                raise BlockNotAvailable(f"block {index} is not downloaded yet (have {contig}); sync first")
            raise Corrupt(f"block {index} of log {self.key.hex()} is missing from the store; run audit()")
        return data

    def __getitem__(self, item: int | slice) -> bytes | list[bytes]:
        if isinstance(item, slice):
            start, stop, step = item.indices(self.contiguous_length)
            if step != 1:
                return [self.get(i) for i in range(start, stop, step)]
            return list(self.iter(start, stop))
        return self.get(item)

    def __iter__(self) -> Iterator[bytes]:
        return self.iter()

    def iter(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """Blocks ``[start, stop)`` in order, read with a cursor in chunks."""
        stop = self.contiguous_length if stop is None else min(stop, self.contiguous_length)
        i = start
        while i < stop:
            chunk_end = min(stop, i + 4096)
            with self._env.begin(buffers=False) as txn:
                cur = txn.cursor(db=self._blocks_db)
                if not cur.set_key(block_key(self.id, i)):
                    raise Corrupt(f"block {i} of log {self.key.hex()} is missing; run audit()")
                out = []
                for k, v in cur:
                    if len(k) != KEY.size:  # the next log's head key
                        break
                    lid, kind, idx = KEY.unpack(k)
                    if lid != self.id or kind != BLOCK or idx >= chunk_end:
                        break
                    if idx != i + len(out):
                        raise Corrupt(f"block {i + len(out)} of log {self.key.hex()} is missing; run audit()")
                    out.append(v)
            if len(out) != chunk_end - i:
                raise Corrupt(f"block {i + len(out)} of log {self.key.hex()} is missing; run audit()")
            yield from out
            i = chunk_end

    def _node(self, txn: lmdb.Transaction, index: int) -> Node:
        """A tree node: stored, or computed from its children (replicas serving a newer head)."""
        raw = txn.get(node_key(self.id, index), db=self._data)
        if raw is not None:
            return _decode_node(index, raw)
        if _flat.depth(index) == 0:
            data = txn.get(block_key(self.id, index >> 1), db=self._blocks_db)
            if data is None:
                raise BlockNotAvailable(f"node {index} (block {index >> 1}) is not held by this store")
            return Node(index, len(data), _crypto.leaf_hash(data))
        left, right = _flat.children(index)
        return parent_node(self._node(txn, left), self._node(txn, right))

    def get_node(self, index: int) -> Node:
        with self._env.begin(buffers=False) as txn:
            return self._node(txn, index)

    # --- writing -------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._secret is None:
            if self._store.readonly:
                raise NotWritable("the store is open read-only; open it without readonly=True to write")
            raise NotWritable(
                f"log {self.key.hex()[:16]}… is a replica (this store does not hold its secret key); "
                "only the writer's store can append or truncate"
            )
        if self._closed:
            raise NotWritable("the store is closed")

    def _sign(self, root_hash: bytes, length: int, fork: int) -> bytes:
        return _crypto.sign(_crypto.signable(self.key, root_hash, length, fork), self._secret)  # type: ignore[arg-type]

    def append(self, data: bytes | Iterable[bytes]) -> int:
        """Append one block or a list of blocks; returns the new length.

        One signature and one write transaction per call, however many blocks.
        """
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
        with self._lock:
            self._check_writable()
            if not blocks:
                return self._length
            start = self._length
            new_nodes, roots = append_nodes(self._roots, start, blocks)
            length = start + len(blocks)
            byte_length = self._byte_length + sum(map(len, blocks))
            th = _crypto.tree_hash(roots)
            sig = self._sign(th, length, self._fork)
            lid = self.id
            pack = KEY.pack
            data_db = self._data
            blocks_db = self._blocks_db
            try:
                with self._env.begin(write=True) as txn:
                    if len(blocks) == 1:
                        txn.put(pack(lid, BLOCK, start), blocks[0], db=blocks_db)
                        for n in new_nodes:
                            txn.put(pack(lid, NODE, n.index), NODE_VALUE.pack(n.size) + n.hash, db=data_db)
                    else:
                        txn.cursor(db=blocks_db).putmulti(
                            [(pack(lid, BLOCK, i), b) for i, b in enumerate(blocks, start)]
                        )
                        txn.cursor(db=data_db).putmulti(
                            [(pack(lid, NODE, n.index), NODE_VALUE.pack(n.size) + n.hash) for n in new_nodes]
                        )
                    txn.put(
                        self._hkey,
                        HEAD.pack(self._fork, length, length, byte_length, th, sig),
                        db=self._data,
                    )
            except lmdb.MapFullError:
                raise StoreFull(
                    f"the store at {self._store.path} is full (map_size {self._store.map_size} bytes); "
                    "reopen it with a larger map_size"
                ) from None
            self._roots = roots
            self._length = self._contig = length
            self._byte_length = byte_length
            self._tree_hash = th
            self._signature = sig
        self._notify()
        return length

    def truncate(self, length: int) -> None:
        """Cut the log to ``length`` blocks: fork + 1, re-signed, one transaction."""
        with self._lock:
            self._check_writable()
            if not 0 <= length <= self._length:
                raise OutOfRange(f"cannot truncate to {length}: the log has {self._length} blocks")
            with self._env.begin(write=True) as txn:
                roots = [self._node(txn, r) for r in _flat.full_roots(length)]
                fork = self._fork + 1
                th = _crypto.tree_hash(roots)
                sig = self._sign(th, length, fork)
                byte_length = sum(r.size for r in roots)
                self._delete_from(txn, length, self._length)
                txn.put(fork_key(self.id, fork), FORK_VALUE.pack(self._fork, length), db=self._data)
                txn.put(self._hkey, HEAD.pack(fork, length, length, byte_length, th, sig), db=self._data)
            self._roots = roots
            self._fork, self._length, self._contig = fork, length, length
            self._byte_length, self._tree_hash, self._signature = byte_length, th, sig
        self._notify()

    def _delete_from(self, txn: lmdb.Transaction, length: int, old_length: int) -> None:
        """Delete every block >= length and every node not wholly inside [0, length)."""
        for db, start, prefix in (
            (self._blocks_db, block_key(self.id, length), block_key(self.id, 0)[:5]),
            (self._data, node_key(self.id, 2 * length), node_key(self.id, 0)[:5]),
        ):
            cur = txn.cursor(db=db)
            if cur.set_range(start):
                while cur.key()[: len(prefix)] == prefix:
                    if not cur.delete():
                        break
        for x in _flat.crossing_ancestors(length, max(old_length, length)):
            txn.delete(node_key(self.id, x), db=self._data)

    # --- watching -------------------------------------------------------------

    def watch(self, callback: Callable[[Log], None]) -> Callable[[], None]:
        """Call ``callback(log)`` after every committed change; returns an unsubscribe function.

        Called in the committing thread, after the transaction. Keep it short
        (e.g. wake a trio task); exceptions are logged, never raised into the writer.
        """
        self._watchers.append(callback)

        def unsubscribe() -> None:
            try:
                self._watchers.remove(callback)
            except ValueError:
                pass

        return unsubscribe

    def _notify(self) -> None:
        for cb in list(self._watchers):
            try:
                cb(self)
            except Exception:  # a watcher must never break the writer
                _log.exception("log watcher %r failed", cb)

    # --- proofs ----------------------------------------------------------------

    def proof(self, start: int, end: int | None = None, *, have: int = 0, upto: int | None = None) -> Proof:
        """Blocks ``[start, end)`` with what a verifier holding ``[0, have)`` needs to check them.

        The proof is against the current signed head. ``end`` defaults to
        ``start + 1``; ``proof(m, m, have=m)`` is an upgrade proof from m to the head.
        """
        self._fresh()
        end = start + 1 if end is None else end
        if not 0 <= have <= start <= end <= self._contig:
            raise OutOfRange(
                f"cannot prove [{start}, {end}) with prefix {have}: this store holds {self._contig} "
                f"of {self._length} blocks"
            )
        with self._env.begin(buffers=False) as txn:
            head = HEAD.unpack(txn.get(self._hkey, db=self._data) or HEAD.pack(0, 0, 0, 0, b"", b""))
            fork, length, contig = head[0], head[1], head[2]
            if end > contig:
                raise OutOfRange(f"cannot prove up to {end}: only {contig} blocks held")
            nodes = tuple(self._node(txn, x) for x in needed_nodes(length, have, start, end))
            blocks = tuple(self._blocks(txn, start, end))
        return Proof(fork, length, head[5], start, blocks, nodes, have, self._manifest)

    def upgrade_proof(self, from_length: int) -> Proof:
        """What a replica holding ``[0, from_length)`` needs to trust the current head."""
        return self.proof(from_length, from_length, have=from_length)

    def _blocks(self, txn: lmdb.Transaction, start: int, end: int) -> list[bytes]:
        out: list[bytes] = []
        if start == end:
            return out
        cur = txn.cursor(db=self._blocks_db)
        if cur.set_key(block_key(self.id, start)):
            for k, v in cur:
                if len(k) != KEY.size:
                    break
                lid, kind, idx = KEY.unpack(k)
                if lid != self.id or kind != BLOCK or idx >= end:
                    break
                out.append(v)
        if len(out) != end - start:
            raise Corrupt(f"blocks [{start}, {end}) of log {self.key.hex()} are incomplete; run audit()")
        return out

    def verify(self, proof: Proof) -> Verified:
        """Check a proof for this log without storing anything (``proof.have`` must be 0)."""
        manifest = self._check_manifest(proof.manifest)
        if proof.have:
            with self._env.begin(buffers=False) as txn:
                return verify(proof, self.key, _crypto.public_key_of(manifest), self._lookup(txn, proof.have))
        return verify(proof, self.key, _crypto.public_key_of(manifest))

    def _check_manifest(self, manifest: bytes | None) -> bytes:
        if manifest is not None:
            if _crypto.log_key(manifest) != self.key:
                raise InvalidProof("the manifest does not hash to this log's key: wrong log or forged data")
            if self._manifest is not None and manifest != self._manifest:
                raise InvalidProof("the manifest differs from the one stored for this log")
            return manifest
        if self._manifest is None:
            raise InvalidProof("this replica does not know the log's manifest yet; the proof must carry it")
        return self._manifest

    def _lookup(self, txn: lmdb.Transaction, have: int) -> Callable[[int], Node | None]:
        def lookup(x: int) -> Node | None:
            raw = txn.get(node_key(self.id, x), db=self._data)
            return None if raw is None else _decode_node(x, raw)

        return lookup

    def check_head(self, head: Head) -> bool:
        """Verify a head announced by a peer; True if it is newer than ours.

        Raises InvalidSignature if the signature is forged and Conflict (marking the
        log) if it is valid but disagrees with our head at the same fork and length.
        """
        manifest = self._manifest
        if manifest is None:
            return True  # cannot check yet; the proof that follows carries the manifest
        if not _crypto.verify(head.signable(self.key), head.signature, _crypto.public_key_of(manifest)):
            raise InvalidSignature(
                f"head (fork {head.fork}, length {head.length}) has a forged or replayed signature for "
                f"log {self.key.hex()[:16]}…"
            )
        self._fresh()
        if head.fork == self._fork and head.length == self._length and head.tree_hash != self._tree_hash:
            if self._signature:
                self._mark_conflict(head)
        if head.fork != self._fork:
            return head.fork > self._fork
        return head.length > self._length

    def _mark_conflict(self, head: Head) -> None:
        info = {
            "fork": head.fork,
            "length": head.length,
            "ours": self._tree_hash.hex(),
            "theirs": head.tree_hash.hex(),
            "their_signature": head.signature.hex(),
        }
        self._store._update_record(self, conflict=info)
        raise Conflict(
            f"log {self.key.hex()[:16]}… has two valid heads at fork {head.fork}, length {head.length} "
            "with different trees: the writer's key was used twice. The log is marked conflicted; "
            "stop replicating it and investigate the writer"
        )

    def common_prefix(self, fork: int, contiguous: int) -> int:
        """How much of a peer's log (at ``fork``, holding ``contiguous`` blocks) matches ours.

        Uses the truncation history; conservative (0) where history is missing.
        """
        self._fresh()
        if fork == self._fork:
            return min(contiguous, self._contig)
        if fork > self._fork:
            return 0
        keep = min(contiguous, self._contig)
        cur = self._fork
        with self._env.begin(buffers=False) as txn:
            while cur > fork:
                raw = txn.get(fork_key(self.id, cur), db=self._data)
                if raw is None:
                    return 0
                prev, kept = FORK_VALUE.unpack(raw)
                keep = min(keep, kept)
                cur = prev
        return keep

    def apply(self, proof: Proof) -> bool:
        """Verify a proof from a peer and commit its blocks, nodes and head in one transaction.

        Returns False (changing nothing) for stale data from an older head; raises
        InvalidProof / NotWritable / Conflict and writes nothing on anything invalid.
        A proof from a higher fork reorganises the replica to the common prefix.
        """
        if self._secret is not None:
            raise NotWritable("a writable log does not accept proofs from peers: it is the source of truth")
        if self._store.readonly:
            raise NotWritable("the store is open read-only")
        if self.conflict:
            raise Conflict(f"log {self.key.hex()[:16]}… is marked conflicted; refusing new data")
        manifest = self._check_manifest(proof.manifest)
        public_key = _crypto.public_key_of(manifest)
        with self._lock:
            try:
                with self._env.begin(write=True) as txn:
                    changed = self._apply(txn, proof, manifest, public_key)
            except _ConflictFound as found:  # the transaction was aborted; record the conflict alone
                self._mark_conflict(found.head)
            except lmdb.MapFullError:
                raise StoreFull(
                    f"the store at {self._store.path} is full; reopen it with a larger map_size"
                ) from None
            if changed:
                self._load()
        if changed:
            self._notify()
        return changed

    def _apply(self, txn: lmdb.Transaction, proof: Proof, manifest: bytes, public_key: bytes) -> bool:
        fork, length, contig = self._fork, self._length, self._contig
        reorg = proof.fork > fork
        if proof.fork < fork or (not reorg and proof.length < length):
            return False  # stale: an older head than ours
        if proof.have > contig or proof.start > (proof.have if reorg else contig):
            raise InvalidProof(
                f"proof starts at {proof.start} (assuming {proof.have} held) but this replica holds "
                f"{contig} blocks: it would leave a gap"
            )
        verified = verify(proof, self.key, public_key, self._lookup(txn, proof.have))
        if not reorg and proof.length == length and self._signature and verified.tree_hash != self._tree_hash:
            raise _ConflictFound(Head(proof.fork, proof.length, verified.tree_hash, proof.signature, 0))
        keep = contig
        if reorg:
            keep = proof.have
            self._delete_from(txn, keep, max(length, contig))
            txn.put(fork_key(self.id, proof.fork), FORK_VALUE.pack(fork, keep), db=self._data)
        new_contig = max(keep, proof.end) if proof.start <= keep else keep
        if self._manifest is None:
            self._store._update_record(self, manifest=manifest, txn=txn)
            self._manifest = manifest
        if proof.end > keep:
            txn.cursor(db=self._blocks_db).putmulti(
                [(block_key(self.id, i), b) for i, b in enumerate(proof.blocks, proof.start) if i >= keep]
            )
        txn.cursor(db=self._data).putmulti(
            [(node_key(self.id, x), _node_value(n)) for x, n in verified.nodes.items()]
        )
        same = (
            not reorg
            and proof.length == length
            and new_contig == contig
            and proof.signature == self._signature
        )
        if same:
            return False
        txn.put(
            self._hkey,
            HEAD.pack(
                proof.fork,
                proof.length,
                new_contig,
                verified.byte_length,
                verified.tree_hash,
                proof.signature,
            ),
            db=self._data,
        )
        return True

    # --- audit ---------------------------------------------------------------------

    def audit(self, progress: Callable[[int, int], None] | None = None) -> AuditReport:
        """Recompute every stored node from the blocks and check the signed head.

        Reads in one snapshot (a read transaction), so a concurrent writer does
        not disturb it. ``progress(done, total)`` is called after each chunk.
        """
        with self._env.begin(buffers=False) as txn:
            raw = txn.get(self._hkey, db=self._data)
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

            # completed subtrees so far (like append's roots), each with a flag saying it
            # sits above a problem already reported, so one bad block is reported once
            stack: list[tuple[Node, bool]] = []
            leaf_hash = _crypto.leaf_hash
            node_get = txn.get
            nodes_db = self._data
            i = 0
            while i < contig:
                end = min(contig, i + _AUDIT_CHUNK)
                try:
                    blocks = self._blocks(txn, i, end)
                except Corrupt:
                    blocks = []
                    for j in range(i, end):
                        v = txn.get(block_key(self.id, j), db=self._blocks_db)
                        if v is None:
                            bad(j, f"block {j} is missing")
                            v = b""
                        blocks.append(v)
                stored = self._stored_nodes(txn, 2 * i, 2 * end - 1)
                for j, data in enumerate(blocks, i):
                    node = Node(2 * j, len(data), leaf_hash(data))
                    tainted = stored.get(node.index) != _node_value(node)
                    if tainted:
                        bad(j, f"block {j} does not match its stored leaf node (block or node altered)")
                    merges = ((j + 1) & ~j).bit_length() - 1
                    for _ in range(merges):
                        left, left_tainted = stack.pop()
                        node = parent_node(left, node)
                        tainted = tainted or left_tainted
                        v = stored.get(node.index)
                        if v is None:
                            v = node_get(node_key(self.id, node.index), db=nodes_db)
                        if v != _node_value(node) and not tainted:
                            span = _flat.leaf_span(node.index)
                            bad(span[0], f"node {node.index} (blocks {span[0]}-{span[1] - 1}) is altered")
                            tainted = True
                    stack.append((node, tainted))
                i = end
                if progress is not None:
                    progress(i, contig)
            # roots of the signed length: computed (if we hold every block) or stored
            if contig == length:
                roots = [n for n, _ in stack]
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
            if sig and self._manifest is not None:
                if not _crypto.verify(
                    _crypto.signable(self.key, th, length, fork), sig, self.public_key or b""
                ):
                    bad(length, "the head signature does not verify (head or key altered)")
            elif not sig and length:
                bad(length, "the head is not signed")
        return AuditReport(self.key, length, contig, first_bad, tuple(problems))

    def _stored_nodes(self, txn: lmdb.Transaction, lo: int, hi: int) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        cur = txn.cursor(db=self._data)
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


def check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) != 32:
        raise InvalidKey("a log key is 32 bytes (pass bytes, e.g. bytes.fromhex(hex_key))")
    return key
