"""Trio transports: run a Replicator over any trio stream (memory, TCP, WebRTC).

``replicate(stream, store_or_logs, initiator=...)`` is the one call: it runs the
Noise XX handshake over the stream (unless the stream is already secure), then
shuttles bytes between the stream and a sans-IO :class:`Replicator`, and wakes
up on local appends (``Log.watch``) so new entries reach readers without
polling. Structured concurrency throughout: one nursery, two tasks (receive,
announce), one send lock; cancelling the call closes the connection.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import trio

from corelog import Log, Store
from corelog.errors import CorelogError

from ._replicator import Replicator
from .errors import ProtocolError

RECEIVE_SIZE = 256 * 1024


class Session:
    """One replication connection over a trio stream.

    ``live=True`` keeps the connection open, forwarding new entries as they are
    appended, until cancelled or closed by the peer. ``live=False`` ends once
    both sides hold everything the other announced.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        source: Store | Log | Iterable[Log],
        *,
        initiator: bool,
        live: bool = True,
        static_private: bytes | None = None,
        max_inflight: int = 16,
        batch_bytes: int | None = None,
        max_frame: int | None = None,
    ):
        self._raw = stream
        self.stream: trio.abc.Stream | None = None
        self.source = source if isinstance(source, Store | Log) else list(source)
        self.initiator = initiator
        self.live = live
        self.static_private = static_private
        self._kw: dict = {"max_inflight": max_inflight}
        if batch_bytes is not None:
            self._kw["batch_bytes"] = batch_bytes
        if max_frame is not None:
            self._kw["max_frame"] = max_frame
        self.replicator: Replicator | None = None
        self.remote_public_key: bytes | None = None
        self._send_lock = trio.Lock()
        self._synced = trio.Event()
        self._ready = trio.Event()
        self._wake = trio.Event()
        self._dirty: set[bytes] = set()
        self._watched: dict[bytes, object] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._trio_thread: int | None = None
        self._closed = False
        self._pending = bytearray()  # bytes queued by add_log() for the announcer to send

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

    def add_log(self, log: Log) -> None:
        """Replicate one more log on this live connection."""
        if self.replicator is None:
            raise RuntimeError("the session has not started yet; await wait_ready() first")
        self._queue(self.replicator.add_log(log))
        self._watch_new_logs()

    async def run(self) -> None:
        """Handshake, then replicate until done, cancelled, or the peer closes."""
        self._token = trio.lowlevel.current_trio_token()
        self._trio_thread = threading.get_ident()
        try:
            self.stream = await self._secure()
            hh = getattr(self.stream, "handshake_hash", None)
            if hh is None:
                raise ProtocolError("the stream has no handshake hash to bind capabilities to")
            self.remote_public_key = getattr(self.stream, "remote_public_key", None)
            self.replicator = Replicator(self.source, handshake_hash=hh, initiator=self.initiator, **self._kw)
            self._watch_new_logs()
            await self._send(self.replicator.start())
            self._ready.set()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._announcer)
                    await self._receiver()
                    nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                raise _single(group) from None
        finally:
            self._closed = True
            self._unwatch()
            if self.stream is not None:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(self.stream)
            else:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(self._raw)

    # --- internals -------------------------------------------------------------------

    async def _secure(self) -> trio.abc.Stream:
        if getattr(self._raw, "handshake_hash", None) is not None:
            return self._raw
        from ._secure import secure_stream

        return await secure_stream(self._raw, initiator=self.initiator, static_private=self.static_private)

    async def _receiver(self) -> None:
        rep = self.replicator
        assert rep is not None and self.stream is not None
        while True:
            data = await self.stream.receive_some(RECEIVE_SIZE)
            out = rep.receive_data(data)
            if out:
                await self._send(out)
            self._watch_new_logs()
            if rep.error is not None:
                raise rep.error
            if rep.synced and not self._synced.is_set():
                self._synced.set()
            if not data:  # the peer closed the connection
                if not self.live and not (rep.synced and rep.remote_done):
                    raise ProtocolError("the peer closed the connection before the sync finished")
                return
            if not self.live and rep.synced and rep.remote_done:
                return

    async def _announcer(self) -> None:
        rep = self.replicator
        assert rep is not None
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            dirty, self._dirty = self._dirty, set()
            for dkey in dirty:
                log = self._log_by_dkey(dkey)
                if log is not None:
                    out = rep.local_changed(log)
                    if out:
                        await self._send(out)
            if self._pending:
                out, self._pending = bytes(self._pending), bytearray()
                await self._send(out)
            if rep.error is not None:
                raise rep.error

    def _log_by_dkey(self, dkey: bytes) -> Log | None:
        assert self.replicator is not None
        return self.replicator._logs.get(dkey)

    async def _send(self, data: bytes) -> None:
        if not data:
            return
        assert self.stream is not None
        async with self._send_lock:
            await self.stream.send_all(data)

    def _queue(self, data: bytes) -> None:
        if data:
            self._pending += data
            self._wake.set()

    def _watch_new_logs(self) -> None:
        rep = self.replicator
        if rep is None:
            return
        for dkey, log in rep._logs.items():
            if dkey not in self._watched:
                self._watched[dkey] = log.watch(self._on_log_change)

    def _unwatch(self) -> None:
        for unsubscribe in self._watched.values():
            unsubscribe()  # type: ignore[operator]
        self._watched.clear()

    def _on_log_change(self, log: Log) -> None:
        """Log.watch callback: may run in any thread; wakes the announcer."""
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
        self._wake.set()


def _single(group: BaseExceptionGroup) -> BaseException:
    """The one real error inside a nursery's group (so callers can catch typed errors)."""
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup) -> None:
        for e in g.exceptions:
            walk(e) if isinstance(e, BaseExceptionGroup) else leaves.append(e)

    walk(group)
    real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    return real[0] if len(real) == 1 else group


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
    RemoteError, ...) that ended the connection, if any.
    """
    session = Session(stream, source, initiator=initiator, live=live, **kw)
    await session.run()
    return session


async def serve_tcp(
    source: Store | Log | Iterable[Log],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    live: bool = True,
    handler_errors: list[BaseException] | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
    **kw,
) -> None:
    """Accept replication connections on TCP; ``task_status.started(port)``.

    Each connection runs as a responder in its own task; a bad peer only ends
    its own connection (its error is appended to ``handler_errors`` if given).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await replicate(stream, source, initiator=False, live=live, **kw)
        except (CorelogError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if handler_errors is not None:
                handler_errors.append(exc)

    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        await trio.serve_listeners(handler, listeners, handler_nursery=nursery)


async def connect_tcp(
    source: Store | Log | Iterable[Log],
    host: str,
    port: int,
    *,
    live: bool = True,
    **kw,
) -> Session:
    """Connect to a ``serve_tcp`` peer and replicate (as the initiator)."""
    stream = await trio.open_tcp_stream(host, port)
    return await replicate(stream, source, initiator=True, live=live, **kw)


def memory_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """Two connected in-memory streams (for tests and in-process peers)."""
    import trio.testing

    return trio.testing.memory_stream_pair()
