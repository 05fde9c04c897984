"""The fleet's one scheduler: delayed transitions (``after``) and invoked services of every machine.

Theory of operation
-------------------
The interpreter is pure: entering a state puts its timers (``xstate.after.*``
event -> due time in ms) and invocations (id -> ``{src, input, state}``) in the
snapshot; leaving it removes them. The fleet records that part of the snapshot
in the machine's index row (same transaction as the entry), and after every
commit hands each changed machine's old and new snapshot to this scheduler:

- a new or re-armed timer goes into ONE heap for all machines (the statecharts
  work's ``TimerHeap``, lazy deletion); one thread sleeps
  until the earliest is due and sends its event. The send carries the due time it
  was armed with, and the writer drops it (nothing recorded) if the machine's
  timer has since been cancelled or re-armed, so a stale heap entry never fires;
- a new invocation runs its service ``fn(input, context, key)`` (``key``: the
  invocation's idempotency key) in a small bounded thread pool; the outcome is
  sent as ``xstate.done.actor.<id>`` (data: the result) or
  ``xstate.error.actor.<id>`` (data: ``{"error", "message"}``), retried with the
  invoke's ``retry`` policy first. An outcome that arrives after the state was
  left is refused by the interpreter and records nothing.

On open, ``recover`` scans the index once and re-arms every pending timer (an
overdue one fires at once) and restarts every running invocation, so a service
call in flight at a crash runs again: at least once, as with listeners.

The scan holds the fleet's commit lock, so it sees every machine as of the last
commit, and every commit before it has already been handed to ``watch``: without
that, a commit landing during the scan (a listener's follow-up on open, a send while
``register`` recovers a late kind) was re-armed by ``watch`` and then overwritten by the
scan's older row, and the re-armed timer never fired. An invocation that ``watch``
already started (a listener's follow-up on open) is not started again: ``_running``
holds the keys of the invocations this process runs, until their outcome is committed.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from . import _fleet_store as fs
from ._interpreter import Snapshot, invocation_key
from ._scheduler import TimerHeap, _retry_delays

if TYPE_CHECKING:
    from ._fleet import Fleet

_log = logging.getLogger("corelog.fleet")


class Scheduler:
    def __init__(self, fleet: Fleet, workers: int = 4):
        self.fleet = fleet
        self._timers = TimerHeap()  # the statecharts work's heap: every machine's timers, lazy deletion
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="corelog-fleet-service")
        self.fired = 0
        self.invoked = 0
        self._running: set[tuple[str, str]] = (
            set()
        )  # (machine, invocation key) started, outcome not committed

    # --- arming (writer thread and recovery) -------------------------------------------

    def watch(self, mid: str, kind: Any, prev: Snapshot | None, new: Snapshot) -> None:
        """Arm what ``new`` starts that ``prev`` did not (called after each commit)."""
        if new.timers or (prev is not None and prev.timers):
            with self._cond:
                self._timers.sync(mid, new)
                self._cond.notify()
        old = prev.invocations if prev is not None else {}
        for iid, inv in new.invocations.items():
            if iid not in old:
                self.invoke(mid, kind, iid, inv, new.context)

    def invoke(self, mid: str, kind: Any, iid: str, inv: Any, context: Any = None) -> bool:
        """Run the invocation's service (or record its error); False if this process already runs it."""
        fn = kind.services.get(inv.get("src"))
        if fn is None:
            error = {"error": "MachineError", "message": f"no service {inv.get('src')!r} registered"}
            self._send(mid, f"xstate.error.actor.{iid}", error)
            return True
        running = (mid, invocation_key(iid, inv))
        with self._cond:
            if running in self._running:  # started by `watch` (or a recovery) before this scan saw it
                return False
            self._running.add(running)
        self.invoked += 1
        d = getattr(kind.chart, "invokes", {}).get(iid)
        self._pool.submit(self._run_service, mid, iid, fn, inv, context, d.retry if d is not None else None)
        return True

    def recover(self, only: str | None = None) -> tuple[int, int]:
        """Re-arm every pending timer and restart every running invocation in the store
        (of registered kinds, or of kind ``only``); returns how many of each."""
        timers = invocations = 0
        kinds = self.fleet._kinds
        with self.fleet._commit_lock, self.fleet._env.begin() as txn:
            for mid, row in fs.iter_index(txn, self.fleet._dbs):
                extras = row[5] if len(row) > 5 else None
                if not extras or row[0] not in kinds or (only is not None and row[0] != only):
                    continue
                pending = {e: d for e, d in (extras.get("timers") or {}).items() if d is not None}
                if pending:
                    with self._cond:
                        self._timers.sync(mid, Snapshot(row[2], {}, row[3], None, {}, pending))
                        self._cond.notify()
                    timers += len(pending)
                running = extras.get("invocations") or {}
                if running:
                    context = fs.last_context(txn, self.fleet._dbs, row[1])
                    for iid, inv in running.items():
                        invocations += self.invoke(mid, kinds[row[0]], iid, inv, context)
        return timers, invocations

    # --- running -----------------------------------------------------------------------

    def _send(
        self, mid: str, event: str, data: Any = None, due: int | None = None, running: Any = None
    ) -> None:
        from ._fleet_records import _Send

        # an invocation's outcome: forget the invocation once the outcome is committed (or refused)
        op = _Send(mid, None, event, data, None if running is None else lambda _op: self._forget(running))
        op.due = due
        try:
            self.fleet._submit(op)
        except Exception:  # closed: recovery re-arms it next time
            if running is not None:
                self._forget(running)

    def _forget(self, running: tuple[str, str]) -> None:
        with self._cond:
            self._running.discard(running)

    def _run_service(self, mid: str, iid: str, fn: Any, inv: Any, context: Any, retry: Any) -> None:
        """``fn(input, context, key)``, as the statecharts driver calls services; ``key`` is the
        invocation's idempotency key (the same on every retry and after a restart)."""
        key = invocation_key(iid, inv)
        running = (mid, key)
        delays = _retry_delays(retry)
        for attempt in range(len(delays) + 1):
            if self._stop:
                self._forget(running)
                return
            try:
                result = fn(inv.get("input"), context, key)
            except Exception as exc:  # a failing service is data: recorded as the error event
                if attempt < len(delays):
                    time.sleep(delays[attempt])
                    continue
                error = {"error": type(exc).__name__, "message": str(exc)}
                self._send(mid, f"xstate.error.actor.{iid}", error, running=running)
                return
            except BaseException:
                self._forget(running)
                raise
            self._send(mid, f"xstate.done.actor.{iid}", result, running=running)
            return

    def _loop(self) -> None:
        clock = self.fleet.clock
        while True:
            with self._cond:
                while not self._stop:
                    nxt = self._timers.next_due()
                    if nxt is not None and nxt <= clock():
                        break
                    # a test clock may jump: look again soon
                    self._cond.wait(0.5 if nxt is None else min((nxt - clock()) / 1000, 0.05))
                if self._stop:
                    return
                due = self._timers.pop_due(clock())
            for mid, event, at in due:
                self.fired += 1
                self._send(str(mid), event, None, at)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="corelog-fleet-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        # a service still running finishes in the background; its outcome is dropped (the fleet is
        # closed) and recovery runs it again on the next open: at least once
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def pending(self) -> int:
        """Timers armed (across all machines)."""
        with self._cond:
            return len(self._timers)
