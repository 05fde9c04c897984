"""The statechart algorithm's steps (SCXML, as XState v5 follows it): selection, microsteps,
history, and settling eventless transitions and internal events.

:class:`Microsteps` is the part of :class:`~._interpreter.Statechart` that runs one macrostep on
a private :class:`_Work` copy (see the theory of operation in ``_interpreter``); the compiled
tables it reads (``_atomic_chain``, ``_by_path``, ``_dynamic`` and the caches ``_domains`` and
``_plans``) are built by ``Statechart.__init__``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._definition import ActionRef, StateNode, Transition
from ._snapshot import Event, Snapshot, copy_json
from .errors import EndlessLoop, MachineError

_EMPTY: Mapping[str, Any] = {}
_NO = object()
PLAN_CACHE = 4096  # cached microstep plans per chart (bounded: charts with huge state spaces just recompute)


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


class Microsteps:
    """Selection, microsteps, history and settling: the algorithm half of ``Statechart``."""

    root: StateNode
    actions: dict[str, Callable]
    guards: dict[str, Callable]
    delays: dict[str, int | Callable]
    max_microsteps: int
    _by_path: dict[str, StateNode]
    _atomic_chain: dict[StateNode, tuple[StateNode, ...]]
    _has_always: bool
    _dynamic: set[Transition]
    _domains: dict[Transition, StateNode | None]
    _plans: dict[tuple, tuple[list[StateNode], list[StateNode]]]

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
