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
from ._frozen import FrozenDict, freeze
from .errors import EndlessLoop, EventNotAccepted, MachineError

INIT_EVENT = "xstate.init"
_EMPTY: Mapping[str, Any] = {}
_NO = object()
PLAN_CACHE = 4096  # cached microstep plans per chart (bounded: charts with huge state spaces just recompute)


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
    """An immutable state of a machine: the XState value, the context, ``done`` and ``output``.

    ``history`` maps each history state's id to the states it remembers;
    ``timers`` maps the event of each pending delayed transition
    (``xstate.after.<delay>.<stateId>``) to its due time in ms (None when the
    entering event had no time); ``invocations`` maps each running invocation's
    id to ``{"src", "input", "state"}`` (the runtime adds ``"at"``, the index of
    the entry that started it). Entering a state starts its timers and
    invocations, leaving it cancels them: a driver compares two snapshots to
    know what to start and stop. Treat everything as read-only.
    """

    value: str | dict
    context: Mapping[str, Any]
    done: bool = False
    output: Any = None
    history: Mapping[str, list] = field(default_factory=dict)
    timers: Mapping[str, int | None] = field(default_factory=dict)
    invocations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    _config: frozenset = field(default=frozenset(), compare=False, repr=False)

    def matches(self, state: str | Mapping) -> bool:
        """True if the state (``"parent.child"`` or a partial value dict) is active."""
        paths = _value_paths(state) if isinstance(state, Mapping) else [state]
        active = (
            {n.path for n in self._config} if self._config else set(_value_paths(self.value, prefixes=True))
        )
        return all(p in active for p in paths)

    def extras(self) -> dict[str, Any]:
        """The non-empty ``output``/``history``/``timers``/``invocations`` as a JSON dict (for storage)."""
        out: dict[str, Any] = {}
        if self.output is not None:
            out["output"] = self.output
        if self.history:
            out["history"] = {k: list(v) for k, v in self.history.items()}
        if self.timers:
            out["timers"] = dict(self.timers)
        if self.invocations:
            out["invocations"] = {k: dict(v) for k, v in self.invocations.items()}
        return out

    @classmethod
    def restored(
        cls,
        value: Any,
        context: Any,
        done: bool,
        extras: Mapping[str, Any] | None,
        config: frozenset = frozenset(),
    ) -> Snapshot:
        """The inverse of :meth:`extras`: a snapshot from a stored value, context, done flag and extras."""
        x = extras or _EMPTY
        return cls(
            value,
            context,
            done,
            x.get("output"),
            x.get("history") or {},
            x.get("timers") or {},
            x.get("invocations") or {},
            config,
        )

    def to_dict(self) -> dict:
        return {"value": self.value, "context": self.context, "done": self.done, **self.extras()}

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
    if isinstance(value, dict):  # read-only FrozenDict/FrozenList (the runtime's) copy to plain ones
        return {k: copy_json(v) if isinstance(v, dict | list) else v for k, v in value.items()}
    if isinstance(value, list):
        return [copy_json(v) if isinstance(v, dict | list) else v for v in value]
    if isinstance(value, Mapping):
        return {k: copy_json(v) for k, v in value.items()}
    return value


def _same_config(snapshot: Snapshot, ctx: Any, config: Any) -> Snapshot:
    """The snapshot after a transition that kept its configuration: only the context changed."""
    return Snapshot(
        snapshot.value, ctx, False, None, snapshot.history, snapshot.timers, snapshot.invocations, config
    )


class _Work:
    """The mutable state of one macrostep (a private copy; the input snapshot is never touched)."""

    __slots__ = ("config", "ctx", "history", "timers", "invocations", "internal", "done", "output", "time")

    def __init__(self, config: set, ctx: dict, snapshot: Snapshot | None, time: int | None):
        self.config = config
        self.ctx = ctx
        self.history: dict[str, list] = dict(snapshot.history) if snapshot else {}
        self.timers: dict[str, int | None] = dict(snapshot.timers) if snapshot else {}
        self.invocations: dict[str, Mapping[str, Any]] = dict(snapshot.invocations) if snapshot else {}
        self.internal: list[Event] = []
        self.done = False
        self.output: Any = None
        self.time = time


