"""Our requests to the peer: which channels want data, and the Request frames that fetch it.

Part of the sans-IO :class:`~._replicator.Replicator` (its theory of operation
describes the rules: pipelining within the peer's credit, slow start, back-off
of fruitless windows, live tail requests). ``Requests`` keeps per-channel work
lists so that each event costs O(1) whatever the number of channels:

* ``unsynced``: channels with requests in flight, commits queued, or wanting more;
* ``todo``: channels that may have requests to issue (served in order while
  credit lasts);
* ``backoff``: channels waiting for their ``retry_at`` after a fruitless window.

It writes Request frames to the Replicator's outbox (``out``) and never raises
for the peer's faults: a channel that keeps getting nothing is reported back
(``window_end`` returns the reason to give up) and the Replicator closes it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from ._connection import ChannelState, Connection
from ._messages import Head
from ._work import SLOW_START, Limits, Stats, _Channel


class Requests:
    """The request side of one connection (see the module docstring)."""

    def __init__(
        self,
        conn: Connection,
        limits: Limits,
        stats: Stats,
        out: list[bytes],
        clock: Callable[[], float],
        live: bool,
    ):
        self.conn = conn
        self.limits = limits
        self.stats = stats
        self.out = out  # the Replicator's outbox (shared list)
        self.clock = clock
        self.live = live  # park tail requests with the peer
        self.unsynced: dict[bytes, _Channel] = {}  # requests in flight, commits queued, or wants more
        self.todo: OrderedDict[bytes, _Channel] = OrderedDict()  # may have requests to issue
        self.backoff: dict[bytes, _Channel] = {}  # waiting for retry_at
        self.tails = 0  # our tail requests parked with the peer

    @property
    def next_deadline(self) -> float | None:
        """When a backed-off channel may retry, if ever."""
        return min((ch.retry_at for ch in self.backoff.values()), default=None)

    # --- events -----------------------------------------------------------------------

    def retry_due(self, now: float) -> None:
        """Move channels whose back-off expired back to ``todo``."""
        for dkey, ch in list(self.backoff.items()):
            if ch.retry_at <= now:
                del self.backoff[dkey]
                self.todo[dkey] = ch

    def new_head(self, ch: _Channel) -> None:
        """A verified new head from the peer: worth trying again at once."""
        ch.fruitless, ch.retry_at = 0, 0.0
        self.backoff.pop(ch.log.discovery_key, None)

    def on_answer(self, ch: _Channel, rid: int) -> tuple[bool, bool]:
        """Data answered request ``rid``: returns (it answered our tail, it answered our probe)."""
        ch.inflight.pop(rid, None)
        tail = rid == ch.tail
        if tail:
            self.end_tail(ch)
        return tail, rid == ch.probe

    def refuse_tail(self, ch: _Channel) -> None:
        """The peer answered our tail request with NoData."""
        self.end_tail(ch)
        ch.tail_refused = ch.remote_head  # not again until the peer announces a new head
        self.touch(ch)  # (requests what the tail was to bring, if the peer announced it)

    def drop(self, ch: _Channel) -> None:
        """The channel closed (``ch.closed_reason`` is set): forget its requests."""
        ch.inflight.clear()
        self.end_tail(ch)
        self.touch(ch)

    def probe(self, ch: _Channel) -> int:
        """Ask for block 0 with a self-contained proof (to tell equivocation from a bad proof)."""
        rid = self.conn.next_request_id
        self.out.append(self.conn.request(ch.log.discovery_key, ch.log.fork, 0, 0, 1))
        ch.inflight[rid] = (0, 1)
        self.touch(ch)
        return rid

    # --- windows ----------------------------------------------------------------------

    def window_end(self, ch: _Channel) -> str | None:
        """After an answer: when the window drained, judge whether it brought anything.

        Returns the reason to give the channel up after ``max_fruitless`` windows in a row
        brought nothing usable (the caller closes it); None otherwise."""
        if ch.inflight or ch.committing or ch.closed_reason:
            return None
        log = ch.log
        now_mark = (log.fork, log.contiguous_length)
        ch.next_start = log.contiguous_length
        if now_mark > ch.window_mark:
            ch.fruitless, ch.retry_at = 0, 0.0
            return None
        if not self.wants(ch):
            return None
        ch.fruitless += 1
        if ch.fruitless > self.limits.max_fruitless:
            reason = (
                f"the peer announced data it did not deliver ({ch.fruitless - 1} retries of "
                f"[{log.contiguous_length}, ...) answered with nothing usable)"
            )
            if ch.no_data:
                reason += f"; its last NoData said {ch.no_data!r}"
            if ch.no_data and "frame limit" in ch.no_data:
                reason += (
                    f"; this side's max_frame is {self.limits.max_frame} bytes: raise it "
                    "(max_frame=... to replicate/connect_tcp/serve_tcp, or Limits(max_frame=...)), "
                    "here and on the peer, above the largest block plus its proof"
                )
            return reason
        ch.retry_at = self.clock() + self.limits.backoff * 2 ** (ch.fruitless - 1)
        return None

    def touch(self, ch: _Channel) -> None:
        """Re-file a channel after its state changed (O(1))."""
        dkey = ch.log.discovery_key
        live = not ch.closed_reason and self.conn.channel_state(dkey) is ChannelState.OPEN
        wants = live and self.wants(ch)
        if live and (ch.inflight or ch.committing or wants):
            self.unsynced[dkey] = ch
        else:
            self.unsynced.pop(dkey, None)
            self.todo.pop(dkey, None)
            self.backoff.pop(dkey, None)
            if live and self.live and ch.tail is None:
                self._park_tail(ch)
            return
        if wants and dkey not in self.backoff:
            if ch.retry_at:
                self.backoff[dkey] = ch
            else:
                self.todo[dkey] = ch

    def wants(self, ch: _Channel) -> bool:
        rh = ch.remote_head
        log = ch.log
        if rh is None or log.writable or ch.closed_reason or log.store.readonly:
            return False  # (a read-only store serves, it cannot take data)
        if rh.fork > log.fork:
            return True
        return rh.fork == log.fork and rh.contiguous > log.contiguous_length

    # --- issuing requests -------------------------------------------------------------

    def pump_all(self) -> None:
        """Issue requests for the channels in ``todo``, in order, while credit lasts."""
        now = None
        todo = self.todo
        while todo and self.conn.can_request:
            dkey, ch = next(iter(todo.items()))
            if ch.retry_at:
                now = self.clock() if now is None else now
                if now < ch.retry_at:
                    del todo[dkey]
                    self.backoff[dkey] = ch
                    continue
            self._pump(ch)
            if self.conn.can_request or not self.wants(ch) or not self._more_to_request(ch):
                del todo[dkey]  # issued all it can for now; an answer or a Head re-files it
            self._touch_unsynced(ch)

    def _more_to_request(self, ch: _Channel) -> bool:
        rh = ch.remote_head
        return (
            rh is not None and rh.fork == ch.log.fork and bool(ch.inflight) and ch.next_start < rh.contiguous
        )

    def _touch_unsynced(self, ch: _Channel) -> None:
        if ch.inflight or ch.committing:
            self.unsynced[ch.log.discovery_key] = ch

    def _pump(self, ch: _Channel) -> None:
        if not self.wants(ch) or self.conn.channel_state(ch.log.discovery_key) is not ChannelState.OPEN:
            return
        if ch.committing and not ch.inflight:
            return  # let the queued commits land first: a new window starts from what we hold
        log = ch.log
        rh = ch.remote_head
        assert rh is not None
        dkey = log.discovery_key
        fork, contig = log.fork, log.contiguous_length
        step = self._batch_for(rh)
        if not ch.inflight:
            ch.next_start = contig
            ch.window_mark = (fork, contig)
            ch.retry_at = 0.0
            ch.ramp = max(1, step >> SLOW_START)  # (see "Slow start" in _replicator)
            if ch.tail is not None and ch.tail_range[0] == fork:
                ch.next_start = max(contig, ch.tail_range[1])  # the parked tail brings those
        if rh.fork != fork:  # reorg: one request at a time until we are on the new fork
            if not ch.inflight and not ch.committing and self.conn.can_request:
                rid = self.conn.next_request_id
                self.out.append(self.conn.request(dkey, fork, contig, contig, contig + step))
                ch.inflight[rid] = (contig, contig + step)
                self.stats.requests_sent += 1
            return
        while ch.next_start < rh.contiguous and self.conn.can_request:
            start = ch.next_start
            end = min(rh.contiguous, start + min(step, ch.ramp))
            ch.ramp = min(2 * ch.ramp, step)
            rid = self.conn.next_request_id
            self.out.append(self.conn.request(dkey, fork, start, start, end))
            ch.inflight[rid] = (start, end)
            ch.next_start = end
            self.stats.requests_sent += 1

    def _park_tail(self, ch: _Channel) -> None:
        """Park a request for the blocks after the peer's end (see "Live updates" in _replicator)."""
        log, rh = ch.log, ch.remote_head
        if (
            rh is None
            or rh is ch.tail_refused
            or log.writable
            or log.store.readonly
            or ch.closed_reason
            or rh.fork != log.fork
            or rh.contiguous != log.contiguous_length
            or not self.conn.can_request
            or self.tails >= max(1, self.conn.request_limit // 4)
            or ch.committing
        ):
            return
        start = rh.contiguous
        ch.tail = self.conn.next_request_id
        ch.tail_range = (rh.fork, start + self._batch_for(rh))
        self.out.append(self.conn.request(log.discovery_key, rh.fork, start, start, ch.tail_range[1]))
        self.tails += 1
        self.stats.tails_sent += 1

    def end_tail(self, ch: _Channel) -> None:
        if ch.tail is not None:
            ch.tail = None
            self.tails -= 1

    def _batch_for(self, rh: Head) -> int:
        avg = rh.byte_length / rh.length if rh.length else 1
        return max(1, min(self.limits.batch_blocks, int(self.limits.batch_bytes / max(avg, 1))))
