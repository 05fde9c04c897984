"""Compiling definitions into charts for the runtime, cached; definition diffs for error messages.

A machine object compiles its definition with its implementations (``compile_chart``); charts are
shared by every machine given the same definition and implementations, and a definition is
copied on load (later changes to the caller's dict change nothing).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from ._definition import definition_hash
from ._entries import _pack_definition
from ._frozen import FrozenDict, freeze
from ._interpreter import Statechart, copy_json


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


# Compiled charts, shared by machines given the same definition and implementations: compiling is
# most of a Machine's creation cost. Keyed by the definition's hash and the implementations'
# identities (the cached chart holds those functions, so their ids stay theirs).
_CHARTS: OrderedDict[tuple, Statechart] = OrderedDict()
_CHARTS_LOCK = threading.Lock()
_CHARTS_MAX = 256


_FROZEN_DEFINITIONS: OrderedDict[str, Any] = OrderedDict()


def frozen_definition(chart: Statechart) -> FrozenDict:
    """The chart's definition as a read-only copy, made once per definition hash."""
    with _CHARTS_LOCK:
        frozen = _FROZEN_DEFINITIONS.get(chart.hash)
    if frozen is None:
        frozen = freeze(copy_json(chart.definition))
        with _CHARTS_LOCK:
            _FROZEN_DEFINITIONS[chart.hash] = frozen
            if len(_FROZEN_DEFINITIONS) > _CHARTS_MAX:
                _FROZEN_DEFINITIONS.popitem(last=False)
    return frozen


def _impl_key(impl: Mapping[str, Callable] | None) -> tuple:
    return tuple(sorted((k, id(v)) for k, v in impl.items())) if impl else ()


_HASHES: OrderedDict[bytes, str] = OrderedDict()


def _hash_of(definition: Mapping) -> str:
    """``definition_hash(definition)``, remembered by the definition's msgpack bytes.

    Packing is a fraction of the canonical JSON's cost; equal bytes mean equal content, types and
    key order, hence an equal canonical JSON (a reordered or re-typed dict is only a miss).
    """
    try:
        packed = _pack_definition(definition)
    except Exception:
        return definition_hash(definition)
    with _CHARTS_LOCK:
        found = _HASHES.get(packed)
    if found is None:
        found = definition_hash(definition)
        with _CHARTS_LOCK:
            _HASHES[packed] = found
            if len(_HASHES) > _CHARTS_MAX:
                _HASHES.popitem(last=False)
    return found


def compile_chart(
    definition: Mapping, actions: Mapping[str, Callable] | None, guards: Mapping[str, Callable] | None
) -> Statechart:
    """A chart for a copy of ``definition`` (later changes to the caller's dict change nothing)."""
    if not isinstance(definition, Mapping):
        return Statechart(definition, actions, guards)  # raises DefinitionError
    try:  # the canonical JSON hash of the caller's dict: a cached chart holds a copy made earlier
        key = (_hash_of(definition), _impl_key(actions), _impl_key(guards))
    except Exception:  # not JSON: let the compiler report every problem
        return Statechart(copy_json(definition), actions, guards)
    with _CHARTS_LOCK:
        chart = _CHARTS.get(key)
        if chart is not None:
            _CHARTS.move_to_end(key)
            return chart
    chart = Statechart(copy_json(definition), actions, guards)
    with _CHARTS_LOCK:
        _CHARTS[key] = chart
        if len(_CHARTS) > _CHARTS_MAX:
            _CHARTS.popitem(last=False)
    return chart


__all__ = [
    "compile_chart",
    "definition_diff",
    "definition_hash",
    "frozen_definition",
    "missing_implementations",
]
