"""A typed facade for a definition: ``corelog gen DIAGRAM_OR_JSON -o module.py``.

:func:`generate` writes a Python module holding the definition and a base
class whose abstract methods are the definition's actions, guards, named
delays and services (gamgee's generated base class, made Pythonic). The user
subclasses it in their own module and fills in the blanks; ``send`` is
overloaded per event with ``Literal`` event names and ``TypedDict`` payloads,
so mypy rejects an unknown event name or a payload of the wrong type.
Regenerating rewrites only the generated module: method names are derived from
the diagram's names alone, so an unchanged diagram gives the same module and
the user's subclass keeps working.

Payload types come from the definition's ``meta.payloads``
(``{"EVENT": {"field": "int"}}``; type strings such as ``int``, ``str | None``,
``list[int]``), or in a Mermaid diagram from ``%% @payload EVENT field: int, other: str``.
"""

from __future__ import annotations

import json
import keyword
import re
from collections.abc import Mapping
from typing import Any

from ._interpreter import Statechart
from .errors import DefinitionError

__all__ = ["generate", "load_definition"]

_RESERVED = {"definition", "statechart", "services", "machine", "attach", "send", "snapshot", "delays"}
_TYPE = re.compile(r"^[A-Za-z_][\w\[\], .|]*$")


def load_definition(text: str, name: str = "") -> dict[str, Any]:
    """A definition from JSON text or Mermaid ``stateDiagram`` text (told apart by the first character)."""
    from ._mermaid import from_mermaid

    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DefinitionError([(name or "<json>", f"not valid JSON: {exc}")]) from None
        if not isinstance(d, dict):
            raise DefinitionError([(name or "<json>", "a definition is a JSON object")])
        return d
    return from_mermaid(text)


def _ident(name: str) -> str:
    out = re.sub(r"\W", "_", name)
    if not out or out[0].isdigit():
        out = "_" + out
    if keyword.iskeyword(out) or out in _RESERVED:
        out += "_"
    return out


def _class_name(machine_id: str) -> str:
    parts = re.split(r"[^A-Za-z0-9]+", machine_id)
    name = "".join(p[:1].upper() + p[1:] for p in parts if p) or "Machine"
    return ("M" + name if name[0].isdigit() else name) + "Base"


def _collect(chart: Statechart) -> dict[str, list[str]]:
    actions: list[str] = []
    guards: list[str] = []
    events: list[str] = []
    delays: list[str] = []

    def add(seq: list[str], name: str) -> None:
        if name not in seq:
            seq.append(name)

    for n in chart._nodes:
        for a in (*n.entry, *n.exit):
            add(actions, a.name)
        for after in n.after:
            if isinstance(after.delay, str):
                add(delays, after.delay)
        for ev, ts in [*n.on.items(), ("", n.always)]:
            if ev and not ev.startswith("xstate."):
                add(events, ev)
            for t in ts:
                for a in t.actions:
                    add(actions, a.name)
                if t.guard is not None:
                    add(guards, t.guard.name)
    states = [n.path for n in chart._nodes if n.path]
    return {
        "actions": actions,
        "guards": guards,
        "events": sorted(events),
        "delays": delays,
        "services": list(chart.services),
        "states": states,
    }


