"""Mermaid ``stateDiagram-v2`` in, first half: :func:`parse` reads the lines into a :class:`Diagram`.

A :class:`Diagram` is the states (:class:`State`) and the nested scopes
(:class:`Scope`: composite states, with their ``--`` sections, initial arrows
and edges, :class:`Edge`) as written; ``_mermaid_build`` turns it into a definition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ._mermaid_grammar import IDENT
from .errors import MermaidError


@dataclass
class State:
    id: str
    line: int
    kind: str = "state"  # state | choice | fork | join
    label: str | None = None
    key: str | None = None  # the state's key when it differs from its Mermaid id
    scope: Scope | None = None  # the scope it is declared in
    inner: Scope | None = None  # its own scope when composite
    section: int = 0
    descriptions: list[str] = field(default_factory=list)
    invoke: list[str] = field(default_factory=list)
    entry: list[str] = field(default_factory=list)
    exit: list[str] = field(default_factory=list)
    history: str | None = None


@dataclass
class Edge:
    src: str
    dst: str
    label: str
    line: int
    scope: Scope
    section: int


@dataclass
class Scope:
    owner: State | None
    sections: list[list[str]] = field(default_factory=lambda: [[]])  # state ids declared per section
    initial: list[tuple[str, int]] = field(default_factory=list)  # per [*] --> x (id, line)
    edges: list[Edge] = field(default_factory=list)


_EDGE = re.compile(r"^(\[\*\]|[\w.:-]+)\s*-->\s*(\[\*\]|[\w.:-]+)\s*(?::\s*(.*))?$")
_STATE_AS = re.compile(r'^state\s+"([^"]*)"\s+as\s+([\w-]+)\s*(<<\w+>>)?\s*(\{)?$')
_STATE = re.compile(r"^state\s+([\w-]+)\s*(<<\w+>>)?\s*(\{)?$")
_NOTE1 = re.compile(r"^note\s+(?:left|right)\s+of\s+([\w-]+)\s*:\s*(.*)$")
_NOTE = re.compile(r"^note\s+(?:left|right)\s+of\s+([\w-]+)\s*$")
_DESC = re.compile(r"^([\w-]+)\s*:\s*(.*)$")
_IGNORED = ("direction", "classDef", "class ", "style ", "accTitle", "accDescr", "click ", "linkStyle")


@dataclass
class Diagram:
    states: dict[str, State]
    root: Scope
    title: str | None  # the front matter's title
    payloads: dict[str, dict[str, str]]  # %% @payload EVENT field: type, ...


def parse(text: str) -> Diagram:
    """The states and scopes of ``stateDiagram-v2`` text; MermaidError names the line it cannot read."""
    lines = text.splitlines()
    states: dict[str, State] = {}
    payloads: dict[str, dict[str, str]] = {}
    root = Scope(None)
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

    def state(sid: str, line: int) -> State:
        sid = sid.split(":::")[0]
        s = states.get(sid)
        if s is None:
            s = states[sid] = State(sid, line, scope=stack[-1], section=len(stack[-1].sections) - 1)
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
                s.inner = Scope(s)
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
                    Edge(a.split(":::")[0], b.split(":::")[0], label, n, scope, len(scope.sections) - 1)
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
        if IDENT.match(line):
            state(line, n)
            continue
        raise MermaidError(n, f"cannot read {line!r} as a stateDiagram-v2 statement")
    if not seen_header:
        raise MermaidError(1, "empty diagram: expected 'stateDiagram-v2'")
    if len(stack) > 1:
        owner = stack[-1].owner
        assert owner is not None
        raise MermaidError(owner.line, f"composite state {owner.id!r} opened here is not closed with '}}'")
    return Diagram(states, root, title, payloads)
