"""Read transactions that speak ``StoreClosed``.

``Store.close`` may run in any thread while others read. py-lmdb then fails the
readers' transactions with a bare ``lmdb.Error`` ("Attempt to operate on
closed/deleted/dropped object"), at ``begin`` or at any get or cursor step inside
the block. ``Reading`` is the one place that turns those into
:class:`~corelog.errors.StoreClosed`, so a closed store gives one error whatever
was reading (``Store.close`` sets the flag before it closes the environment).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import lmdb

from .errors import StoreClosed


def closed_error(store: Any) -> StoreClosed:
    return StoreClosed(f"the store at {store.path} is closed; reopen it to read")


class Reading:
    """``with Reading(store) as txn:`` a read-only transaction; StoreClosed once the store is closed."""

    __slots__ = ("_store", "_txn")

    def __init__(self, store: Any) -> None:
        self._store = store
        self._txn: lmdb.Transaction | None = None

    def __enter__(self) -> lmdb.Transaction:
        store = self._store
        if store._closed:
            raise closed_error(store)
        try:
            self._txn = store._env.begin(buffers=False)
        except lmdb.Error:
            if store._closed:
                raise closed_error(store) from None
            raise
        return self._txn

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        txn, self._txn = self._txn, None
        try:
            if txn is not None:
                txn.abort()
        except lmdb.Error:
            if exc is None and not self._store._closed:
                raise
        if isinstance(exc, lmdb.Error) and self._store._closed:
            raise closed_error(self._store) from None
