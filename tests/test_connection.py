"""The sans-IO Connection's state table and limits, message by message (no logs, no I/O)."""

from __future__ import annotations

import os

import pytest

from corelog.replication import CLOSED, NEED_DATA, ChannelState, Connection, LocalProtocolError, capability
from corelog.replication._messages import (
    Close,
    Data,
    Done,
    Error,
    Head,
    Hello,
    NoData,
    Open,
    Ping,
    Request,
    encode,
)
from corelog.replication.errors import FrameTooLarge, ProtocolError, RemoteError

HH = os.urandom(64)
KEY = os.urandom(32)
DKEY = os.urandom(32)


def pair(**kw):
    a, b = Connection(HH, initiator=True, **kw), Connection(HH, initiator=False, **kw)
    b.receive_data(a.hello())
    a.receive_data(b.hello())
    assert isinstance(a.next_event(), Hello) and isinstance(b.next_event(), Hello)
    return a, b


def deliver(src_bytes: bytes, dst: Connection):
    dst.receive_data(src_bytes)
    out = []
    while (ev := dst.next_event()) is not NEED_DATA:
        out.append(ev)
        if ev is CLOSED:
            break
    return out


def open_channel(a, b):
    deliver(a.open(DKEY, KEY), b)
    deliver(b.open(DKEY, KEY), a)
    assert a.channel_state(DKEY) is b.channel_state(DKEY) is ChannelState.OPEN


def test_channel_state_table():
    a, b = pair()
    assert a.channel_state(DKEY) is None
    [msg] = deliver(a.open(DKEY, KEY), b)
    assert (
        a.channel_state(DKEY) is ChannelState.LOCAL_OPEN and b.channel_state(DKEY) is ChannelState.REMOTE_OPEN
    )
    assert b.check_capability(KEY, msg.capability) and not b.check_capability(os.urandom(32), msg.capability)
    deliver(b.open(DKEY, KEY), a)
    assert a.open_channels == b.open_channels == [DKEY]
    deliver(a.send(Close(a.channel_number(DKEY), "bye")), b)
    assert a.channel_state(DKEY) is b.channel_state(DKEY) is ChannelState.CLOSED


def test_capabilities_are_bound_to_role_and_handshake():
    mine = capability(KEY, HH, True)
    assert mine != capability(KEY, HH, False)  # a reflected capability does not verify
    assert mine != capability(KEY, os.urandom(64), True)  # nor one from another connection
    a, b = pair()
    assert not a.check_capability(KEY, a.local_capability(KEY))  # our own, sent back to us


def test_local_misuse_raises_and_changes_nothing():
    a = Connection(HH, initiator=True)
    with pytest.raises(LocalProtocolError, match="Hello first"):
        a.send(Ping(1))
    a.hello()
    with pytest.raises(LocalProtocolError, match="already sent"):
        a.hello()
    with pytest.raises(LocalProtocolError, match="never opened"):
        a.send(Head(7, 0, 1, bytes(32), bytes(64), 1, 1))
    a2, b2 = pair()
    a2.open(DKEY, KEY)
    with pytest.raises(LocalProtocolError, match="not open"):
        a2.request(DKEY, 0, 0, 0, 1)
    a3, b3 = pair()
    open_channel(a3, b3)
    with pytest.raises(LocalProtocolError, match="never made"):
        a3.send(NoData(a3.channel_number(DKEY), 5, "x"))  # answering a request nobody sent
    assert a3.channel_state(DKEY) is ChannelState.OPEN


def test_inflight_limit_both_ways():
    a, b = pair(max_inflight=2)
    open_channel(a, b)
    frames = a.request(DKEY, 0, 0, 0, 10) + a.request(DKEY, 0, 0, 10, 20)
    assert a.inflight == 2 and not a.can_request
    with pytest.raises(LocalProtocolError, match="in flight"):
        a.request(DKEY, 0, 0, 20, 30)
    assert len(deliver(frames, b)) == 2
    # a peer ignoring our limit is a protocol error
    number = a.channel_number(DKEY)
    with pytest.raises(ProtocolError, match="in flight"):
        deliver(encode(Request(number, 99, 0, 0, 0, 1)), b)


