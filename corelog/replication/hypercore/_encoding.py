"""compact-encoding: the byte format of every Hypercore wire message.

``uint`` is 1 byte up to 0xfc, then ``fd``+u16le, ``fe``+u32le or ``ff``+u64le.
Buffers and strings carry a uint length, arrays a uint count. Decoders read the
fields they know and ignore trailing bytes (newer optional fields rely on it),
and refuse anything a JS peer cannot represent: integers above 2**53 - 1
(JavaScript numbers), arrays of more than 0x100000 items. Every failure raises
:class:`WireError`, so a peer's garbage ends only its own connection.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import TypeVar

from .errors import WireError

MAX_SAFE_INTEGER = 2**53 - 1
MAX_ARRAY = 0x100000

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

T = TypeVar("T")


def encode_uint(n: int) -> bytes:
    if n < 0 or n > MAX_SAFE_INTEGER:
        raise ValueError(f"{n} cannot be sent: JS peers decode integers up to 2**53 - 1 only")
    if n <= 0xFC:
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + _U16.pack(n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + _U32.pack(n)
    return b"\xff" + _U64.pack(n)


class Writer:
    """Appends compact-encoded fields to a bytearray."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def uint(self, n: int) -> Writer:
        self.buf += encode_uint(n)
        return self

    def buffer(self, b: bytes) -> Writer:
        self.buf += encode_uint(len(b))
        self.buf += b
        return self

    def optional_buffer(self, b: bytes | None) -> Writer:
        return self.buffer(b or b"")

    def string(self, s: str) -> Writer:
        return self.buffer(s.encode("utf-8"))

    def fixed(self, b: bytes, size: int = 32) -> Writer:
        if len(b) != size:
            raise ValueError(f"a fixed{size} field takes exactly {size} bytes, got {len(b)}")
        self.buf += b
        return self

    def array(self, items: Sequence[T], write: Callable[[Writer, T], object]) -> Writer:
        self.uint(len(items))
        for item in items:
            write(self, item)
        return self

    def uint32array(self, words: Sequence[int]) -> Writer:
        self.uint(len(words))
        for w in words:
            self.buf += _U32.pack(w)
        return self

    def raw(self, b: bytes) -> Writer:
        self.buf += b
        return self

    def bytes(self) -> bytes:
        return bytes(self.buf)


class Reader:
    """Reads compact-encoded fields from bytes; every overrun is a WireError."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes | bytearray | memoryview, pos: int = 0, end: int | None = None):
        self.buf = bytes(buf) if not isinstance(buf, bytes) else buf
        self.pos = pos
        self.end = len(self.buf) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def _take(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise WireError(f"message truncated: {n} more bytes expected, {self.end - self.pos} left")
        p = self.pos
        self.pos = p + n
        return self.buf[p : p + n]

    def uint(self) -> int:
        if self.pos >= self.end:
            raise WireError("message truncated: an integer was expected")
        a = self.buf[self.pos]
        self.pos += 1
        if a <= 0xFC:
            return a
        if a == 0xFD:
            return _U16.unpack(self._take(2))[0]
        if a == 0xFE:
            return _U32.unpack(self._take(4))[0]
        n = _U64.unpack(self._take(8))[0]
        if n > MAX_SAFE_INTEGER:
            raise WireError(f"integer {n} is above 2**53 - 1, which no Hypercore peer sends")
        return n

    def buffer(self) -> bytes:
        return self._take(self.uint())

    def optional_buffer(self) -> bytes | None:
        b = self.buffer()
        return b or None

    def string(self) -> str:
        try:
            return self.buffer().decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("a string field is not valid UTF-8") from None

    def fixed(self, size: int = 32) -> bytes:
        return self._take(size)

    def array(self, read: Callable[[Reader], T]) -> list[T]:
        n = self.uint()
        if n > MAX_ARRAY:
            raise WireError(f"array of {n} items (at most {MAX_ARRAY})")
        if n > self.remaining:  # every item takes at least one byte
            raise WireError(f"array of {n} items in {self.remaining} bytes: message truncated")
        return [read(self) for _ in range(n)]

    def uint32array(self) -> list[int]:
        n = self.uint()
        if n > MAX_ARRAY:
            raise WireError(f"uint32 array of {n} words (at most {MAX_ARRAY})")
        data = self._take(4 * n)
        return list(struct.unpack(f"<{n}I", data))

    def raw(self) -> bytes:
        return self._take(self.end - self.pos)
