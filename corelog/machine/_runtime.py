"""The runtime: a machine bound to a corelog log, with history time travel.

``_Core`` holds what the synchronous :class:`Machine` and the trio
``Coremachine`` share: the compiled chart, the head snapshot (restored in O(1)
from the last entry), the history cursor, and the two halves of a send:
``_prepare`` (pure: run the transition, encode the entry; raises and changes
nothing on any error) and ``_commit`` (after the one-transaction append).
"""

from __future__ import annotations

import threading
import time as _time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, overload

from corelog import Log
from corelog.errors import NotWritable, OutOfRange

from ._definition import definition_hash
from ._entries import HistoryEntry, check_json, decode, encode_header, encode_transition
from ._interpreter import Event, Snapshot, Statechart
from .errors import DefinitionError, DefinitionMismatch, MachineError, NotAtHead


def now_ms() -> int:
    return _time.time_ns() // 1_000_000


def as_event(event: Any, data: Any = None) -> tuple[str, Any]:
    """Accept ``"TYPE"``, ``("TYPE", data)``, ``Event`` or ``{"type": ..., "data": ...}``."""
    if isinstance(event, str):
        return event, data
    if isinstance(event, Event):
        return event.type, event.data if data is None else data
    if isinstance(event, Mapping) and isinstance(event.get("type"), str):
        return event["type"], event.get("data", data)
    if isinstance(event, tuple) and len(event) == 2 and isinstance(event[0], str):
        return event[0], event[1]
    raise TypeError(f"an event is a type string, (type, data), an Event or a dict with 'type'; got {event!r}")


def definition_diff(
    old: Any, new: Any, path: str = "", out: list[str] | None = None, limit: int = 6
) -> list[str]:
    """Up to ``limit`` human-readable differences between two definitions (``states.a.on.GO added``)."""
    if out is None:
        out = []
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for k in sorted(set(old) | set(new), key=str):
            if len(out) >= limit:
                break
            p = f"{path}.{k}" if path else str(k)
            if k not in old:
                out.append(f"{p} added")
            elif k not in new:
                out.append(f"{p} removed")
            else:
                definition_diff(old[k], new[k], p, out, limit)
    elif old != new and len(out) < limit:
        out.append(f"{path or '<root>'} changed from {old!r:.40} to {new!r:.40}")
    return out


def missing_implementations(problems: list[tuple[str, str]]) -> dict[str, list[str]]:
    """``{"actions": [...], "guards": [...]}`` named by DefinitionError problems about implementations."""
    import re

    found: dict[str, list[str]] = {}
    for _, msg in problems:
        m = re.match(r"unknown (action|guard) '([^']*)'", msg)
        if m and m.group(2) not in found.setdefault(m.group(1) + "s", []):
            found[m.group(1) + "s"].append(m.group(2))
    return found