def generate(definition: Mapping[str, Any], source: str = "", class_name: str | None = None) -> str:
    """The source of the facade module for ``definition`` (validated first; DefinitionError if invalid)."""
    chart = Statechart(definition, implementations=False)
    names = _collect(chart)
    cls = class_name or _class_name(chart.id)
    payloads_raw = (definition.get("meta") or {}).get("payloads") or {}
    problems = []
    if not isinstance(payloads_raw, Mapping):
        raise DefinitionError([("meta.payloads", "payloads is {EVENT: {field: type}}")])
    for ev, fields in payloads_raw.items():
        if ev not in names["events"]:
            problems.append((f"meta.payloads.{ev}", f"no transition takes event {ev!r}"))
        if not isinstance(fields, Mapping) or not all(
            isinstance(k, str) and k.isidentifier() and isinstance(v, str) and _TYPE.match(v)
            for k, v in fields.items()
        ):
            problems.append((f"meta.payloads.{ev}", "fields are {identifier: 'python type'}"))
    if problems:
        raise DefinitionError(problems)

    taken: set[str] = set()

    def method(kind: str, name: str) -> str:
        m = _ident(name)
        if m in taken:
            m = _ident(f"{kind}_{name}")
        while m in taken:
            m += "_"
        taken.add(m)
        return m

    table = {k: {n: method(k[:-1], n) for n in names[k]} for k in ("actions", "guards", "delays", "services")}

    def lit(items: list[str]) -> str:
        return "Literal[" + ", ".join(json.dumps(x) for x in items) + "]" if items else "str"

    out: list[str] = []
    w = out.append
    w(f'"""Typed facade generated by ``corelog gen``{f" from {source}" if source else ""}: do not edit.')
    w("")
    w(f"Subclass :class:`{cls}` in your own module and implement its abstract methods;")
    w("regenerate this file when the diagram changes.")
    w('"""')
    w("")
    w("from __future__ import annotations")
    w("")
    w("import abc")
    w("import json")
    w("from collections.abc import Awaitable, Callable, Mapping")
    w("from typing import Any, Literal, TypedDict, overload")
    w("")
    w("from corelog.machine import Coremachine, Event, Machine, Snapshot, Statechart")
    w("")
    text = json.dumps(definition, indent=4, ensure_ascii=True).replace("\\", "\\\\")
    w('DEFINITION: dict[str, Any] = json.loads("""')
    w(text)
    w('""")')
    w("")
    w(f"EventType = {lit(names['events'])}")
    w(f"StateName = {lit(names['states'])}")
    w(f"ActionName = {lit(names['actions'])}")
    w(f"GuardName = {lit(names['guards'])}")
    w(f"ServiceName = {lit(names['services'])}")
    payload_class: dict[str, str] = {}
    for ev in names["events"]:
        fields = payloads_raw.get(ev)
        if fields is None:
            continue
        pc = _class_name(ev)[:-4] + "Payload"
        payload_class[ev] = pc
        w("")
        w("")
        w(f"class {pc}(TypedDict):")
        w(f'    """The data of event {ev!r}."""')
        w("")
        for k, v in fields.items():
            w(f"    {k}: {v}")
        if not fields:
            w("    pass")
    w("")
    w("")
    w(f"class {cls}(abc.ABC):")
    w(
        f'    """The machine {chart.id!r}: implement every abstract method, then ``machine(log)`` or ``statechart()``."""'
    )
    w("")
    w("    definition: dict[str, Any] = DEFINITION")
    for k in ("actions", "guards", "delays", "services"):
        body = ", ".join(f"{json.dumps(n)}: {json.dumps(m)}" for n, m in table[k].items())
        w(f"    {k.upper()}: dict[str, str] = {{{body}}}")
    w("    _target: Machine | None = None")
    w("    _async_target: Coremachine | None = None")
    for n, m in table["actions"].items():
        w("")
        w("    @abc.abstractmethod")
        w(f"    def {m}(self, ctx: dict[str, Any], event: Event) -> Mapping[str, Any] | None:")
        w(f'        """Action {n!r}: change ``ctx`` in place or return a dict to merge into it."""')
    for n, m in table["guards"].items():
        w("")
        w("    @abc.abstractmethod")
        w(f"    def {m}(self, ctx: Mapping[str, Any], event: Event) -> bool:")
        w(f'        """Guard {n!r}: whether the transition may be taken."""')
    for n, m in table["delays"].items():
        w("")
        w("    @abc.abstractmethod")
        w(f"    def {m}(self, ctx: Mapping[str, Any], event: Event) -> int:")
        w(f'        """Delay {n!r} in milliseconds, computed on entering the state."""')
    for n, m in table["services"].items():
        w("")
        w("    @abc.abstractmethod")
        w(f"    async def {m}(self, input: Any, context: Mapping[str, Any], key: str) -> Any:")
        w(
            f'        """Service {n!r}: its result is recorded as the invocation\'s done event (raise for error).'
        )
        w("")
        w("        ``key`` is the same on every retry of one invocation (use it for idempotency).")
        w('        """')
    w("")
    w("    def statechart(self) -> Statechart:")
    w('        """The compiled chart with this object\'s actions, guards and delays."""')
    w("        return Statechart(")
    w("            self.definition,")
    w("            actions={n: getattr(self, m) for n, m in self.ACTIONS.items()},")
    w("            guards={n: getattr(self, m) for n, m in self.GUARDS.items()},")
    w("            delays={n: getattr(self, m) for n, m in self.DELAYS.items()},")
    w("        )")
    w("")
    w("    def services(self) -> dict[str, Callable[..., Awaitable[Any]]]:")
    w('        """The service implementations by name (for a scheduler driving invocations)."""')
    w("        return {n: getattr(self, m) for n, m in self.SERVICES.items()}")
    w("")
    w("    def machine(self, log: Any, **options: Any) -> Machine:")
    w('        """A :class:`Machine` on ``log`` with this implementation; ``send`` then goes to it."""')
    w("        self._target = Machine(log, self.statechart(), **options)")
    w("        return self._target")
    w("")
    w("    def coremachine(self, log: Any, **options: Any) -> Coremachine:")
    w(
        '        """A trio :class:`Coremachine` on ``log`` (inside trio); ``asend`` and ``run`` then use it."""'
    )
    w("        self._async_target = Coremachine(log, self.statechart(), **options)")
    w("        return self._async_target")
    w("")
    w("    async def run(self) -> Any:")
    w(
        '        """Run the Coremachine\'s timers and services until it is done (its output); see Coremachine.run."""'
    )
    w("        if self._async_target is None:")
    w('            raise RuntimeError("no Coremachine: call coremachine(log) first")')
    w("        return await self._async_target.run(self.services())")
    w("")
    w("    def attach(self, target: Machine) -> None:")
    w('        """Send to an existing machine."""')
    w("        self._target = target")
    w("")
    w("    @property")
    w("    def snapshot(self) -> Snapshot:")
    w("        if self._target is None:")
    w('            raise RuntimeError("no machine: call machine(log) or attach(machine) first")')
    w("        return self._target.snapshot")
    evs = names["events"]

    def sig(ev: str, prefix: str) -> str:
        pc = payload_class.get(ev)
        data = f"data: {pc}" if pc else "data: Any = None"
        return f"    {prefix}(self, event: Literal[{json.dumps(ev)}], {data}) -> Snapshot:"

    for prefix, target, call in (
        ("def send", "_target", "self._target.send(event, data)"),
        ("async def asend", "_async_target", "await self._async_target.send(event, data)"),
    ):
        if len(evs) > 1:
            for ev in evs:
                w("")
                w("    @overload")
                w(sig(ev, prefix) + " ...")
        w("")
        if len(evs) == 1:
            w(sig(evs[0], prefix))
        else:
            w(f"    {prefix}(self, event: EventType, data: Any = None) -> Snapshot:")
        w('        """Send ``event`` (typed: unknown names and wrong payloads fail mypy)."""')
        w(f"        if self.{target} is None:")
        w('            raise RuntimeError("no machine: call machine(log) / coremachine(log) first")')
        w(f"        return {call}")
    return "\n".join(out) + "\n"
