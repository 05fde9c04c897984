"""An encrypted, mutually authenticated trio stream: Noise XX over any ``trio.abc.Stream``.

:func:`secure_stream` runs the handshake (:mod:`._noise`) over a TCP stream, an
in-memory stream, a WebRTC data channel ... and returns a :class:`SecureStream`,
which is both a byte stream (``send_all``/``receive_some``, what the replication
session uses) and a message channel (``send_message``/``receive_message``).

Wire format::

    handshake   3 x ( u16 BE length | Noise handshake message )      (empty payloads)
    transport   records: u16 BE length | Noise transport message     (17..65535 bytes)

    plaintext of a record:
        0x01 | u32 BE total | first chunk     starts an application message of ``total`` bytes
        0x00 | chunk                          continues it (non-empty, never past ``total``)

A message bigger than one record is cut into one start record and continuation
records. ``total`` comes first, so the receiver rejects a message over its
``max_message`` (:class:`FrameTooLarge`) before buffering any of it. A start
record while a message is unfinished, a continuation outside one, an unknown
record type, or a record that fails authentication is a :class:`ProtocolError`
(:class:`HandshakeError` for failed decryption); EOF inside a record or a
message is :class:`ConnectionLost` (a ProtocolError too). A clean EOF (between
messages) is *not* authenticated: an attacker who can cut the connection can end
it early, never alter or reorder it; the replication protocol has its own
end-of-sync agreement.

``send_all(data)`` sends ``data`` as messages of at most one record each;
``receive_some`` returns the bytes of consecutive messages as one stream, so
either side can use either API, but message boundaries only survive
``send_message`` -> ``receive_message``. Sends are serialised by a lock (each
message goes out whole even from several tasks), and so are receives.
"""

from __future__ import annotations

import struct

import nacl.public
import trio

from ._noise import MAX_MESSAGE, MAX_PLAINTEXT, NoiseXX
from .errors import ConnectionLost, FrameTooLarge, HandshakeError, ProtocolError

_LEN = struct.Struct(">H")
_START = struct.Struct(">BI")
START, CONTINUE = 1, 0
START_BODY = MAX_PLAINTEXT - _START.size  # 65514: body bytes in a start record
CONTINUE_BODY = MAX_PLAINTEXT - 1  # 65518: body bytes in a continuation record
MAX_MESSAGE_LIMIT = 2**32 - 1  # what the u32 total can say
RECEIVE_SIZE = 256 * 1024
SEND_BATCH = 256 * 1024  # hand the inner stream this much at a time for big messages
_CONT_HEADER = bytes([CONTINUE])


