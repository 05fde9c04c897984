"""The fleet's one scheduler: delayed transitions (``after``) and invoked services of every machine.

Theory of operation
-------------------
The interpreter is pure: entering a state puts its timers (``xstate.after.*``
event -> due time in ms) and invocations (id -> ``{src, input, state}``) in the
snapshot; leaving it removes them. The fleet records that part of the snapshot
in the machine's index row (same transaction as the entry), and after every
commit hands each changed machine's old and new snapshot to this scheduler:

- a new or re-armed timer goes into ONE heap for all machines; one thread sleeps
  until the earliest is due and sends its event. The send carries the due time it
  was armed with, and the writer drops it (nothing recorded) if the machine's
  timer has since been cancelled or re-armed, so a stale heap entry never fires;
- a new invocation runs its service ``fn(input)`` in a small bounded thread pool;
  the outcome is sent as ``xstate.done.actor.<id>`` (data: the result) or
  ``xstate.error.actor.<id>`` (data: ``{"message": ...}``), retried with the
  invoke's ``retry`` policy first. An outcome that arrives after the state was
  left is refused by the interpreter and records nothing.

On open, ``recover`` scans the index once and re-arms every pending timer (an
overdue one fires at once) and restarts every running invocation, so a service
call in flight at a crash runs again: at least once, as with listeners.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from . import _fleet_store as fs
from ._interpreter import Snapshot

if TYPE_CHECKING:
    from ._fleet import Fleet

_log = logging.getLogger("corelog.fleet")


class Scheduler:
    def __init__(self, fleet: Fleet, workers: int = 4):
        self.fleet = fleet
        self._heap: list[tuple[int, int, str, str]] = []
        self._n = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="corelog-fleet-service")
        self.fired = 0
        self.invoked = 0

    # --- arming (writer thread and recovery) -------------------------------------------

    def watch(self, mid: str, kind: Any, prev: Snapshot | None, new: Snapshot) -> None:
        """Arm what ``new`` starts that ``prev`` did not (called after each commit)."""
        old_t = prev.timers if prev is not None else {}
        for ev, due in new.timers.items():
            if due is not None and old_t.get(ev) != due:
                self.arm(mid, ev, due)
        old_i = prev.invocations if prev is not None else {}
        for iid, inv in new.invocations.items():
            if iid not in old_i:
                self.invoke(mid, kind, iid, inv)

    def arm(self, mid: str, event: str, due: int) -> None:
        with self._cond:
            self._n += 1
            heapq.heappush(self._heap, (due, self._n, mid, event))
            if self._heap[0][1] == self._n:
                self._cond.notify()

    def invoke(self, mid: str, kind: Any, iid: str, inv: Any) -> None:
        fn = kind.services.get(inv.get("src"))
        if fn is None:
            self._send(
                mid, f"xstate.error.actor.{iid}", {"message": f"no service {inv.get('src')!r} registered"}
            )
            return
        self.invoked += 1
        d = getattr(kind.chart, "invokes", {}).get(iid)
        self._pool.submit(self._run_service, mid, iid, fn, inv, (d.retry if d is not None else None) or {})

    def recover(self, only: str | None = None) -> tuple[int, int]:
        """Re-arm every pending timer and restart every running invocation in the store
        (of registered kinds, or of kind ``only``); returns how many of each."""
        timers = invocations = 0
        kinds = self.fleet._kinds
        with self.fleet._env.begin() as txn:
            for mid, row in fs.iter_index(txn, self.fleet._dbs):
                extras = row[5] if len(row) > 5 else None
                if not extras or row[0] not in kinds or (only is not None and row[0] != only):
                    continue
                for ev, due in (extras.get("timers") or {}).items():
                    if due is not None:
                        self.arm(mid, ev, due)
                        timers += 1
                for iid, inv in (extras.get("invocations") or {}).items():
                    self.invoke(mid, kinds[row[0]], iid, inv)
                    invocations += 1
        return timers, invocations

    # --- running -----------------------------------------------------------------------

    def _send(self, mid: str, event: str, data: Any = None, due: int | None = None) -> None:
        from ._fleet_records import _Send

        op = _Send(mid, None, event, data, None)
        op.due = due
        try:
            self.fleet._submit(op)
        except Exception:  # closed: recovery re-arms it next time
            pass

    def _run_service(self, mid: str, iid: str, fn: Any, inv: Any, retry: Any) -> None:
        attempts = max(1, int(retry.get("attempts", 1)))
        delay = float(retry.get("backoff", 100)) / 1000
        factor = float(retry.get("factor", 2))
        cap = float(retry.get("max", 30_000)) / 1000
        for attempt in range(1, attempts + 1):
            if self._stop:
                return
            try:
                result = fn(inv.get("input"))
            except Exception as exc:
                if attempt == attempts:
                    self._send(mid, f"xstate.error.actor.{iid}", {"message": f"{type(exc).__name__}: {exc}"})
                    return
                time.sleep(min(cap, delay))
                delay *= factor
                continue
            self._send(mid, f"xstate.done.actor.{iid}", result)
            return

    def _loop(self) -> None:
        clock = self.fleet.clock
        while True:
            with self._cond:
                while not self._stop:
                    if self._heap:
                        wait = (self._heap[0][0] - clock()) / 1000
                        if wait <= 0:
                            break
                        self._cond.wait(min(wait, 0.05))  # a test clock may jump: look again soon
                    else:
                        self._cond.wait(0.5)
                if self._stop:
                    return
                due, _, mid, event = heapq.heappop(self._heap)
            self.fired += 1
            self._send(mid, event, None, due)

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
        return len(self._heap)
