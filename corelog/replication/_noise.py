"""Noise XX with ChaChaPoly and BLAKE2b (Noise Protocol Framework, revision 34), sans-IO, on PyNaCl.

Two DH functions, chosen by the ``dh`` argument of :class:`NoiseXX`:
``X25519`` (``Noise_XX_25519_ChaChaPoly_BLAKE2b``, corelog's own protocol) and
``ED25519`` (``Noise_XX_Ed25519_ChaChaPoly_BLAKE2b``, what Hypercore's
``@hyperswarm/secret-stream`` speaks: Ed25519 sign key pairs as static and
ephemeral keys, DH = the clamped SHA-512 scalar of the seed times the peer's
Edwards point). Everything else (symmetric state, HKDF, cipher) is shared.

XX is the handshake pattern Hypercore uses::

    -> e
    <- e, ee, s, es
    -> s, se

Why XX:

* mutual authentication: each side proves it holds the private half of its
  static X25519 key (``es`` and ``se``), which is its identity on the network;
* identity hiding: static keys travel encrypted (the responder's under a key
  only the initiator's ephemeral can derive, the initiator's after it has seen
  the responder's), so a passive observer learns neither identity;
* no prior knowledge: neither side needs the other's key in advance;
* the *handshake hash* (``h`` once the handshake is complete) is a digest of the
  whole transcript, identical on both sides and unique to this connection. The
  replication layer binds its per-log capability proofs to it, so a proof lifted
  from one connection is worthless on any other.

Everything is bytes in, bytes out (no I/O): call :meth:`NoiseXX.write_message`
and :meth:`NoiseXX.read_message` in turn, then :meth:`NoiseXX.split` for the two
transport :class:`CipherState` objects. Primitives: X25519 and
ChaCha20-Poly1305 (IETF; nonce = 4 zero bytes + 8-byte little-endian counter)
from libsodium via PyNaCl, BLAKE2b-512 and HMAC-BLAKE2b from the standard
library. Rekey is not implemented (not needed by XX or by us). Checked byte for
byte against published vectors (cacophony, snow) and against the
``noiseprotocol`` package in ``tests/test_noise.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import nacl.bindings as sodium
import nacl.exceptions

from .errors import HandshakeError, ProtocolError

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"
HASHLEN = 64
BLOCKLEN = 128  # of BLAKE2b; what hmac uses for the HMAC padding
DHLEN = 32
KEYLEN = 32
TAGLEN = 16
MAX_MESSAGE = 65535  # any Noise message, handshake or transport
MAX_PLAINTEXT = MAX_MESSAGE - TAGLEN
_NONCE_LIMIT = 2**64 - 1  # reserved by the spec; reaching it is an error
_NONCE = struct.Struct("<4xQ")  # 32 zero bits, then the counter as 64-bit little-endian

assert hashlib.blake2b().block_size == BLOCKLEN and hashlib.blake2b().digest_size == HASHLEN


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def _hkdf(chaining_key: bytes, ikm: bytes, n: int) -> list[bytes]:
    """Noise's HKDF: ``n`` (2 or 3) outputs of HASHLEN bytes."""
    temp = _hmac(chaining_key, ikm)
    out = [_hmac(temp, b"\x01")]
    for i in range(2, n + 1):
        out.append(_hmac(temp, out[-1] + bytes([i])))
    return out


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        return sodium.crypto_scalarmult(private, public)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        # libsodium refuses low-order points (the shared secret would be all zeros)
        raise HandshakeError("the peer sent an invalid X25519 public key (a low-order point)") from None


def _ed25519_dh(private: bytes, public: bytes) -> bytes:
    scalar = bytearray(hashlib.sha512(private[:32]).digest()[:32])
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    try:
        return sodium.crypto_scalarmult_ed25519_noclamp(bytes(scalar), public)
    except (nacl.exceptions.CryptoError, RuntimeError, ValueError, TypeError):
        # libsodium refuses non-canonical, small-order and non-prime-order points and a zero result
        raise HandshakeError(
            "the peer sent an invalid Ed25519 public key (not a usable curve point)"
        ) from None


def _ed25519_keypair(private: bytes | None = None) -> tuple[bytes, bytes]:
    """An Ed25519 ``(secret key (64 bytes), public key)``; ``private`` is a 32-byte seed or the 64-byte key."""
    if private is None:
        private = sodium.randombytes(32)
    if not isinstance(private, bytes | bytearray) or len(private) not in (32, 64):
        raise ValueError("an Ed25519 private key is a 32-byte seed or a 64-byte secret key")
    public, secret = sodium.crypto_sign_seed_keypair(bytes(private[:32]))
    return secret, public


