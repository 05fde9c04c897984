"""The read side every machine face shares (``Machine`` and ``Coremachine``): the state at the
history cursor, the chart, and history navigation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from corelog import Log

from ._history import History
from ._interpreter import Event, Snapshot, Statechart
from .errors import MachineError

if TYPE_CHECKING:
    from ._runtime import _Face


class _Reads:
    """The read side every face shares: state at the cursor, the chart, history navigation."""

    __slots__ = ()

    _face: _Face

    @property
    def log(self) -> Log:
        return self._face.log

    @property
    def history(self) -> History:
        """The recorded entries, read lazily from the log."""
        return History(self._face)

    @property
    def snapshot(self) -> Snapshot:
        """The snapshot at the cursor (read-only: its context cannot be changed)."""
        snap = self._face.snapshot
        if snap is None:
            raise MachineError("the log has no entries yet (a replica waiting for data)")
        return snap

    @property
    def state(self) -> Any:
        return self.snapshot.value

    @property
    def context(self) -> Mapping[str, Any]:
        """The context at the cursor: a read-only dict (``copy.deepcopy`` it to get a mutable one)."""
        return self.snapshot.context

    @property
    def done(self) -> bool:
        return self.snapshot.done

    @property
    def chart(self) -> Statechart | None:
        face = self._face
        return face.chart_for(face.core.current())

    @property
    def definition(self) -> dict | None:
        """The stored definition governing the head (read-only)."""
        return self._face.core.current().definition

    @property
    def definition_hash(self) -> str | None:
        return self._face.core.current().header_hash

    def matches(self, state: str | Mapping) -> bool:
        return self.snapshot.matches(state)

    def can(self, event: str | Event) -> bool:
        chart = self.chart
        return chart is not None and not self._face.view_only_reason and chart.can(self.snapshot, event)

    def available_events(self) -> list[str]:
        chart = self.chart
        return chart.available_events(self.snapshot) if chart else []

    # history navigation
    @property
    def position(self) -> int:
        """Index of the entry whose snapshot is shown."""
        return self._face.position

    @property
    def at_head(self) -> bool:
        return self._face.at_head

    def seek(self, index: int) -> Snapshot:
        """Show entry ``index`` (negative counts from the end); OutOfRange outside the history."""
        return self._face.seek(index)

    def backward(self, n: int = 1) -> Snapshot:
        """Move the cursor ``n`` entries back (stops at entry 0)."""
        return self._face.seek(max(0, self.position - n))

    def forward(self, n: int = 1) -> Snapshot:
        """Move the cursor ``n`` entries forward (stops at the head)."""
        return self._face.seek(min(self._face.head_index, self.position + n))

    def live(self) -> Snapshot:
        """Back to the head."""
        return self._face.seek(self._face.head_index)

    def _repr_html_(self) -> str:
        return self.snapshot._repr_html_()

    def __repr__(self) -> str:
        snap = self._face.snapshot
        where = "head" if self.at_head else f"entry {self.position}"
        name = type(self).__name__
        return f"<{name} {snap.value if snap else None!r} at {where} of {self._face.head_index + 1}>"