class History(Sequence):
    """The recorded entries of a machine log, read lazily from the log."""

    def __init__(self, core: _Core):
        self._core = core

    def __len__(self) -> int:
        return self._core.log.contiguous_length

    @overload
    def __getitem__(self, i: int) -> HistoryEntry: ...
    @overload
    def __getitem__(self, i: slice) -> list[HistoryEntry]: ...

    def __getitem__(self, i):
        n = len(self)
        if isinstance(i, slice):
            r = range(*i.indices(n))
            if r.step != 1:
                return [decode(j, self._core.log.get(j)) for j in r]
            return [decode(j, b) for j, b in enumerate(self._core.log.iter(r.start, r.stop), r.start)]
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise OutOfRange(f"history has {n} entries; index {i} is outside it")
        return decode(i, self._core.log.get(i))

    def __iter__(self) -> Iterator[HistoryEntry]:
        for j, b in enumerate(self._core.log.iter(0, len(self))):
            yield decode(j, b)

    def to_dataframe(self):
        """A pandas DataFrame (index, time, event, data, state, context columns...)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_dataframe() needs pandas: pip install 'corelog[notebook]'") from None
        rows = []
        for e in self:
            row = {
                "index": e.index,
                "time": pd.to_datetime(e.time, unit="ms") if e.time is not None else None,
                "event": e.event.type if e.event else f"({e.kind})",
                "data": e.event.data if e.event else None,
                "state": e.state if isinstance(e.state, str) else str(e.state),
            }
            for k, v in e.context.items():
                row[f"context.{k}"] = v
            rows.append(row)
        return pd.DataFrame(rows).set_index("index")

    def _repr_html_(self, limit: int = 200) -> str:
        import json
        from html import escape

        n = len(self)
        start = max(0, n - limit)
        pos = self._core.position
        out = ["<table><tr><th>#</th><th>event</th><th>data</th><th>state</th><th>context</th></tr>"]
        for e in self[start:n]:
            mark = " style='background:#ffe9a8'" if e.index == pos else ""
            ev = e.event.type if e.event else f"({e.kind})"
            data = json.dumps(e.event.data) if e.event and e.event.data is not None else ""
            out.append(
                f"<tr{mark}><td>{e.index}</td><td>{escape(ev)}</td><td>{escape(data)}</td>"
                f"<td><code>{escape(json.dumps(e.state))}</code></td>"
                f"<td><code>{escape(json.dumps(e.context, default=str))}</code></td></tr>"
            )
        out.append("</table>")
        if start:
            out.insert(0, f"<p>last {limit} of {n} entries</p>")
        return "".join(out)

    def __repr__(self) -> str:
        return f"<History {len(self)} entries>"


class _Core:
    def __init__(
        self,
        log: Log,
        definition: Mapping | Statechart | None,
        actions: Mapping[str, Callable] | None,
        guards: Mapping[str, Callable] | None,
        migrate: bool,
        clock: Callable[[], int] | None,
    ):
        self.log = log
        self.clock = clock or now_ms
        self.chart: Statechart | None = None
        self.view_only_reason: str | None = None
        self._actions, self._guards = actions, guards
        self.header_index = 0
        self._fork = log.fork
        self.header_hash: str | None = None
        self.stored_definition: dict | None = None
        self._head: Snapshot | None = None
        self._head_index = -1
        self._cursor: int | None = None  # None: live (at the head)
        self._cursor_snapshot: Snapshot | None = None
        self._appending = False
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.RLock()
        given = definition if isinstance(definition, Statechart) else None
        if definition is not None and given is None:
            given = Statechart(definition, actions, guards)
        self._given = given
        if log.contiguous_length == 0:
            if given is None:
                if log.writable:
                    raise MachineError("this log is empty: pass a definition to create a machine in it")
            elif log.writable:
                self.chart = given
                t = self.clock()
                log.append(encode_header(dict(given.definition), given.hash, given.initial(t), t))
                self._restore()
            else:
                self.chart = given  # a replica still waiting for its first entries
        else:
            self._restore()
            if given is not None and self.header_hash != given.hash:
                if not migrate:
                    diff = definition_diff(self.stored_definition, dict(given.definition))
                    raise DefinitionMismatch(
                        f"the log was recorded with definition {str(self.header_hash)[:12]}… (entry "
                        f"{self.header_index}) but this one is {given.hash[:12]}…; it differs in: "
                        f"{'; '.join(diff) or 'its encoding only'}. Pass migrate=True to record the new "
                        "definition and continue (or definition=None to use the stored one)"
                    )
                self._migrate(given)
        self._unwatch = log.watch(self._on_log_change)
        self._readonly = log.store.readonly

    def poll(self) -> None:
        """On a read-only store (another process writes, no watch callbacks): catch up with the log."""
        if self._readonly:
            self._on_log_change(self.log)

    # --- restore -------------------------------------------------------------------

    def _restore(self) -> None:
        """O(1): read the last entry and (unless already known) its governing header."""
        n = self.log.contiguous_length
        if n == 0:
            self._head, self._head_index = None, -1
            return
        last = decode(n - 1, self.log.get(n - 1))
        known = (
            last.kind == "transition"
            and last.header == self.header_index
            and self.header_hash is not None
            and self.chart is not None
        )
        if not known:
            header = last if last.kind == "header" else decode(last.header, self.log.get(last.header))
            if header.kind != "header":
                raise MachineError(f"entry {last.header} should be a header but is not; the log is damaged")
            if header.definition_hash != self.header_hash or self.chart is None:
                self.stored_definition = header.definition
                given = self._given
                if given is not None and given.hash == header.definition_hash:
                    self.chart, self.view_only_reason = given, None
                else:
                    self.chart = self._chart_for(header.definition)  # type: ignore[arg-type]
            self.header_index = header.index
            self.header_hash = header.definition_hash
        self._head = self._snapshot_of(last)
        self._head_index = n - 1

    def _chart_for(self, definition: dict) -> Statechart | None:
        """The stored definition compiled; view only (``send`` refused) if implementations are missing."""
        self.view_only_reason = None
        try:
            return Statechart(definition, self._actions, self._guards)
        except DefinitionError as exc:
            missing = missing_implementations(exc.problems)
            try:
                chart = Statechart(definition, self._actions, self._guards, implementations=False)
            except DefinitionError as exc2:
                self.view_only_reason = f"the stored definition does not compile: {exc2}"
                return None
            names = ", ".join(f"{kind}={{{', '.join(map(repr, ns))}: ...}}" for kind, ns in missing.items())
            self.view_only_reason = (
                f"this machine is view only: its definition names implementations that were not given; "
                f"pass {names or 'the actions/guards it names'} to Machine(...) to send events"
            )
            return chart

    def _snapshot_of(self, entry: HistoryEntry) -> Snapshot:
        if self.chart is not None:
            try:
                return self.chart.snapshot_from(entry.state, entry.context, entry.done)
            except MachineError:
                pass
        return Snapshot(entry.state, entry.context, entry.done)

    def _migrate(self, chart: Statechart) -> None:
        head = self._head
        assert head is not None
        try:
            snap = chart.snapshot_from(head.value, head.context)
        except MachineError as exc:
            raise DefinitionMismatch(
                f"cannot migrate: the current state does not exist in the new definition ({exc})"
            ) from None
        self.log.append(encode_header(dict(chart.definition), chart.hash, snap, self.clock()))
        self.chart = None
        self._restore()

    def _on_log_change(self, log: Log) -> None:
        if self._appending:
            return
        with self._lock:
            n, fork = log.contiguous_length, log.fork
            if fork == self._fork and n - 1 == self._head_index and self._head is not None:
                return
            if fork != self._fork:
                # reorganised (a truncation, or a replica following a higher fork): entries from
                # ``keep`` on may differ now; a cursor on one of them clamps to the last one kept
                keep = log.common_prefix(self._fork, self._head_index + 1)
                self._fork = fork
                if self.header_index >= keep:
                    self.header_hash = None
                if self._cursor is not None and self._cursor >= keep:
                    self._cursor = max(0, keep - 1)
            self._restore()
            if self._cursor is not None and self._cursor >= self._head_index:
                self._cursor = None  # clamped onto the head (or beyond it): live again
            self._cursor_snapshot = None
        for cb in list(self._listeners):
            cb()

    # --- sending ------------------------------------------------------------------------

    def check_writable(self) -> None:
        if not self.log.writable:
            raise NotWritable(
                "this machine runs on a replica log (or a read-only store): only the writer can send "
                "events; nothing was done"
            )

    def prepare(self, event: Any, data: Any) -> tuple[Snapshot, bytes]:
        self.check_writable()
        if self._cursor is not None:
            raise NotAtHead(
                f"the history cursor is at entry {self._cursor}, not the head ({self._head_index}); "
                "call live() to return, or truncate() to branch from here"
            )
        if self.view_only_reason:
            raise MachineError(self.view_only_reason)
        if self.chart is None or self._head is None:
            raise MachineError("no machine definition is known for this log yet")
        etype, edata = as_event(event, data)
        check_json(edata, "event data")  # before any action runs
        ev = Event(etype, edata, self.clock())
        new = self.chart.transition(self._head, ev)
        return new, encode_transition(ev, new, self.header_index)

    def append(self, entry: bytes) -> int:
        self._appending = True
        try:
            return self.log.append(entry) - 1
        finally:
            self._appending = False

    def commit(self, snapshot: Snapshot, index: int) -> None:
        self._head, self._head_index = snapshot, index
        for cb in list(self._listeners):
            cb()

    # --- the cursor ----------------------------------------------------------------------

    @property
    def head(self) -> Snapshot | None:
        return self._head

    @property
    def head_index(self) -> int:
        return self._head_index

    @property
    def position(self) -> int:
        self.poll()
        return self._head_index if self._cursor is None else self._cursor

    @property
    def snapshot(self) -> Snapshot | None:
        self.poll()
        if self._cursor is None:
            return self._head
        if self._cursor_snapshot is None:
            self._cursor_snapshot = self._snapshot_of(decode(self._cursor, self.log.get(self._cursor)))
        return self._cursor_snapshot

    def seek(self, index: int) -> Snapshot:
        self.poll()
        n = self._head_index + 1
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise OutOfRange(f"cannot seek to {index}: the history has entries 0..{n - 1}")
        self._cursor = None if index == self._head_index else index
        self._cursor_snapshot = None
        return self.snapshot  # type: ignore[return-value]

    def truncate(self, n: int) -> Snapshot:
        if n < 1:
            raise OutOfRange("the header entry (index 0) cannot be cut: truncate(n) needs n >= 1")
        if n > self._head_index + 1:
            raise OutOfRange(f"cannot truncate to {n}: the history has {self._head_index + 1} entries")
        self._appending = True
        try:
            self.log.truncate(n)
        finally:
            self._appending = False
        self._fork = self.log.fork
        self.header_hash = None  # the governing header may have been cut
        self._restore()
        self._cursor = None
        self._cursor_snapshot = None
        for cb in list(self._listeners):
            cb()
        return self._head  # type: ignore[return-value]

    def close(self) -> None:
        self._unwatch()


class Machine:
    """A synchronous machine over a log: ``send`` records one entry per event.

    ``Machine(log, definition, actions=..., guards=...)`` creates the machine in
    an empty writable log (a header entry), or restores it in O(1) from the last
    entry. A different definition raises DefinitionMismatch unless
    ``migrate=True``. Without a definition the stored one is used (view only
    unless implementations are given). On a replica, the machine follows the
    log as it grows and ``send`` raises NotWritable.
    """

    def __init__(
        self,
        log: Log,
        definition: Mapping | Statechart | None = None,
        *,
        actions: Mapping[str, Callable] | None = None,
        guards: Mapping[str, Callable] | None = None,
        migrate: bool = False,
        clock: Callable[[], int] | None = None,
    ):
        self._core = _Core(log, definition, actions, guards, migrate, clock)
        self.history = History(self._core)

    # sending
    def send(self, event: str | Event | Mapping | tuple, data: Any = None) -> Snapshot:
        """Run ``event`` to completion and record it as one entry; returns the new snapshot.

        ``event`` is a type string (``send("START", 1)``: ``data`` is the event data), an
        :class:`Event` (its ``time`` is replaced by the clock's; ``data`` overrides its data
        when given), a ``(type, data)`` tuple, or a dict ``{"type": ..., "data": ...}``.
        Raises NotWritable on a replica and NotAtHead when the cursor is in the past (before
        any work); EventNotAccepted, a guard's or action's own exception, or
        UnserializableContext, and then records nothing and changes nothing.
        """
        core = self._core
        with core._lock:
            snapshot, entry = core.prepare(event, data)
            core.commit(snapshot, core.append(entry))
            return snapshot

    action = send

    # state at the cursor
    @property
    def log(self) -> Log:
        return self._core.log

    @property
    def snapshot(self) -> Snapshot:
        snap = self._core.snapshot
        if snap is None:
            raise MachineError("the log has no entries yet (a replica waiting for data)")
        return snap

    @property
    def state(self) -> Any:
        return self.snapshot.value

    @property
    def context(self) -> Mapping[str, Any]:
        return self.snapshot.context

    @property
    def done(self) -> bool:
        return self.snapshot.done

    @property
    def chart(self) -> Statechart | None:
        return self._core.chart

    @property
    def definition(self) -> dict | None:
        return self._core.stored_definition

    @property
    def definition_hash(self) -> str | None:
        return self._core.header_hash

    def matches(self, state: str | Mapping) -> bool:
        return self.snapshot.matches(state)

    def can(self, event: str | Event) -> bool:
        chart = self._core.chart
        return chart is not None and not self._core.view_only_reason and chart.can(self.snapshot, event)

    def available_events(self) -> list[str]:
        chart = self._core.chart
        return chart.available_events(self.snapshot) if chart else []

    # history navigation
    @property
    def position(self) -> int:
        """Index of the entry whose snapshot is shown."""
        return self._core.position

    @property
    def at_head(self) -> bool:
        return self._core._cursor is None

    def seek(self, index: int) -> Snapshot:
        """Show entry ``index`` (negative counts from the end); OutOfRange outside the history."""
        return self._core.seek(index)

    def backward(self, n: int = 1) -> Snapshot:
        """Move the cursor ``n`` entries back (stops at entry 0)."""
        return self._core.seek(max(0, self.position - n))

    def forward(self, n: int = 1) -> Snapshot:
        """Move the cursor ``n`` entries forward (stops at the head)."""
        return self._core.seek(min(self._core.head_index, self.position + n))

    def live(self) -> Snapshot:
        """Back to the head."""
        return self._core.seek(self._core.head_index)

    def truncate(self, n: int) -> Snapshot:
        """Keep entries ``[0, n)`` (fork + 1); the snapshot becomes entry n-1's, the cursor live."""
        with self._core._lock:
            return self._core.truncate(n)

    def close(self) -> None:
        self._core.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _repr_html_(self) -> str:
        return self.snapshot._repr_html_()

    def __repr__(self) -> str:
        snap = self._core.snapshot
        where = "head" if self.at_head else f"entry {self.position}"
        return f"<Machine {snap.value if snap else None!r} at {where} of {self._core.head_index + 1}>"


__all__ = ["History", "Machine", "as_event", "definition_hash", "now_ms"]
