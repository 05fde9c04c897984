"""XState-like statecharts recorded in a corelog log.

A pure interpreter (:class:`Statechart`, :func:`initial`, :func:`transition`)
and a runtime binding a machine to a log: a synchronous :class:`Machine` and a
trio duplex stream :class:`Coremachine`, with history time travel.
"""

from ._definition import definition_hash
from ._entries import HistoryEntry
from ._entries import decode as decode_entry
from ._interpreter import Event, Snapshot, Statechart, initial, transition
from ._runtime import History, Machine
from ._stream import Coremachine

__all__ = [
    "Coremachine",
    "Event",
    "History",
    "HistoryEntry",
    "Machine",
    "Snapshot",
    "Statechart",
    "decode_entry",
    "definition_hash",
    "initial",
    "transition",
]
