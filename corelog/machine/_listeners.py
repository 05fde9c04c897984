"""Fleet listeners: at-least-once delivery of every committed transition, from durable cursors.

Theory of operation
-------------------
Every fleet commit appends one row per transition to the store's change feed
(``fleet/f/<seq>``, in the same transaction as the transition). Each listener
has a durable cursor (``fleet/c/<name>``): the last feed seq it is done with.
A listener runs in a thread of its own, reads the feed after its cursor in
chunks, calls ``fn(change, services, send)`` for each row (in feed order, so in
each machine's order), and saves its cursor after each chunk through the
fleet's writer (coalesced: at most one cursor write in flight). A crash
therefore redelivers at most the rows since the last saved cursor: at least
once, never lost.

``send`` inside a listener stages follow-up events; when the call returns they
commit in ONE transaction with the cursor moved past this row, so effects that
stay inside the store happen exactly once. If the call raises (or a staged
event fails), the row is retried after ``backoff`` seconds, doubling up to
``max_backoff``, at most ``max_attempts`` times; then it is parked as a dead
letter (``fleet/d/<name>\\0<seq>``, with the error) and the listener moves on.
Any exception the listener raises counts, ``BaseException`` included: a
``KeyboardInterrupt`` or ``SystemExit`` raised in a listener thread is the
listener's own doing (signals reach only the main thread, where Ctrl-C works
as usual), so it is retried and parked like any failure, with a warning
logged. If the delivery thread itself stops on an unexpected error (say, the
store cannot be written), the error is logged and ``wait_idle`` raises it.
``Listeners.replay`` (or ``corelog fleet replay`` while the fleet is stopped)
requeues parked rows; the listener delivers them before new rows. A slow or
failing listener holds up only itself: sends never wait for listeners.

The feed is written only while the store knows a listener: from the first
commit of a fleet that has one registered, or whose store holds any listener
cursor (from an earlier run). It is trimmed below the lowest cursor of every
listener the store knows, registered in this run or not, so a listener absent
for a while resumes where it stopped. A listener new to the store (no cursor
yet) starts with ``start="now"`` after the last committed change, and with
``start="beginning"`` at the oldest change the feed still holds: transitions
committed while the store knew no listener, or trimmed after every known
listener passed them, are not delivered (a machine's whole history stays in
its log: ``Fleet.history``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from corelog.errors import CorelogError

from . import _fleet_store as fs
from ._entries import decode
from ._interpreter import Event, Snapshot
from .errors import MachineError

if TYPE_CHECKING:
    from ._fleet import Fleet

_log = logging.getLogger("corelog.fleet")


class Change:
    """One committed transition as a listener sees it."""

    __slots__ = ("seq", "id", "kind", "index", "prev", "snapshot", "event", "attempt", "_lid")

    def __init__(
        self, seq: int, mid: str, kind: str, index: int, prev: Snapshot, snapshot: Snapshot, event: Event
    ):
        self.seq, self.id, self.kind, self.index = seq, mid, kind, index
        self.prev, self.snapshot, self.event = prev, snapshot, event
        self.attempt = 1
        self._lid = 0

    def __repr__(self) -> str:
        return f"<Change #{self.seq} {self.id!r} {self.event.type} -> {self.snapshot.value!r}>"


class _Runner:
    def __init__(
        self,
        fleet: Fleet,
        name: str,
        fn: Callable,
        kinds: frozenset[str] | None,
        max_attempts: int,
        backoff: float,
        max_backoff: float,
        start: str,
    ):
        self.fleet, self.name, self.fn, self.kinds = fleet, name, fn, kinds
        self.max_attempts, self.backoff, self.max_backoff, self.start_at = (
            max_attempts,
            backoff,
            max_backoff,
            start,
        )
        self.ckey = fs.cursor_key(name)
        self.pos = 0  # delivered up to here (in memory)
        self.saved = 0  # durable cursor
        self.pending = False
        self.delivered = 0
        self.failures = 0
        self.parked = 0
        self.replayed = 0
        self.stop = threading.Event()
        self.replay_flag = True  # look for requeued dead letters on start
        self.replaying = False
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None  # why the delivery thread stopped, if not asked to

    # --- cursor ------------------------------------------------------------------------

    def _write_meta(self, puts: list, deletes: list, sends: list | None = None) -> Any:
        return self.fleet._write_meta(puts, deletes, sends)

    def _save_cursor(self, wait: bool = False) -> None:
        pos = self.pos
        if pos <= self.saved or (self.pending and not wait):
            return
        if wait:
            self._write_meta([(self.ckey, fs.U64.pack(pos))], [])
            self.saved = max(self.saved, pos)
            return
        from ._fleet_records import _Group

        def done(op: Any) -> None:
            self.pending = False
            if op.error is None:
                self.saved = max(self.saved, pos)

        self.pending = True
        self.fleet._submit(_Group([], [(self.ckey, fs.U64.pack(pos))], [], done))

    # --- reading -----------------------------------------------------------------------

    def _change(self, txn: Any, seq: int, row: list) -> Change | None:
        mid, kind, lid, index = row
        dbs = self.fleet._dbs
        raw, praw = fs.read_block(txn, dbs, lid, index), fs.read_block(txn, dbs, lid, index - 1)
        if raw is None or praw is None:
            _log.warning(
                "listener %s: feed row %d names entry %d of %r, which is gone", self.name, seq, index, mid
            )
            return None
        entry, prev = decode(index, bytes(raw)), decode(index - 1, bytes(praw))
        assert entry.event is not None
        change = Change(seq, mid, kind, index, prev.snapshot, entry.snapshot, entry.event)
        change._lid = lid
        return change

    def _skip(self, kind: str) -> bool:
        return self.kinds is not None and kind not in self.kinds

    def _from_memory(self) -> list | None:
        """The next batch as the writer handed it over, if it is still in memory."""
        want = self.pos + 1
        for first, last, rows in reversed(self.fleet._recent):
            if first <= want <= last:
                out: list[tuple[int, Change | None]] = []
                for row in rows[want - first :]:
                    mid, st, index, prev, new, ev, seq = row
                    kind = st.slot.kind.name
                    if self._skip(kind):
                        out.append((seq, None))
                        continue
                    c = Change(seq, mid, kind, index, prev, new, ev)
                    c._lid = st.slot.log.lid
                    out.append((seq, c))
                return out
            if last < want:
                return None
        return None

    # --- delivering --------------------------------------------------------------------

    def _deliver(
        self, change: Change, extra_puts: list, extra_deletes: list, advance: bool = False
    ) -> tuple[bool, str, int]:
        """Call the listener with retries. (ok, last error, attempts); ok False + "" means stopping.

        Follow-up sends commit with ``extra_puts``/``extra_deletes`` and, with ``advance``
        (a feed row in order, not a replayed dead letter), with the cursor moved to this row.
        """
        fleet = self.fleet
        error = ""
        for attempt in range(1, self.max_attempts + 1):
            staged: list = []

            def send(
                mid: str, event: Any, data: Any = None, *, kind: str | None = None, _staged: list = staged
            ) -> None:
                _staged.append(fleet._make_send(mid, event, data, kind, None))

            change.attempt = attempt
            try:
                self.fn(change, fleet.services, send)
                if staged or extra_puts or extra_deletes:
                    # follow-ups commit in one transaction with the cursor moved to this row
                    puts = (
                        [*extra_puts, (self.ckey, fs.U64.pack(change.seq))] if advance else list(extra_puts)
                    )
                    self._write_meta(puts, list(extra_deletes), staged)
                    if advance:
                        self.saved = max(self.saved, change.seq)
                return True, "", attempt
            except BaseException as exc:  # any raise is a failed attempt (see the module docstring)
                if isinstance(exc, MachineError) and type(exc).__name__ == "FleetClosed":
                    return False, "", attempt
                self.failures += 1
                error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, Exception):
                    _log.debug("listener %s failed on %r (attempt %d): %s", self.name, change, attempt, error)
                else:
                    _log.warning(
                        "listener %s raised %s on %r (attempt %d): counted as a failed delivery "
                        "(retried, then parked as a dead letter)",
                        self.name,
                        type(exc).__name__,
                        change,
                        attempt,
                    )
            if attempt < self.max_attempts:
                if self.stop.wait(min(self.max_backoff, self.backoff * 2 ** (attempt - 1))):
                    return False, "", attempt
        return False, error, self.max_attempts

    def _park(self, change: Change, error: str, attempts: int, previous: dict | None = None) -> None:
        row = {
            "id": change.id,
            "kind": change.kind,
            "index": change.index,
            "lid": change._lid,
            "error": error[:2000],
            "attempts": attempts + (previous or {}).get("attempts", 0),
            "time": self.fleet.clock(),
            "requeued": False,
        }
        puts = [(fs.dead_key(self.name, change.seq), fs.pack(row))]
        if previous is None:
            puts.append((self.ckey, fs.U64.pack(change.seq)))
        self._write_meta(puts, [])
        self.parked += previous is None

    def _replay_parked(self) -> None:
        self.replaying = True
        try:
            self.replay_flag = False
            self._replay_rows()
        finally:
            self.replaying = False

    def _replay_rows(self) -> None:
        with self.fleet._env.begin() as txn:
            rows = [r for r in fs.dead_letters(txn, self.fleet._dbs, self.name) if r.get("requeued")]
        for r in rows:
            if self.stop.is_set():
                return
            with self.fleet._env.begin() as txn:
                lid = r.get("lid")
                if lid is None:
                    ir = fs.index_row(txn, self.fleet._dbs, r["id"])
                    lrec = txn.get(ir[1], db=self.fleet._dbs.logs) if ir else None
                    lid = fs.unpack(lrec)["id"] if lrec else None
                change = self._change(txn, r["seq"], [r["id"], r["kind"], lid, r["index"]]) if lid else None
            dkey = fs.dead_key(self.name, r["seq"])
            if change is None:
                self._write_meta([], [dkey])
                continue
            ok, error, attempts = self._deliver(change, [], [dkey])
            if ok:
                self.replayed += 1
            elif error:
                self._park(change, error, attempts, r)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # recorded, logged and raised by wait_idle: never a silent wedge
            if isinstance(exc, CorelogError) and type(exc).__name__ == "FleetClosed":
                return
            self.error = exc
            _log.error(
                "listener %s stopped at cursor %d: %s: %s",
                self.name,
                self.saved,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )

    def _run(self) -> None:
        fleet = self.fleet
        env, dbs = fleet._env, fleet._dbs
        while not self.stop.is_set():
            if self.replay_flag:
                self._replay_parked()
            changes = self._from_memory()
            if changes is None:
                with env.begin() as txn:
                    rows = fs.read_feed(txn, dbs, self.pos, 512)
                    changes = [
                        (seq, None if self._skip(row[1]) else self._change(txn, seq, row))
                        for seq, row in rows
                    ]
            if not changes:
                self._save_cursor()
                with fleet._feed_cond:
                    if fleet._seq <= self.pos and not self.stop.is_set() and not self.replay_flag:
                        fleet._feed_cond.wait(0.5)
                continue
            for seq, change in changes:
                if change is not None:
                    ok, error, attempts = self._deliver(change, [], [], advance=True)
                    if not ok:
                        if not error:  # stopping
                            return
                        self._park(change, error, attempts)
                    else:
                        self.delivered += 1
                self.pos = seq
                if self.stop.is_set():
                    break
                if seq & 127 == 0:
                    self._save_cursor()  # bounds what a crash redelivers
            self._save_cursor()


class Listeners:
    """The fleet's listeners: ``fleet.listeners``."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self._runners: dict[str, _Runner] = {}
        self._started = False

    @property
    def active(self) -> bool:
        return bool(self._runners)

    def add(
        self,
        name: str,
        fn: Callable,
        *,
        kinds: list[str] | None = None,
        max_attempts: int = 5,
        backoff: float = 0.01,
        max_backoff: float = 1.0,
        start: str = "now",
    ) -> Callable:
        if self._started:
            raise MachineError("register listeners before the fleet starts (they resume from their cursors)")
        if not isinstance(name, str) or not name or "\x00" in name or len(name.encode()) > 200:
            raise MachineError(f"a listener name is a non-empty str without NUL (got {name!r:.40})")
        if start not in ("now", "beginning"):
            raise MachineError("start is 'now' or 'beginning'")
        if max_attempts < 1:
            raise MachineError("max_attempts is at least 1")
        self._runners[name] = _Runner(
            self.fleet,
            name,
            fn,
            frozenset(kinds) if kinds else None,
            max_attempts,
            backoff,
            max_backoff,
            start,
        )
        return fn

    def start(self) -> None:
        fleet = self.fleet
        self._started = True
        if not self._runners:
            return
        with fleet._env.begin() as txn:
            stored = fs.cursors(txn, fleet._dbs)
        fresh = []
        for name, r in self._runners.items():
            if name in stored:
                r.pos = r.saved = stored[name]
            else:
                r.pos = r.saved = fleet._seq if r.start_at == "now" else 0
                fresh.append((r.ckey, fs.U64.pack(r.pos)))
        if fresh:
            fleet._write_meta(fresh, [])
        for r in self._runners.values():
            r.thread = threading.Thread(target=r.run, name=f"corelog-listener-{r.name}", daemon=True)
            r.thread.start()

    def stop(self) -> None:
        for r in self._runners.values():
            r.stop.set()
        with self.fleet._feed_cond:
            self.fleet._feed_cond.notify_all()
        for r in self._runners.values():
            if r.thread is not None:
                r.thread.join()
                r.thread = None
                try:
                    r._save_cursor(wait=True)
                except CorelogError:
                    pass

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every listener has delivered (or parked) the whole feed and saved its cursor.

        Returns False on timeout. Raises MachineError (from the cause) if a listener's
        delivery thread has stopped on an error: it would never become idle.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, r in self._runners.items():
                if r.error is not None:
                    raise MachineError(
                        f"listener {name!r} stopped at cursor {r.saved}: {type(r.error).__name__}: {r.error}; "
                        "it delivers nothing more in this run (reopen the fleet to resume from its cursor)"
                    ) from r.error
            seq = self.fleet._seq
            if all(r.saved >= seq and not (r.replay_flag or r.replaying) for r in self._runners.values()):
                return True
            time.sleep(0.002)
        return False

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            n: {
                "cursor": r.saved,
                "delivered": r.delivered,
                "failures": r.failures,
                "parked": r.parked,
                "replayed": r.replayed,
            }
            for n, r in self._runners.items()
        }

    def dead_letters(self, listener: str | None = None) -> list[dict]:
        with self.fleet._env.begin() as txn:
            return fs.dead_letters(txn, self.fleet._dbs, listener)

    def replay(self, listener: str | None = None, seq: int | None = None) -> int:
        """Requeue parked deliveries; the running listeners deliver them. Returns how many."""
        rows = [r for r in self.dead_letters(listener) if seq is None or r["seq"] == seq]
        puts = []
        for r in rows:
            name, s = r.pop("listener"), r.pop("seq")
            r["requeued"] = True
            puts.append((fs.dead_key(name, s), fs.pack(r)))
        if puts:
            self.fleet._write_meta(puts, [])
            for name, runner in self._runners.items():
                if listener is None or name == listener:
                    runner.replay_flag = True
            with self.fleet._feed_cond:
                self.fleet._feed_cond.notify_all()
        return len(puts)

    def collect_feed(self, txn: Any) -> None:
        """Delete feed rows every known listener is done with (called inside a writer transaction)."""
        dbs = self.fleet._dbs
        known = fs.cursors(txn, dbs)
        low = min(known.values()) if known else self.fleet._seq
        cur = txn.cursor(db=dbs.meta)
        n = 0
        if cur.set_range(fs.F_PREFIX):
            while n < 20_000:
                k = cur.key()
                if not k.startswith(fs.F_PREFIX) or fs.U64.unpack(k[len(fs.F_PREFIX) :])[0] > low:
                    break
                if not cur.delete():
                    break
                n += 1
