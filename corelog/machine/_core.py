"""One runtime core per log: what every Machine and Coremachine on a log shares.

Theory of operation
-------------------
A machine log has exactly one :class:`LogCore` per process: ``core_for(log)``
looks it up in a per-store registry that holds cores by *weak* reference, so
every ``Machine``/``Coremachine`` opened on the same log (same store, same key)
gets the same core, and a core disappears with the last object using it.

The core owns the per-log lock (a plain ``threading.Lock``, so a trio task may
take it through a worker thread and release it in the trio thread) and the
*recorded head*: an immutable :class:`Recorded` swapped atomically on every
change, holding the last entry's state, its read-only context and the
governing header. A send is ``lock -> catch up with the log -> transition ->
compare-and-append (expected length = the head's) -> swap the head -> unlock``,
so sends are serialised per log whatever the objects or threads, and a writer
that bypasses the core (a raw ``log.append`` on the same log) is detected by
the compare-and-append: the sender catches up with the log and runs its event
again on the new head, up to ``RETRIES`` times, then raises :class:`HeadMoved`.

A ``Fleet`` writes its machines' logs in a part of its own (``_fleet_shared``),
not through the ``Log``'s pending state, so the compare-and-append here
(``cas_part``) also reads the log's head in the transaction: a head ahead of
the state the store writer holds for the ``Log`` (the fleet wrote since) fails
the append and hands that head to the writer, which publishes it with the
commit; the sender then runs its event again on it. Only logs named like a
fleet's (``fleet:<id>``) pay for that read; others append as before.

Readers never wait for a writer: ``current()`` returns the recorded head,
catching up first (when the lock is free) if the log moved without the core
(a replica being fed, another process writing a read-only store).

The core registers nothing on the log: readers compare the log's length and
fork with the recorded head, and trio subscribers wait on the log's change
version (``Log.wait_changed_async``, the log layer's one thread-to-trio
handoff), so a dropped machine leaves nothing behind. Commits go through the
store's writer, which coalesces concurrent ones (group commit): the trio face
awaits ``append_async`` (no thread parked per waiting send).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from corelog import Log
from corelog._append import append_part, blocks_arg
from corelog._keys import HEAD_FORK_LENGTH
from corelog.errors import LengthMismatch

from ._entries import HistoryEntry, decode
from ._fleet_store import LOG_PREFIX
from ._frozen import FrozenDict, freeze
from ._interpreter import Snapshot, Statechart
from .errors import MachineError, NotAMachineLog, UnserializableContext

if TYPE_CHECKING:
    from corelog import Store

RETRIES = 8


class Recorded(NamedTuple):
    """The head as recorded in the log: index ``-1`` for an empty log (a tuple: cheap to make)."""

    index: int  # type: ignore[assignment]  # (shadows tuple.index: a field is what is read)
    fork: int
    value: Any = None
    context: Mapping[str, Any] | None = None  # a FrozenDict
    done: bool = False
    header_index: int = 0
    header_hash: str | None = None
    definition: FrozenDict | None = None
    # the snapshot as built by ``chart`` (its configuration belongs to that chart), if any
    snapshot: Snapshot | None = None
    chart: Statechart | None = None
    extras: Any = None  # the entry's output/history/timers/invocations (statecharts, issue 13)

    @property
    def length(self) -> int:
        return self.index + 1


class _Moved(Exception):
    """Internal: the log's length was not the expected one (compare-and-append failed)."""


def cas_part(log: Log, entry: bytes, expected: int) -> Any:
    """The store-writer part appending ``entry`` at ``expected`` (compare-and-append).

    It returns -1 (appending nothing) when the head stored in the transaction is ahead of the
    writer's state of the log (a ``Fleet`` appended to it in its own part, earlier in this batch or
    committed but not yet published), with that head as the log's new state: the writer publishes
    it with the commit, so the sender's retry runs on it. Flat (raises before any write).
    """
    blocks = blocks_arg(entry)
    hkey, db = log._hkey, log._db

    def part(txn: Any, st: Any) -> tuple[int, Any]:
        raw = txn.get(hkey, db=db)
        if raw is not None:
            fork, length = HEAD_FORK_LENGTH.unpack_from(raw)
            if fork > st.fork or (fork == st.fork and length > st.length):
                return -1, log._read_state(txn, st.record)
        return append_part(log, txn, st, blocks, expected)

    return part


