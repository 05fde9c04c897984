"""Hypercore wire protocol against real JS hypercore 11.37.1 peers over loopback TCP, both directions.

Each test runs tests/js/peer.mjs (corestore + @hyperswarm/secret-stream) in a node process.
They skip only when node or the pinned JS packages (``npm ci``) are missing.
"""

import hashlib

import pytest
import trio

from corelog import Store
from corelog.replication.errors import ProtocolError
from corelog.replication.hypercore import CapabilityError, ProofError, connect_hypercore, serve_hypercore
from corelog.replication.hypercore import _messages as m
from corelog.replication.hypercore import _peer as peer_module

from .hypercore_js import blocks_hash, js_block, needs_js, start_js

pytestmark = needs_js


@pytest.fixture
async def js(tmp_path):
    started = []

    async def make(*args: str):
        peer = await start_js(*args, "--dir", str(tmp_path / f"js{len(started)}"))
        started.append(peer)
        return peer

    yield make
    for p in started:
        p.close()


async def wait_for(pred, timeout=20.0):
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.01)


async def serve(nursery, source, errors=None):
    return await nursery.start(
        lambda task_status: serve_hypercore(source, handler_errors=errors, task_status=task_status)
    )


def state_of(log):
    return {
        "length": log.length,
        "fork": log.fork,
        "treeHash": log.head().tree_hash.hex(),
        "blocksHash": blocks_hash(log),
    }


# --- corelog writer -> JS reader ------------------------------------------------------------------


@pytest.mark.parametrize("n, size", [(1, 10), (10_000, 24), (40, 65536)], ids=["1", "10000", "64KiB"])
async def test_js_reader_downloads_a_corelog_log(store, js, n, size):
    log = store.get("w")
    log.append([i.to_bytes(4, "big") * (size // 4) for i in range(n)])
    async with trio.open_nursery() as nursery:
        errors: list = []
        port = await serve(nursery, store, errors)
        reader = await js("reader", "--key", log.key.hex())
        await reader.acmd(connect=port)
        got = await reader.acmd(wait=[0, n, 0, 60000])
        assert {k: got[k] for k in ("length", "fork", "treeHash", "blocksHash")} == state_of(log)
        assert (await reader.acmd(errors=1))["errors"] == [] and errors == []
        nursery.cancel_scope.cancel()


async def test_js_reader_follows_live_appends_and_truncation(store, js):
    log = store.get("w")
    log.append([b"a%d" % i for i in range(3000)])
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, store)
        reader = await js("reader", "--key", log.key.hex())
        await reader.acmd(connect=port)
        for k in range(5):  # appends while the reader is still downloading
            log.append([b"live%d-%d" % (k, i) for i in range(100)])
            await trio.sleep(0.01)
        got = await reader.acmd(wait=[0, 3500, 0, 30000])
        assert got["treeHash"] == log.head().tree_hash.hex() and got["blocksHash"] == blocks_hash(log)
        log.truncate(2000)  # fork 1: the reader must drop [2000, 3500) and take the new blocks
        log.append([b"new%d" % i for i in range(50)])
        got = await reader.acmd(wait=[0, 2050, 1, 30000])
        assert (got["length"], got["fork"]) == (2050, 1)
        assert got["treeHash"] == log.head().tree_hash.hex() and got["blocksHash"] == blocks_hash(log)
        nursery.cancel_scope.cancel()


async def test_js_reader_several_cores_one_connection(store, js):
    logs = [store.get(f"w{i}") for i in range(3)]
    for i, log in enumerate(logs):
        log.append([b"%d-%d" % (i, j) for j in range(100 * (i + 1))])
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, store)
        reader = await js("reader", "--key", ",".join(log.key.hex() for log in logs))
        await reader.acmd(connect=port)
        for i, log in enumerate(logs):
            got = await reader.acmd(wait=[i, log.length, 0, 20000])
            assert got["treeHash"] == log.head().tree_hash.hex() and got["blocksHash"] == blocks_hash(log)
        nursery.cancel_scope.cancel()


async def test_js_reader_refuses_a_tampered_block(store, js, monkeypatch):
    log = store.get("w")
    log.append([b"block%d" % i for i in range(20)])
    send = peer_module.Peer.send

    def tampering(self, msg):
        if isinstance(msg, m.Data) and msg.block is not None:
            msg.block.value = b"X" + msg.block.value[1:]
        send(self, msg)

    monkeypatch.setattr(peer_module.Peer, "send", tampering)
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, store)
        reader = await js("reader", "--key", log.key.hex())
        await reader.acmd(connect=port)
        got = await reader.acmd(wait=[0, 20, 0, 1500])
        assert got["contiguousLength"] == 0  # every block refused
        assert (await reader.acmd(state=0))["length"] in (0, 20)  # the signed head itself was fine
        nursery.cancel_scope.cancel()


