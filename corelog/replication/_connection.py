"""The sans-IO replication connection: bytes in, messages out, no I/O inside.

Theory of operation
-------------------
A ``Connection`` sits on one secure byte stream (Noise over TCP, a WebRTC data
channel, a memory pipe). It knows nothing about sockets or logs: the caller
feeds it received bytes (``receive_data``), pulls validated messages out
(``next_event``), and turns messages it wants to send into bytes (``send``).
The same object therefore runs unchanged over every transport and in tests.

Both sides first send ``Hello`` (version and limits). Then any number of
*channels*, one per log, multiplexed by number. A channel is identified by the
log's discovery key (public, reveals nothing); each side names it with its own
channel number in the messages it sends. Opening a channel needs a
*capability*: BLAKE2b keyed with the log key over the connection's handshake
hash and the sender's role. Only a peer that knows the key can produce it, it
is useless on any other connection, and it cannot be reflected back. A peer
that does not know the key learns nothing: not the length, not even that the
other side holds the log.

Channel states follow a table (``_CHANNEL_TRANSITIONS``), in the manner of
h11's ``_state.py``::

    (none)      --send Open-->  LOCAL_OPEN  --recv Open-->  OPEN
    (none)      --recv Open-->  REMOTE_OPEN --send Open-->  OPEN
    any         --send/recv Close-->  CLOSED

``Head``/``Request``/``Data``/``NoData`` are legal only on an OPEN channel.
Flow control: a side may have at most ``max_inflight`` requests outstanding on
the connection (the *receiver's* announced limit, which the sender caps at its
own ``max_requests``: an announced number is never trusted as is); a Data or
NoData that answers no outstanding request is unsolicited; frames over
``max_frame`` are refused before they are buffered, frames are decoded with
bounded msgpack (see ``_messages.decode``) and every integer must be below
2**53; a peer may open at most ``max_channels`` channels. Any violation by the peer raises
``ProtocolError`` from ``next_event``; the caller sends the ``Error`` message
that ``error_frame`` builds and closes the transport. A local misuse raises
``LocalProtocolError`` from ``send`` and changes nothing.
"""

from __future__ import annotations

import enum
import hashlib
import hmac

from ._messages import (
    DEFAULT_MAX_ARRAY,
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    Close,
    Data,
    Done,
    Error,
    FrameDecoder,
    Head,
    Hello,
    Message,
    NoData,
    Open,
    Ping,
    Pong,
    Request,
    decode,
    encode,
)
from .errors import ConnectionLost, ProtocolError, RemoteError


class LocalProtocolError(ProtocolError):
    """This side tried to send something the protocol does not allow now."""


class ChannelState(enum.Enum):
    LOCAL_OPEN = "local-open"
    REMOTE_OPEN = "remote-open"
    OPEN = "open"
    CLOSED = "closed"


class _Need(enum.Enum):
    NEED_DATA = "need-data"
    CLOSED = "closed"


NEED_DATA = _Need.NEED_DATA
CLOSED = _Need.CLOSED

# (state, (who, message type)) -> new state; who is "send" or "recv"
_CHANNEL_TRANSITIONS: dict[tuple[ChannelState | None, tuple[str, type]], ChannelState] = {
    (None, ("send", Open)): ChannelState.LOCAL_OPEN,
    (None, ("recv", Open)): ChannelState.REMOTE_OPEN,
    (ChannelState.LOCAL_OPEN, ("recv", Open)): ChannelState.OPEN,
    (ChannelState.REMOTE_OPEN, ("send", Open)): ChannelState.OPEN,
}
for _s in (ChannelState.LOCAL_OPEN, ChannelState.REMOTE_OPEN, ChannelState.OPEN, ChannelState.CLOSED):
    _CHANNEL_TRANSITIONS[(_s, ("send", Close))] = ChannelState.CLOSED
    _CHANNEL_TRANSITIONS[(_s, ("recv", Close))] = ChannelState.CLOSED
