"""Hypothesis fuzzes every frame field after a completed handshake, against a real Session.

The victim serves a writable log and replicates another one. Whatever arrives, the victim either
keeps serving (it answers a final Ping) or ends the connection with a typed CorelogError after
telling the peer why; its writable log never changes and its replica only ever gains verified data.
"""

from __future__ import annotations

import msgpack
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corelog.errors import CorelogError
from corelog.replication import Session
from corelog.replication._connection import Connection
from corelog.replication._messages import (
    _REGISTRY,
    Data,
    FrameDecoder,
    Head,
    Hello,
    Open,
    Ping,
    Pong,
    Request,
    decode,
    encode,
)

HH = bytes(range(64))


class _Secured(trio.abc.Stream):
    """A stream that claims a finished handshake (so the fuzzer speaks frames directly)."""

    handshake_hash = HH
    remote_public_key = bytes(32)

    def __init__(self, inner: trio.abc.Stream):
        self.inner = inner

    async def send_all(self, data):
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self):
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None):
        return await self.inner.receive_some(max_bytes)

    async def aclose(self):
        await self.inner.aclose()


ints = st.one_of(
    st.integers(0, 12),
    st.integers(0, 2**16),
    st.sampled_from([2**31, 2**32 - 1, 2**53 - 1, 2**53, 2**63 - 1, 2**64 - 1]),
    st.integers(-(2**63), -1),
)
scalars = st.one_of(ints, st.binary(max_size=80), st.none(), st.text(max_size=20), st.booleans(), st.floats())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=12)


@st.composite
def frames(draw, valid_data: Data, valid_head: Head):
    kind = draw(st.sampled_from(["random", "mutated-data", "mutated-head", "request", "raw"]))
    if kind == "raw":
        body = draw(st.binary(max_size=200))
        return len(body).to_bytes(4, "big") + body
    if kind == "random":
        code = draw(st.one_of(st.sampled_from(sorted(_REGISTRY)), st.integers(0, 300)))
        cls = _REGISTRY.get(code)
        n = len(cls.TYPES) if cls and draw(st.booleans()) else draw(st.integers(0, 12))
        fields = [draw(values) for _ in range(n)]
        body = msgpack.packb([code, *fields], use_bin_type=True)
        return len(body).to_bytes(4, "big") + body
    if kind == "request":
        start = draw(ints)
        return encode(
            Request(0, draw(st.integers(0, 100)), 0, 0, abs(start) % 2**60, draw(st.integers(0, 2**60)))
        )
    base = valid_data if kind == "mutated-data" else valid_head
    fields = [getattr(base, f) for f in base.__slots__]
    for _ in range(draw(st.integers(1, 3))):
        fields[draw(st.integers(0, len(fields) - 1))] = draw(values)
    body = msgpack.packb([base.CODE, *fields], use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


def _fixture(make_store):
    victim = make_store("victim")
    own = victim.get("own")
    own.append([b"own %d" % i for i in range(10)])
    writer = make_store("writer").get("w")
    writer.append([b"w %d" % i for i in range(10)])
    rep = victim.get(key=writer.key)
    rep.apply(writer.proof(0, 5))
    return victim, own, writer, rep


def test_fuzzed_frames_after_handshake_against_a_real_session(make_store):
    victim, own, writer, rep = _fixture(make_store)
    own_head = own.head()
    h = writer.head()
    valid_head = Head(1, h.fork, h.length, h.tree_hash, h.signature, h.byte_length, writer.length)
    p = writer.proof(5, 10, have=5)
    valid_data = Data(
        1, 0, p.fork, p.length, p.signature, p.start, list(p.blocks), [list(n) for n in p.nodes], p.have, None
    )

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(frames(valid_data, valid_head), min_size=1, max_size=6))
    def run(fuzz):
        outcome = trio.run(_one, victim, own, rep, fuzz, valid_head)
        assert outcome in ("served", "closed"), outcome
        assert own.head() == own_head and own.length == 10
        assert rep.contiguous_length in (5, 10) and rep.audit().ok

    run()


async def _one(victim, own, rep, fuzz, valid_head):
    a, b = trio.testing.memory_stream_pair()
    session = Session(_Secured(b), victim, initiator=False, idle_timeout=3, progress_timeout=3)
    conn = Connection(HH, initiator=True)
    result: list[BaseException | None] = []

    async def run_victim():
        try:
            await session.run()
            result.append(None)
        except CorelogError as exc:  # typed: fine
            result.append(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            result.append(exc)

    dec = FrameDecoder(1 << 30)
    got: list = []

    async def receive_until(pred, timeout=1.0):
        with trio.move_on_after(timeout):
            while True:
                while (body := dec.next_frame()) is not None:
                    m = decode(body, max_array_len=1 << 20)
                    got.append(m)
                    if pred(m):
                        return m
                data = await a.receive_some(1 << 20)
                if not data:
                    return None
                dec.feed(data)
        return None

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_victim)
            hello = conn.hello()
            await a.send_all(
                hello
                + conn.open(own.discovery_key, own.key)
                + conn.open(rep.discovery_key, rep.key)
                + conn.send(Ping(0))
            )
            await receive_until(lambda m: isinstance(m, Pong))
            await a.send_all(encode(valid_head))  # the victim now requests [5, 10) from us
            try:
                await a.send_all(b"".join(fuzz) + encode(Ping(777)))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            answer = await receive_until(
                lambda m: isinstance(m, Pong) and m.id == 777 or type(m).__name__ == "Error"
            )
            served = isinstance(answer, Pong)
            await a.aclose()
            with trio.fail_after(5):
                while not result:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert not isinstance(result[0], BaseException) or isinstance(
        result[0], CorelogError | trio.BrokenResourceError | trio.ClosedResourceError
    )
    errors = [m for m in got if type(m).__name__ == "Error"]
    if not served:
        assert errors or result[0] is not None, "a closed connection says why"
    assert Hello and Open  # (frames the fuzzer sent through Connection)
    return "served" if served else "closed"
