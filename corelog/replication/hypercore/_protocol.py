"""One Hypercore replication connection, sans-IO: secret stream + protomux + a Peer per core.

Feed received bytes to :meth:`Protocol.receive_data`, write what
:meth:`Protocol.data_to_send` returns, call :meth:`Protocol.local_changed` when
a log changes locally and :meth:`Protocol.pump` while :attr:`Protocol.backlog`
is true (requests held back because our output buffer was full: memory stays
bounded however fast the peer asks). Any violation by the peer raises a typed
:class:`~corelog.replication.errors.ProtocolError` subclass, stored in
:attr:`Protocol.error`; the driver then closes this connection only.
"""

from __future__ import annotations

from collections.abc import Iterable

from corelog import Log, Store
from corelog.replication.errors import ProtocolError

from . import _messages as m
from ._peer import Peer
from ._protomux import Closed, Message, Mux, Opened, RemoteOpen
from ._secretstream import MAX_FRAME, SecretStream

HIGH_WATER = 4 * 1024 * 1024  # bytes of output after which requests wait for the driver to send
DEFAULT_WINDOW = 512


class Protocol:
    def __init__(
        self,
        initiator: bool,
        source: Store | Log | Iterable[Log] | None = None,
        *,
        static_seed: bytes | None = None,
        window: int = DEFAULT_WINDOW,
        max_frame: int | None = None,
    ):
        self.initiator = initiator
        self.store = source if isinstance(source, Store) else None
        logs = (
            []
            if source is None or self.store is not None
            else [source]
            if isinstance(source, Log)
            else list(source)
        )
        self._served: dict[bytes, Log] = {log.discovery_key: log for log in logs}
        self.stream = SecretStream(initiator, static_seed, max_frame=max_frame or MAX_FRAME)
        self.mux = Mux()
        self.window = window
        self.peers: dict[bytes, Peer] = {}
        self._to_open: list[Log] = []
        self.dirty: set[Peer] = set()
        self.error: ProtocolError | None = None
        self.rejected: list[bytes] = []  # keys the remote refused
        self._started = False

    # --- public ----------------------------------------------------------------------

    @property
    def handshake_hash(self) -> bytes | None:
        return self.stream.handshake_hash

    @property
    def remote_public_key(self) -> bytes | None:
        return self.stream.remote_public_key

    def open(self, log: Log) -> None:
        """Replicate ``log`` on this connection (we open its channel)."""
        self._served.setdefault(log.discovery_key, log)
        if self._started:
            self._open(log)
            self._flush()
        else:
            self._to_open.append(log)

    def data_to_send(self) -> bytes:
        return self.stream.data_to_send()

    @property
    def output_full(self) -> bool:
        return len(self.stream._out) + self.mux.queued_bytes > HIGH_WATER

    @property
    def backlog(self) -> bool:
        return any(p.queued for p in self.peers.values())

    def pump(self) -> None:
        """Answer requests held back while the output was full."""
        self._guard(self._pump)

    def receive_data(self, data: bytes) -> None:
        self._guard(self._receive, data)

    def local_changed(self, log: Log) -> None:
        peer = self.peers.get(log.discovery_key)
        if peer is not None and peer.opened:
            self._guard(self._local_changed, peer)

    def _local_changed(self, peer: Peer) -> None:
        peer.local_changed()
        self._flush()

    def keepalive(self) -> None:
        if self.stream.can_send:
            self.stream.keepalive()

    @property
    def done(self) -> bool:
        """Every core we opened is opened and caught up with what the remote announced."""
        if not self._started or self._to_open:
            return False
        for dkey in self._served:
            if self.store is not None and dkey not in self.peers:
                continue
            peer = self.peers.get(dkey)
            if peer is None or not peer.opened or not peer.done:
                return False
        return True

    # --- internals -------------------------------------------------------------------

    def _guard(self, fn, *args) -> None:
        if self.error is not None:
            raise self.error
        try:
            fn(*args)
        except ProtocolError as exc:
            self.error = exc
            raise

    def _pump(self) -> None:
        for peer in list(self.peers.values()):
            while peer.queued and not self.output_full:
                peer.answer(peer.queued.popleft())
            self._flush()

    def _receive(self, data: bytes) -> None:
        frames = self.stream.receive_data(data)
        if not self._started and self.stream.can_send:
            self._started = True
            for log in self._to_open:
                self._open(log)
            self._to_open.clear()
        # everything we answer to one read goes out as batch frames (as protomux corks), which
        # saves an AEAD and a frame per message on both sides
        self.mux.cork()
        try:
            for frame in frames:
                for ev in self.mux.receive(frame):
                    self._on_event(ev)
            for ev in self.mux.events:
                self._on_event(ev)
            self.mux.events.clear()
            if self.dirty:
                dirty, self.dirty = self.dirty, set()
                for peer in dirty:
                    peer.commit()
                    peer.update()
        finally:
            self.mux.uncork()
        self._flush()

    def _flush(self) -> None:
        for frame in self.mux.frames():
            self.stream.send(frame)

    def _open(self, log: Log) -> Peer:
        peer = self.peers.get(log.discovery_key)
        if peer is not None and not peer.channel.closed:
            return peer
        peer = Peer(self, log, None)  # type: ignore[arg-type]
        peer.channel = self.mux.open(m.PROTOCOL, log.discovery_key, peer.handshake(), userdata=peer)
        self.peers[log.discovery_key] = peer
        return peer

    def _find(self, dkey: bytes) -> Log | None:
        log = self._served.get(dkey)
        if log is None and self.store is not None:
            log = self.store.find(dkey)
        return log

    def _on_event(self, ev) -> None:
        if isinstance(ev, Message):
            peer = ev.channel.userdata
            if isinstance(peer, Peer):
                peer.on_message(ev.type, ev.payload)
        elif isinstance(ev, RemoteOpen):
            log = self._find(ev.id) if ev.protocol == m.PROTOCOL and ev.id is not None else None
            if log is None:
                self.mux.reject(ev.remote_id)
                return
            self._open(log)
        elif isinstance(ev, Opened):
            peer = ev.channel.userdata
            if isinstance(peer, Peer):
                peer.on_open()
        elif isinstance(ev, Closed):
            peer = ev.channel.userdata
            if isinstance(peer, Peer) and self.peers.get(peer.log.discovery_key) is peer:
                del self.peers[peer.log.discovery_key]
        else:  # Rejected: the remote does not have (or refuses) this core
            peer = ev.channel.userdata
            if isinstance(peer, Peer):
                self.rejected.append(peer.log.key)
                self.peers.pop(peer.log.discovery_key, None)
                self._served.pop(peer.log.discovery_key, None)
