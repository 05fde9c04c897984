"""A corelog machine's log reaches a JS Hypercore reader through Hyperswarm, via the Node gateway.

Run: python3 examples/hypercore_gateway_demo.py   (needs node and `npm ci` at the repository root)

1. a corelog Machine writes a few transitions (each one a signed log entry);
2. examples/hypercore_gateway.mjs starts a local hyperdht testnet on 127.0.0.1 and a gateway
   (Corestore + Hyperswarm + a 127.0.0.1 TCP listener) that seeds the log on the swarm;
3. corelog pushes the log to the gateway over Hypercore's wire protocol (``connect_hypercore``);
4. examples/hypercore_swarm_reader.mjs, a plain JS Hypercore peer, finds the log on the swarm by its
   discovery key, downloads and verifies it; the demo checks it got the same signed tree and entries.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corelog import Store  # noqa: E402
from corelog.machine import Machine  # noqa: E402
from corelog.replication.hypercore import connect_hypercore  # noqa: E402

DEFINITION = {
    "id": "door",
    "initial": "closed",
    "states": {"closed": {"on": {"OPEN": "opened"}}, "opened": {"on": {"CLOSE": "closed"}}},
}


async def main(tmp: Path) -> None:
    with Store(tmp / "corelog", sync=False) as store:
        door = Machine(store.get("door"), DEFINITION)
        for event in ("OPEN", "CLOSE", "OPEN"):
            door.send(event)
        log = door.log
        print(f"corelog: machine 'door' is {door.state!r}; its log has {log.length} signed entries")

        gateway = subprocess.Popen(
            [
                "node",
                str(ROOT / "examples" / "hypercore_gateway.mjs"),
                "--testnet",
                "--dir",
                str(tmp / "gw"),
                "--key",
                log.key.hex(),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            ready = json.loads(await trio.to_thread.run_sync(gateway.stdout.readline))
            boot = ",".join(f"{b['host']}:{b['port']}" for b in ready["bootstrap"])
            print(f"gateway: 127.0.0.1:{ready['port']}, local hyperdht testnet at {boot}")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: connect_hypercore(log, "127.0.0.1", ready["port"], live=True))
                reader = await trio.to_thread.run_sync(
                    lambda: subprocess.run(
                        [
                            "node",
                            str(ROOT / "examples" / "hypercore_swarm_reader.mjs"),
                            "--dir",
                            str(tmp / "reader"),
                            "--key",
                            log.key.hex(),
                            "--length",
                            str(log.length),
                            "--bootstrap",
                            boot,
                        ],
                        cwd=ROOT,
                        capture_output=True,
                        text=True,
                        timeout=120,
                    )
                )
                nursery.cancel_scope.cancel()
            got = json.loads(reader.stdout.strip().splitlines()[-1])
            assert got.get("treeHash") == log.head().tree_hash.hex(), got
            assert [bytes.fromhex(b) for b in got["blocks"]] == list(log.iter())
            print(f"JS swarm reader: {got['length']} entries, same signed tree {got['treeHash'][:16]}…")
        finally:
            gateway.terminate()
            gateway.wait(10)


if __name__ == "__main__":
    if shutil.which("node") is None or not (ROOT / "node_modules" / "hyperswarm").exists():
        print("this demo needs node and the pinned JS packages: run `npm ci` at the repository root")
        sys.exit(0)
    with tempfile.TemporaryDirectory() as d:
        trio.run(main, Path(d))