def fleet_append(log: Log, entry: bytes, expected: int) -> int:
    """``log.append(entry, expected_length=expected)`` for a log a ``Fleet`` may write too
    (``cas_part``): the new length, or LengthMismatch (the fleet's head, if it moved, is published)."""
    log._check_writable()
    return _appended(log, log.store._writer.run(log, cas_part(log, entry, expected), True), expected)


async def fleet_append_async(log: Log, entry: bytes, expected: int) -> int:
    """``fleet_append`` for trio: waits for the group commit without blocking the event loop."""
    log._check_writable()
    return _appended(
        log, await log.store._writer.run_async(log, cas_part(log, entry, expected), True), expected
    )


def _appended(log: Log, n: int, expected: int) -> int:
    if n < 0:
        raise LengthMismatch(
            "a fleet appended to the log first: re-read and retry", expected=expected, actual=log.length
        )
    return n


def _fleet_log(log: Log) -> bool:
    """A log a ``Fleet`` may write beside the Log's own writer state (only those pay for the check)."""
    name = log.name
    return name is not None and name.startswith(LOG_PREFIX)


def verify_restore(log: Log) -> None:
    """Refuse to continue a machine whose signed tree or restore entries do not verify: O(log n).

    Checks that the stored roots hash to the signed head's tree hash under a valid signature (what
    the next append extends; ``log.head()`` signs a head this store stored unsigned, so this also
    checks that the store's key pair is the log's), and that the last entry and its header (what the machine
    restores from) match their Merkle leaves. Damage in older entries does not change the state the
    machine continues from; ``Log.audit()`` / ``corelog audit`` find it.
    """
    n = log.contiguous_length
    if n == 0:
        return
    from corelog import _crypto
    from corelog.errors import Corrupt

    head = log.head()
    public = log.public_key
    hint = f"run `corelog audit {log.store.path}` for details; the log is left as it is"
    if _crypto.tree_hash(log.roots()) != head.tree_hash or (
        public is not None and not _crypto.verify(head.signable(log.key), head.signature, public)
    ):
        raise Corrupt(f"the signed tree of log {log.name or log.key.hex()} does not verify: {hint}")
    last = log.get(n - 1)
    indexes = {n - 1}
    try:
        indexes.add(decode(n - 1, last).header)
    except NotAMachineLog:
        pass  # not a machine log: the runtime says so itself
    for i in sorted(indexes):
        data = log.get(i)
        node = log.get_node(2 * i)
        if node.size != len(data) or node.hash != _crypto.leaf_hash(data):
            raise Corrupt(
                f"entry {i} of log {log.name or log.key.hex()} does not match its Merkle leaf, so the machine "
                f"cannot continue from it: {hint}"
            )


def frozen_entry(entry: HistoryEntry) -> tuple[Any, FrozenDict]:
    try:
        return freeze(entry.state, "state"), freeze(entry.context)
    except UnserializableContext as exc:
        raise NotAMachineLog(f"entry {entry.index} holds a non-JSON value ({exc})") from None


