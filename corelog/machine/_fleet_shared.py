"""A fleet machine's log shared with ``Machine``/``Coremachine`` objects (or other ``Log`` writers).

Theory of operation
-------------------
Two kinds of writer may append to a ``fleet:<id>`` log in one process: the fleet,
which writes its machines' blocks, nodes and head itself inside its part of the
store writer's transaction (``_fleet``), and the ``Log`` object's own parts
(``Log.append``, ``Log.truncate``, and so every ``Machine``/``Coremachine`` on the
log through its core, ``_core``). The store writer keeps a *pending* state per
``Log`` (what earlier parts of the open batch appended, written as a head only when
the batch commits) and publishes it to the ``Log`` after the commit; the fleet keeps
its own state per machine (``_Slot.log``). Neither may act on a stale one, or one
would write its blocks over the other's and an acknowledged event would vanish.

Both check inside the transaction, so the check and the write are one step:

- the fleet, for a machine whose ``Log`` is open (only a ``Log`` object can write
  through the store writer), compares its cached state with the head stored in the
  transaction (committed writes it has not seen: reload the machine from the log),
  then looks for a *pending* write of this batch: the block after that head, or the
  next fork's record, differing from the committed store (``pending``). If there is
  one, the machine's events are deferred, in order, to the next batch (after this one
  commits, the head is stored and the fleet reloads from it): never staged on a stale
  state, never dropped;
- a ``Log`` part of a machine core (``_core.cas_part``) compares the head stored in the
  transaction with the writer's state of the ``Log``: a head ahead of it was written by
  the fleet (earlier in this batch, or committed and not yet published), so the append
  fails, the writer adopts that head as the log's state and publishes it with the
  commit, and the sender runs its event again on it (``_Moved``).

That alone keeps every acknowledged event, whoever sends it. So that the two take turns
rather than undo each other's work (a Machine's send prepared on a head the fleet then
moves must run again, at most ``_core.RETRIES`` times), the fleet also *serialises* with
the log's core (``Shared.check``): inside its part it takes the core's lock if it is
free, and holds it until its commit is published, so no Machine on the log prepares a
send meanwhile; if the lock is held (a Machine's send is being prepared or committed),
the fleet defers the machine's events once and, when it has nothing else to do, waits
(at most ``LOCK_WAIT``) for that send to finish. It never blocks on a core's lock while
it waits for the store writer (a ``store.batch()`` block may hold the writer and want
that lock).

After its commit the fleet publishes each open ``Log``'s new head (``publish``) before
it acknowledges the sends, so a Machine on the log sees the fleet's entries as soon as
``send`` returns; a ``Fleet`` reads a machine whose ``Log`` is open from the log, not
from its cache. What a ``Machine`` records on a fleet log is not in the fleet's change
feed (listeners and the scheduler see the fleet's own transitions); the fleet's index
row catches up with the machine's next fleet event.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import lmdb

from corelog._keys import BLOCK, FORK, KEY

from . import _fleet_store as fs
from ._core import cores_of
from ._fleet_records import _Op

LOCK_WAIT = 0.05  # s: the longest a fleet with nothing else to do waits for a Machine's send to finish


class Deferred(Exception):
    """Internal: the machine's events wait for the next batch (``_fleet``)."""


def pending(txn: lmdb.Transaction, reader: lmdb.Transaction, dbs: Any, st: fs.LogState) -> bool:
    """True if the open batch ``txn`` holds a write to log ``st`` that is not committed yet.

    ``reader`` is a read transaction (the committed store). A pending append writes the block
    after the stored head (its head is written when the batch commits); a pending truncation
    writes the next fork's record. Compared with the committed values, not just looked up: a
    block left beyond the head by an older version of this store is not pending.
    """
    data = dbs.data
    for key in (KEY.pack(st.lid, BLOCK, st.length), KEY.pack(st.lid, FORK, st.fork + 1)):
        if txn.get(key, db=data) != reader.get(key, db=data):
            return True
    return False


class Shared:
    """One fleet commit's dealings with the machine logs it shares (see the module docstring).

    ``check`` runs in the fleet's part (the writer thread, inside the transaction), ``close``
    after the part, ``release`` once the commit is published, ``wait`` before the next batch.
    """

    __slots__ = ("store", "reader", "held", "waits")

    def __init__(self, store: Any):
        self.store = store
        self.reader: lmdb.Transaction | None = None
        self.held: dict[bytes, threading.Lock] = {}  # core locks taken in the part, kept to the publish
        self.waits: list[threading.Lock] = []  # the locks of the sends deferred to

    def check(self, txn: lmdb.Transaction, st: fs.LogState, op: _Op) -> None:
        """Raise ``Deferred`` if machine ``st``, whose ``Log`` is open, must wait for the next batch."""
        if st.key not in self.held:
            for core in cores_of(self.store, [st.key]):
                if core.lock.acquire(blocking=False):  # never blocks: see the module docstring
                    self.held[st.key] = core.lock
                elif not op.yielded:  # a Machine's send is under way: let it finish first, once
                    op.yielded = True
                    self.waits.append(core.lock)
                    raise Deferred
        if self.reader is None:
            self.reader = self.store._env.begin()
        if pending(txn, self.reader, self.store._dbs, st):
            raise Deferred

    def close(self) -> None:
        if self.reader is not None:
            self.reader.abort()
            self.reader = None

    def release(self) -> None:
        held, self.held = self.held, {}
        for lock in held.values():
            lock.release()

    def wait(self, timeout: float = LOCK_WAIT) -> None:
        """Wait (at most ``timeout`` in all) for the sends deferred to to finish."""
        waits, self.waits = self.waits, []
        end = time.monotonic() + timeout
        for lock in waits:
            if lock.acquire(timeout=max(0.0, end - time.monotonic())):
                lock.release()


def publish(log: Any) -> None:
    """Publish the committed head to an open ``Log`` (waking its waiters and machine cores),
    unless it already holds that head or a later one (a writer's commit published meanwhile)."""
    with log._read() as txn:
        st = log._read_state(txn, log._st.record)
    cur = log._st
    if (st.fork, st.length) > (cur.fork, cur.length):
        log._publish(st)
