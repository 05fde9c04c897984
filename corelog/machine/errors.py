"""Typed errors of ``corelog.machine``: definitions, the interpreter and the runtime.

They derive from :class:`corelog.errors.CorelogError`; the log layer knows nothing of them.
"""

from __future__ import annotations

from corelog.errors import CorelogError


class MachineError(CorelogError):
    """Base class of errors about machine definitions and runtimes."""


class DefinitionError(MachineError, ValueError):
    """A machine definition with problems; ``problems`` lists ``(path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = list(problems)
        lines = "\n".join(f"  {path or '<root>'}: {msg}" for path, msg in self.problems)
        super().__init__(
            f"invalid machine definition ({len(self.problems)} problem(s)):\n{lines}\n"
            "Fix the definition (or pass the missing actions/guards) and try again."
        )


class MermaidError(DefinitionError):
    """A Mermaid diagram that cannot be turned into a definition; ``line`` is 1-based."""

    def __init__(self, line: int, message: str):
        self.line = line
        super().__init__([(f"line {line}", message)])


class EventNotAccepted(MachineError):
    """No enabled transition for the event in the current state; nothing was recorded."""


class EndlessLoop(MachineError):
    """Eventless (``always``) transitions kept firing past the microstep limit."""


class NotAtHead(MachineError):
    """A send while the history cursor is in the past; call ``live()`` or ``truncate()`` first."""


class DefinitionMismatch(MachineError):
    """The log was recorded with a different definition; pass ``migrate=True`` to switch."""


class NotAMachineLog(MachineError):
    """The log's first entry is not a corelog machine header."""


class HeadMoved(MachineError):
    """The log kept growing under a send (something appends to it without the runtime); nothing was recorded."""


class UnserializableContext(MachineError, TypeError):
    """The context (or event data) cannot be stored as msgpack; nothing was recorded."""


# --- the fleet ---------------------------------------------------------------------------


class UnknownKind(MachineError, LookupError):
    """A send names a machine kind that was never registered (or a new machine without a kind)."""


class UnknownMachine(MachineError, LookupError):
    """No machine with this id exists in the fleet."""


class ActionFailed(MachineError):
    """An action or guard raised; the original exception is ``__cause__``. Nothing was recorded."""


class FleetClosed(MachineError):
    """The fleet is closed (or not started): start it with ``with fleet:`` or ``fleet.start()``."""


class InvalidMachineId(MachineError, ValueError):
    """A machine id must be a non-empty str of at most 200 UTF-8 bytes without NUL."""
