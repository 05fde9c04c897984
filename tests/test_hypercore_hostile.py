"""The h11 rule on the Hypercore protocol: whatever a peer sends only closes that connection, with a clear error.

Python-driven attackers (our own sans-IO SecretStream after a completed handshake) against
``serve_hypercore``; a lying server against ``connect_hypercore``. No JS needed.
"""

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corelog.replication.errors import ProtocolError
from corelog.replication.hypercore import (
    PeerTimeout,
    ProofError,
    WireError,
    connect_hypercore,
    serve_hypercore,
)
from corelog.replication.hypercore import _messages as m
from corelog.replication.hypercore import _peer as peer_module
from corelog.replication.hypercore._encoding import Writer, encode_uint

from ._peers import Attacker


@pytest.fixture
async def server(store):
    log = store.get("w")
    log.append([b"block %d" % i for i in range(100)])
    errors: list = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_hypercore(
                store, handler_errors=errors, timeout=1.0, task_status=task_status
            )
        )
        yield port, log, errors
        nursery.cancel_scope.cancel()


async def still_serves(port, log, make_store) -> None:
    replica = make_store().get(key=log.key)
    with trio.fail_after(10):
        await connect_hypercore(replica, "127.0.0.1", port)
    assert replica.head().tree_hash == log.head().tree_hash and replica.contiguous_length == log.length


async def test_garbage_and_violations_close_only_that_connection(server, make_store):
    port, log, errors = server
    head = log.head()
    cases = [
        (b"\x00\x01\x05\x01p\x00", "out of sequence"),  # an open with a gap in the ids
        (b"\x00\x02\x09", "reject"),  # a reject for an open we never sent
        (b"\x00\x00\x01\xff" + bytes(3), "truncated"),  # a batch item running past its frame
        (b"\x00\x01\x01\xfe\xff\xff\xff\x7f", "truncated"),  # a 2 GiB string length
    ]
    for frame, why in cases:
        a = await Attacker.connect(port)
        await a.send(frame)
        assert await a.closed_by_server(), why
    a = await Attacker.connect(port)  # a wrong capability for a core the server holds
    await a.send(
        Writer()
        .uint(0)
        .uint(1)
        .uint(1)
        .string(m.PROTOCOL)
        .buffer(log.discovery_key)
        .raw(m.encode_handshake(m.Handshake(bytes(32))))
        .bytes()
    )
    assert await a.closed_by_server()
    await still_serves(port, log, make_store)
    assert log.head() == head
    with trio.fail_after(2):
        while len(errors) < 5:
            await trio.sleep(0.01)
    msgs = " | ".join(str(e) for e in errors)
    for why in ("out of sequence", "reject", "truncated", "INVALID_CAPABILITY"):
        assert why in msgs


async def test_hostile_requests_get_no_data_or_a_close(server, make_store):
    port, log, errors = server
    a = await Attacker.connect(port)
    await a.open_channel(log)
    bad = [
        m.Request(1, 0, block=(10**6, 0)),  # beyond the log
        m.Request(2, 0, block=(3, 40)),  # nodes past the root
        m.Request(3, 0, upgrade=(50, 10**9)),  # upgrade beyond the head
        m.Request(4, 7, block=(1, 0)),  # wrong fork
        m.Request(5, 0, hash=(2**40, 3)),
        m.Request(6, 0),  # asks for nothing
    ]
    await a.send(*[encode_uint(1) + encode_uint(m.REQUEST) + m.encode(r) for r in bad])
    await a.send(
        encode_uint(1) + encode_uint(m.SYNC) + Writer().uint(0).uint(0).uint(2**53 - 1).uint(0).bytes()
    )
    assert await a.closed_by_server()  # the absurd length closes it; the requests before got noData
    await still_serves(port, log, make_store)
    assert any(isinstance(e, WireError) and "out of range" in str(e) for e in errors)


async def test_silence_times_out(server):
    port, log, errors = server
    a = await Attacker.connect(port)
    with trio.fail_after(5):
        assert await a.closed_by_server()
        while not errors:  # the handler records the error just after the socket closes
            await trio.sleep(0.01)
    assert any(isinstance(e, PeerTimeout) for e in errors)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(st.binary(min_size=0, max_size=64), min_size=1, max_size=5))
async def test_fuzzed_frames_after_the_handshake(frames, tmp_path_factory):
    from corelog import Store

    with Store(tmp_path_factory.mktemp("fz") / "s", sync=False) as store:
        log = store.get("w")
        log.append([b"x%d" % i for i in range(10)])
        head = log.head()
        errors: list = []
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                lambda task_status: serve_hypercore(
                    store, handler_errors=errors, timeout=0.5, task_status=task_status
                )
            )
            a = await Attacker.connect(port)
            await a.open_channel(log)
            await a.send(*frames)
            with trio.fail_after(5):
                await a.closed_by_server(2.0)
            for e in errors:
                assert isinstance(e, ProtocolError | trio.BrokenResourceError), e
            nursery.cancel_scope.cancel()
        assert log.head() == head


async def test_a_lying_server_cannot_change_the_replica(store, make_store, monkeypatch):
    log = store.get("w")
    log.append([b"b%d" % i for i in range(40)])
    answer = peer_module.Peer.answer

    def lying(self, req):
        if req.upgrade is not None:
            head = self.log.head()
            self.send(
                m.Data(
                    req.id,
                    head.fork,
                    upgrade=m.DataUpgrade(0, head.length, [], [], b"\x01\x00" + bytes(64) + b"\x00\x00"),
                    manifest=self.log.manifest,
                )
            )
            return
        answer(self, req)

    monkeypatch.setattr(peer_module.Peer, "answer", lying)
    replica = make_store().get(key=log.key)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_hypercore(store, task_status=task_status))
        with pytest.raises(ProofError, match="lacks node|does not verify"):
            await connect_hypercore(replica, "127.0.0.1", port)
        nursery.cancel_scope.cancel()
    assert (replica.length, replica.contiguous_length) == (0, 0)


async def test_two_histories_from_one_key_are_a_conflict(make_store):
    """A writer that signs two different trees (same key, same fork) is caught, as hypercore's conflict check does."""
    from corelog.errors import Conflict

    seed = bytes(range(32))
    a, b = make_store().get("w", key_seed=seed), make_store().get("w", key_seed=seed)
    a.append([b"a%d" % i for i in range(10)])
    b.append([b"b%d" % i for i in range(12)])
    replica = make_store().get(key=a.key)
    async with trio.open_nursery() as nursery:
        pa = await nursery.start(lambda task_status: serve_hypercore(a.store, task_status=task_status))
        pb = await nursery.start(lambda task_status: serve_hypercore(b.store, task_status=task_status))
        await connect_hypercore(replica, "127.0.0.1", pa)
        assert replica.contiguous_length == 10
        with pytest.raises(Conflict):
            await connect_hypercore(replica, "127.0.0.1", pb)
        nursery.cancel_scope.cancel()
    assert replica.conflict is not None and replica.contiguous_length == 10
    assert [replica.get(i) for i in range(10)] == [b"a%d" % i for i in range(10)]
