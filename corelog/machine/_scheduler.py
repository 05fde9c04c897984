"""Timers and invocations driven from what the log records.

Theory of operation
-------------------
The interpreter is pure: entering a state with ``after`` puts its timers in the
snapshot (``snapshot.timers``: event -> due ms, computed from the time of the
event that entered the state), entering a state with ``invoke`` puts its
invocations there (``snapshot.invocations``), leaving the state removes them.
The runtime records these with every entry, so the *log* says at every point
which timers are pending and which invocations are running. This module only
reads that and acts on it:

- a timer is due when ``due <= clock()``; firing it is sending its event
  (``xstate.after.<delay>.<stateId>``), which is recorded like any event and
  consumes the timer. After a restart the head entry still lists the timer, so
  it fires once, late, when the process was down at its due time. Several
  overdue timers fire in due order; one that a previous firing cancelled (its
  state was left) is simply gone from the snapshot.
- an invocation listed in the snapshot without a task is started: its service
  gets ``(input, context, key)`` where ``key`` (``<fork>:<index>:<id>``, the
  entry that started it) is the same on every retry and after a restart, so a
  service can be idempotent. Its outcome is sent as
  ``xstate.done.actor.<id>`` (data: the result) or ``xstate.error.actor.<id>``
  (data: ``{"error": type, "message": text}``), recorded, and replay never
  calls the service again. An invocation that disappears from the snapshot
  (its state was left) has its task cancelled. At-least-once: a crash between
  the service's end and the recording of its outcome runs it again.

:func:`fire_due` serves the synchronous ``Machine`` (``Machine.run_due_timers``);
:func:`drive` is the trio loop for a ``Coremachine`` (``Coremachine.run``);
:class:`TimerHeap` keeps the due times of many machines in one heap (one
scheduler for a fleet, not a task per machine).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any

import trio

from ._interpreter import Snapshot, invocation_key
from .errors import EventNotAccepted, MachineError

__all__ = ["FakeClock", "TimerHeap", "drive", "due_timers", "fire_due"]

MAX_FIRES = 1000  # timers fired by one call: bounds a chart whose `after: 0` loops forever


class FakeClock:
    """A clock for tests (ms): ``clock()`` reads it, ``advance(ms)`` and ``set(ms)`` move it."""

    def __init__(self, now: int = 1_700_000_000_000):
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> int:
        self.now += ms
        return self.now

    def set(self, ms: int) -> None:
        self.now = ms


def due_timers(snapshot: Snapshot, now: int) -> list[tuple[int, str]]:
    """``(due, event)`` of the timers due at ``now``, earliest first (ties in event-name order)."""
    return sorted((d, e) for e, d in snapshot.timers.items() if d is not None and d <= now)


def next_due(snapshot: Snapshot) -> int | None:
    dues = [d for d in snapshot.timers.values() if d is not None]
    return min(dues) if dues else None


def fire_due(machine: Any, now: int | None = None) -> list[Snapshot]:
    """Send every timer of ``machine`` due at ``now`` (default: its clock), earliest first; the snapshots.

    A timer cancelled by an earlier firing is skipped. Timers started by a firing
    are fired too when already due (``after: 0``), up to MAX_FIRES.
    """
    out: list[Snapshot] = []
    clock = machine._face.clock
    for _ in range(MAX_FIRES):
        snap = machine.snapshot
        if snap.done:
            break
        due = due_timers(snap, clock() if now is None else now)
        if not due:
            break
        try:
            out.append(machine.send(due[0][1]))
        except EventNotAccepted:  # consumed meanwhile by another machine object on the log
            continue
    return out


class TimerHeap:
    """Due times of many machines in one heap, with lazy deletion.

    ``sync(key, snapshot)`` after every change of machine ``key`` (re)arms its
    timers from the snapshot; ``pop_due(now)`` returns ``(key, event, due)`` of
    every armed timer due at ``now``, earliest first, ties in event-name order
    (as :func:`due_timers`: a machine's timers due at the same ms fire in the same
    order under a fleet as under ``Machine``, whatever order they were armed in);
    ``next_due()`` is the earliest armed due time. O(log n) per timer; stale
    entries (cancelled or re-armed timers) are dropped when they reach the top.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, str, int, Hashable]] = []
        self._armed: dict[Hashable, dict[str, int]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return sum(len(v) for v in self._armed.values())

    def sync(self, key: Hashable, snapshot: Snapshot | None) -> None:
        timers = {} if snapshot is None or snapshot.done else snapshot.timers
        armed = self._armed.get(key, {})
        new = {e: d for e, d in timers.items() if d is not None}
        for e, d in new.items():
            if armed.get(e) != d:
                heapq.heappush(self._heap, (d, e, next(self._seq), key))
        if new:
            self._armed[key] = new
        else:
            self._armed.pop(key, None)

    def remove(self, key: Hashable) -> None:
        self._armed.pop(key, None)

    def _clean(self) -> None:
        heap = self._heap
        while heap:
            d, e, _, key = heap[0]
            if self._armed.get(key, {}).get(e) == d:
                return
            heapq.heappop(heap)

    def next_due(self) -> int | None:
        self._clean()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: int) -> list[tuple[Hashable, str, int]]:
        out: list[tuple[Hashable, str, int]] = []
        heap = self._heap
        while True:
            self._clean()
            if not heap or heap[0][0] > now:
                return out
            d, e, _, key = heapq.heappop(heap)
            armed = self._armed[key]
            del armed[e]
            if not armed:
                del self._armed[key]
            out.append((key, e, d))


