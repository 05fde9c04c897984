"""The interpreter's values: :class:`Event` and :class:`Snapshot` (immutable), JSON copying,
and the invocation stamps the runtime adds to a snapshot (``stamp_invocations``).

The interpreter (``_interpreter``) and the microstep algorithm (``_microstep``) build these;
the runtime records and restores them (``_entries``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._frozen import FrozenDict, freeze

_EMPTY: Mapping[str, Any] = {}
EMPTY_MAP: Mapping[str, Any] = FrozenDict()  # the shared, read-only empty history/timers/invocations


def frozen_map(value: Mapping[str, Any] | None, path: str) -> Mapping[str, Any]:
    """``value`` as a deep read-only mapping (the shared empty one when empty): a snapshot's
    ``history``, ``timers`` and ``invocations`` are handed out, so nobody may change them."""
    return freeze(value, path) if value else EMPTY_MAP


@dataclass(frozen=True, slots=True)
class Event:
    """An event: its type, optional data, and the time (ms) it happened."""

    type: str
    data: Any = None
    time: int | None = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"type": self.type}
        if self.data is not None:
            out["data"] = self.data
        return out


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable state of a machine: the XState value, the context, ``done`` and ``output``.

    ``history`` maps each history state's id to the states it remembers;
    ``timers`` maps the event of each pending delayed transition
    (``xstate.after.<delay>.<stateId>``) to its due time in ms (None when the
    entering event had no time); ``invocations`` maps each running invocation's
    id to ``{"src", "input", "state"}`` (the runtime adds ``"at"``, the index of
    the entry that started it). Entering a state starts its timers and
    invocations, leaving it cancels them: a driver compares two snapshots to
    know what to start and stop. ``history``, ``timers`` and ``invocations`` are
    read-only (:class:`FrozenDict`) wherever the interpreter or runtime made the
    snapshot; the context is read-only wherever the runtime hands it out.
    """

    value: str | dict
    context: Mapping[str, Any]
    done: bool = False
    output: Any = None
    history: Mapping[str, list] = field(default_factory=lambda: EMPTY_MAP)
    timers: Mapping[str, int | None] = field(default_factory=lambda: EMPTY_MAP)
    invocations: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: EMPTY_MAP)
    _config: frozenset = field(default=frozenset(), compare=False, repr=False)

    def matches(self, state: str | Mapping) -> bool:
        """True if the state (``"parent.child"`` or a partial value dict) is active."""
        paths = _value_paths(state) if isinstance(state, Mapping) else [state]
        active = (
            {n.path for n in self._config} if self._config else set(_value_paths(self.value, prefixes=True))
        )
        return all(p in active for p in paths)

    def extras(self) -> dict[str, Any]:
        """The non-empty ``output``/``history``/``timers``/``invocations`` as a JSON dict (for storage)."""
        out: dict[str, Any] = {}
        if self.output is not None:
            out["output"] = self.output
        if self.history:
            out["history"] = {k: list(v) for k, v in self.history.items()}
        if self.timers:
            out["timers"] = dict(self.timers)
        if self.invocations:
            out["invocations"] = {k: dict(v) for k, v in self.invocations.items()}
        return out

    @classmethod
    def restored(
        cls,
        value: Any,
        context: Any,
        done: bool,
        extras: Mapping[str, Any] | None,
        config: frozenset = frozenset(),
    ) -> Snapshot:
        """The inverse of :meth:`extras`: a snapshot from a stored value, context, done flag and extras."""
        x = extras or _EMPTY
        return cls(
            value,
            context,
            done,
            x.get("output"),
            frozen_map(x.get("history"), "snapshot.history"),
            frozen_map(x.get("timers"), "snapshot.timers"),
            frozen_map(x.get("invocations"), "snapshot.invocations"),
            config,
        )

    def to_dict(self) -> dict:
        return {"value": self.value, "context": self.context, "done": self.done, **self.extras()}

    def _repr_html_(self) -> str:
        from html import escape

        ctx = escape(json.dumps(self.context, default=str, ensure_ascii=False))
        val = escape(json.dumps(self.value, ensure_ascii=False))
        done = " <b>(done)</b>" if self.done else ""
        return (
            f"<table><tr><th style='text-align:left'>state</th><td><code>{val}</code>{done}</td></tr>"
            f"<tr><th style='text-align:left'>context</th><td><code>{ctx}</code></td></tr></table>"
        )


