"""XState-like statecharts recorded in a corelog log.

A pure interpreter (:class:`Statechart`, :func:`initial`, :func:`transition`)
and a runtime binding a machine to a log: a synchronous :class:`Machine` and a
trio duplex stream :class:`Coremachine` (two faces over one shared core per
log), with history time travel. Contexts and snapshots handed out are
read-only (:class:`FrozenDict`; ``thaw`` gives a mutable copy). The errors
they raise live in :mod:`corelog.machine.errors` and are re-exported here.
"""

from corelog.errors import NotWritable, OutOfRange

from ._definition import definition_hash
from ._entries import HistoryEntry
from ._entries import decode as decode_entry
from ._fleet import Fleet, Kind, MachineInfo
from ._frozen import FrozenDict, FrozenList, thaw
from ._interpreter import Event, Snapshot, Statechart, initial, transition
from ._listeners import Change, Listeners
from ._mermaid import from_mermaid, to_mermaid
from ._runtime import History, Machine
from ._scheduler import FakeClock, TimerHeap, drive
from ._stream import Coremachine
from .errors import (
    ActionFailed,
    DefinitionError,
    DefinitionMismatch,
    EndlessLoop,
    EventNotAccepted,
    FleetClosed,
    HeadMoved,
    InvalidMachineId,
    MachineError,
    MermaidError,
    NotAMachineLog,
    NotAtHead,
    UnknownKind,
    UnknownMachine,
    UnserializableContext,
)

__all__ = [
    "ActionFailed",
    "Change",
    "Fleet",
    "FleetClosed",
    "InvalidMachineId",
    "Kind",
    "Listeners",
    "MachineInfo",
    "UnknownKind",
    "UnknownMachine",
    "Coremachine",
    "DefinitionError",
    "DefinitionMismatch",
    "EndlessLoop",
    "Event",
    "FakeClock",
    "EventNotAccepted",
    "FrozenDict",
    "FrozenList",
    "HeadMoved",
    "History",
    "HistoryEntry",
    "Machine",
    "MachineError",
    "MermaidError",
    "NotAMachineLog",
    "NotAtHead",
    "NotWritable",
    "OutOfRange",
    "Snapshot",
    "Statechart",
    "TimerHeap",
    "UnserializableContext",
    "decode_entry",
    "definition_hash",
    "drive",
    "from_mermaid",
    "initial",
    "thaw",
    "to_mermaid",
    "transition",
]
