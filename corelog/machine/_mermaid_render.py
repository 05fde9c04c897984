"""Mermaid ``stateDiagram-v2`` out: :func:`to_mermaid` (the label language is in ``_mermaid``).

Export is built on the compiled state tree, so targets resolve exactly as the
interpreter resolves them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ._mermaid_grammar import IDENT, safe_label


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
        elif IDENT.match(n.key) and counts[n.key] == 1 and n.key not in ("end", "root"):
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
                edges.setdefault(where, []).append(f"{sid(node)} --> {sid(target)} : {safe_label(kind_t)}")
        for h in node.histories.values():
            for target in h.default:
                edges.setdefault(scope(h, target), []).append(f"{sid(h)} --> {sid(target)}")
        for child in node.children.values():
            collect(child)

    collect(root)
    lines = (
        ["---", f"title: {safe_label(machine_id)}", "---", "stateDiagram-v2"] if "id" in definition else []
    )
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
            lines.extend(f"{indent}{name} : {safe_label(d)}" for d in desc.splitlines() if d.strip())

    def declare(child, indent: str) -> str:
        name = sid(child)
        return (
            f"{indent}state {name}"
            if child.key == name
            else f'{indent}state "{safe_label(child.key)}" as {name}'
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
        lines.append(f'  state "{safe_label(machine_id)}" as {sid(root)} {{')
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
