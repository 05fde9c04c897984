"""``@hyperswarm/secret-stream`` as a sans-IO object: Noise XX (Ed25519), then libsodium secretstream.

Theory of operation
-------------------
Every frame on the byte stream is ``u24le(length) || payload``. The first three
frames are the Noise_XX_Ed25519_ChaChaPoly_BLAKE2b handshake messages (32, 96
and 64 bytes, empty payloads). When its handshake is complete each side sends one
56-byte *header frame*: its stream id (``stream_id(handshake_hash, own role)``)
and the 24-byte header of a ``crypto_secretstream_xchacha20poly1305`` push state
keyed with its transmit key. From then on every frame is one secretstream
message (TAG_MESSAGE; 17 bytes of overhead) holding one protomux frame. An empty
message is a keep-alive and is dropped. There is no authenticated end: EOF only
means the peer is gone.

:class:`SecretStream` never does I/O. Feed received bytes to
:meth:`receive_data`, which returns the decrypted messages; take the bytes to
write from :meth:`data_to_send`. Any violation raises :class:`StreamError` and
the object stays failed (errors stick), so the driver closes just this
connection. Incoming frames are capped (``max_frame``) before they are buffered,
so a peer announcing a huge frame cannot make us hold more than that.
"""

from __future__ import annotations

import nacl.bindings as sodium
import nacl.exceptions

from corelog.replication.errors import HandshakeError, ProtocolError

from .._noise import ED25519, NoiseXX
from ._caps import stream_id
from .errors import StreamError

MAX_FRAME = 2**24 - 1  # u24: the largest ciphertext one frame can carry
ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
HEADERBYTES = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES
MAX_MESSAGE = MAX_FRAME - ABYTES
_HEADER_FRAME = 32 + HEADERBYTES
_MAX_HANDSHAKE = 1024
_TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE

HANDSHAKE, HEADER, OPEN, FAILED = "handshake", "header", "open", "failed"


def u24(n: int) -> bytes:
    return n.to_bytes(3, "little")


