"""Protomux (``protomux`` 3.12) as a sans-IO channel multiplexer over one message stream.

Theory of operation
-------------------
Each frame is ``uint channel || uint type || payload``; channel 0 is control:
``batch(0)``, ``open(1)``, ``reject(2)``, ``close(3)``. ``channel`` is always the
*sender's* local id. A channel is named by ``(protocol, id)``: when both sides
have sent an ``open`` for the same name the channel is paired (opened), whoever
was first. An ``open`` nobody locally asked for becomes a :class:`RemoteOpen`
event; the application answers with :meth:`Mux.open` (pairs at once) or
:meth:`Mux.reject`. Messages that arrive for such a held channel are buffered
(bounded by ``max_buffered``) and delivered on pairing.

Local ids start at 1; the next one is the most recently freed id, else the next
integer (peers depend on this). A received open must use an id at most one
above the highest the peer used and not in use, or the stream is broken.

Outgoing frames queue up until :meth:`Mux.frames` takes them. Between
:meth:`cork` and :meth:`uncork` messages are collected into one ``batch`` frame
(split before 8 MiB), which is how Hypercore answers many requests at once.
Nothing here does I/O; every peer violation raises :class:`MuxError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._encoding import Reader, WireError, Writer, encode_uint
from .errors import MuxError

MAX_BATCH = 8 * 1024 * 1024
MAX_BUFFERED = 32 * 1024  # bytes held for channels the application has not answered yet
MAX_CHANNELS = 4096  # remote channel slots a peer may hold at once
MAX_BATCH_ITEMS = 65536  # messages in one batch frame (JS sends a few hundred)


@dataclass(eq=False)
class Channel:
    protocol: str
    id: bytes | None
    handshake: bytes  # what we sent in our open
    local_id: int = 0
    remote_id: int = 0
    remote_handshake: Reader | None = None  # positioned at the peer's handshake bytes
    opened: bool = False
    closed: bool = False
    userdata: object = None


@dataclass
class RemoteOpen:
    """The peer opened a channel we did not ask for: answer with ``open`` or ``reject``."""

    protocol: str
    id: bytes | None
    remote_id: int


@dataclass
class Opened:
    channel: Channel


@dataclass
class Rejected:
    channel: Channel


@dataclass
class Closed:
    channel: Channel
    remote: bool


@dataclass
class Message:
    channel: Channel
    type: int
    payload: Reader


Event = RemoteOpen | Opened | Rejected | Closed | Message


@dataclass
class _Remote:
    protocol: str
    id: bytes | None
    handshake: Reader
    channel: Channel | None = None
    pending: list[tuple[int, Reader]] | None = field(default_factory=list)


class Mux:
    def __init__(self, *, max_buffered: int = MAX_BUFFERED, max_channels: int = MAX_CHANNELS):
        self.max_buffered = max_buffered
        self.max_channels = max_channels
        self._local: list[Channel | None] = []
        self._free: list[int] = []
        self._remote: list[_Remote | None] = []
        self._outgoing: dict[tuple[str, bytes | None], list[int]] = {}  # opens awaiting the peer
        self._incoming: dict[tuple[str, bytes | None], list[int]] = {}  # peer opens awaiting us
        self._buffered = 0
        self._out: list[bytes] = []
        self._batch: list[tuple[int, bytes]] | None = None
        self._batch_size = 0
        self._corks = 0
        self.events: list[Event] = []

    # --- output ----------------------------------------------------------------------

    def frames(self) -> list[bytes]:
        """Plaintext frames to send (each becomes one secret-stream message)."""
        out, self._out = self._out, []
        return out

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in frames and in the open batch."""
        return self._batch_size + sum(len(f) for f in self._out)

    def cork(self) -> None:
        self._corks += 1
        if self._batch is None:
            self._batch, self._batch_size = [], 0

    def uncork(self) -> None:
        if self._corks == 0:
            return
        self._corks -= 1
        if self._corks == 0:
            self._flush_batch()
            self._batch = None

    def _flush_batch(self) -> None:
        batch = self._batch
        if not batch:
            return
        w = Writer().uint(0).uint(0)
        prev = batch[0][0]
        w.uint(prev)
        for local_id, item in batch:
            if local_id != prev:
                w.uint(0).uint(local_id)
                prev = local_id
            w.buffer(item)
        self._out.append(w.bytes())
        batch.clear()
        self._batch_size = 0

    def _write(self, local_id: int, item: bytes) -> None:
        """``item`` is ``uint type || payload``."""
        if self._batch is not None:
            if self._batch_size >= MAX_BATCH:
                self._flush_batch()
            self._batch.append((local_id, item))
            self._batch_size += len(item) + 8
        else:
            self._out.append(encode_uint(local_id) + item)

    def send(self, channel: Channel, type_: int, payload: bytes) -> bool:
        """Queue one message on an open channel; False if it is closed."""
        if channel.closed or channel.local_id == 0:
            return False
        self._write(channel.local_id, encode_uint(type_) + payload)
        return True

    # --- channels --------------------------------------------------------------------

    def open(self, protocol: str, id: bytes | None, handshake: bytes, userdata: object = None) -> Channel:
        """Open a channel (pairs at once if the peer already opened the same one)."""
        ch = Channel(protocol, id, handshake, userdata=userdata)
        slot = self._free.pop() if self._free else len(self._local)
        if slot == len(self._local):
            self._local.append(None)
        self._local[slot] = ch
        ch.local_id = slot + 1
        w = Writer().uint(1).uint(ch.local_id).string(protocol).optional_buffer(id).raw(handshake)
        self._write(0, w.bytes())
        key = (protocol, id)
        waiting = self._incoming.get(key)
        if waiting:
            remote_id = waiting.pop(0)
            if not waiting:
                del self._incoming[key]
            self._pair(ch, remote_id)
        else:
            self._outgoing.setdefault(key, []).append(ch.local_id)
        return ch

    def _pair(self, ch: Channel, remote_id: int) -> None:
        r = self._remote[remote_id - 1]
        assert r is not None
        ch.remote_id = remote_id
        ch.remote_handshake = r.handshake
        ch.opened = True
        r.channel = ch
        pending, r.pending = r.pending, None
        self.events.append(Opened(ch))
        for type_, reader in pending or ():
            self._buffered -= len(reader.buf) + 512
            self.events.append(Message(ch, type_, reader))

    def reject(self, remote_id: int) -> None:
        """Refuse a :class:`RemoteOpen`."""
        r = self._remote[remote_id - 1] if 0 < remote_id <= len(self._remote) else None
        if r is not None and r.channel is None:
            for _, reader in r.pending or ():
                self._buffered -= len(reader.buf) + 512
            self._remote[remote_id - 1] = None
            key = (r.protocol, r.id)
            waiting = self._incoming.get(key)
            if waiting and remote_id in waiting:
                waiting.remove(remote_id)
                if not waiting:
                    del self._incoming[key]
        self._write(0, encode_uint(2) + encode_uint(remote_id))

    def close(self, ch: Channel) -> None:
        if ch.closed:
            return
        if ch.local_id:
            self._write(0, encode_uint(3) + encode_uint(ch.local_id))
        self._close(ch, remote=False)

    def _close(self, ch: Channel, remote: bool) -> None:
        ch.closed = True
        ch.opened = False
        if ch.remote_id:
            self._remote[ch.remote_id - 1] = None
            ch.remote_id = 0
            self._free.append(ch.local_id - 1)  # the peer has paired: the id is ours again
        if ch.local_id:
            self._local[ch.local_id - 1] = None
        self.events.append(Closed(ch, remote))

    @property
    def channels(self) -> list[Channel]:
        return [c for c in self._local if c is not None]

    # --- input -----------------------------------------------------------------------

    def receive(self, frame: bytes) -> list[Event]:
        """Decode one frame; returns (and clears) the events it and earlier calls produced."""
        if frame:
            try:
                r = Reader(frame)
                self._decode(r.uint(), r)
            except WireError as exc:
                raise MuxError(f"malformed protomux frame: {exc}") from None
        events, self.events = self.events, []
        return events

    def _decode(self, remote_id: int, r: Reader) -> None:
        type_ = r.uint()
        if remote_id == 0:
            if type_ == 0:
                self._on_batch(r)
            elif type_ == 1:
                self._on_open(r)
            elif type_ == 2:
                self._on_reject(r)
            elif type_ == 3:
                self._on_close(r)
            return
        slot = self._remote[remote_id - 1] if remote_id <= len(self._remote) else None
        if slot is None:
            return  # closed or unknown channel: could be a message in flight, ignore
        if slot.pending is not None:
            self._buffered += r.remaining + 512
            if self._buffered > self.max_buffered:
                raise MuxError(
                    f"the peer sent more than {self.max_buffered} bytes for channels not opened yet"
                )
            slot.pending.append((type_, Reader(r.buf[r.pos : r.end])))
            return
        assert slot.channel is not None
        self.events.append(Message(slot.channel, type_, r))

    def _on_batch(self, r: Reader) -> None:
        end = r.end
        remote_id = r.uint()
        items = 0
        while r.pos < end:
            items += 1
            if items > MAX_BATCH_ITEMS:
                raise MuxError(f"a batch of more than {MAX_BATCH_ITEMS} messages")
            n = r.uint()
            if n == 0:
                remote_id = r.uint()
                continue
            if n > end - r.pos:
                raise MuxError("a batch item runs past the end of its frame")
            item = Reader(r.buf, r.pos, r.pos + n)
            r.pos += n
            self._decode(remote_id, item)

    def _on_open(self, r: Reader) -> None:
        remote_id = r.uint()
        protocol = r.string()
        id_ = r.optional_buffer()
        if remote_id == 0:
            self._write(0, encode_uint(2) + encode_uint(0))
            return
        rid = remote_id - 1
        if rid == len(self._remote):
            if len(self._remote) >= self.max_channels:
                raise MuxError(f"the peer opened more than {self.max_channels} channels")
            self._remote.append(None)
        if rid >= len(self._remote) or self._remote[rid] is not None:
            raise MuxError(f"invalid open message: channel id {remote_id} is out of sequence or in use")
        handshake = Reader(r.buf, r.pos, r.end)
        key = (protocol, id_)
        outgoing = self._outgoing.get(key)
        if outgoing:
            local_id = outgoing.pop(0)
            if not outgoing:
                del self._outgoing[key]
            ch = self._local[local_id - 1]
            self._remote[rid] = _Remote(protocol, id_, handshake)
            if ch is None or ch.closed:  # we closed it before the peer's open arrived
                self._remote[rid] = None
                self._free.append(local_id - 1)
                return
            self._pair(ch, remote_id)
            return
        self._remote[rid] = _Remote(protocol, id_, handshake)
        self._incoming.setdefault(key, []).append(remote_id)
        self.events.append(RemoteOpen(protocol, id_, remote_id))

    def _on_reject(self, r: Reader) -> None:
        local_id = r.uint()
        for key, ids in self._outgoing.items():
            if local_id in ids:
                ids.remove(local_id)
                if not ids:
                    del self._outgoing[key]
                ch = self._local[local_id - 1]
                self._free.append(local_id - 1)
                self._local[local_id - 1] = None
                if ch is not None and not ch.closed:
                    ch.closed = True
                    self.events.append(Rejected(ch))
                return
        raise MuxError(f"invalid reject message: we have no pending open with id {local_id}")

    def _on_close(self, r: Reader) -> None:
        remote_id = r.uint()
        if remote_id == 0 or remote_id > len(self._remote):
            return
        slot = self._remote[remote_id - 1]
        if slot is None:
            return
        if slot.channel is not None:
            self._close(slot.channel, remote=True)
