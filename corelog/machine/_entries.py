"""Log entries of a machine: encoding, strict decoding, and the history row type.

Entry 0 (and every migration) is a header that carries the snapshot too, so
every entry holds a full snapshot and restoring reads only the last entry::

    {"type": "corelog/machine", "version": 1, "definition": {...},
     "definition_hash": "...", "state": <value>, "context": {...}, "time": ms}
    {"event": {"type": "START", "data": 1}, "state": <value>, "context": {...},
     "time": ms, ["done": true], ["header": i]}

``header`` names the governing header entry when it is not entry 0 (after a
migration), so the current definition is found in O(1).
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from ._frozen import FrozenDict, freeze
from ._interpreter import Event, Snapshot
from .errors import NotAMachineLog, UnserializableContext

HEADER_TYPE = "corelog/machine"
VERSION = 1
_NO_EXTRAS: Any = object()


def check_json(value: Any, path: str = "context") -> None:
    """Raise UnserializableContext naming the first non-JSON value (sets, objects, NaN, tuples...)."""
    freeze(value, path)


def encode_header(
    definition: Mapping[str, Any],
    definition_hash: str,
    snapshot: Snapshot,
    time: int,
    packed: bytes | None = None,
) -> bytes:
    """The header entry; UnserializableContext if the context is not JSON (a frozen one is).

    ``packed``: the definition's msgpack bytes already made (``packed_definition``), spliced in
    as they are: the entry is byte for byte the msgpack of the entry dict.
    """
    freeze(snapshot.context)
    rest = {"state": snapshot.value, "context": snapshot.context, "time": time, **_extras(snapshot)}
    if packed is None:
        return _pack(
            {
                "type": HEADER_TYPE,
                "version": VERSION,
                "definition": dict(definition),
                "definition_hash": definition_hash,
                **rest,
            }
        )
    # a msgpack map is its header (a fixmap: fewer than 16 keys) then its keys and values in order
    tail = _pack(rest)
    return b"".join(
        (
            bytes([0x80 | (len(rest) + 4)]),
            _HEADER_START,
            packed,
            _pack("definition_hash"),
            _pack(definition_hash),
            tail[1:],
        )
    )


_HEADER_START = b"".join(
    msgpack.packb(x, use_bin_type=True) for x in ("type", HEADER_TYPE, "version", VERSION, "definition")
)


def _pack_definition(definition: Mapping[str, Any]) -> bytes:
    """A definition's msgpack bytes (as a dict: what the header entry records)."""
    return _pack(dict(definition))


_PACKED_DEFINITIONS: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()


def packed_definition(chart: Any) -> bytes:
    """The chart's definition as msgpack bytes, packed once per chart."""
    packed = _PACKED_DEFINITIONS.get(chart)
    if packed is None:
        packed = _PACKED_DEFINITIONS[chart] = _pack_definition(chart.definition)
    return packed


def encode_transition(event: Event, snapshot: Snapshot, header: int, extras: Any = _NO_EXTRAS) -> bytes:
    """A transition entry; UnserializableContext if the context is not JSON (a frozen one is).

    ``extras``: ``snapshot.extras()`` already computed and frozen by the caller (None when empty).
    """
    context = snapshot.context
    if type(context) is not FrozenDict:
        freeze(context)
    data = event.data
    entry: dict[str, Any] = {
        "event": {"type": event.type} if data is None else {"type": event.type, "data": data},
        "state": snapshot.value,
        "context": context,
        "time": event.time,
    }
    if snapshot.done:
        entry["done"] = True
    if extras is _NO_EXTRAS:
        entry.update(_extras(snapshot))
    elif extras:
        freeze(extras, "snapshot")
        entry.update(extras)
    if header:
        entry["header"] = header
    return _pack(entry)


INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what msgpack can encode


class _Packers(threading.local):
    """One msgpack Packer per thread (``packb`` builds, and allocates a buffer for, a new one per call)."""

    def __init__(self) -> None:
        self.pack = msgpack.Packer(use_bin_type=True).pack  # resets itself after an error


_PACKERS = _Packers()


def _pack(entry: Any) -> bytes:
    """msgpack bytes; an integer msgpack cannot hold is an UnserializableContext naming where it is."""
    try:
        return _PACKERS.pack(entry)
    except OverflowError:
        where = _huge_int(entry, "") or "a value"
        raise UnserializableContext(
            f"{where} is an integer outside -2**63..2**64-1, which cannot be recorded; store it as a string "
            "(or a float). Nothing was appended"
        ) from None