class Statechart:
    """A validated, compiled machine definition plus its action and guard implementations.

    Actions are ``fn(ctx, event)`` (``fn(ctx, event, **params)`` with params) and
    mutate ``ctx``, a private copy; returning a mapping merges it into ``ctx``.
    Guards are ``fn(ctx, event) -> bool``. ``delays`` gives named delays for
    ``after`` (ms, or ``fn(ctx, event) -> ms``). With ``implementations=False``
    missing implementations are tolerated (for viewing a stored machine); running
    a transition that needs one then raises MachineError.
    """

    def __init__(
        self,
        definition: Mapping[str, Any],
        actions: Mapping[str, Callable] | None = None,
        guards: Mapping[str, Callable] | None = None,
        *,
        delays: Mapping[str, int | Callable] | None = None,
        max_microsteps: int = 100,
        implementations: bool = True,
    ):
        self.root = compile_definition(
            definition, actions, guards, check_implementations=implementations, delays=delays
        )
        self.definition = definition
        self.hash = definition_hash(definition)
        raw_id = definition.get("id")
        self.id: str = raw_id if isinstance(raw_id, str) else "machine"
        self.actions = dict(actions or {})
        self.guards = dict(guards or {})
        self.delays = dict(delays or {})
        self.max_microsteps = max_microsteps
        self._nodes: list[StateNode] = []
        self._histories: dict[str, StateNode] = {}
        self._collect(self.root)
        self._by_path = {n.path: n for n in self._nodes}
        self._atomic_chain: dict[StateNode, tuple[StateNode, ...]] = {
            n: (n, *n.ancestors) for n in self._nodes if not n.children
        }
        self._has_always = any(n.always for n in self._nodes)
        self._has_final = any(n.type == "final" for n in self._nodes)
        self.invokes = {d.id: d for n in self._nodes for d in n.invoke}
        self._domains: dict[Transition, StateNode | None] = {}
        # (configuration, transitions) -> (states exited, states entered): both are fixed by the pair
        # unless a target is a history state
        self._plans: dict[tuple, tuple[list[StateNode], list[StateNode]]] = {}
        # (configuration, event type) -> the actions of a guard-free, configuration-keeping transition
        # (``_fast_plan``), or None: the general path
        self._fast: dict[tuple[frozenset, str], tuple[ActionRef, ...] | None] = {}
        self._initial_shared: Snapshot | None = None  # see initial_readonly
        self._dynamic = {  # transitions targeting a history state: their effective targets vary
            t
            for n in self._nodes
            for t in [*(x for ts in n.on.values() for x in ts), *n.always]
            if any(tg.type == "history" for tg in t.targets)
        }
        self.services = sorted({d.src for d in self.invokes.values()})

    def _collect(self, node: StateNode) -> None:
        self._nodes.append(node)
        for h in node.histories.values():
            self._histories[h.id] = h
        for child in node.children.values():
            self._collect(child)

    def __repr__(self) -> str:
        return f"<Statechart {self.id!r} {self.hash[:12]}…>"

    # --- public API -----------------------------------------------------------------

    def initial(self, time: int | None = None) -> Snapshot:
        """The initial snapshot: initial states entered, entry actions run with ``xstate.init``."""
        event = Event(INIT_EVENT, None, time)
        work = _Work(set(), copy_json(self.definition.get("context") or {}), None, time)
        to_enter: set[StateNode] = set()
        self._add_descendants(self.root, to_enter, work)
        self._enter(to_enter, work, event)
        self._settle(work, event)
        return self._snapshot(work)

    def initial_readonly(self, time: int | None = None) -> Snapshot:
        """``initial(time)`` with its value, context and output read-only (``freeze``).

        When nothing in it depends on the time (no entry action runs, no timer starts, no
        invocation, no eventless or done transition), it is made once per chart and shared.
        """
        shared = self._initial_shared
        if shared is not None:
            return shared
        snap = self.initial(time)
        value = snap.value if type(snap.value) is str else freeze(snap.value, "state")
        output = None if snap.output is None else freeze(snap.output, "output")
        snap = Snapshot(
            value,
            freeze(snap.context),
            snap.done,
            output,
            snap.history,
            snap.timers,
            snap.invocations,
            snap._config,
        )
        if self._initial_static(snap):
            self._initial_shared = snap
        return snap

    def _initial_static(self, snap: Snapshot) -> bool:
        if self._has_always or snap.done or snap.timers or snap.invocations or snap.history:
            return False
        for node in snap._config:
            if node.entry or node.after or node.invoke or node.type == "final":
                return False
        return True

    def transition(self, snapshot: Snapshot, event: Event) -> Snapshot:
        """The snapshot after ``event``; EventNotAccepted if nothing at all would change.

        As in XState v5, eventless (``always``) transitions are evaluated after
        every event, also one no state handles. A delayed-transition event
        (``xstate.after...``) or an invocation outcome (``xstate.done.actor...``,
        ``xstate.error.actor...``) is accepted only while its timer or
        invocation is pending, and then consumes it even if no guard passes.
        """
        if snapshot.done:
            raise EventNotAccepted(f"the machine is done (final state reached); {event.type!r} is ignored")
        config_in = snapshot._config or self._config_from_value(snapshot.value)
        ctx_in = snapshot.context
        key = (config_in, event.type)
        fast = self._fast[key] if key in self._fast else self._fast_plan(config_in, event.type)
        if fast is not None:  # one unguarded transition that keeps the configuration: only its actions
            if fast or type(ctx_in) is not FrozenDict:
                ctx = copy_json(ctx_in)
                self._run(fast, ctx, event)
            else:
                ctx = ctx_in  # no action and a read-only context: nothing can change it
            return _same_config(snapshot, ctx, config_in)
        consumed = self._consumes(snapshot, event)
        selected = self._select(config_in, ctx_in, event)
        if not selected and not consumed and not self._has_always:
            raise self._not_accepted(snapshot, event)
        ctx = copy_json(ctx_in)
        if len(selected) == 1 and not consumed and not self._has_always and self._keeps_config(selected[0]):
            self._run(selected[0].actions, ctx, event)  # fast path: configuration unchanged
            return _same_config(snapshot, ctx, config_in)
        work = _Work(set(config_in), ctx, snapshot, event.time)
        if consumed:
            work.timers.pop(event.type, None)
            if isinstance(consumed, str):
                work.invocations.pop(consumed, None)
        if selected:
            self._microstep(selected, work, event)
        steps = self._settle(work, event)
        if not selected and not consumed and not steps:
            raise self._not_accepted(snapshot, event)
        return self._snapshot(work)

    def _fast_plan(self, config: frozenset, etype: str) -> tuple[ActionRef, ...] | None:
        """The actions of the event's transition when selecting it needs no guard, no eventless
        transition can follow, and it keeps the configuration (a targetless or non-reentering
        self-transition); None otherwise (the general path). Cached per (configuration, event type)."""
        plan: tuple[ActionRef, ...] | None = None
        if not self._has_always and not etype.startswith("xstate."):
            chosen: list[Transition] = []
            static = True
            for state in sorted((n for n in config if not n.children), key=lambda n: n.order):
                for node in self._atomic_chain[state]:
                    cands = node.on.get(etype)
                    if not cands:
                        continue
                    if cands[0].guard is not None:
                        static = False
                    elif cands[0] not in chosen:
                        chosen.append(cands[0])
                    break
                if not static:
                    break
            if static and len(chosen) == 1 and self._keeps_config(chosen[0]):
                plan = chosen[0].actions
        if len(self._fast) < PLAN_CACHE:
            self._fast[(config, etype)] = plan
        return plan

    def can(self, snapshot: Snapshot, event: Event | str) -> bool:
        """Whether ``event`` would be accepted (guards evaluated on the context; no actions run)."""
        if snapshot.done:
            return False
        ev = Event(event) if isinstance(event, str) else event
        config = snapshot._config or self._config_from_value(snapshot.value)
        return bool(self._select(config, snapshot.context, ev)) or bool(self._consumes(snapshot, ev))

    def available_events(self, snapshot: Snapshot) -> list[str]:
        """Event types some active state handles (guards not evaluated), sorted."""
        if snapshot.done:
            return []
        config = snapshot._config or self._config_from_value(snapshot.value)
        return sorted({ev for n in config for ev in n.on if not ev.startswith("xstate.")})

    def snapshot_from(
        self,
        value: Any,
        context: Mapping[str, Any],
        done: bool | None = None,
        extras: Mapping[str, Any] | None = None,
    ) -> Snapshot:
        """Rebuild a snapshot from a stored value, context and ``extras()`` (restoring from a log)."""
        config = self._config_from_value(value)
        if done is None:
            done = self._has_final and self._in_final(config, self.root)
        return Snapshot.restored(value, context, done, extras, frozenset(config))

    def output_of(self, snapshot: Snapshot) -> Any:
        """The machine's output (the root's ``output``) once it is done, else None."""
        return snapshot.output

    # --- the algorithm ------------------------------------------------------------------

    def _consumes(self, snapshot: Snapshot, event: Event) -> str | bool:
        """Whether ``event`` fires a pending timer (True) or ends a running invocation (its id)."""
        t = event.type
        if not t.startswith("xstate."):
            return False
        if t.startswith("xstate.after."):
            return t in snapshot.timers
        for prefix in ("xstate.done.actor.", "xstate.error.actor."):
            if t.startswith(prefix):
                iid = t[len(prefix) :]
                return iid if iid in snapshot.invocations else False
        return False

    def _not_accepted(self, snapshot: Snapshot, event: Event) -> EventNotAccepted:
        if event.type.startswith("xstate.after."):
            why = "that timer is not pending (its state was left, or it already fired)"
        elif event.type.startswith(("xstate.done.actor.", "xstate.error.actor.")):
            why = "that invocation is not running (its state was left, or its outcome is recorded)"
        else:
            why = "no handler, every guard was false, and no eventless transition is enabled"
        return EventNotAccepted(
            f"no transition for {event.type!r} in state {json.dumps(snapshot.value)} ({why}); nothing was recorded"
        )

    def _keeps_config(self, t: Transition) -> bool:
        if not t.targets:
            return True
        return not t.reenter and all(tg is t.source and not tg.children for tg in t.targets)

    def _snapshot(self, work: _Work) -> Snapshot:
        if work.done:  # a done machine has no pending timers or running invocations
            work.timers.clear()
            work.invocations.clear()
        return Snapshot(
            self._value(self.root, work.config),
            work.ctx,
            work.done,
            work.output,
            work.history,
            work.timers,
            work.invocations,
            frozenset(work.config),
        )

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
                if type(result) is not dict and not isinstance(result, Mapping):  # (an ABC check is slow)
                    raise MachineError(
                        f"action {ref.name!r} returned {type(result).__name__}; return None or a dict"
                    )
                ctx.update(result)

    def _select(
        self, config: Iterable[StateNode], ctx: Mapping, event: Event, eventless: bool = False
    ) -> list[Transition]:
        """Enabled transitions; ``eventless`` selects ``always`` ones, their guards given ``event``."""
        atomic = sorted((n for n in config if not n.children), key=lambda n: n.order)
        chosen: list[Transition] = []
        for state in atomic:
            for node in self._atomic_chain[state]:
                cands = node.always if eventless else node.on.get(event.type)
                if not cands:
                    continue
                hit = None
                for t in cands:
                    if self._guard_ok(t, ctx, event):
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
        self, transitions: list[Transition], config: Iterable[StateNode], history: Mapping | None = None
    ) -> list[Transition]:
        kept: list[Transition] = []
        exits: dict[int, set[StateNode]] = {}
        for t in transitions:
            t_exit = self._exit_set([t], config, history or _EMPTY)
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

    # --- history ------------------------------------------------------------------------

    def _history_targets(self, h: StateNode, history: Mapping[str, list]) -> list[StateNode]:
        """What entering history state ``h`` enters: the remembered states, else its default."""
        remembered = history.get(h.id)
        if remembered:
            nodes = [self._by_path.get(p) for p in remembered]
            if all(n is not None for n in nodes):
                return nodes  # type: ignore[return-value]
        if h.default:
            return list(h.default)
        parent = h.parent
        assert parent is not None
        if parent.type == "parallel":
            return list(parent.children.values())
        return [parent.initial] if parent.initial is not None else []

    def _effective_targets(self, t: Transition, history: Mapping[str, list]) -> list[StateNode]:
        out: list[StateNode] = []
        todo = list(t.targets)
        while todo:
            tg = todo.pop(0)
            if tg.type == "history":
                todo[:0] = self._history_targets(tg, history)
            elif tg not in out:
                out.append(tg)
        return out

    # --- microsteps ---------------------------------------------------------------------

    def _domain(self, t: Transition, history: Mapping[str, list] = _EMPTY) -> StateNode | None:
        """The transition domain (SCXML); static, so cached, unless a target is a history state."""
        cached = self._domains.get(t, _NO)
        if cached is not _NO:
            return cached  # type: ignore[return-value]
        if not t.targets:
            return None
        dynamic = any(tg.type == "history" for tg in t.targets)
        targets = self._effective_targets(t, history) if dynamic else t.targets
        domain = self._compute_domain(t, targets)
        if not dynamic:
            self._domains[t] = domain
        return domain

    def _compute_domain(self, t: Transition, targets: Iterable[StateNode]) -> StateNode | None:
        src = t.source
        targets = list(targets)
        if not t.reenter and src.children and all(tg is src or tg.is_descendant_of(src) for tg in targets):
            return src
        if not t.reenter and not src.children and all(tg is src for tg in targets):
            return None  # a self-transition on an atomic state that does not re-enter
        return self._lcca([src, *targets])

    def _lcca(self, nodes: list[StateNode]) -> StateNode:
        head, rest = nodes[0], nodes[1:]
        for anc in head.ancestors:
            if anc.type != "compound" and anc is not self.root:
                continue
            if all(n.is_descendant_of(anc) for n in rest):
                return anc
        return self.root

    def _exit_set(
        self, transitions: list[Transition], config: Iterable[StateNode], history: Mapping[str, list]
    ) -> set[StateNode]:
        out: set[StateNode] = set()
        for t in transitions:
            domain = self._domain(t, history)
            if domain is None:
                continue
            out.update(n for n in config if n.is_descendant_of(domain))
        return out

    def _microstep(self, transitions: list[Transition], work: _Work, event: Event) -> None:
        config = work.config
        dynamic = bool(self._dynamic) and any(t in self._dynamic for t in transitions)
        key = None if dynamic else (frozenset(config), tuple(transitions))
        plan = self._plans.get(key) if key is not None else None
        if plan is None:
            exiting = sorted(
                self._exit_set(transitions, config, work.history), key=lambda n: n.order, reverse=True
            )
        else:
            exiting = plan[0]
        for node in exiting:  # history is recorded before anything leaves (SCXML exitStates)
            for h in node.histories.values():
                if h.history == "deep":
                    kept = [s.path for s in config if not s.children and s.is_descendant_of(node)]
                else:
                    kept = [s.path for s in config if s.parent is node]
                work.history[h.id] = sorted(kept, key=lambda p: self._by_path[p].order)
        for node in exiting:
            self._run(node.exit, work.ctx, event)
            self._stop(node, work)
            config.discard(node)
        for t in sorted(transitions, key=lambda t: t.source.order) if len(transitions) > 1 else transitions:
            self._run(t.actions, work.ctx, event)
        if plan is not None:
            self._enter_sorted(plan[1], work, event)
            return
        to_enter: set[StateNode] = set()
        for t in transitions:
            domain = self._domain(t, work.history)
            if domain is None:
                continue
            for tg in t.targets:
                self._add_descendants(tg, to_enter, work)
            for tg in self._effective_targets(t, work.history) if dynamic else t.targets:
                self._add_ancestors(tg, domain, to_enter, work)
            if domain.type == "parallel":  # like XState v5: the domain's other regions are re-entered
                self._fill_regions(domain, to_enter, work)
        entering = sorted(to_enter - config, key=lambda n: n.order)
        if key is not None and len(self._plans) < PLAN_CACHE:  # same configuration + transitions: same sets
            self._plans[key] = (exiting, entering)
        self._enter_sorted(entering, work, event)

    def _stop(self, node: StateNode, work: _Work) -> None:
        for a in node.after:
            work.timers.pop(a.event, None)
        for d in node.invoke:
            work.invocations.pop(d.id, None)

    def _add_ancestors(self, node: StateNode, upto: StateNode, to_enter: set[StateNode], work: _Work) -> None:
        for anc in node.ancestors:
            if anc is upto:
                break
            to_enter.add(anc)
            self._fill_regions(anc, to_enter, work)

    def _fill_regions(self, node: StateNode, to_enter: set[StateNode], work: _Work) -> None:
        """Every region of a parallel ``node`` that nothing enters or keeps gets its default entry."""
        if node.type != "parallel":
            return
        for child in node.children.values():
            if not any(s is child or s.is_descendant_of(child) for s in to_enter | work.config):
                self._add_descendants(child, to_enter, work)

    def _add_descendants(self, node: StateNode, out: set[StateNode], work: _Work) -> None:
        if node.type == "history":
            targets = self._history_targets(node, work.history)
            for s in targets:
                self._add_descendants(s, out, work)
            for s in targets:
                self._add_ancestors(s, node.parent, out, work)  # type: ignore[arg-type]
            return
        out.add(node)
        if node.type == "compound":
            if not any(c in out or c in work.config for c in node.children.values()):
                self._add_descendants(node.initial, out, work)  # type: ignore[arg-type]
        elif node.type == "parallel":
            for child in node.children.values():
                if not any(s is child or s.is_descendant_of(child) for s in out):
                    self._add_descendants(child, out, work)

    def _delay(self, ref: int | str, ctx: Mapping, event: Event) -> int:
        if isinstance(ref, int):
            return ref
        d = self.delays.get(ref)
        if d is None:
            raise MachineError(f"delay {ref!r} has no implementation: pass delays={{{ref!r}: ms}}")
        ms = d(ctx, event) if callable(d) else d
        if type(ms) not in (int, float) or ms < 0:
            raise MachineError(f"delay {ref!r} gave {ms!r}; a delay is a non-negative number of ms")
        return int(ms)

    def _enter(self, to_enter: set[StateNode], work: _Work, event: Event) -> None:
        self._enter_sorted(sorted(to_enter - work.config, key=lambda n: n.order), work, event)

    def _enter_sorted(self, entering: list[StateNode], work: _Work, event: Event) -> None:
        config = work.config
        completed: set[StateNode] = set()
        for node in entering:
            config.add(node)
            self._run(node.entry, work.ctx, event)
            for a in node.after:
                delay = self._delay(a.delay, work.ctx, event)
                work.timers[a.event] = None if work.time is None else work.time + delay
            for d in node.invoke:
                work.invocations[d.id] = {"src": d.src, "input": d.input, "state": node.path}
            if node.type != "final":
                continue
            # XState v5 enterStates: done events for the parent and completed parallel ancestors
            parent = node.parent
            assert parent is not None
            marker = parent if parent.type == "parallel" else parent.parent
            if parent.type == "compound":
                output = copy_json(node.output) if node.has_output else None
                work.internal.append(Event(f"xstate.done.state.{parent.id}", output, event.time))
            while (
                marker is not None
                and marker.type == "parallel"
                and marker not in completed
                and self._in_final(config, marker)
            ):
                completed.add(marker)
                work.internal.append(Event(f"xstate.done.state.{marker.id}", None, event.time))
                marker = marker.parent
            if marker is not None:
                continue
            work.done = True
            work.output = copy_json(self.root.output) if self.root.has_output else None
        if work.done:  # the machine is done: every active state exits (innermost first)
            for n in sorted(config, key=lambda n: n.order, reverse=True):
                self._run(n.exit, work.ctx, event)

    def _in_final(self, config: Iterable[StateNode], node: StateNode) -> bool:
        if node.type == "compound":
            return any(c.type == "final" and c in config for c in node.children.values())
        if node.type == "parallel":
            return all(self._in_final(config, c) for c in node.children.values())
        return node.type == "final"

    def _settle(self, work: _Work, event: Event) -> int:
        """Take eventless transitions and internal events until none is enabled; the count."""
        steps = 0
        trigger = event
        while not work.done:
            selected = self._select(work.config, work.ctx, trigger, True) if self._has_always else []
            if not selected:
                if not work.internal:
                    break
                trigger = work.internal.pop(0)
                selected = self._select(work.config, work.ctx, trigger)
                if not selected:
                    continue
            steps += 1
            if steps > self.max_microsteps:
                states = ", ".join(sorted({t.source.path or "(root)" for t in selected}))
                raise EndlessLoop(
                    f"eventless transitions fired more than {self.max_microsteps} times in a row "
                    f"(from: {states}); make their guards eventually false"
                )
            self._microstep(selected, work, trigger)
        return steps


