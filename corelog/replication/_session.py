"""Trio transports: run a Replicator over any trio stream (memory, TCP, WebRTC).

``replicate(stream, store_or_logs, initiator=...)`` is the one call: it runs the
Noise XX handshake over the stream (unless the stream is already secure), then
drives a sans-IO :class:`Replicator`.

Theory of operation
-------------------
One connection is four trio tasks in one nursery, sharing the Replicator (all
its methods run in the trio thread, so it needs no lock)::

                 +-----------+  feed()   +-------------+  next_commit()  +-----------+
    socket ----> |  reader   | --------> |  Replicator | --------------> |  storage  | --> worker thread:
                 +-----------+           |  (sans-IO)  | <-------------- +-----------+     Log.apply
                                         |             |  commit_done()
                 +-----------+  data_to_send(),        |
    socket <---- |  writer   | <-------- next_read() --+ |  (a Read runs in a worker thread:
                 +-----------+           read_done()     |   Log.proof, then one Data frame)
                                         +-------------+
                 supervisor: handshake / idle / progress timeouts, one-shot end, errors

Where each byte waits:

* in the kernel and the secure stream's record buffer until the **reader**
  takes it. The reader never awaits the writer: it only feeds the Replicator,
  which validates every frame at once. The only thing that pauses reading is
  received Data not yet committed over ``Limits.max_backlog`` (storage always
  progresses without the network, so this cannot deadlock);
* as a partial frame in the Connection's decoder (at most ``max_frame``);
* as Commits (received Data, at most the requests we have in flight, which the
  peer cannot exceed) until the **storage** task verifies and commits them in a
  worker thread, in order, a batch per thread hop, grouped in ``store.batch()``
  transactions (the store's group-commit writer: one fsync per group). Only a
  few small blocks (``INLINE_COMMIT``, a live update) into a store that does
  not fsync are committed on the loop, by the reader as soon as it decoded them
  (never while a batch is in a thread): that costs less than the thread hop;
* as small Request records (at most our announced ``max_inflight``) until the
  **writer** is free: only then is the range read and the Data frame built, so
  answers are produced exactly as fast as the peer drains them. One thread hop
  reads small answers together (up to ``READ_BATCH`` bytes) or one bigger
  answer alone, and its frames are sent before the next hop reads more, so the
  first answer leaves as soon as it is read. A live peer's tail request waits
  parked until its log grows; the writer then sends the Head and the Data
  answering it in one write;
* as control frames (Open, Head coalesced per channel, Request, NoData, Pong:
  each bounded by channels, credit or ``max_pings``) until the writer sends them.

Two peers that both read and write at once therefore never wait on each other:
each side's reader keeps draining while its writer is blocked on a full socket.

Anything a peer sends that fails ends only this connection: the Replicator sets
``error`` and queues an Error frame, the writer sends it (for at most
``error_grace`` seconds), and ``run`` raises that typed error. ``live=False``
always ends: success, or ``SyncTimeout`` (silence, no Hello, no progress),
``SyncIncomplete`` (the peer withheld data), its subclass ``ConnectionLost``
(the connection was reset, broke, was closed or ended early, on any transport:
the reader's and writer's transport exceptions become this one typed error, and
``_transport.root_cause`` picks it out of the tasks' exception group), or the
peer's protocol error. Everything committed before any of these is verified
and kept, so a second sync resumes where the first stopped.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable

import trio

from corelog import Log, Store

from ._replicator import Commit, Limits, Read, Replicator
from ._transport import RESUME, TRANSPORT_ERRORS, connection_lost, root_cause
from ._work import commit_all, run_all
from .errors import ConnectionLost, ProtocolError, SyncIncomplete, SyncTimeout

# bytes the reader takes per step: one Noise record's body (_secure.START_BODY). Each record is
# decrypted in a C call that releases the GIL, and getting it back can take a switch interval
# (5 ms) while the storage worker verifies: one record per step keeps the loop's turns short.
RECEIVE_SIZE = 65514
READ_BATCH = 64 * 1024  # answers built per thread hop (bytes, roughly; a bigger one alone)
INLINE_READ = 16 * 1024  # answers this small are read on the event loop (live updates)
INLINE_COMMIT = 16 * 1024  # received Data this small is committed on the loop, if it needs no fsync
_log = logging.getLogger("corelog.replication")


class _Signal:
    """A level-triggered wake-up for one waiting task."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, deadline: float = math.inf) -> None:
        with trio.move_on_at(deadline):
            await self._event.wait()
        self._event = trio.Event()


