"""A WebRTC data channel as a trio byte stream; aiortc runs in its own asyncio thread.

aiortc is asyncio-based; corelog runs on trio. An :class:`AsyncioThread` owns one
asyncio event loop in a daemon thread. Trio calls into it with
:meth:`AsyncioThread.call`, which schedules the work with
``loop.call_soon_threadsafe`` and is woken back through
``TrioToken.run_sync_soon`` (no worker thread per call); cancelling the trio side
cancels the asyncio task and waits for it to finish. Incoming messages reach the
trio side the same way. By default every stream shares one thread, started on
the first :func:`connect_webrtc` and stopped when the last stream is closed.

Loopback only (``loopback_only=True``, the default, and what the tests use):

* ``RTCConfiguration(iceServers=[])``: no STUN or TURN server is ever contacted,
  so there are no server-reflexive or relay candidates;
* aioice enumerates host addresses with ``aioice.ice.get_host_addresses`` (and
  has no option to choose them); it is wrapped once so that, inside a
  ``connect_webrtc(loopback_only=True)`` call only (a context variable), it
  returns exactly ``["127.0.0.1"]``. Elsewhere it behaves as before;
* the peer's SDP is checked *before* it is applied: every ``a=candidate`` must
  be ``127.0.0.1 ... typ host``, anything else (another address, an mDNS
  ``.local`` name, srflx/relay) is refused with :class:`WebRTCError`, so aioice
  never sends a packet (nor an mDNS query) anywhere else. Our own SDP is checked
  the same way. aioice does not obfuscate local candidates with mDNS names.

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

``aclose()`` is graceful: the channel is closed with an SCTP stream reset that is
ordered after the data already sent, so the peer reads everything and then
``b""``; after ``close_timeout`` (or when cancelled) the peer connection is
closed at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import re
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import outcome
import trio

from ._signaling import Signaling
from .errors import ProtocolError

LOOPBACK = "127.0.0.1"
DEFAULT_MESSAGE_SIZE = 16 * 1024
DEFAULT_RECEIVE_WINDOW = 1 << 20
DEFAULT_HIGH_WATER = 256 * 1024
# What aiortc assumes when the peer's SDP has no a=max-message-size; aiortc peers advertise 256 KiB.
_DEFAULT_REMOTE_MAX_MESSAGE = 65536
_MAX_GRANT = 1 << 31


class WebRTCError(ProtocolError):
    """A WebRTC data channel could not be set up: timeout, refused candidates, bad signaling."""


# --- the asyncio thread ---------------------------------------------------------------


class AsyncioThread:
    """One asyncio event loop in a daemon thread, driven from trio.

    Started lazily (by :meth:`start` or the first :meth:`call`), stopped by
    :meth:`aclose` (from trio) or :meth:`close` (blocking); also an async and a
    plain context manager. Stopping cancels the tasks still running in it.
    """

    def __init__(self, name: str = "corelog-asyncio"):
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._on_exit: Callable[[], None] | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (starting the thread if needed)."""
        return self.start()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            return self._start_locked()

    def _start_locked(self) -> asyncio.AbstractEventLoop:
        if self._closing:
            raise trio.ClosedResourceError(f"the asyncio thread {self.name!r} is closed")
        if self._loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            thread = threading.Thread(target=self._run, args=(loop, ready), name=self.name, daemon=True)
            thread.start()
            ready.wait()
            self._loop, self._thread = loop, thread
        return self._loop

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
            loop.run_until_complete(_drain(loop))
        finally:
            loop.close()
            on_exit = self._on_exit
            if on_exit is not None:
                on_exit()

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the asyncio thread, without waiting (dropped if the thread is closed)."""
        with self._lock:
            if self._loop is None or self._closing:
                return
            try:
                self._loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop is closed
                pass

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in the asyncio thread and return its result to trio.

        ``fn`` is a coroutine function (run as an asyncio task) or a plain
        function (run as a callback). Trio is not blocked while waiting. If the
        calling trio task is cancelled, the asyncio task is cancelled and waited
        for before ``trio.Cancelled`` propagates.
        """
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[outcome.Outcome] = []
        tasks: list[asyncio.Future] = []

        def deliver(result: outcome.Outcome) -> None:  # trio thread
            box.append(result)
            done.set()

        def post(result: outcome.Outcome) -> None:  # asyncio thread
            try:
                token.run_sync_soon(deliver, result)
            except trio.RunFinishedError:
                pass

        def finished(task: asyncio.Future) -> None:  # asyncio thread
            if task.cancelled():
                post(
                    outcome.Error(
                        trio.ClosedResourceError(f"the asyncio task in {self.name!r} was cancelled")
                    )
                )
            else:
                post(outcome.capture(task.result))

        def start() -> None:  # asyncio thread
            try:
                result = fn(*args)
            except BaseException as exc:
                post(outcome.Error(exc))
                return
            if not inspect.isawaitable(result):
                post(outcome.Value(result))
                return
            task = asyncio.ensure_future(result)
            tasks.append(task)
            task.add_done_callback(finished)

        def cancel() -> None:  # asyncio thread, always after start() (FIFO)
            for task in tasks:
                task.cancel()

        with self._lock:
            loop = self._start_locked()
            loop.call_soon_threadsafe(start)
        try:
            await done.wait()
        except BaseException:
            try:
                loop.call_soon_threadsafe(cancel)
            except RuntimeError:  # the loop is already closed; the task was cancelled by the shutdown
                pass
            with trio.CancelScope(shield=True):
                await done.wait()
            raise
        return box[0].unwrap()

    async def aclose(self) -> None:
        """Stop the loop (cancelling what still runs in it) and wait for the thread to exit."""
        with self._lock:
            if self._closing:
                thread = None
            else:
                self._closing = True
                thread, loop = self._thread, self._loop
        if thread is None:
            await trio.lowlevel.checkpoint()
            return
        token = trio.lowlevel.current_trio_token()
        exited = trio.Event()

        def on_exit() -> None:
            try:
                token.run_sync_soon(exited.set)
            except trio.RunFinishedError:
                pass

        self._on_exit = on_exit
        assert loop is not None
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:
            exited.set()
        if not thread.is_alive():
            exited.set()
        with trio.CancelScope(shield=True):
            await exited.wait()
        thread.join()

    def close(self, timeout: float | None = 10.0) -> None:
        """Blocking version of :meth:`aclose`, for use outside trio."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:
            pass
        thread.join(timeout)

    async def __aenter__(self) -> AsyncioThread:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> AsyncioThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _drain(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel and await what is left in the loop (tasks may spawn more while cancelled)."""
    for _ in range(5):
        tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
        if not tasks:
            break
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()


