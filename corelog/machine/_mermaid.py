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

``_mermaid_grammar`` holds what both directions share (ids, labels), ``_mermaid_render``
writes diagrams, ``_mermaid_parse`` reads their lines and ``_mermaid_build`` turns those
into a definition.
"""

from __future__ import annotations

from typing import Any

from ._mermaid_build import Builder
from ._mermaid_parse import parse
from ._mermaid_render import to_mermaid

__all__ = ["from_mermaid", "to_mermaid"]


def from_mermaid(text: str, machine_id: str | None = None) -> dict[str, Any]:
    """A definition dict from ``stateDiagram-v2`` text; MermaidError names the line it cannot map.

    The machine id is ``machine_id``, else the front matter's ``title``, else "machine".
    """
    diagram = parse(text)
    definition = Builder(diagram.states, diagram.root, machine_id or diagram.title).build()
    if diagram.payloads:
        definition.setdefault("meta", {})["payloads"] = diagram.payloads
    return definition
