"""A WebRTC data channel as a trio byte stream: :func:`connect_webrtc` and :class:`WebRTCStream`.

aiortc is asyncio-based; corelog runs on trio. aiortc runs in an
:class:`AsyncioThread` (``_asyncio_thread``; by default one thread shared by
every stream, started on the first :func:`connect_webrtc` and stopped when the
last stream is closed). Each stream is an :class:`Inbox` on the trio side and a
:class:`Link` on the asyncio side (``_channel``: wire format and credit-based
flow control, so receive queues and send buffers are bounded).

Loopback only (``loopback_only=True``, the default, and what the tests use):
``iceServers=[]``, aioice gathers only 127.0.0.1 and an SDP offering any other
candidate is refused with :class:`WebRTCError` before it is applied
(``_loopback``).

``aclose()`` is graceful: the channel is closed with an SCTP stream reset that is
ordered after the data already sent, so the peer reads everything and then
``b""``; after ``close_timeout`` (or when cancelled) the peer connection is
closed at once.
"""

from __future__ import annotations

import re
from typing import Any

import trio

from ._asyncio_thread import AsyncioThread, shared_thread
from ._channel import MAX_GRANT, Inbox, Link
from ._loopback import (
    LOOPBACK,
    candidate_addresses,
    check_loopback,
    gather_loopback_only,
    install_host_address_filter,
    sdp_candidates,
)
from ._signaling import Signaling
from .errors import ProtocolError, WebRTCError

__all__ = [
    "DEFAULT_HIGH_WATER",
    "DEFAULT_MESSAGE_SIZE",
    "DEFAULT_RECEIVE_WINDOW",
    "LOOPBACK",
    "AsyncioThread",
    "WebRTCError",
    "WebRTCStream",
    "candidate_addresses",
    "connect_webrtc",
    "sdp_candidates",
]

DEFAULT_MESSAGE_SIZE = 16 * 1024
DEFAULT_RECEIVE_WINDOW = 1 << 20
DEFAULT_HIGH_WATER = 256 * 1024
# What aiortc assumes when the peer's SDP has no a=max-message-size; aiortc peers advertise 256 KiB.
_DEFAULT_REMOTE_MAX_MESSAGE = 65536


def _fingerprint(sdp: str) -> str | None:
    found = re.findall(r"^a=fingerprint:(\S+) (\S+)", sdp, re.M)
    for algo, value in found:
        if algo.lower() == "sha-256":
            return f"{algo} {value}"
    return f"{found[0][0]} {found[0][1]}" if found else None


def _max_message_size(sdp: str) -> int:
    m = re.search(r"^a=max-message-size:(\d+)", sdp, re.M)
    size = int(m.group(1)) if m else _DEFAULT_REMOTE_MAX_MESSAGE
    return size or (1 << 30)  # 0 means "no limit"


# --- the trio stream -------------------------------------------------------------------------


