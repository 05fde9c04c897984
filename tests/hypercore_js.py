"""Helpers for the tests that run real JS Hypercore 11.37.1 peers (tests/js/peer.mjs)."""

from __future__ import annotations

import hashlib
import json
import queue
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "tests" / "js" / "peer.mjs"
NODE = shutil.which("node")
HAVE_JS = bool(NODE) and (ROOT / "node_modules" / "hypercore" / "package.json").exists()
REASON = (
    "node is not installed"
    if not NODE
    else "the pinned JS peers are not installed: run `npm ci` at the repository root"
)
needs_js = pytest.mark.skipif(not HAVE_JS, reason=REASON)


class JSPeer:
    """A node process running tests/js/peer.mjs, driven by one JSON command per line."""

    def __init__(self, *args: str, timeout: float = 60.0):
        self.proc = subprocess.Popen(
            [NODE or "node", str(PEER), *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()
        self.ready = self._read(timeout)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def _read(self, timeout: float) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the JS peer did not answer within {timeout} s") from None
        if line is None:
            raise AssertionError("the JS peer exited: " + "".join(self._stderr[-20:]))
        return json.loads(line)

    def cmd(self, timeout: float = 60.0, **command) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    async def acmd(self, timeout: float = 60.0, **command) -> dict:
        return await trio.to_thread.run_sync(lambda: self.cmd(timeout, **command))

    @property
    def port(self) -> int:
        return self.ready["port"]

    def key(self, i: int = 0) -> bytes:
        return bytes.fromhex(self.ready["cores"][i]["key"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


async def start_js(*args: str) -> JSPeer:
    return await trio.to_thread.run_sync(lambda: JSPeer(*args))


def blocks_hash(log) -> str:
    h = hashlib.sha256()
    for b in log.iter():
        h.update(b)
    return h.hexdigest()


def js_block(salt: int, index: int, size: int = 16) -> bytes:
    """The block peer.mjs appends at ``index`` of core ``salt``."""
    tag = f"{salt}:{index}:".encode()[:size]
    return tag + bytes(size - len(tag))
