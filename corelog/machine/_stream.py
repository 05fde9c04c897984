"""The trio duplex stream: events in (``send``), snapshots out (``async for``).

A :class:`Coremachine` is the trio face over the log's shared core (``_core``),
as :class:`~._runtime.Machine` is the synchronous one. Sends of one trio run on
one log are serialised in arrival order by FIFO turns (``_Turns``) per (run,
log); the log's own lock (shared with every thread and object on the log) is
then taken without blocking the event loop: at once if free, otherwise in a
worker thread. The event runs in the trio thread; the commit runs inline when
the store does not fsync, and when it does the send awaits the store writer's
``append_async``: concurrent sends of many machines (any logs) are coalesced
into one transaction and one fsync (group commit), no thread is parked per
waiting send, and the event loop never waits for a disk.
Readers never get a per-subscriber queue: a subscription is a cursor over the
*log*, which is the buffer, woken by the log's change version
(``wait_changed_async``). A slow consumer therefore costs nothing but its
position.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import trio

from corelog import Log

from ._core import RETRIES, LogCore, _Moved
from ._entries import HistoryEntry, decode
from ._frozen import _SCALARS
from ._interpreter import Event, Snapshot, Statechart
from ._runtime import _Face, _Reads, prepare_event
from .errors import HeadMoved, MachineError

_CHUNK = 256

_LIMITER: trio.lowlevel.RunVar = trio.lowlevel.RunVar("corelog_machine_lock_waits")
_RUN_LOCKS: trio.lowlevel.RunVar = trio.lowlevel.RunVar("corelog_machine_locks")


def _lock_waits() -> trio.CapacityLimiter:
    """This run's limiter for threads waiting on a log's lock held elsewhere (not trio's default
    limiter, which the store writer's commits use: lock waiters never starve a lock holder)."""
    try:
        return _LIMITER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(256)
        _LIMITER.set(limiter)
        return limiter


class _Turns:
    """FIFO turns for one trio run's sends on one log: a ``trio.Lock`` without its owner and
    deadlock bookkeeping (a turn is always released by the task that took it, in ``send``)."""

    __slots__ = ("_busy", "_lot")

    def __init__(self) -> None:
        self._busy = False
        self._lot = trio.lowlevel.ParkingLot()

    def locked(self) -> bool:
        return self._busy

    def take_nowait(self) -> None:
        """Take the free turn (the caller checked ``locked()``)."""
        self._busy = True

    async def take(self) -> None:
        """Wait for the turn (a checkpoint); cancelled while waiting, the turn is not taken."""
        if not self._busy:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._busy = True
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        await self._lot.park()  # handed over by release(): we hold it when this returns

    def release(self) -> None:
        if self._lot:
            self._lot.unpark()  # the turn passes to the first waiter (it stays busy)
        else:
            self._busy = False

    async def __aenter__(self) -> None:
        await self.take()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def _run_lock(core: LogCore) -> _Turns:
    """The FIFO turns ordering this run's sends on ``core``'s log (shared by its Coremachines)."""
    try:
        locks = _RUN_LOCKS.get()
    except LookupError:
        locks = weakref.WeakKeyDictionary()
        _RUN_LOCKS.set(locks)
    lock = locks.get(core)
    if lock is None:
        lock = locks[core] = _Turns()
    return lock


async def _acquire(lock: threading.Lock, limiter: trio.CapacityLimiter) -> None:
    """Take a thread lock without blocking the event loop; cancellable only before the wait starts."""
    if not lock.acquire(blocking=False):
        await trio.to_thread.run_sync(lock.acquire, abandon_on_cancel=False, limiter=limiter)


class Coremachine(_Reads):
    """A machine as a trio duplex stream, with the synchronous Machine's reads and history.

    ``await cm.send(...)``; ``async for snapshot in cm`` (every new snapshot);
    ``cm.subscribe(from_index=0)`` (replay, then live); ``pipe_from``/``pipe_to``.
    Create it inside trio. ``offload`` (default: the store's ``sync``) commits through the store
    writer's async path (group commit, off the event loop) instead of inline.
    """

    def __init__(
        self,
        log: Log,
        definition: Mapping | Statechart | None = None,
        *,
        actions: Mapping[str, Callable] | None = None,
        guards: Mapping[str, Callable] | None = None,
        migrate: bool = False,
        clock: Callable[[], int] | None = None,
        offload: bool | None = None,
    ):
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:
            raise RuntimeError(
                "create a Coremachine inside trio (e.g. in an async function run by trio.run); "
                "outside trio use the synchronous Machine"
            ) from None
        self._face = face = _Face(log, definition, actions, guards, migrate, clock)
        self._send_lock = _run_lock(face.core)
        self._closed = False
        self._offload = log.store.sync if offload is None else offload
        self._waits: set[trio.CancelScope] = set()  # subscribers waiting for a change (aclose ends them)

    async def send(self, event: str | Event | Mapping | tuple, data: Any = None) -> Snapshot:
        """Run ``event`` to completion and record it (serialised with other sends, in arrival order).

        Accepts what :meth:`Machine.send` accepts, with the same compare-and-append. Cancelled
        while waiting for its turn, it records nothing. Once its entry is being appended it is no
        longer cancellable: the append runs to its end and the snapshot is committed, then the
        send returns it (the cancellation is delivered at the caller's next checkpoint), so the log
        and the snapshot always agree. After :meth:`aclose` (even one that happened while this
        send waited) it raises ``trio.ClosedResourceError`` and records nothing.
        """
        if self._closed:
            raise trio.ClosedResourceError("the machine is closed; nothing was recorded")
        face = self._face
        if face._cursor is not None or not face.log.writable:
            face.check_sendable()  # raises (before waiting for a turn)
        if type(event) is str and (data is None or type(data) in _SCALARS):
            etype, edata = event, data  # nothing to copy
        else:
            etype, edata = prepare_event(event, data)
        core = face.core
        lock = self._send_lock
        waited = not self._offload or lock._busy
        if waited:
            if lock._busy:
                await lock.take()  # a checkpoint; cancelled while waiting for the turn: nothing recorded
            else:  # (take()'s free path, inlined: one coroutine less per send)
                await trio.lowlevel.checkpoint_if_cancelled()
                lock._busy = True
                await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            # our turn at once: no scheduling round here (append_async checkpoints before writing)
            lock.take_nowait()
        try:
            if self._closed:
                raise trio.ClosedResourceError(
                    "the machine was closed while this send waited for its turn; nothing was recorded"
                )
            if not self._offload and core.lock.acquire(blocking=False):
                try:
                    return face.send_locked(etype, edata)
                finally:
                    core.lock.release()
            if not core.lock.acquire(blocking=False):
                await _acquire(core.lock, _lock_waits())
            try:
                for attempt in range(RETRIES):
                    try:  # pure: raises, changes nothing
                        h, new, entry, extras = face.prepare_locked(etype, edata, attempt > 0)
                    except Exception:
                        if not waited:  # a failing send still lets other tasks run (a scheduling point)
                            await trio.lowlevel.cancel_shielded_checkpoint()
                        raise
                    try:
                        if self._offload:
                            # cancelled before its commit starts: nothing done; once started it completes
                            index = await core.append_async_locked(entry, h.length)
                        else:
                            index = core.append_locked(entry, h.length)
                    except _Moved:
                        continue
                    face.commit_locked(h, new, index, extras)  # synchronous: no checkpoint since the append
                    return new
                raise HeadMoved(
                    f"the log grew under the machine {RETRIES} times in a row (something appends to it "
                    "without the runtime); nothing was recorded for this event"
                )
            finally:
                core.lock.release()
        finally:
            lock.release()

    action = send

    async def run(self, services: Mapping[str, Callable[..., Any]] | None = None) -> Any:
        """Run this machine's delayed transitions and invoked services until it is done; its output.

        Start it in a nursery (``nursery.start_soon(cm.run, {"fetch": fetch})``); cancel the
        nursery to stop. Resumes from the log: overdue timers fire once, invocations started
        without a recorded outcome run again (same idempotency key). See ``_scheduler.drive``.
        """
        from ._scheduler import drive

        return await drive(self, services)

    def truncate(self, n: int) -> Snapshot:
        """As :meth:`Machine.truncate`; refused while a send is being recorded (call it between sends)."""
        core = self._face.core
        if self._send_lock.locked() or not core.lock.acquire(blocking=False):
            raise MachineError("a send is being recorded: truncate between sends (e.g. before the next send)")
        try:
            return self._face.truncate_locked(n)
        finally:
            core.lock.release()

    async def subscribe(self, from_index: int = 0, *, entries: bool = True) -> AsyncIterator[HistoryEntry]:
        """Entries from ``from_index`` on (replayed from the log), then each new one as it is recorded.

        The subscription is a cursor over the log, read in chunks of 256 entries; nothing is queued
        for it, so a slow consumer only lags. If the log is reorganised (truncated, or a replica
        following a higher fork) it rewinds to the first entry that changed and replays from there.
        It waits on the log's change version (on a read-only store, written by another process,
        that polls the log). Ends when the machine is closed.
        """
        i = max(0, from_index)
        log = self.log
        fork = log.fork
        while not self._closed:
            version = log.version  # before looking: a change after this wakes the wait below
            n, f = log.contiguous_length, log.fork
            if f != fork:
                i = min(i, log.common_prefix(fork, i))
                fork = f
            i = min(i, n)
            if i < n:
                end = min(n, i + _CHUNK)
                batch = [decode(j, b) for j, b in enumerate(log.iter(i, end), i)]
                for e in batch:
                    if self._closed:
                        return
                    yield e
                    i += 1
                    if log.fork != fork:
                        break  # reorganised while we yielded: the rest of the batch may be stale
                continue
            with trio.CancelScope() as scope:
                self._waits.add(scope)
                try:
                    if not self._closed:
                        await log.wait_changed_async(version)
                finally:
                    self._waits.discard(scope)

    async def snapshots(self, from_index: int | None = None) -> AsyncIterator[Snapshot]:
        """Snapshots of entries from ``from_index`` (default: only new ones) on."""
        start = self.log.contiguous_length if from_index is None else from_index
        async for entry in self.subscribe(start):
            yield self._face.entry_snapshot(entry)

    def __aiter__(self) -> AsyncIterator[Snapshot]:
        return self.snapshots().__aiter__()

    async def pipe_from(self, receive_channel: trio.MemoryReceiveChannel) -> None:
        """Send every event arriving on ``receive_channel`` (until it closes).

        An event the machine rejects (``EventNotAccepted``, a failing guard or action, a context
        or event data that cannot be recorded) records nothing and raises out of ``pipe_from``:
        the pipe ends there (the receive channel is closed, the events before it stay recorded).
        To skip rejected events, loop over the channel and catch the errors of ``send`` yourself.
        """
        async with receive_channel:
            async for item in receive_channel:
                await self.send(item)

    async def pipe_to(self, send_channel: trio.MemorySendChannel, from_index: int | None = None) -> None:
        """Forward snapshots into ``send_channel`` (awaiting it: back-pressure) until closed."""
        async with send_channel:
            async for snapshot in self.snapshots(from_index):
                await send_channel.send(snapshot)

    async def aclose(self) -> None:
        """End every subscription and refuse further sends; waits for a send being recorded.

        Sends still waiting for their turn raise ``trio.ClosedResourceError`` and record nothing.
        """
        if self._closed:
            return
        self._closed = True
        self._end_waits()
        with trio.CancelScope(shield=True):
            async with self._send_lock:  # the send in progress (if any) finishes first
                pass
        self._end_waits()

    def close(self) -> None:
        """Refuse further sends and end subscriptions without waiting (``aclose`` waits for a send)."""
        self._closed = True
        self._end_waits()

    def _end_waits(self) -> None:
        for scope in list(self._waits):
            scope.cancel()

    async def __aenter__(self) -> Coremachine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


__all__ = ["Coremachine"]
