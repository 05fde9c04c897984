"""The store writer: every write transaction of a Store, group-committed.

Theory of operation
-------------------
LMDB allows one write transaction at a time per environment, and a durable
commit costs one fsync whatever it holds. So a Store has exactly one writer
(this module) and every change (append, truncate, a verified download, a new
log, a record update) is a *part*: a function run inside the writer's
transaction. Parts that arrive while a commit is in progress queue up, and the
next commit takes them all: one LMDB transaction, one fsync (group commit).

Leader and followers: a caller that finds the writer idle becomes the *leader*
and commits its own part at once (a lone caller pays nothing for batching: it
takes the writer with one lock round trip, commits in a transaction of its
own without a queue entry, and gives the writer back with another).
Callers arriving meanwhile enqueue their part and sleep. When the leader is
done it wakes the callers it committed for, then promotes the first queued
caller to leader, which commits everything queued by then. A thread waits on a
lock of its own; a trio task is parked (``wait_task_rescheduled``) and
rescheduled through its run's token (``_wakers.TrioTaskWake``; the tasks of
one run in one hop), and only a leader needs a worker thread.

Every writer transaction has the store's data database as its default, so
hot parts (``_append``) put without naming it.

Isolation: in a batch of several parts, each runs in a nested LMDB
transaction, so a part that raises is rolled back alone and its caller gets
its own error; the others commit. Appends are *flat* parts: they raise only
before their first write (or an ``lmdb.Error``), so a batch made only of
them runs in the batch transaction itself, without a nested transaction per
part; an ``lmdb.Error`` in the middle of one spoils the transaction, and the
batch is then run again part by part, nested. Parts compute from the batch's *pending*
state of their log (``LogState``), so two appends to one log in one batch
chain; heads are written once per log at the end of the batch. A head of a
log this store writes is written unsigned and signed when it is read (see
``_heads``): a commit makes no signature, and a head nobody reads is never
signed. Trio tasks of one run are woken with one ``run_sync_soon`` per commit. Callers return once the commit is durable
(``sync=True``) and the logs' in-memory state and change versions are
published.

``Store.batch()`` makes the calling thread the leader for a block of code:
parts run at once in the open transaction (their results are returned at once,
durable only when the block exits), and the block commits (or, if it raises,
aborts) as one transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import lmdb

from ._tree import Node
from ._wakers import TrioTaskWake, wake_all
from .errors import CorelogError, StoreClosed, StoreFull

if TYPE_CHECKING:
    from ._log import Log
    from ._store import Store


class LogState(NamedTuple):
    """A log's head and what appends need, as committed (``Log._st``) or pending in a batch."""

    fork: int
    length: int
    contig: int
    byte_length: int
    tree_hash: bytes
    signature: bytes | None  # None: our own head, stored unsigned, signed when read (``_heads``)
    roots: tuple[Node, ...]  # roots of ``length`` (writable, contiguous logs only)
    record: dict[str, Any]
    encoded_roots: bytes | None = None  # ``_crypto.encode_roots(roots)``, once an append has made it


def signed(st: LogState, signature: bytes) -> LogState:
    """``st`` with its signature (faster than ``_replace``)."""
    return LogState(
        st.fork,
        st.length,
        st.contig,
        st.byte_length,
        st.tree_hash,
        signature,
        st.roots,
        st.record,
        st.encoded_roots,
    )


class Followup(Exception):
    """Raised by a part: roll its writes back, run ``then`` in their place, fail with ``error``."""

    def __init__(self, error: BaseException, then: Callable[[lmdb.Transaction, LogState], LogState]):
        self.error = error
        self.then = then


# part status
_QUEUED, _DONE, _LEAD = 0, 1, 2

PartFn = Callable[[lmdb.Transaction, Any], tuple[Any, Any]]


