"""The fleet's records: kinds, index rows, the in-memory machine record, queued operations, restore.

Kept apart from ``_fleet`` (the writer) so the CLI and readers can use them without a running fleet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from corelog import Store

from . import _fleet_store as fs
from ._entries import HistoryEntry, decode
from ._interpreter import Snapshot, Statechart
from ._runtime import frozen_snapshot
from .errors import DefinitionMismatch, InvalidMachineId, MachineError, UnknownMachine


@dataclass(frozen=True)
class Kind:
    """A registered machine kind: its compiled chart, and whether old definitions migrate."""

    name: str
    chart: Statechart
    migrate: bool
    services: Mapping[str, Callable] = field(default_factory=dict)


@dataclass(frozen=True)
class MachineInfo:
    """One row of the fleet's machine index."""

    id: str
    kind: str
    key: bytes
    state: Any
    done: bool
    length: int
    extras: Mapping[str, Any] | None = None  # pending timers, running invocations, history, output


class _Slot:
    __slots__ = ("id", "kind", "log", "snapshot", "header")

    def __init__(self, mid: str, kind: Kind, log: fs.LogState, snapshot: Snapshot | None, header: int):
        self.id = mid
        self.kind = kind
        self.log = log
        self.snapshot = snapshot  # committed; None for a machine created in the batch being prepared
        self.header = header  # index of the governing header entry


class _Stage:
    """What a batch adds to one machine before it commits."""

    __slots__ = ("slot", "blocks", "snapshot", "header", "new", "result")

    def __init__(self, slot: _Slot):
        self.slot = slot
        self.blocks: list[bytes] = []
        self.snapshot = slot.snapshot
        self.header = slot.header
        self.new = slot.log.lid == 0
        self.result: tuple = ()


class _Op:
    """A queued request; ``finish`` is called in the writer thread with (result, error)."""

    __slots__ = ("notify", "result", "error", "done", "yielded")

    def __init__(self, notify: Callable[[_Op], None] | None):
        self.notify = notify
        self.done = False
        self.yielded = False  # deferred once for a machine object's send on its log (``_fleet_shared``)
        self.result: Any = None
        self.error: BaseException | None = None


class _Send(_Op):
    __slots__ = ("mid", "kind", "etype", "data", "due")

    def __init__(self, mid: str, kind: str | None, etype: str, data: Any, notify: Callable | None):
        super().__init__(notify)
        self.mid, self.kind, self.etype, self.data = mid, kind, etype, data
        self.due: int | None = None  # a timer's event: the due time it was armed with


class _Group(_Op):
    """Follow-up sends from a listener plus its cursor (and dead-letter) writes: all or nothing."""

    __slots__ = ("sends", "meta_puts", "meta_deletes")

    def __init__(self, sends: list[_Send], meta_puts: list, meta_deletes: list, notify: Callable | None):
        super().__init__(notify)
        self.sends, self.meta_puts, self.meta_deletes = sends, meta_puts, meta_deletes


def _utf8_length(mid: str) -> int:
    try:
        return len(mid.encode())
    except UnicodeEncodeError:  # a lone surrogate: not storable
        return fs.MAX_ID_BYTES + 1


def check_id(mid: Any) -> str:
    if not isinstance(mid, str) or not mid or "\x00" in mid or _utf8_length(mid) > fs.MAX_ID_BYTES:
        raise InvalidMachineId(
            f"machine id {mid!r:.60} is not valid: use a non-empty str of at most {fs.MAX_ID_BYTES} UTF-8 bytes"
        )
    return mid


def restore(txn: Any, dbs: Any, mid: str, kind: Kind, log: fs.LogState, extras: Any = None) -> _Slot:
    """A machine's record from its log: the last entry (and its header, to check the definition)."""
    n = log.length
    last = decode(n - 1, bytes(fs.read_block(txn, dbs, log.lid, n - 1) or b""))
    header = (
        last
        if last.kind == "header"
        else decode(last.header, bytes(fs.read_block(txn, dbs, log.lid, last.header) or b""))
    )
    chart = kind.chart
    try:
        # the entry records timers/invocations/history/output (the index row has a copy)
        snap = frozen_snapshot(
            chart.snapshot_from(last.state, last.context, last.done, last.extras or extras)
        )
    except MachineError as exc:
        raise DefinitionMismatch(
            f"machine {mid!r}: its state does not exist in kind {kind.name!r} ({exc})"
        ) from None
    slot = _Slot(mid, kind, log, snap, header.index)
    if header.definition_hash != chart.hash:
        if not kind.migrate:
            raise DefinitionMismatch(
                f"machine {mid!r} was recorded with definition {str(header.definition_hash)[:12]}… but kind "
                f"{kind.name!r} is {chart.hash[:12]}…; register the kind with migrate=True to continue it"
            )
        slot.header = -1  # a migration header is written before its next transition
    return slot


def list_machines(store: Store, kind: str | None = None, state: str | None = None) -> list[MachineInfo]:
    out = []
    with store._env.begin() as txn:
        for mid, row in fs.iter_index(txn, store._dbs):
            if kind is not None and row[0] != kind:
                continue
            if state is not None and not Snapshot(row[2], {}).matches(state):
                continue
            out.append(
                MachineInfo(mid, row[0], row[1], row[2], row[3], row[4], row[5] if len(row) > 5 else None)
            )
    return out


def machine_history(store: Store, mid: str) -> list[HistoryEntry]:
    with store._env.begin() as txn:
        row = fs.index_row(txn, store._dbs, check_id(mid))
    if row is None:
        raise UnknownMachine(f"no machine {mid!r} in this store's fleet")
    log = store.get(key=row[1], create=False)
    return [decode(i, b) for i, b in enumerate(log.iter(0, log.length))]