class DH:
    """A Noise DH function: its name in the protocol string, key pairs and the DH itself."""

    __slots__ = ("name", "keypair", "dh")

    def __init__(self, name: bytes, keypair, dh):
        self.name = name
        self.keypair = keypair
        self.dh = dh

    @property
    def protocol_name(self) -> bytes:
        return b"Noise_XX_" + self.name + b"_ChaChaPoly_BLAKE2b"


def keypair(private: bytes | None = None) -> tuple[bytes, bytes]:
    """An X25519 ``(private, public)`` pair; random unless ``private`` (32 bytes) is given."""
    if private is None:
        private = sodium.randombytes(32)
    if not isinstance(private, bytes | bytearray) or len(private) != 32:
        raise ValueError("an X25519 private key is 32 bytes")
    private = bytes(private)
    return private, sodium.crypto_scalarmult_base(private)


X25519 = DH(b"25519", keypair, _dh)
ED25519 = DH(b"Ed25519", _ed25519_keypair, _ed25519_dh)


class CipherState:
    """A ChaCha20-Poly1305 key ``k`` (None = not keyed yet) and its message counter ``n``.

    Without a key, encryption and decryption return their input unchanged (as
    the spec says). Each call uses the next nonce; a failed decryption leaves
    the counter where it was.
    """

    __slots__ = ("k", "n")

    def __init__(self, key: bytes | None = None):
        if key is not None and len(key) != KEYLEN:
            raise ValueError("a ChaCha20-Poly1305 key is 32 bytes")
        self.k = key
        self.n = 0

    def has_key(self) -> bool:
        return self.k is not None

    def _nonce(self) -> bytes:
        if self.n >= _NONCE_LIMIT:
            raise ProtocolError("nonce exhausted (2^64 - 1 messages): open a new connection")
        return _NONCE.pack(self.n)

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.k is None:
            return plaintext
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError(f"a Noise message holds at most {MAX_PLAINTEXT} bytes of plaintext")
        out = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, self._nonce(), self.k)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.k is None:
            return ciphertext
        if not TAGLEN <= len(ciphertext) <= MAX_MESSAGE:
            raise HandshakeError(
                f"an encrypted Noise message of {len(ciphertext)} bytes "
                f"(must be {TAGLEN}..{MAX_MESSAGE}): the data was altered or is not from this peer"
            )
        try:
            out = sodium.crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, ad, self._nonce(), self.k)
        except nacl.exceptions.CryptoError:
            raise HandshakeError("decryption failed: the data was altered or is not from this peer") from None
        self.n += 1
        return out


