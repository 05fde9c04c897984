"""Mermaid ``stateDiagram-v2`` in, second half: :class:`Builder` turns a parsed diagram into a definition.

It rewrites each ``<<fork>>`` ... ``<<join>>`` into a parallel state, makes
``--`` sections regions, expands ``<<choice>>`` states into guarded candidates,
and places each edge as the transition its label names (``_mermaid`` lists the
rules).
"""

from __future__ import annotations

from typing import Any

from ._mermaid_grammar import parse_label
from ._mermaid_parse import Edge, Scope, State
from .errors import MermaidError


class Builder:
    """One parsed diagram to one definition dict (:meth:`build`, called once)."""

    def __init__(self, states: dict[str, State], root: Scope, machine_id: str | None):
        self.states = states
        self.root = root
        self.machine_id = machine_id
        self.paths: dict[str, str] = {}
        self.raws: dict[str, dict] = {}
        self._root_raw: dict[str, Any] = {}
        self._force_regions: set[int] = set()

    def build(self) -> dict[str, Any]:
        self._forks(self.root)
        ids = [s for sec in self.root.sections for s in sec]
        wrapped = None  # a single composite 'root_<id>' (what to_mermaid draws for such roots) is the root
        if len(ids) == 1 and ids[0].startswith("root_") and self.states[ids[0]].inner is not None:
            wrapped = self.states[ids[0]]
            self.machine_id = self.machine_id or wrapped.label or ids[0][5:]
        definition: dict[str, Any] = {"id": self.machine_id} if self.machine_id else {}
        self._root_raw = definition
        if wrapped is not None:
            self.paths[wrapped.id], self.raws[wrapped.id] = "", definition
            self._scope(wrapped.inner, definition, "")  # type: ignore[arg-type]
            self._state_extras(wrapped, definition)
        else:
            self._scope(self.root, definition, "")
        for e in self._all_edges():
            self._edge(e)
        return definition

    def _forks(self, scope: Scope) -> None:
        """Rewrite each <<fork>> ... <<join>> of ``scope`` into a parallel composite (one region per branch)."""
        for sec in scope.sections:
            for sid in list(sec):
                s = self.states[sid]
                if s.inner is not None:
                    self._forks(s.inner)
        for sid in [x for sec in scope.sections for x in sec]:
            fork = self.states[sid]
            if fork.kind != "fork":
                continue
            outs = [e for e in scope.edges if e.src == sid]
            if len(outs) < 2 or any(e.label for e in outs):
                raise MermaidError(fork.line, f"fork {sid!r} needs two or more unlabelled edges out")
            join = None
            inner = Scope(fork, [], [], [])
            taken: set[str] = set()
            for k, start in enumerate(outs):
                branch, todo = [], [start.dst]
                while todo:
                    x = todo.pop(0)
                    if x in branch or x == "[*]":
                        continue
                    if self.states[x].kind == "join":
                        join = join or x
                        if x != join:
                            raise MermaidError(start.line, f"fork {sid!r} reaches two joins")
                        continue
                    if x in taken:
                        raise MermaidError(start.line, f"state {x!r} is on two branches of fork {sid!r}")
                    branch.append(x)
                    todo.extend(e.dst for e in scope.edges if e.src == x)
                taken.update(branch)
                inner.sections.append(branch)
                inner.initial.append((start.dst, start.line))
                for x in branch:
                    self.states[x].scope, self.states[x].section = inner, k
            for sec in scope.sections:
                sec[:] = [x for x in sec if x not in taken and x != join]
            keep = []
            for e in scope.edges:
                if e.src == sid:
                    continue
                if e.src in taken:
                    if e.dst == join:
                        e.dst = "[*]"
                    e.scope, e.section = inner, self.states[e.src].section
                    inner.edges.append(e)
                elif join is not None and e.src == join:
                    if e.label:
                        raise MermaidError(e.line, "the edge out of a <<join>> takes no label")
                    e.src, e.label = sid, "done"
                    keep.append(e)
                else:
                    keep.append(e)
            scope.edges[:] = keep
            fork.kind, fork.inner = "state", inner
            self._force_regions.add(id(inner))

    def _key(self, sid: str) -> str:
        return self.states[sid].key or sid

    def _scope(self, scope: Scope, raw: dict, path: str) -> None:
        members = [sid for sec in scope.sections for sid in sec]
        if len(scope.sections) > 1:
            raw["type"] = "parallel"
            regions: dict[str, Any] = {}
            forced = id(scope) in self._force_regions
            for k, sec in enumerate(scope.sections):
                hist = [
                    s for s in sec if self.states[s].history
                ]  # history states belong to the parallel state
                sec = [s for s in sec if s not in hist]
                real = [s for s in sec if self.states[s].kind == "state"]
                if len(real) == 1 and not forced:  # a section of one state: that state is the region
                    regions.update(self._states(real, path))
                else:
                    key = f"region{k + 1}"
                    while key in self.states:
                        key += "_"
                    sub: dict[str, Any] = {}
                    rp = f"{path}.{key}" if path else key
                    inits = [x for x in scope.initial if x[0] in sec]
                    self._fill(Scope(scope.owner, [sec], inits, []), sub, rp, sec)
                    regions[key] = sub
                regions.update(self._states(hist, path))
            raw["states"] = regions
        else:
            self._fill(scope, raw, path, members)

    def _fill(self, scope: Scope, raw: dict, path: str, members: list[str]) -> None:
        real = [s for s in members if self.states[s].kind == "state"]
        if not real:
            owner = scope.owner.id if scope.owner else "the diagram"
            raise MermaidError(scope.owner.line if scope.owner else 1, f"{owner} has no states")
        raw["states"] = self._states(real, path)
        if len(scope.initial) > 1:
            raise MermaidError(scope.initial[1][1], "a scope has one initial state ([*] --> x)")
        if scope.initial:
            sid, ln = scope.initial[0]
            if self._key(sid) not in raw["states"]:
                raise MermaidError(ln, f"initial state {sid!r} is not declared in this composite")
            raw["initial"] = self._key(sid)
        else:
            raw["initial"] = next(k for k, v in raw["states"].items() if v.get("type") != "history")

    def _states(self, ids: list[str], path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for sid in ids:
            s = self.states[sid]
            key = self._key(sid)
            p = f"{path}.{key}" if path else key
            self.paths[sid] = p
            raw: dict[str, Any] = {}
            self.raws[sid] = raw
            if s.history:
                raw["type"] = "history"
                raw["history"] = s.history
            elif s.inner is not None:
                self._scope(s.inner, raw, p)
            self._state_extras(s, raw)
            out[key] = raw
        return out

    def _state_extras(self, s: State, raw: dict) -> None:
        desc = ([s.label] if s.label else []) + s.descriptions
        if desc:
            raw["description"] = "\n".join(desc)
        if s.entry:
            raw["entry"] = list(s.entry)
        if s.exit:
            raw["exit"] = list(s.exit)
        if s.invoke:
            inv = [{"src": src} for src in s.invoke]
            raw["invoke"] = inv[0] if len(inv) == 1 else inv

    # --- transitions ----------------------------------------------------------------------

    def _target(self, src: str, dst: str, line: int) -> str:
        if dst not in self.paths:
            raise MermaidError(line, f"{dst!r} is not a state")
        sp, dp = self.paths[src], self.paths[dst]
        parent = sp.rpartition(".")[0]
        if dp.rpartition(".")[0] == parent:
            return self._key(dst)
        mid = self.machine_id or "machine"
        return f"#{mid}.{dp}"

    def _edge(self, e: Edge) -> None:
        src = self.states[e.src]
        if src.kind == "choice":
            return  # expanded where an edge enters the choice
        if src.kind in ("join", "fork"):
            raise MermaidError(e.line, f"<<{src.kind}>> {e.src!r} is not paired (a fork needs a join)")
        if e.src not in self.raws:
            raise MermaidError(e.line, f"{e.src!r} is a state the diagram never places")
        raw = self.raws[e.src]
        label = e.label
        internal = label.endswith("(internal)")
        if internal:
            label = label[: -len("(internal)")].strip()
        ev, guard, acts = parse_label(label, e.line)
        if e.dst == "[*]":
            self._to_end(e, raw, ev, guard, acts)
            return
        dst = self.states[e.dst]
        if src.history:
            raw["target"] = self._target(e.src, e.dst, e.line)
            return
        if dst.kind == "choice":
            if guard:
                raise MermaidError(
                    e.line, "an edge into a <<choice>> takes no guard: guard the edges out of it"
                )
            cands = []
            outs = [x for x in self._all_edges() if x.src == e.dst]
            if not outs:
                raise MermaidError(e.line, f"choice {e.dst!r} has no way out")
            for o in outs:
                if self.states[o.dst].kind == "choice" if o.dst != "[*]" else False:
                    raise MermaidError(
                        o.line, "a <<choice>> leading into another <<choice>> is not supported"
                    )
                oev, oguard, oacts = parse_label(o.label, o.line)
                g = oguard or (oev if oev and oev != "else" else None)
                option: dict[str, Any] = {"target": self._target(e.src, o.dst, o.line)}
                if g:
                    option["guard"] = g
                if acts or oacts:
                    option["actions"] = acts + oacts
                cands.append(option)
            cands.sort(key=lambda c: "guard" not in c)  # the default (else) is tried last
            self._add(raw, src, ev, cands, e.line)
            return
        if dst.kind in ("join", "fork"):
            raise MermaidError(e.line, f"<<{dst.kind}>> {e.dst!r} is not paired (a fork needs a join)")
        cand: dict[str, Any] = {"target": self._target(e.src, e.dst, e.line)}
        if e.src == e.dst and (internal or src.inner is None):
            del cand["target"]  # a self-loop on an atomic state is a targetless transition
        if guard:
            cand["guard"] = guard
        if acts:
            cand["actions"] = acts
        self._add(raw, src, ev, [cand], e.line)

    def _all_edges(self):
        out: list[Edge] = []

        def walk(scope: Scope) -> None:
            out.extend(scope.edges)
            for sec in scope.sections:
                for sid in sec:
                    if self.states[sid].inner is not None:
                        walk(self.states[sid].inner)  # type: ignore[arg-type]

        walk(self.root)
        return out

    def _add(self, raw: dict, src: State, ev: str, cands: list[dict], line: int) -> None:
        def put(container: dict, key: str) -> None:
            have = container.get(key)
            have = [] if have is None else (have if isinstance(have, list) else [have])
            container[key] = have + cands

        if not ev or ev == "always":
            put(raw, "always")
        elif ev.startswith("after"):
            put(raw.setdefault("after", {}), ev.split()[1])
        elif ev in ("done", "error"):
            inv = raw.get("invoke")
            if inv is not None:
                first = inv[0] if isinstance(inv, list) else inv
                put(first, "onDone" if ev == "done" else "onError")
            elif ev == "done" and (src.inner is not None or src.kind == "fork"):
                put(raw, "onDone")
            else:
                raise MermaidError(line, f"'{ev}' needs a state that invokes a service or has inner states")
        else:
            put(raw.setdefault("on", {}), ev)

    def _to_end(self, e: Edge, raw: dict, ev: str, guard: str | None, acts: list[str]) -> None:
        src = self.states[e.src]
        others = [x for x in e.scope.edges if x.src == e.src and x is not e]
        if not ev and not guard and not acts and src.inner is None and not others and not src.invoke:
            raw["type"] = "final"
            return
        parent_path = self.paths[e.src].rpartition(".")[0]
        siblings = self._siblings(parent_path)
        key = "end"
        while key in siblings and siblings[key].get("type") != "final":
            key += "_"
        siblings.setdefault(key, {"type": "final"})
        cand: dict[str, Any] = {"target": key}
        if guard:
            cand["guard"] = guard
        if acts:
            cand["actions"] = acts
        self._add(raw, src, ev, [cand], e.line)

    def _siblings(self, parent_path: str) -> dict:
        raw = self._root_raw
        for part in parent_path.split(".") if parent_path else []:
            raw = raw["states"][part]
        return raw["states"]
