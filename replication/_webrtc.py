"""A WebRTC data channel as a trio byte stream; aiortc runs in its own asyncio thread.

aiortc is asyncio-based; corelog runs on trio. One daemon thread owns an asyncio
event loop; trio calls into it with ``asyncio.run_coroutine_threadsafe`` and is
woken back through ``TrioToken.run_sync_soon`` (no thread per call). Incoming
messages are handed to the trio side the same way.

Loopback only (the default, and what tests use): ``RTCConfiguration(iceServers=[])``
so no STUN/TURN server is ever asked, and aioice's host address enumeration is
replaced so the only host candidate is exactly ``127.0.0.1``.

Flow control: outgoing data waits while the channel's ``bufferedAmount`` is over
``high_water`` (woken by ``bufferedamountlow``). Incoming data is queued for the
reader up to ``max_buffered`` bytes; past that the stream fails with a clear
error instead of growing without bound (the replication protocol's own request
limits keep it far below that).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import trio

from corelog.errors import ProtocolError

from ._signaling import Signaling

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def asyncio_loop() -> asyncio.AbstractEventLoop:
    """The shared asyncio loop thread aiortc runs in (started on first use, a daemon)."""
    global _loop
    with _loop_lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=run, name="corelog-aiortc", daemon=True).start()
            ready.wait()
            _loop = loop
        return _loop


async def run_in_asyncio(coro: Coroutine[Any, Any, Any]) -> Any:
    """Await an asyncio coroutine from trio; cancelling the trio side cancels it."""
    fut = asyncio.run_coroutine_threadsafe(coro, asyncio_loop())
    done = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def wake(_f: Any) -> None:
        try:
            token.run_sync_soon(done.set)
        except trio.RunFinishedError:
            pass

    fut.add_done_callback(wake)
    try:
        await done.wait()
    except trio.Cancelled:
        fut.cancel()
        raise
    return fut.result()


_original_host_addresses: Callable[..., list[str]] | None = None


def _restrict_to_loopback() -> None:
    import aioice.ice

    global _original_host_addresses
    if _original_host_addresses is None:
        _original_host_addresses = aioice.ice.get_host_addresses

        def loopback(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
            return ["127.0.0.1"]

        aioice.ice.get_host_addresses = loopback


def candidate_addresses(sdp: str) -> list[str]:
    """The connection addresses of every ``a=candidate`` line in an SDP."""
    return [m.group(1) for m in re.finditer(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ", sdp, re.M)]


class _Inbox:
    """Trio-side receiving state, wired to the channel the moment it exists (no message is lost)."""

    def __init__(self, channel: Any, token: trio.lowlevel.TrioToken, high_water: int):
        self.data = bytearray()
        self.readable = trio.Event()
        self.writable = trio.Event()
        self.closed = False
        self.overflow = False
        self.max_buffered = 64 << 20
        channel.bufferedAmountLowThreshold = high_water // 2

        @channel.on("message")
        def on_message(data: Any) -> None:  # asyncio thread
            if isinstance(data, str):
                data = data.encode()
            token.run_sync_soon(self.deliver, data)

        @channel.on("close")
        def on_close() -> None:
            token.run_sync_soon(self.deliver, None)

        @channel.on("bufferedamountlow")
        def on_low() -> None:
            token.run_sync_soon(self.writable.set)

    def deliver(self, data: bytes | None) -> None:  # trio thread
        if data is None:
            self.closed = True
        else:
            self.data += data
            if len(self.data) > self.max_buffered:
                self.overflow = True
        self.readable.set()


class WebRTCStream(trio.abc.Stream):
    """An ordered, reliable RTCDataChannel as a trio byte stream."""

    def __init__(
        self,
        pc: Any,
        channel: Any,
        inbox: _Inbox,
        local_sdp: str,
        remote_sdp: str,
        *,
        message_size: int = 16 * 1024,
        high_water: int = 1 << 20,
        max_buffered: int = 64 << 20,
    ):
        self._pc, self._channel, self._in = pc, channel, inbox
        self.local_sdp, self.remote_sdp = local_sdp, remote_sdp
        self.fingerprints = (_fingerprint(local_sdp), _fingerprint(remote_sdp))
        self.message_size, self.high_water = message_size, high_water
        inbox.max_buffered = max_buffered
        self._send_lock = trio.Lock()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._send_lock:
            if self._in.closed:
                raise trio.BrokenResourceError("the data channel is closed")
            view = bytes(data)
            chunks = [view[i : i + self.message_size] for i in range(0, len(view), self.message_size)]
            channel = self._channel

            async def push() -> int:
                for c in chunks:
                    channel.send(c)
                return channel.bufferedAmount

            buffered = await run_in_asyncio(push())
            while buffered > self.high_water:
                self._in.writable = trio.Event()
                with trio.move_on_after(1.0):
                    await self._in.writable.wait()

                async def amount() -> int:
                    return channel.bufferedAmount

                buffered = await run_in_asyncio(amount())

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        inbox = self._in
        while not inbox.data:
            if inbox.closed:
                return b""
            inbox.readable = trio.Event()
            await inbox.readable.wait()
        if inbox.overflow:
            raise ProtocolError(f"more than {inbox.max_buffered} bytes received and not read")
        n = len(inbox.data) if max_bytes is None else min(max_bytes, len(inbox.data))
        out = bytes(inbox.data[:n])
        del inbox.data[:n]
        return out

    async def aclose(self) -> None:
        if self._pc is None:
            return
        pc, self._pc = self._pc, None
        with trio.CancelScope(shield=True):
            await run_in_asyncio(pc.close())
        self._in.closed = True
        self._in.readable.set()


def _fingerprint(sdp: str) -> str | None:
    m = re.search(r"^a=fingerprint:(\S+ \S+)", sdp, re.M)
    return m.group(1) if m else None


async def connect_webrtc(
    signaling: Signaling,
    *,
    initiator: bool,
    label: str = "corelog",
    loopback_only: bool = True,
    timeout: float = 30.0,
) -> WebRTCStream:
    """Open a data channel to the peer on the other side of ``signaling``.

    The initiator creates the channel and the offer; the other side answers.
    Both sides use ``iceServers=[]`` (no STUN); with ``loopback_only`` the only
    ICE candidate is 127.0.0.1.
    """
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    if loopback_only:
        _restrict_to_loopback()
    asyncio_loop()
    opened = trio.Event()
    token = trio.lowlevel.current_trio_token()
    box: dict[str, Any] = {}

    async def make_pc() -> Any:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

        def channel_ready(ch: Any) -> None:  # asyncio thread: wire the handlers before any message
            box["channel"] = ch
            box["inbox"] = _Inbox(ch, token, 1 << 20)
            if ch.readyState == "open":
                token.run_sync_soon(opened.set)
            else:
                ch.on("open", lambda: token.run_sync_soon(opened.set))

        if initiator:
            channel_ready(pc.createDataChannel(label, ordered=True))
        else:
            pc.on("datachannel", channel_ready)
        return pc

    pc = await run_in_asyncio(make_pc())
    try:
        with trio.fail_after(timeout):
            if initiator:

                async def offer() -> str:
                    await pc.setLocalDescription(await pc.createOffer())
                    return pc.localDescription.sdp

                local = await run_in_asyncio(offer())
                await signaling.send({"type": "offer", "sdp": local})
                msg = await signaling.receive()
                if msg.get("type") != "answer" or not isinstance(msg.get("sdp"), str):
                    raise ProtocolError(
                        f"expected an SDP answer from the signaling peer, got {msg.get('type')!r}"
                    )
                remote = msg["sdp"]
                await run_in_asyncio(pc.setRemoteDescription(RTCSessionDescription(remote, "answer")))
            else:
                msg = await signaling.receive()
                if msg.get("type") != "offer" or not isinstance(msg.get("sdp"), str):
                    raise ProtocolError(
                        f"expected an SDP offer from the signaling peer, got {msg.get('type')!r}"
                    )
                remote = msg["sdp"]

                async def answer() -> str:
                    await pc.setRemoteDescription(RTCSessionDescription(remote, "offer"))
                    await pc.setLocalDescription(await pc.createAnswer())
                    return pc.localDescription.sdp

                local = await run_in_asyncio(answer())
                await signaling.send({"type": "answer", "sdp": local})
            if loopback_only:
                bad = [a for a in candidate_addresses(remote) if a != "127.0.0.1"]
                if bad:
                    raise ProtocolError(f"the peer offered non-loopback ICE candidates {bad}; refusing")
            await opened.wait()
    except BaseException:
        with trio.CancelScope(shield=True):
            await run_in_asyncio(pc.close())
        raise
    return WebRTCStream(pc, box["channel"], box["inbox"], local, remote)
