"""Raw WebRTC data channel throughput: a WebRTCStream moving bytes one way, no encryption on top.

Plain script: ``python benchmarks/bench_webrtc_raw.py [--mib 20] [--repeat 3]``. Prints a table.
Two peers in one process (aiortc in the shared asyncio thread), in-process signaling, loopback only.
Each row sends ``--mib`` MiB of random bytes (``send_all`` in 1 MiB pieces) while the other side
reads; the best of ``--repeat`` runs is reported. Message sizes: 16 KiB (the default) and 64 KiB
(the largest every WebRTC stack accepts); receive windows: 1 MiB (the default) and 4 MiB.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import print_table  # noqa: E402

from corelog.replication._signaling import memory_signaling_pair  # noqa: E402
from corelog.replication._webrtc import connect_webrtc  # noqa: E402

PIECE = 1 << 20


async def one_run(total: int, message_size: int, window: int) -> float:
    sa, sb = memory_signaling_pair()
    streams: dict[str, object] = {}

    async def side(name: str, sig, initiator: bool) -> None:
        streams[name] = await connect_webrtc(
            sig, initiator=initiator, message_size=message_size, receive_window=window
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "a", sa, True)
        nursery.start_soon(side, "b", sb, False)
    a, b = streams["a"], streams["b"]
    data = os.urandom(PIECE)
    received = 0

    async def sender() -> None:
        for _ in range(total // PIECE):
            await a.send_all(data)

    try:
        with trio.fail_after(600):
            t = time.perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                while received < total:
                    chunk = await b.receive_some()
                    assert chunk
                    received += len(chunk)
            dt = time.perf_counter() - t
    finally:
        await a.aclose()
        await b.aclose()
    return total / dt / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=20, help="MiB sent per run (default 20)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row; the best is reported (default 3)")
    args = ap.parse_args()
    total = args.mib << 20
    rows = []
    for message_size in (16 << 10, 64 << 10):
        for window in (1 << 20, 4 << 20):
            best = max(trio.run(one_run, total, message_size, window) for _ in range(args.repeat))
            rows.append(
                (
                    f"{args.mib} MiB one way, {message_size >> 10} KiB messages, {window >> 20} MiB window",
                    f"{best:.1f} MB/s",
                    "reported (aiortc SCTP bound)",
                )
            )
    print_table("WebRTC data channel, raw bytes", rows)


if __name__ == "__main__":
    main()
