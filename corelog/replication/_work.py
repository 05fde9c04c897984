"""Per-connection state and storage work of the Replicator: limits, channels, stats, Commit, Read.

``Commit`` and ``Read`` are the storage work items the sans-IO Replicator hands to its driver:
``run()`` may block (verification, fsync, range reads), so the driver calls it off the event loop
(``run_all``, ``commit_all``: a batch per thread hop) and gives the item back
(``Replicator.commit_done`` / ``read_done``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from corelog import Log, Proof
from corelog.errors import InvalidProof, OutOfRange

from ._messages import DEFAULT_MAX_ARRAY, DEFAULT_MAX_FRAME, Data, Head, Request

DEFAULT_BATCH_BYTES = 512 * 1024
DEFAULT_BATCH_BLOCKS = 4096
SLOW_START = 4  # a request window opens with 1/2**SLOW_START of a batch, doubling per request
_FRAME_SLACK = 4096  # room for a Data frame's fields besides blocks and nodes


@dataclass
class Limits:
    """Every bound of one connection; the defaults are safe for an internet-facing server."""

    max_frame: int = DEFAULT_MAX_FRAME  # largest frame we accept (announced in Hello)
    max_inflight: int = 64  # requests the peer may have outstanding with us (announced)
    max_requests: int = 64  # cap on the peer's announced max_inflight: requests we send at once
    max_channels: int = 16384  # channels the peer may open on one connection
    max_rejected: int = 1024  # unproven Opens remembered (for logs added later), oldest dropped
    max_pings: int = 16  # Pongs owed and not yet written before the peer counts as flooding
    max_array_len: int = DEFAULT_MAX_ARRAY  # elements of one msgpack array in a frame
    max_fruitless: int = 6  # request windows in a row with nothing usable before giving up
    backoff: float = 0.05  # first retry delay after a fruitless window (doubles each time)
    batch_bytes: int = DEFAULT_BATCH_BYTES  # bytes asked for per request
    batch_blocks: int = DEFAULT_BATCH_BLOCKS  # blocks asked for / served per request
    max_backlog: int = 8 * 1024 * 1024  # received Data bytes awaiting commit before reading pauses


@dataclass
class _Channel:
    log: Log
    remote_head: Head | None = None
    inflight: dict[int, tuple[int, int]] = field(default_factory=dict)  # request id -> (start, end)
    next_start: int = 0
    closed_reason: str | None = None
    committing: int = 0  # Data handed to the driver and not committed yet
    window_mark: tuple[int, int] = (0, 0)  # (fork, contiguous) when the request window opened
    fruitless: int = 0
    retry_at: float = 0.0
    announced: tuple | None = None  # the last head we sent on this channel
    suspect: BaseException | None = None  # an InvalidProof being checked for equivocation
    probe: int | None = None  # the request id of that check
    tail: int | None = None  # the request id of our tail request parked with the peer
    tail_range: tuple[int, int] = (0, 0)  # its (fork, end)
    tail_refused: Head | None = None  # the peer head at which it answered a tail with NoData
    no_data: str | None = None  # the reason of the peer's last NoData (cut short: it is the peer's text)
    ramp: int = 1  # blocks the next request of this window asks for (slow start: doubles to the batch)


@dataclass
class Stats:
    blocks_received: int = 0
    blocks_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    requests_sent: int = 0  # (not counting tail requests)
    tails_sent: int = 0  # tail requests parked with the peer (live)
    pushed: int = 0  # blocks received as answers to tail requests
    conflicts: list[bytes] = field(default_factory=list)
    rejected_opens: int = 0
    failures: dict[bytes, str] = field(default_factory=dict)  # log key -> why the channel gave up


@dataclass(eq=False)
class Commit:
    """Storage work: verify and commit one received proof. ``run()`` may block (call it off the loop)."""

    log: Log
    data: Data  # (decoded and type-checked; the Proof is built from it in run(), off the loop)
    channel: _Channel
    proof: Proof | None = None
    malformed: bool = False  # the Data does not make a Proof (fatal: no equivocation check)
    result: bool | None = None  # Log.apply's answer; None when skipped
    gap: bool = False  # the proof starts past what we hold (an earlier answer was clipped)
    error: BaseException | None = None
    size: int = 0  # bytes it holds (counted against Limits.max_backlog)
    block_bytes: int = 0  # bytes of its blocks
    probe: bool = False  # the self-contained proof asked for to tell equivocation from forgery
    tail: bool = False  # the answer to our parked tail request

    def run(self) -> None:
        log, d = self.log, self.data
        try:
            try:
                # (decode() checked the types and integer bounds: from_checked checks the rest)
                proof = self.proof = Proof.from_checked(
                    d.fork,
                    d.length,
                    d.signature,
                    d.start,
                    d.blocks,
                    d.nodes,
                    d.have,
                    d.manifest,
                    self.block_bytes,
                )
            except InvalidProof:
                self.malformed = True
                raise
            if proof.start > log.contiguous_length and proof.fork == log.fork:
                self.gap = True
                return
            self.result = log.apply(proof)
        except BaseException as exc:  # handed back to the replicator in the loop thread
            self.error = exc


@dataclass(eq=False)
class Read:
    """Storage work: the range read answering one peer Request. ``run()`` may block."""

    log: Log
    request: Request
    channel: _Channel
    number: int
    frame_limit: int
    batch_blocks: int
    estimate: int = 0  # bytes the answer will hold, roughly (for batching reads)
    proof: Proof | None = None
    reason: str | None = None  # NoData reason
    block_bytes: int = 0  # bytes of the answer's blocks
    error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        log, msg = self.log, self.request
        fork, contig = log.fork, log.contiguous_length
        if log.conflict:
            self.reason = "conflicted"
            return
        if msg.fork > fork:
            self.reason = "our fork is older"
            return
        if msg.fork == fork:
            have = start = msg.start
        else:
            have = start = log.common_prefix(msg.fork, msg.contiguous)
        end = min(contig, start + max(1, msg.end - msg.start), start + self.batch_blocks)
        if start > contig or (start == end and msg.fork == fork):
            self.reason = "nothing to send from there"
            return
        try:
            proof = log.proof(start, end, have=have)
            limit = self.frame_limit - _FRAME_SLACK
            while True:
                block_bytes = sum(map(len, proof.blocks))
                size = block_bytes + 5 * len(proof.blocks) + 48 * len(proof.nodes)  # (the frame, roughly)
                if size <= limit or end <= start + 1:
                    break
                end = start + max(1, (end - start) // 2)  # clip to the frame limit
                proof = log.proof(start, end, have=have)
        except OutOfRange:
            self.reason = "range not held"
            return
        if size > limit:
            self.reason = (
                f"block {start} needs a frame of about {size} bytes, over the frame limit of "
                f"{self.frame_limit} bytes (the smaller max_frame of the two peers)"
            )
            return
        self.proof, self.block_bytes = proof, block_bytes


def run_all(batch: list[Commit] | list[Read]) -> None:
    for work in batch:
        work.run()


def commit_all(batch: list[Commit]) -> None:
    """Run Commits in order, as few store transactions as possible (one fsync per group).

    A group holds consecutive Commits of one store, each log at most once (a
    Commit looks at what its log holds, and writes inside a batch become visible
    at its end). Each Commit catches its own error, so one bad proof never
    undoes the others (each is a nested transaction of the group).
    """
    i = 0
    while i < len(batch):
        store = batch[i].log.store
        seen: set[bytes] = set()
        j = i
        while j < len(batch) and batch[j].log.store is store and batch[j].log.key not in seen:
            seen.add(batch[j].log.key)
            j += 1
        group = batch[i:j]
        if len(group) > 1 and hasattr(store, "batch"):
            try:
                with store.batch():
                    run_all(group)
            except Exception as exc:  # the group's commit itself failed (disk full, closed store)
                for work in group:
                    if work.error is None:
                        work.result, work.error = None, exc
        else:
            run_all(group)
        i = j
