"""Mermaid ``stateDiagram-v2`` in and out: :func:`to_mermaid` and :func:`from_mermaid`.

Export is built on the compiled state tree, so targets resolve exactly as the
interpreter resolves them. Import turns a diagram into a definition dict that
:class:`Statechart` accepts. Both speak one small label language, so
``from_mermaid(to_mermaid(d))`` gives ``d`` back for definitions whose state
keys are unique identifiers (tested with hypothesis):

- ``a --> b : EVENT [guard] / act1, act2`` is a transition (a self-loop on an
  atomic state, or one labelled ``... (internal)``, is targetless); without a label, or
  labelled ``always``, it is eventless (``always``); ``after 500`` or
  ``after NAME`` is a delayed transition; ``done`` is the state's ``onDone``
  (or its invocation's), ``error`` its invocation's ``onError``;
- ``[*] --> a`` inside a scope names its initial state; ``a --> [*]`` makes an
  atomic ``a`` with no other way out a final state (otherwise ``a`` moves to a
  final state ``end`` of its scope);
- ``state c <<choice>>`` is not a state: ``x --> c : EV`` becomes ``x``'s
  transition on ``EV`` with one guarded candidate per edge out of ``c``
  (labelled ``[guard]``, ``guard``, or ``else``/nothing for the default);
- ``state f <<fork>>`` / ``state j <<join>>``: the branches between a fork and
  its join become the regions of a parallel state named after the fork, whose
  ``onDone`` goes where the join goes; ``--`` inside a composite makes it
  parallel, one region per section;
- ``state "Long name" as s1`` declares ``s1`` described as "Long name"; notes and
  ``s1 : text`` lines become the description, except ``s1 : invoke SERVICE``,
  ``s1 : entry / a, b``, ``s1 : exit / a`` and ``s1 : history deep|shallow``;
- ``%% @payload EVENT field: type, ...`` declares an event's payload (``meta.payloads``,
  for the typed facade of ``corelog gen``);
- ``direction``, ``classDef``, ``class``, ``style``, other ``%%`` comments are ignored.

What cannot be mapped raises :class:`MermaidError` naming the line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import MermaidError

__all__ = ["from_mermaid", "to_mermaid"]


# --- export -------------------------------------------------------------------------------

_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _label(text: str) -> str:
    return re.sub(r"[\r\n;]+", " ", str(text)).replace('"', "'")


def to_mermaid(definition: Mapping[str, Any], current: Any = None) -> str:
    """The diagram of ``definition``; ``current`` is a state value (string or dict) to highlight."""
    from ._interpreter import Statechart

    root = Statechart(definition, implementations=False).root
    raw_root = definition
    wrap_root = root.type == "parallel" or bool(root.on) or bool(root.always)
    raw_id = definition.get("id")
    machine_id: str = raw_id if isinstance(raw_id, str) else "machine"

    def raw_of(node) -> Mapping:
        r = raw_root
        for part in node.path.split(".") if node.path else []:
            r = r["states"][part]
        return r

    nodes: list = []

    def walk(node) -> None:
        nodes.append(node)
        for h in node.histories.values():
            nodes.append(h)
        for child in node.children.values():
            walk(child)

    walk(root)
    counts: dict[str, int] = {}
    for n in nodes:
        if n is not root:
            counts[n.key] = counts.get(n.key, 0) + 1
    ids: dict[Any, str] = {}
    taken: set[str] = set()
    for n in nodes:
        if n is root:
            if not wrap_root:
                continue
            base = "root_" + re.sub(r"\W", "_", machine_id)
        elif _ID.match(n.key) and counts[n.key] == 1 and n.key not in ("end", "root"):
            base = n.key
        else:
            base = "__".join(re.sub(r"\W", "_", part) for part in n.path.split("."))
            if not base or base[0].isdigit():
                base = "s_" + base
        name, i = base, 1
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        ids[n] = name

    def sid(n) -> str:
        return ids[n]

    def scope(a, b):
        above_b = set(b.ancestors)
        for node in a.ancestors:
            if node in above_b:
                return node if (node is not root or wrap_root) else None
        return None

    def scope_all(group: list) -> Any:
        """The scope of a (state, event) group: all its candidates in one scope keep their order."""
        head, rest = group[0], group[1:]
        for node in head.ancestors:
            if all(node in r.ancestors for r in rest):
                return node if (node is not root or wrap_root) else None
        return None

    groups: dict[Any, list] = {}
    edges: dict[Any, list[str]] = {}

    def text(kind: str, t) -> str:
        out = kind
        if t.guard is not None:
            out += f" [{t.guard.name}]"
        if t.actions:
            out += " / " + ", ".join(a.name for a in t.actions)
        return out

    def collect(node) -> None:
        after = {a.event: f"after {a.delay}" for a in node.after}
        inv = {}
        for d in node.invoke:
            inv[d.done_event], inv[d.error_event] = "done", "error"
        cands = [(ev, t) for ev, ts in node.on.items() for t in ts] + [(None, t) for t in node.always]
        for ev, t in cands:
            if ev is None:
                kind = "always"
            elif ev in after:
                kind = after[ev]
            elif ev in inv:
                kind = inv[ev]
            elif ev == f"xstate.done.state.{node.id}":
                kind = "done"
            else:
                kind = ev
            group = groups.setdefault(
                (node, ev), [node, *(x for c in node.on.get(ev, ()) for x in c.targets)]
            )
            where = (
                scope_all(group)
                if ev is not None
                else scope_all([node, *(x for c in node.always for x in c.targets)])
            )
            if not t.targets and node.children:
                kind_t = text(kind, t) + " (internal)"
            else:
                kind_t = text(kind, t)
            for target in t.targets or (node,):
                edges.setdefault(where, []).append(f"{sid(node)} --> {sid(target)} : {_label(kind_t)}")
        for h in node.histories.values():
            for target in h.default:
                edges.setdefault(scope(h, target), []).append(f"{sid(h)} --> {sid(target)}")
        for child in node.children.values():
            collect(child)

    collect(root)
    lines = ["---", f"title: {_label(machine_id)}", "---", "stateDiagram-v2"] if "id" in definition else []
    lines = lines or ["stateDiagram-v2"]

    def notes(node, indent: str) -> None:
        raw = raw_of(node)
        name = sid(node)
        if node.type == "history":
            lines.append(f"{indent}{name} : history {node.history}")
        for d in node.invoke:
            lines.append(f"{indent}{name} : invoke {d.src}")
        if node.entry:
            lines.append(f"{indent}{name} : entry / " + ", ".join(a.name for a in node.entry))
        if node.exit:
            lines.append(f"{indent}{name} : exit / " + ", ".join(a.name for a in node.exit))
        desc = raw.get("description") if isinstance(raw, Mapping) else None
        if isinstance(desc, str) and desc:
            lines.extend(f"{indent}{name} : {_label(d)}" for d in desc.splitlines() if d.strip())

    def declare(child, indent: str) -> str:
        name = sid(child)
        return (
            f"{indent}state {name}" if child.key == name else f'{indent}state "{_label(child.key)}" as {name}'
        )

    def body(node, indent: str) -> None:
        if node.type == "compound" and node.initial is not None:
            lines.append(f"{indent}[*] --> {sid(node.initial)}")
        children = list(node.children.values())
        for i, child in enumerate(children):
            if child.children:
                lines.append(declare(child, indent) + " {")
                body(child, indent + "  ")
                lines.append(f"{indent}}}")
            else:
                lines.append(declare(child, indent))
            notes(child, indent)
            if child.type == "final":
                lines.append(f"{indent}{sid(child)} --> [*]")
            if node.type == "parallel" and i < len(children) - 1:
                lines.append(f"{indent}--")
        for h in node.histories.values():
            lines.append(declare(h, indent))
            notes(h, indent)
        lines.extend(indent + e for e in edges.get(node if (node is not root or wrap_root) else None, []))

    if wrap_root:
        lines.append(f"  [*] --> {sid(root)}")
        lines.append(f'  state "{_label(machine_id)}" as {sid(root)} {{')
        body(root, "    ")
        lines.append("  }")
        notes(root, "  ")
        lines.extend("  " + e for e in edges.get(None, []))
    else:
        body(root, "  ")
        for d in root.invoke:
            lines.append(f"  %% the root invokes {d.src}")
    active = _active_leaves(root, current) if current is not None else []
    if active:
        lines.append("  classDef current fill:#ffd54f,stroke:#f57f17,stroke-width:2px")
        lines.extend(f"  class {sid(node)} current" for node in active)
    return "\n".join(lines)


def _active_leaves(root, value: Any) -> list:
    out = []

    def walk(node, v: Any) -> None:
        items = [(v, None)] if isinstance(v, str) else list(v.items()) if isinstance(v, dict) else []
        for key, sub in items:
            child = node.children.get(key)
            if child is None:
                continue
            if child.children:
                walk(child, sub)
            else:
                out.append(child)

    walk(root, value)
    return out


# --- import -------------------------------------------------------------------------------


@dataclass
class _State:
    id: str
    line: int
    kind: str = "state"  # state | choice | fork | join
    label: str | None = None
    key: str | None = None  # the state's key when it differs from its Mermaid id
    scope: _Scope | None = None  # the scope it is declared in
    inner: _Scope | None = None  # its own scope when composite
    section: int = 0
    descriptions: list[str] = field(default_factory=list)
    invoke: list[str] = field(default_factory=list)
    entry: list[str] = field(default_factory=list)
    exit: list[str] = field(default_factory=list)
    history: str | None = None


@dataclass
class _Edge:
    src: str
    dst: str
    label: str
    line: int
    scope: _Scope
    section: int


@dataclass
class _Scope:
    owner: _State | None
    sections: list[list[str]] = field(default_factory=lambda: [[]])  # state ids declared per section
    initial: list[tuple[str, int]] = field(default_factory=list)  # per [*] --> x (id, line)
    edges: list[_Edge] = field(default_factory=list)


_EDGE = re.compile(r"^(\[\*\]|[\w.:-]+)\s*-->\s*(\[\*\]|[\w.:-]+)\s*(?::\s*(.*))?$")
_STATE_AS = re.compile(r'^state\s+"([^"]*)"\s+as\s+([\w-]+)\s*(<<\w+>>)?\s*(\{)?$')
_STATE = re.compile(r"^state\s+([\w-]+)\s*(<<\w+>>)?\s*(\{)?$")
_NOTE1 = re.compile(r"^note\s+(?:left|right)\s+of\s+([\w-]+)\s*:\s*(.*)$")
_NOTE = re.compile(r"^note\s+(?:left|right)\s+of\s+([\w-]+)\s*$")
_DESC = re.compile(r"^([\w-]+)\s*:\s*(.*)$")
_LABEL = re.compile(r"^(?P<ev>[^\[/]*?)\s*(?:\[(?P<guard>[^\]]*)\])?\s*(?:/\s*(?P<acts>.*))?$")
_IGNORED = ("direction", "classDef", "class ", "style ", "accTitle", "accDescr", "click ", "linkStyle")


def from_mermaid(text: str, machine_id: str | None = None) -> dict[str, Any]:
    """A definition dict from ``stateDiagram-v2`` text; MermaidError names the line it cannot map.

    The machine id is ``machine_id``, else the front matter's ``title``, else "machine".
    """
    lines = text.splitlines()
    states: dict[str, _State] = {}
    payloads: dict[str, dict[str, str]] = {}
    root = _Scope(None)
    stack = [root]
    title = None
    i = 0
    seen_header = False
    if lines and lines[0].strip() == "---":  # front matter
        i = 1
        while i < len(lines) and lines[i].strip() != "---":
            m = re.match(r"^\s*title\s*:\s*(.+?)\s*$", lines[i])
            if m:
                title = m.group(1).strip("'\"")
            i += 1
        i += 1

    def state(sid: str, line: int) -> _State:
        sid = sid.split(":::")[0]
        s = states.get(sid)
        if s is None:
            s = states[sid] = _State(sid, line, scope=stack[-1], section=len(stack[-1].sections) - 1)
            stack[-1].sections[-1].append(sid)
        return s

    while i < len(lines):
        n = i + 1
        raw = lines[i]
        i += 1
        pm = re.match(r"^\s*%%\s*@payload\s+([\w.:-]+)\s*(.*)$", raw)
        if pm:  # %% @payload EVENT field: type, other: type (typed payloads for corelog gen)
            fields: dict[str, str] = {}
            for part in filter(None, (x.strip() for x in re.split(r",(?![^\[]*\])", pm.group(2)))):
                k, sep, v = part.partition(":")
                if not sep or not k.strip().isidentifier() or not v.strip():
                    raise MermaidError(n, f"cannot read payload field {part!r} (name: type)")
                fields[k.strip()] = v.strip()
            payloads[pm.group(1)] = fields
            continue
        line = raw.split("%%", 1)[0].strip()
        if not line:
            continue
        if not seen_header:
            if line not in ("stateDiagram-v2", "stateDiagram"):
                raise MermaidError(n, f"expected 'stateDiagram-v2', got {line!r}")
            seen_header = True
            continue
        if line.startswith(_IGNORED):
            continue
        if line == "}":
            if len(stack) == 1:
                raise MermaidError(n, "'}' closes no composite state")
            stack.pop()
            continue
        if line == "--":
            if len(stack) == 1:
                raise MermaidError(n, "'--' (concurrency) belongs inside a composite state")
            stack[-1].sections.append([])
            continue
        m = _STATE_AS.match(line)
        if m:
            label, sid, marker, brace = m.groups()
        else:
            m = _STATE.match(line)
            if m:
                sid, marker, brace = m.groups()
                label = None
        if m:
            s = state(sid, n)
            if label is not None and label != sid:
                if label.isidentifier() and sid.endswith("__" + label):
                    s.key = label  # to_mermaid's path-based id for a key used in several places
                else:
                    s.label = label
            if marker:
                kind = marker[2:-2].lower()
                if kind not in ("choice", "fork", "join"):
                    raise MermaidError(n, f"unsupported stereotype {marker} (choice, fork and join are)")
                s.kind = kind
            if brace:
                if s.kind != "state":
                    raise MermaidError(n, f"a <<{s.kind}>> cannot have inner states")
                if s.inner is not None:
                    raise MermaidError(n, f"composite state {sid!r} is declared twice")
                s.inner = _Scope(s)
                stack.append(s.inner)
            continue
        m = _NOTE1.match(line)
        if m:
            state(m.group(1), n).descriptions.append(m.group(2).strip())
            continue
        m = _NOTE.match(line)
        if m:
            s = state(m.group(1), n)
            body = []
            while i < len(lines) and lines[i].strip() != "end note":
                body.append(lines[i].strip())
                i += 1
            if i >= len(lines):
                raise MermaidError(n, "note without 'end note'")
            i += 1
            s.descriptions.append("\n".join(body))
            continue
        m = _EDGE.match(line)
        if m:
            a, b, label = m.group(1), m.group(2), (m.group(3) or "").strip()
            for x in (a, b):
                if x != "[*]":
                    state(x, n)
            if a == "[*]" and b == "[*]":
                raise MermaidError(n, "[*] --> [*] means nothing")
            scope = stack[-1]
            if a == "[*]":
                if label:
                    raise MermaidError(n, "the initial arrow [*] --> x takes no label")
                scope.initial.append((b.split(":::")[0], n))
            else:
                scope.edges.append(
                    _Edge(a.split(":::")[0], b.split(":::")[0], label, n, scope, len(scope.sections) - 1)
                )
            continue
        m = _DESC.match(line)
        if m:
            s = state(m.group(1), n)
            d = m.group(2).strip()
            low = d.split()
            if low[:1] == ["invoke"] and len(low) == 2:
                s.invoke.append(low[1])
            elif re.match(r"^(entry|exit)\s*/", d):
                which, acts = d.split("/", 1)
                getattr(s, which.strip()).extend(a.strip() for a in acts.split(",") if a.strip())
            elif low[:1] == ["history"] and len(low) == 2 and low[1] in ("deep", "shallow"):
                s.history = low[1]
            elif d:
                s.descriptions.append(d)
            continue
        if _ID.match(line):
            state(line, n)
            continue
        raise MermaidError(n, f"cannot read {line!r} as a stateDiagram-v2 statement")
    if not seen_header:
        raise MermaidError(1, "empty diagram: expected 'stateDiagram-v2'")
    if len(stack) > 1:
        owner = stack[-1].owner
        assert owner is not None
        raise MermaidError(owner.line, f"composite state {owner.id!r} opened here is not closed with '}}'")
    definition = _Builder(states, root, machine_id or title).build()
    if payloads:
        definition.setdefault("meta", {})["payloads"] = payloads
    return definition


class _Builder:
    def __init__(self, states: dict[str, _State], root: _Scope, machine_id: str | None):
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

    def _forks(self, scope: _Scope) -> None:
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
            inner = _Scope(fork, [], [], [])
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

    def _scope(self, scope: _Scope, raw: dict, path: str) -> None:
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
                    self._fill(_Scope(scope.owner, [sec], inits, []), sub, rp, sec)
                    regions[key] = sub
                regions.update(self._states(hist, path))
            raw["states"] = regions
        else:
            self._fill(scope, raw, path, members)

    def _fill(self, scope: _Scope, raw: dict, path: str, members: list[str]) -> None:
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

    def _state_extras(self, s: _State, raw: dict) -> None:
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

    def _parse(self, label: str, line: int) -> tuple[str, str | None, list[str]]:
        m = _LABEL.match(label)
        if not m:
            raise MermaidError(line, f"cannot read the label {label!r} (EVENT [guard] / actions)")
        ev = (m.group("ev") or "").strip()
        guard = (m.group("guard") or "").strip() or None
        acts = [a.strip() for a in (m.group("acts") or "").split(",") if a.strip()]
        if ev and not re.match(r"^(after\s+\w+|[\w.:*-]+)$", ev):
            raise MermaidError(line, f"{ev!r} is not an event name (one word, or 'after DELAY')")
        return ev, guard, acts

    def _edge(self, e: _Edge) -> None:
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
        ev, guard, acts = self._parse(label, e.line)
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
                oev, oguard, oacts = self._parse(o.label, o.line)
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
        out: list[_Edge] = []

        def walk(scope: _Scope) -> None:
            out.extend(scope.edges)
            for sec in scope.sections:
                for sid in sec:
                    if self.states[sid].inner is not None:
                        walk(self.states[sid].inner)  # type: ignore[arg-type]

        walk(self.root)
        return out

    def _add(self, raw: dict, src: _State, ev: str, cands: list[dict], line: int) -> None:
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

    def _to_end(self, e: _Edge, raw: dict, ev: str, guard: str | None, acts: list[str]) -> None:
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