async def test_js_refuses_a_wrong_capability(store, js, monkeypatch):
    log = store.get("w")
    log.append(b"x")
    monkeypatch.setattr(
        peer_module.Peer, "handshake", lambda self: m.encode_handshake(m.Handshake(bytes(32)))
    )
    errors: list = []
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, store, errors)
        reader = await js("reader", "--key", log.key.hex())
        await reader.acmd(connect=port)
        with trio.fail_after(10):
            while not (got := await reader.acmd(errors=1))["errors"]:
                await trio.sleep(0.05)
        assert any("INVALID_CAPABILITY" in e for e in got["errors"]), got
        assert (await reader.acmd(state=0))["length"] == 0
        nursery.cancel_scope.cancel()


# --- JS writer -> corelog reader ------------------------------------------------------------------


@pytest.mark.parametrize("n, size", [(1, 16), (10_000, 16), (40, 65536)], ids=["1", "10000", "64KiB"])
async def test_corelog_downloads_a_js_core(store, js, n, size):
    writer = await js("writer", "--blocks", str(n), "--size", str(size), "--listen")
    log = store.get(key=writer.key())
    await connect_hypercore(log, "127.0.0.1", writer.port)
    assert (log.length, log.contiguous_length, log.fork) == (n, n, 0)
    assert log.head().tree_hash.hex() == writer.ready["cores"][0]["treeHash"]
    assert log.get(n - 1) == js_block(0, n - 1, size)
    assert (await writer.acmd(blocks=0))["blocksHash"] == blocks_hash(log)
    assert log.audit().ok


async def test_corelog_follows_live_appends_and_reorgs(store, js):
    writer = await js("writer", "--blocks", "2000", "--listen")
    log = store.get(key=writer.key())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: connect_hypercore(log, "127.0.0.1", writer.port, live=True))
        for _ in range(3):  # appends during the download
            await writer.acmd(append=[0, 100])
        await wait_for(lambda: log.contiguous_length == 2300)
        w = await writer.acmd(state=0)
        assert log.head().tree_hash.hex() == w["treeHash"]
        await writer.acmd(truncate=[0, 1500])
        w = await writer.acmd(append=[0, 30])
        await wait_for(lambda: (log.fork, log.length, log.contiguous_length) == (1, 1530, 1530))
        assert log.head().tree_hash.hex() == w["treeHash"]
        assert (await writer.acmd(blocks=0))["blocksHash"] == blocks_hash(log)
        assert log.audit().ok
        nursery.cancel_scope.cancel()


async def test_corelog_several_cores_one_connection(store, js):
    writer = await js("writer", "--cores", "3", "--blocks", "300", "--listen")
    logs = [store.get(key=writer.key(i)) for i in range(3)]
    await connect_hypercore(logs, "127.0.0.1", writer.port)
    for i, log in enumerate(logs):
        assert log.contiguous_length == 300
        assert log.head().tree_hash.hex() == writer.ready["cores"][i]["treeHash"]
        assert log.get(7) == js_block(i, 7)


async def test_corelog_refuses_a_tampered_block(store, js):
    writer = await js("writer", "--blocks", "50", "--listen")
    await writer.acmd(tamper=True)
    log = store.get(key=writer.key())
    with pytest.raises(ProofError, match="does not match the signed tree"):
        await connect_hypercore(log, "127.0.0.1", writer.port)
    assert log.contiguous_length == 0  # nothing unverified was stored
    assert log.audit().ok


async def test_corelog_refuses_a_wrong_capability(store, js):
    writer = await js("writer", "--blocks", "5", "--listen")
    await writer.acmd(badcap=True)
    log = store.get(key=writer.key())
    with pytest.raises((CapabilityError, ProtocolError, trio.BrokenResourceError)) as info:
        await connect_hypercore(log, "127.0.0.1", writer.port)
    assert log.length == 0
    if isinstance(info.value, CapabilityError):
        assert "INVALID_CAPABILITY" in str(info.value)


async def test_corelog_serves_and_downloads_at_once(tmp_path, js):
    """A corelog replica downloaded from JS serves what it holds to another JS reader."""
    writer = await js("writer", "--blocks", "500", "--listen")
    with Store(tmp_path / "mid", sync=False) as mid:
        log = mid.get(key=writer.key())
        await connect_hypercore(log, "127.0.0.1", writer.port)
        async with trio.open_nursery() as nursery:
            port = await serve(nursery, mid)
            reader = await js("reader", "--key", log.key.hex())
            await reader.acmd(connect=port)
            got = await reader.acmd(wait=[0, 500, 0, 20000])
            assert got["treeHash"] == writer.ready["cores"][0]["treeHash"]
            assert got["blocksHash"] == hashlib.sha256(b"".join(log.iter())).hexdigest()
            nursery.cancel_scope.cancel()


async def test_gateway_demo_reaches_a_swarm_reader_on_a_loopback_testnet():
    """examples/hypercore_gateway_demo.py: corelog -> Node gateway -> hyperswarm (hyperdht testnet on 127.0.0.1)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, str(root / "examples" / "hypercore_gateway_demo.py")],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "JS swarm reader: 4 entries, same signed tree" in out.stdout
