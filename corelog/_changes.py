"""Change versions: waiting for a log to change, from threads and trio tasks.

Every committed change to a log bumps its ``version`` (``Log._publish``, called by
the store writer after the commit). Waiters register a wake function under the
store's ``_watch_mu`` and are released in one go; nothing is kept once a waiter
has woken, timed out or been cancelled, so dropped waiters cost nothing. The
old callback API (``watch``) holds bound methods weakly.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._wakers import thread_waker, trio_waker
from .errors import StoreClosed

if TYPE_CHECKING:
    from ._log import Log
    from ._store import Store

_log = logging.getLogger("corelog")
_POLL = 0.02  # seconds between head re-reads when waiting on a read-only store


class Changes:
    """The waiting half of :class:`corelog.Log` (a mixin; the state lives in ``Log``)."""

    __slots__ = ("_version", "_waiters", "_watchers")
    _version: int
    _waiters: list[Callable[[], None]] | None
    _watchers: dict[int, Any] | None

    if TYPE_CHECKING:
        _store: Store

        @property
        def version(self) -> int: ...

    def wait_changed(self, since: int, timeout: float | None = None) -> int:
        """Block until ``version > since`` (or ``timeout`` seconds pass); returns ``version``.

        Usage: ``v = log.version`` ... ``v = log.wait_changed(v)``. Raises
        StoreClosed if the store closes meanwhile. On a read-only store it
        re-reads the head every 20 ms (another process writes it).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._store.readonly:
            while self.version <= since:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                time.sleep(_POLL if remaining is None else min(_POLL, remaining))
            return self._version
        wake, lock = thread_waker()
        if not self._add_waiter(since, wake):
            return self._version
        acquired = lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout))
        if not acquired:
            self._remove_waiter(wake)
        if self._version <= since and self._store._closed:
            raise StoreClosed(f"the store at {self._store.path} was closed while waiting")
        return self._version

    async def wait_changed_async(self, since: int) -> int:
        """``wait_changed`` for trio: no thread is parked; cancel it with a cancel scope."""
        import trio

        if self._store.readonly:
            while self.version <= since:
                await trio.sleep(_POLL)
            return self._version
        wake, event = trio_waker()
        if not self._add_waiter(since, wake):
            return self._version
        try:
            await event.wait()
        finally:
            self._remove_waiter(wake)
        if self._version <= since and self._store._closed:
            raise StoreClosed(f"the store at {self._store.path} was closed while waiting")
        return self._version

    def _add_waiter(self, since: int, wake: Callable[[], None]) -> bool:
        with self._store._watch_mu:
            if self._version > since:
                return False
            if self._store._closed:
                raise StoreClosed(f"the store at {self._store.path} is closed")
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(wake)
            return True

    def _remove_waiter(self, wake: Callable[[], None]) -> None:
        with self._store._watch_mu:
            if self._waiters is not None:
                try:
                    self._waiters.remove(wake)
                except ValueError:
                    pass

    def _wake_all(self) -> None:
        with self._store._watch_mu:
            waiters, self._waiters = self._waiters, None
        for wake in waiters or ():
            wake()

    def watch(self, callback: Callable[[Log], None]) -> Callable[[], None]:
        """Call ``callback(log)`` after every committed change; returns an unsubscribe function.

        Prefer ``version`` with ``wait_changed``/``wait_changed_async``. A bound
        method is held weakly (its object may be dropped without unsubscribing);
        any other callable strongly, until unsubscribed. Called in the committing
        thread after the commit; keep it short; exceptions are logged.
        """
        ref: Any = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else None
        token = id(ref if ref is not None else callback)
        with self._store._watch_mu:
            if self._watchers is None:
                self._watchers = {}
            self._watchers[token] = ref if ref is not None else (lambda cb=callback: cb)

        def unsubscribe() -> None:
            with self._store._watch_mu:
                if self._watchers is not None:
                    self._watchers.pop(token, None)

        return unsubscribe

    def _notify(self) -> None:
        if not self._watchers:
            return
        with self._store._watch_mu:
            items = list(self._watchers.items())
        for token, ref in items:
            cb = ref()
            if cb is None:
                with self._store._watch_mu:
                    if self._watchers is not None:
                        self._watchers.pop(token, None)
                continue
            try:
                cb(self)
            except Exception:  # a watcher must never break the writer
                _log.exception("log watcher %r failed", cb)