# --- the trio driver for a Coremachine ----------------------------------------------------------

Service = Callable[[Any, Mapping[str, Any], str], Awaitable[Any]]


def _retry_delays(policy: Mapping[str, Any] | None) -> list[float]:
    """Seconds to wait before each retry: ``attempts`` tries in all, ``backoff`` ms doubling by ``factor``."""
    if not policy:
        return []
    attempts = int(policy.get("attempts", 1))
    backoff = float(policy.get("backoff", 100))
    factor = float(policy.get("factor", 2))
    cap = float(policy.get("max", math.inf))
    return [min(backoff * factor**i, cap) / 1000 for i in range(max(0, attempts - 1))]


async def _invoke(
    machine: Any, iid: str, inv: Mapping[str, Any], service: Service, policy: Mapping[str, Any] | None
) -> None:
    key = invocation_key(iid, inv)
    context = machine.snapshot.context
    delays = _retry_delays(policy)
    attempt = 0
    while True:
        try:
            result = await service(inv.get("input"), context, key)
        except Exception as exc:  # a failing service is data: recorded as the error event
            if attempt < len(delays):
                await trio.sleep(delays[attempt])
                attempt += 1
                continue
            outcome = (f"xstate.error.actor.{iid}", {"error": type(exc).__name__, "message": str(exc)})
        else:
            outcome = (f"xstate.done.actor.{iid}", result)
        break
    try:
        await machine.send(*outcome)
    except EventNotAccepted:
        pass  # the invocation stopped meanwhile (its state was left): the outcome is dropped


async def drive(machine: Any, services: Mapping[str, Service] | None = None) -> Any:
    """Run ``machine``'s timers and invocations until it is done (then return its output) or cancelled.

    ``machine`` is a :class:`Coremachine`; ``services`` maps each ``invoke`` src to an async
    ``fn(input, context, key)``. Starts what the log says is pending, so calling it again after
    a restart resumes: overdue timers fire once, started invocations without outcome run again.
    """
    services = dict(services or {})
    chart = machine.chart
    if chart is None:
        raise MachineError("the machine has no definition yet")
    missing = sorted(set(chart.services) - set(services))
    if missing:
        raise MachineError(f"no implementation for service(s) {missing}: pass services={{name: async fn}}")
    clock = machine._face.clock
    running: dict[str, trio.CancelScope] = {}
    async with trio.open_nursery() as nursery:
        while True:
            version = machine.log.version  # before looking: any later change ends the wait below
            snap = machine.snapshot
            if snap.done:
                nursery.cancel_scope.cancel()
                return snap.output
            current = {invocation_key(i, v): (i, v) for i, v in snap.invocations.items()}
            for key in list(running):
                if key not in current:
                    running.pop(key).cancel()
            for key, (iid, inv) in current.items():
                if key not in running:
                    scope = trio.CancelScope()
                    running[key] = scope
                    d = chart.invokes.get(iid)
                    nursery.start_soon(
                        _run_scoped, scope, machine, iid, inv, services[inv["src"]], d and d.retry
                    )
            now = clock()
            due = due_timers(snap, now)
            if due:
                try:
                    await machine.send(due[0][1])
                except EventNotAccepted:
                    pass
                continue
            nd = next_due(snap)
            with trio.move_on_after(math.inf if nd is None else max(0.0, (nd - now) / 1000)):
                await machine.log.wait_changed_async(version)


async def _run_scoped(scope: trio.CancelScope, *args: Any) -> None:
    with scope:
        await _invoke(*args)
