"""The peer's requests we answer: queued as small records, read only when the driver can write.

Part of the sans-IO :class:`~._replicator.Replicator` (see its theory of
operation). A Request from the peer waits in ``reads`` (at most our announced
``max_inflight``: the Connection refuses more) until the driver asks for the
next answer; only then does a :class:`~._work.Read` exist, which the driver
runs off the loop and hands back to become one Data (or NoData) frame. A tail
request (``start`` at our end, same fork) waits in ``parked`` until its log
changes (``unpark``), so a live peer gets an append half a round trip later.
"""

from __future__ import annotations

from collections import deque

from ._connection import ChannelState, Connection
from ._messages import Data, NoData, Request
from ._work import Limits, Read, Stats, _Channel


class Answers:
    """The answering side of one connection (see the module docstring)."""

    def __init__(self, conn: Connection, limits: Limits, stats: Stats, out: list[bytes]):
        self.conn = conn
        self.limits = limits
        self.stats = stats
        self.out = out  # the Replicator's outbox (shared list)
        self.reads: deque[tuple[_Channel, Request]] = deque()
        self.parked: dict[bytes, list[tuple[_Channel, Request]]] = {}  # peer's tails, by channel

    def add(self, ch: _Channel, msg: Request) -> None:
        self.reads.append((ch, msg))  # small; bounded by our max_inflight (Connection checks)

    def park(self, ch: _Channel, msg: Request) -> bool:
        """Keep a tail request (one we cannot answer until the log grows); False if it is none."""
        log = ch.log
        if msg.fork == log.fork and msg.start == log.contiguous_length:
            self.parked.setdefault(log.discovery_key, []).append((ch, msg))
            return True
        return False

    def unpark(self, dkey: bytes) -> None:
        """The log changed: its parked tails are read again (and parked again if nothing is new)."""
        parked = self.parked.pop(dkey, None)
        if parked:
            self.reads.extend(parked)

    def drop(self, dkey: bytes) -> None:
        """The channel closed: the peer's tails on it die with it."""
        self.parked.pop(dkey, None)

    def clear(self) -> None:
        self.reads.clear()
        self.parked.clear()

    def read(self, ch: _Channel, msg: Request) -> Read:
        """The storage work answering ``msg`` (its size estimated from what we hold)."""
        log = ch.log
        avg = log.byte_length // log.length + 8 if log.length else 8
        end = min(msg.end, log.contiguous_length) if msg.fork == log.fork else msg.end
        span = min(max(0, end - msg.start), self.limits.batch_blocks) + 1  # (what we hold)
        return Read(
            log,
            msg,
            ch,
            self.conn.channel_number(log.discovery_key),
            self.conn.send_limit,
            self.limits.batch_blocks,
            estimate=min(span * avg, self.conn.send_limit),
        )

    def no_data(self, ch: _Channel, rid: int, reason: str) -> None:
        dkey = ch.log.discovery_key
        if self.conn.channel_state(dkey) is ChannelState.OPEN:
            self.out.append(self.conn.send(NoData(self.conn.channel_number(dkey), rid, reason)))

    def read_done(self, work: Read) -> None:
        """Queue the frame answering a finished Read (raises the Read's own error, if any)."""
        if work.error is not None:
            raise work.error
        ch, msg = work.channel, work.request
        if self.conn.channel_state(ch.log.discovery_key) is not ChannelState.OPEN:
            return
        if work.proof is None:
            self.no_data(ch, msg.id, work.reason or "cannot answer")
            return
        proof = work.proof
        self.out.append(self.conn.send(Data.from_proof(work.number, msg.id, proof)))
        self.stats.blocks_sent += len(proof.blocks)
        self.stats.bytes_sent += work.block_bytes
