"""Waking a waiter from any thread: a thread's lock or a trio task's event.

The one place where a commit in some thread hands over to a trio run: the
waker calls ``token.run_sync_soon(event.set)``, which is thread-safe and never
blocks; if that trio run has ended, the wake-up is dropped. trio is imported
only when an async API is used, so the log layer needs no trio otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import trio


def thread_waker() -> tuple[Callable[[], None], threading.Lock]:
    """``(wake, lock)``: ``lock`` is held; ``wake()`` releases it once (later calls are no-ops)."""
    lock = threading.Lock()
    lock.acquire()
    done = False

    def wake() -> None:
        nonlocal done
        if not done:
            done = True
            lock.release()

    return wake, lock


class TrioWake:
    """``wake()`` for one trio task's event; ``wake_all`` sends a group to their run in one hop."""

    __slots__ = ("event", "token")

    def __init__(self, event: trio.Event, token: trio.lowlevel.TrioToken):
        self.event = event
        self.token = token

    def __call__(self) -> None:
        import trio

        try:
            self.token.run_sync_soon(self.event.set)
        except trio.RunFinishedError:
            pass


class TrioTaskWake:
    """``wake()`` reschedules one trio task parked in ``wait_task_rescheduled`` (called at most once)."""

    __slots__ = ("task", "token")

    def __init__(self, task: trio.lowlevel.Task, token: trio.lowlevel.TrioToken):
        self.task = task
        self.token = token

    def __call__(self) -> None:
        import trio

        try:
            self.token.run_sync_soon(trio.lowlevel.reschedule, self.task)
        except trio.RunFinishedError:
            pass


def trio_waker() -> tuple[TrioWake, trio.Event]:
    """``(wake, event)`` for the calling trio task; ``wake()`` may be called from any thread."""
    import trio

    event = trio.Event()
    return TrioWake(event, trio.lowlevel.current_trio_token()), event


def _wake_group(events: list[trio.Event], tasks: list[trio.lowlevel.Task]) -> None:
    import trio

    for event in events:
        event.set()
    for task in tasks:
        trio.lowlevel.reschedule(task)


def wake_all(wakes: Iterable[Callable[[], None]]) -> None:
    """Call every wake function; the trio events and tasks of one run are woken in ONE
    ``run_sync_soon``.

    (Each ``run_sync_soon`` writes to the run's wake-up socket: waking a thousand
    tasks one by one cost a thousand syscalls in the committing thread.)
    """
    groups: dict[Any, tuple[list[trio.Event], list[trio.lowlevel.Task]]] | None = None
    for wake in wakes:
        kind = type(wake)
        if kind is TrioWake or kind is TrioTaskWake:
            if groups is None:
                groups = {}
            group = groups.get(wake.token)  # type: ignore[attr-defined]
            if group is None:
                group = groups[wake.token] = ([], [])  # type: ignore[attr-defined]
            if kind is TrioWake:
                group[0].append(wake.event)  # type: ignore[attr-defined]
            else:
                group[1].append(wake.task)  # type: ignore[attr-defined]
        else:
            wake()
    if groups:
        import trio

        for token, (events, tasks) in groups.items():
            try:
                token.run_sync_soon(_wake_group, events, tasks)
            except trio.RunFinishedError:
                pass
