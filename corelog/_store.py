"""A Store: one LMDB environment holding many logs.

Layout (named databases, big-endian integer keys so ranges sort). A commit
touches one B-tree ("data"), which keeps durable (fsync) commits close to raw
LMDB; blocks sort last within a log so appends fill pages at the right edge.

========  ==============================  =============================================
 db        key                             value
========  ==============================  =============================================
 meta      b"seed", b"next_id", ...        the primary seed, the id counter
 logs      log key (32 bytes)              msgpack {id, name, writable, manifest, ...}
 names     log name (utf-8)                log key
 dkeys     discovery key (32 bytes)        log key (``find`` in O(1); built on open if missing)
 data      u32 id || 0                     the head: fork, length, contiguous, byte length,
                                           tree hash, signature (``_log.HEAD``; zeroed for
                                           our own logs: signed when read, ``_heads``); absent
                                           until the log's first change
 data      u32 id || 1 || u64 fork         previous fork, length kept (truncation history)
 data      u32 id || 2 || u64 flat index   node: u64 size (LE) || 32-byte hash
 data      u32 id || 3 || u64 index        block bytes
========  ==============================  =============================================

Every write goes through the store's single writer (``_writer``), which
group-commits concurrent changes into one transaction and one fsync.

One process writes a store at a time: the writer holds an exclusive ``flock`` on
``corelog.lock``. Readers (``readonly=True``) take no lock and see committed
snapshots. Writable logs' key pairs derive from the primary seed and the name,
so a store can be re-created from its seed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lmdb
import msgpack

from . import _crypto
from ._log import EMPTY_TREE_HASH, Log, check_key
from ._reading import Reading
from ._writer import LogState, Writer
from .errors import InvalidKey, LogNotFound, NotWritable, StoreClosed, StoreLocked, StoreNotFound

DEFAULT_MAP_SIZE = 1 << 36  # 64 GiB of address space; the file grows only as data is written
_DBS = ("meta", "logs", "names", "data", "dkeys")
_FORMAT = b"corelog/1"

# LMDB forbids opening one environment twice in a process; share it by path.
_ENVS: dict[str, list[Any]] = {}
_ENVS_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class LogInfo:
    """One line of ``Store.list()``."""

    name: str | None
    key: bytes
    discovery_key: bytes
    length: int
    contiguous_length: int
    byte_length: int
    fork: int
    writable: bool
    conflict: bool


class Store:
    """Many signed logs in one LMDB environment.

    ``Store(path)`` opens (creating if needed) a store for writing; a second
    writer, in this process or another, gets :class:`StoreLocked`.
    ``Store(path, readonly=True)`` opens it for reading alongside a writer.
    ``sync=True`` (default) fsyncs every commit; ``sync=False`` leaves it to the OS
    (survives a process crash, not a power loss: what Hypercore does).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: bool = True,
        readonly: bool = False,
        map_size: int = DEFAULT_MAP_SIZE,
        seed: bytes | None = None,
    ):
        self.path = Path(path)
        self.sync = sync
        self.readonly = readonly
        self.map_size = map_size
        self._logs: dict[bytes, Log] = {}
        self._by_dkey: dict[bytes, bytes] = {}  # only for old stores without the dkeys index
        self._lock_fd: int | None = None
        self._closed = False
        self._mutex = threading.RLock()
        self._watch_mu = threading.Lock()  # guards every log's waiter and watcher lists
        self._writer = Writer(self)
        if readonly:
            if not (self.path / "data.mdb").exists():
                raise StoreNotFound(
                    f"no corelog store at {self.path} (create one by opening it without readonly)"
                )
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self._take_lock()
        try:
            self._env = self._open_env()
            self._dbs = SimpleNamespace(**{n: self._open_db(n) for n in _DBS})
            self._seed = self._init_meta(seed)
            if not readonly:
                self._index_dkeys()
        except BaseException:
            self._release()
            raise

    # --- opening and closing ---------------------------------------------------

    def _take_lock(self) -> None:
        fd = os.open(self.path / "corelog.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                try:
                    holder = (self.path / "corelog.lock").read_text().strip() or "another process"
                except OSError:
                    holder = "another process"
                if holder == f"pid {os.getpid()}":
                    raise StoreLocked(
                        f"the store at {self.path} is already open for writing in this process; "
                        "reuse that Store object (or close it first)"
                    ) from None
                raise StoreLocked(
                    f"the store at {self.path} is open for writing by {holder}; close it there, "
                    "or open this one with readonly=True to read alongside"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._lock_fd = fd

    def _open_env(self) -> lmdb.Environment:
        real = os.path.realpath(self.path)
        with _ENVS_LOCK:
            entry = _ENVS.get(real)
            if entry is not None:
                env, count, writer = entry
                if not self.readonly and writer:
                    raise StoreLocked(f"the store at {self.path} is already open for writing in this process")
                if not self.readonly and not writer:
                    raise StoreLocked(
                        f"the store at {self.path} is open read-only in this process; close that Store first"
                    )
                entry[1] += 1
                return env
            try:
                env = lmdb.open(
                    str(self.path),
                    map_size=self.map_size,
                    max_dbs=len(_DBS),
                    sync=self.sync,
                    metasync=self.sync,
                    readonly=self.readonly,
                    lock=True,
                    readahead=False,
                    max_readers=256,
                )
            except lmdb.Error as exc:
                raise StoreNotFound(f"cannot open the store at {self.path}: {exc}") from None
            _ENVS[real] = [env, 1, not self.readonly]
            return env

    def _open_db(self, name: str) -> Any:
        try:
            return self._env.open_db(name.encode(), create=not self.readonly)
        except lmdb.NotFoundError:
            if name == "dkeys":  # a store written before the index: find() scans once instead
                return None
            raise

    def _index_dkeys(self) -> None:
        """Build the discovery-key index of a store written before it existed (once)."""
        with self._env.begin(write=True) as txn:
            if txn.stat(self._dbs.dkeys)["entries"] >= txn.stat(self._dbs.logs)["entries"]:
                return
            for k, _ in txn.cursor(db=self._dbs.logs):
                txn.put(_crypto.discovery_key(bytes(k)), bytes(k), db=self._dbs.dkeys)

    def _init_meta(self, seed: bytes | None) -> bytes:
        with self._env.begin(write=not self.readonly, db=self._dbs.meta) as txn:
            stored = txn.get(b"seed")
            fmt = txn.get(b"format")
            if stored is None:
                if self.readonly:
                    raise StoreNotFound(f"{self.path} is not an initialised corelog store")
                stored = seed if seed is not None else os.urandom(32)
                if len(stored) != 32:
                    raise InvalidKey("a store seed is 32 bytes")
                txn.put(b"seed", stored)
                txn.put(b"format", _FORMAT)
                txn.put(b"next_id", (1).to_bytes(4, "big"))
            elif seed is not None and seed != stored:
                raise InvalidKey(f"the store at {self.path} was created with a different seed")
            elif fmt != _FORMAT:
                raise StoreNotFound(f"{self.path} holds an unknown format {fmt!r}; it is not a corelog store")
            return stored

    def _release(self) -> None:
        real = os.path.realpath(self.path)
        with _ENVS_LOCK:
            entry = _ENVS.get(real)
            mine: Any = getattr(self, "_env", None)
            if entry is not None and mine is not None and mine is entry[0]:
                entry[1] -= 1
                if entry[1] == 0:
                    mine.close()
                    del _ENVS[real]
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        """Close the store (idempotent; any thread).

        New reads and writes raise :class:`StoreClosed`; writes still queued fail
        with it; the commit in progress (if any) completes first; threads and
        tasks in ``wait_changed`` wake with StoreClosed.
        """
        with self._mutex:
            if self._closed:
                return
            self._closed = True
        self._writer.close()
        for log in list(self._logs.values()):
            log._wake_all()
        self._release()

    def batch(self) -> AbstractContextManager[None]:
        """``with store.batch(): ...``: every write in the block commits as ONE transaction.

        The calling thread becomes the store's writer for the block: writes in it
        run at once in an open transaction (``append`` returns the new length at
        once) and are durable when the block exits (one fsync; heads are signed
        when read). Reads in the block see the last commit, not the block's writes. If
        the block raises, nothing of it is written. Writes from other threads
        wait for the block and join its commit. Batches nest (the outer one
        commits). Not for long-running work: it holds every other writer up.
        """
        if self.readonly:
            raise NotWritable("the store is open read-only")
        if self._closed:
            raise StoreClosed(f"the store at {self.path} is closed")
        return self._writer.batch()

    @property
    def commits(self) -> int:
        """Write transactions this Store object has committed (group commits count once)."""
        return self._writer.commits

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def seed(self) -> bytes:
        """The primary seed every writable log's key pair derives from. Keep it secret."""
        return self._seed

    # --- logs ---------------------------------------------------------------------

    def get(
        self,
        name: str | None = None,
        *,
        key: bytes | None = None,
        create: bool = True,
        key_seed: bytes | None = None,
    ) -> Log:
        """Open a log: by ``name`` (writable, created on first use) or by ``key`` (a replica).

        A new named log's key pair derives from the store's seed and the name,
        unless ``key_seed`` (32 bytes) is given to import an existing writer's key.
        Asking by key for a log this store writes returns the writable log.
        Creating a log is a write (group-committed like appends).
        """
        if self._closed:
            raise StoreClosed(f"the store at {self.path} is closed; reopen it")
        if (name is None) == (key is None):
            raise TypeError("pass exactly one of name or key=")
        try:
            if name is not None:
                if not isinstance(name, str) or not name:
                    raise TypeError("a log name is a non-empty str")
                with Reading(self) as txn:
                    found = txn.get(name.encode(), db=self._dbs.names)
                if found is None:
                    if not create or self.readonly:
                        raise LogNotFound(f"no log named {name!r} in {self.path}")
                    return self._create_writable(name, key_seed)
                key = found
            key = check_key(key)  # type: ignore[arg-type]
            log = self._logs.get(key)
            if log is not None:
                return log
            with Reading(self) as txn:
                raw = txn.get(key, db=self._dbs.logs)
        except lmdb.Error:
            if self._closed:
                raise StoreClosed(f"the store at {self.path} is closed; reopen it") from None
            raise
        if raw is None:
            if not create or self.readonly:
                raise LogNotFound(f"no log with key {key.hex()} in {self.path}")
            return self._create_replica(key)
        return self._install(key, self._unpack_record(raw), None)

    def _install(self, key: bytes, record: dict, state: LogState | None, secret: bytes | None = None) -> Log:
        with self._mutex:
            log = self._logs.get(key)
            # replace a replica that became writable, or a log of a rolled-back batch
            if log is None or log.id != record["id"] or (record.get("writable") and not log.owned):
                log = Log(self, record["id"], key, record, state, secret)
                self._logs[key] = log
            return log

    @staticmethod
    def _pack_record(record: dict) -> bytes:
        return msgpack.packb(record)

    @staticmethod
    def _unpack_record(raw: bytes) -> dict:
        return msgpack.unpackb(raw)

    def _new_id(self, txn: lmdb.Transaction) -> int:
        next_id = int.from_bytes(txn.get(b"next_id", db=self._dbs.meta), "big")
        txn.put(b"next_id", (next_id + 1).to_bytes(4, "big"), db=self._dbs.meta)
        return next_id

    def _create_writable(self, name: str, key_seed: bytes | None) -> Log:
        seed = _crypto.derive_seed(self._seed, name) if key_seed is None else key_seed
        public, secret = _crypto.keypair_from_seed(seed)
        manifest = _crypto.manifest_for(public)
        key = _crypto.log_key(manifest)

        def part(txn: lmdb.Transaction, _: None) -> tuple[tuple[dict, LogState | None], None]:
            existing = txn.get(key, db=self._dbs.logs)
            record = self._unpack_record(existing) if existing else None
            state = None
            if record is None:
                # no head is stored until the first change: the empty head is signed when read
                # (``_heads``), so a new log costs one key derivation and no signature
                record = {"id": self._new_id(txn), "name": name, "writable": True, "manifest": manifest}
                if key_seed is not None:
                    record["key_seed"] = key_seed
                txn.put(_crypto.discovery_key(key), key, db=self._dbs.dkeys)
                state = LogState(0, 0, 0, 0, EMPTY_TREE_HASH, None, (), record)
            elif not record.get("writable"):
                # we had it as a replica (e.g. re-created from the seed): become its writer (it
                # stays unwritable until it holds every block: IncompleteLog)
                record.update(name=name, writable=True, manifest=manifest)
                if key_seed is not None:
                    record["key_seed"] = key_seed
            txn.put(key, self._pack_record(record), db=self._dbs.logs)
            txn.put(name.encode(), key, db=self._dbs.names)
            return (record, state), None

        record, state = self._writer.run(None, part)
        if state is None and self._writer.in_batch():
            raise NotWritable("a replica cannot become writable inside store.batch(); do it before")
        return self._install(key, record, state, secret)

    def _create_replica(self, key: bytes) -> Log:
        def part(txn: lmdb.Transaction, _: None) -> tuple[dict, None]:
            existing = txn.get(key, db=self._dbs.logs)
            if existing is not None:
                return self._unpack_record(existing), None
            record = {"id": self._new_id(txn), "name": None, "writable": False, "manifest": None}
            txn.put(key, self._pack_record(record), db=self._dbs.logs)
            txn.put(_crypto.discovery_key(key), key, db=self._dbs.dkeys)
            return record, None

        record = self._writer.run(None, part)
        state = LogState(0, 0, 0, 0, EMPTY_TREE_HASH, b"", (), record)
        return self._install(key, record, state)

    def find(self, discovery_key: bytes) -> Log | None:
        """The log with this discovery key, if the store holds it (an index lookup, O(1))."""
        if self._closed:
            raise StoreClosed(f"the store at {self.path} is closed; reopen it")
        key = self._by_dkey.get(discovery_key)
        if key is None:
            if not isinstance(discovery_key, bytes) or len(discovery_key) != 32:
                return None
            if self._dbs.dkeys is None:  # an old store opened read-only: index it in memory once
                with self._mutex:
                    if not getattr(self, "_dkeys_scanned", False):
                        for k in self.keys():
                            self._by_dkey.setdefault(_crypto.discovery_key(k), k)
                        self._dkeys_scanned = True
                key = self._by_dkey.get(discovery_key)
            else:
                with Reading(self) as txn:
                    key = txn.get(discovery_key, db=self._dbs.dkeys)
            if key is None:
                return None
        return self.get(key=key)

    def keys(self) -> list[bytes]:
        """Keys of every log in the store."""
        with Reading(self) as txn:
            return [bytes(k) for k, _ in txn.cursor(db=self._dbs.logs)]

    def __iter__(self) -> Iterator[Log]:
        for k in self.keys():
            yield self.get(key=k)

    def __contains__(self, name_or_key: str | bytes) -> bool:
        with Reading(self) as txn:
            if isinstance(name_or_key, str):
                return txn.get(name_or_key.encode(), db=self._dbs.names) is not None
            return txn.get(name_or_key, db=self._dbs.logs) is not None

    def list(self) -> list[LogInfo]:
        """Every log with its name, key, length, fork and whether this store writes it."""
        out = []
        for log in self:
            h = log.head()
            out.append(
                LogInfo(
                    log.name,
                    log.key,
                    log.discovery_key,
                    h.length,
                    log.contiguous_length,
                    h.byte_length,
                    h.fork,
                    log.owned,
                    log.conflict is not None,
                )
            )
        return out

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else "writable"
        return f"<Store {str(self.path)!r} {mode} sync={self.sync}>"
