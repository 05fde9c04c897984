"""Two peers: A runs a machine, B (a separate process) replicates it live and prints each state.

Run the whole demo (A here, B spawned as a child process, both on 127.0.0.1):

    python3 examples/two_peer_sync.py              # over TCP (Noise-encrypted)
    python3 examples/two_peer_sync.py --webrtc     # over a WebRTC data channel

Or run the peers yourself in two terminals:

    python3 examples/two_peer_sync.py --writer --store /tmp/a --port 7400
    python3 examples/two_peer_sync.py --reader --store /tmp/b --port 7400 --key <key printed by A>
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from corelog import Store  # noqa: E402
from corelog.machine import Coremachine  # noqa: E402
from corelog.replication import replicate, serve_tcp  # noqa: E402

COUNTER = {
    "id": "counter",
    "initial": "idle",
    "context": {"running": False, "counter": 0},
    "states": {
        "idle": {"on": {"START": {"target": "running", "actions": "start"}}},
        "running": {
            "on": {"INCREMENT": {"actions": "increment"}, "STOP": {"target": "idle", "actions": "stop"}}
        },
    },
}
ACTIONS = {
    "start": lambda ctx, ev: ctx.update(running=True, counter=ev.data or 0),
    "increment": lambda ctx, ev: ctx.update(counter=ctx["counter"] + 1),
    "stop": lambda ctx, ev: ctx.update(running=False),
}


async def connect(port: int, webrtc: bool, initiator: bool, listener: trio.SocketListener | None = None):
    """A byte stream to the other peer: TCP, or a WebRTC data channel signalled over TCP."""
    if listener is not None:
        tcp = await listener.accept()
    else:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
    if not webrtc:
        return tcp
    from corelog.replication import StreamSignaling, connect_webrtc

    return await connect_webrtc(StreamSignaling(tcp), initiator=initiator)


async def writer(store_path: Path, port: int, events: int, interval: float, webrtc: bool, task_status=None):
    with Store(store_path, sync=False) as store:
        cm = Coremachine(store.get("counter"), COUNTER, actions=ACTIONS)
        print(f"A  log key {cm.log.key.hex()}", flush=True)
        async with trio.open_nursery() as nursery:
            if webrtc:
                listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
                bound = listeners[0].socket.getsockname()[1]

                async def serve_one() -> None:
                    stream = await connect(bound, True, False, listeners[0])
                    try:
                        await replicate(stream, store, initiator=False)
                    except Exception as exc:  # the reader leaving ends the demo connection
                        print(f"A  connection ended: {type(exc).__name__}", flush=True)

                nursery.start_soon(serve_one)
            else:
                bound = await nursery.start(serve_tcp, store, "127.0.0.1", port)
            if task_status is not None:
                task_status.started((cm.log.key, bound))
            print(f"A  serving on 127.0.0.1:{bound}", flush=True)
            await trio.sleep(interval * 5)
            await cm.send("START", 0)
            for _ in range(events - 2):
                await trio.sleep(interval)
                await cm.send("INCREMENT")
            await trio.sleep(interval)
            snap = await cm.send("STOP")
            print(f"A  sent {events} events, final state {snap.value} {dict(snap.context)}", flush=True)
            if task_status is not None:
                return  # the orchestrator cancels us once the reader is done
            await trio.sleep_forever()


async def reader(store_path: Path, port: int, key: bytes, expect: int, webrtc: bool) -> None:
    with Store(store_path, sync=False) as store:
        log = store.get(key=key)
        async with trio.open_nursery() as nursery:
            stream = await connect(port, webrtc, True)
            nursery.start_soon(lambda: replicate(stream, store, initiator=True))
            with trio.fail_after(60):
                while log.contiguous_length == 0:  # the header, with the definition, comes first
                    await trio.sleep(0.01)
                cm = Coremachine(log)
                async for entry in cm.subscribe(from_index=0):
                    what = entry.event.type if entry.event else "(created)"
                    print(
                        f"B  #{entry.index:<3} {what:<10} -> {entry.state!s:<8} {entry.context}", flush=True
                    )
                    if entry.index + 1 >= expect:
                        break
            print(f"B  replicated {log.contiguous_length} entries, audit ok: {log.audit().ok}", flush=True)
            nursery.cancel_scope.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--webrtc", action="store_true", help="replicate over a WebRTC data channel")
    ap.add_argument("--writer", action="store_true", help="run only peer A")
    ap.add_argument("--reader", action="store_true", help="run only peer B")
    ap.add_argument("--store", type=Path)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--key", help="peer A's log key (hex), for --reader")
    ap.add_argument("--events", type=int, default=12)
    ap.add_argument("--interval", type=float, default=0.05)
    args = ap.parse_args()
    if args.reader:
        trio.run(reader, args.store, args.port, bytes.fromhex(args.key), args.events + 1, args.webrtc)
        return
    if args.writer:
        trio.run(writer, args.store, args.port, args.events, args.interval, args.webrtc)
        return

    async def demo() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            async with trio.open_nursery() as nursery:
                key, port = await nursery.start(
                    writer, Path(tmp) / "a", 0, args.events, args.interval, args.webrtc
                )
                cmd = [
                    sys.executable,
                    __file__,
                    "--reader",
                    "--store",
                    str(Path(tmp) / "b"),
                    "--port",
                    str(port),
                    "--key",
                    key.hex(),
                    "--events",
                    str(args.events),
                ] + (["--webrtc"] if args.webrtc else [])
                with trio.fail_after(90):
                    result = await trio.run_process(cmd, check=False, env=dict(os.environ))
                nursery.cancel_scope.cancel()
        if result.returncode:
            raise SystemExit(f"peer B failed with exit code {result.returncode}")

    trio.run(demo)


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C, possibly inside the exception groups trio's nurseries raise."""
    if isinstance(exc, BaseExceptionGroup):
        return any(_interrupted(e) for e in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:
        if not _interrupted(exc):
            raise
        print("interrupted", file=sys.stderr)  # Ctrl-C: one line, exit 130 like a shell
        raise SystemExit(130) from None