class LogCore:
    """The per-log runtime shared by every machine object on the log (see the module docstring)."""

    __slots__ = ("__weakref__", "fleet", "head", "lock", "log", "readonly", "version")

    def __init__(self, log: Log):
        self.log = log
        self.lock = threading.Lock()
        self.readonly = log.store.readonly
        self.fleet = _fleet_log(log)  # a Fleet may write it too: appends use ``fleet_append``
        self.version = 0  # + 1 on every change of the recorded head
        self.head = Recorded(-1, log.fork)
        with self.lock:
            if not self.readonly and log.writable:
                verify_restore(log)
            self.refresh_locked()

    # --- the recorded head ---------------------------------------------------------------

    def current(self) -> Recorded:
        """The recorded head, caught up with the log first unless a send is being recorded.

        Inside ``store.batch()`` in this thread the head may be ahead of the committed log (the
        batch's sends are not committed yet; reads of the log see the last commit): trusted as is.
        """
        h = self.head
        log = self.log
        if log.contiguous_length == h.index + 1 and log.fork == h.fork:
            return h
        if log.store._writer.in_batch():
            return h
        if not self.lock.acquire(blocking=False):
            # a send holds the lock (maybe awaiting its commit, already visible in the log): what
            # the log holds now, read without the lock and without changing the shared head
            return self.read(h)
        try:
            self.refresh_locked()
        finally:
            self.lock.release()
        return self.head

    def refresh_locked(self, force: bool = False) -> Recorded:
        """Catch up with the log (lock held): O(1), reads the last entry and, if new, its header.

        Inside ``store.batch()`` only when ``force``d (after a failed compare-and-append).
        """
        log = self.log
        h = self.head
        if log.contiguous_length == h.index + 1 and log.fork == h.fork:
            return h  # the log has not moved (the common case)
        if not force and log.store._writer.in_batch():
            return h
        new = self.read(h)
        if new is not h:
            self.set_locked(new)
        return new

    def read(self, h: Recorded) -> Recorded:
        """The log's head as a Recorded (``h`` itself if the log has not moved); changes nothing."""
        log = self.log
        n, fork = log.contiguous_length, log.fork
        if n == h.index + 1 and fork == h.fork:
            return h
        header_kept = h.header_hash is not None and n > h.header_index
        if fork != h.fork and header_kept:
            header_kept = h.header_index < log.common_prefix(h.fork, h.index + 1)
        if n == 0:
            return Recorded(-1, fork)
        last = decode(n - 1, log.get(n - 1))
        if last.kind == "header":
            header = last
        elif header_kept and last.header == h.header_index:
            header = None
        else:
            header = decode(last.header, log.get(last.header))
            if header.kind != "header":
                raise MachineError(f"entry {last.header} should be a header but is not; the log is damaged")
        value, context = frozen_entry(last)
        if header is None:
            hi, hh, hd = h.header_index, h.header_hash, h.definition
        else:
            hi, hh = header.index, header.definition_hash
            hd = (
                h.definition
                if hh == h.header_hash and h.definition is not None
                else freeze(header.definition)
            )
        return Recorded(n - 1, fork, value, context, last.done, hi, hh, hd, extras=last.extras)

    def set_locked(self, head: Recorded) -> None:
        """Swap in a new recorded head (lock held)."""
        self.head = head
        self.version += 1

    def append_locked(self, entry: bytes, expected: int) -> int:
        """Compare-and-append (lock held); ``_Moved`` if the log is not ``expected`` long."""
        try:
            if self.fleet:
                return fleet_append(self.log, entry, expected) - 1
            return self.log.append(entry, expected_length=expected) - 1
        except LengthMismatch:
            raise _Moved from None

    async def append_async_locked(self, entry: bytes, expected: int) -> int:
        """``append_locked`` for trio: waits for the group commit without blocking the event loop.

        Cancelled before its commit started, nothing is written; once started it completes.
        """
        try:
            if self.fleet:
                return await fleet_append_async(self.log, entry, expected) - 1
            return await self.log.append_async(entry, expected_length=expected) - 1
        except LengthMismatch:
            raise _Moved from None


# One core per log per store, held weakly: gone with the last machine object on the log.
_CORES: weakref.WeakKeyDictionary[Store, weakref.WeakValueDictionary[bytes, LogCore]] = (
    weakref.WeakKeyDictionary()
)
_CORES_LOCK = threading.Lock()


def core_for(log: Log) -> LogCore:
    """The log's core, shared by every machine object on it in this process."""
    with _CORES_LOCK:
        cores = _CORES.get(log.store)
        if cores is None:
            cores = _CORES[log.store] = weakref.WeakValueDictionary()
        core = cores.get(log.key)
        if core is not None and core.log is log:
            return core
        # created outside the registry lock would race; a core's creation reads the log only
        core = LogCore(log)
        cores[log.key] = core
        return core


def live_cores(store: Store) -> int:
    """How many cores (logs with live machine objects) the store has in this process."""
    with _CORES_LOCK:
        cores = _CORES.get(store)
        return 0 if cores is None else len(cores)


def cores_of(store: Store, keys: list[bytes]) -> list[LogCore]:
    """The live cores of the logs with these keys (machine objects are open on them), if any."""
    with _CORES_LOCK:
        cores = _CORES.get(store)
        if not cores:
            return []
        return [c for c in map(cores.get, keys) if c is not None]


__all__ = [
    "RETRIES",
    "LogCore",
    "Recorded",
    "cores_of",
    "core_for",
    "fleet_append",
    "live_cores",
]
