"""The runtime: a machine bound to a corelog log, with history time travel.

Every machine object on a log is a *face* over the log's one shared
:class:`~._core.LogCore` (see ``_core``): the synchronous :class:`Machine` here
and the trio ``Coremachine`` in ``_stream``. What is per object lives in
:class:`_Face`: the implementations (actions, guards) and the chart compiled
with them, the clock, and the history cursor. The two halves of a send, both
run with the core's lock held, are ``prepare_locked`` (catch up, run the
transition on the recorded head, encode the entry; raises and changes nothing
on any error) and ``commit_locked`` (after the compare-and-append).

Values handed out are never the log's own state: contexts, state values and
event data are frozen (read-only deep copies, ``_frozen``) before any reader
or action sees them, and a definition given as a dict is copied on load.

Beside this module: ``_reads`` holds the read side both faces share (state at
the cursor, history navigation), ``_history`` the lazy ``History`` sequence,
``_charts`` the compiled-chart cache (``compile_chart``) and definition diffs.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Mapping
from typing import Any

from corelog import Log
from corelog.errors import NotWritable, OutOfRange

from ._charts import (
    _impl_key,
    compile_chart,
    definition_diff,
    definition_hash,
    frozen_definition,
    missing_implementations,
)
from ._core import RETRIES, LogCore, Recorded, _Moved, core_for, frozen_entry
from ._entries import HistoryEntry, decode, encode_header, encode_transition, packed_definition
from ._frozen import _SCALARS, FrozenDict, freeze
from ._history import History
from ._interpreter import Event, Snapshot, Statechart, copy_json, stamp_invocations
from ._reads import _Reads
from ._snapshot import _set_context, make_event
from .errors import DefinitionError, DefinitionMismatch, HeadMoved, MachineError, NotAtHead

_tuple_new = tuple.__new__


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


class _Face:
    """What one machine object holds over the shared core: implementations, chart, clock, cursor."""

    __slots__ = (
        "_actions",
        "_chart",
        "_chart_hash",
        "_cursor",
        "_cursor_snapshot",
        "_fork",
        "_given",
        "_guards",
        "_snap",
        "clock",
        "core",
        "log",
        "view_only_reason",
    )

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
        self._actions, self._guards = actions, guards
        given: Statechart | None = None
        if isinstance(definition, Statechart):
            given = definition
        elif definition is not None:
            given = compile_chart(definition, actions, guards)
        self._given = given
        self._chart: Statechart | None = given
        self._chart_hash: str | None = None  # the header hash ``_chart`` was resolved for
        self.view_only_reason: str | None = None
        self._snap: tuple[Recorded, Snapshot] | None = None  # head snapshot built with our chart
        self._cursor: int | None = None  # None: live (at the head)
        self._cursor_snapshot: Snapshot | None = None
        self.core: LogCore = core_for(log)
        core = self.core
        with core.lock:
            h = core.refresh_locked()
            if h.index < 0:
                if given is None:
                    if log.writable:
                        raise MachineError("this log is empty: pass a definition to create a machine in it")
                elif log.writable:
                    self._create_locked(given)
            elif given is not None and h.header_hash != given.hash:
                if not migrate:
                    diff = definition_diff(h.definition, dict(given.definition))
                    raise DefinitionMismatch(
                        f"the log was recorded with definition {str(h.header_hash)[:12]}… (entry "
                        f"{h.header_index}) but this one is {given.hash[:12]}…; it differs in: "
                        f"{'; '.join(diff) or 'its encoding only'}. Pass migrate=True to record the new "
                        "definition and continue (or definition=None to use the stored one)"
                    )
                self._migrate_locked(given, h)
        self._fork = core.head.fork

    # --- headers ---------------------------------------------------------------------------

    def _create_locked(self, chart: Statechart) -> None:
        t = self.clock()
        snap = chart.initial_readonly(t)
        if snap.invocations:
            snap = frozen_snapshot(stamp_invocations(snap, 0, self.log.fork))
        entry = encode_header(chart.definition, chart.hash, snap, t, packed_definition(chart))
        index = self.core.append_locked(entry, 0)
        self.core.set_locked(_header_recorded(index, self.log.fork, chart, snap))

    def _migrate_locked(self, chart: Statechart, h: Recorded) -> None:
        try:
            snap = chart.snapshot_from(h.value, h.context or {}, None, h.extras)
        except MachineError as exc:
            raise DefinitionMismatch(
                f"cannot migrate: the current state does not exist in the new definition ({exc})"
            ) from None
        entry = encode_header(dict(chart.definition), chart.hash, snap, self.clock())
        try:
            index = self.core.append_locked(entry, h.length)
        except _Moved:
            raise HeadMoved(
                "the log grew while migrating; nothing was recorded: open the machine again"
            ) from None
        self.core.set_locked(_header_recorded(index, h.fork, chart, snap))

    # --- the chart and snapshots -------------------------------------------------------------

    def chart_for(self, h: Recorded) -> Statechart | None:
        """The chart (with this object's implementations) for the header governing ``h``."""
        if h.header_hash == self._chart_hash or h.header_hash is None:
            return self._chart
        given = self._given
        chart: Statechart | None
        reason: str | None
        if given is not None and given.hash == h.header_hash:
            chart, reason = given, None
        elif h.chart is not None and h.chart.hash == h.header_hash and self._same_impl(h.chart):
            chart, reason = h.chart, None
        else:
            chart, reason = self._compile_stored(h.definition)  # type: ignore[arg-type]
        self._chart, self._chart_hash, self.view_only_reason = chart, h.header_hash, reason
        return chart

    def _same_impl(self, chart: Statechart) -> bool:
        return _impl_key(chart.actions) == _impl_key(self._actions) and _impl_key(chart.guards) == _impl_key(
            self._guards
        )

    def _compile_stored(self, definition: FrozenDict) -> tuple[Statechart | None, str | None]:
        """The stored definition compiled; view only (``send`` refused) if implementations are missing."""
        try:
            return compile_chart(definition, self._actions, self._guards), None
        except DefinitionError as exc:
            missing = missing_implementations(exc.problems)
            try:
                chart = Statechart(copy_json(definition), self._actions, self._guards, implementations=False)
            except DefinitionError as exc2:
                return None, f"the stored definition does not compile: {exc2}"
            names = ", ".join(f"{kind}={{{', '.join(map(repr, ns))}: ...}}" for kind, ns in missing.items())
            return chart, (
                f"this machine is view only: its definition names implementations that were not given; "
                f"pass {names or 'the actions/guards it names'} to Machine(...) to send events"
            )

    def snapshot_from(
        self, value: Any, context: Any, done: bool, chart: Statechart | None, extras: Any = None
    ) -> Snapshot:
        if chart is not None:
            try:
                return chart.snapshot_from(value, context, done, extras)
            except MachineError:
                pass
        return Snapshot.restored(value, context, done, extras)

    def head_snapshot(self, h: Recorded) -> Snapshot | None:
        if h.index < 0:
            return None
        chart = self.chart_for(h)
        if h.snapshot is not None and h.chart is chart:
            return h.snapshot
        cached = self._snap
        if cached is not None and cached[0] is h:
            return cached[1]
        snap = self.snapshot_from(h.value, h.context, h.done, chart, h.extras)
        self._snap = (h, snap)
        return snap

    def entry_snapshot(self, entry: HistoryEntry) -> Snapshot:
        value, context = frozen_entry(entry)
        return self.snapshot_from(
            value, context, entry.done, self.chart_for(self.core.current()), entry.extras
        )

    # --- the cursor ------------------------------------------------------------------------------

    def _follow(self) -> Recorded:
        """The recorded head, with the cursor clamped if the log was reorganised or cut since."""
        h = self.core.current()
        if h.fork != self._fork:
            if self._cursor is not None:
                keep = self.log.common_prefix(self._fork, self._cursor + 1)
                if self._cursor >= keep:
                    self._cursor = max(0, keep - 1)
                    self._cursor_snapshot = None
            self._fork = h.fork
        if self._cursor is not None and self._cursor >= h.index:
            self._cursor, self._cursor_snapshot = None, None  # on the head (or beyond it): live again
        return h

    @property
    def head_index(self) -> int:
        return self.core.current().index

    @property
    def at_head(self) -> bool:
        self._follow()
        return self._cursor is None

    @property
    def position(self) -> int:
        h = self._follow()
        return h.index if self._cursor is None else self._cursor

    @property
    def snapshot(self) -> Snapshot | None:
        h = self._follow()
        if self._cursor is None:
            return self.head_snapshot(h)
        if self._cursor_snapshot is None:
            self._cursor_snapshot = self.entry_snapshot(decode(self._cursor, self.log.get(self._cursor)))
        return self._cursor_snapshot

    def seek(self, index: int) -> Snapshot:
        h = self._follow()
        n = h.index + 1
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise OutOfRange(f"cannot seek to {index}: the history has entries 0..{n - 1}")
        self._cursor = None if index == h.index else index
        self._cursor_snapshot = None
        return self.snapshot  # type: ignore[return-value]

    # --- sending ------------------------------------------------------------------------

    def check_writable(self) -> None:
        if not self.log.writable:
            raise NotWritable(
                "this machine runs on a replica log (or a read-only store): only the writer can send "
                "events; nothing was done"
            )

    def check_sendable(self) -> None:
        """Refusals that need no lock: a replica, a cursor in the past."""
        self.check_writable()
        if self._cursor is None:
            return  # live: the send catches up with the log under the lock (a moved fork keeps it live)
        self._follow()
        if self._cursor is not None:
            raise NotAtHead(
                f"the history cursor is at entry {self._cursor}, not the head ({self.head_index}); "
                "call live() to return, or truncate() to branch from here"
            )

    def prepare_locked(
        self, etype: str, edata: Any, force: bool = False
    ) -> tuple[Recorded, Snapshot, bytes, dict[str, Any] | None]:
        """Catch up and run the transition on the recorded head (lock held); changes nothing on error.

        Returns the head it ran on, the new (frozen) snapshot, the entry to append and the
        snapshot's extras (None when empty), computed once for the entry and the new head.
        """
        h = self.core.refresh_locked(force)
        chart = self._chart if h.header_hash == self._chart_hash else self.chart_for(h)
        if self.view_only_reason:
            raise MachineError(self.view_only_reason)
        snap = h.snapshot if h.snapshot is not None and h.chart is chart else self.head_snapshot(h)
        if chart is None or snap is None:
            raise MachineError("no machine definition is known for this log yet")
        ev = make_event(etype, edata, self.clock())
        new = chart.transition(snap, ev)
        if new.invocations:
            new = stamp_invocations(new, h.length, h.fork)
        if type(new.value) is str and new.output is None:  # the common case of frozen_snapshot
            if type(new.context) is not FrozenDict:
                _set_context(new, freeze(new.context))  # (new: not handed out yet)
        else:
            new = frozen_snapshot(new)
        if new.output is None and not new.history and not new.timers and not new.invocations:
            extras = None
        else:
            extras = new.extras() or None
        return h, new, encode_transition(ev, new, h.header_index, extras), extras

    def commit_locked(self, h: Recorded, new: Snapshot, index: int, extras: dict[str, Any] | None) -> None:
        self.core.set_locked(
            _tuple_new(  # Recorded(...) without its Python-level __new__
                Recorded,
                (
                    index,
                    h.fork,
                    new.value,
                    new.context,
                    new.done,
                    h.header_index,
                    h.header_hash,
                    h.definition,
                    new,
                    self._chart,
                    extras,
                ),
            )
        )

    def send_locked(self, etype: str, edata: Any) -> Snapshot:
        """prepare, compare-and-append, commit (lock held); on a moved log catch up and run again."""
        append = self.core.append_locked  # compare-and-append (on a fleet's log, against its stored head)
        for attempt in range(RETRIES):
            h, new, entry, extras = self.prepare_locked(etype, edata, attempt > 0)
            try:
                index = append(entry, h.index + 1)
            except _Moved:
                continue
            self.commit_locked(h, new, index, extras)
            return new
        raise HeadMoved(
            f"the log grew under the machine {RETRIES} times in a row (something appends to it without "
            "the runtime); nothing was recorded for this event"
        )

    def truncate_locked(self, n: int) -> Snapshot:
        h = self.core.refresh_locked()
        if n < 1:
            raise OutOfRange("the header entry (index 0) cannot be cut: truncate(n) needs n >= 1")
        if n > h.index + 1:
            raise OutOfRange(f"cannot truncate to {n}: the history has {h.index + 1} entries")
        self.log.truncate(n)
        h = self.core.refresh_locked()
        self._fork = h.fork
        self._cursor, self._cursor_snapshot = None, None
        return self.head_snapshot(h)  # type: ignore[return-value]


def frozen_snapshot(snap: Snapshot) -> Snapshot:
    """``snap``, fresh from the interpreter and not yet handed out, with its value, context and
    output frozen in place (read-only copies: shared by every reader, never changed)."""
    if type(snap.value) is not str:
        object.__setattr__(snap, "value", freeze(snap.value, "state"))
    if snap.output is not None:
        object.__setattr__(snap, "output", freeze(snap.output, "output"))
    ctx = snap.context
    if type(ctx) is not FrozenDict:
        object.__setattr__(snap, "context", freeze(ctx))
    return snap


def prepare_event(event: Any, data: Any) -> tuple[str, Any]:
    """The event's type and a frozen copy of its data (actions see it read-only; the caller keeps theirs)."""
    etype, edata = as_event(event, data)
    return etype, freeze(edata, "event data")


class Machine(_Reads):
    """A synchronous machine over a log: ``send`` records one entry per event.

    ``Machine(log, definition, actions=..., guards=...)`` creates the machine in
    an empty writable log (a header entry), or restores it in O(1) from the last
    entry. A different definition raises DefinitionMismatch unless
    ``migrate=True``. Without a definition the stored one is used (view only
    unless implementations are given). On a replica, the machine follows the
    log as it grows and ``send`` raises NotWritable.

    Every Machine and Coremachine on the same log in a process shares one core:
    sends are serialised per log whatever the objects or threads, and each is a
    compare-and-append at the recorded head (see ``send``). Dropping a Machine
    without ``close()`` leaves nothing behind.
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
        self._face = _Face(log, definition, actions, guards, migrate, clock)

    __slots__ = ("__weakref__", "_face")

    def send(self, event: str | Event | Mapping | tuple, data: Any = None) -> Snapshot:
        """Run ``event`` to completion and record it as one entry; returns the new snapshot.

        ``event`` is a type string (``send("START", 1)``: ``data`` is the event data), an
        :class:`Event` (its ``time`` is replaced by the clock's; ``data`` overrides its data
        when given), a ``(type, data)`` tuple, or a dict ``{"type": ..., "data": ...}``. The data
        is copied first (actions see a read-only copy; changing yours later changes nothing).
        Raises NotWritable on a replica and NotAtHead when the cursor is in the past (before
        any work); EventNotAccepted, a guard's or action's own exception, or
        UnserializableContext, and then records nothing and changes nothing.

        The send holds the log's lock (shared by every machine object on the log), catches up
        with the log, and appends only if the log is still the length it ran the event on; if
        something else appended meanwhile it runs the event again on the new head (at most 8
        times, then HeadMoved, recording nothing).
        """
        face = self._face
        if face._cursor is not None or not face.log.writable:
            face.check_sendable()  # raises
        if type(event) is str and (data is None or type(data) in _SCALARS):
            etype, edata = event, data  # nothing to copy
        else:
            etype, edata = prepare_event(event, data)
        with face.core.lock:
            return face.send_locked(etype, edata)

    action = send

    def run_due_timers(self, now: int | None = None) -> list[Snapshot]:
        """Fire the delayed transitions due at ``now`` (default: the clock), earliest first; the new snapshots.

        Each firing is recorded like any event. Call it when convenient (a loop, a cron, after a
        restart): a timer due while nothing ran fires once, late. See ``corelog.machine._scheduler``.
        """
        from ._scheduler import fire_due

        return fire_due(self, now)

    def truncate(self, n: int) -> Snapshot:
        """Keep entries ``[0, n)`` (fork + 1); the snapshot becomes entry n-1's, the cursor live."""
        face = self._face
        with face.core.lock:
            return face.truncate_locked(n)

    def close(self) -> None:
        """Nothing to release (kept for ``with`` blocks and symmetry): a dropped Machine leaves nothing."""

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["History", "Machine", "as_event", "compile_chart", "definition_hash", "now_ms"]


def _header_recorded(index: int, fork: int, chart: Statechart, snap: Snapshot) -> Recorded:
    """What a header entry just appended at ``index`` records: the core's new head."""
    return Recorded(
        index,
        fork,
        snap.value,
        snap.context,
        snap.done,
        index,
        chart.hash,
        frozen_definition(chart),
        snap,
        chart,
        snap.extras() or None,
    )