def stamp_invocations(snapshot: Snapshot, index: int, fork: int) -> Snapshot:
    """``snapshot`` with each newly started invocation (one without ``"at"``) given the index and
    fork of the log entry that records its start: its idempotency key is then
    ``invocation_key(id, invocation)``, the same on every retry and after a restart."""
    if not snapshot.invocations or all("at" in v for v in snapshot.invocations.values()):
        return snapshot
    invs = {k: v if "at" in v else {**v, "at": index, "fork": fork} for k, v in snapshot.invocations.items()}
    return Snapshot(
        snapshot.value,
        snapshot.context,
        snapshot.done,
        snapshot.output,
        snapshot.history,
        snapshot.timers,
        invs,
        snapshot._config,
    )


def invocation_key(invoke_id: str, invocation: Mapping[str, Any]) -> str:
    """The idempotency key of a running invocation: ``<fork>:<index>:<id>`` of the entry that started it."""
    return f"{invocation.get('fork', 0)}:{invocation.get('at', '?')}:{invoke_id}"


def initial(chart: Statechart, time: int | None = None) -> Snapshot:
    """The initial snapshot of ``chart``."""
    return chart.initial(time)


def transition(chart: Statechart, snapshot: Snapshot, event: Event) -> Snapshot:
    """The snapshot after ``event`` (pure: same inputs, same result)."""
    return chart.transition(snapshot, event)
