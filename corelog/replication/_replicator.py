"""The replicator: what to announce, request, serve and commit, per log. Sans-IO.

A ``Replicator`` owns a :class:`Connection` and a set of logs (or a whole
Store). It never touches a socket, never blocks on storage and never sleeps:
like h11 it is a state machine the driver (:mod:`._session`) feeds and drains.

Driver interface (what ``_session.Session`` does)::

    rep.start()                     queue Hello (+ the initiator's Opens, a barrier Ping)
    rep.feed(data)                  bytes from the peer; validated frames update state
    rep.data_to_send() -> bytes     control frames (Hello, Open, Head, Request, NoData, Pong, ...)
    rep.next_commit() -> Commit     received Data to verify and commit:  work.run() off the loop,
    rep.commit_done(work)                                                then hand it back
    rep.next_read() -> Read         a peer's Request to answer:  work.run() (range read) off the loop,
    rep.read_done(work) -> bytes                                 then the Data frame to send
    rep.tick()                      after ``next_deadline``: retry backed-off channels

``receive_data``/``local_changed``/``add_log`` are the same with storage work
run inline (tests and simple synchronous drivers).

The Replicator dispatches frames and owns the channels (opening, heads,
conflicts, errors). Two helpers it owns hold the rest: ``Requests``
(:mod:`._requests`: what we ask the peer for, within its credit) and
``Answers`` (:mod:`._answers`: the peer's requests we answer); the limits,
channel records and storage work items are in :mod:`._work`.

Per log (channel):

* Only the initiator opens channels, and only for the logs it was given. A
  responder answers an Open only when its capability proves the peer knows the
  log's key; unknown logs and unproven Opens get the very same silence. So a
  peer learns nothing about a log whose key it does not already have.
* On open, each side announces its signed head (``Head``), coalesced per
  channel and never echoed back to the peer that told us the same head.
* A reader behind the announced head requests ranges, pipelined up to the
  peer's in-flight limit (capped by ``max_requests``). Each answer becomes a
  ``Commit`` (``Log.apply`` verifies and commits it in one transaction, or
  rejects it, writing nothing).
* Slow start: a window of requests (all answered, then new ones) opens with a
  small request, 1/2**SLOW_START of a batch, and each next request doubles up
  to the batch size. The first answer is small, so its commit starts while the
  peer still reads the bigger ones instead of after a whole batch has been
  read, sent and decoded; the number of requests in flight is unchanged.
* Requests from the peer (at most our announced ``max_inflight``) wait as
  small records; the driver asks for the next answer only when it can write
  it, so answers are produced as fast as the peer drains them, never ahead.
* A window of requests that brings nothing usable (NoData, stale or gapped
  Data) backs off exponentially; after ``max_fruitless`` such rounds the
  channel gives up with a reason in ``failures`` (a one-shot sync then ends
  with an error rather than waiting forever).
* Live updates without a round trip: a ``live`` replicator that holds
  everything a peer announced *parks* one tail request per channel with it,
  for the blocks after its end (at most a quarter of the request credit;
  channels beyond that wait for Heads). The peer keeps a tail request that
  it cannot answer yet (``start`` at its end, same fork) and answers it as
  soon as the log grows (or reorganises), right after the Head: an append
  reaches a live replica in half a round trip. A parked request is an
  ordinary outstanding request (credit-bounded, dropped with its channel); a
  tail answered with NoData is not retried until the peer announces a new
  head, and tails never count as missing data (``synced``).
* A higher fork makes the server answer from the common prefix, and
  ``Log.apply`` decides against its own stored nodes what it keeps.
* Two valid heads at the same fork and length with different trees mark the
  log conflicted and close that channel (``stats.conflicts``); others go on.

Anything the peer sends that fails (bad proof, forged signature, garbage, a
frame too large, unsolicited data, a flood, or any unexpected exception while
handling its input) is fatal for this connection only: ``error`` is set, an
``Error`` frame telling the peer why is queued, and nothing else happens.
"""

from __future__ import annotations

import functools
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from corelog import Head as LogHead
from corelog import Log, Store
from corelog.errors import Conflict, InvalidProof, NotWritable

from ._answers import Answers
from ._connection import CLOSED, NEED_DATA, ChannelState, Connection
from ._messages import (
    Close,
    Data,
    Done,
    Head,
    Hello,
    Message,
    NoData,
    Open,
    Ping,
    Pong,
    Request,
)
from ._requests import Requests
from ._work import Commit, Limits, Read, Stats, _Channel
from .errors import ProtocolError


