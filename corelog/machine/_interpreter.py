"""The pure statechart interpreter: ``initial`` and ``transition``, nothing else.

Theory of operation
-------------------
A compiled :class:`Statechart` is a tree of ``StateNode`` (see ``_definition``)
numbered in document order. A *configuration* is the set of active nodes,
ancestors included; a :class:`Snapshot` holds it (privately), the XState state
*value* derived from it, the context and ``done``. Snapshots are immutable and
the interpreter never mutates one: each transition copies the context once and
runs every action on that private copy, so a raising guard or action leaves the
caller's snapshot exactly as it was. Time and randomness come from the event,
never from the clock: the same chart, snapshot and event give the same result.

One external event is one *macrostep*, made of *microsteps*, following SCXML
(which XState v5 follows):

1. Selection: for each active atomic state, in document order, walk it and its
   ancestors and take the first transition for the event whose guard passes.
   Transitions whose exit sets overlap are resolved in favour of the earlier
   (a descendant's transition preempts its ancestor's). None selected means
   the event is not accepted (``EventNotAccepted``): nothing happens.
2. Microstep: exit the exit set (innermost first; exit actions), run the
   transitions' actions in document order, then enter the entry set
   (outermost first; entry actions), adding initial children of compound
   states and every region of parallel states.
3. Entering a final child of a compound state raises ``xstate.done.state.<id>``
   internally; eventless ``always`` transitions and those internal events are
   then taken until none is enabled. More than ``max_microsteps`` of them is
   an endless loop: ``EndlessLoop``.

Re-entry follows XState v5: by default (``reenter: false``) a transition from a
state to itself or to one of its descendants does not exit and re-enter it (a
self-transition just runs its actions); ``reenter: true`` makes it exit and
re-enter. A targetless transition only runs its actions.

The compiler's tables: per node, ``on`` maps event type -> candidate list in
document order, ``always`` lists eventless candidates; per atomic node, its
ancestor chain is precomputed. A machine whose transitions keep the
configuration (targetless, or to itself without re-entry) takes a fast path that
only runs actions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._definition import ActionRef, StateNode, Transition, compile_definition, definition_hash
from .errors import EndlessLoop, EventNotAccepted, MachineError

INIT_EVENT = "xstate.init"


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
    """An immutable state of a machine: the XState value, the context, and ``done``.

    Treat ``context`` as read-only; the interpreter never mutates it.
    """

    value: str | dict
    context: Mapping[str, Any]
    done: bool = False
    _config: frozenset = field(default=frozenset(), compare=False, repr=False)

    def matches(self, state: str | Mapping) -> bool:
        """True if the state (``"parent.child"`` or a partial value dict) is active."""
        paths = _value_paths(state) if isinstance(state, Mapping) else [state]
        active = (
            {n.path for n in self._config} if self._config else set(_value_paths(self.value, prefixes=True))
        )
        return all(p in active for p in paths)

    def to_dict(self) -> dict:
        return {"value": self.value, "context": self.context, "done": self.done}

    def _repr_html_(self) -> str:
        from html import escape

        ctx = escape(json.dumps(self.context, default=str, ensure_ascii=False))
        val = escape(json.dumps(self.value, ensure_ascii=False))
        done = " <b>(done)</b>" if self.done else ""
        return (
            f"<table><tr><th style='text-align:left'>state</th><td><code>{val}</code>{done}</td></tr>"
            f"<tr><th style='text-align:left'>context</th><td><code>{ctx}</code></td></tr></table>"
        )


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


def copy_json(value: Any) -> Any:
    """A fast deep copy for JSON-shaped data (dicts, lists, scalars)."""
    t = type(value)
    if t is dict:
        return {k: copy_json(v) if type(v) in (dict, list) else v for k, v in value.items()}
    if t is list:
        return [copy_json(v) if type(v) in (dict, list) else v for v in value]
    if isinstance(value, Mapping):
        return {k: copy_json(v) for k, v in value.items()}
    return value


class Statechart:
    """A validated, compiled machine definition plus its action and guard implementations.

    Actions are ``fn(ctx, event)`` (``fn(ctx, event, **params)`` with params) and
    mutate ``ctx``, a private copy; returning a mapping merges it into ``ctx``.
    Guards are ``fn(ctx, event) -> bool``. With ``implementations=False`` missing
    implementations are tolerated (for viewing a stored machine); running a
    transition that needs one then raises MachineError.
    """

    def __init__(
        self,
        definition: Mapping[str, Any],
        actions: Mapping[str, Callable] | None = None,
        guards: Mapping[str, Callable] | None = None,
        *,
        max_microsteps: int = 100,
        implementations: bool = True,
    ):
        self.root = compile_definition(definition, actions, guards, check_implementations=implementations)
        self.definition = definition
        self.hash = definition_hash(definition)
        self.id: str = definition.get("id") if isinstance(definition.get("id"), str) else "machine"
        self.actions = dict(actions or {})
        self.guards = dict(guards or {})
        self.max_microsteps = max_microsteps
        self._nodes: list[StateNode] = []
        self._collect(self.root)
        self._by_path = {n.path: n for n in self._nodes}
        self._atomic_chain: dict[StateNode, tuple[StateNode, ...]] = {
            n: (n, *n.ancestors) for n in self._nodes if not n.children
        }
        self._has_always = any(n.always for n in self._nodes)
        self._has_final = any(n.type == "final" for n in self._nodes)

    def _collect(self, node: StateNode) -> None:
        self._nodes.append(node)
        for child in node.children.values():
            self._collect(child)

    def __repr__(self) -> str:
        return f"<Statechart {self.id!r} {self.hash[:12]}…>"

    # --- public API -----------------------------------------------------------------

    def initial(self, time: int | None = None) -> Snapshot:
        """The initial snapshot: initial states entered, entry actions run with ``xstate.init``."""
        event = Event(INIT_EVENT, None, time)
        ctx = copy_json(self.definition.get("context") or {})
        config: set[StateNode] = set()
        to_enter: set[StateNode] = set()
        self._add_descendants(self.root, to_enter)
        internal: list[Event] = []
        self._enter(to_enter, config, ctx, event, internal)
        done = self._settle(config, ctx, event, internal)
        return self._snapshot(config, ctx, done)

    def transition(self, snapshot: Snapshot, event: Event) -> Snapshot:
        """The snapshot after ``event``; raises EventNotAccepted if no transition is enabled."""
        if snapshot.done:
            raise EventNotAccepted(f"the machine is done (final state reached); {event.type!r} is ignored")
        config_in = snapshot._config or self._config_from_value(snapshot.value)
        ctx_in = snapshot.context
        selected = self._select(config_in, ctx_in, event)
        if not selected:
            raise EventNotAccepted(
                f"no transition for {event.type!r} in state {json.dumps(snapshot.value)}"
                " (no handler, or every guard was false); nothing was recorded"
            )
        ctx = copy_json(ctx_in)
        if len(selected) == 1 and not self._has_always and self._keeps_config(selected[0]):
            self._run(selected[0].actions, ctx, event)  # fast path: configuration unchanged
            return Snapshot(snapshot.value, ctx, False, config_in)
        config = set(config_in)
        internal: list[Event] = []
        self._microstep(selected, config, ctx, event, internal)
        done = self._settle(config, ctx, event, internal)
        return self._snapshot(config, ctx, done)

    def can(self, snapshot: Snapshot, event: Event | str) -> bool:
        """Whether ``event`` would be accepted (guards evaluated on the context; no actions run)."""
        if snapshot.done:
            return False
        ev = Event(event) if isinstance(event, str) else event
        config = snapshot._config or self._config_from_value(snapshot.value)
        return bool(self._select(config, snapshot.context, ev))

    def available_events(self, snapshot: Snapshot) -> list[str]:
        """Event types some active state handles (guards not evaluated), sorted."""
        if snapshot.done:
            return []
        config = snapshot._config or self._config_from_value(snapshot.value)
        return sorted({ev for n in config for ev in n.on if not ev.startswith("xstate.")})

    def snapshot_from(self, value: Any, context: Mapping[str, Any], done: bool | None = None) -> Snapshot:
        """Rebuild a snapshot from a stored value and context (restoring from a log)."""
        config = self._config_from_value(value)
        if done is None:
            done = any(n.type == "final" and n.parent is self.root for n in config)
        return Snapshot(value, context, done, frozenset(config))

    # --- the algorithm ------------------------------------------------------------------

    def _keeps_config(self, t: Transition) -> bool:
        if not t.targets:
            return True
        return not t.reenter and all(tg is t.source and not tg.children for tg in t.targets)

    def _snapshot(self, config: set[StateNode], ctx: dict, done: bool) -> Snapshot:
        return Snapshot(self._value(self.root, config), ctx, done, frozenset(config))

    def _value(self, node: StateNode, config: Iterable[StateNode]) -> Any:
        config = config if isinstance(config, set | frozenset) else set(config)
        if node.type == "parallel":  # atomic regions are {} in XState's state values
            return {k: self._value(c, config) if c.children else {} for k, c in node.children.items()}
        for k, c in node.children.items():
            if c in config:
                return k if not c.children else {k: self._value(c, config)}
        raise MachineError(f"inconsistent configuration under {node.path or 'the root'}")

    def _config_from_value(self, value: Any) -> frozenset:
        config: set[StateNode] = {self.root}

        def walk(node: StateNode, v: Any) -> None:
            if node.type == "parallel":
                if not isinstance(v, Mapping) or set(v) != set(node.children):
                    raise MachineError(f"stored state {value!r} does not fit parallel state {node.path!r}")
                for k, c in node.children.items():
                    config.add(c)
                    if c.children:
                        walk(c, v[k])
                    elif v[k] != {}:
                        raise MachineError(f"stored state {value!r}: atomic region {c.path!r} must be {{}}")
                return
            if isinstance(v, str):
                key, sub = v, None
            elif isinstance(v, Mapping) and len(v) == 1:
                key, sub = next(iter(v.items()))
            else:
                raise MachineError(f"stored state {value!r} does not fit this definition")
            child = node.children.get(key)
            if child is None:
                raise MachineError(
                    f"stored state {value!r} names {key!r}, which {node.path or 'the root'} does not have: "
                    "the definition changed"
                )
            config.add(child)
            if child.children:
                if sub is None:
                    raise MachineError(f"stored state {value!r} stops at compound state {child.path!r}")
                walk(child, sub)
            elif sub is not None:
                raise MachineError(f"stored state {value!r} goes below atomic state {child.path!r}")

        walk(self.root, value)
        return frozenset(config)

    def _guard_ok(self, t: Transition, ctx: Mapping, event: Event) -> bool:
        g = t.guard
        if g is None:
            return True
        fn = self.guards.get(g.name)
        if fn is None:
            raise MachineError(f"guard {g.name!r} has no implementation: pass guards={{{g.name!r}: ...}}")
        return bool(fn(ctx, event, **g.params) if g.params else fn(ctx, event))

    def _run(self, refs: tuple[ActionRef, ...], ctx: dict, event: Event) -> None:
        for ref in refs:
            fn = self.actions.get(ref.name)
            if fn is None:
                raise MachineError(
                    f"action {ref.name!r} has no implementation: pass actions={{{ref.name!r}: ...}}"
                )
            result = fn(ctx, event, **ref.params) if ref.params else fn(ctx, event)
            if result is not None:
                if not isinstance(result, Mapping):
                    raise MachineError(
                        f"action {ref.name!r} returned {type(result).__name__}; return None or a dict"
                    )
                ctx.update(result)

    def _select(self, config: Iterable[StateNode], ctx: Mapping, event: Event | None) -> list[Transition]:
        atomic = sorted((n for n in config if not n.children), key=lambda n: n.order)
        chosen: list[Transition] = []
        for state in atomic:
            for node in self._atomic_chain[state]:
                cands = node.always if event is None else node.on.get(event.type)
                if not cands:
                    continue
                hit = None
                for t in cands:
                    if self._guard_ok(t, ctx, event or Event("")):
                        hit = t
                        break
                if hit is not None:
                    if hit not in chosen:
                        chosen.append(hit)
                    break
        if len(chosen) > 1:
            chosen = self._remove_conflicts(chosen, config)
        return chosen

    def _remove_conflicts(
        self, transitions: list[Transition], config: Iterable[StateNode]
    ) -> list[Transition]:
        kept: list[Transition] = []
        exits: dict[int, set[StateNode]] = {}
        for t in transitions:
            t_exit = self._exit_set([t], config)
            preempted = False
            for k in list(kept):
                if t_exit & exits[id(k)]:
                    if t.source.is_descendant_of(k.source):
                        kept.remove(k)
                    else:
                        preempted = True
                        break
            if not preempted:
                kept.append(t)
                exits[id(t)] = t_exit
        return kept

    def _domain(self, t: Transition) -> StateNode | None:
        if not t.targets:
            return None
        src = t.source
        if not t.reenter and src.children and all(tg is src or tg.is_descendant_of(src) for tg in t.targets):
            return src
        if not t.reenter and not src.children and all(tg is src for tg in t.targets):
            return None  # a self-transition on an atomic state that does not re-enter
        return self._lcca([src, *t.targets])

    def _lcca(self, nodes: list[StateNode]) -> StateNode:
        head, rest = nodes[0], nodes[1:]
        for anc in head.ancestors:
            if anc.type != "compound" and anc is not self.root:
                continue
            if all(n.is_descendant_of(anc) for n in rest):
                return anc
        return self.root

    def _exit_set(self, transitions: list[Transition], config: Iterable[StateNode]) -> set[StateNode]:
        out: set[StateNode] = set()
        for t in transitions:
            domain = self._domain(t)
            if domain is None:
                continue
            out.update(n for n in config if n.is_descendant_of(domain))
        return out

    def _microstep(
        self,
        transitions: list[Transition],
        config: set[StateNode],
        ctx: dict,
        event: Event,
        internal: list[Event],
    ) -> None:
        exiting = sorted(self._exit_set(transitions, config), key=lambda n: n.order, reverse=True)
        for node in exiting:
            self._run(node.exit, ctx, event)
            config.discard(node)
        for t in sorted(transitions, key=lambda t: t.source.order):
            self._run(t.actions, ctx, event)
        to_enter: set[StateNode] = set()
        for t in transitions:
            domain = self._domain(t)
            if domain is None:
                continue
            for tg in t.targets:
                self._add_descendants(tg, to_enter, config)
                for anc in tg.ancestors:
                    if anc is domain:
                        break
                    to_enter.add(anc)
                    self._fill_regions(anc, to_enter, config)
                if domain.type == "parallel":  # like XState v5: the domain's other regions are re-entered
                    self._fill_regions(domain, to_enter, config)
        self._enter(to_enter, config, ctx, event, internal)

    def _fill_regions(self, node: StateNode, to_enter: set[StateNode], config: set[StateNode]) -> None:
        """Every region of a parallel ``node`` that nothing enters or keeps gets its default entry."""
        if node.type != "parallel":
            return
        for child in node.children.values():
            if not any(s is child or s.is_descendant_of(child) for s in to_enter | config):
                self._add_descendants(child, to_enter, config)

    def _add_descendants(
        self, node: StateNode, out: set[StateNode], config: set[StateNode] | None = None
    ) -> None:
        out.add(node)
        if node.type == "compound":
            if not any(c in out or (config and c in config) for c in node.children.values()):
                self._add_descendants(node.initial, out, config)  # type: ignore[arg-type]
        elif node.type == "parallel":
            for child in node.children.values():
                if not any(s is child or s.is_descendant_of(child) for s in out):
                    self._add_descendants(child, out, config)

    def _enter(
        self, to_enter: set[StateNode], config: set[StateNode], ctx: dict, event: Event, internal: list[Event]
    ) -> None:
        for node in sorted(to_enter - config, key=lambda n: n.order):
            config.add(node)
            self._run(node.entry, ctx, event)
            if node.type == "final" and node.parent is not None and node.parent is not self.root:
                parent = node.parent
                internal.append(
                    Event(f"xstate.done.state.{parent.explicit_id or parent.path}", None, event.time)
                )
                grand = parent.parent
                if (
                    grand is not None
                    and grand.type == "parallel"
                    and all(
                        any(s.type == "final" and s.parent is region for s in config)
                        for region in grand.children.values()
                    )
                ):
                    internal.append(
                        Event(f"xstate.done.state.{grand.explicit_id or grand.path}", None, event.time)
                    )

    def _settle(self, config: set[StateNode], ctx: dict, event: Event, internal: list[Event]) -> bool:
        steps = 0
        while True:
            if self._top_final(config):
                return True
            selected = self._select(config, ctx, None) if self._has_always else []
            trigger = event
            if not selected and internal:
                trigger = internal.pop(0)
                selected = self._select(config, ctx, trigger)
                if not selected:
                    continue
            if not selected:
                return False
            steps += 1
            if steps > self.max_microsteps:
                states = ", ".join(sorted({t.source.path or "(root)" for t in selected}))
                raise EndlessLoop(
                    f"eventless transitions fired more than {self.max_microsteps} times in a row "
                    f"(from: {states}); make their guards eventually false"
                )
            self._microstep(selected, config, ctx, trigger, internal)

    def _top_final(self, config: set[StateNode]) -> bool:
        if not self._has_final:
            return False
        return any(n.type == "final" and n.parent is self.root for n in config)


def initial(chart: Statechart, time: int | None = None) -> Snapshot:
    """The initial snapshot of ``chart``."""
    return chart.initial(time)


def transition(chart: Statechart, snapshot: Snapshot, event: Event) -> Snapshot:
    """The snapshot after ``event`` (pure: same inputs, same result)."""
    return chart.transition(snapshot, event)
