"""The two halves of a WebRTC stream: :class:`Inbox` (trio side) and :class:`Link` (asyncio side).

Wire format and flow control. Binary messages carry stream bytes, cut into
messages of at most ``message_size`` bytes (16 KiB by default; at most the
peer's ``a=max-message-size``). Text messages are credit grants: the decimal
number of bytes the receiver has consumed. Each side grants its peer an initial
``receive_window`` (1 MiB by default) when the channel opens and grants again
as its trio reader consumes data (every ``receive_window // 4`` bytes). A sender
never has more than the granted window outstanding, so:

* the receive queue of a stream is bounded by its ``receive_window``; a peer that
  sends beyond the credit it was given fails the stream with a ProtocolError;
* ``send_all`` blocks while the peer does not read (TCP-like backpressure), and
  also while the channel's ``bufferedAmount`` is over ``high_water``
  (``bufferedAmountLowThreshold`` = ``high_water // 2``, woken by the
  ``bufferedamountlow`` event), so the sender's own buffer is bounded too;
* the SCTP association itself is never paused: acknowledgements and the other
  direction keep flowing, so one side not reading cannot stall the other
  direction.

Incoming messages reach the trio side through ``TrioToken.run_sync_soon``
(:meth:`Inbox.post`); :meth:`Link.close` closes the channel with an SCTP stream
reset ordered after the data already sent.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from .errors import ProtocolError

MAX_GRANT = 1 << 31  # the largest credit grant accepted in one message (and the largest receive_window)


class Inbox:
    """Trio-side receiving state. Its methods run in the trio thread (posted with run_sync_soon)."""

    def __init__(self, token: trio.lowlevel.TrioToken):
        self.token = token
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.eof = False
        self.error: BaseException | None = None
        self.readable = trio.Event()
        self.opened = trio.Event()

    def post(self, fn: Callable[..., None], *args: Any) -> None:  # from the asyncio thread
        try:
            self.token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass

    def data(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        self.readable.set()

    def open(self) -> None:
        self.opened.set()

    def end(self, error: BaseException | None) -> None:
        if not self.eof and self.error is None:
            if error is None:
                self.eof = True
            else:
                self.error = error
        self.readable.set()
        self.opened.set()


class Link:
    """Asyncio-side state of one data channel: credit, flow control, handlers. Asyncio thread only."""

    def __init__(self, inbox: Inbox, *, window: int, high_water: int):
        self.inbox = inbox
        self.window = window
        self.high_water = high_water
        self.channel: Any = None
        self.credit = 0  # bytes we may still send (granted by the peer)
        self.unacked = 0  # bytes received and not yet granted back to the peer (<= window)
        self.closed = False  # the channel or the connection closed
        self.local_closed = False  # aclose() was called
        self.error: BaseException | None = None
        self.wake = asyncio.Event()
        self.closed_event = asyncio.Event()

    def attach(self, channel: Any) -> None:
        """Wire the handlers the moment the channel exists, so no message is lost."""
        if self.channel is not None:  # only one channel per connection
            channel.close()
            return
        self.channel = channel
        channel.bufferedAmountLowThreshold = self.high_water // 2
        channel.on("message", self._on_message)
        channel.on("bufferedamountlow", self.wake.set)
        channel.on("close", self._on_close)
        if channel.readyState == "open":
            self._on_open()
        else:
            channel.once("open", self._on_open)

    def _on_open(self) -> None:
        self.channel.send(str(self.window))  # the peer's initial credit
        self.inbox.post(self.inbox.open)

    def _on_message(self, data: bytes | str) -> None:
        if self.error is not None or self.closed:
            return
        if isinstance(data, str):
            if not (data.isascii() and data.isdigit()) or not 0 < int(data) <= MAX_GRANT:
                self.fail(ProtocolError(f"bad flow-control message {data[:40]!r} from the WebRTC peer"))
                return
            self.credit += int(data)
            self.wake.set()
            return
        self.unacked += len(data)
        if self.unacked > self.window:
            self.fail(
                ProtocolError(
                    f"the WebRTC peer sent more than the {self.window}-byte receive window without "
                    "waiting for credit (not a corelog WebRTCStream peer?)"
                )
            )
            return
        self.inbox.post(self.inbox.data, data)

    def _on_close(self) -> None:
        if not self.closed:
            self.closed = True
            self.wake.set()
            self.closed_event.set()
            self.inbox.post(self.inbox.end, None)

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
            self.wake.set()
            self.closed_event.set()
            self.inbox.post(self.inbox.end, exc)

    def connection_state(self, state: str) -> None:
        if state == "failed":
            self.fail(trio.BrokenResourceError("the WebRTC connection failed (ICE or DTLS)"))
        elif state == "closed":
            self._on_close()

    def grant(self, n: int) -> None:
        self.unacked -= n
        if self.channel is not None and self.channel.readyState == "open" and not self.local_closed:
            self.channel.send(str(n))

    def _check(self) -> None:
        if self.local_closed:
            raise trio.ClosedResourceError("the WebRTC stream was closed")
        if self.error is not None:
            raise trio.BrokenResourceError(f"the WebRTC stream failed: {self.error}") from self.error
        if self.closed or self.channel.readyState != "open":
            raise trio.BrokenResourceError("the WebRTC data channel is closed")

    def _writable(self) -> bool:
        return self.credit > 0 and self.channel.bufferedAmount <= self.high_water

    async def wait_writable(self) -> None:
        while True:
            self._check()
            if self._writable():
                return
            self.wake.clear()
            await self.wake.wait()

    async def send(self, view: memoryview, message_size: int) -> None:
        channel, offset, end = self.channel, 0, len(view)
        while offset < end:
            self._check()
            if not self._writable():
                self.wake.clear()
                await self.wake.wait()
                continue
            n = min(message_size, self.credit, end - offset)
            channel.send(bytes(view[offset : offset + n]))
            self.credit -= n
            offset += n

    async def close(self) -> None:
        """Graceful: stream reset after the data already queued; wait until the peer acknowledges it."""
        self.local_closed = True
        self.wake.set()
        channel = self.channel
        if channel is not None and channel.readyState in ("connecting", "open") and not self.closed:
            channel.close()
            await self.closed_event.wait()
