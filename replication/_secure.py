"""An encrypted, mutually authenticated trio stream: Noise XX over any trio stream.

Wire format: each handshake message, and then each transport record, is a
2-byte big-endian length followed by that many bytes (Noise caps a message at
65535 bytes). ``send_all`` cuts data into records of at most 65519 plaintext
bytes; ``receive_some`` returns decrypted bytes. The replication protocol
frames its own messages on top, so this layer is a plain byte stream.
"""

from __future__ import annotations

import os
import struct

import trio

from corelog.errors import HandshakeError, ProtocolError

from ._noise import MAX_MESSAGE, TAGLEN, NoiseXX

_LEN = struct.Struct(">H")
MAX_PLAINTEXT = MAX_MESSAGE - TAGLEN


class SecureStream(trio.abc.Stream):
    """A Noise-encrypted stream. Build it with :func:`secure_stream`."""

    def __init__(self, inner: trio.abc.Stream, noise: NoiseXX, leftover: bytes):
        self.inner = inner
        self.handshake_hash: bytes = noise.handshake_hash
        self.remote_public_key: bytes = noise.remote_static  # type: ignore[assignment]
        self.public_key: bytes = noise.s[1]
        self._send, self._recv = noise.split()
        self._buf = bytearray(leftover)
        self._plain = bytearray()
        self._send_lock = trio.Lock()
        self._recv_lock = trio.Lock()
        self._eof = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._send_lock:
            view = memoryview(data)
            out = bytearray()
            encrypt = self._send.encrypt_with_ad
            for pos in range(0, len(view), MAX_PLAINTEXT):
                record = encrypt(b"", bytes(view[pos : pos + MAX_PLAINTEXT]))
                out += _LEN.pack(len(record))
                out += record
            if out:
                await self.inner.send_all(out)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        async with self._recv_lock:
            while not self._plain:
                if not self._decrypt_buffered():
                    if self._eof:
                        if self._buf:
                            raise ProtocolError("the connection ended in the middle of an encrypted record")
                        return b""
                    data = await self.inner.receive_some(256 * 1024)
                    if not data:
                        self._eof = True
                    self._buf += data
            n = len(self._plain) if max_bytes is None else min(max_bytes, len(self._plain))
            out = bytes(self._plain[:n])
            del self._plain[:n]
            return out

    def _decrypt_buffered(self) -> bool:
        """Decrypt every complete record in the buffer; True if any was."""
        buf = self._buf
        pos = 0
        got = False
        while len(buf) - pos >= 2:
            (n,) = _LEN.unpack_from(buf, pos)
            if len(buf) - pos - 2 < n:
                break
            record = bytes(buf[pos + 2 : pos + 2 + n])
            self._plain += self._recv.decrypt_with_ad(b"", record)
            pos += 2 + n
            got = True
        if pos:
            del buf[:pos]
        return got

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _read_handshake_message(stream: trio.abc.Stream, buf: bytearray) -> bytes:
    while True:
        if len(buf) >= 2:
            (n,) = _LEN.unpack_from(buf, 0)
            if len(buf) >= 2 + n:
                msg = bytes(buf[2 : 2 + n])
                del buf[: 2 + n]
                return msg
        data = await stream.receive_some(65536)
        if not data:
            raise HandshakeError("the peer closed the connection during the handshake")
        buf += data


async def secure_stream(
    stream: trio.abc.Stream,
    *,
    initiator: bool,
    static_private: bytes | None = None,
    prologue: bytes = b"corelog/1",
    handshake_timeout: float = 10.0,
) -> SecureStream:
    """Run the Noise XX handshake over ``stream``; returns the encrypted stream.

    Raises HandshakeError (and closes ``stream``) on garbage, tampering, a
    timeout, or a peer speaking another prologue.
    """
    noise = NoiseXX(initiator, static_private or os.urandom(32), prologue=prologue)
    buf = bytearray()
    try:
        with trio.fail_after(handshake_timeout):
            if initiator:
                m = noise.write_message()
                await stream.send_all(_LEN.pack(len(m)) + m)
                noise.read_message(await _read_handshake_message(stream, buf))
                m = noise.write_message()
                await stream.send_all(_LEN.pack(len(m)) + m)
            else:
                noise.read_message(await _read_handshake_message(stream, buf))
                m = noise.write_message()
                await stream.send_all(_LEN.pack(len(m)) + m)
                noise.read_message(await _read_handshake_message(stream, buf))
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise HandshakeError(f"the handshake did not finish within {handshake_timeout} s") from None
    except (HandshakeError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        await trio.aclose_forcefully(stream)
        if isinstance(exc, HandshakeError):
            raise
        raise HandshakeError(f"the connection broke during the handshake: {exc}") from None
    return SecureStream(stream, noise, bytes(buf))