class SecretStream:
    """One side of a secret stream. ``static_seed`` (32 bytes) fixes the Ed25519 identity."""

    def __init__(
        self,
        initiator: bool,
        static_seed: bytes | None = None,
        *,
        ephemeral_seed: bytes | None = None,
        max_frame: int = MAX_FRAME,
    ):
        self.initiator = bool(initiator)
        self.max_frame = min(max_frame, MAX_FRAME)
        self._noise: NoiseXX | None = NoiseXX(
            initiator,
            static_seed,  # type: ignore[arg-type]  # None: a fresh random identity
            ephemeral_private=ephemeral_seed,
            dh=ED25519,
        )
        self.public_key: bytes = self._noise.public_key
        self.remote_public_key: bytes | None = None
        self.handshake_hash: bytes | None = None
        self.state = HANDSHAKE
        self.error: StreamError | None = None
        self._buf = bytearray()
        self._out = bytearray()
        self._push: sodium.crypto_secretstream_xchacha20poly1305_state | None = None
        self._pull: sodium.crypto_secretstream_xchacha20poly1305_state | None = None
        self._rx_key: bytes = b""
        self.frames_received = 0
        if self.initiator:
            self._frame(self._noise.write_message())

    @classmethod
    def from_handshake(
        cls,
        initiator: bool,
        *,
        tx: bytes,
        rx: bytes,
        handshake_hash: bytes,
        public_key: bytes = b"",
        remote_public_key: bytes = b"",
        max_frame: int = MAX_FRAME,
    ) -> SecretStream:
        """A stream whose Noise handshake was done elsewhere (as hyperdht does): starts at the header."""
        self = cls.__new__(cls)
        self.initiator = bool(initiator)
        self.max_frame = min(max_frame, MAX_FRAME)
        self._noise = None
        self.public_key = public_key
        self.remote_public_key = remote_public_key
        self.handshake_hash = handshake_hash
        self.error = None
        self._buf = bytearray()
        self._out = bytearray()
        self._push = None
        self._pull = None
        self._rx_key = b""
        self.frames_received = 0
        self._start_transport(tx, rx)
        return self

    # --- output ----------------------------------------------------------------------

    def _frame(self, payload: bytes) -> None:
        self._out += u24(len(payload))
        self._out += payload

    def data_to_send(self) -> bytes:
        """Bytes to write to the socket (and forget)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def can_send(self) -> bool:
        """True once our header frame is out: messages may follow it straight away."""
        return self._push is not None and self.state != FAILED

    def send(self, message: bytes) -> None:
        """Encrypt one message (one protomux frame) into one frame."""
        if self.error is not None:
            raise self.error
        if self._push is None:
            raise ProtocolError("the secret-stream handshake is not complete yet: cannot send")
        if len(message) > MAX_MESSAGE:
            raise ProtocolError(
                f"a message of {len(message)} bytes does not fit one frame (max {MAX_MESSAGE})"
            )
        c = sodium.crypto_secretstream_xchacha20poly1305_push(self._push, bytes(message), None, _TAG_MESSAGE)
        self._out += u24(len(c))
        self._out += c

    def send_many(self, messages: list[bytes]) -> None:
        for m in messages:
            self.send(m)

    def keepalive(self) -> None:
        """An empty message (20 bytes on the wire): tells the peer we are alive."""
        self.send(b"")

    # --- input -----------------------------------------------------------------------

    def _fail(self, msg: str) -> StreamError:
        self.state = FAILED
        self.error = StreamError(msg)
        return self.error

    def receive_data(self, data: bytes) -> list[bytes]:
        """Feed bytes from the socket; returns the non-empty decrypted messages they complete."""
        if self.error is not None:
            raise self.error
        self._buf += data
        buf = self._buf
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        try:
            while n - pos >= 3:
                size = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
                limit = _MAX_HANDSHAKE if self.state != OPEN else self.max_frame
                if size > limit:
                    raise self._fail(f"the peer announced a frame of {size} bytes (at most {limit} here)")
                if n - pos - 3 < size:
                    break
                frame = bytes(buf[pos + 3 : pos + 3 + size])
                pos += 3 + size
                self.frames_received += 1
                if self.state == OPEN:
                    m = self._decrypt(frame)
                    if m:
                        out.append(m)
                elif self.state == HANDSHAKE:
                    self._on_handshake(frame)
                elif self.state == HEADER:
                    self._on_header(frame)
                else:
                    raise self.error or self._fail("stream failed")
        except HandshakeError as exc:
            raise self._fail(f"Noise handshake failed: {exc}") from None
        finally:
            del buf[:pos]
        return out

    def _decrypt(self, frame: bytes) -> bytes:
        if len(frame) < ABYTES:
            raise self._fail(f"an encrypted frame of {len(frame)} bytes (at least {ABYTES})")
        try:
            assert self._pull is not None
            m, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(self._pull, frame, None)
        except (nacl.exceptions.CryptoError, RuntimeError, ValueError):
            raise self._fail(
                "a frame failed to decrypt: the data was altered or is not from this peer"
            ) from None
        if tag != _TAG_MESSAGE:
            raise self._fail(f"unexpected secretstream tag {tag} (only messages are sent on this stream)")
        return m

    def _on_handshake(self, frame: bytes) -> None:
        noise = self._noise
        assert noise is not None
        noise.read_message(frame)
        if not noise.complete:
            self._frame(noise.write_message())
        if noise.complete:
            self.handshake_hash = noise.handshake_hash
            self.remote_public_key = noise.remote_static
            tx, rx = noise.split()
            self._start_transport(tx.k, rx.k)  # type: ignore[arg-type]

    def _start_transport(self, tx: bytes, rx: bytes) -> None:
        push = self._push = sodium.crypto_secretstream_xchacha20poly1305_state()
        header = sodium.crypto_secretstream_xchacha20poly1305_init_push(push, tx[:32])
        self._frame(stream_id(self.handshake_hash, self.initiator) + header)  # type: ignore[arg-type]
        self._rx_key = rx[:32]
        self.state = HEADER

    def _on_header(self, frame: bytes) -> None:
        if len(frame) != _HEADER_FRAME:
            raise self._fail(
                f"invalid header message received: {len(frame)} bytes instead of {_HEADER_FRAME}"
            )
        if frame[:32] != stream_id(self.handshake_hash, not self.initiator):  # type: ignore[arg-type]
            raise self._fail("invalid header received: the stream id does not match this handshake")
        pull = self._pull = sodium.crypto_secretstream_xchacha20poly1305_state()
        sodium.crypto_secretstream_xchacha20poly1305_init_pull(pull, frame[32:], self._rx_key)
        self.state = OPEN

    @property
    def buffered(self) -> int:
        """Bytes received of a frame not complete yet (EOF now would cut that frame)."""
        return len(self._buf)

    @property
    def is_open(self) -> bool:
        """True once both header frames are exchanged."""
        return self.state == OPEN
