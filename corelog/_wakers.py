"""Waking a waiter from any thread: a thread's lock or a trio task's event.

The one place where a commit in some thread hands over to a trio run: the
waker calls ``token.run_sync_soon(event.set)``, which is thread-safe and never
blocks; if that trio run has ended, the wake-up is dropped. trio is imported
only when an async API is used, so the log layer needs no trio otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

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


def trio_waker() -> tuple[Callable[[], None], trio.Event]:
    """``(wake, event)`` for the calling trio task; ``wake()`` may be called from any thread."""
    import trio

    event = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def wake() -> None:
        try:
            token.run_sync_soon(event.set)
        except trio.RunFinishedError:
            pass

    return wake, event
