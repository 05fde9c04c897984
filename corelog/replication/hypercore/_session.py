"""Trio transport for the Hypercore protocol: TCP serve/connect, keep-alives, timeouts, live follow.

``replicate_hypercore(stream, source, initiator=...)`` runs one connection:
a receive loop (bounded reads, a silence timeout), an announcer woken by
``Log.watch`` (live appends and truncations reach the peer at once) and a
keep-alive timer (an empty message after ``keepalive`` seconds without a
write, as ``@hyperswarm/secret-stream`` does). Every connection ends in
bounded time unless the peer keeps it alive: with :class:`PeerTimeout` when
the Noise handshake is not done within ``handshake_timeout`` seconds (however
the peer trickles its bytes), when the peer sends nothing for ``timeout``
seconds, or when it reads nothing of what we send for ``timeout`` seconds.
``serve_hypercore`` accepts connections on 127.0.0.1 by default; each runs in
its own task and a bad peer ends only its own connection (the server logs one
line with the reason); connections over ``max_connections``, or over
``max_per_peer`` from one address, are closed at once (the accept loop of
``serve_tcp``, shared).
``connect_hypercore`` dials a peer (as the Noise initiator) and, with
``live=False``, returns once every given log caught up.

A connection reset, broken or closed under the session, EOF inside a frame, or
(``live=False``) a clean EOF before every log caught up all end in one typed
:class:`~corelog.replication.errors.ConnectionLost` (a ``SyncIncomplete``), as
in corelog's own protocol: every block committed before it was verified first
and is kept, so connecting again resumes from there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

import trio

from corelog import Log, Store
from corelog.replication._transport import (
    RESUME,
    TRANSPORT_ERRORS,
    connection_lost,
    root_cause,
    serve_capped,
)
from corelog.replication.errors import ConnectionLost, ProtocolError

from ._protocol import Protocol
from .errors import PeerTimeout

RECEIVE_SIZE = 64 * 1024
SEND_SIZE = 256 * 1024  # a write must make this much progress every ``timeout`` seconds
_log = logging.getLogger("corelog.replication.hypercore")


class HypercoreSession:
    """One Hypercore connection over a trio stream."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        source: Store | Log | Iterable[Log] | None,
        *,
        initiator: bool,
        live: bool = True,
        logs: Iterable[Log] = (),
        static_seed: bytes | None = None,
        timeout: float = 30.0,
        handshake_timeout: float = 10.0,
        keepalive: float = 5.0,
        window: int = 512,
    ):
        self.stream = stream
        if source is not None and not isinstance(source, Store | Log):
            source = list(source)
        self.protocol = Protocol(initiator, source, static_seed=static_seed, window=window)
        for log in logs:  # the cores we open channels for (a server waits for the peer's opens)
            self.protocol.open(log)
        self.live = live
        self.timeout = timeout
        self.handshake_timeout = handshake_timeout
        self.keepalive = keepalive
        self._send_lock = trio.Lock()
        self._wake = trio.Event()
        self._dirty: set[Log] = set()
        self._watched: dict[bytes, object] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: int | None = None
        self._closed = False
        self._last_send = 0.0
        self.ready = trio.Event()

    @property
    def remote_public_key(self) -> bytes | None:
        return self.protocol.remote_public_key

    async def run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.get_ident()
        try:
            await self._flush()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._announcer)
                nursery.start_soon(self._keepalive)
                await self._receiver()
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise root_cause(group, self.protocol.error) from None
        finally:
            self._closed = True
            for unsubscribe in self._watched.values():
                unsubscribe()  # type: ignore[operator]
            self._watched.clear()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)

    async def _flush(self) -> None:
        proto = self.protocol
        while True:
            out = proto.data_to_send()
            if out:
                async with self._send_lock:
                    await self._send(out)
                self._last_send = trio.current_time()
            if not proto.backlog:
                return
            proto.pump()

    async def _send(self, out: bytes) -> None:
        """Write ``out``; a peer that reads none of a ``SEND_SIZE`` piece for ``timeout`` s is dropped."""
        view = memoryview(out)
        for start in range(0, len(out), SEND_SIZE):
            piece = out if len(out) <= SEND_SIZE else view[start : start + SEND_SIZE]
            with trio.move_on_after(self.timeout) as scope:
                try:
                    await self.stream.send_all(piece)
                except TRANSPORT_ERRORS as exc:
                    raise connection_lost(exc, "sending") from exc
            if scope.cancelled_caught:
                raise PeerTimeout(f"the peer read nothing of what we sent for {self.timeout:g} s")

    async def _receiver(self) -> None:
        proto = self.protocol
        handshake_by = trio.current_time() + self.handshake_timeout
        while True:
            in_handshake = not proto.stream.is_open
            deadline = trio.current_time() + self.timeout
            if in_handshake:
                deadline = min(deadline, handshake_by)
            with trio.move_on_at(deadline) as scope:
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except TRANSPORT_ERRORS as exc:
                    raise connection_lost(exc, "receiving") from exc
            if scope.cancelled_caught:
                if in_handshake and deadline == handshake_by:
                    raise PeerTimeout(
                        f"the peer did not complete the handshake in {self.handshake_timeout:g} s"
                    )
                raise PeerTimeout(f"the peer sent nothing for {self.timeout:g} s (not even a keep-alive)")
            if not data:
                if proto.stream.buffered:
                    raise ConnectionLost(
                        f"the peer closed the connection in the middle of a frame "
                        f"({proto.stream.buffered} bytes of it received); {RESUME}"
                    )
                if not self.live and not proto.done:
                    raise ConnectionLost(f"the peer closed the connection before the sync finished; {RESUME}")
                return
            proto.receive_data(bytes(data))
            self._watch_new()
            await self._flush()
            if proto.rejected and not self.live:
                keys = ", ".join(k.hex()[:16] + "…" for k in proto.rejected)
                raise ProtocolError(f"the peer does not have (or refused) core {keys}")
            if proto.stream.is_open and not self.ready.is_set():
                self.ready.set()
            if not self.live and proto.done:
                return

    async def _announcer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            dirty, self._dirty = self._dirty, set()
            for log in dirty:
                self.protocol.local_changed(log)
            await self._flush()

    async def _keepalive(self) -> None:
        while True:
            await trio.sleep(self.keepalive / 2)
            if trio.current_time() - self._last_send >= self.keepalive and self.protocol.stream.can_send:
                self.protocol.keepalive()
                await self._flush()

    def _watch_new(self) -> None:
        for dkey, peer in self.protocol.peers.items():
            if dkey not in self._watched:
                self._watched[dkey] = peer.log.watch(self._on_change)

    def _on_change(self, log: Log) -> None:
        if self._closed:
            return
        if threading.get_ident() == self._thread:
            self._mark(log)
        elif self._token is not None:
            try:
                self._token.run_sync_soon(self._mark, log)
            except trio.RunFinishedError:
                pass

    def _mark(self, log: Log) -> None:
        self._dirty.add(log)
        self._wake.set()


