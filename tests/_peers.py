"""Helpers for replication tests: scriptable hostile peers (ours, Hypercore), RSS sampling, a server in a
thread, connection-cap checks."""

from __future__ import annotations

import functools
import queue
import threading
import time
from contextlib import contextmanager

import trio

from corelog.replication._connection import Connection
from corelog.replication._messages import FrameDecoder, Message, decode, encode
from corelog.replication._secure import secure_stream
from corelog.replication.hypercore import _messages as m
from corelog.replication.hypercore._caps import capability
from corelog.replication.hypercore._encoding import Writer
from corelog.replication.hypercore._secretstream import SecretStream


def rss() -> int:
    """Resident set size of this process in bytes (from /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class RssPeak:
    """Samples RSS every few milliseconds while running in a nursery; ``growth`` over the start."""

    def __init__(self) -> None:
        self.base = rss()
        self.peak = self.base

    @property
    def growth(self) -> int:
        return self.peak - self.base

    async def run(self) -> None:
        while True:
            self.peak = max(self.peak, rss())
            await trio.sleep(0.005)


class Evil:
    """A peer that completes the Noise handshake honestly, then sends whatever a test scripts.

    Every frame it receives is decrypted, decoded and kept in ``received``.
    """

    def __init__(self, raw: trio.abc.Stream, *, initiator: bool):
        self.raw = raw
        self.initiator = initiator
        self.received: list[Message] = []
        self.raw_received = bytearray()
        self.eof = False  # the peer ended the connection (EOF or a broken stream)
        self._decoder = FrameDecoder(1 << 30)

    async def handshake(self) -> None:
        self.stream = await secure_stream(self.raw, initiator=self.initiator)
        self.conn = Connection(self.stream.handshake_hash, initiator=self.initiator)

    def capability(self, key: bytes) -> bytes:
        return self.conn.local_capability(key)

    async def send(self, *items: Message | bytes) -> None:
        await self.stream.send_all(b"".join(i if isinstance(i, bytes) else encode(i) for i in items))

    async def receive(self, until=None, timeout: float = 5.0) -> list[Message]:
        """Receive frames until ``until(msg)`` is true, EOF, or the timeout; returns the new ones."""
        new: list[Message] = []

        def take() -> bool:
            while (body := self._decoder.next_frame()) is not None:
                msg = decode(body, max_array_len=1 << 20)
                new.append(msg)
                self.received.append(msg)
                if until is not None and until(msg):
                    return True
            return False

        if take():
            return new
        with trio.move_on_after(timeout):
            while True:
                try:
                    data = await self.stream.receive_some(1 << 20)
                except Exception:
                    self.eof = True
                    return new
                if not data:
                    self.eof = True
                    return new
                self.raw_received += data
                self._decoder.feed(data)
                if take():
                    return new
        return new

    async def requests(self, timeout: float = 5.0) -> list:
        """The next Request frames (at least one, unless EOF or timeout)."""
        from corelog.replication._messages import Request

        got = await self.receive(lambda m: isinstance(m, Request), timeout)
        return [m for m in got if isinstance(m, Request)]

    async def drain(self) -> None:
        """Read (and keep) everything until EOF."""
        await self.receive(timeout=30)


async def take_every_slot(port: int, slots: int, *, refused_within: float = 1.0) -> list[trio.SocketStream]:
    """Open ``slots`` silent TCP connections to a server capped at ``slots`` (in total, or for
    127.0.0.1), then check one more is closed at once, without a byte; returns the silent ones."""
    held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(slots)]
    await trio.sleep(0.1)  # the server has accepted (and counted) them
    extra = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(refused_within):
        assert await extra.receive_some(100) == b""  # refused: closed at once, nothing said
    await extra.aclose()
    return held


class Attacker:
    """A raw Hypercore connection (our sans-IO SecretStream): handshake done, then any frames we like."""

    def __init__(self, sock: trio.SocketStream):
        self.sock = sock
        self.ss = SecretStream(True)
        self.received: list[bytes] = []

    @classmethod
    async def connect(cls, port: int) -> Attacker:
        a = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await a.sock.send_all(a.ss.data_to_send())
        with trio.fail_after(5):
            while not a.ss.is_open:
                data = await a.sock.receive_some(65536)
                assert data, "the server closed during the handshake"
                a.received += a.ss.receive_data(data)
                await a.sock.send_all(a.ss.data_to_send())
        return a

    async def send(self, *frames: bytes) -> None:
        for f in frames:
            self.ss.send(f)
        await self.sock.send_all(self.ss.data_to_send())

    async def open_channel(self, log) -> None:
        cap = capability(self.ss.handshake_hash, log.key, True)
        hs = m.encode_handshake(m.Handshake(cap))
        await self.send(
            Writer().uint(0).uint(1).uint(1).string(m.PROTOCOL).buffer(log.discovery_key).raw(hs).bytes()
        )

    async def closed_by_server(self, timeout: float = 5.0) -> bool:
        with trio.move_on_after(timeout):
            try:
                while True:
                    data = await self.sock.receive_some(65536)
                    if not data:
                        return True
                    self.received += self.ss.receive_data(data)
            except trio.BrokenResourceError:
                return True
        return False


@contextmanager
def server_thread(source, serve=None, **kw):
    """``serve(source, **kw)`` (``serve_tcp`` by default, or e.g. ``serve_hypercore``) in its own
    thread and trio run; yields the port."""
    from corelog.replication import serve_tcp

    serve = serve or serve_tcp
    ports: queue.Queue = queue.Queue()
    handle: list = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            handle.append((trio.lowlevel.current_trio_token(), nursery.cancel_scope))
            port = await nursery.start(functools.partial(serve, source, **kw))
            ports.put(port)

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    port = ports.get(timeout=10)
    try:
        yield port
    finally:
        token, scope = handle[0]
        token.run_sync_soon(scope.cancel)
        thread.join(10)


@contextmanager
def handler_thread(handler):
    """``trio.serve_tcp(handler)`` on 127.0.0.1 in its own thread and trio run; yields the port."""
    ports: queue.Queue = queue.Queue()
    handle: list = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            handle.append((trio.lowlevel.current_trio_token(), nursery.cancel_scope))
            listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            ports.put(listeners[0].socket.getsockname()[1])

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    port = ports.get(timeout=10)
    try:
        yield port
    finally:
        token, scope = handle[0]
        token.run_sync_soon(scope.cancel)
        thread.join(10)


def rst_relay(inner_port: int, after: int = 300_000, *, eof_mid_u24_frame: bool = False):
    """A ``handler_thread`` handler that relays a client to ``inner_port`` and, once ``after`` bytes
    went to the client, resets both TCP connections (SO_LINGER 0: an RST, not a FIN).

    With ``eof_mid_u24_frame`` (for Hypercore's secret stream: frames with a u24 little-endian
    length prefix) it instead ends what went to the client inside a frame and sends a clean EOF
    (a FIN), then reads the client until it hangs up (at most 10 s)."""
    import socket
    import struct

    async def relay(stream: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", inner_port)
        sent = bytearray()  # what went to the client (eof_mid_u24_frame only)
        total = 0
        async with trio.open_nursery() as nursery:

            async def pump_up() -> None:
                while data := await stream.receive_some(65536):
                    await upstream.send_all(data)

            nursery.start_soon(pump_up)
            while data := await upstream.receive_some(65536):
                if eof_mid_u24_frame and total + len(data) > after and _u24_boundary(sent + data):
                    data = data[:-1]  # the last frame's last byte never arrives
                await stream.send_all(data)
                total += len(data)
                if eof_mid_u24_frame:
                    sent += data
                if total > after:
                    break
            nursery.cancel_scope.cancel()
        if eof_mid_u24_frame:
            assert not _u24_boundary(sent)
            await stream.send_eof()
            with trio.move_on_after(10):
                while await stream.receive_some(65536):
                    pass
            await stream.aclose()
            await upstream.aclose()
            return
        for s in (stream, upstream):
            s.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.socket.close()  # with linger 0 the kernel sends an RST

    return relay


def _u24_boundary(data: bytes | bytearray) -> bool:
    """Whether ``data`` ends exactly between two u24-length-prefixed frames."""
    pos = 0
    while pos + 3 <= len(data):
        pos += 3 + int.from_bytes(data[pos : pos + 3], "little")
    return pos == len(data)


def assert_one_clear_reset_line(errors: list, caplog) -> None:
    """A server's handler recorded exactly one ConnectionLost (waited for up to 10 s) and logged one
    clear line for it: the root cause (a reset), no ExceptionGroup text, no line breaks."""
    from corelog.replication.errors import ConnectionLost

    deadline = time.monotonic() + 10
    while not errors and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(errors) == 1 and isinstance(errors[0], ConnectionLost), errors
    lines = [r.getMessage() for r in caplog.records if "closed a connection from" in r.getMessage()]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("closed a connection from 127.0.0.1: ConnectionLost: the connection was lost")
    assert "ECONNRESET" in line or "EPIPE" in line, line
    assert "ExceptionGroup" not in line and "sub-exception" not in line and "\n" not in line
