"""A Mermaid ``stateDiagram-v2`` of a machine definition, the current state marked.

Built on the compiled state tree (``Statechart(..., implementations=False).root``),
so targets resolve exactly as the interpreter resolves them (``#id``, ``.child``,
siblings, root-level transitions). Layout rules:

- compound and parallel states become composite states (``state "x" as x { ... }``),
  parallel regions separated by ``--``; ``[*] --> initial`` in every compound state;
  final states get ``--> [*]``;
- a transition is declared in the innermost composite holding both ends, after the
  states it joins, so Mermaid never creates a stray state in the wrong composite;
- a root that is parallel or has transitions of its own is drawn as a composite
  named after the machine id (its transitions start from that box);
- labels are the event (``always`` for eventless transitions) plus ``[guard]``;
  a targetless transition is drawn as a self-loop;
- the active atomic states get ``class <id> current`` (``classDef current``).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["mermaid"]


def _label(text: str) -> str:
    return re.sub(r"[\r\n;]+", " ", text).replace('"', "'")


def mermaid(definition: dict, current: Any = None) -> str:
    """The diagram of ``definition``; ``current`` is a state value (string or dict) to highlight."""
    from corelog.machine import Statechart

    root = Statechart(definition, implementations=False).root
    wrap_root = root.type == "parallel" or bool(root.on) or bool(root.always)
    machine_id = definition.get("id") if isinstance(definition.get("id"), str) else "machine"

    ids: dict[Any, str] = {}
    taken: set[str] = set()

    def sid(node) -> str:
        if node not in ids:
            base = "__".join(re.sub(r"\W", "_", part) for part in node.path.split(".")) if node.path else ""
            base = base or "root_" + re.sub(r"\W", "_", machine_id)
            if base[0].isdigit():
                base = "s_" + base
            name, n = base, 1
            while name in taken:
                n += 1
                name = f"{base}_{n}"
            taken.add(name)
            ids[node] = name
        return ids[node]

    # every node gets its id in document order, so ids are stable across runs
    def number(node) -> None:
        if node is not root or wrap_root:
            sid(node)
        for child in node.children.values():
            number(child)

    number(root)

    # transitions, each assigned to the scope it is declared in (None: the top level)
    def scope(a, b):
        """The innermost node that is a proper ancestor of both ``a`` and ``b`` (None above the root)."""
        above_a = list(a.ancestors)
        above_b = set(b.ancestors)
        for node in above_a:
            if node in above_b:
                return node if (node is not root or wrap_root) else None
        return None

    edges: dict[Any, list[str]] = {}

    def collect(node) -> None:
        candidates = [(ev, t) for ev, ts in node.on.items() for t in ts] + [(None, t) for t in node.always]
        for ev, t in candidates:
            label = ev if ev is not None else "always"
            if t.guard is not None:
                label += f" [{t.guard.name}]"
            for target in t.targets or (node,):
                edges.setdefault(scope(node, target), []).append(
                    f"{sid(node)} --> {sid(target)} : {_label(label)}"
                )
        for child in node.children.values():
            collect(child)

    collect(root)

    lines = ["stateDiagram-v2"]

    def body(node, indent: str) -> None:
        """The inside of a compound/parallel ``node``: initial, child states, then edges scoped here."""
        if node.type == "compound" and node.initial is not None:
            lines.append(f"{indent}[*] --> {sid(node.initial)}")
        children = list(node.children.values())
        for i, child in enumerate(children):
            if child.children:
                lines.append(f'{indent}state "{_label(child.key)}" as {sid(child)} {{')
                body(child, indent + "  ")
                lines.append(f"{indent}}}")
            else:
                lines.append(f'{indent}state "{_label(child.key)}" as {sid(child)}')
            if child.type == "final":
                lines.append(f"{indent}{sid(child)} --> [*]")
            if node.type == "parallel" and i < len(children) - 1:
                lines.append(f"{indent}--")
        scope_key = node if (node is not root or wrap_root) else None
        lines.extend(indent + e for e in edges.get(scope_key, []))

    if wrap_root:
        lines.append(f"  [*] --> {sid(root)}")
        lines.append(f'  state "{_label(machine_id)}" as {sid(root)} {{')
        body(root, "    ")
        lines.append("  }")
        lines.extend("  " + e for e in edges.get(None, []))
    else:
        body(root, "  ")

    active = _active_leaves(root, current) if current is not None else []
    if active:
        lines.append("  classDef current fill:#ffd54f,stroke:#f57f17,stroke-width:2px")
        lines.extend(f"  class {sid(node)} current" for node in active)
    return "\n".join(lines)


def _active_leaves(root, value: Any) -> list:
    """The atomic states named by an XState state value (unknown names are ignored)."""
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