class Replicator:
    """Replicates ``logs`` (or the logs of ``store`` a peer proves it knows) over one connection."""

    def __init__(
        self,
        source: Store | Log | Iterable[Log],
        *,
        handshake_hash: bytes,
        initiator: bool,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
        live: bool = False,
        **overrides: int | float,
    ):
        limits = limits or Limits()
        for name, value in overrides.items():  # max_frame=..., max_inflight=..., batch_blocks=...
            if not hasattr(limits, name):
                raise TypeError(f"unknown replication limit {name!r}")
            if value is not None:
                setattr(limits, name, value)
        self.limits = limits
        self.conn = Connection(
            handshake_hash,
            initiator=initiator,
            max_frame=limits.max_frame,
            max_inflight=limits.max_inflight,
            max_requests=limits.max_requests,
            max_channels=limits.max_channels,
            max_array_len=limits.max_array_len,
        )
        self.initiator = initiator
        self.clock = clock
        self.live = live  # park tail requests with the peer (see "Live updates")
        self.store: Store | None = source if isinstance(source, Store) else None
        if isinstance(source, Store):
            # an initiator offers every log of its store; a responder waits to be asked by key
            logs = list(source) if initiator else []
        elif isinstance(source, Log):
            logs = [source]
        else:
            logs = list(source)
        self._logs: dict[bytes, Log] = {log.discovery_key: log for log in logs}
        self._channels: dict[bytes, _Channel] = {}
        self._rejected: OrderedDict[bytes, bytes] = OrderedDict()  # dkey -> capability, unproven
        self.stats = Stats()
        self.error: BaseException | None = None
        self._barrier_sent = False
        self._responder_barrier = False
        self._barrier_done = False
        self._done_sent = False
        self.remote_done = False
        self._out: list[bytes] = []
        self._pongs = 0  # Pongs queued since the driver last drained the outbox
        self._heads: OrderedDict[bytes, None] = OrderedDict()  # channels with a Head to announce
        self._commits: deque[Commit] = deque()
        self._answers = Answers(self.conn, limits, self.stats, self._out)  # the peer's requests
        self._requests = Requests(self.conn, limits, self.stats, self._out, clock, live)  # ours
        self._dummy_key = os.urandom(32)
        self._next_ping = 1
        self.progress_at = clock()  # last useful event from the peer (not Pings)
        self.backlog = 0  # bytes of received Data queued as Commits
        self.handled = 0  # frames received and handled (a driver wakes its tasks only when it grows)

    # --- state ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.conn.closed

    @property
    def logs(self) -> list[Log]:
        return list(self._logs.values())

    @property
    def synced(self) -> bool:
        """True once the barrier passed and every open channel holds what the peer announced."""
        return self._barrier_done and not self._requests.unsynced

    @property
    def busy(self) -> bool:
        """Work queued for the driver (frames, commits or answers)."""
        return bool(self._out or self._heads or self._commits or self._answers.reads)

    @property
    def wants_write(self) -> bool:
        """Frames or peer requests are queued for the writer."""
        return bool(self._out or self._heads or self._answers.reads)

    @property
    def has_commits(self) -> bool:
        """Received Data is queued for ``next_commit``."""
        return bool(self._commits)

    @property
    def next_deadline(self) -> float | None:
        """When ``tick()`` should run next (a backed-off channel may retry), if ever."""
        return self._requests.next_deadline

    def channel_open(self, log: Log) -> bool:
        return self.conn.channel_state(log.discovery_key) is ChannelState.OPEN

    @property
    def unanswered(self) -> list[Log]:
        """Logs we opened that the peer did not open back (it lacks them, or will not share them)."""
        if not self._barrier_done:
            return []
        return [
            log
            for dkey, log in self._logs.items()
            if self.conn.channel_state(dkey) is ChannelState.LOCAL_OPEN
        ]

    @property
    def finished(self) -> bool:
        """One-shot end: both sides hold what the other announced and nothing is left to write."""
        return self.synced and self.remote_done and not self.busy

    def ping(self) -> None:
        """Queue a keep-alive Ping (the peer answers Pong)."""
        if not self.conn.closed and self.error is None:
            self._out.append(self.conn.send(Ping(self._next_ping)))
            self._next_ping += 1

    # --- driver interface -------------------------------------------------------------

    def start(self) -> bytes:
        """Queue Hello, the initiator's Opens and a barrier Ping; returns the queued bytes."""
        self._out.append(self.conn.hello())
        if self.initiator:
            for dkey, log in self._logs.items():
                self._out.append(self.conn.open(dkey, log.key))
            self._out.append(self.conn.send(Ping(0)))
        # a responder sends its barrier Ping(0) right after its Pong(0): only then has it seen
        # (and answered) every Open of the initiator's first flight
        self._barrier_sent = True
        return self.data_to_send()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the peer (``b""`` at EOF). Never raises for the peer's faults: see ``error``."""
        self.conn.receive_data(data)
        self._guard(self._process)

    def data_to_send(self) -> bytes:
        """Control frames queued so far (Heads coalesced per channel)."""
        self._flush_heads()
        out = b"".join(self._out)
        self._out.clear()
        self._pongs = 0
        return out

    def next_commit(self) -> Commit | None:
        return self._commits.popleft() if self._commits else None

    def commit_done(self, work: Commit) -> None:
        """Take back a finished Commit: account it, handle its errors, request more."""
        self._guard(lambda: self._commit_done(work))

    def next_read(self) -> Read | None:
        """The next peer Request to answer (run it, then ``read_done``); None when none waits."""
        answers = self._answers
        while answers.reads and self.error is None:
            ch, msg = answers.reads.popleft()
            if self.conn.channel_state(ch.log.discovery_key) is not ChannelState.OPEN:
                continue  # closed meanwhile: the request was dropped with it
            if ch.closed_reason:
                self._guard(functools.partial(answers.no_data, ch, msg.id, "conflicted"))
                continue
            if answers.park(ch, msg):
                continue  # a tail: answered when we grow
            return answers.read(ch, msg)
        return None

    def read_done(self, work: Read) -> bytes:
        """The frame answering a finished Read (plus any control frames queued)."""
        self._guard(lambda: self._answers.read_done(work))
        return self.data_to_send()

    def tick(self) -> None:
        """Retry channels whose back-off expired."""
        self._requests.retry_due(self.clock())
        self._guard(self._requests.pump_all)

    def open_log(self, log: Log) -> None:
        """Start replicating one more log on this connection (see the privacy rule above)."""
        dkey = log.discovery_key
        if dkey in self._logs and self.conn.channel_state(dkey) is not None:
            return
        self._logs[dkey] = log
        if self.conn.closed or not self._barrier_sent:
            return  # start() will open it
        self._guard(lambda: self._add_log(log))

    def add_log(self, log: Log) -> bytes:
        """``open_log``, returning the bytes to send."""
        self.open_log(log)
        return self._run_inline()

    def local_changed(self, log: Log) -> bytes:
        """A log changed locally (append, truncate, or data from another peer): announce it
        (and answer the peer's tail request parked on it); returns the bytes to send."""
        self.announce(log)
        return self._run_inline()

    def announce(self, log: Log) -> None:
        """Queue a Head for ``log`` (coalesced: one per channel however often it changes)."""
        dkey = log.discovery_key
        if dkey in self._channels and not self.conn.closed:
            self._heads[dkey] = None
            self._answers.unpark(dkey)

    def receive_data(self, data: bytes) -> bytes:
        """``feed`` with the storage work run inline; returns every byte to send back."""
        self.feed(data)
        return self._run_inline()

    # --- internals --------------------------------------------------------------------

    def _run_inline(self) -> bytes:
        out: list[bytes] = []
        while self.error is None:
            commit = self.next_commit()
            if commit is not None:
                commit.run()
                self.commit_done(commit)
                continue
            read = self.next_read()
            if read is None:
                break
            out.append(self.data_to_send())
            read.run()
            out.append(self.read_done(read))
        out.append(self.data_to_send())
        return b"".join(out)

    def _guard(self, fn: Callable[[], None]) -> None:
        if self.error is not None:
            return
        try:
            fn()
        except Exception as exc:  # h11 rule: whatever the peer made happen ends this connection only
            self.error = exc
            self._commits.clear()
            self.backlog = 0
            self._answers.clear()
            self._heads.clear()
            if not self.conn.closed:
                self._out.append(self.conn.error_frame(exc))

    def _flush_heads(self) -> None:
        while self._heads and not self.conn.closed:
            dkey, _ = self._heads.popitem(last=False)
            ch = self._channels.get(dkey)
            if ch is not None:
                self._guard(functools.partial(self._announce, ch))

    def _process(self) -> None:
        while True:
            ev = self.conn.next_event()
            if ev is NEED_DATA or ev is CLOSED:
                break
            self.handled += 1
            self._handle(ev)  # type: ignore[arg-type]
        self._requests.pump_all()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if not self._done_sent and self.synced and not self.conn.closed:
            self._done_sent = True
            self._flush_heads()
            self._out.append(self.conn.send(Done()))

    def _handle(self, msg: Message) -> None:
        if isinstance(msg, Hello):
            return
        if isinstance(msg, Ping):
            self._pongs += 1
            if self._pongs > self.limits.max_pings:
                raise ProtocolError(f"the peer sent more than {self.limits.max_pings} Pings without reading")
            self._flush_heads()  # the barrier: everything we owe before it goes first
            self._out.append(self.conn.send(Pong(msg.id)))
            if msg.id == 0 and not self.initiator and not self._responder_barrier:
                self._responder_barrier = True
                self._out.append(self.conn.send(Ping(0)))
            return
        if not isinstance(msg, Data | Pong):
            self.progress_at = self.clock()  # Data counts once committed, Pings never
        if isinstance(msg, Pong):
            if msg.id == 0:
                self._barrier_done = True
                self.progress_at = self.clock()
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
            self._answers.drop(dkey)
            if ch is not None:
                ch.closed_reason = f"closed by peer: {msg.reason}"
                self._requests.drop(ch)
            return
        if ch is None:  # open on the wire but not accepted by us: only reachable by a bug
            raise ProtocolError("message on a channel we never accepted")
        if isinstance(msg, Head):
            self._on_head(ch, msg)
        elif isinstance(msg, Request):
            self._answers.add(ch, msg)
        elif isinstance(msg, Data):
            self._on_data(ch, msg)
        elif isinstance(msg, NoData):
            if msg.id == ch.tail:
                self._requests.refuse_tail(ch)
                return
            ch.inflight.pop(msg.id, None)
            ch.no_data = msg.reason[:300]
            self._window_end(ch)
            self._requests.touch(ch)

    # --- channels -----------------------------------------------------------------

    def _find(self, dkey: bytes) -> Log | None:
        log = self._logs.get(dkey)
        if log is None and self.store is not None:
            log = self.store.find(dkey)  # an index lookup: a flood of unknown keys costs O(1) each
            if log is not None:
                self._logs[dkey] = log
        return log

    def _on_open(self, msg: Open) -> None:
        dkey = msg.discovery_key
        log = self._find(dkey)
        # Unknown log or unproven key: the same silence, after the same work.
        proven = self.conn.check_capability(log.key if log is not None else self._dummy_key, msg.capability)
        if log is None or not proven:
            self.stats.rejected_opens += 1
            if log is None:  # remembered (bounded) in case the log is added to this connection later
                self._rejected[dkey] = msg.capability
                self._rejected.move_to_end(dkey)
                while len(self._rejected) > self.limits.max_rejected:
                    self._rejected.popitem(last=False)
            return
        if self.conn.channel_state(dkey) is ChannelState.REMOTE_OPEN:
            self._out.append(self.conn.open(dkey, log.key))
        self._accept(dkey, log)

    def _accept(self, dkey: bytes, log: Log) -> None:
        if self.conn.channel_state(dkey) is not ChannelState.OPEN:
            return
        ch = self._channels.get(dkey)
        if ch is None:
            ch = self._channels[dkey] = _Channel(log, next_start=log.contiguous_length)
        self._announce(ch)

    def _add_log(self, log: Log) -> None:
        dkey = log.discovery_key
        earlier = self._rejected.pop(dkey, None)
        if not self.initiator:
            if earlier is None or not self.conn.check_capability(log.key, earlier):
                return  # a responder opens only what the peer proved it knows
        self._out.append(self.conn.open(dkey, log.key))
        self._accept(dkey, log)

    def _announce(self, ch: _Channel) -> None:
        log = ch.log
        dkey = log.discovery_key
        if self.conn.channel_state(dkey) is not ChannelState.OPEN or ch.closed_reason:
            return
        h = log.head()
        if not h.signature:
            return  # a fresh replica has nothing signed to announce
        contig = log.contiguous_length
        current = (h.fork, h.length, h.tree_hash, contig)
        if current == ch.announced:
            return
        rh = ch.remote_head
        if (
            rh is not None
            and (rh.fork, rh.length, rh.tree_hash) == (h.fork, h.length, h.tree_hash)
            and rh.contiguous >= contig
        ):
            return  # the peer told us this very head and holds at least as much: no echo
        ch.announced = current
        frame = Head(
            self.conn.channel_number(dkey), h.fork, h.length, h.tree_hash, h.signature, h.byte_length, contig
        )
        self._out.append(self.conn.send(frame))

    def _on_head(self, ch: _Channel, msg: Head) -> None:
        if ch.closed_reason:
            return
        if msg.contiguous > msg.length:
            raise ProtocolError("Head claims more blocks than its signed length")
        head = LogHead(msg.fork, msg.length, msg.tree_hash, msg.signature, msg.byte_length)
        try:
            ch.log.check_head(head)  # InvalidSignature is fatal for the connection
        except Conflict as exc:
            self._close_conflict(ch, exc)
            return
        old = ch.remote_head
        if ch.log.manifest is not None and (old is None or (old.fork, old.length) != (msg.fork, msg.length)):
            self._requests.new_head(ch)  # a verified new head: worth trying again
        ch.remote_head = msg
        self._requests.touch(ch)

    def _close_conflict(self, ch: _Channel, exc: Conflict) -> None:
        dkey = ch.log.discovery_key
        ch.closed_reason = str(exc)
        self._requests.drop(ch)
        self._answers.drop(dkey)
        if ch.log.key not in self.stats.conflicts:
            self.stats.conflicts.append(ch.log.key)
        if self.conn.channel_state(dkey) not in (None, ChannelState.CLOSED):
            self._out.append(self.conn.send(Close(self.conn.channel_number(dkey), "conflict")))

    def _give_up(self, ch: _Channel, reason: str) -> None:
        dkey = ch.log.discovery_key
        ch.closed_reason = reason
        self._requests.drop(ch)
        self._answers.drop(dkey)
        self.stats.failures[ch.log.key] = reason
        if self.conn.channel_state(dkey) not in (None, ChannelState.CLOSED):
            self._out.append(self.conn.send(Close(self.conn.channel_number(dkey), "giving up")))

    # --- receiving ----------------------------------------------------------------

    def _on_data(self, ch: _Channel, msg: Data) -> None:
        tail, probe = self._requests.on_answer(ch, msg.id)
        if ch.closed_reason:
            return
        ch.committing += 1
        work = Commit(ch.log, msg, ch, probe=probe, tail=tail)
        work.block_bytes = sum(map(len, msg.blocks))
        work.size = work.block_bytes + 48 * len(msg.nodes)
        self.backlog += work.size
        self._commits.append(work)
        self._requests.touch(ch)

    def _commit_done(self, work: Commit) -> None:
        self.backlog -= work.size
        ch = work.channel
        ch.committing -= 1
        exc = work.error
        if work.malformed:
            raise exc or ProtocolError("malformed Data")
        if work.probe:
            suspect, ch.suspect, ch.probe = ch.suspect, None, None
            if not isinstance(exc, Conflict):
                raise exc or suspect or ProtocolError("bad proof")  # not two histories: it was just bad
        elif (
            isinstance(exc, InvalidProof)
            and work.data.have > 0
            and work.data.fork == ch.log.fork
            and ch.suspect is None
            and self.conn.can_request
        ):
            # A proof that fails against our stored nodes may come from a writer that signed two
            # histories. Ask for block 0 with a self-contained proof: the log layer compares its
            # nodes with ours and records the conflict; if it is not one, the peer is at fault.
            ch.suspect = exc
            ch.probe = self._requests.probe(ch)
            return
        if isinstance(exc, Conflict):
            self._close_conflict(ch, exc)
        elif isinstance(exc, NotWritable):
            raise ProtocolError("the peer sent data for a log we write") from None
        elif exc is not None:
            raise exc
        elif work.tail and not work.result:
            ch.tail_refused = ch.remote_head  # a tail answer that brought nothing: wait for a Head
        elif work.result:
            self.progress_at = self.clock()
            if work.tail:
                self.stats.pushed += len(work.data.blocks)
            self.stats.blocks_received += len(work.data.blocks)
            self.stats.bytes_received += work.block_bytes
        self._window_end(ch)
        self._requests.touch(ch)
        self._requests.pump_all()
        self._maybe_done()

    def _window_end(self, ch: _Channel) -> None:
        """After an answer: when the channel's request window drained, judge it (``Requests``)."""
        reason = self._requests.window_end(ch)
        if reason is not None:
            self._give_up(ch, reason)


__all__ = ["Commit", "Limits", "Read", "Replicator", "Stats", "InvalidProof"]
