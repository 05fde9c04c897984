"""The small label language :func:`to_mermaid` writes and :func:`from_mermaid` reads.

A state id is an identifier (:data:`IDENT`); an edge label is
``EVENT [guard] / act1, act2`` (:func:`parse_label`), where EVENT is one word or
``after DELAY`` (``always``, ``done``, ``error``, ``else`` are keywords the
builder interprets). :func:`safe_label` makes any text fit in a label.
"""

from __future__ import annotations

import re

from .errors import MermaidError

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL = re.compile(r"^(?P<ev>[^\[/]*?)\s*(?:\[(?P<guard>[^\]]*)\])?\s*(?:/\s*(?P<acts>.*))?$")


def safe_label(text: str) -> str:
    """``text`` on one line without double quotes, as a Mermaid label or title."""
    return re.sub(r"[\r\n;]+", " ", str(text)).replace('"', "'")


def parse_label(label: str, line: int) -> tuple[str, str | None, list[str]]:
    """``(event, guard, actions)`` of an edge label; MermaidError (naming ``line``) if it is not one."""
    m = _LABEL.match(label)
    if not m:
        raise MermaidError(line, f"cannot read the label {label!r} (EVENT [guard] / actions)")
    ev = (m.group("ev") or "").strip()
    guard = (m.group("guard") or "").strip() or None
    acts = [a.strip() for a in (m.group("acts") or "").split(",") if a.strip()]
    if ev and not re.match(r"^(after\s+\w+|[\w.:*-]+)$", ev):
        raise MermaidError(line, f"{ev!r} is not an event name (one word, or 'after DELAY')")
    return ev, guard, acts
