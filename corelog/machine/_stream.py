"""The trio duplex stream: events in (``send``), snapshots out (``async for``).

Sends are serialised in arrival order by a FIFO-fair ``trio.Lock``; each one is
prepared (pure), appended in one transaction (in a worker thread when the
store fsyncs, so the event loop keeps running) and committed. Readers never
get a per-subscriber queue: a subscription is a cursor over the *log*, which
is the buffer, woken by a ``trio.Event`` replaced on every change. A slow
consumer therefore costs nothing but its position.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import trio

from corelog import Log

from ._entries import HistoryEntry, decode
from ._interpreter import Event, Snapshot, Statechart
from ._runtime import Machine
from .errors import MachineError

_CHUNK = 256
_POLL = 0.05  # seconds between looks at the log of a read-only store


class Coremachine(Machine):
    """A machine as a trio duplex stream, sharing the synchronous API for reads and history.

    ``await cm.send(...)``; ``async for snapshot in cm`` (every new snapshot);
    ``cm.subscribe(from_index=0)`` (replay, then live); ``pipe_from``/``pipe_to``.
    Create it inside trio (it captures the trio token for thread-safe wake-ups).
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
            self._token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            raise RuntimeError(
                "create a Coremachine inside trio (e.g. in an async function run by trio.run); "
                "outside trio use the synchronous Machine"
            ) from None
        super().__init__(log, definition, actions=actions, guards=guards, migrate=migrate, clock=clock)
        self._send_lock = trio.Lock()
        self._changed = trio.Event()
        self._closed = False
        self._trio_thread = threading.get_ident()
        # durable stores fsync on commit: do that in a thread so the event loop keeps running
        self._offload = log.store.sync if offload is None else offload
        self._core._listeners.append(self._wake_threadsafe)
        # the machine's state changes only in the trio thread: a commit in another thread (a replica
        # fed by replication running in a worker thread) is handed over with run_sync_soon
        core = self._core
        core._unwatch()
        core._unwatch = log.watch(self._on_log_change)

    def _on_log_change(self, log: Log) -> None:
        core = self._core
        if core._appending:
            return  # our own send: committed by send() itself
        if threading.get_ident() == self._trio_thread:
            core._on_log_change(log)
        else:
            try:
                self._token.run_sync_soon(core._on_log_change, log)
            except trio.RunFinishedError:
                pass

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _wake_threadsafe(self) -> None:
        if threading.get_ident() == self._trio_thread:
            self._wake()
        else:
            try:
                self._token.run_sync_soon(self._wake)
            except trio.RunFinishedError:
                pass

    async def send(self, event: str | Event | Mapping | tuple, data: Any = None) -> Snapshot:  # type: ignore[override]
        """Run ``event`` to completion and record it (serialised with other sends, in arrival order).

        Accepts what :meth:`Machine.send` accepts. Cancelled while waiting for its turn, it records
        nothing. Once its entry is being appended it is no longer cancellable: the append runs to
        its end and the snapshot is committed, then the send returns it (the cancellation is
        delivered at the caller's next checkpoint), so the log and the snapshot always agree.
        After :meth:`aclose` (even one that happened while this send waited) it raises
        ``trio.ClosedResourceError`` and records nothing.
        """
        if self._closed:
            raise trio.ClosedResourceError("the machine is closed; nothing was recorded")
        self._core.check_writable()  # before waiting for a turn
        async with self._send_lock:
            if self._closed:
                raise trio.ClosedResourceError(
                    "the machine was closed while this send waited for its turn; nothing was recorded"
                )
            core = self._core
            snapshot, entry = core.prepare(event, data)  # pure: raises and changes nothing on any error
            if self._offload:
                # a checkpoint before the thread starts (cancel: nothing done); after that, uncancellable
                index = await trio.to_thread.run_sync(core.append, entry, abandon_on_cancel=False)
            else:
                index = core.append(entry)
            core.commit(snapshot, index)  # synchronous: no checkpoint between the append and this
            return snapshot

    action = send  # type: ignore[assignment]

    def truncate(self, n: int) -> Snapshot:
        """As :meth:`Machine.truncate`; refused while a send is being recorded (call it between sends)."""
        if self._send_lock.locked():
            raise MachineError("a send is being recorded: truncate between sends (e.g. before the next send)")
        return super().truncate(n)

    async def subscribe(self, from_index: int = 0, *, entries: bool = True) -> AsyncIterator[HistoryEntry]:
        """Entries from ``from_index`` on (replayed from the log), then each new one as it is recorded.

        The subscription is a cursor over the log, read in chunks of 256 entries; nothing is queued
        for it, so a slow consumer only lags. If the log is reorganised (truncated, or a replica
        following a higher fork) it rewinds to the first entry that changed and replays from there.
        On a read-only store (written by another process) it polls the log every 50 ms.
        Ends when the machine is closed.
        """
        i = max(0, from_index)
        log = self.log
        fork = log.fork
        while not self._closed:
            changed = self._changed
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
            if self._core._readonly:
                # a read-only store gets no callbacks from the writing process: poll the log
                with trio.move_on_after(_POLL):
                    await changed.wait()
            else:
                await changed.wait()

    async def snapshots(self, from_index: int | None = None) -> AsyncIterator[Snapshot]:
        """Snapshots of entries from ``from_index`` (default: only new ones) on."""
        start = self.log.contiguous_length if from_index is None else from_index
        async for entry in self.subscribe(start):
            yield self._core._snapshot_of(entry)

    def __aiter__(self) -> AsyncIterator[Snapshot]:
        return self.snapshots().__aiter__()

    async def pipe_from(self, receive_channel: trio.MemoryReceiveChannel) -> None:
        """Send every event arriving on ``receive_channel`` (until it closes)."""
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
        self._wake()
        with trio.CancelScope(shield=True):
            async with self._send_lock:  # the send in progress (if any) finishes first
                pass
        self.close()
        self._wake()

    async def __aenter__(self) -> Coremachine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


__all__ = ["Coremachine", "MachineError"]