class Session:
    """One replication connection over a trio stream.

    ``live=True`` keeps the connection open, forwarding new entries as they are
    appended, until cancelled or closed by the peer. ``live=False`` ends once
    both sides hold everything the other announced, or with a typed error.
    Limits (``max_frame``, ``max_inflight``, ``batch_blocks``, ...) are the
    fields of :class:`Limits`, given as keywords or as ``limits=``.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        source: Store | Log | Iterable[Log],
        *,
        initiator: bool,
        live: bool = True,
        static_private: bytes | None = None,
        limits: Limits | None = None,
        handshake_timeout: float = 10.0,
        idle_timeout: float = 30.0,
        progress_timeout: float = 60.0,
        error_grace: float = 2.0,
        **overrides: int | float | None,
    ):
        self._raw = stream
        self.stream: trio.abc.Stream | None = None
        self.source = source if isinstance(source, Store | Log) else list(source)
        self.initiator = initiator
        self.live = live
        self.static_private = static_private
        self.limits = limits
        self._overrides = {k: v for k, v in overrides.items() if v is not None}
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.progress_timeout = progress_timeout
        self.error_grace = error_grace
        self.replicator: Replicator | None = None
        self.remote_public_key: bytes | None = None
        self._synced = trio.Event()
        self._ready = trio.Event()
        self._writer_wake = _Signal()
        self._storage_wake = _Signal()
        self._reader_wake = _Signal()
        self._super_wake = _Signal()
        self._flushed = trio.Event()
        self._eof = False
        self._committing = False
        self._dirty: set[bytes] = set()
        self._watched: dict[bytes, object] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._trio_thread: int | None = None
        self._closed = False
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._first = b""
        self._sending = False

    # --- public ----------------------------------------------------------------------

    async def wait_ready(self) -> None:
        """Until the handshake is done and the replicator started."""
        await self._ready.wait()

    async def wait_synced(self) -> None:
        """Until the first full sync (every channel caught up with what the peer announced)."""
        await self._synced.wait()

    @property
    def synced(self) -> bool:
        return self.replicator is not None and self.replicator.synced

    @property
    def stats(self):
        return self.replicator.stats if self.replicator else None

    @property
    def conflicts(self) -> list[bytes]:
        """Keys of logs found conflicted (equivocating writer) on this connection."""
        return list(self.replicator.stats.conflicts) if self.replicator else []

    @property
    def unanswered(self) -> list[Log]:
        """Logs we offered that the peer did not open (it does not hold or share them)."""
        return self.replicator.unanswered if self.replicator else []

    def add_log(self, log: Log) -> None:
        """Replicate one more log on this live connection."""
        if self.replicator is None:
            raise RuntimeError("the session has not started yet; await wait_ready() first")
        self.replicator.open_log(log)
        self._watch_new_logs()
        self._kick()

    async def run(self) -> None:
        """Handshake, then replicate until done, cancelled, or the peer closes."""
        self._token = trio.lowlevel.current_trio_token()
        self._trio_thread = threading.get_ident()
        started = trio.current_time()
        try:
            with trio.move_on_after(self.handshake_timeout) as hs:
                self.stream = await self._secure()
            if hs.cancelled_caught:
                raise SyncTimeout(f"the peer did not complete the handshake in {self.handshake_timeout} s")
            hh = getattr(self.stream, "handshake_hash", None)
            if hh is None:
                raise ProtocolError("the stream has no handshake hash to bind capabilities to")
            self.remote_public_key = getattr(self.stream, "remote_public_key", None)
            rep = self.replicator = Replicator(
                self.source,
                handshake_hash=hh,
                initiator=self.initiator,
                limits=self.limits,
                clock=trio.current_time,
                live=self.live,
                **self._overrides,
            )
            self._watch_new_logs()
            self._first = rep.start()
            self._last_rx = self._last_tx = trio.current_time()
            self._ready.set()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._storage)
                    nursery.start_soon(self._reader)
                    await self._supervise(started)
                    nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                raise root_cause(group, rep.error) from None
        finally:
            self._closed = True
            self._unwatch()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream if self.stream is not None else self._raw)

    # --- tasks ---------------------------------------------------------------------

    def _kick(self) -> None:
        """Wake the tasks that have something to do (a waiting task costs a loop turn to wake)."""
        rep = self.replicator
        assert rep is not None
        if rep.wants_write or rep.error is not None or rep.next_deadline is not None:
            self._writer_wake.set()  # (it also retries backed-off channels)
        if rep.has_commits:
            self._storage_wake.set()
        self._super_wake.set()

    async def _reader(self) -> None:
        rep = self.replicator
        assert rep is not None and self.stream is not None
        while rep.error is None:
            while rep.backlog > rep.limits.max_backlog and rep.error is None:
                await self._reader_wake.wait()  # storage is behind: let it catch up (never the writer)
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except TRANSPORT_ERRORS as exc:
                raise connection_lost(exc, "receiving") from exc
            self._last_rx = trio.current_time()
            handled = rep.handled
            rep.feed(data)
            if rep.handled == handled and data and rep.error is None:
                continue  # part of a frame: nothing changed, nobody to wake
            self._commit_small()  # a live update: committed before anything else runs
            self._watch_new_logs()
            if rep.synced and not self._synced.is_set():
                self._synced.set()
            self._kick()
            if not data:
                self._eof = True
                return

    async def _storage(self) -> None:
        rep = self.replicator
        assert rep is not None
        while True:
            if self._commit_small():
                continue
            batch: list[Commit] = []
            while (work := rep.next_commit()) is not None:
                batch.append(work)
            if not batch:
                await self._storage_wake.wait()
                continue
            self._committing = True
            try:
                await trio.to_thread.run_sync(commit_all, batch)  # not cancellable: it finishes
            finally:
                self._committing = False
            self._committed(batch)

    def _commit_small(self) -> bool:
        """Commit queued Data on the loop if it is a few small blocks (a live update) into stores
        that do not fsync: that costs less than the thread hop. Never while a batch is in a thread
        (commits stay in order)."""
        rep = self.replicator
        assert rep is not None
        if self._committing or not rep._commits or rep.backlog > INLINE_COMMIT:
            return False
        if any(w.log.store.sync for w in rep._commits):
            return False
        batch: list[Commit] = []
        while (work := rep.next_commit()) is not None:
            batch.append(work)
        commit_all(batch)
        self._committed(batch)
        return True

    def _committed(self, batch: list[Commit]) -> None:
        rep = self.replicator
        assert rep is not None
        for work in batch:
            rep.commit_done(work)
        if rep.synced and not self._synced.is_set():
            self._synced.set()
        self._reader_wake.set()
        self._kick()

    async def _writer(self) -> None:
        rep = self.replicator
        assert rep is not None
        keepalive = self.idle_timeout / 3
        held: Read | None = None
        await self._send(self._first)
        while True:
            for dkey in self._take_dirty():
                log = rep._logs.get(dkey)
                if log is not None:
                    rep.announce(log)
            out = rep.data_to_send()
            if rep.error is not None:
                read = held = None
            else:
                read, held = held or rep.next_read(), None
            if read is not None:
                # small answers are read together (one thread hop); a big one alone: at most
                # ~READ_BATCH bytes of answers (or one answer) exist before the peer drained them
                reads, budget = [read], READ_BATCH - read.estimate
                while budget > 0 and (more := rep.next_read()) is not None:
                    if more.estimate > budget:
                        held = more  # the next hop's first read: this one's answers go out first
                        break
                    reads.append(more)
                    budget -= more.estimate
                if READ_BATCH - budget <= INLINE_READ:
                    run_all(reads)  # a few small blocks: an LMDB read is cheaper than a thread hop
                else:
                    if out:  # (our own requests and Heads go out before the long read)
                        await self._send(out)
                        out = b""
                    await trio.to_thread.run_sync(run_all, reads)
                # a live update's Head and its Data leave in one send
                out += b"".join([rep.read_done(r) for r in reads])
                if out:
                    await self._send(out)
                self._super_wake.set()
                continue
            if out:
                await self._send(out)
                continue
            if rep.error is not None:
                self._flushed.set()
                return
            now = trio.current_time()
            if now - self._last_tx >= keepalive:
                rep.ping()
                continue
            deadline = self._last_tx + keepalive
            retry = rep.next_deadline
            if retry is not None and retry <= now:
                rep.tick()
                continue
            await self._writer_wake.wait(min(deadline, retry if retry is not None else math.inf))
            if retry is not None and trio.current_time() >= retry:
                rep.tick()

    async def _supervise(self, started: float) -> None:
        rep = self.replicator
        assert rep is not None
        while True:
            now = trio.current_time()
            if rep.error is not None:
                with trio.move_on_after(self.error_grace):
                    await self._flushed.wait()  # the Error frame, if the peer still reads
                _log.info("replication connection closed: %s: %s", type(rep.error).__name__, rep.error)
                raise rep.error
            idle = not rep.busy and not self._committing and not self._sending
            if not self.live and rep.finished and idle:
                self._check_complete()
                return
            if not self.live and rep.synced and rep.stats.failures and idle:
                self._check_complete()  # a channel gave up: no need to wait for the peer's Done
            if self._eof and idle:
                if self.live:
                    return
                if rep.finished:
                    self._check_complete()
                    return
                raise ConnectionLost(f"the peer closed the connection before the sync finished; {RESUME}")
            deadlines = [now + 1.0]
            if rep.conn.remote_hello is None:
                if now - started > self.handshake_timeout:
                    raise SyncTimeout(f"the peer sent no Hello within {self.handshake_timeout} s")
                deadlines.append(started + self.handshake_timeout)
            if now - self._last_rx > self.idle_timeout:
                raise SyncTimeout(f"the peer sent nothing for {self.idle_timeout} s")
            deadlines.append(self._last_rx + self.idle_timeout)
            wanting = not rep.synced or (not self.live and not rep.remote_done)
            if wanting:
                if now - rep.progress_at > self.progress_timeout:
                    raise SyncTimeout(
                        f"no progress for {self.progress_timeout} s: the peer talks but sends nothing useful"
                    )
                deadlines.append(rep.progress_at + self.progress_timeout)
            await self._super_wake.wait(min(deadlines) + 0.001)

    def _check_complete(self) -> None:
        rep = self.replicator
        assert rep is not None
        if rep.stats.failures:
            reasons = "; ".join(f"{k.hex()[:16]}…: {r}" for k, r in rep.stats.failures.items())
            raise SyncIncomplete(f"the sync ended without everything the peer announced: {reasons}")

    # --- internals -------------------------------------------------------------------

    async def _secure(self) -> trio.abc.Stream:
        if getattr(self._raw, "handshake_hash", None) is not None:
            return self._raw
        from ._secure import secure_stream

        return await secure_stream(self._raw, initiator=self.initiator, static_private=self.static_private)

    async def _send(self, data: bytes) -> None:
        assert self.stream is not None
        self._sending = True
        try:
            await self.stream.send_all(data)
        except TRANSPORT_ERRORS as exc:
            raise connection_lost(exc, "sending") from exc
        finally:
            self._sending = False
        self._last_tx = trio.current_time()
        self._super_wake.set()

    def _take_dirty(self) -> set[bytes]:
        dirty, self._dirty = self._dirty, set()
        return dirty

    def _watch_new_logs(self) -> None:
        rep = self.replicator
        if rep is None or len(rep._logs) == len(self._watched):
            return  # (logs are only ever added)
        for dkey, log in rep._logs.items():
            if dkey not in self._watched:
                self._watched[dkey] = log.watch(self._on_log_change)

    def _unwatch(self) -> None:
        for unsubscribe in self._watched.values():
            unsubscribe()  # type: ignore[operator]
        self._watched.clear()

    def _on_log_change(self, log: Log) -> None:
        """Log.watch callback: may run in any thread; wakes the writer."""
        if self._closed:
            return
        if threading.get_ident() == self._trio_thread:
            self._mark(log.discovery_key)
        elif self._token is not None:
            try:
                self._token.run_sync_soon(self._mark, log.discovery_key)
            except trio.RunFinishedError:
                pass

    def _mark(self, dkey: bytes) -> None:
        self._dirty.add(dkey)
        self._writer_wake.set()


async def replicate(
    stream: trio.abc.Stream,
    source: Store | Log | Iterable[Log],
    *,
    initiator: bool,
    live: bool = True,
    **kw,
) -> Session:
    """Replicate a log, some logs, or a whole store over ``stream``; returns the finished Session.

    Runs the Noise XX handshake first unless the stream is already secure.
    Raises the typed error (InvalidProof, InvalidSignature, ProtocolError,
    RemoteError, SyncTimeout, SyncIncomplete, ...) that ended the connection, if any.
    """
    session = Session(stream, source, initiator=initiator, live=live, **kw)
    await session.run()
    return session