# Fast constructors: every field given, set through the slots directly (a frozen dataclass's
# ``__init__`` calls ``object.__setattr__`` once per field: twice the cost; the interpreter makes
# one snapshot per transition and the runtime one event per send). Same class, same values.
_new = object.__new__
_set_type, _set_data, _set_time = (Event.__dict__[f].__set__ for f in ("type", "data", "time"))
_SNAPSHOT_SLOTS = ("value", "context", "done", "output", "history", "timers", "invocations", "_config")
_set_value, _set_context, _set_done, _set_output, _set_history, _set_timers, _set_invocations, _set_config = (
    Snapshot.__dict__[f].__set__ for f in _SNAPSHOT_SLOTS
)


def make_event(type: str, data: Any, time: int | None) -> Event:
    """``Event(type, data, time)``, made faster."""
    e = _new(Event)
    _set_type(e, type)
    _set_data(e, data)
    _set_time(e, time)
    return e


def make_snapshot(
    value: Any,
    context: Any,
    done: bool,
    output: Any,
    history: Mapping[str, list],
    timers: Mapping[str, int | None],
    invocations: Mapping[str, Mapping[str, Any]],
    config: frozenset,
) -> Snapshot:
    """``Snapshot(value, context, done, output, history, timers, invocations, config)``, made faster."""
    s = _new(Snapshot)
    _set_value(s, value)
    _set_context(s, context)
    _set_done(s, done)
    _set_output(s, output)
    _set_history(s, history)
    _set_timers(s, timers)
    _set_invocations(s, invocations)
    _set_config(s, config)
    return s


def _value_paths(value: Any, prefix: str = "", prefixes: bool = False) -> list[str]:
    if isinstance(value, str):
        return [f"{prefix}{value}"]
    out: list[str] = []
    for k, v in value.items():
        here = f"{prefix}{k}"
        if prefixes or v == {}:
            out.append(here)
        out.extend(_value_paths(v, f"{here}.", prefixes))
    return out


_LEAVES = frozenset((str, int, float, bool, type(None)))


def copy_json(value: Any) -> Any:
    """A fast deep copy for JSON-shaped data (dicts, lists, scalars)."""
    t = type(value)
    if t is dict or t is FrozenDict:  # (the common case: one C-level copy, nested containers replaced)
        out = dict(value)
        for k, v in out.items():
            if type(v) not in _LEAVES and isinstance(v, dict | list):
                out[k] = copy_json(v)  # an existing key: the dict does not change size
        return out
    if isinstance(value, dict):  # read-only FrozenDict/FrozenList (the runtime's) copy to plain ones
        return {k: copy_json(v) if isinstance(v, dict | list) else v for k, v in value.items()}
    if isinstance(value, list):
        return [copy_json(v) if isinstance(v, dict | list) else v for v in value]
    if isinstance(value, Mapping):
        return {k: copy_json(v) for k, v in value.items()}
    return value


def stamp_invocations(snapshot: Snapshot, index: int, fork: int) -> Snapshot:
    """``snapshot`` with each newly started invocation (one without ``"at"``) given the index and
    fork of the log entry that records its start: its idempotency key is then
    ``invocation_key(id, invocation)``, the same on every retry and after a restart."""
    if not snapshot.invocations or all("at" in v for v in snapshot.invocations.values()):
        return snapshot
    invs = {k: v if "at" in v else {**v, "at": index, "fork": fork} for k, v in snapshot.invocations.items()}
    return Snapshot(
        snapshot.value,
        snapshot.context,
        snapshot.done,
        snapshot.output,
        snapshot.history,
        snapshot.timers,
        frozen_map(invs, "snapshot.invocations"),
        snapshot._config,
    )


def invocation_key(invoke_id: str, invocation: Mapping[str, Any]) -> str:
    """The idempotency key of a running invocation: ``<fork>:<index>:<id>`` of the entry that started it."""
    return f"{invocation.get('fork', 0)}:{invocation.get('at', '?')}:{invoke_id}"
