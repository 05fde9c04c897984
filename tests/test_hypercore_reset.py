"""Hypercore's wire protocol, cut mid-sync (an RST, or a clean EOF inside a frame): the client gets one
typed ConnectionLost, its replica holds only verified data and a second sync completes it; the
server logs one clear line and keeps serving; `corelog sync --hypercore` exits 1 with one error line."""

from __future__ import annotations

import json
import logging
import time

import pytest
import trio
from click.testing import CliRunner

from corelog import Store
from corelog.cli import cli
from corelog.replication.errors import ConnectionLost, SyncIncomplete
from corelog.replication.hypercore import connect_hypercore, serve_hypercore

from ._peers import assert_one_clear_reset_line, handler_thread, rst_relay, server_thread

ENTRIES = 20_000
FAST = {"timeout": 3.0}


def _big_log(store):
    log = store.get("big")
    log.append([i.to_bytes(4, "big") * 50 for i in range(ENTRIES)])  # 200 B each, all different
    return log


def _sync(rep, port: int) -> None:
    trio.run(lambda: connect_hypercore(rep, "127.0.0.1", port, live=False, **FAST))


def _holds_only_verified(rep, log) -> None:
    assert rep.audit().ok
    n = rep.contiguous_length
    assert [rep[i] for i in range(n)] == [log[i] for i in range(n)]


@pytest.mark.parametrize("eof_mid_frame", [False, True], ids=["rst", "eof-mid-frame"])
def test_a_cut_sync_is_connection_lost_and_a_second_sync_resumes(make_store, eof_mid_frame):
    ws, rs = make_store("w"), make_store("r")
    log = _big_log(ws)
    rep = rs.get(key=log.key)
    with server_thread(ws, serve=serve_hypercore, **FAST) as inner:
        with handler_thread(rst_relay(inner, eof_mid_u24_frame=eof_mid_frame)) as port:
            t = time.monotonic()
            with pytest.raises(ConnectionLost) as info:
                _sync(rep, port)
            assert time.monotonic() - t < 15
        message = str(info.value)
        assert isinstance(info.value, SyncIncomplete) and "\n" not in message
        if eof_mid_frame:
            assert "in the middle of a frame" in message, message
        else:  # (an RST: the reader sees ECONNRESET; a send racing it may see EPIPE first)
            assert "ECONNRESET" in message or "EPIPE" in message, message
        assert "sync again to resume" in message, message
        assert rep.contiguous_length < ENTRIES  # the cut really was mid-sync
        _holds_only_verified(rep, log)
        _sync(rep, inner)  # straight to the server: completes from there
    assert rep.contiguous_length == ENTRIES and rep.head() == log.head() and rep.audit().ok


def test_server_logs_one_clear_line_for_a_reset_and_keeps_serving(make_store, caplog):
    caplog.set_level(logging.INFO, logger="corelog.replication")
    ws = make_store("w")
    log = _big_log(ws)
    errors: list[BaseException] = []
    with server_thread(ws, serve=serve_hypercore, handler_errors=errors, **FAST) as inner:
        with handler_thread(rst_relay(inner)) as port, make_store("cut") as cut:
            with pytest.raises(ConnectionLost):
                _sync(cut.get(key=log.key), port)
        assert_one_clear_reset_line(errors, caplog)
        with make_store("other") as other:  # another client is served in full by the same server
            rep = other.get(key=log.key)
            _sync(rep, inner)
            assert rep.contiguous_length == ENTRIES and rep.head() == log.head()


def test_cli_sync_hypercore_reset_exits_1_with_one_error_line_then_resumes(make_store, tmp_path):
    w = make_store("w")
    log = _big_log(w)
    mirror = tmp_path / "mirror"

    def sync(port: int):
        args = ["sync", "--hypercore", str(mirror), log.key.hex(), f"127.0.0.1:{port}", "--timeout", "3"]
        result = CliRunner().invoke(cli, args)
        assert "Traceback" not in result.output
        return result.exit_code, result.output.splitlines()

    with server_thread(w, serve=serve_hypercore, **FAST) as inner:
        with handler_thread(rst_relay(inner)) as port:
            code, lines = sync(port)
        assert code == 1, lines
        summary = [json.loads(line) for line in lines if line.startswith("{")]
        errors = [line for line in lines if line.startswith("error:")]
        assert len(summary) == 1 and len(errors) == 1 and len(lines) == 2, lines
        assert summary[0]["ok"] is False and summary[0]["error"].startswith("ConnectionLost: ")
        assert errors[0].startswith("error: sync failed: ConnectionLost: the connection was lost"), errors
        assert "ECONNRESET" in errors[0] or "EPIPE" in errors[0], errors
        assert "sync again to resume" in errors[0] and "unexpected" not in errors[0], errors
        held = summary[0]["contiguousLength"]
        assert 0 < held < ENTRIES
        with Store(mirror, readonly=True) as s:
            _holds_only_verified(s.get(key=log.key), log)
        code, lines = sync(inner)  # resumes to the end
    assert code == 0, lines
    last = json.loads(lines[-1])
    assert last["ok"] is True and last["length"] == ENTRIES
    assert last["treeHash"] == log.head().tree_hash.hex()
