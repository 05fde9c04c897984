"""Noise_XX_25519_ChaChaPoly_BLAKE2b (Noise spec revision 34), sans-IO, on PyNaCl.

XX is the pattern Hypercore uses::

    -> e
    <- e, ee, s, es
    -> s, se

Both sides end up authenticated by their static X25519 keys (their identities),
the static keys travel encrypted (identity hiding against passive observers),
and both hold the same *handshake hash*, a transcript digest the replication
layer binds its per-log capability proofs to, so a capability is worthless on
any other connection. Primitives: X25519 and ChaCha20-Poly1305 (IETF) from
libsodium via PyNaCl, BLAKE2b-512 from hashlib. Checked against the cacophony
test vectors in ``tests/test_noise.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import nacl.bindings as sodium
import nacl.exceptions

from corelog.errors import HandshakeError

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"
HASHLEN = 64
DHLEN = 32
TAGLEN = 16
MAX_MESSAGE = 65535
_NONCE = struct.Struct("<4xQ")  # 32 zero bits then a 64-bit little-endian counter


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def _hkdf(chaining_key: bytes, ikm: bytes, n: int) -> list[bytes]:
    temp = _hmac(chaining_key, ikm)
    out = [_hmac(temp, b"\x01")]
    for i in range(2, n + 1):
        out.append(_hmac(temp, out[-1] + bytes([i])))
    return out


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        return sodium.crypto_scalarmult(private, public)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.CryptoError, ValueError):
        raise HandshakeError("the peer sent an invalid X25519 public key") from None


def keypair(private: bytes | None = None) -> tuple[bytes, bytes]:
    """(private, public) X25519 key pair; random unless ``private`` is given."""
    if private is None:
        private = sodium.randombytes(32)
    if len(private) != 32:
        raise ValueError("an X25519 private key is 32 bytes")
    return private, sodium.crypto_scalarmult_base(private)


class CipherState:
    """A ChaCha20-Poly1305 key with its message counter."""

    __slots__ = ("k", "n")

    def __init__(self, key: bytes | None = None):
        self.k = key
        self.n = 0

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.k is None:
            return plaintext
        if self.n >= 2**64 - 1:
            raise HandshakeError("nonce exhausted: open a new connection")
        out = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, _NONCE.pack(self.n), self.k)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.k is None:
            return ciphertext
        if self.n >= 2**64 - 1:
            raise HandshakeError("nonce exhausted: open a new connection")
        try:
            out = sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
                ciphertext, ad, _NONCE.pack(self.n), self.k
            )
        except nacl.exceptions.CryptoError:
            raise HandshakeError("decryption failed: the data was altered or is not from this peer") from None
        self.n += 1
        return out


class _SymmetricState:
    def __init__(self) -> None:
        name = PROTOCOL_NAME
        self.h = name.ljust(HASHLEN, b"\0") if len(name) <= HASHLEN else _hash(name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp = _hkdf(self.ck, ikm, 2)
        self.cipher = CipherState(temp[:32])

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
        return CipherState(k1[:32]), CipherState(k2[:32])


class NoiseXX:
    """One side of an XX handshake. Call ``write_message``/``read_message`` in turn.

    Initiator: write, read, write. Responder: read, write, read. Then ``split()``.
    """

    def __init__(
        self,
        initiator: bool,
        static_private: bytes,
        *,
        prologue: bytes = b"",
        ephemeral_private: bytes | None = None,
    ):
        self.initiator = initiator
        self.s = keypair(static_private)
        self._e_fixed = ephemeral_private
        self.e: tuple[bytes, bytes] | None = None
        self.re: bytes | None = None
        self.remote_static: bytes | None = None
        self._ss = _SymmetricState()
        self._ss.mix_hash(prologue)
        self._step = 0  # messages done
        self._result: tuple[CipherState, CipherState] | None = None

    @property
    def complete(self) -> bool:
        return self._step == 3

    @property
    def handshake_hash(self) -> bytes:
        if not self.complete:
            raise HandshakeError("the handshake is not complete yet")
        return self._ss.h

    def _my_turn(self) -> bool:
        return (self._step % 2 == 0) == self.initiator

    def write_message(self, payload: bytes = b"") -> bytes:
        if self.complete or not self._my_turn():
            raise HandshakeError("not our turn to write a handshake message")
        ss = self._ss
        out = bytearray()
        if self._step == 0:  # -> e
            self._write_e(out)
        elif self._step == 1:  # <- e, ee, s, es
            self._write_e(out)
            ss.mix_key(_dh(self.e[0], self.re))  # type: ignore[index,arg-type]
            out += ss.encrypt_and_hash(self.s[1])
            ss.mix_key(_dh(self.s[0], self.re))  # type: ignore[arg-type]
        else:  # -> s, se
            out += ss.encrypt_and_hash(self.s[1])
            ss.mix_key(_dh(self.s[0], self.re))  # type: ignore[arg-type]
        out += ss.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE:
            raise HandshakeError("handshake payload too large")
        self._step += 1
        return bytes(out)

    def _write_e(self, out: bytearray) -> None:
        self.e = keypair(self._e_fixed)
        out += self.e[1]
        self._ss.mix_hash(self.e[1])

    def read_message(self, message: bytes) -> bytes:
        if self.complete or self._my_turn():
            raise HandshakeError("not our turn to read a handshake message")
        if len(message) > MAX_MESSAGE:
            raise HandshakeError("handshake message too large")
        ss = self._ss
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            if len(message) < pos + n:
                raise HandshakeError("truncated handshake message")
            chunk = message[pos : pos + n]
            pos += n
            return chunk

        if self._step == 0:  # -> e
            self.re = take(DHLEN)
            ss.mix_hash(self.re)
        elif self._step == 1:  # <- e, ee, s, es
            self.re = take(DHLEN)
            ss.mix_hash(self.re)
            ss.mix_key(_dh(self.e[0], self.re))  # type: ignore[index]
            self.remote_static = ss.decrypt_and_hash(take(DHLEN + TAGLEN))
            ss.mix_key(_dh(self.e[0], self.remote_static))  # type: ignore[index]
        else:  # -> s, se
            self.remote_static = ss.decrypt_and_hash(take(DHLEN + TAGLEN))
            ss.mix_key(_dh(self.e[0], self.remote_static))  # type: ignore[index]
        payload = ss.decrypt_and_hash(message[pos:])
        self._step += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) cipher states for this side's transport messages."""
        if not self.complete:
            raise HandshakeError("the handshake is not complete yet")
        c1, c2 = self._ss.split()
        return (c1, c2) if self.initiator else (c2, c1)