_OPEN_ONLY = (Head, Request, Data, NoData)

CAPABILITY_CONTEXT = b"corelog/capability/v1"


def capability(key: bytes, handshake_hash: bytes, initiator: bool) -> bytes:
    """Proof of knowing ``key``, bound to this connection and to the sender's role."""
    role = b"\x00" if initiator else b"\x01"
    return hashlib.blake2b(CAPABILITY_CONTEXT + role + handshake_hash, digest_size=32, key=key).digest()


class Connection:
    """One side of a replication connection (sans-IO)."""

    def __init__(
        self,
        handshake_hash: bytes,
        *,
        initiator: bool,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_inflight: int = 16,
        max_requests: int = 64,
        max_channels: int = 16384,
        max_array_len: int = DEFAULT_MAX_ARRAY,
    ):
        if len(handshake_hash) < 32:
            raise ValueError("the handshake hash must be at least 32 bytes")
        self.handshake_hash = handshake_hash
        self.initiator = initiator
        self.max_frame = max_frame
        self.max_inflight = max_inflight
        self.max_requests = max_requests
        self.max_channels = max_channels
        self.max_array_len = max_array_len
        self.remote_hello: Hello | None = None
        self._hello_sent = False
        self._decoder = FrameDecoder(max_frame)
        self._eof = False
        self.closed = False
        self.error: ProtocolError | None = None
        # channel bookkeeping, by discovery key
        self._state: dict[bytes, ChannelState] = {}
        self._local_number: dict[bytes, int] = {}
        self._remote_number: dict[bytes, int] = {}
        self._by_remote_number: dict[int, bytes] = {}
        self._by_local_number: dict[int, bytes] = {}
        self._next_number = 0
        self._outstanding: dict[int, bytes] = {}  # our request id -> discovery key
        self._remote_outstanding: set[tuple[bytes, int]] = set()  # (discovery key, their request id)
        self._next_request = 0

    # --- capabilities ------------------------------------------------------------

    def local_capability(self, key: bytes) -> bytes:
        return capability(key, self.handshake_hash, self.initiator)

    def check_capability(self, key: bytes, cap: bytes) -> bool:
        """True when the peer's capability proves it knows ``key`` on this connection."""
        return hmac.compare_digest(capability(key, self.handshake_hash, not self.initiator), cap)

    # --- channel queries ----------------------------------------------------------

    def channel_state(self, discovery_key: bytes) -> ChannelState | None:
        return self._state.get(discovery_key)

    def channel_number(self, discovery_key: bytes) -> int:
        """Our number for a channel (what we put in messages we send)."""
        return self._local_number[discovery_key]

    def discovery_key_of(self, remote_channel: int) -> bytes:
        """The discovery key a received message's channel number refers to."""
        return self._by_remote_number[remote_channel]

    @property
    def open_channels(self) -> list[bytes]:
        return [d for d, s in self._state.items() if s is ChannelState.OPEN]

    @property
    def inflight(self) -> int:
        """Requests we sent that are not answered yet."""
        return len(self._outstanding)

    @property
    def request_limit(self) -> int:
        """Requests we may have in flight: the peer's announced limit, capped by ``max_requests``."""
        return min(self.remote_hello.max_inflight, self.max_requests) if self.remote_hello else 0

    @property
    def send_limit(self) -> int:
        """The largest frame body the peer accepts (its announced limit, capped by ours)."""
        return min(self.remote_hello.max_frame, self.max_frame) if self.remote_hello else self.max_frame

    @property
    def can_request(self) -> bool:
        return not self.closed and len(self._outstanding) < self.request_limit

    # --- sending ----------------------------------------------------------------------

    def hello(self) -> bytes:
        return self.send(Hello(PROTOCOL_VERSION, self.max_frame, self.max_inflight))

    def open(self, discovery_key: bytes, key: bytes) -> bytes:
        """Open (or accept) the channel for a log whose key we know."""
        number = self._local_number.get(discovery_key)
        if number is None:
            number = self._next_number
            self._next_number += 1
        return self.send(Open(number, discovery_key, self.local_capability(key)))

    @property
    def next_request_id(self) -> int:
        """The id the next ``request()`` will use."""
        return self._next_request

    def request(self, discovery_key: bytes, fork: int, contiguous: int, start: int, end: int) -> bytes:
        rid = self._next_request
        return self.send(Request(self._local_number[discovery_key], rid, fork, contiguous, start, end))

    def send(self, msg: Message) -> bytes:
        """Bytes for ``msg``; raises LocalProtocolError (changing nothing) if not allowed now."""
        if self.closed:
            raise LocalProtocolError("the connection is closed")
        if isinstance(msg, Hello):
            if self._hello_sent:
                raise LocalProtocolError("Hello was already sent")
            frame = encode(msg)
            self._hello_sent = True
            return frame
        if not self._hello_sent:
            raise LocalProtocolError("send Hello first")
        if isinstance(msg, Error):
            frame = encode(msg)
            self.closed = True
            return frame
        if isinstance(msg, Ping | Pong | Done):
            return encode(msg)
        if isinstance(msg, Open):
            dkey = msg.discovery_key
            new = self._transition(dkey, ("send", Open), local=True)
            frame = encode(msg)
            self._local_number[dkey] = msg.channel
            self._by_local_number[msg.channel] = dkey
            if msg.channel >= self._next_number:
                self._next_number = msg.channel + 1
            self._state[dkey] = new
            return frame
        number: int = getattr(msg, "channel")  # noqa: B009 (every other message has a channel)
        found = self._by_local_number.get(number)
        if found is None:
            raise LocalProtocolError(f"channel {number} was never opened")
        dkey = found
        if isinstance(msg, Close):
            new = self._transition(dkey, ("send", Close), local=True)
            frame = encode(msg)
            self._state[dkey] = new
            self._drop_requests(dkey)
            return frame
        if self._state.get(dkey) is not ChannelState.OPEN:
            raise LocalProtocolError(f"{type(msg).__name__} on a channel that is not open")
        if isinstance(msg, Request):
            if not self.can_request:
                raise LocalProtocolError("too many requests in flight; wait for answers")
            if msg.id in self._outstanding:
                raise LocalProtocolError(f"request id {msg.id} is already in flight")
        elif isinstance(msg, Data | NoData):
            if (dkey, msg.id) not in self._remote_outstanding:
                raise LocalProtocolError(f"answering request {msg.id}, which the peer never made")
        frame = encode(msg)
        if len(frame) - 4 > self.send_limit:
            raise LocalProtocolError(f"frame of {len(frame)} bytes exceeds the peer's limit")
        # only now, with the frame certain to go out, record what it changes
        if isinstance(msg, Request):
            self._outstanding[msg.id] = dkey
            self._next_request = max(self._next_request, msg.id + 1)
        elif isinstance(msg, Data | NoData):
            self._remote_outstanding.discard((dkey, msg.id))
        return frame

    def error_frame(self, exc: BaseException) -> bytes:
        """The Error message telling the peer why we close (and mark ourselves closed)."""
        code = type(exc).__name__
        frame = encode(Error(code, str(exc)[:1000]))
        self.closed = True
        return frame

    def _transition(self, dkey: bytes, event: tuple[str, type], *, local: bool) -> ChannelState:
        state = self._state.get(dkey)
        new = _CHANNEL_TRANSITIONS.get((state, event))
        if new is None:
            err = LocalProtocolError if local else ProtocolError
            who = "we" if local else "the peer"
            raise err(f"{who} sent {event[1].__name__} on a channel in state {state and state.value}")
        return new

    def _drop_requests(self, dkey: bytes) -> None:
        for rid in [r for r, d in self._outstanding.items() if d == dkey]:
            del self._outstanding[rid]
        self._remote_outstanding = {(d, r) for d, r in self._remote_outstanding if d != dkey}

    # --- receiving ------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the transport; ``b""`` means the peer closed it."""
        if not data:
            self._eof = True
        else:
            self._decoder.feed(data)

    def next_event(self) -> Message | _Need:
        """The next validated message, NEED_DATA, or CLOSED; raises ProtocolError on violations."""
        if self.error is not None:
            raise self.error
        try:
            body = self._decoder.next_frame()
            if body is None:
                if self._eof:
                    if self._decoder.buffered:
                        raise ConnectionLost(
                            "the peer closed the connection in the middle of a frame; "
                            "everything committed so far was verified and is kept: sync again to resume"
                        )
                    self.closed = True
                    return CLOSED
                return NEED_DATA
            msg = decode(body, max_array_len=self.max_array_len)
            self._validate(msg)
            return msg
        except ProtocolError as exc:
            self.error = exc
            raise

    def _validate(self, msg: Message) -> None:
        if isinstance(msg, Error):
            self.closed = True
            raise RemoteError(f"the peer closed the connection: {msg.code}: {msg.message}")
        if isinstance(msg, Hello):
            if self.remote_hello is not None:
                raise ProtocolError("the peer sent Hello twice")
            if msg.version != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"the peer speaks protocol version {msg.version}, we speak {PROTOCOL_VERSION}"
                )
            if msg.max_inflight < 1 or msg.max_frame < 1024:  # (huge values are capped, not trusted)
                raise ProtocolError("the peer announced unusable limits")
            self.remote_hello = msg
            return
        if self.remote_hello is None:
            raise ProtocolError(f"the peer sent {type(msg).__name__} before Hello")
        if isinstance(msg, Ping | Pong | Done):
            return
        if isinstance(msg, Open):
            if len(msg.discovery_key) != 32 or len(msg.capability) != 32:
                raise ProtocolError("Open carries a malformed discovery key or capability")
            known = self._by_remote_number.get(msg.channel)
            if known is not None and known != msg.discovery_key:
                raise ProtocolError(f"the peer reused channel number {msg.channel}")
            dkey = msg.discovery_key
            if dkey not in self._state and len(self._state) >= self.max_channels:
                raise ProtocolError(f"the peer opened more than {self.max_channels} channels")
            self._state[dkey] = self._transition(dkey, ("recv", Open), local=False)
            self._remote_number[dkey] = msg.channel
            self._by_remote_number[msg.channel] = dkey
            return
        number: int = getattr(msg, "channel")  # noqa: B009 (every other message has a channel)
        found = self._by_remote_number.get(number)
        if found is None:
            raise ProtocolError(f"{type(msg).__name__} on channel {number}, which the peer never opened")
        dkey = found
        if isinstance(msg, Close):
            self._state[dkey] = self._transition(dkey, ("recv", Close), local=False)
            self._drop_requests(dkey)
            return
        if self._state.get(dkey) is not ChannelState.OPEN:
            raise ProtocolError(f"the peer sent {type(msg).__name__} on a channel that is not open")
        if isinstance(msg, Request):
            if len(self._remote_outstanding) >= self.max_inflight:
                raise ProtocolError(f"the peer has more than {self.max_inflight} requests in flight")
            if msg.end < msg.start:
                raise ProtocolError("Request with end before start")
            if (dkey, msg.id) in self._remote_outstanding:
                raise ProtocolError(f"the peer reused request id {msg.id}")
            self._remote_outstanding.add((dkey, msg.id))
        elif isinstance(msg, Data | NoData):
            if self._outstanding.get(msg.id) != dkey:
                raise ProtocolError(
                    f"unsolicited {type(msg).__name__} (request id {msg.id} is not in flight)"
                )
            del self._outstanding[msg.id]
        elif isinstance(msg, Head):
            if len(msg.tree_hash) != 32 or len(msg.signature) != 64:
                raise ProtocolError("Head carries a malformed tree hash or signature")
