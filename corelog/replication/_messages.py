"""Wire messages of the corelog replication protocol (version 1).

Every message is a small immutable object. On the wire a frame is a 4-byte
big-endian length followed by a msgpack array ``[type code, field, ...]``.
Decoding is strict: unknown codes, wrong arity and wrong field types are
protocol errors, never silently accepted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack

from .errors import FrameTooLarge, ProtocolError

PROTOCOL_VERSION = 1
FRAME_HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 8 * 1024 * 1024

_bytes = bytes
_REGISTRY: dict[int, type[Message]] = {}


class Message:
    """Base of all messages; subclasses are frozen dataclasses with a ``CODE``."""

    __slots__ = ()
    CODE: ClassVar[int]
    # per field: the allowed python types (checked on decode)
    TYPES: ClassVar[tuple[tuple[type, ...], ...]]

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if hasattr(cls, "CODE"):  # dataclass(slots=True) re-creates the class: the last one wins
            _REGISTRY[cls.CODE] = cls


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First message each side sends: protocol version and its limits."""

    CODE = 0
    TYPES = ((int,), (int,), (int,))
    version: int
    max_frame: int
    max_inflight: int


@dataclass(frozen=True, slots=True)
class Open(Message):
    """Open a channel for a log: its discovery key plus proof that we know the key.

    ``capability`` is a keyed hash over the connection's handshake hash, so it
    cannot be replayed on another connection nor reflected back.
    """

    CODE = 1
    TYPES = ((int,), (_bytes,), (_bytes,))
    channel: int
    discovery_key: bytes
    capability: bytes


@dataclass(frozen=True, slots=True)
class Close(Message):
    """Close one channel (the connection stays up)."""

    CODE = 2
    TYPES = ((int,), (str,))
    channel: int
    reason: str


@dataclass(frozen=True, slots=True)
class Head(Message):
    """Announce our signed head and how many blocks we hold from 0."""

    CODE = 3
    TYPES = ((int,), (int,), (int,), (_bytes,), (_bytes,), (int,), (int,))
    channel: int
    fork: int
    length: int
    tree_hash: bytes
    signature: bytes
    byte_length: int
    contiguous: int


@dataclass(frozen=True, slots=True)
class Request(Message):
    """Ask for blocks ``[start, end)``; we are at ``fork`` holding ``contiguous`` blocks.

    If the server's fork differs it answers from the common prefix instead.
    """

    CODE = 4
    TYPES = ((int,), (int,), (int,), (int,), (int,), (int,))
    channel: int
    id: int
    fork: int
    contiguous: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Data(Message):
    """The answer to a Request: blocks with the nodes to verify them (a corelog Proof)."""

    CODE = 5
    TYPES = (
        (int,),
        (int,),
        (int,),
        (int,),
        (_bytes,),
        (int,),
        (list,),
        (list,),
        (int,),
        (_bytes, type(None)),
    )
    channel: int
    id: int
    fork: int
    length: int
    signature: bytes
    start: int
    blocks: list
    nodes: list
    have: int
    manifest: bytes | None


@dataclass(frozen=True, slots=True)
class NoData(Message):
    """A Request that cannot be served (e.g. our head is older than the asker's)."""

    CODE = 6
    TYPES = ((int,), (int,), (str,))
    channel: int
    id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Error(Message):
    """Fatal: the sender is closing the connection, and says why."""

    CODE = 7
    TYPES = ((str,), (str,))
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Ping(Message):
    """A barrier: the peer answers Pong after handling everything sent before it."""

    CODE = 8
    TYPES = ((int,),)
    id: int


@dataclass(frozen=True, slots=True)
class Pong(Message):
    CODE = 9
    TYPES = ((int,),)
    id: int


@dataclass(frozen=True, slots=True)
class Done(Message):
    """The sender holds everything the peer announced (used by one-shot syncs to end)."""

    CODE = 10
    TYPES = ()


def encode(msg: Message) -> bytes:
    """One frame: u32 length || msgpack([code, *fields])."""
    body = msgpack.packb([msg.CODE, *[getattr(msg, f) for f in msg.__slots__]], use_bin_type=True)  # type: ignore[attr-defined]
    return FRAME_HEADER.pack(len(body)) + body


def decode(body: bytes | memoryview) -> Message:
    """Decode one frame body (without its length prefix); ProtocolError on anything off."""
    try:
        arr = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:
        raise ProtocolError(f"undecodable frame ({type(exc).__name__}): the peer sent garbage") from None
    if not isinstance(arr, list) or not arr or type(arr[0]) is not int:
        raise ProtocolError("a frame must be a msgpack array starting with a message code")
    cls = _REGISTRY.get(arr[0])
    if cls is None:
        raise ProtocolError(f"unknown message code {arr[0]}")
    values = arr[1:]
    if len(values) != len(cls.TYPES):
        raise ProtocolError(f"{cls.__name__} needs {len(cls.TYPES)} fields, got {len(values)}")
    for v, allowed in zip(values, cls.TYPES, strict=True):
        if type(v) not in allowed:
            raise ProtocolError(f"{cls.__name__}: a field has type {type(v).__name__}, expected {allowed}")
        if type(v) is int and not 0 <= v < 2**63:
            raise ProtocolError(f"{cls.__name__}: integer field out of range")
    return cls(*values)


class FrameDecoder:
    """Splits a byte stream into frames, refusing any frame over ``max_frame`` before buffering it."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME):
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos > len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or None if more bytes are needed."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            return None
        (n,) = FRAME_HEADER.unpack_from(buf, pos)
        if n > self.max_frame:
            raise FrameTooLarge(f"the peer sent a {n}-byte frame; the limit is {self.max_frame}")
        if len(buf) - pos - 4 < n:
            return None
        body = bytes(buf[pos + 4 : pos + 4 + n])
        self._pos = pos + 4 + n
        return body

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos


__all__ = [
    "Close",
    "Data",
    "Done",
    "Error",
    "FrameDecoder",
    "Head",
    "Hello",
    "Message",
    "NoData",
    "Open",
    "PROTOCOL_VERSION",
    "Ping",
    "Pong",
    "Request",
    "decode",
    "encode",
]