async def replicate_hypercore(
    stream: trio.abc.Stream,
    source: Store | Log | Iterable[Log] | None,
    *,
    initiator: bool,
    live: bool = True,
    **kw,
) -> HypercoreSession:
    """Run one Hypercore replication connection over ``stream``; returns the finished session."""
    session = HypercoreSession(stream, source, initiator=initiator, live=live, **kw)
    await session.run()
    return session


async def serve_hypercore(
    source: Store | Log | Iterable[Log],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    handler_errors: list[BaseException] | None = None,
    max_connections: int = 1024,
    max_per_peer: int | None = 256,
    task_status=trio.TASK_STATUS_IGNORED,
    **kw,
) -> None:
    """Serve logs to Hypercore peers over TCP (live); ``task_status.started(port)``.

    Whatever one peer does (garbage, silence, a reset, a crash of its handler) ends
    only its own connection, with one logged line giving the root cause (appended
    to ``handler_errors`` if given). Connections over ``max_connections``, or over
    ``max_per_peer`` from one address, are closed at once; a peer that does not
    finish the handshake within ``handshake_timeout`` (10 s) or goes silent for
    ``timeout`` (30 s) loses its slot. ``kw`` goes to :class:`HypercoreSession`.
    """

    async def run(stream: trio.SocketStream) -> None:
        await replicate_hypercore(stream, source, initiator=False, live=True, **kw)

    await serve_capped(
        run,
        host,
        port,
        log=_log,
        max_connections=max_connections,
        max_per_peer=max_per_peer,
        handler_errors=handler_errors,
        task_status=task_status,
    )


async def connect_hypercore(
    source: Store | Log | Iterable[Log] | None,
    host: str,
    port: int,
    *,
    logs: Iterable[Log] = (),
    live: bool = False,
    **kw,
) -> HypercoreSession:
    """Connect to a Hypercore peer (we are the Noise initiator) and replicate ``logs``.

    ``logs`` defaults to ``source`` when that is a log or a list of logs.
    """
    if not logs and source is not None and not isinstance(source, Store):
        source = [source] if isinstance(source, Log) else list(source)
        logs = source
    stream = await trio.open_tcp_stream(host, port)
    return await replicate_hypercore(stream, source, initiator=True, live=live, logs=logs, **kw)