class _Part:
    __slots__ = ("log", "fn", "flat", "result", "error", "status", "wake")

    def __init__(self, log: Log | None, fn: PartFn, flat: bool = False):
        self.log = log
        self.fn = fn
        self.flat = flat  # it raises only before its first write (or an lmdb.Error): see _Batch.run_flat
        self.result: Any = None
        self.error: BaseException | None = None
        self.status = _QUEUED
        self.wake: Callable[[], None] | None = None

    def outcome(self) -> Any:
        if self.error is not None:
            err, self.error = self.error, None
            raise err
        return self.result


def _map_full(store: Store) -> StoreFull:
    return StoreFull(
        f"the store at {store.path} is full (map_size {store.map_size} bytes); reopen it with a larger map_size"
    )


class _Batch:
    """One open write transaction and the pending state of every log it touched."""

    def __init__(self, store: Store):
        self.store = store
        self.txn = store._env.begin(write=True, db=store._dbs.data)
        self.states: dict[int, tuple[Log, LogState]] = {}
        self.parts: list[_Part] = []
        self.count = 0

    def run(self, part: _Part, *, nested: bool = True) -> None:
        """Run one part; on failure its writes are rolled back and ``part.error`` set."""
        log = part.log
        st: Any = None
        if log is not None:
            entry = self.states.get(log.id)
            st = entry[1] if entry is not None else log._st
        txn = (
            self.store._env.begin(write=True, parent=self.txn, db=self.store._dbs.data)
            if nested
            else self.txn
        )
        self.count += 1
        try:
            result, new = part.fn(txn, st)
            if nested:
                txn.commit()
        except Followup as f:
            self._undo(txn, nested)
            part.error = f.error
            # the follow-up (e.g. recording a conflict) runs in a fresh nested transaction
            child = self.store._env.begin(write=True, parent=self.txn, db=self.store._dbs.data)
            try:
                new = f.then(child, st)
                child.commit()
            except BaseException as exc:
                child.abort()
                part.error = _translate(self.store, exc)
                return
            if log is not None and new is not st:
                self.states[log.id] = (log, new)
            return
        except BaseException as exc:
            self._undo(txn, nested)
            part.error = _translate(self.store, exc)
            return
        part.result = result
        if log is not None and new is not st:
            self.states[log.id] = (log, new)

    def run_flat(self, part: _Part) -> BaseException | None:
        """Run a *flat* part in the batch transaction itself (no nested transaction).

        A flat part raises an ordinary error only before it writes anything, so
        that error is its caller's alone. Anything else (an ``lmdb.Error``, which
        spoils the transaction, or an interrupt) is returned: the caller aborts
        the batch and runs it again with nested transactions.
        """
        log = part.log
        assert log is not None
        entry = self.states.get(log.id)
        st = entry[1] if entry is not None else log._st
        try:
            result, new = part.fn(self.txn, st)
        except (lmdb.Error, Followup) as exc:
            return exc
        except Exception as exc:
            part.error = exc
            return None
        except BaseException as exc:
            return exc
        part.result = result
        if new is not st:
            self.states[log.id] = (log, new)
        return None

    def _undo(self, txn: lmdb.Transaction, nested: bool) -> None:
        """Roll a failed part back: its nested transaction, or (a lone part) the whole one."""
        txn.abort()
        if not nested:  # the batch's only part ran in the batch transaction: start afresh
            self.states.clear()
            self.txn = self.store._env.begin(write=True, db=self.store._dbs.data)

    def commit(self) -> list[tuple[Log, LogState]]:
        """Write every touched head (our own logs' unsigned), commit; returns what to publish."""
        out = list(self.states.values())
        try:
            for log, st in out:
                log._put_head(self.txn, st)
            self.txn.commit()
        except BaseException:
            self.txn.abort()
            raise
        return out

    def abort(self) -> None:
        self.txn.abort()


def _translate(store: Store, exc: BaseException) -> BaseException:
    if isinstance(exc, lmdb.MapFullError):
        return _map_full(store)
    if isinstance(exc, lmdb.Error) and store._closed:
        return StoreClosed(f"the store at {store.path} is closed")
    return exc


