"""Pluggable signaling for WebRTC: how two peers exchange their SDP offer and answer.

A signaling object has ``async send(dict)``, ``async receive() -> dict`` and
``async aclose()``; messages are ``{"type": "offer" | "answer", "sdp": str}``.
Provided: an in-process pair (:func:`memory_signaling_pair`) and
:class:`StreamSignaling`, newline-delimited JSON over any trio stream::

    # TCP on the loopback interface
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    server = StreamSignaling(await listener.accept())            # one side
    client = await open_tcp_signaling("127.0.0.1", port)          # the other

    # a unix socket
    listener = await open_unix_signaling_listener(path)
    server = StreamSignaling(await listener.accept())
    client = await open_unix_signaling(path)
"""

from __future__ import annotations

import json
import os
from typing import Any, Protocol

import trio

from .errors import ProtocolError

MAX_LINE = 256 * 1024  # an SDP is a few KiB; a longer line is refused


class Signaling(Protocol):
    async def send(self, message: dict) -> None: ...
    async def receive(self) -> dict: ...
    async def aclose(self) -> None: ...


class MemorySignaling:
    """One end of an in-process signaling pair."""

    def __init__(self, send: trio.MemorySendChannel, receive: trio.MemoryReceiveChannel):
        self._send, self._receive = send, receive

    async def send(self, message: dict) -> None:
        try:
            await self._send.send(dict(message))
        except trio.BrokenResourceError:
            raise ProtocolError("the signaling peer went away before the exchange finished") from None

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
    """Signaling as newline-delimited JSON objects over a trio stream (lines of at most ``max_line`` bytes)."""

    def __init__(self, stream: trio.abc.Stream, *, max_line: int = MAX_LINE):
        self.stream = stream
        self.max_line = max_line
        self._buf = bytearray()

    async def send(self, message: dict) -> None:
        line = json.dumps(message, separators=(",", ":")).encode()
        if len(line) > self.max_line:
            raise ProtocolError(
                f"signaling message of {len(line)} bytes is over the {self.max_line}-byte limit"
            )
        await self.stream.send_all(line + b"\n")

    async def receive(self) -> dict:
        while (end := self._buf.find(b"\n")) < 0:
            if len(self._buf) > self.max_line:
                raise ProtocolError(f"signaling message over the {self.max_line}-byte limit")
            data = await self.stream.receive_some(65536)
            if not data:
                raise ProtocolError("the signaling connection closed before the exchange finished")
            self._buf += data
        if end > self.max_line:
            raise ProtocolError(f"signaling message over the {self.max_line}-byte limit")
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        try:
            msg = json.loads(line)
        except ValueError:
            raise ProtocolError("signaling message is not JSON") from None
        if not isinstance(msg, dict):
            raise ProtocolError("signaling message is not a JSON object")
        return msg

    async def aclose(self) -> None:
        await self.stream.aclose()


async def open_tcp_signaling(host: str, port: int) -> StreamSignaling:
    """Connect to a signaling peer over TCP (use 127.0.0.1 to stay on the machine)."""
    return StreamSignaling(await trio.open_tcp_stream(host, port))


async def open_unix_signaling(path: str | os.PathLike[str]) -> StreamSignaling:
    """Connect to a signaling peer over a unix socket."""
    return StreamSignaling(await trio.open_unix_socket(os.fspath(path)))


async def open_unix_signaling_listener(path: str | os.PathLike[str], backlog: int = 8) -> trio.SocketListener:
    """Listen on a unix socket; ``StreamSignaling(await listener.accept())`` gives the server side."""
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(os.fspath(path))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)