def _huge_int(value: Any, path: str) -> str | None:
    """The path of the first integer msgpack cannot encode (cold path: only after an OverflowError)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return path if not INT_MIN <= value <= INT_MAX else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = _huge_int(v, f"{path}.{k}" if isinstance(k, str) else f"{path}[{k}]")
        if found:
            return found.lstrip(".")
    return None


EXTRA_KEYS = ("output", "history", "timers", "invocations")


def _extras(snapshot: Snapshot) -> dict[str, Any]:
    """The interpreter's extra snapshot fields (machine output, history values, pending timers,
    running invocations), recorded only when non-empty so plain machines' entries are unchanged."""
    x = snapshot.extras()
    if x:
        freeze(x, "snapshot")  # JSON only (UnserializableContext otherwise)
    return x


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One recorded entry: the event and the snapshot it produced (or a header)."""

    index: int
    kind: str  # "header" or "transition"
    event: Event | None
    state: Any
    context: dict
    time: int | None
    done: bool = False
    header: int = 0
    definition: dict | None = None
    definition_hash: str | None = None
    extras: dict | None = None  # output/history/timers/invocations, when recorded

    @property
    def snapshot(self) -> Snapshot:
        return Snapshot.restored(self.state, self.context, self.done, self.extras)

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "kind": self.kind,
            "event": self.event.to_dict() if self.event else None,
            "state": self.state,
            "context": self.context,
            "time": self.time,
        }

    def _repr_html_(self) -> str:
        from html import escape

        ev = self.event.type if self.event else f"({self.kind})"
        return (
            f"<table><tr><th>#</th><th>event</th><th>state</th><th>context</th></tr><tr><td>{self.index}</td>"
            f"<td>{escape(ev)}</td><td><code>{escape(json.dumps(self.state))}</code></td>"
            f"<td><code>{escape(json.dumps(self.context, default=str))}</code></td></tr></table>"
        )


def _int_or_none(value: Any) -> bool:
    return value is None or (type(value) is int)


def decode(index: int, data: bytes) -> HistoryEntry:
    """Decode entry ``index`` strictly; NotAMachineLog if it is not a corelog machine entry."""
    try:
        e = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise NotAMachineLog(f"entry {index} is not msgpack ({exc}); this is not a machine log") from None
    if not isinstance(e, dict) or "state" not in e or not isinstance(e.get("context"), dict):
        raise NotAMachineLog(f"entry {index} is not a machine entry (no state/context)")
    state = e["state"]
    if not isinstance(state, str | dict):
        raise NotAMachineLog(f"entry {index} has a state of type {type(state).__name__}; not a machine entry")
    if not _int_or_none(e.get("time")):
        raise NotAMachineLog(f"entry {index} has a non-integer time {e.get('time')!r}")
    if e.get("type") == HEADER_TYPE:
        if e.get("version") != VERSION:
            raise NotAMachineLog(f"entry {index}: unsupported machine header version {e.get('version')!r}")
        if not isinstance(e.get("definition"), dict) or not isinstance(e.get("definition_hash"), str):
            raise NotAMachineLog(f"entry {index}: a machine header without a definition and its hash")
        return HistoryEntry(
            index,
            "header",
            None,
            state,
            e["context"],
            e.get("time"),
            False,
            index,
            e["definition"],
            e["definition_hash"],
            _decode_extras(index, e),
        )
    if index == 0:
        raise NotAMachineLog("entry 0 is not a machine header; this log was not written by a machine")
    ev = e.get("event")
    if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
        raise NotAMachineLog(f"entry {index} has no event")
    header = e.get("header", 0)
    if type(header) is not int or not 0 <= header < index:
        raise NotAMachineLog(f"entry {index} names header {header!r}, which cannot precede it")
    done = e.get("done", False)
    if type(done) is not bool:
        raise NotAMachineLog(f"entry {index} has a non-boolean done flag {done!r}")
    return HistoryEntry(
        index,
        "transition",
        Event(ev["type"], ev.get("data"), e.get("time")),
        state,
        e["context"],
        e.get("time"),
        done,
        header,
        extras=_decode_extras(index, e),
    )


def _decode_extras(index: int, e: dict) -> dict | None:
    """The recorded extras of entry ``index`` (checked: history/timers/invocations are objects)."""
    x = {k: e[k] for k in EXTRA_KEYS if k in e}
    for k in ("history", "timers", "invocations"):
        if k in x and not isinstance(x[k], dict):
            raise NotAMachineLog(f"entry {index} has a {k} of type {type(x[k]).__name__}; expected an object")
    for k, v in (x.get("timers") or {}).items():
        if not _int_or_none(v):
            raise NotAMachineLog(f"entry {index}: timer {k!r} has a non-integer due time {v!r}")
    for k, v in (x.get("invocations") or {}).items():
        if not isinstance(v, dict) or not isinstance(v.get("src"), str):
            raise NotAMachineLog(f"entry {index}: invocation {k!r} is not an object with a src")
    return x or None