class SymmetricState:
    """The chaining key, the running hash ``h`` and the handshake's CipherState."""

    __slots__ = ("ck", "h", "cipher")

    def __init__(self, protocol_name: bytes = PROTOCOL_NAME):
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\0")
        else:
            self.h = _hash(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf(self.ck, ikm, 2)
        self.cipher = CipherState(temp_k[:KEYLEN])

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        c = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(c)
        return c

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        p = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return p

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = _hkdf(self.ck, b"", 2)
        return CipherState(k1[:KEYLEN]), CipherState(k2[:KEYLEN])


# bytes a handshake message adds around its payload, per message number
_OVERHEAD = (DHLEN, DHLEN + DHLEN + TAGLEN + TAGLEN, DHLEN + TAGLEN + TAGLEN)


class NoiseXX:
    """One side of a Noise XX handshake (``Noise_XX_25519_...`` by default, or ``dh=ED25519``).

    Initiator: ``write_message``, ``read_message``, ``write_message``.
    Responder: ``read_message``, ``write_message``, ``read_message``.
    Then ``complete`` is true, ``handshake_hash`` and ``remote_static`` are set,
    and ``split()`` gives this side's ``(send, receive)`` cipher states.

    ``ephemeral_private`` fixes the ephemeral key: for test vectors only, never
    in real use. Any failure (tampering, garbage, a wrong key, a call out of
    turn) raises :class:`HandshakeError` and leaves the object unusable.
    """

    def __init__(
        self,
        initiator: bool,
        static_private: bytes,
        *,
        prologue: bytes = b"",
        ephemeral_private: bytes | None = None,
        dh: DH = X25519,
    ):
        self.initiator = bool(initiator)
        self._dhf = dh
        self._s = dh.keypair(static_private)
        self._e_fixed = ephemeral_private
        self._e: tuple[bytes, bytes] | None = None
        self._re: bytes | None = None
        self.remote_static: bytes | None = None
        self._ss = SymmetricState(dh.protocol_name)
        self._ss.mix_hash(bytes(prologue))
        self._step = 0  # handshake messages done (3 = complete)
        self._failed: str | None = None

    @property
    def public_key(self) -> bytes:
        """This side's static public key (X25519 or Ed25519, per ``dh``)."""
        return self._s[1]

    @property
    def complete(self) -> bool:
        return self._step == 3

    @property
    def handshake_hash(self) -> bytes:
        """The 64-byte transcript hash, identical on both sides once complete."""
        if not self.complete:
            raise HandshakeError("the handshake is not complete yet")
        return self._ss.h

    def _check_turn(self, writing: bool) -> None:
        if self._failed is not None:
            raise HandshakeError(f"the handshake already failed ({self._failed}); start a new one")
        if self.complete:
            raise HandshakeError("the handshake is already complete")
        my_turn = (self._step % 2 == 0) == self.initiator
        if my_turn != writing:
            raise HandshakeError(f"not our turn to {'write' if writing else 'read'} a handshake message")

    def write_message(self, payload: bytes = b"") -> bytes:
        self._check_turn(writing=True)
        if _OVERHEAD[self._step] + len(payload) > MAX_MESSAGE:
            raise ValueError(f"handshake payload too large: a Noise message is at most {MAX_MESSAGE} bytes")
        try:
            return self._write(bytes(payload))
        except HandshakeError as exc:
            self._failed = str(exc)
            raise

    def _write(self, payload: bytes) -> bytes:
        _dh = self._dhf.dh
        ss = self._ss
        out = bytearray()
        if self._step == 0:  # -> e
            out += self._write_e()
        elif self._step == 1:  # <- e, ee, s, es
            out += self._write_e()
            assert self._e is not None  # _write_e made it
            ss.mix_key(_dh(self._e[0], self._re))  # ee
            out += ss.encrypt_and_hash(self._s[1])  # s
            ss.mix_key(_dh(self._s[0], self._re))  # es (responder side)
        else:  # -> s, se
            out += ss.encrypt_and_hash(self._s[1])  # s
            ss.mix_key(_dh(self._s[0], self._re))  # se (initiator side)
        out += ss.encrypt_and_hash(payload)
        self._step += 1
        return bytes(out)

    def _write_e(self) -> bytes:
        self._e = self._dhf.keypair(self._e_fixed)
        self._ss.mix_hash(self._e[1])
        return self._e[1]

    def read_message(self, message: bytes) -> bytes:
        """Process the peer's next handshake message; returns its payload."""
        self._check_turn(writing=False)
        try:
            return self._read(bytes(message))
        except HandshakeError as exc:
            self._failed = str(exc)
            raise

    def _read(self, message: bytes) -> bytes:
        _dh = self._dhf.dh
        n = len(message)
        if n > MAX_MESSAGE:
            raise HandshakeError(f"handshake message of {n} bytes (at most {MAX_MESSAGE})")
        need = _OVERHEAD[self._step]
        if n < need:
            raise HandshakeError(
                f"truncated handshake message {self._step + 1}: {n} bytes, at least {need} expected"
            )
        ss = self._ss
        rs = None
        if self._step == 0:  # -> e
            self._re = message[:DHLEN]
            ss.mix_hash(self._re)
            pos = DHLEN
        elif self._step == 1:  # <- e, ee, s, es
            self._re = message[:DHLEN]
            ss.mix_hash(self._re)
            ss.mix_key(_dh(self._e[0], self._re))  # type: ignore[index]  # ee
            rs = ss.decrypt_and_hash(message[DHLEN : 2 * DHLEN + TAGLEN])  # s
            ss.mix_key(_dh(self._e[0], rs))  # type: ignore[index]  # es (initiator side)
            pos = 2 * DHLEN + TAGLEN
        else:  # -> s, se
            rs = ss.decrypt_and_hash(message[: DHLEN + TAGLEN])  # s
            ss.mix_key(_dh(self._e[0], rs))  # type: ignore[index]  # se (responder side)
            pos = DHLEN + TAGLEN
        payload = ss.decrypt_and_hash(message[pos:])
        if rs is not None:  # only now is the key proven (the payload's tag covers the DH with it)
            self.remote_static = rs
        self._step += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """This side's ``(send, receive)`` cipher states for transport messages."""
        if not self.complete:
            raise HandshakeError("the handshake is not complete yet")
        c1, c2 = self._ss.split()  # c1: initiator -> responder
        return (c1, c2) if self.initiator else (c2, c1)
