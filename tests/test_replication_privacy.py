"""Privacy: a peer without a log's key learns nothing about it. Every decrypted byte a stranger
receives is inspected; unknown and not-held keys get the same answer; `corelog sync` of one log
offers only that log."""

from __future__ import annotations

import os
import threading

import trio
from click.testing import CliRunner

from corelog.cli import cli
from corelog.replication._messages import Done, Hello, Open, Ping, Pong

from ._peers import Evil, handler_thread, server_thread

FAST = {"idle_timeout": 2.0, "progress_timeout": 2.0, "handshake_timeout": 2.0}


def _secrets(*logs) -> list[bytes]:
    out = []
    for lg in logs:
        h = lg.head()
        out += [lg.key, lg.discovery_key, h.tree_hash]
        if h.signature:
            out.append(h.signature)
        if lg.manifest:
            out.append(lg.manifest)
    return out


async def _stranger(port: int, opens: list[tuple[bytes, bytes]]) -> Evil:
    s = await trio.open_tcp_stream("127.0.0.1", port)
    evil = Evil(s, initiator=True)
    await evil.handshake()
    await evil.send(Hello(1, 1 << 20, 16), *[Open(i, d, c) for i, (d, c) in enumerate(opens)], Ping(0))
    await evil.receive(lambda m: isinstance(m, Pong))
    await evil.receive(timeout=0.3)  # anything that might trail the barrier
    await evil.stream.aclose()
    return evil


async def test_a_stranger_learns_nothing_and_unknown_equals_not_held(make_store):
    s = make_store("server")
    private = s.get("private")
    private.append([b"secret %d" % i for i in range(10)])
    writer = make_store("w").get("shared")
    writer.append(b"x")
    replica = s.get(key=writer.key)
    replica.apply(writer.proof(0, 1))
    secrets = _secrets(private, replica)
    with server_thread(s, **FAST) as port:
        unknown = await _stranger(port, [(os.urandom(32), os.urandom(32))])
        held = await _stranger(port, [(private.discovery_key, os.urandom(32))])
        held2 = await _stranger(port, [(replica.discovery_key, os.urandom(32))])
        many = await _stranger(port, [(os.urandom(32), os.urandom(32)) for _ in range(300)])
    for evil in (unknown, held, held2, many):
        assert [type(m).__name__ for m in evil.received] == ["Hello", "Pong", "Ping"], evil.received
        plain = bytes(evil.raw_received)
        assert not any(secret in plain for secret in secrets)
    # the same answer, byte for byte (apart from nothing: Hello, Pong(0), Ping(0) carry no secret)
    assert unknown.raw_received == held.raw_received == held2.raw_received == many.raw_received


def test_cli_sync_offers_only_the_one_log(make_store, tmp_path):
    store_path = tmp_path / "local"
    target_key = os.urandom(32)
    s = make_store("local")
    others = [s.get("my-private-log"), s.get("another")]
    others[0].append(b"private")
    others[1].append(b"also private")
    s.get(key=target_key)
    secrets = _secrets(*others)
    s.close()
    spies: list[Evil] = []
    ended = threading.Event()

    async def spy(stream):
        evil = Evil(stream, initiator=False)
        spies.append(evil)
        try:
            await evil.handshake()
            await evil.send(Hello(1, 1 << 20, 16))
            await evil.receive(lambda m: isinstance(m, Ping))
            await evil.send(Pong(0), Ping(0))  # an honest "I do not have it": silence, then the barrier
            await evil.receive(lambda m: isinstance(m, Pong))
            await evil.send(Done())
            await evil.receive(timeout=10)  # and every byte after, until the client ends the connection
        finally:
            ended.set()

    with handler_thread(spy) as port:
        result = CliRunner().invoke(
            cli, ["sync", str(store_path), target_key.hex(), f"127.0.0.1:{port}", "--timeout", "2"]
        )
        assert ended.wait(15)  # the spy has read to the end before its server stops
    (evil,) = spies
    assert evil.eof, "the spy stopped reading before the connection ended"
    opens = [m for m in evil.received if isinstance(m, Open)]
    assert len(opens) == 1, opens
    from corelog._crypto import discovery_key

    assert opens[0].discovery_key == discovery_key(target_key)
    plain = bytes(evil.raw_received)  # every decrypted byte: nothing of the store's other logs
    assert not any(secret in plain for secret in secrets)
    assert result.exit_code == 1 and "does not hold this log" in result.output, result.output
