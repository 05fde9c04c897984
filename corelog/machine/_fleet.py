"""A fleet: many small durable machines in one store, with listeners.

Theory of operation
-------------------
A :class:`Fleet` owns one writer thread. ``send`` (any thread) and ``await
asend`` (trio) hand an operation to it and wait; the writer takes every queued
operation at once (a *batch*, at most ``max_batch``) and runs it as ONE part of
the store's group-commit writer (``corelog._writer``: one LMDB transaction,
shared with whatever else the store commits meanwhile). Inside it, it runs each machine's
transition (``_fleet_stage``) on its committed snapshot in queue order (so each machine runs to
completion, one event after another, while different machines share the
batch), writes every machine's new blocks and head (signed when read), the
index rows, the change-feed rows and listener cursors, commits (one fsync with
``sync=True``), and only then updates its cache and wakes the waiters. An
operation that fails (unknown event, an action raising, an unserialisable
context) contributes nothing to the transaction and gets its own error.

A machine in memory is a small record (``_Slot``: id, kind, log write state,
snapshot) held in an LRU cache of ``cache_size`` records; an evicted or never
loaded machine is restored from its log in O(1) (the last entry holds the whole
snapshot). Only the writer thread touches the cache.

Listeners (``_listeners``) each run in a thread of their own, reading the
durable change feed from their own durable cursor; timers and invoked services
of every machine are run by one scheduler (``_fleet_timers``). What is stored
where: ``_fleet_store``.

Do not call the fleet from inside an action or guard (they run in the writer
thread, which would wait for itself); listeners and services may call it.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from corelog import Store
from corelog.errors import CorelogError, StoreFull

from . import _fleet_store as fs
from ._entries import HistoryEntry, decode
from ._fleet_records import (
    Kind,
    MachineInfo,
    _Group,
    _Op,
    _Send,
    _Slot,
    _Stage,
    check_id,
    list_machines,
    machine_history,
    restore,
)
from ._fleet_shared import LOCK_WAIT, Deferred, Shared, publish
from ._fleet_stage import stage_event, stage_group
from ._frozen import freeze
from ._interpreter import Snapshot, Statechart
from ._runtime import as_event, frozen_snapshot, now_ms
from .errors import (
    FleetClosed,
    MachineError,
    UnknownKind,
    UnknownMachine,
)


class Fleet:
    """Many durable machines in one store, addressed by id, with listeners.

    ``Fleet(store_or_path)`` then ``register(kind, definition, actions=...)`` and
    ``listener(name)``; ``with fleet:`` starts the writer and the listeners
    (resuming each from its durable cursor) and stops them at the end. A machine is
    created by its first event (``send(id, event, data, kind=...)``; ``kind`` may be
    left out when one kind is registered). Each machine is the log ``fleet:<id>``.

    ``cache_size`` bounds the machines held in memory (least recently used are
    evicted); ``max_batch`` bounds the operations in one commit. ``clock`` gives
    event times in ms (tests make it deterministic). ``services`` is handed to
    listeners as is.
    """

    def __init__(
        self,
        store: Store | str | Path,
        *,
        services: Any = None,
        cache_size: int = 10_000,
        max_batch: int = 16384,
        clock: Callable[[], int] | None = None,
        sync: bool = True,
    ):
        self._own_store = not isinstance(store, Store)
        self.store: Store = Store(store, sync=sync) if not isinstance(store, Store) else store
        if self.store.readonly:
            raise MachineError("a fleet needs a writable store (it is the store's one writer of fleet logs)")
        self.services = services
        self.cache_size = max(1, cache_size)
        self.max_batch = max(1, max_batch)
        self.clock = clock or now_ms
        self._env = self.store._env
        self._dbs = self.store._dbs
        self._seed = self.store.seed
        self._kinds: dict[str, Kind] = {}
        self._cache: collections.OrderedDict[str, _Slot] = collections.OrderedDict()
        self._queue: collections.deque[_Op] = collections.deque()
        self._cond = threading.Condition()
        self._feed_cond = threading.Condition()
        self._done = threading.Condition()
        # the last batches' changes, handed to listeners in memory (bounded: older ones are read from the feed)
        self._recent: collections.deque[tuple[int, int, list]] = collections.deque()
        self._recent_rows = 0
        self.recent_max_rows = 65_536
        self._writer: threading.Thread | None = None
        self._shared = Shared(self.store)  # the writer's dealings with logs a Machine may write too
        # held by the writer while it commits a batch and hands it on (cache, scheduler); held by the
        # scheduler's recovery scan, so no commit falls between what it reads and what it arms
        self._commit_lock = threading.Lock()
        self._running = False
        self._closed = False
        with self._env.begin() as txn:
            self._seq = fs.last_seq(txn, self._dbs)
            persisted = fs.cursors(txn, self._dbs)
        self._feed_on = bool(persisted)
        self.batches = 0  # commits made (for benchmarks and tests)
        from ._listeners import Listeners

        self.listeners = Listeners(self)
        from ._fleet_timers import Scheduler

        self.scheduler = Scheduler(self)
        self.recovered = (0, 0)  # timers re-armed and invocations restarted from the store

    # --- registration ------------------------------------------------------------------

    def register(
        self,
        kind: str,
        definition: Mapping[str, Any] | Statechart,
        actions: Mapping[str, Callable] | None = None,
        guards: Mapping[str, Callable] | None = None,
        *,
        delays: Mapping[str, Any] | None = None,
        services: Mapping[str, Callable] | None = None,
        migrate: bool = False,
    ) -> Kind:
        """Register a machine kind with its implementations.

        ``services`` maps an ``invoke``'s ``src`` to ``fn(input) -> result``, run by the
        fleet's scheduler (``_fleet_timers``); ``delays`` names ``after`` delays.
        ``migrate=True`` lets machines recorded with an older definition continue under
        this one (a new header entry is recorded first).
        """
        if not isinstance(kind, str) or not kind:
            raise UnknownKind("a kind name is a non-empty str")
        if isinstance(definition, Statechart):
            chart = definition
        else:
            chart = Statechart(definition, actions, guards, delays=delays)
        missing = [s for s in getattr(chart, "services", []) if s not in (services or {})]
        if missing:
            raise MachineError(
                f"kind {kind!r} invokes services {missing} that were not given: pass services={{...}}"
            )
        k = Kind(kind, chart, migrate, dict(services or {}))
        self._kinds[kind] = k
        if self._running:  # registered after start: resume this kind's timers and invocations now
            t, i = self.scheduler.recover(kind)
            self.recovered = (self.recovered[0] + t, self.recovered[1] + i)
        return k

    @property
    def kinds(self) -> dict[str, Kind]:
        return dict(self._kinds)

    def listener(self, name: str, fn: Callable | None = None, **options: Any) -> Any:
        """Register a listener ``fn(change, services, send)``; usable as a decorator.

        Options: ``kinds`` (only these kinds), ``max_attempts`` (default 5), ``backoff``
        (first retry delay in s, doubled each time, default 0.01), ``start`` ("now" or
        "beginning": where a listener with no cursor yet starts). See ``_listeners``.
        """
        if fn is None:
            return lambda f: self.listeners.add(name, f, **options)
        return self.listeners.add(name, fn, **options)

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> Fleet:
        """Start the writer and every listener (each resumes from its durable cursor)."""
        if self._closed:
            raise FleetClosed("the fleet is closed; open a new Fleet on the store")
        if self._running:
            return self
        self._running = True
        self._writer = threading.Thread(target=self._write_loop, name="corelog-fleet-writer", daemon=True)
        self._writer.start()
        self.listeners.start()
        self.recovered = self.scheduler.recover()
        self.scheduler.start()
        return self

    def close(self) -> None:
        """Stop the listeners, commit what is queued, stop the writer (and close an owned store)."""
        if self._closed:
            return
        self.listeners.stop()
        self.scheduler.stop()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join()
        self._running = False
        with self._feed_cond:
            self._feed_cond.notify_all()
        if self._own_store:
            self.store.close()

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Fleet:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        import trio

        await trio.to_thread.run_sync(self.close)

    # --- sending -----------------------------------------------------------------------

    def _make_send(self, mid: str, event: Any, data: Any, kind: str | None, notify: Callable | None) -> _Send:
        check_id(mid)
        etype, edata = as_event(event, data)
        edata = freeze(edata, "event data")  # a read-only copy: actions and listeners see what is recorded
        if kind is not None and kind not in self._kinds:
            raise UnknownKind(f"no machine kind {kind!r} is registered; register it with fleet.register()")
        return _Send(mid, kind, etype, edata, notify)

    def _submit(self, op: _Op) -> None:
        with self._cond:
            if self._closed or not self._running:
                raise FleetClosed("the fleet is not running: use `with fleet:` (or fleet.start()) first")
            self._queue.append(op)
            if len(self._queue) == 1:
                self._cond.notify()

    def _write_meta(self, puts: list, deletes: list, sends: list | None = None) -> Any:
        """Commit fleet bookkeeping (and follow-up sends) in one writer transaction; wait for it."""
        op = _Group(sends or [], puts, deletes, None)
        self._submit(op)
        return self._wait(op)

    def send(self, mid: str, event: Any, data: Any = None, *, kind: str | None = None) -> Snapshot:
        """Send an event to machine ``mid`` (created by its first event); returns the new snapshot
        once it is durable. Raises the machine's own error (nothing recorded) if it fails."""
        op = self._make_send(mid, event, data, kind, None)
        self._submit(op)
        return self._wait(op)

    def _wait(self, op: _Op, timeout: float | None = None) -> Any:
        if not op.done:
            with self._done:
                if not self._done.wait_for(lambda: op.done, timeout):
                    raise TimeoutError("the event is not committed yet")
        if op.error is not None:
            raise op.error
        return op.result

    def post(
        self, mid: str, event: Any, data: Any = None, *, kind: str | None = None
    ) -> Callable[[], Snapshot]:
        """Queue an event without waiting; returns ``wait()`` giving the durable snapshot (or raising).

        Many posts to one machine are still applied one after another, in order.
        """
        op = self._make_send(mid, event, data, kind, None)
        self._submit(op)

        def wait(timeout: float | None = None) -> Snapshot:
            return self._wait(op, timeout)

        return wait

    async def asend(self, mid: str, event: Any, data: Any = None, *, kind: str | None = None) -> Snapshot:
        """``send`` for trio: the commit happens in the writer thread, the event loop keeps running.

        Cancelling the waiting task does not withdraw an event already handed to the writer.
        """
        import trio

        token = trio.lowlevel.current_trio_token()
        ev = trio.Event()
        op = self._make_send(mid, event, data, kind, lambda _op: token.run_sync_soon(ev.set))
        self._submit(op)
        await ev.wait()
        if op.error is not None:
            raise op.error
        return op.result

    # --- reading (any thread) ----------------------------------------------------------

    def info(self, mid: str) -> MachineInfo:
        with self._env.begin() as txn:
            row = fs.index_row(txn, self._dbs, check_id(mid))
        if row is None:
            raise UnknownMachine(f"no machine {mid!r} in this fleet")
        return MachineInfo(mid, row[0], row[1], row[2], row[3], row[4], row[5] if len(row) > 5 else None)

    def __contains__(self, mid: str) -> bool:
        with self._env.begin() as txn:
            return fs.index_row(txn, self._dbs, mid) is not None

    def machines(self, kind: str | None = None, state: str | None = None) -> Iterable[MachineInfo]:
        """Index rows in id order, optionally of one kind and/or matching a state (``"a.b"``)."""
        return list_machines(self.store, kind, state)

    def snapshot(self, mid: str) -> Snapshot:
        """The committed snapshot of a machine (from the cache, or its log's last entry)."""
        slot = self._cache.get(mid)
        if slot is not None and slot.snapshot is not None:
            log = self.store._logs.get(slot.log.key)
            # a machine whose Log is open may have been appended outside the fleet: then from the log
            if log is None or (log.fork, log.length) == (slot.log.fork, slot.log.length):
                return slot.snapshot
        info = self.info(mid)
        log = self.store.get(key=info.key, create=False)
        n = log.length
        entry = decode(n - 1, log.get(n - 1))
        k = self._kinds.get(info.kind)
        if k is not None:
            try:
                return frozen_snapshot(
                    k.chart.snapshot_from(entry.state, entry.context, entry.done, entry.extras or info.extras)
                )
            except MachineError:
                pass
        return frozen_snapshot(entry.snapshot)

    def history(self, mid: str) -> list[HistoryEntry]:
        return machine_history(self.store, mid)

    def log(self, mid: str):  # -> corelog.Log
        """The machine's log (replicate it, audit it, or open a ``Machine`` on it)."""
        return self.store.get(key=self.info(mid).key, create=False)

    @property
    def feed_seq(self) -> int:
        """The last committed change-feed sequence number."""
        return self._seq

    # --- the writer --------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue and self._closed:
                    return
                n = min(len(self._queue), self.max_batch)
                ops = [self._queue.popleft() for _ in range(n)]
            idle = False
            try:
                with self._commit_lock:
                    deferred = self._commit(ops)
                if deferred:  # their machines' logs are being written outside the fleet: next batch, in order
                    with self._cond:
                        idle = not self._queue
                        self._queue.extendleft(reversed(deferred))
                    later = set(map(id, deferred))
                    ops = [op for op in ops if id(op) not in later]
            except BaseException as exc:  # never leave a waiter hanging
                for op in ops:
                    if op.error is None:
                        op.error = (
                            exc if isinstance(exc, CorelogError) else MachineError(f"commit failed: {exc!r}")
                        )
                self._cache.clear()
            for op in ops:
                op.done = True
                if op.notify is not None:
                    try:
                        op.notify(op)
                    except Exception:  # e.g. the trio run ended
                        pass
            with self._done:
                self._done.notify_all()
            # with nothing else to do, let the Machine sends deferred to finish first (else go on)
            self._shared.wait(LOCK_WAIT if idle else 0.0)

    def _slot(self, txn: Any, op: _Send, stages: dict[str, _Stage]) -> _Stage:
        st = stages.get(op.mid)
        if st is not None:
            if op.kind is not None and op.kind != st.slot.kind.name:
                raise UnknownKind(f"machine {op.mid!r} is a {st.slot.kind.name!r}, not a {op.kind!r}")
            return st
        slot = self._cache.get(op.mid)
        if slot is not None and slot.log.key in self.store._logs:
            # a Log object exists for it: it may have been appended outside the fleet (compare-and-append)
            head = fs.read_head(txn, self._dbs, slot.log.lid)
            if head is None or head[0] != slot.log.fork or head[1] != slot.log.length:
                slot = None  # appended or truncated outside the fleet: reload
                self._cache.pop(op.mid, None)
        if slot is not None:
            self._cache.move_to_end(op.mid)
        else:
            slot = self._load(txn, op)
        if slot.log.lid and slot.log.key in self.store._logs:  # shared with the Log's writers: take turns
            self._shared.check(txn, slot.log, op)
        if op.kind is not None and op.kind != slot.kind.name:
            raise UnknownKind(f"machine {op.mid!r} is a {slot.kind.name!r}, not a {op.kind!r}")
        st = stages[op.mid] = _Stage(slot)
        return st

    def _load(self, txn: Any, op: _Send) -> _Slot:
        row = fs.index_row(txn, self._dbs, op.mid)
        if row is None:
            kname = op.kind
            if kname is None:
                if len(self._kinds) != 1:
                    raise UnknownKind(
                        f"machine {op.mid!r} does not exist yet: say which kind to create (send(..., kind=...))"
                    )
                kname = next(iter(self._kinds))
            kind = self._kinds[kname]
            log = fs.new_log_state(self._seed, fs.LOG_PREFIX + op.mid)
            return _Slot(op.mid, kind, log, None, 0)
        known = self._kinds.get(row[0])
        if known is None:
            raise UnknownKind(f"machine {op.mid!r} is a {row[0]!r}, a kind this fleet has not registered")
        state = fs.load_log_state(txn, self._dbs, row[1])
        if state is None or state.length == 0:
            raise MachineError(f"the log of machine {op.mid!r} is missing or empty; the store is damaged")
        kind, log = known, state
        slot = restore(txn, self._dbs, op.mid, kind, log, row[5] if len(row) > 5 else None)
        self._cache[op.mid] = slot
        return slot

    def _prepare_send(self, txn: Any, op: _Send, stages: dict[str, _Stage], now: int) -> list:
        """Stage one event (``_fleet_stage``); on any error the stage is left exactly as it was."""
        return stage_event(self._slot(txn, op, stages), op, now)

    def _commit(self, ops: list[_Op]) -> list[_Op]:
        """Commit ``ops`` as one part of the store's group commit; returns the ops deferred to the
        next batch (a machine whose log has a write of this batch pending: ``_fleet_shared``)."""
        stages: dict[str, _Stage] = {}
        feed: list[list] = []
        deferred: list[_Op] = []

        def part(txn: Any, _state: Any) -> tuple[None, None]:
            stages.clear()
            feed.clear()
            deferred.clear()
            blocked: set[str] = set()  # machines deferred: their later ops wait too (per-machine order)
            meta_puts: list[tuple[bytes, bytes]] = []
            meta_deletes: list[bytes] = []
            now = self.clock()
            try:
                for op in ops:
                    op.error = None
                    if isinstance(op, _Send):
                        if op.mid in blocked:
                            deferred.append(op)
                            continue
                        try:
                            feed.append(self._prepare_send(txn, op, stages, now))
                        except Deferred:
                            blocked.add(op.mid)
                            deferred.append(op)
                        except CorelogError as exc:
                            op.error = exc
                            self._drop_unwritten(stages, op.mid)
                    elif isinstance(op, _Group):
                        mids = {send.mid for send in op.sends}
                        try:
                            if mids & blocked:
                                raise Deferred
                            stage_group(
                                op, stages, feed, lambda send: self._prepare_send(txn, send, stages, now)
                            )
                            if op.error is None:  # its cursor and dead-letter writes go with its sends
                                meta_puts.extend(op.meta_puts)
                                meta_deletes.extend(op.meta_deletes)
                        except Deferred:
                            blocked |= mids
                            deferred.append(op)
            finally:
                self._shared.close()
            self._write(txn, stages, feed, meta_puts, meta_deletes)
            return None, None

        try:
            self.store._writer.run(None, part)  # one part of the store's group commit; durable on return
            self._apply(stages, feed)
        finally:
            self._shared.release()  # the core locks taken in the part, now that the logs are published
        return deferred

    def _drop_unwritten(self, stages: dict[str, _Stage], mid: str) -> None:
        st = stages.get(mid)
        if st is not None and not st.blocks:
            del stages[mid]

    def _write(self, txn, stages: dict[str, _Stage], feed: list[list], meta_puts, meta_deletes) -> None:
        dbs = self._dbs
        meta = dbs.meta
        try:
            for mid, st in stages.items():
                if not st.blocks:
                    continue
                log = st.slot.log
                if st.new and log.lid == 0:
                    fs.create_log(txn, self.store, log)
                roots, length, byte_length, th = fs.put_blocks(txn, dbs, log, st.blocks)
                st.result = (roots, length, byte_length)
                fs.put_head(txn, dbs, log, length, byte_length, th)  # unsigned: signed when read
                snap = st.snapshot
                assert snap is not None
                txn.put(
                    fs.machine_key(mid),
                    fs.pack(
                        [
                            st.slot.kind.name,
                            log.key,
                            snap.value,
                            snap.done,
                            st.result[1],
                            snap.extras() or None,
                        ]
                    ),
                    db=meta,
                )
            if feed and (self._feed_on or self.listeners.active):
                self._feed_on = True
                seq = self._seq
                for row in feed:
                    seq += 1
                    mid, st, index = row[0], row[1], row[2]
                    txn.put(
                        fs.feed_key(seq), fs.pack([mid, st.slot.kind.name, st.slot.log.lid, index]), db=meta
                    )
                    row.append(seq)
                txn.put(fs.SEQ_KEY, fs.U64.pack(seq), db=meta)
            for k, v in meta_puts:
                txn.put(k, v, db=meta)
            for k in meta_deletes:
                txn.delete(k, db=meta)
            if self._feed_on and self.batches % 64 == 0:
                self.listeners.collect_feed(txn)
        except Exception as exc:
            import lmdb

            if isinstance(exc, lmdb.MapFullError):
                raise StoreFull(
                    f"the store at {self.store.path} is full; reopen it with a larger map_size. Nothing was recorded"
                ) from None
            raise

    def _apply(self, stages: dict[str, _Stage], feed: list[list]) -> None:
        self.batches += 1
        logs = self.store._logs
        for mid, st in stages.items():
            if not st.blocks:
                continue
            slot, log = st.slot, st.slot.log
            log.roots, log.length, log.byte_length = st.result
            prev, slot.snapshot = slot.snapshot, st.snapshot
            new = st.snapshot
            if new is not None and (new.timers or new.invocations):
                self.scheduler.watch(mid, slot.kind, prev, new)
            slot.header = st.header
            if st.new:
                self._cache[mid] = slot
            other = logs.get(log.key)  # a Log object opened on this machine outside the fleet
            if other is not None:
                publish(other)  # before the sends are acknowledged (wakes its waiters and runtimes)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        if feed and len(feed[-1]) > 6:
            # hand the batch's changes to the listeners in memory (they read the feed only to catch up)
            self._recent.append((feed[0][6], feed[-1][6], feed))
            self._recent_rows += len(feed)
            while self._recent_rows > self.recent_max_rows and len(self._recent) > 1:
                self._recent_rows -= len(self._recent.popleft()[2])
            with self._feed_cond:
                self._seq = feed[-1][6]
                self._feed_cond.notify_all()
