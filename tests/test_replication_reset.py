"""A connection reset or broken mid-sync ends in one typed error (ConnectionLost) on every transport,
the replica keeps only verified data and a second sync completes it; a server logs one clear line."""

from __future__ import annotations

import logging
import time

import pytest
import trio
import trio.testing

from corelog.errors import CorelogError
from corelog.replication import (
    ConnectionLost,
    ProtocolError,
    SyncIncomplete,
    connect_tcp,
    memory_pair,
    replicate,
)
from corelog.replication._transport import root_cause

from ._peers import assert_one_clear_reset_line, handler_thread, rst_relay, server_thread

FAST = {"idle_timeout": 2.0, "progress_timeout": 2.0, "handshake_timeout": 2.0}
ENTRIES = 20_000


def _big_log(store):
    log = store.get("big")
    log.append([i.to_bytes(4, "big") * 50 for i in range(ENTRIES)])  # 200 B each, all different
    return log


def _holds_only_verified(rep, log) -> None:
    assert rep.audit().ok
    n = rep.contiguous_length
    assert list(rep[i] for i in range(n)) == [log[i] for i in range(n)]


def test_rst_mid_sync_is_connection_lost_and_a_second_sync_resumes(make_store):
    ws, rs = make_store("w"), make_store("r")
    log = _big_log(ws)
    rep = rs.get(key=log.key)
    with server_thread(ws, **FAST) as inner:
        with handler_thread(rst_relay(inner)) as port:
            t = time.monotonic()
            with pytest.raises(ConnectionLost) as info:
                trio.run(lambda: connect_tcp([rep], "127.0.0.1", port, live=False, **FAST))
            assert time.monotonic() - t < 15
        err = info.value
        assert isinstance(err, SyncIncomplete) and isinstance(err, ProtocolError)
        message = str(err)
        # (an RST: the reader sees ECONNRESET; a send racing it may see EPIPE first)
        assert ("ECONNRESET" in message or "EPIPE" in message) and "sync again" in message, message
        assert "\n" not in message
        assert rep.contiguous_length < ENTRIES  # the cut really was mid-sync
        _holds_only_verified(rep, log)
        # the second sync, straight to the server, completes from there
        trio.run(lambda: connect_tcp([rep], "127.0.0.1", inner, live=False, **FAST))
    assert rep.contiguous_length == ENTRIES and rep.head() == log.head() and rep.audit().ok


def test_server_logs_one_clear_line_for_a_reset_and_keeps_serving(make_store, caplog):
    caplog.set_level(logging.INFO, logger="corelog.replication")
    ws = make_store("w")
    log = _big_log(ws)
    errors: list[BaseException] = []
    with server_thread(ws, handler_errors=errors, **FAST) as inner:
        with handler_thread(rst_relay(inner)) as port, make_store("cut") as cut:
            with pytest.raises(ConnectionLost):
                trio.run(lambda: connect_tcp([cut.get(key=log.key)], "127.0.0.1", port, live=False, **FAST))
        assert_one_clear_reset_line(errors, caplog)
        # another client is served in full by the same server
        with make_store("other") as other:
            rep = other.get(key=log.key)
            trio.run(lambda: connect_tcp([rep], "127.0.0.1", inner, live=False, **FAST))
            assert rep.contiguous_length == ENTRIES and rep.head() == log.head()


class _Resetting(trio.abc.Stream):
    """A stream that, after ``after`` bytes received, fails like a reset socket (any transport's
    failure reaches the session as one of trio's resource errors or an OSError)."""

    def __init__(self, inner: trio.abc.Stream, after: int, failure: type[BaseException]):
        self.inner, self.after, self.failure, self.got = inner, after, failure, 0

    def _fail(self) -> BaseException:
        reset = ConnectionResetError(104, "Connection reset by peer")
        if self.failure is OSError:
            return reset
        exc = self.failure("the connection broke")
        exc.__cause__ = reset if self.failure is trio.BrokenResourceError else None
        return exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.got >= self.after:
            raise self._fail()
        data = await self.inner.receive_some(max_bytes)
        self.got += len(data)
        return data

    async def send_all(self, data) -> None:
        if self.got >= self.after:
            raise self._fail()
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("failure", [trio.BrokenResourceError, trio.ClosedResourceError, OSError])
async def test_memory_transport_failure_is_connection_lost_on_both_sides(make_store, failure):
    ws, rs = make_store("w"), make_store("r")
    log = ws.get("log")
    log.append([bytes([i % 256]) * 200 for i in range(5000)])
    rep = rs.get(key=log.key)
    a, b = memory_pair()
    outcome: dict[str, BaseException | None] = {}

    async def side(name: str, stream, source, initiator: bool) -> None:
        try:
            await replicate(stream, source, initiator=initiator, live=False, **FAST)
            outcome[name] = None
        except Exception as exc:
            outcome[name] = exc

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(side, "server", a, ws, False)
            nursery.start_soon(side, "replica", _Resetting(b, 200_000, failure), [rep], True)
    lost = outcome["replica"]
    assert isinstance(lost, ConnectionLost), repr(lost)
    assert "sync again" in str(lost)
    if failure is not trio.ClosedResourceError:
        assert "ECONNRESET" in str(lost)
    # the server saw its peer vanish: also typed (never a raw trio error or a group)
    assert isinstance(outcome["server"], CorelogError), repr(outcome["server"])
    assert rep.contiguous_length < 5000
    _holds_only_verified(rep, log)


def test_root_cause_prefers_the_protocol_error_then_anything_over_a_lost_connection():
    lost_r, lost_w = ConnectionLost("reading"), ConnectionLost("writing")
    bad = ProtocolError("the peer sent garbage")
    cancelled = trio.Cancelled._create()
    group = BaseExceptionGroup("nursery", [lost_w, BaseExceptionGroup("inner", [cancelled, lost_r])])
    assert root_cause(group) is lost_w
    assert root_cause(group, bad) is bad  # the peer's fault, then it hung up on our Error frame
    assert root_cause(BaseExceptionGroup("n", [cancelled, bad, lost_r])) is bad
    bug = BaseExceptionGroup("n", [ValueError("x"), KeyError("y")])
    assert root_cause(bug) is bug  # unrelated errors are kept together
