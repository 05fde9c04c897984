"""SecureStream throughput: 64 KiB messages over loopback TCP, one process, both ends in one trio run.

Plain script: ``python benchmarks/bench_secure.py [--size 65536] [--mb 512]``. Prints MB/s for
``send_message``/``receive_message`` and for ``send_all``/``receive_some`` through the Noise XX stream,
the same over plain TCP (the transport's own ceiling), and raw ChaCha20-Poly1305 (the crypto ceiling:
each byte is encrypted once and decrypted once, so the encrypted stream tops out near half of it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nacl.bindings as sodium
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from corelog.replication._secure import secure_stream  # noqa: E402

MB = 1e6


async def _tcp_pair():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return client, server


async def _secure_pair():
    client, server = await _tcp_pair()
    out = {}

    async def side(name, stream, initiator):
        out[name] = await secure_stream(stream, initiator=initiator)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "a", client, True)
        nursery.start_soon(side, "b", server, False)
    return out["a"], out["b"]


async def bench_messages(size: int, count: int) -> float:
    a, b = await _secure_pair()
    payload = os.urandom(size)

    async def sender():
        for _ in range(count):
            await a.send_message(payload)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        for _ in range(count):
            assert len(await b.receive_message()) == size
    elapsed = time.perf_counter() - start
    await a.aclose()
    await b.aclose()
    return size * count / elapsed / MB


async def bench_stream(size: int, count: int, secure: bool) -> float:
    a, b = await (_secure_pair() if secure else _tcp_pair())
    payload = os.urandom(size)
    total = size * count

    async def sender():
        for _ in range(count):
            await a.send_all(payload)

    start = time.perf_counter()
    got = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        while got < total:
            got += len(await b.receive_some(256 * 1024))
    elapsed = time.perf_counter() - start
    await a.aclose()
    await b.aclose()
    return total / elapsed / MB


def bench_crypto(size: int, count: int) -> float:
    key, nonce, payload = os.urandom(32), bytes(12), os.urandom(size)
    start = time.perf_counter()
    for _ in range(count):
        sodium.crypto_aead_chacha20poly1305_ietf_encrypt(payload, b"", nonce, key)
    return size * count / (time.perf_counter() - start) / MB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=64 * 1024, help="message size in bytes")
    parser.add_argument("--mb", type=int, default=512, help="megabytes to move per measurement")
    args = parser.parse_args()
    count = max(1, args.mb * 1_000_000 // args.size)
    print(f"{count} x {args.size} B messages over loopback TCP (python {sys.version.split()[0]})")
    rows = [
        ("ChaCha20-Poly1305 encrypt only (1 core)", bench_crypto(args.size, count)),
        ("plain TCP send_all/receive_some", trio.run(bench_stream, args.size, count, False)),
        ("SecureStream send_message/receive_message", trio.run(bench_messages, args.size, count)),
        ("SecureStream send_all/receive_some", trio.run(bench_stream, args.size, count, True)),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:8.0f} MB/s")


if __name__ == "__main__":
    main()
