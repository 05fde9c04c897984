"""A machine's recorded entries as a lazy sequence (``Machine.history``), with notebook views."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, overload

from corelog.errors import OutOfRange

from ._entries import HistoryEntry, decode

if TYPE_CHECKING:
    from ._runtime import _Face


class History(Sequence):
    """The recorded entries of a machine log, read lazily from the log."""

    def __init__(self, face: _Face):
        self._core = face

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


__all__ = ["History"]
