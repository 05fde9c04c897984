"""`corelog sync` exit statuses say what happened: conflict, not held, silence, success; `ls`/`audit` show a conflict."""

from __future__ import annotations

import os
import time

import pytest
import trio
from click.testing import CliRunner

from corelog import Store
from corelog.cli import cli
from corelog.errors import Conflict

from ._peers import handler_thread, rst_relay, server_thread

FAST = {"idle_timeout": 2.0, "progress_timeout": 2.0, "handshake_timeout": 2.0}


def _sync(store, key: bytes, port: int, *extra: str):
    result = CliRunner().invoke(cli, ["sync", str(store), key.hex(), f"127.0.0.1:{port}", *extra])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_sync_success_then_conflict_exits_1(make_store, tmp_path):
    seed = os.urandom(32)
    honest, forked = make_store("w1", seed=seed), make_store("w2", seed=seed)
    l1, l2 = honest.get("same"), forked.get("same")
    l1.append([b"a", b"b"])
    l2.append([b"a", b"B"])  # the writer's key used twice: same fork and length, another tree
    mirror = tmp_path / "mirror"
    with server_thread(honest, **FAST) as port:
        code, out = _sync(mirror, l1.key, port)
    assert code == 0 and "2 entries" in out and "audit ok" in out, out
    with server_thread(forked, **FAST) as port:
        code, out = _sync(mirror, l1.key, port)
    assert code == 1 and "CONFLICT" in out and "equivocation" in out, out
    with Store(mirror, readonly=True) as s:
        rep = s.get(key=l1.key)
        assert rep.conflict is not None and list(rep) == [b"a", b"b"]  # the honest data is kept
    info = CliRunner().invoke(cli, ["info", str(mirror), l1.key.hex()])
    assert "conflict" in info.output and '"fork": 0' in info.output


def test_sync_of_a_log_the_peer_does_not_hold_exits_1(make_store, tmp_path):
    server = make_store("server")
    server.get("something").append(b"x")
    with server_thread(server, **FAST) as port:
        code, out = _sync(tmp_path / "mirror", os.urandom(32), port)
    assert code == 1 and "does not hold this log" in out, out


def test_sync_against_a_silent_server_ends_with_1(tmp_path):
    async def silent(stream):
        await trio.sleep(30)

    with handler_thread(silent) as port:
        t = time.monotonic()
        code, out = _sync(tmp_path / "mirror", os.urandom(32), port, "--timeout", "1")
    assert code == 1 and "SyncTimeout" in out and time.monotonic() - t < 10, out


def test_sync_cut_mid_way_exits_1(make_store, tmp_path):
    w = make_store("w")
    log = w.get("big")
    log.append([bytes(200)] * 20000)

    async def cutter(stream):
        # relay a real server's first bytes, then cut the connection
        upstream = await trio.open_tcp_stream("127.0.0.1", inner_port)
        total = 0
        async with trio.open_nursery() as nursery:

            async def up():
                while data := await stream.receive_some(65536):
                    await upstream.send_all(data)

            nursery.start_soon(up)
            while data := await upstream.receive_some(65536):
                await stream.send_all(data)
                total += len(data)
                if total > 300_000:
                    break
            nursery.cancel_scope.cancel()
        await stream.aclose()
        await upstream.aclose()

    with server_thread(w, **FAST) as inner_port, handler_thread(cutter) as port:
        code, out = _sync(tmp_path / "mirror", log.key, port, "--timeout", "2")
    assert code == 1 and ("SyncIncomplete" in out or "sync failed" in out), out
    assert "audit ok" in out


def test_sync_reset_mid_way_exits_1_with_one_reason_then_resumes(make_store, tmp_path):
    w = make_store("w")
    log = w.get("big")
    log.append([i.to_bytes(4, "big") * 50 for i in range(20000)])
    mirror = tmp_path / "mirror"
    with server_thread(w, **FAST) as inner_port:
        with handler_thread(rst_relay(inner_port)) as port:
            code, out = _sync(mirror, log.key, port, "--timeout", "2")
        assert code == 1, out
        lines = out.splitlines()
        summary = [line for line in lines if "entries, fork 0, audit ok" in line]
        errors = [line for line in lines if line.startswith("error:")]
        assert len(summary) == 1 and len(errors) == 1, out
        assert "sync failed: ConnectionLost:" in errors[0], out
        assert "ECONNRESET" in errors[0] or "EPIPE" in errors[0], out
        assert "sync again to resume" in errors[0] and "unexpected" not in out, out
        held = int(summary[0].split(": ")[1].split()[0])
        assert held < 20000
        code, out = _sync(mirror, log.key, inner_port, "--timeout", "2")  # resumes to the end
    assert code == 0 and "20000 entries, fork 0, audit ok" in out, out


def _conflicted_replica(make_store, tmp_path):
    """A replica holding one clean log and one log marked conflicted (its writer signed two histories)."""
    seed = os.urandom(32)
    honest, forked = make_store("w1", seed=seed), make_store("w2", seed=seed)
    l1, l2 = honest.get("x"), forked.get("x")
    l1.append([b"a", b"b"])
    l2.append([b"a", b"B", b"c"])
    clean = honest.get("clean")
    clean.append(b"fine")
    path = tmp_path / "replica"
    with Store(path, sync=False) as r:
        r.get(key=clean.key).apply(clean.proof(0, 1))
        rep = r.get(key=l1.key)
        rep.apply(l1.proof(0, 2))
        with pytest.raises(Conflict):
            rep.apply(l2.proof(0, 3))
        assert rep.conflict is not None
    return path, l1.key, clean.key


def _one_line(out: str, needle: str, row: bool = False) -> str:
    """The one line holding needle (row: the one table row, whose key column is shortened)."""
    lines = [line for line in out.splitlines() if needle in line and line.startswith("│") == row]
    assert len(lines) == 1, out
    return lines[0]


def test_ls_and_audit_show_a_recorded_conflict(make_store, tmp_path):
    path, bad, good = _conflicted_replica(make_store, tmp_path)
    ls = CliRunner().invoke(cli, ["ls", str(path)])
    assert ls.exit_code == 0, ls.output
    assert "CONFLICT" in _one_line(ls.output, bad.hex()[:8], row=True)
    assert "CONFLICT" not in _one_line(ls.output, good.hex()[:8], row=True)
    line = _one_line(ls.output, f"({bad.hex()})")  # the explanation under the table names key and fork
    assert "conflict in fork 0" in line and "signed two histories" in line and "length 3" in line

    audit = CliRunner().invoke(cli, ["audit", str(path)])
    assert audit.exit_code == 1 and "clean" not in audit.output, audit.output
    line = _one_line(audit.output, f"({bad.hex()})")
    assert "conflict in fork 0" in line and "signed two histories" in line
    assert "CONFLICT" in _one_line(audit.output, bad.hex()[:8], row=True)
    assert "ok" in _one_line(audit.output, good.hex()[:8], row=True) and good.hex() not in audit.output
    # auditing only the clean log is clean; only the conflicted one is a problem
    assert CliRunner().invoke(cli, ["audit", str(path), good.hex()]).exit_code == 0
    one = CliRunner().invoke(cli, ["audit", str(path), bad.hex()])
    assert one.exit_code == 1 and "conflict in fork 0" in one.output, one.output
