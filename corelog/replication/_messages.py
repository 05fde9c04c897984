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
DEFAULT_MAX_FRAME = 4 * 1024 * 1024
MAX_SAFE_INT = 2**53  # every integer a peer announces stays below this (exact in JS and floats)
DEFAULT_MAX_ARRAY = 65536  # elements of any one msgpack array (e.g. blocks of a Data)
DEFAULT_MAX_ARRAYS = 1024  # arrays in one frame (a Data's nodes are ~2 log2(length))
MAX_STR = 4096  # reasons and error messages

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

    @classmethod
    def from_proof(cls, channel: int, rid: int, proof: Any) -> Data:
        """The Data frame answering request ``rid`` on ``channel`` with a corelog ``Proof``."""
        return cls(
            channel,
            rid,
            proof.fork,
            proof.length,
            proof.signature,
            proof.start,
            list(proof.blocks),
            [[n.index, n.size, n.hash] for n in proof.nodes],
            proof.have,
            proof.manifest,
        )


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
    names: tuple[str, ...] = msg.__slots__
    body = msgpack.packb([msg.CODE, *[getattr(msg, f) for f in names]], use_bin_type=True)
    return FRAME_HEADER.pack(len(body)) + body


class _Budget:
    """Counts the arrays a frame creates while msgpack decodes it (bounds nesting and width)."""

    __slots__ = ("left",)

    def __init__(self, arrays: int):
        self.left = arrays

    def list_hook(self, value: list) -> list:
        self.left -= 1
        if self.left < 0:
            raise ProtocolError("the frame nests too many arrays")
        return value


def _no_maps(_pairs: object) -> object:
    raise ProtocolError("the protocol has no msgpack maps")


def decode(
    body: bytes | memoryview,
    *,
    max_array_len: int = DEFAULT_MAX_ARRAY,
    max_arrays: int = DEFAULT_MAX_ARRAYS,
) -> Message:
    """Decode one frame body (without its length prefix); ProtocolError on anything off.

    Decoding is bounded before objects are built: no maps, no ext types, strings
    up to ``MAX_STR``, arrays up to ``max_array_len`` elements and at most
    ``max_arrays`` of them per frame, so a hostile frame costs at most a small
    multiple of its own size. Integers must lie in ``[0, 2**53)``.
    """
    budget = _Budget(max_arrays)
    try:
        arr = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=MAX_STR,
            max_bin_len=len(body),
            max_array_len=max_array_len,
            max_map_len=0,
            max_ext_len=0,
            list_hook=budget.list_hook,
            object_pairs_hook=_no_maps,
        )
    except ProtocolError:
        raise
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
        if type(v) is int and not 0 <= v < MAX_SAFE_INT:
            raise ProtocolError(f"{cls.__name__}: integer field {v} outside [0, 2**53)")
    if cls is Data:
        _check_data(values)
    return cls(*values)


def _check_data(values: list) -> None:
    """Blocks are bytes; nodes are [index, size, 32-byte hash] with safe integers."""
    blocks, nodes = values[6], values[7]
    if blocks and set(map(type, blocks)) != {bytes}:  # (iterates in C: Data frames are big)
        raise ProtocolError("Data: a block is not bytes")
    for n in nodes:
        if (
            type(n) is not list
            or len(n) != 3
            or type(n[0]) is not int
            or type(n[1]) is not int
            or type(n[2]) is not bytes
            or len(n[2]) != 32
            or not 0 <= n[0] < MAX_SAFE_INT
            or not 0 <= n[1] < MAX_SAFE_INT
        ):
            raise ProtocolError("Data: a node is not [index, size, 32-byte hash]")


class FrameDecoder:
    """Splits a byte stream into frames, refusing any frame over ``max_frame`` before buffering it."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME):
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
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
        with memoryview(buf) as view:
            body = bytes(view[pos + 4 : pos + 4 + n])  # (one copy)
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
