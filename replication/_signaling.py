"""Pluggable signaling for WebRTC: how two peers exchange their SDP offer and answer.

A signaling object has ``async send(dict)``, ``async receive() -> dict`` and
``async aclose()``. Provided: an in-process pair (memory channels) and
newline-delimited JSON over any trio stream (TCP on 127.0.0.1, a unix socket).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import trio

from corelog.errors import ProtocolError

MAX_LINE = 256 * 1024


class Signaling(Protocol):
    async def send(self, message: dict) -> None: ...
    async def receive(self) -> dict: ...
    async def aclose(self) -> None: ...


class MemorySignaling:
    """One end of an in-process signaling pair."""

    def __init__(self, send: trio.MemorySendChannel, receive: trio.MemoryReceiveChannel):
        self._send, self._receive = send, receive

    async def send(self, message: dict) -> None:
        await self._send.send(dict(message))

    async def receive(self) -> dict:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise ProtocolError("the signaling peer went away before the exchange finished") from None

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def memory_signaling_pair() -> tuple[MemorySignaling, MemorySignaling]:
    """Two connected in-process signaling ends."""
    a_tx, b_rx = trio.open_memory_channel[Any](4)
    b_tx, a_rx = trio.open_memory_channel[Any](4)
    return MemorySignaling(a_tx, a_rx), MemorySignaling(b_tx, b_rx)


class StreamSignaling:
    """Signaling as newline-delimited JSON over a trio stream (bounded line length)."""

    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self._buf = bytearray()

    async def send(self, message: dict) -> None:
        await self.stream.send_all(json.dumps(message).encode() + b"\n")

    async def receive(self) -> dict:
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_LINE:
                raise ProtocolError("signaling message too long")
            data = await self.stream.receive_some(65536)
            if not data:
                raise ProtocolError("the signaling connection closed before the exchange finished")
            self._buf += data
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        try:
            msg = json.loads(line)
        except ValueError:
            raise ProtocolError("signaling message is not JSON") from None
        if not isinstance(msg, dict):
            raise ProtocolError("signaling message is not an object")
        return msg

    async def aclose(self) -> None:
        await self.stream.aclose()
