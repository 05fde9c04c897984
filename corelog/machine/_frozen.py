"""Read-only JSON values: what the runtime hands out is never the log's own state.

``freeze(value)`` checks that ``value`` is JSON (raising UnserializableContext
naming the first offending path, as ``check_json`` does) and returns a deep,
read-only copy of it in one pass: :class:`FrozenDict` and :class:`FrozenList`,
subclasses of ``dict`` and ``list`` (so ``json.dumps``, ``msgpack``, ``==`` and
``isinstance(x, dict)`` keep working) whose mutating methods raise
``TypeError``. A frozen value can be shared by every reader and by the
runtime's head without copying; ``copy.deepcopy(v)`` or ``thaw(v)`` gives a
mutable copy. Freezing an already frozen value costs nothing.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

from .errors import UnserializableContext


def _refuse(self: Any, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError(
        f"this {type(self).__name__} is read-only: machine contexts, snapshots and event data handed "
        "out by the runtime are views of the log, not its state. Send an event to change the machine, "
        "or take a mutable copy with copy.deepcopy() (or corelog.machine.thaw())"
    )


class FrozenDict(dict):
    """A read-only ``dict`` (its values are frozen too)."""

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple:  # copy.copy / deepcopy / pickle give a plain, mutable dict
        return (thaw, (dict(self),))

    def __copy__(self) -> dict:
        return thaw(self)

    def __deepcopy__(self, memo: dict) -> dict:
        return thaw(self)

    def __repr__(self) -> str:
        return dict.__repr__(self)


class FrozenList(list):
    """A read-only ``list`` (its items are frozen too)."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = clear = extend = insert = pop = remove = reverse = sort = _refuse

    def __reduce__(self) -> tuple:
        return (thaw, (list(self),))

    def __copy__(self) -> list:
        return thaw(self)

    def __deepcopy__(self, memo: dict) -> list:
        return thaw(self)

    def __repr__(self) -> str:
        return list.__repr__(self)


_SCALARS = (str, bool, int, type(None))
_SCALAR_SET = frozenset(_SCALARS)  # (a set lookup: one hash, not up to four comparisons)


def freeze(value: Any, path: str = "context") -> Any:
    """A deep read-only copy of the JSON value ``value``; UnserializableContext if it is not JSON."""
    t = type(value)
    if t is dict:  # (first: a context, the common case)
        for k, v in value.items():
            if type(k) is not str or type(v) not in _SCALAR_SET:
                break
        else:  # string keys, scalar values (the common context): one C-level copy
            return FrozenDict(value)
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                raise UnserializableContext(f"{path} has a non-string key {k!r}; use string keys")
            out[k] = v if type(v) in _SCALAR_SET else freeze(v, f"{path}.{k}")
        return FrozenDict(out)
    if t is FrozenDict or t is FrozenList or t in _SCALAR_SET:
        return value
    if t is float:
        if not math.isfinite(value):
            raise UnserializableContext(f"{path} is {value!r}; NaN and infinities cannot be recorded")
        return value
    if t is list:
        return FrozenList(
            [v if type(v) in _SCALAR_SET else freeze(v, f"{path}[{i}]") for i, v in enumerate(value)]
        )
    raise UnserializableContext(
        f"{path} is a {t.__name__} ({value!r:.60}); only JSON values (dict, list, str, int, float, bool, None) "
        "can be recorded. Nothing was appended"
    )


def thaw(value: Any) -> Any:
    """A plain, mutable deep copy of a (frozen or not) JSON value."""
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    return value


__all__ = ["FrozenDict", "FrozenList", "freeze", "thaw"]