class WebRTCStream(trio.abc.Stream):
    """An ordered, reliable RTCDataChannel as a trio byte stream (module docstrings: ``_webrtc``, ``_channel``).

    Attributes: ``fingerprints`` = (local, remote) DTLS fingerprints from the SDPs
    (``"sha-256 AB:CD:..."``), ``local_sdp``, ``remote_sdp``, ``message_size``,
    ``receive_window``, ``high_water``.
    """

    def __init__(
        self,
        *,
        thread: AsyncioThread,
        shared: bool,
        pc: Any,
        link: Link,
        inbox: Inbox,
        local_sdp: str,
        remote_sdp: str,
        message_size: int,
        close_timeout: float,
    ):
        self._thread, self._shared, self._pc, self._link, self._inbox = thread, shared, pc, link, inbox
        self.local_sdp, self.remote_sdp = local_sdp, remote_sdp
        self.fingerprints = (_fingerprint(local_sdp), _fingerprint(remote_sdp))
        self.message_size = message_size
        self.receive_window = link.window
        self.high_water = link.high_water
        self.close_timeout = close_timeout
        self._grant_step = max(1, link.window // 4)
        self._unreported = 0
        self._closed = False
        self._sending = False
        self._receiving = False

    @property
    def queued_bytes(self) -> int:
        """Bytes received and not read yet (never more than ``receive_window``)."""
        return self._inbox.size

    @property
    def buffered_amount(self) -> int:
        """The channel's ``bufferedAmount``: bytes handed to aiortc and not sent yet."""
        return self._link.channel.bufferedAmount

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this WebRTC stream")
        if self._closed:
            raise trio.ClosedResourceError("the WebRTC stream was closed")
        self._sending = True
        try:
            with memoryview(data) as view, view.cast("B") as flat:
                if not len(flat):
                    await trio.lowlevel.checkpoint()
                    return
                await self._thread.call(self._link.send, flat, self.message_size)
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the WebRTC stream was closed")
        await self._thread.call(self._link.wait_writable)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this WebRTC stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            inbox = self._inbox
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("the WebRTC stream was closed")
                if inbox.chunks:
                    break
                if inbox.error is not None:
                    if isinstance(inbox.error, trio.BrokenResourceError | ProtocolError):
                        raise inbox.error
                    raise trio.BrokenResourceError(str(inbox.error)) from inbox.error
                if inbox.eof:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                inbox.readable = trio.Event()
                await inbox.readable.wait()
            out = self._take(max_bytes)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return out
        finally:
            self._receiving = False

    def _take(self, max_bytes: int | None) -> bytes:
        inbox = self._inbox
        limit = inbox.size if max_bytes is None else min(max_bytes, inbox.size)
        parts, n = [], 0
        while n < limit:
            chunk = inbox.chunks.popleft()
            if n + len(chunk) > limit:
                cut = limit - n
                inbox.chunks.appendleft(chunk[cut:])
                chunk = chunk[:cut]
            parts.append(chunk)
            n += len(chunk)
        inbox.size -= n
        self._unreported += n
        if self._unreported >= self._grant_step:
            self._thread.call_soon(self._link.grant, self._unreported)
            self._unreported = 0
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def aclose(self) -> None:
        """Close gracefully (the peer reads all sent data, then EOF), at most ``close_timeout`` seconds."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._inbox.readable.set()
        try:
            with trio.move_on_after(self.close_timeout):
                await self._thread.call(self._link.close)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self._thread.call(self._pc.close)
                except trio.ClosedResourceError:
                    pass
                finally:
                    if self._shared:
                        await shared_thread.release(self._thread)


# --- connecting -------------------------------------------------------------------------------


def _require_aiortc() -> None:
    """WebRTC is an optional extra: say how to get it instead of a bare ModuleNotFoundError."""
    try:
        import aiortc  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"WebRTC needs aiortc, which is not installed ({exc}); install the extra: "
            "pip install 'corelog[webrtc]' (or pip install aiortc)"
        ) from exc


async def connect_webrtc(
    signaling: Signaling,
    *,
    initiator: bool,
    label: str = "corelog",
    loopback_only: bool = True,
    timeout: float = 30.0,
    message_size: int = DEFAULT_MESSAGE_SIZE,
    receive_window: int = DEFAULT_RECEIVE_WINDOW,
    high_water: int = DEFAULT_HIGH_WATER,
    close_timeout: float = 5.0,
    thread: AsyncioThread | None = None,
) -> WebRTCStream:
    """Open a data channel to the peer on the other side of ``signaling``.

    The initiator creates the channel and the SDP offer; the other side answers.
    Both sides use ``iceServers=[]`` (no STUN/TURN); with ``loopback_only`` the
    only ICE candidate is 127.0.0.1 and the peer's SDP must offer only that.
    Returns once the channel is open; raises :class:`WebRTCError` (saying what it
    was waiting for) after ``timeout`` seconds. ``thread``: run aiortc in this
    :class:`AsyncioThread` instead of the shared one (the caller closes it).
    """
    if message_size < 1:
        raise ValueError("message_size must be at least 1")
    if receive_window < 1024 or receive_window > MAX_GRANT:
        raise ValueError(f"receive_window must be between 1024 and {MAX_GRANT}")
    if high_water < 0:
        raise ValueError("high_water must be >= 0")
    _require_aiortc()
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    if loopback_only:
        install_host_address_filter()
    shared = thread is None
    loop_thread = shared_thread.acquire() if thread is None else thread
    inbox = Inbox(trio.lowlevel.current_trio_token())
    pc: Any = None
    stage = "the peer connection to start"

    def make() -> tuple[Any, Link]:  # asyncio thread
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        link = Link(inbox, window=receive_window, high_water=high_water)
        pc.on("connectionstatechange", lambda: link.connection_state(pc.connectionState))
        if initiator:
            link.attach(pc.createDataChannel(label, ordered=True))
        else:
            pc.on("datachannel", link.attach)
        return pc, link

    async def describe(remote: RTCSessionDescription | None) -> str:  # asyncio thread
        gather_loopback_only.set(loopback_only)  # this task's context only: aioice gathers 127.0.0.1
        if remote is not None:
            await pc.setRemoteDescription(remote)
        await pc.setLocalDescription(await (pc.createOffer() if initiator else pc.createAnswer()))
        return pc.localDescription.sdp

    async def expect(kind: str) -> str:
        msg = await signaling.receive()
        if not isinstance(msg, dict) or msg.get("type") != kind or not isinstance(msg.get("sdp"), str):
            got = msg.get("type") if isinstance(msg, dict) else type(msg).__name__
            raise WebRTCError(f"expected an SDP {kind} from the signaling peer, got {got!r}")
        if loopback_only:
            check_loopback(msg["sdp"], "the peer's")
        return msg["sdp"]

    try:
        with trio.move_on_after(timeout) as scope:
            pc, link = await loop_thread.call(make)
            if initiator:
                stage = "the local SDP offer"
                local = await loop_thread.call(describe, None)
                if loopback_only:
                    check_loopback(local, "our own")
                await signaling.send({"type": "offer", "sdp": local})
                stage = "the SDP answer from the signaling peer"
                remote = await expect("answer")
                stage = "the peer's SDP answer to be applied"
                await loop_thread.call(pc.setRemoteDescription, RTCSessionDescription(remote, "answer"))
            else:
                stage = "the SDP offer from the signaling peer"
                remote = await expect("offer")
                stage = "the local SDP answer"
                local = await loop_thread.call(describe, RTCSessionDescription(remote, "offer"))
                if loopback_only:
                    check_loopback(local, "our own")
                await signaling.send({"type": "answer", "sdp": local})
            stage = "the data channel to open"
            await inbox.opened.wait()
        if scope.cancelled_caught:
            state = ""
            if pc is not None:
                state = f" (ICE {pc.iceConnectionState}, connection {pc.connectionState})"
            raise WebRTCError(f"WebRTC: timed out after {timeout}s waiting for {stage}{state}")
        if inbox.error is not None or inbox.eof:
            raise WebRTCError(
                f"WebRTC: the connection {'failed' if inbox.error else 'closed'} before the data channel "
                f"opened{f': {inbox.error}' if inbox.error else ''}"
            )
    except BaseException:
        with trio.CancelScope(shield=True):
            try:
                if pc is not None:
                    await loop_thread.call(pc.close)
            finally:
                if shared:
                    await shared_thread.release(loop_thread)
        raise
    return WebRTCStream(
        thread=loop_thread,
        shared=shared,
        pc=pc,
        link=link,
        inbox=inbox,
        local_sdp=local,
        remote_sdp=remote,
        message_size=min(message_size, _max_message_size(remote)),
        close_timeout=close_timeout,
    )
