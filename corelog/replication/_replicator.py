"""The replicator: what to announce, request, serve and commit, per log. Sans-IO.

A ``Replicator`` owns a :class:`Connection` and a set of logs (or a whole
Store). It takes bytes from the transport and returns the bytes to send back;
in between it verifies and commits data through the synchronous corelog API
(``Log.check_head``, ``Log.apply``, ``Log.proof``). It never touches a socket,
so the memory, TCP and WebRTC transports share it unchanged.

Per log (channel):

* On open, each side announces its signed head (``Head``).
* A reader behind the announced head requests ranges, pipelined up to the
  peer's in-flight limit; every answer is a proof that ``Log.apply`` verifies
  and commits in one transaction, or rejects, writing nothing.
* A higher fork makes the server answer from the common prefix (its
  truncation history), and ``apply`` reorganises the replica.
* Two valid heads at the same fork and length with different trees mark the
  log conflicted and close that channel; other channels carry on.
* Every local change (an append, or a commit from another peer) is announced
  on every open channel of that log: that is how live updates and relaying
  (A -> B -> C) work, without polling.

Anything invalid from the peer (bad proof, forged signature, garbage, a frame
too large, unsolicited data) is fatal for the connection: like h11, the
methods never raise for the peer's faults; they return the bytes to send (an
``Error`` frame telling the peer why) and set ``error``, which the transport
raises after sending them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from corelog import Head as LogHead
from corelog import Log, Proof, Store
from corelog.errors import Conflict, CorelogError, InvalidProof, NotWritable, OutOfRange

from ._connection import CLOSED, NEED_DATA, ChannelState, Connection
from ._messages import Close, Data, Done, Head, Hello, Message, NoData, Open, Ping, Pong, Request
from .errors import ProtocolError

DEFAULT_BATCH_BYTES = 512 * 1024
DEFAULT_BATCH_BLOCKS = 4096


@dataclass
class _Channel:
    log: Log
    remote_head: Head | None = None
    inflight: dict[int, tuple[int, int]] = field(default_factory=dict)  # request id -> (start, end)
    next_start: int = 0
    closed_reason: str | None = None


@dataclass
class Stats:
    blocks_received: int = 0
    blocks_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    requests_sent: int = 0
    conflicts: list[bytes] = field(default_factory=list)
    rejected_opens: int = 0


class Replicator:
    """Replicates ``logs`` (or every log of ``store``) over one connection, sans-IO."""

    def __init__(
        self,
        source: Store | Log | Iterable[Log],
        *,
        handshake_hash: bytes,
        initiator: bool,
        max_frame: int | None = None,
        max_inflight: int = 16,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        batch_blocks: int = DEFAULT_BATCH_BLOCKS,
    ):
        kw = {} if max_frame is None else {"max_frame": max_frame}
        self.conn = Connection(handshake_hash, initiator=initiator, max_inflight=max_inflight, **kw)
        self.store: Store | None = source if isinstance(source, Store) else None
        if isinstance(source, Store):
            logs = list(source)
        elif isinstance(source, Log):
            logs = [source]
        else:
            logs = list(source)
        self._logs: dict[bytes, Log] = {log.discovery_key: log for log in logs}
        self._channels: dict[bytes, _Channel] = {}
        self._rejected: dict[bytes, bytes] = {}  # discovery key -> capability of an Open we could not check
        self.batch_bytes = batch_bytes
        self.batch_blocks = batch_blocks
        self.stats = Stats()
        self.error: BaseException | None = None
        self._barrier_sent = False
        self._barrier_done = False
        self._done_sent = False
        self.remote_done = False
        self._out: list[bytes] = []

    # --- public, sans-IO ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.conn.closed

    @property
    def logs(self) -> list[Log]:
        return list(self._logs.values())

    def start(self) -> bytes:
        """Bytes to send first: Hello, an Open per log, and a barrier Ping."""
        self._out.append(self.conn.hello())
        for dkey, log in self._logs.items():
            self._out.append(self.conn.open(dkey, log.key))
        self._out.append(self.conn.send(Ping(0)))
        self._barrier_sent = True
        return self._flush()

    def add_log(self, log: Log) -> bytes:
        """Start replicating one more log on this connection."""
        if log.discovery_key in self._logs and self.conn.channel_state(log.discovery_key) is not None:
            return b""
        dkey = log.discovery_key
        self._logs[dkey] = log
        if self.conn.closed or not self._barrier_sent:
            return b""  # start() will open it

        def open_channel() -> None:
            earlier = self._rejected.pop(dkey, None)
            if earlier is not None and not self.conn.check_capability(log.key, earlier):
                return  # the peer opened this channel without knowing the key: stay silent
            self._out.append(self.conn.open(dkey, log.key))
            if self.conn.channel_state(dkey) is ChannelState.OPEN:
                ch = self._channels.setdefault(dkey, _Channel(log, next_start=log.contiguous_length))
                self._announce(ch)

        self._guard(open_channel)
        return self._flush()

    def receive_data(self, data: bytes) -> bytes:
        """Feed bytes from the peer (``b""`` at EOF); returns the bytes to send back.

        On a fatal error the returned bytes end with an Error frame and ``error`` is set.
        """
        self.conn.receive_data(data)
        self._guard(self._process)
        return self._flush()

    def local_changed(self, log: Log) -> bytes:
        """A log changed locally (append, truncate, or data from another peer): announce it."""
        dkey = log.discovery_key
        ch = self._channels.get(dkey)
        if ch is None or self.conn.closed or self.conn.channel_state(dkey) is not ChannelState.OPEN:
            return b""
        self._guard(lambda: self._announce(ch))
        return self._flush()

    @property
    def synced(self) -> bool:
        """True once the barrier passed and every open channel holds what the peer announced."""
        if not self._barrier_done:
            return False
        for dkey, ch in self._channels.items():
            if self.conn.channel_state(dkey) is not ChannelState.OPEN or ch.closed_reason:
                continue
            if ch.inflight or self._wants(ch):
                return False
        return True

    def channel_open(self, log: Log) -> bool:
        return self.conn.channel_state(log.discovery_key) is ChannelState.OPEN

    # --- internals --------------------------------------------------------------------

    def _flush(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _guard(self, fn) -> None:
        if self.error is not None:
            return
        try:
            fn()
        except (ProtocolError, CorelogError) as exc:
            self.error = exc
            if not self.conn.closed:
                self._out.append(self.conn.error_frame(exc))

    def _process(self) -> None:
        while True:
            ev = self.conn.next_event()
            if ev is NEED_DATA or ev is CLOSED:
                break
            self._handle(ev)  # type: ignore[arg-type]
        self._pump_all()
        if not self._done_sent and self.synced:
            self._done_sent = True
            self._out.append(self.conn.send(Done()))

    def _handle(self, msg: Message) -> None:
        if isinstance(msg, Hello):
            return
        if isinstance(msg, Ping):
            self._out.append(self.conn.send(Pong(msg.id)))
            return
        if isinstance(msg, Pong):
            self._barrier_done = True
            return
        if isinstance(msg, Done):
            self.remote_done = True
            return
        if isinstance(msg, Open):
            self._on_open(msg)
            return
        dkey = self.conn.discovery_key_of(msg.channel)  # type: ignore[attr-defined]
        ch = self._channels.get(dkey)
        if isinstance(msg, Close):
            if ch is not None:
                ch.closed_reason = f"closed by peer: {msg.reason}"
                ch.inflight.clear()
            return
        if ch is None:  # open on the wire but not accepted by us: only reachable by a bug
            raise ProtocolError("message on a channel we never accepted")
        if isinstance(msg, Head):
            self._on_head(ch, msg)
        elif isinstance(msg, Request):
            self._on_request(ch, msg)
        elif isinstance(msg, Data):
            self._on_data(ch, msg)
        elif isinstance(msg, NoData):
            ch.inflight.pop(msg.id, None)
            if not ch.inflight:
                ch.next_start = ch.log.contiguous_length

    def _on_open(self, msg: Open) -> None:
        dkey = msg.discovery_key
        log = self._logs.get(dkey)
        if log is None and self.store is not None:
            log = self.store.find(dkey)
            if log is not None:
                self._logs[dkey] = log
        if log is None or not self.conn.check_capability(log.key, msg.capability):
            # Unknown log or a peer that does not know the key: say nothing at all.
            self.stats.rejected_opens += 1
            if log is None:
                self._rejected[dkey] = msg.capability  # checked if we add the log later
            return
        if self.conn.channel_state(dkey) is ChannelState.REMOTE_OPEN:
            self._out.append(self.conn.open(dkey, log.key))
        ch = self._channels.setdefault(dkey, _Channel(log, next_start=log.contiguous_length))
        self._announce(ch)

    def _announce(self, ch: _Channel) -> None:
        log = ch.log
        h = log.head()
        if not h.signature:
            return  # a fresh replica has nothing signed to announce
        self._out.append(
            self.conn.send(
                Head(
                    self.conn.channel_number(log.discovery_key),
                    h.fork,
                    h.length,
                    h.tree_hash,
                    h.signature,
                    h.byte_length,
                    log.contiguous_length,
                )
            )
        )

    def _on_head(self, ch: _Channel, msg: Head) -> None:
        if ch.closed_reason:
            return
        head = LogHead(msg.fork, msg.length, msg.tree_hash, msg.signature, msg.byte_length)
        try:
            ch.log.check_head(head)  # InvalidSignature is fatal for the connection
        except Conflict as exc:
            self._close_conflict(ch, exc)
            return
        if msg.contiguous > msg.length:
            raise ProtocolError("Head claims more blocks than its signed length")
        ch.remote_head = msg

    def _close_conflict(self, ch: _Channel, exc: Conflict) -> None:
        dkey = ch.log.discovery_key
        ch.closed_reason = str(exc)
        ch.inflight.clear()
        self.stats.conflicts.append(ch.log.key)
        if self.conn.channel_state(dkey) not in (None, ChannelState.CLOSED):
            self._out.append(self.conn.send(Close(self.conn.channel_number(dkey), "conflict")))

    def _on_request(self, ch: _Channel, msg: Request) -> None:
        log = ch.log
        number = self.conn.channel_number(log.discovery_key)
        fork, contig = log.fork, log.contiguous_length
        if ch.closed_reason or log.conflict:
            self._out.append(self.conn.send(NoData(number, msg.id, "conflicted")))
            return
        if msg.fork > fork:
            self._out.append(self.conn.send(NoData(number, msg.id, "our fork is older")))
            return
        if msg.fork == fork:
            have = start = msg.start
        else:
            have = start = log.common_prefix(msg.fork, msg.contiguous)
        end = min(contig, start + max(1, msg.end - msg.start), start + self.batch_blocks)
        if start > contig or (start == end and msg.fork == fork):
            self._out.append(self.conn.send(NoData(number, msg.id, "nothing to send from there")))
            return
        try:
            proof = log.proof(start, end, have=have)
        except OutOfRange:
            self._out.append(self.conn.send(NoData(number, msg.id, "range not held")))
            return
        limit = (self.conn.remote_hello.max_frame if self.conn.remote_hello else self.conn.max_frame) - 4096
        size = sum(len(b) for b in proof.blocks) + 40 * len(proof.nodes)
        while size > limit and end > start + 1:  # clip to the peer's frame limit
            end = start + max(1, (end - start) // 2)
            proof = log.proof(start, end, have=have)
            size = sum(len(b) for b in proof.blocks) + 40 * len(proof.nodes)
        self._out.append(
            self.conn.send(
                Data(
                    number,
                    msg.id,
                    proof.fork,
                    proof.length,
                    proof.signature,
                    proof.start,
                    list(proof.blocks),
                    [[n.index, n.size, n.hash] for n in proof.nodes],
                    proof.have,
                    proof.manifest,
                )
            )
        )
        self.stats.blocks_sent += len(proof.blocks)
        self.stats.bytes_sent += size

    def _on_data(self, ch: _Channel, msg: Data) -> None:
        ch.inflight.pop(msg.id, None)
        if ch.closed_reason:
            return
        proof = Proof.build(
            msg.fork, msg.length, msg.signature, msg.start, msg.blocks, msg.nodes, msg.have, msg.manifest
        )
        log = ch.log
        if proof.start > log.contiguous_length and proof.fork == log.fork:
            # an earlier answer was clipped: drop this one, re-request from where we are
            if not ch.inflight:
                ch.next_start = log.contiguous_length
            return
        try:
            log.apply(proof)
        except Conflict as exc:
            self._close_conflict(ch, exc)
            return
        except NotWritable:
            raise ProtocolError("the peer sent data for a log we write") from None
        self.stats.blocks_received += len(proof.blocks)
        self.stats.bytes_received += sum(len(b) for b in proof.blocks)
        if not ch.inflight:
            ch.next_start = log.contiguous_length

    # --- requesting -----------------------------------------------------------------------

    def _wants(self, ch: _Channel) -> bool:
        rh = ch.remote_head
        log = ch.log
        if rh is None or log.writable or ch.closed_reason:
            return False
        if rh.fork > log.fork:
            return True
        return rh.fork == log.fork and rh.contiguous > log.contiguous_length

    def _pump_all(self) -> None:
        for ch in list(self._channels.values()):
            if not self.conn.can_request:
                return
            self._pump(ch)

    def _pump(self, ch: _Channel) -> None:
        if not self._wants(ch) or self.conn.channel_state(ch.log.discovery_key) is not ChannelState.OPEN:
            return
        log = ch.log
        rh = ch.remote_head
        assert rh is not None
        dkey = log.discovery_key
        fork, contig = log.fork, log.contiguous_length
        step = self._batch_for(rh)
        if rh.fork != fork:  # reorg: one request at a time until we are on the new fork
            if not ch.inflight and self.conn.can_request:
                rid = self.conn.next_request_id
                self._out.append(self.conn.request(dkey, fork, contig, contig, contig + step))
                ch.inflight[rid] = (contig, contig + step)
                self.stats.requests_sent += 1
            return
        if not ch.inflight:
            ch.next_start = contig
        while ch.next_start < rh.contiguous and self.conn.can_request:
            start = ch.next_start
            end = min(rh.contiguous, start + step)
            rid = self.conn.next_request_id
            self._out.append(self.conn.request(dkey, fork, start, start, end))
            ch.inflight[rid] = (start, end)
            ch.next_start = end
            self.stats.requests_sent += 1

    def _batch_for(self, rh: Head) -> int:
        avg = rh.byte_length / rh.length if rh.length else 1
        return max(1, min(self.batch_blocks, int(self.batch_bytes / max(avg, 1))))


__all__ = ["Replicator", "Stats", "InvalidProof"]
