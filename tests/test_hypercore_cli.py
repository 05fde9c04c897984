"""`corelog serve --hypercore` and `corelog sync --hypercore` against real JS Hypercore peers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import trio

from corelog import Store

from .hypercore_js import blocks_hash, js_block, needs_js, start_js

pytestmark = needs_js

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
CLI = [sys.executable, "-c", "from corelog.cli import main; main()"]


async def test_serve_hypercore_to_a_js_reader_beside_the_writer(tmp_path):
    path = tmp_path / "store"
    with Store(path, sync=True) as s:  # this process keeps writing while the CLI serves
        log = s.get("app")
        log.append([b"entry %d" % i for i in range(300)])
        proc = subprocess.Popen(
            [*CLI, "serve", "--hypercore", str(path), "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        reader = None
        try:
            first = json.loads(await trio.to_thread.run_sync(proc.stdout.readline))
            assert first["port"] > 0 and log.key.hex() in first["logs"]
            reader = await start_js("reader", "--key", log.key.hex(), "--dir", str(tmp_path / "js"))
            await reader.acmd(connect=first["port"])
            got = await reader.acmd(wait=[0, 300, 0, 20000])
            assert got["treeHash"] == log.head().tree_hash.hex()
            log.append([b"later %d" % i for i in range(5)])  # the read-only server sees it and announces it
            got = await reader.acmd(wait=[0, 305, 0, 20000])
            assert got["treeHash"] == log.head().tree_hash.hex() and got["blocksHash"] == blocks_hash(log)
        finally:
            proc.kill()
            proc.wait(10)
            if reader is not None:
                reader.close()


async def test_sync_hypercore_from_a_js_writer(tmp_path):
    writer = await start_js("writer", "--blocks", "500", "--listen", "--dir", str(tmp_path / "js"))
    try:
        key = writer.ready["cores"][0]["key"]
        out = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [*CLI, "sync", "--hypercore", str(tmp_path / "r"), key, f"127.0.0.1:{writer.port}"],
                capture_output=True,
                text=True,
                env=ENV,
                timeout=60,
            )
        )
        assert out.returncode == 0, out.stderr
        last = json.loads(out.stdout.strip().splitlines()[-1])
        assert last["ok"] is True and (last["length"], last["fork"]) == (500, 0)
        assert last["treeHash"] == writer.ready["cores"][0]["treeHash"]
        with Store(tmp_path / "r", readonly=True) as s:
            assert s.get(key=bytes.fromhex(key)).get(499) == js_block(0, 499)
        bad = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [*CLI, "sync", "--hypercore", str(tmp_path / "r2"), "00" * 32, f"127.0.0.1:{writer.port}"],
                capture_output=True,
                text=True,
                env=ENV,
                timeout=60,
            )
        )
        assert bad.returncode != 0 and "Traceback" not in bad.stderr
        assert json.loads(bad.stdout.strip().splitlines()[-1])["ok"] is False
    finally:
        writer.close()