class Writer:
    """The single writer of a Store (see the module docstring)."""

    def __init__(self, store: Store):
        self._store = store
        self._mu = threading.Lock()
        self._idle = threading.Condition(self._mu)
        self._busy = False
        self._queue: list[_Part] = []
        self._closed = False
        self._batch: _Batch | None = None  # the open store.batch() ...
        self._batch_tid = 0  # ... and the thread it belongs to
        self._wakes: list[Callable[[], None]] = []  # the leader's: log waiters to wake with its parts
        self.commits = 0  # LMDB write transactions committed (tests and benchmarks read it)

    # --- submitting -------------------------------------------------------------

    def _closed_error(self) -> StoreClosed:
        return StoreClosed(f"the store at {self._store.path} is closed; reopen it to write")

    def run(self, log: Log | None, fn: PartFn, flat: bool = False) -> Any:
        """Run ``fn(txn, pending_state) -> (result, new_state)`` in a group commit; wait for it.

        ``flat``: ``fn`` (for ``log``, not None) raises only before its first write, or an
        ``lmdb.Error``; it may then share the batch transaction without a nested one.
        """
        batch = self._batch
        if batch is not None and self._batch_tid == threading.get_ident():  # inside store.batch(): run now
            part = _Part(log, fn, flat)
            batch.run(part)
            return part.outcome()
        mu = self._mu
        mu.acquire()  # (not ``with``: this is every append's path, and nothing here raises)
        lone = not (self._busy or self._closed) and log is not None
        if lone:
            self._busy = True
        mu.release()
        if not lone:
            return self._run_queued(log, fn, flat)
        # the writer was idle: commit alone, at once (the common uncontended case), no part
        try:
            ok, value, changed = self._commit_alone(log, fn)  # type: ignore[arg-type]
        except BaseException:
            self._release_lead()
            raise
        if ok is None:  # it needs the general path (e.g. a conflict to record)
            part = _Part(log, fn, flat)
            part.status = _LEAD
            self._lead(part)
            return part.outcome()
        wakes = self._wakes
        if wakes:
            self._wakes = []
        self._release_lead()
        if wakes:
            wake_all(wakes)
        if changed and log._watchers:  # type: ignore[union-attr]
            log._notify()  # type: ignore[union-attr]
        if ok:
            return value
        raise value

    def _run_queued(self, log: Log | None, fn: PartFn, flat: bool) -> Any:
        """``run`` when the writer is busy (or closed, or for a part of no log): queue up."""
        part = _Part(log, fn, flat)
        lock = self._join(part)
        if lock is not None:
            lock.acquire()  # released when our part is done or we are promoted
            if part.status == _DONE:
                return part.outcome()
        self._lead(part)  # promoted, or the writer went idle meanwhile
        return part.outcome()

    def _join(self, part: _Part) -> threading.Lock | None:
        """Lead at once if the writer is idle (None), else queue ``part`` and return the held
        lock that is released when it is done or promoted to lead."""
        with self._mu:
            if self._closed:
                raise self._closed_error()
            if not self._busy:
                self._busy = True
                part.status = _LEAD
                return None
            lock = threading.Lock()
            lock.acquire()
            part.wake = lock.release
            self._queue.append(part)
            return lock

    def _release_lead(self) -> None:
        mu = self._mu
        mu.acquire()
        if not self._queue and not self._closed:  # nobody waiting: go idle (every append's path)
            self._busy = False
            mu.release()
            return
        mu.release()
        with mu:
            if self._queue and not self._closed:
                nxt = self._queue.pop(0)
                nxt.status = _LEAD
                wake = nxt.wake
            else:
                self._handoff_closed()
                return
        wake()  # type: ignore[misc]

    def _handoff_closed(self) -> None:
        """With ``_mu`` held and nobody to promote: fail what is queued (closed) and go idle."""
        for p in self._queue:
            p.error = self._closed_error()
            p.status = _DONE
            p.wake()  # type: ignore[misc]
        self._queue.clear()
        self._busy = False
        if self._closed:  # close() may be waiting for the writer to go idle
            self._idle.notify_all()

    async def run_async(self, log: Log | None, fn: PartFn, flat: bool = False) -> Any:
        """``run`` for trio tasks: waits without a thread; a leader commits in a worker thread."""
        import trio

        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled already: nothing is written
        batch = self._batch
        part = _Part(log, fn, flat)
        if batch is not None and self._batch_tid == threading.get_ident():
            batch.run(part)
            return part.outcome()
        lowlevel = trio.lowlevel
        wake = TrioTaskWake(lowlevel.current_task(), lowlevel.current_trio_token())
        with self._mu:
            if self._closed:
                raise self._closed_error()
            if self._busy:
                part.wake = wake
                self._queue.append(part)
            else:
                self._busy = True
                part.status = _LEAD
        if part.status != _LEAD:

            def abort(_: Any) -> trio.lowlevel.Abort:
                with self._mu:
                    # still queued (a leader takes parts out of the queue under _mu, and marks
                    # them done only after the commit): withdraw it, nothing is written
                    if part.status == _QUEUED and any(p is part for p in self._queue):
                        self._queue.remove(part)
                        return lowlevel.Abort.SUCCEEDED
                # taken: it commits and we are woken with the outcome; the cancellation
                # surfaces at the caller's next checkpoint
                return lowlevel.Abort.FAILED

            # parked without an Event: the writer reschedules this task (``wake``) exactly once
            await lowlevel.wait_task_rescheduled(abort)
            if part.status == _DONE:
                return part.outcome()
        # we hold the writer: the commit must run (shielded, or a cancellation arriving
        # now would leave the writer busy forever); its outcome is returned, and a
        # cancellation surfaces at the caller's next checkpoint
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._lead, part)
        return part.outcome()

    # --- leading -------------------------------------------------------------------

    def _lead(self, first: _Part) -> None:
        with self._mu:
            parts = [first, *self._queue]
            self._queue.clear()
            closed = self._closed
        changed: list[Log] = []
        try:
            if closed:
                for p in parts:
                    p.error = self._closed_error()
            else:
                changed = self._commit(parts)
        finally:
            self._finish(parts, first)
        for log in changed:  # old-style watchers run after the writer is free for them
            log._notify()

    def _commit_alone(self, log: Log, fn: PartFn) -> tuple[bool | None, Any, bool]:
        """Commit ``fn`` for ``log`` in a transaction of its own and publish the new state.

        Returns ``(True, result, changed)``, ``(False, error, False)``, or ``(None, None,
        False)`` when it needs the general path (a ``Followup``, e.g. a conflict to record:
        rolled back, nothing written).
        """
        store = self._store
        st = log._st
        try:
            txn = store._env.begin(store._dbs.data, None, True)  # (db, parent, write): no keywords to parse
        except BaseException as exc:
            return False, _translate(store, exc), False
        try:
            result, new = fn(txn, st)
            if new is not st:
                log._put_head(txn, new)
            txn.commit()
        except Followup:
            txn.abort()
            return None, None, False
        except BaseException as exc:
            txn.abort()
            return False, _translate(store, exc), False
        self.commits += 1
        if new is st:
            return True, result, False
        log._publish(new, self._wakes)
        return True, result, True

    def _commit(self, parts: list[_Part]) -> list[Log]:
        lone = parts[0]
        if len(parts) == 1 and lone.log is not None:  # without batch bookkeeping, if it can
            ok, value, changed = self._commit_alone(lone.log, lone.fn)
            if ok is not None:
                if ok:
                    lone.result = value
                else:
                    lone.error = value
                return [lone.log] if changed else []
        batch = self._new_batch(parts)
        if batch is None:
            return []
        single = len(parts) == 1  # a lone caller runs in the batch transaction itself
        if not single and all(p.flat for p in parts):
            spoilt: BaseException | None = None
            k = 0
            while k < len(parts) and spoilt is None:
                spoilt = batch.run_flat(parts[k])
                k += 1
            if spoilt is None:
                return self._commit_or_drop(batch, parts)
            # an lmdb error (or an interrupt) in the middle of a part: start again, each part
            # in its own nested transaction (flat parts are pure functions of the log state)
            batch.abort()
            for p in parts:
                p.result = p.error = None
            if not isinstance(spoilt, Exception):  # an interrupt goes to that part's caller
                parts[k - 1].error = spoilt
                parts = parts[: k - 1] + parts[k:]
            batch = self._new_batch(parts)
            if batch is None:
                return []
        for p in parts:
            batch.run(p, nested=not single)
        return self._commit_or_drop(batch, parts)

    def _new_batch(self, parts: list[_Part]) -> _Batch | None:
        """A batch transaction for ``parts``; None (each part failed with the reason) if none opens."""
        try:
            return _Batch(self._store)
        except BaseException as exc:
            err = _translate(self._store, exc)
            for p in parts:
                p.error = err
            return None

    def _commit_or_drop(self, batch: _Batch, parts: list[_Part]) -> list[Log]:
        if not batch.states and all(p.error is not None for p in parts):
            batch.abort()  # nothing to write (creations without a log count as results)
            return []
        return self._commit_batch(batch, parts)

    def _commit_batch(self, batch: _Batch, parts: list[_Part]) -> list[Log]:
        try:
            published = batch.commit()
        except BaseException as exc:
            err = _translate(self._store, exc)
            if isinstance(err, lmdb.Error):
                err = CorelogError(f"the commit to {self._store.path} failed: {err}; nothing was written")
            for p in parts:
                if p.error is None:
                    p.error = err
                    p.result = None
            return []
        self.commits += 1
        for log, st in published:
            log._publish(st, self._wakes)
        return [log for log, _ in published]

    def _finish(self, parts: list[_Part], leader: _Part) -> None:
        """Wake the callers of ``parts`` and hand leadership on (or go idle)."""
        wakes, self._wakes = self._wakes, []
        for p in parts:
            p.status = _DONE
            if p is not leader and p.wake is not None:
                wakes.append(p.wake)
        wake_all(wakes)  # trio tasks of one run: one hop for all of them
        self._release_lead()

    # --- explicit batches --------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Make this thread the writer for a block: everything in it commits as one transaction."""
        if self.in_batch():
            yield  # nested: part of the enclosing batch
            return
        marker = _Part(None, lambda txn, st: (None, st))
        lock = self._join(marker)
        if lock is not None:
            lock.acquire()
            if marker.status == _DONE:  # the store closed while we waited
                marker.outcome()
        parts: list[_Part] = [marker]
        try:
            try:
                batch = _Batch(self._store)
            except lmdb.Error as exc:
                raise _translate(self._store, exc) from None
            self._batch_tid = threading.get_ident()
            self._batch = batch
            try:
                yield
            except BaseException:
                batch.abort()
                raise
            finally:
                self._batch = None
            with self._mu:  # take in whatever queued up meanwhile
                parts.extend(self._queue)
                self._queue.clear()
            for p in parts[1:]:
                batch.run(p)
            changed = self._commit_batch(batch, parts)
            marker.outcome()
        finally:
            self._finish(parts, marker)
        for log in changed:
            log._notify()

    def in_batch(self) -> bool:
        return self._batch is not None and self._batch_tid == threading.get_ident()

    # --- closing ---------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Refuse new parts, fail queued ones with StoreClosed, wait for the running commit."""
        with self._mu:
            self._closed = True
            for p in self._queue:
                p.error = self._closed_error()
                p.status = _DONE
                if p.wake is not None:
                    p.wake()
            self._queue.clear()
            if self.in_batch():
                return  # closing from inside a batch: the batch's own commit will fail
            self._idle.wait_for(lambda: not self._busy, timeout)
