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

Where the parts live: this module holds :class:`Statechart` (compiling, the
public API, the fast path, building snapshots and restoring configurations);
the steps above (selection, microsteps, history, settling) are its base class
``Microsteps`` in ``_microstep``; the values (:class:`Event`,
:class:`Snapshot`, ``copy_json``, invocation stamps) are in ``_snapshot`` and
re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._definition import ActionRef, StateNode, Transition, compile_definition, definition_hash
from ._frozen import FrozenDict, freeze
from ._microstep import PLAN_CACHE, Microsteps, _Work
from ._snapshot import (
    Event,
    Snapshot,
    copy_json,
    frozen_map,
    invocation_key,
    make_snapshot,
    stamp_invocations,
)
from .errors import EventNotAccepted, MachineError

INIT_EVENT = "xstate.init"
_NO: Any = object()


def _same_config(snapshot: Snapshot, ctx: Any, config: Any) -> Snapshot:
    """The snapshot after a transition that kept its configuration: only the context changed."""
    return make_snapshot(
        snapshot.value, ctx, False, None, snapshot.history, snapshot.timers, snapshot.invocations, config
    )


class Statechart(Microsteps):
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
        fast = self._fast.get(key, _NO)
        if fast is _NO:
            fast = self._fast_plan(config_in, event.type)
        if fast is not None:  # one unguarded transition that keeps the configuration: only its actions
            if fast or type(ctx_in) is not FrozenDict:
                ctx = copy_json(ctx_in)
                self._run(fast, ctx, event)
            else:
                ctx = ctx_in  # no action and a read-only context: nothing can change it
            return make_snapshot(  # (_same_config, inlined)
                snapshot.value,
                ctx,
                False,
                None,
                snapshot.history,
                snapshot.timers,
                snapshot.invocations,
                config_in,
            )
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
        return make_snapshot(
            self._value(self.root, work.config),
            work.ctx,
            work.done,
            work.output,
            frozen_map(work.history, "snapshot.history"),
            frozen_map(work.timers, "snapshot.timers"),
            frozen_map(work.invocations, "snapshot.invocations"),
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


def initial(chart: Statechart, time: int | None = None) -> Snapshot:
    """The initial snapshot of ``chart``."""
    return chart.initial(time)


def transition(chart: Statechart, snapshot: Snapshot, event: Event) -> Snapshot:
    """The snapshot after ``event`` (pure: same inputs, same result)."""
    return chart.transition(snapshot, event)


__all__ = [
    "INIT_EVENT",
    "Event",
    "Snapshot",
    "Statechart",
    "copy_json",
    "initial",
    "invocation_key",
    "stamp_invocations",
    "transition",
]
