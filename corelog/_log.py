"""One signed Merkle log inside a Store: append, read, truncate, prove, verify, wait.

A ``Log`` is cheap: its committed state (``LogState``: head, roots of at most 64
nodes, the log's record) and references to the Store's LMDB databases. Every
change (append, truncate, a verified download, a record update) is a part of a
group commit by the store's writer (``_writer``): one LMDB transaction holding
the new blocks, nodes and head, so a crash leaves either the old head or the
new one. The writer publishes the new state and bumps ``version``, which
``wait_changed`` / ``wait_changed_async`` wait on.

Heads of a log this store writes are stored unsigned and signed when read
(``head``, ``proof``, ``check_head``, ``audit``: see ``_heads``), once per head,
cached; a replica's heads carry the signature its peer sent.

Writers keep their state in memory (they are the only writer: the Store holds an
exclusive lock). Logs of a read-only Store re-read the head on each access, so a
reader in another process always sees a consistent, committed head (and its
``version`` moves when it does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import lmdb

from . import _apply, _audit, _crypto, _flat
from ._append import append_part, blocks_arg, truncate_part
from ._changes import Changes
from ._heads import UNSIGNED, Head, stored_signature
from ._keys import (
    BLOCK,
    HEAD,
    KEY,
    block_key,
    decode_node,
    dense_values,
    head_key,
    node_key,
)
from ._reading import Reading
from ._tree import MAX_BLOCK_SIZE, Node, Proof, Verified, needed_nodes, parent_node
from ._wakers import wake_all
from ._writer import LogState, signed
from .errors import (
    BlockNotAvailable,
    Corrupt,
    IncompleteLog,
    InvalidKey,
    NotWritable,
    OutOfRange,
    StoreClosed,
)

if TYPE_CHECKING:
    from ._audit import AuditReport
    from ._store import Store

EMPTY_TREE_HASH = _crypto.tree_hash([])

__all__ = ["HEAD", "Head", "Log", "block_key", "check_key", "head_key", "node_key"]


class Log(Changes):
    """A signed, append-only Merkle log (Hypercore 11 format) stored in a :class:`Store`.

    Get one with ``store.get(name)`` (writable) or ``store.get(key=...)`` (replica).
    A Store hands out one Log object per log; it is safe to share between threads.
    """

    __slots__ = (
        "__weakref__",
        "_db",
        "_env",
        "_hkey",
        "_manifest",
        "_raw",
        "_secret",
        "_sigc",
        "_signer",
        "_st",
        "_store",
        "discovery_key",
        "id",
        "key",
        "name",
    )

    def __init__(
        self,
        store: Store,
        log_id: int,
        key: bytes,
        record: dict,
        state: LogState | None = None,
        secret: bytes | None = None,
    ):
        self._store = store
        self._env: lmdb.Environment = store._env
        self._db = store._dbs.data
        self.id = log_id
        self.key = key
        self.discovery_key = _crypto.discovery_key(key)
        self.name: str | None = record.get("name")
        self._secret: bytes | None = None
        self._signer: bytes | None = None  # the secret a read-only store signs with in memory
        # the last head signed on demand: (tree hash, length, fork, signature), replaced whole
        self._sigc: tuple[bytes, int, int, bytes] | None = None
        self._hkey = head_key(log_id)
        self._raw: bytes | None = None  # the head as last read (read-only stores)
        self._version = 0
        self._waiters: list[Callable[[], None]] | None = None
        self._watchers: dict[int, Any] | None = None
        if record.get("writable") and not store.readonly:
            self._secret = secret or self._derive_secret(record)
        if state is None:
            with self._read() as txn:
                state = self._read_state(txn, record)
        self._st: LogState = state
        self._manifest: bytes | None = record.get("manifest")

    # --- state ---------------------------------------------------------------

    def _derive_secret(self, record: dict) -> bytes:
        seed = record.get("key_seed") or _crypto.derive_seed(self._store._seed, self.name or "")
        return _crypto.keypair_from_seed(seed)[1]

    def _signed(self, st: LogState) -> LogState:
        """``st`` with its signature (a head of this store's own log is signed here, when read)."""
        if st.signature is not None:
            return st
        return signed(st, self._signature(st.fork, st.length, st.contig, st.tree_hash))

    def _signature(self, fork: int, length: int, contig: int, tree_hash: bytes) -> bytes:
        """The signature of our own head (fork, length, tree hash), made on demand and cached
        (Ed25519 is deterministic: the bytes a commit would have stored; see ``_heads``).
        ``b""`` (unsigned) if this store lacks blocks of it: it never signs over missing data."""
        c = self._sigc
        if c is not None and c[0] == tree_hash and c[1] == length and c[2] == fork:
            return c[3]
        if contig < length:
            return b""
        secret = self._secret or self._signer
        if secret is None:  # a read-only store holds the seed: it signs in memory, writes nothing
            secret = self._signer = self._derive_secret(self._st.record)
        sig = _crypto.sign(_crypto.signable(self.key, tree_hash, length, fork), secret)
        self._sigc = (tree_hash, length, fork, sig)
        return sig

    def _load(self) -> None:
        """Re-read the committed state from disk and publish it (bumping ``version``).

        For code that commits to this log's records in its own LMDB transaction
        (not through the store writer) and must tell the Log object afterwards.
        """
        with self._read() as txn:
            rec = txn.get(self.key, db=self._store._dbs.logs)
            record = self._st.record if rec is None else self._store._unpack_record(rec)
            st = self._read_state(txn, record)
        self._publish(st)

    def _read_state(self, txn: lmdb.Transaction, record: dict) -> LogState:
        raw = txn.get(self._hkey, db=self._db)
        self._raw = None if raw is None else bytes(raw)
        owned = bool(record.get("writable"))
        if raw is None:  # nothing committed yet: the empty head (signed when read, if ours)
            return LogState(0, 0, 0, 0, EMPTY_TREE_HASH, None if owned else b"", (), record)
        fork, length, contig, byte_length, th, sig = HEAD.unpack(raw)
        roots: tuple[Node, ...] = ()
        if self._secret is not None and contig >= length:
            roots = tuple(self._node(txn, r) for r in _flat.full_roots(length))
        return LogState(fork, length, contig, byte_length, th, stored_signature(sig, owned), roots, record)

    def _fresh(self) -> LogState:
        """The committed state; re-read when another process may be writing (read-only stores)."""
        if not self._store.readonly:
            return self._st
        with self._read() as txn:
            raw = txn.get(self._hkey, db=self._db)
            if raw is not None and raw != self._raw:
                rec = txn.get(self.key, db=self._store._dbs.logs)
                record = self._st.record if rec is None else self._store._unpack_record(rec)
                self._st = self._read_state(txn, record)
                self._manifest = record.get("manifest")
                self._version += 1
        return self._st

    def _read(self) -> Reading:
        """A read transaction (use with ``with``); StoreClosed once the store is closed (``_reading``)."""
        return Reading(self._store)

    def _publish(self, st: LogState, wakes: list[Callable[[], None]] | None = None) -> None:
        """Install a committed state (the writer calls this after the commit) and wake waiters
        (or hand them to ``wakes``, for the writer to wake with its callers in one go)."""
        self._st = st
        self._manifest = st.record.get("manifest")
        mu = self._store._watch_mu
        mu.acquire()  # (not ``with``: every append's path; nothing here raises)
        self._version += 1
        waiters, self._waiters = self._waiters, None
        mu.release()
        if waiters:
            if wakes is None:
                wake_all(waiters)
            else:
                wakes.extend(waiters)

    def _put_head(self, txn: lmdb.Transaction, st: LogState) -> None:
        """Write the head (in a writer transaction: its default database is the data one)."""
        txn.put(
            self._hkey,
            HEAD.pack(st.fork, st.length, st.contig, st.byte_length, st.tree_hash, st.signature or UNSIGNED),
        )

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
        return bool(self._st.record.get("writable"))

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
        return self._fresh().length

    @property
    def contiguous_length(self) -> int:
        """How many blocks from index 0 are held locally (== length for a writer)."""
        return self._fresh().contig

    @property
    def byte_length(self) -> int:
        return self._fresh().byte_length

    @property
    def fork(self) -> int:
        """Incremented by every truncation."""
        return self._fresh().fork

    @property
    def version(self) -> int:
        """A counter bumped by every committed change (append, truncate, download, reorg, conflict).

        Per process and per Store: it starts at 0 when the log is opened. On a
        read-only store it moves when a re-read finds a new head (any property
        access or ``wait_changed`` re-reads).
        """
        self._fresh()
        return self._version

    @property
    def conflict(self) -> dict | None:
        """Details if the writer was caught signing two different trees in one fork (equivocation).

        A dict with ``fork``, ``length`` and ``tree_hash``/``signature`` of both
        heads (``ours_*`` and ``theirs_*``) and where they disagree (``node``).
        A conflicted replica refuses further data from peers.
        """
        if self._store.readonly:
            with self._read() as txn:
                rec = txn.get(self.key, db=self._store._dbs.logs)
            if rec is not None:
                return self._store._unpack_record(rec).get("conflict")
        return self._st.record.get("conflict")

    def head(self) -> Head:
        """The current signed head (a head of a log this store writes is signed here, once)."""
        st = self._fresh()
        sig = st.signature
        if sig is None:
            sig = self._signature(st.fork, st.length, st.contig, st.tree_hash)
        return Head(st.fork, st.length, st.tree_hash, sig, st.byte_length)

    def roots(self) -> list[Node]:
        """The roots of the current signed tree."""
        st = self._fresh()
        with self._read() as txn:
            return [self._node(txn, r) for r in _flat.full_roots(st.length)]

    def __len__(self) -> int:
        return self.contiguous_length

    def __repr__(self) -> str:
        kind = "writable" if self.writable else "replica"
        label = f" {self.name!r}" if self.name else ""
        st = self._st
        return f"<Log{label} {self.key.hex()[:16]}… {kind} length={st.length} fork={st.fork}>"

    # --- reading -------------------------------------------------------------

    def get(self, index: int) -> bytes:
        """Block ``index`` (negative counts from the end); raises OutOfRange / BlockNotAvailable."""
        st = self._fresh()
        if type(index) is not int:
            index = _index(index)
        if index < 0:
            index += st.contig
        if not 0 <= index < st.length:
            raise OutOfRange(f"block {index} is outside the log (length {st.length})")
        with self._read() as txn:
            data = txn.get(block_key(self.id, index), db=self._db)
        if data is None:
            if index >= st.contig:
                raise BlockNotAvailable(f"block {index} is not downloaded yet (have {st.contig}); sync first")
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
        """Blocks ``[start, stop)`` in order (``stop`` clamps to what is held), read in chunks."""
        start = _index(start)
        if start < 0 or (stop is not None and _index(stop) < 0):
            raise OutOfRange(f"iter({start}, {stop}): indexes are >= 0 (use log[-n:] to count from the end)")
        contig = self.contiguous_length
        stop = contig if stop is None else min(stop, contig)
        i = start
        while i < stop:
            chunk_end = min(stop, i + 4096)
            with self._read() as txn:
                out = self._blocks(txn, i, chunk_end)
            yield from out
            i = chunk_end

    def _node(self, txn: lmdb.Transaction, index: int) -> Node:
        """A tree node: stored, or computed from its children (replicas serving a newer head)."""
        raw = txn.get(node_key(self.id, index), db=self._db)
        if raw is not None:
            return decode_node(index, raw)
        if _flat.depth(index) == 0:
            data = txn.get(block_key(self.id, index >> 1), db=self._db)
            if data is None:
                raise BlockNotAvailable(f"node {index} (block {index >> 1}) is not held by this store")
            return Node(index, len(data), _crypto.leaf_hash(data))
        left, right = _flat.children(index)
        return parent_node(self._node(txn, left), self._node(txn, right))

    def get_node(self, index: int) -> Node:
        with self._read() as txn:
            return self._node(txn, index)

    def _blocks(self, txn: lmdb.Transaction, start: int, end: int) -> list[bytes]:
        # one read of the whole range in C when it is complete (``dense_values``: checked by its
        # first and last keys, count and key lengths: a stray key cannot stand in for a block)
        out: list[bytes] | None = dense_values(txn, self._db, self.id, BLOCK, start, end)
        if out is not None:
            return out
        out = []  # something is missing: find the first gap
        cur = txn.cursor(db=self._db)
        if cur.set_key(block_key(self.id, start)):
            for k, v in cur:
                if len(k) != KEY.size:
                    break
                lid, kind, idx = KEY.unpack(k)
                if lid != self.id or kind != BLOCK or idx >= end:
                    break
                if idx != start + len(out):
                    break
                out.append(v)
        if len(out) != end - start:
            raise Corrupt(f"block {start + len(out)} of log {self.key.hex()} is missing; run audit()")
        return out

    # --- writing -------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._store._closed:
            raise StoreClosed(f"the store at {self._store.path} is closed; reopen it to write")
        if self._secret is None:
            if self._store.readonly:
                raise NotWritable("the store is open read-only; open it without readonly=True to write")
            raise NotWritable(
                f"log {self.key.hex()[:16]}… is a replica (this store does not hold its secret key); "
                "only the writer's store can append or truncate"
            )

    def _check_complete(self, st: LogState) -> None:
        if st.contig < st.length:
            raise IncompleteLog(
                f"this store writes log {self.key.hex()[:16]}… but holds only {st.contig} of its "
                f"{st.length} blocks (restored from its seed?); replicate the rest from a peer before "
                "writing, or the new head would sign blocks it does not have"
            )

    def append(self, data: bytes | Iterable[bytes], *, expected_length: int | None = None) -> int:
        """Append one block or a list of blocks; returns the new length.

        Atomic: all blocks or none. With ``expected_length`` it appends only if
        the log has exactly that length, else raises :class:`LengthMismatch`
        (compare-and-append). Returns once durable (``sync=True`` stores);
        concurrent appends, from any threads and to any logs of the store, share
        one transaction and one fsync (see ``Store.batch``).
        """
        if type(data) is bytes and len(data) <= MAX_BLOCK_SIZE:  # the common case, quickly
            blocks = [data]
        else:
            blocks = blocks_arg(data)
        if self._secret is None or self._store._closed:
            self._check_writable()  # raises
        return self._store._writer.run(
            self, lambda txn, st: append_part(self, txn, st, blocks, expected_length), True
        )

    async def append_async(self, data: bytes | Iterable[bytes], *, expected_length: int | None = None) -> int:
        """``append`` for trio: waits for the group commit without blocking the event loop.

        A waiting task holds no thread; only the task that leads a commit runs
        it in a worker thread (``trio.to_thread``, default limiter). Cancelled
        before its commit started, nothing is written; once started, the append
        completes and its result is returned (the cancellation surfaces at the
        next checkpoint).
        """
        blocks = blocks_arg(data)
        self._check_writable()
        return await self._store._writer.run_async(
            self, lambda txn, st: append_part(self, txn, st, blocks, expected_length), True
        )

    def truncate(self, length: int) -> None:
        """Cut the log to ``length`` blocks: fork + 1 (the new head signed when read), one transaction."""
        length = _index(length)
        self._check_writable()
        self._store._writer.run(self, lambda txn, st: truncate_part(self, txn, st, length))

    async def truncate_async(self, length: int) -> None:
        """``truncate`` for trio (see ``append_async``)."""
        length = _index(length)
        self._check_writable()
        await self._store._writer.run_async(self, lambda txn, st: truncate_part(self, txn, st, length))

    def _set_record(self, **changes: object) -> None:
        """Update this log's record (e.g. a conflict mark) through the writer."""
        if self._store.readonly:
            raise NotWritable("the store is open read-only")
        self._store._writer.run(self, lambda txn, st: (None, self._record_part(txn, st, changes)))

    def _record_part(self, txn: lmdb.Transaction, st: LogState, changes: dict) -> LogState:
        record = {**st.record, **changes}
        txn.put(self.key, self._store._pack_record(record), db=self._store._dbs.logs)
        return st._replace(record=record)

    # --- proofs ----------------------------------------------------------------

    def proof(self, start: int, end: int | None = None, *, have: int = 0, upto: int | None = None) -> Proof:
        """Blocks ``[start, end)`` with what a verifier holding ``[0, have)`` needs to check them.

        The proof is against the current signed head. ``end`` defaults to
        ``start + 1``; ``proof(m, m, have=m)`` is an upgrade proof from m to the head.
        """
        st = self._fresh()
        end = start + 1 if end is None else end
        if not 0 <= have <= start <= end <= st.contig:
            raise OutOfRange(
                f"cannot prove [{start}, {end}) with prefix {have}: this store holds {st.contig} "
                f"of {st.length} blocks"
            )
        with self._read() as txn:
            raw = txn.get(self._hkey, db=self._db)
            if raw is None:  # nothing committed: the empty head
                fork, length, contig, th, sig = 0, 0, 0, EMPTY_TREE_HASH, UNSIGNED
            else:
                fork, length, contig, _, th, sig = HEAD.unpack(raw)
            if end > contig:
                raise OutOfRange(f"cannot prove up to {end}: only {contig} blocks held")
            nodes = tuple(self._node(txn, x) for x in needed_nodes(length, have, start, end))
            blocks = tuple(self._blocks(txn, start, end))
        if sig == UNSIGNED and self._st.record.get("writable"):  # our own head: signed now
            sig = self._signature(fork, length, contig, th) or UNSIGNED
        return Proof(fork, length, sig, start, blocks, nodes, have, self._manifest)

    def upgrade_proof(self, from_length: int) -> Proof:
        """What a replica holding ``[0, from_length)`` needs to trust the current head."""
        return self.proof(from_length, from_length, have=from_length)

    def verify(self, proof: Proof) -> Verified:
        """Check a proof for this log without storing anything."""
        return _apply.verify_only(self, proof)

    def check_head(self, head: Head) -> bool:
        """Verify a head announced by a peer; True if it is newer than ours.

        Raises InvalidSignature if the signature is forged and Conflict (marking the
        log) if it is valid but disagrees with our head at the same fork and length.
        """
        return _apply.check_head(self, head)

    def common_prefix(self, fork: int, contiguous: int) -> int:
        """How much of a peer's log (at ``fork``, holding ``contiguous`` blocks) matches ours.

        Uses the truncation history; conservative (0) where history is missing.
        The replica re-checks the real prefix against the signed head when it
        applies a reorganising proof, so this is only a hint for requests.
        """
        return _apply.common_prefix(self, fork, contiguous)

    def apply(self, proof: Proof) -> bool:
        """Verify a proof from a peer and commit its blocks, nodes and head in one transaction.

        Returns False (changing nothing) for stale data from an older head; raises
        InvalidProof / NotWritable / Conflict and writes nothing on anything invalid.
        A proof from a higher fork reorganises the replica: it keeps every block
        its own stored nodes prove valid under the new head, and drops the rest.
        A proof that disagrees with stored nodes within one fork (the writer signed
        two histories) marks the log conflicted (``conflict``) and raises Conflict.
        """
        self._check_apply()
        return self._store._writer.run(self, lambda txn, st: _apply.apply_part(self, txn, st, proof))

    async def apply_async(self, proof: Proof) -> bool:
        """``apply`` for trio: verification and the commit run off the event loop."""
        self._check_apply()
        return await self._store._writer.run_async(
            self, lambda txn, st: _apply.apply_part(self, txn, st, proof)
        )

    def _check_apply(self) -> None:
        if self._store._closed:
            raise StoreClosed(f"the store at {self._store.path} is closed; reopen it to write")
        if self._store.readonly:
            raise NotWritable("the store is open read-only")

    # --- audit ---------------------------------------------------------------------

    def audit(self, progress: Callable[[int, int], None] | None = None) -> AuditReport:
        """Recompute every stored node from the blocks and check the signed head.

        Reads in one snapshot (a read transaction), so a concurrent writer does
        not disturb it. ``progress(done, total)`` is called after each chunk.
        """
        return _audit.audit(self, progress)

    def _stored_nodes(self, txn: lmdb.Transaction, lo: int, hi: int) -> dict[int, bytes]:
        return _audit.stored_nodes(self, txn, lo, hi)


def _index(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            return value.__index__()
        except AttributeError:
            raise TypeError(f"an index is an int, not {type(value).__name__}") from None
    return value


def check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) != 32:
        raise InvalidKey("a log key is 32 bytes (pass bytes, e.g. bytes.fromhex(hex_key))")
    return key