class SecureStream(trio.abc.Stream):
    """A Noise-encrypted stream over ``inner``. Build it with :func:`secure_stream`.

    Attributes: ``handshake_hash`` (64 bytes, the same on both sides, unique to
    this connection), ``remote_public_key`` (the peer's static X25519 public
    key: its identity), ``public_key`` (ours), ``max_message``.
    """

    def __init__(
        self,
        inner: trio.abc.Stream,
        noise: NoiseXX,
        leftover: bytes = b"",
        *,
        max_message: int = 16 * 1024 * 1024,
    ):
        if not noise.complete:
            raise ValueError("the Noise handshake is not complete")
        self.inner = inner
        self.handshake_hash: bytes = noise.handshake_hash
        self.remote_public_key: bytes = noise.remote_static  # type: ignore[assignment]
        self.public_key: bytes = noise.public_key
        self.max_message = max_message
        self._send, self._recv = noise.split()
        self._send_lock = trio.Lock()
        self._recv_lock = trio.Lock()
        self._raw = bytearray(leftover)  # ciphertext received, not decrypted yet (from _rpos on)
        self._rpos = 0
        self._remaining = 0  # bytes of the current incoming message still to come
        self._pending = memoryview(b"")  # decrypted, not yet returned by receive_some
        self._parts: list[memoryview] = []  # a message receive_message is assembling
        self._eof = False
        self._closed = False
        self._send_broken = False
        self._broken: ProtocolError | None = None
        self._deferred: ProtocolError | None = None

    # --- sending -------------------------------------------------------------------

    def _seal(self, data: memoryview, out: bytearray, start: bool, total: int) -> None:
        """Append one record (``data`` fits in it) to ``out``."""
        header = _START.pack(START, total) if start else _CONT_HEADER
        record = self._send.encrypt_with_ad(b"", header + data)
        out += _LEN.pack(len(record))
        out += record

    def _encode_message(self, data: bytes | bytearray | memoryview) -> bytes:
        """The records of one message, as they go on the wire (advances the send nonce)."""
        out = bytearray()
        for batch in self._message_records(memoryview(data).cast("B")):
            out += batch
        return bytes(out)

    def _message_records(self, view: memoryview):
        """Yield batches (about SEND_BATCH bytes) of the records of one message."""
        total = len(view)
        if total > MAX_MESSAGE_LIMIT:
            raise FrameTooLarge(f"a message of {total} bytes; the wire format allows {MAX_MESSAGE_LIMIT}")
        out = bytearray()
        self._seal(view[:START_BODY], out, True, total)
        pos = START_BODY
        while pos < total:
            if len(out) >= SEND_BATCH:
                yield out
                out = bytearray()
            self._seal(view[pos : pos + CONTINUE_BODY], out, False, 0)
            pos += CONTINUE_BODY
        yield out

    async def send_message(self, data: bytes | bytearray | memoryview) -> None:
        """Send one application message (0 to ``max_message`` bytes), kept whole for receive_message."""
        view = memoryview(data).cast("B")
        if len(view) > self.max_message:
            raise FrameTooLarge(
                f"a message of {len(view)} bytes is over max_message={self.max_message}; "
                "split it, or raise max_message on both sides"
            )
        async with self._send_lock:
            self._check_send()
            try:
                for batch in self._message_records(view):
                    await self.inner.send_all(batch)
            except BaseException:
                self._send_broken = True  # part of a message may be out: nothing can follow it
                raise

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send bytes (as a stream: the peer's receive_some may return them in other pieces)."""
        view = memoryview(data).cast("B")
        async with self._send_lock:
            self._check_send()
            try:
                out = bytearray()
                for pos in range(0, len(view), START_BODY):
                    chunk = view[pos : pos + START_BODY]
                    self._seal(chunk, out, True, len(chunk))
                    if len(out) >= SEND_BATCH:
                        await self.inner.send_all(out)
                        out = bytearray()
                if out:
                    await self.inner.send_all(out)
            except BaseException:
                self._send_broken = True  # a record may be half out: nothing can follow it
                raise

    async def wait_send_all_might_not_block(self) -> None:
        self._check_send()
        await self.inner.wait_send_all_might_not_block()

    # --- receiving -----------------------------------------------------------------

    def _take_record(self) -> bytes | None:
        """The next record decrypted, if it is wholly buffered; else None."""
        raw, pos = self._raw, self._rpos
        if len(raw) - pos >= 2:
            (n,) = _LEN.unpack_from(raw, pos)
            end = pos + 2 + n
            if len(raw) >= end:
                with memoryview(raw) as view:
                    record = bytes(view[pos + 2 : end])
                if end == len(raw):
                    raw.clear()
                    end = 0
                self._rpos = end  # (records are taken by offset: no copying the rest down each time)
                return self._recv.decrypt_with_ad(b"", record)
        return None

    async def _next_record(self) -> bytes | None:
        """The next decrypted record; None at EOF on a record boundary."""
        while True:
            plaintext = self._take_record()
            if plaintext is not None:
                return plaintext
            if self._eof:
                if len(self._raw) > self._rpos:
                    raise ConnectionLost(
                        "the connection ended inside an encrypted record "
                        f"({len(self._raw) - self._rpos} bytes of it received)"
                    )
                return None
            data = await self.inner.receive_some(RECEIVE_SIZE)
            if data:
                del self._raw[: self._rpos]  # (at most part of one record is left)
                self._rpos = 0
                self._raw += data
            else:
                self._eof = True

    def _open_record(self, plaintext: bytes) -> memoryview:
        """Check a record's header against the message state; returns its body."""
        if not plaintext:
            raise ProtocolError("an empty record (no header)")
        kind = plaintext[0]
        view = memoryview(plaintext)
        if kind == START:
            if len(plaintext) < _START.size:
                raise ProtocolError("a start record too short to hold its message length")
            if self._remaining:
                raise ProtocolError(f"a new message began while {self._remaining} bytes of the last were due")
            _, total = _START.unpack_from(plaintext)
            if total > self.max_message:
                raise FrameTooLarge(
                    f"the peer announced a message of {total} bytes, over max_message={self.max_message}"
                )
            body = view[_START.size :]
            if len(body) > total:
                raise ProtocolError(f"a start record holds {len(body)} bytes of a {total}-byte message")
            self._remaining = total - len(body)
            return body
        if kind == CONTINUE:
            body = view[1:]
            if not self._remaining:
                raise ProtocolError("a continuation record outside any message")
            if not body or len(body) > self._remaining:
                raise ProtocolError(
                    f"a continuation record of {len(body)} bytes where {self._remaining} were due"
                )
            self._remaining -= len(body)
            return body
        raise ProtocolError(f"unknown record type {kind}")

    def _take_body(self) -> memoryview | None:
        """The checked body of the next record if it is wholly buffered; else None."""
        plaintext = self._take_record()
        return None if plaintext is None else self._open_record(plaintext)

    async def _receive_body(self) -> memoryview | None:
        """The body of the next record, checked; None at a clean EOF."""
        if self._broken is not None:
            if self._deferred is not None:  # found while receive_some was returning good bytes
                exc, self._deferred = self._deferred, None
                raise exc
            raise ProtocolError(f"the secure stream is broken: {self._broken}")
        try:
            plaintext = await self._next_record()
            if plaintext is None:
                if self._remaining:
                    raise ConnectionLost(
                        f"the connection ended with {self._remaining} bytes of a message due"
                    )
                return None
            return self._open_record(plaintext)
        except ProtocolError as exc:
            self._broken = exc
            raise

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Decrypted bytes (as many as are ready, up to ``max_bytes``); b"" at EOF."""
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        async with self._recv_lock:
            self._check_open()
            if self._parts:
                raise RuntimeError("receive_some in the middle of a message receive_message was assembling")
            while not self._pending:
                body = await self._receive_body()
                if body is None:
                    return b""
                self._pending = body
            # then whatever more is already here (no waiting), in one copy
            limit = RECEIVE_SIZE if max_bytes is None else max_bytes
            pieces = []
            got = 0
            while True:
                pending = self._pending
                n = min(limit - got, len(pending))
                pieces.append(pending[:n])
                self._pending = pending[n:]
                got += n
                if got >= limit or self._pending:
                    break
                try:
                    body = self._take_body()
                except ProtocolError as exc:
                    self._broken = self._deferred = exc  # raised by the next call
                    break
                if body is None:
                    break
                self._pending = body
            return bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)

    async def receive_message(self) -> bytes:
        """The next whole application message; raises trio.EndOfChannel at a clean EOF.

        Cancellation-safe: a cancelled call keeps what it had, the next call goes on.
        """
        async with self._recv_lock:
            self._check_open()
            if self._pending or (self._remaining and not self._parts):
                raise RuntimeError("receive_message in the middle of a message receive_some was reading")
            parts = self._parts
            while True:
                body = await self._receive_body()
                if body is None:
                    raise trio.EndOfChannel
                parts.append(body)
                if not self._remaining:
                    break
            self._parts = []
            return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    # --- closing -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the secure stream was closed")

    def _check_send(self) -> None:
        self._check_open()
        if self._send_broken:
            raise trio.BrokenResourceError("an earlier send failed or was cancelled part way")

    async def aclose(self) -> None:
        self._closed = True
        await self.inner.aclose()


async def _read_handshake_message(stream: trio.abc.Stream, buf: bytearray) -> bytes:
    while True:
        if len(buf) >= 2:
            (n,) = _LEN.unpack_from(buf)
            if len(buf) >= 2 + n:
                msg = bytes(buf[2 : 2 + n])
                del buf[: 2 + n]
                return msg
        data = await stream.receive_some(MAX_MESSAGE + 2)
        if not data:
            raise HandshakeError("the peer closed the connection during the handshake")
        buf += data


async def secure_stream(
    stream: trio.abc.Stream,
    *,
    initiator: bool,
    static_private: bytes | None = None,
    prologue: bytes = b"corelog/1",
    max_message: int = 16 * 1024 * 1024,
    handshake_timeout: float = 10.0,
) -> SecureStream:
    """Run the Noise XX handshake over ``stream``; returns the encrypted stream.

    ``static_private`` is this side's 32-byte X25519 identity (a fresh one if
    None). Both sides must use the same ``prologue``. ``max_message`` bounds the
    messages this side accepts (and sends); ``send_all`` sends pieces of up to
    65514 bytes, so a peer that uses it needs ``max_message`` >= 65514. Raises :class:`HandshakeError`, and
    closes ``stream``, on garbage, tampering, a peer speaking another prologue,
    a broken connection, or no complete handshake within ``handshake_timeout``
    seconds.
    """
    if not 0 < max_message <= MAX_MESSAGE_LIMIT:
        raise ValueError(f"max_message must be 1..{MAX_MESSAGE_LIMIT}")
    if static_private is None:
        static_private = bytes(nacl.public.PrivateKey.generate())
    noise = NoiseXX(initiator, static_private, prologue=prologue)
    buf = bytearray()

    async def write() -> None:
        m = noise.write_message()
        await stream.send_all(_LEN.pack(len(m)) + m)

    async def read() -> None:
        noise.read_message(await _read_handshake_message(stream, buf))

    try:
        with trio.fail_after(handshake_timeout):
            steps = (write, read, write) if initiator else (read, write, read)
            for step in steps:
                await step()
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise HandshakeError(f"the handshake did not finish within {handshake_timeout} s") from None
    except HandshakeError:
        await trio.aclose_forcefully(stream)
        raise
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        await trio.aclose_forcefully(stream)
        raise HandshakeError(f"the connection broke during the handshake: {exc!r}") from None
    return SecureStream(stream, noise, bytes(buf), max_message=max_message)