def test_unsolicited_answers_and_reused_ids():
    a, b = pair()
    open_channel(a, b)
    number = b.channel_number(DKEY)
    with pytest.raises(ProtocolError, match="unsolicited"):
        deliver(encode(NoData(number, 42, "nothing")), a)
    a2, b2 = pair()
    open_channel(a2, b2)
    n2 = a2.channel_number(DKEY)
    req = encode(Request(n2, 1, 0, 0, 0, 1))
    with pytest.raises(ProtocolError, match="reused request id"):
        deliver(req + req, b2)
    a3, b3 = pair()
    open_channel(a3, b3)
    a3.request(DKEY, 0, 0, 0, 1)
    data = encode(Data(b3.channel_number(DKEY), 0, 0, 1, bytes(64), 0, [b"x"], [], 0, None))
    assert isinstance(deliver(data, a3)[0], Data) and a3.inflight == 0


@pytest.mark.parametrize(
    "wire, error",
    [
        (encode(Hello(1, 1 << 20, 4)), "Hello twice"),
        (encode(Head(3, 0, 1, bytes(32), bytes(64), 1, 1)), "never opened"),
        (encode(Open(0, b"short", bytes(32))), "malformed"),
        (b"\x00\x00\x00\x02\x91\x63", "unknown message code"),
        (b"\x00\x00\x00\x03\x92\x00\xc0", "needs 3 fields"),
    ],
)
def test_remote_violations(wire, error):
    a, b = pair()
    with pytest.raises(ProtocolError, match=error):
        deliver(wire, b)
    with pytest.raises(ProtocolError):  # the connection stays failed
        b.next_event()


def test_version_limits_error_and_eof():
    a = Connection(HH, initiator=True)
    a.receive_data(encode(Hello(2, 1 << 20, 4)))
    with pytest.raises(ProtocolError, match="version 2"):
        a.next_event()
    b = Connection(HH, initiator=False, max_frame=4096)
    b.receive_data((100_000).to_bytes(4, "big"))
    with pytest.raises(FrameTooLarge):
        b.next_event()
    c, d = pair()
    with pytest.raises(RemoteError, match="going away"):
        deliver(c.send(Error("Shutdown", "going away")), d)
    e, f = pair()
    assert deliver(e.send(Done()), f)[0] == Done()
    f.receive_data(b"")
    assert f.next_event() is CLOSED
    g, h = pair()
    h.receive_data(b"\x00\x00\x00\x09abc")
    h.receive_data(b"")
    with pytest.raises(ProtocolError, match="middle of a frame"):
        h.next_event()


def test_a_send_refused_by_the_size_check_records_nothing():
    a = Connection(HH, initiator=True)
    b = Connection(HH, initiator=False, max_frame=1024)  # b takes frames of at most 1 KiB
    b.receive_data(a.hello())
    a.receive_data(b.hello())
    assert isinstance(a.next_event(), Hello) and isinstance(b.next_event(), Hello)
    open_channel(a, b)
    assert a.send_limit == 1024
    # b asks for block 0; a's answer with a 2,000-byte block is over b's limit
    [req] = deliver(b.request(DKEY, 0, 0, 0, 1), a)
    number = a.channel_number(DKEY)
    before = (set(a._remote_outstanding), dict(a._outstanding), a.next_request_id, a.inflight, dict(a._state))
    with pytest.raises(LocalProtocolError, match="exceeds the peer's limit"):
        a.send(Data(number, req.id, 0, 1, bytes(64), 0, [bytes(2000)], [], 0, None))
    assert (
        set(a._remote_outstanding),
        dict(a._outstanding),
        a.next_request_id,
        a.inflight,
        dict(a._state),
    ) == before
    # the request is still owed: a fitting answer to it goes out, and b takes it as that answer
    [answer] = deliver(a.send(NoData(number, req.id, "too big for your max_frame")), b)
    assert isinstance(answer, NoData) and b.inflight == 0
    # a Request refused by the size check is not in flight and does not use up its id
    a.max_frame = 4  # (our own limit, lowered: no Request frame fits)
    with pytest.raises(LocalProtocolError, match="exceeds"):
        a.request(DKEY, 0, 0, 0, 1)
    assert a.inflight == 0 and a.next_request_id == before[2] and a._outstanding == {}
    a.max_frame = 1 << 20
    [sent] = deliver(a.request(DKEY, 0, 0, 0, 1), b)
    assert isinstance(sent, Request) and sent.id == before[2] and a.inflight == 1