class _SharedThread:
    """The AsyncioThread streams share by default: started on first use, stopped with the last stream."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: AsyncioThread | None = None
        self._refs = 0

    def acquire(self) -> AsyncioThread:
        with self._lock:
            if self._thread is None:
                self._thread = AsyncioThread("corelog-asyncio")
            self._refs += 1
            return self._thread

    async def release(self, thread: AsyncioThread) -> None:
        with self._lock:
            last = self._thread is thread and self._refs == 1
            if self._thread is thread:
                self._refs -= 1
            if last:
                self._thread = None
        if last:
            await thread.aclose()


_shared = _SharedThread()


# --- loopback-only ICE ------------------------------------------------------------------

_loopback_only: contextvars.ContextVar[bool] = contextvars.ContextVar("corelog_loopback_only", default=False)
_filter_lock = threading.Lock()


def _install_host_address_filter() -> None:
    """Wrap ``aioice.ice.get_host_addresses`` once: exactly 127.0.0.1 while ``_loopback_only`` is set."""
    import aioice.ice

    with _filter_lock:
        original = aioice.ice.get_host_addresses
        if getattr(original, "_corelog_loopback_filter", False):
            return

        def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            if _loopback_only.get():
                return [LOOPBACK] if use_ipv4 else []
            return original(use_ipv4, use_ipv6)

        get_host_addresses._corelog_loopback_filter = True  # type: ignore[attr-defined]
        get_host_addresses.__wrapped__ = original  # type: ignore[attr-defined]
        aioice.ice.get_host_addresses = get_host_addresses


_CANDIDATE = re.compile(r"^a=candidate:(\S+) (\d+) (\S+) (\d+) (\S+) (\d+) typ (\S+)", re.M)


def sdp_candidates(sdp: str) -> list[tuple[str, str, str]]:
    """``(transport, address, type)`` of every ``a=candidate`` line in an SDP."""
    return [(m.group(3).lower(), m.group(5), m.group(7)) for m in _CANDIDATE.finditer(sdp)]


def candidate_addresses(sdp: str) -> list[str]:
    """The connection addresses of every ``a=candidate`` line in an SDP."""
    return [address for _, address, _ in sdp_candidates(sdp)]


def _check_loopback(sdp: str, whose: str) -> None:
    candidates = sdp_candidates(sdp)
    if not candidates:
        raise WebRTCError(f"{whose} SDP has no ICE candidate (loopback_only=True expects 127.0.0.1)")
    lines = len(re.findall(r"^a=candidate:", sdp, re.M))
    if lines != len(candidates):
        raise WebRTCError(f"{whose} SDP has an a=candidate line that cannot be parsed; refusing")
    for transport, address, kind in candidates:
        if (transport, address, kind) != ("udp", LOOPBACK, "host"):
            raise WebRTCError(
                f"{whose} SDP offers the ICE candidate {transport} {address} typ {kind}; with "
                f"loopback_only=True only udp {LOOPBACK} typ host is accepted"
            )


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


# --- the two halves of a stream -------------------------------------------------------------


class _Inbox:
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


class _Link:
    """Asyncio-side state of one data channel: credit, flow control, handlers. Asyncio thread only."""

    def __init__(self, inbox: _Inbox, *, window: int, high_water: int):
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
            if not (data.isascii() and data.isdigit()) or not 0 < int(data) <= _MAX_GRANT:
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


# --- the trio stream -------------------------------------------------------------------------


class WebRTCStream(trio.abc.Stream):
    """An ordered, reliable RTCDataChannel as a trio byte stream (see the module docstring).

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
        link: _Link,
        inbox: _Inbox,
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
                        await _shared.release(self._thread)


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
    if receive_window < 1024 or receive_window > _MAX_GRANT:
        raise ValueError(f"receive_window must be between 1024 and {_MAX_GRANT}")
    if high_water < 0:
        raise ValueError("high_water must be >= 0")
    _require_aiortc()
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    if loopback_only:
        _install_host_address_filter()
    shared = thread is None
    loop_thread = _shared.acquire() if thread is None else thread
    inbox = _Inbox(trio.lowlevel.current_trio_token())
    pc: Any = None
    stage = "the peer connection to start"

    def make() -> tuple[Any, _Link]:  # asyncio thread
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        link = _Link(inbox, window=receive_window, high_water=high_water)
        pc.on("connectionstatechange", lambda: link.connection_state(pc.connectionState))
        if initiator:
            link.attach(pc.createDataChannel(label, ordered=True))
        else:
            pc.on("datachannel", link.attach)
        return pc, link

    async def describe(remote: RTCSessionDescription | None) -> str:  # asyncio thread
        _loopback_only.set(loopback_only)  # this task's context only: aioice gathers 127.0.0.1
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
            _check_loopback(msg["sdp"], "the peer's")
        return msg["sdp"]

    try:
        with trio.move_on_after(timeout) as scope:
            pc, link = await loop_thread.call(make)
            if initiator:
                stage = "the local SDP offer"
                local = await loop_thread.call(describe, None)
                if loopback_only:
                    _check_loopback(local, "our own")
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
                    _check_loopback(local, "our own")
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
                    await _shared.release(loop_thread)
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
