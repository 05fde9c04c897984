"""Machine definitions: validation (every problem, with its path) and compilation.

A definition is a JSON-serialisable dict in XState's shape. ``compile_definition``
checks all of it at once and raises one :class:`DefinitionError` listing every
problem, then builds the immutable tree of :class:`StateNode` the interpreter
runs on: document order, parents, resolved targets, transition lists per event.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import DefinitionError

STATE_KEYS = {
    "id",
    "initial",
    "context",
    "states",
    "on",
    "entry",
    "exit",
    "type",
    "always",
    "description",
    "meta",
    "after",
    "invoke",
    "onDone",
    "output",
    "history",
    "target",
    "tags",
}
ROOT_ONLY_KEYS = {"context", "version"}
TRANSITION_KEYS = {"target", "guard", "actions", "reenter", "description", "meta"}
INVOKE_KEYS = {"src", "id", "input", "onDone", "onError", "description", "meta", "retry"}
RETRY_KEYS = {"attempts", "backoff", "factor", "max"}
STATE_TYPES = {"atomic", "compound", "parallel", "final", "history"}
HISTORY_ONLY_KEYS = {"history", "target"}


def canonical_json(definition: Any) -> bytes:
    return json.dumps(
        definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def definition_hash(definition: Mapping[str, Any]) -> str:
    """Hex BLAKE2b-256 of the canonical JSON form (sorted keys, no whitespace)."""
    return hashlib.blake2b(canonical_json(definition), digest_size=32).hexdigest()


@dataclass(frozen=True, slots=True)
class ActionRef:
    name: str
    params: Mapping[str, Any] | None = None


@dataclass(eq=False, slots=True)
class Transition:
    source: StateNode
    event: str | None  # None for ``always``
    targets: tuple[StateNode, ...]
    guard: ActionRef | None
    actions: tuple[ActionRef, ...]
    reenter: bool
    order: int = 0

    @property
    def targetless(self) -> bool:
        return not self.targets


@dataclass(frozen=True, slots=True)
class InvokeDef:
    """An ``invoke`` of a state: the service name, its id (XState's ``<i>.<stateId>`` by default),
    a JSON ``input``, and the retry policy (attempts, backoff ms, factor, max ms)."""

    id: str
    src: str
    input: Any
    state: str  # path of the invoking state
    retry: Mapping[str, Any] | None = None

    @property
    def done_event(self) -> str:
        return f"xstate.done.actor.{self.id}"

    @property
    def error_event(self) -> str:
        return f"xstate.error.actor.{self.id}"


@dataclass(frozen=True, slots=True)
class AfterDef:
    """A delayed transition group of a state: its event name and the delay (ms or a named delay)."""

    event: str
    delay: int | str


@dataclass(eq=False, slots=True)
class StateNode:
    key: str
    path: str  # dotted path from the root ("" for the root)
    parent: StateNode | None
    type: str
    order: int
    explicit_id: str | None = None
    children: dict[str, StateNode] = field(default_factory=dict)
    initial: StateNode | None = None
    on: dict[str, list[Transition]] = field(default_factory=dict)
    always: list[Transition] = field(default_factory=list)
    entry: tuple[ActionRef, ...] = ()
    exit: tuple[ActionRef, ...] = ()
    ancestors: tuple[StateNode, ...] = ()  # proper ancestors, nearest first
    depth: int = 0
    id: str = ""  # XState's id: the explicit ``id`` or ``<machineId>.<path>``
    histories: dict[str, StateNode] = field(default_factory=dict)  # history pseudo-states
    history: str = ""  # "shallow" | "deep" for history nodes
    default: tuple[StateNode, ...] = ()  # a history node's default target
    after: tuple[AfterDef, ...] = ()
    invoke: tuple[InvokeDef, ...] = ()
    output: Any = None
    has_output: bool = False

    def __repr__(self) -> str:
        return f"<StateNode {self.path or '(root)'}>"

    def is_descendant_of(self, other: StateNode) -> bool:
        return other in self.ancestors


def _is_json(value: Any, path: str, problems: list[tuple[str, str]]) -> None:
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            problems.append((path, f"non-JSON number {value!r} (NaN and infinities are not allowed)"))
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _is_json(v, f"{path}[{i}]", problems)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                problems.append((path, f"non-string key {k!r} (JSON object keys are strings)"))
            else:
                _is_json(v, f"{path}.{k}" if path else k, problems)
        return
    problems.append((path, f"non-JSON value of type {type(value).__name__}"))


def compile_definition(
    definition: Mapping[str, Any],
    actions: Mapping[str, Callable] | None,
    guards: Mapping[str, Callable] | None,
    *,
    check_implementations: bool = True,
    delays: Mapping[str, Any] | None = None,
) -> StateNode:
    """Validate ``definition`` and build its state tree; raise one DefinitionError listing every problem."""
    problems: list[tuple[str, str]] = []
    if not isinstance(definition, Mapping):
        raise DefinitionError([("", f"a definition is a dict, got {type(definition).__name__}")])
    _is_json(dict(definition), "", problems)
    raw_id = definition.get("id")
    machine_id: str = raw_id if isinstance(raw_id, str) else "machine"
    delays = delays or {}
    actions = actions or {}
    guards = guards or {}
    counter = [0]
    by_id: dict[str, StateNode] = {}
    invoke_ids: set[str] = set()
    pending: list[tuple[StateNode, str, str, Any, str]] = []  # node, event, path, raw, kind

    def refs(raw: Any, path: str, table: Mapping[str, Callable], kind: str) -> tuple[ActionRef, ...]:
        if raw is None:
            return ()
        items = raw if isinstance(raw, list) else [raw]
        out = []
        for i, item in enumerate(items):
            p = f"{path}[{i}]" if isinstance(raw, list) else path
            if isinstance(item, str):
                ref = ActionRef(item)
            elif isinstance(item, Mapping) and isinstance(item.get("type"), str):
                extra = set(item) - {"type", "params"}
                if extra:
                    problems.append((p, f"unknown key(s) {sorted(extra)} in {kind} reference"))
                params = item.get("params")
                if params is not None and not isinstance(params, Mapping):
                    problems.append((p, "params must be an object"))
                    params = None
                ref = ActionRef(item["type"], params)
            else:
                problems.append((p, f"a {kind} is a name or {{type, params}}, got {item!r}"))
                continue
            if check_implementations and ref.name not in table:
                problems.append(
                    (p, f"unknown {kind} {ref.name!r}: pass an implementation in {kind}s={{...}}")
                )
            out.append(ref)
        return tuple(out)

    def build(raw: Any, key: str, path: str, parent: StateNode | None, where: str) -> StateNode | None:
        if not isinstance(raw, Mapping):
            problems.append((where, f"a state node is a dict, got {type(raw).__name__}"))
            return None
        allowed = STATE_KEYS | (ROOT_ONLY_KEYS if parent is None else set())
        unknown = set(raw) - allowed
        if unknown:
            problems.append((where, f"unknown key(s) {sorted(unknown)}"))
        children_raw = raw.get("states")
        typ = raw.get("type")
        if typ is not None and typ not in STATE_TYPES:
            problems.append((f"{where}.type" if where else "type", f"unknown state type {typ!r}"))
            typ = None
        if typ is None:
            typ = "compound" if children_raw else "atomic"
        if typ in ("compound", "parallel") and not (
            isinstance(children_raw, Mapping)
            and any(
                not (isinstance(v, Mapping) and v.get("type") == "history") for v in children_raw.values()
            )
        ):
            problems.append((where or "<root>", f"a {typ} state needs child states"))
        if typ in ("atomic", "final", "history") and children_raw:
            problems.append((where or "<root>", f"a {typ} state cannot have child states"))
        if typ == "final" and (raw.get("on") or raw.get("always") or raw.get("after") or raw.get("invoke")):
            problems.append((where or "<root>", "a final state cannot have transitions or invocations"))
        if typ == "history":
            if parent is None:
                problems.append(("<root>", "the root cannot be a history state"))
            extra = set(raw) - {"type", "history", "target", "id", "description", "meta"}
            if extra:
                problems.append((where, f"a history state has only history/target/id, not {sorted(extra)}"))
            if raw.get("history", "shallow") not in ("shallow", "deep"):
                problems.append((f"{where}.history", "history is 'shallow' or 'deep'"))
        else:
            for k in sorted(HISTORY_ONLY_KEYS & set(raw)):
                problems.append((f"{where}.{k}" if where else k, f"{k!r} belongs to history states only"))
        if raw.get("onDone") is not None and typ not in ("compound", "parallel"):
            problems.append(
                (f"{where}.onDone" if where else "onDone", f"onDone on a {typ} state never fires")
            )
        if "output" in raw and typ != "final" and parent is not None:
            problems.append((f"{where}.output", "output belongs to final states and the root"))
        node = StateNode(key, path, parent, typ, counter[0])
        counter[0] += 1
        if parent is not None:
            node.ancestors = (parent, *parent.ancestors)
            node.depth = parent.depth + 1
        node.history = raw.get("history", "shallow") if typ == "history" else ""
        if "output" in raw:
            node.output, node.has_output = raw["output"], True
        sid = raw.get("id")
        if sid is not None:
            if not isinstance(sid, str) or not sid:
                problems.append((f"{where}.id" if where else "id", "an id is a non-empty string"))
            elif sid in by_id:
                problems.append((f"{where}.id" if where else "id", f"duplicate state id {sid!r}"))
            else:
                node.explicit_id = sid
                by_id[sid] = node
        node.id = node.explicit_id or (f"{machine_id}.{path}" if path else machine_id)
        prefix = f"{where}." if where else ""
        node.entry = refs(raw.get("entry"), f"{prefix}entry", actions, "action")
        node.exit = refs(raw.get("exit"), f"{prefix}exit", actions, "action")
        if isinstance(children_raw, Mapping):
            for ck, cv in children_raw.items():
                if not isinstance(ck, str) or not ck or "." in ck or ck.startswith("#"):
                    problems.append((f"{prefix}states", f"bad state key {ck!r} (no dots, no leading #)"))
                    continue
                child = build(cv, ck, f"{path}.{ck}" if path else ck, node, f"{prefix}states.{ck}")
                if child is not None:
                    if child.type == "history":
                        node.histories[ck] = child
                    else:
                        node.children[ck] = child
        elif children_raw is not None:
            problems.append((f"{prefix}states", "states must be a dict"))
        initial = raw.get("initial")
        if node.type == "compound":
            if initial is None:
                problems.append((f"{prefix}initial" if where else "initial", "missing initial state"))
            elif initial not in node.children:
                problems.append(
                    (
                        f"{prefix}initial" if where else "initial",
                        f"initial state {initial!r} is not a child state",
                    )
                )
            else:
                node.initial = node.children[initial]
        elif initial is not None:
            problems.append(
                (f"{prefix}initial" if where else "initial", f"a {node.type} state has no initial")
            )
        on = raw.get("on")
        if on is not None:
            if not isinstance(on, Mapping):
                problems.append((f"{prefix}on", "on must be a dict of event -> transition"))
            else:
                for ev, tr in on.items():
                    if not isinstance(ev, str) or not ev:
                        problems.append((f"{prefix}on", f"bad event type {ev!r}"))
                        continue
                    pending.append((node, ev, f"{prefix}on.{ev}", tr, "on"))
        if raw.get("always") is not None:
            pending.append((node, "", f"{prefix}always", raw["always"], "always"))
        if raw.get("onDone") is not None:
            pending.append((node, f"xstate.done.state.{node.id}", f"{prefix}onDone", raw["onDone"], "on"))
        after = raw.get("after")
        if after is not None:
            if not isinstance(after, Mapping):
                problems.append((f"{prefix}after", "after must be a dict of delay -> transition"))
            else:
                groups = []
                for dk, tr in after.items():
                    delay: int | str
                    if isinstance(dk, int) or (isinstance(dk, str) and dk.isdigit()):
                        delay = int(dk)
                    elif isinstance(dk, str) and dk:
                        delay = dk
                        if check_implementations and dk not in delays:
                            problems.append(
                                (f"{prefix}after.{dk}", f"unknown delay {dk!r}: pass delays={{{dk!r}: ms}}")
                            )
                    else:
                        problems.append((f"{prefix}after", f"bad delay {dk!r}"))
                        continue
                    ev = f"xstate.after.{delay}.{node.id}"
                    groups.append(AfterDef(ev, delay))
                    pending.append((node, ev, f"{prefix}after.{dk}", tr, "on"))
                node.after = tuple(groups)
        inv = raw.get("invoke")
        if inv is not None:
            items = inv if isinstance(inv, list) else [inv]
            defs = []
            for i, item in enumerate(items):
                p = f"{prefix}invoke[{i}]" if isinstance(inv, list) else f"{prefix}invoke"
                if not isinstance(item, Mapping) or not isinstance(item.get("src"), str) or not item["src"]:
                    problems.append((p, "an invoke is a dict with a service name in 'src'"))
                    continue
                extra = set(item) - INVOKE_KEYS
                if extra:
                    problems.append((p, f"unknown key(s) {sorted(extra)} in invoke"))
                iid = item.get("id", f"{i}.{node.id}")
                if not isinstance(iid, str) or not iid:
                    problems.append((f"{p}.id", "an invoke id is a non-empty string"))
                    continue
                if iid in invoke_ids:
                    problems.append((f"{p}.id", f"duplicate invoke id {iid!r}"))
                invoke_ids.add(iid)
                retry = item.get("retry")
                if retry is not None and (
                    not isinstance(retry, Mapping)
                    or set(retry) - RETRY_KEYS
                    or not all(type(v) in (int, float) and v >= 0 for v in retry.values())
                ):
                    problems.append((f"{p}.retry", f"retry is {{{', '.join(sorted(RETRY_KEYS))}}} numbers"))
                    retry = None
                d = InvokeDef(iid, item["src"], item.get("input"), path, retry)
                defs.append(d)
                if item.get("onDone") is not None:
                    pending.append((node, d.done_event, f"{p}.onDone", item["onDone"], "on"))
                if item.get("onError") is not None:
                    pending.append((node, d.error_event, f"{p}.onError", item["onError"], "on"))
            node.invoke = tuple(defs)
        if typ == "history" and raw.get("target") is not None:
            pending.append((node, "", f"{where}.target", raw["target"], "history"))
        return node

    root = build(definition, "", "", None, "")
    if root is None:
        raise DefinitionError(problems)
    if "context" in definition and not isinstance(definition["context"], Mapping):
        problems.append(("context", "context must be an object"))

    def resolve(source: StateNode, target: Any, where: str) -> StateNode | None:
        if not isinstance(target, str) or not target:
            problems.append((where, f"a target is a non-empty string, got {target!r}"))
            return None
        if target.startswith("#"):
            ref = target[1:]
            head, _, rest = ref.partition(".")
            node = by_id.get(head)
            if node is None and head == machine_id:
                node = root
            if node is None:
                problems.append((where, f"unknown target {target!r}: no state has id {head!r}"))
                return None
            parts = rest.split(".") if rest else []
        elif target.startswith("."):
            node, parts = source, target[1:].split(".")
        else:
            if source.parent is None:
                node, parts = source, target.split(".")
            else:
                node, parts = source.parent, target.split(".")
        for part in parts:
            child = node.children.get(part) or node.histories.get(part)
            if child is None:
                problems.append(
                    (where, f"unknown target {target!r}: {node.path or 'the root'} has no child {part!r}")
                )
                return None
            node = child
        return node

    order = [0]
    for node, ev, where, raw_tr, kind in pending:
        if kind == "history":
            ts = raw_tr if isinstance(raw_tr, list) else [raw_tr]
            node.default = tuple(
                r for j, t in enumerate(ts) if (r := resolve(node, t, f"{where}[{j}]")) is not None
            )
            continue
        cands = raw_tr if isinstance(raw_tr, list) else [raw_tr]
        out: list[Transition] = []
        for i, cand in enumerate(cands):
            p = f"{where}[{i}]" if isinstance(raw_tr, list) else where
            if isinstance(cand, str):
                cand = {"target": cand}
            if not isinstance(cand, Mapping):
                problems.append((p, f"a transition is a target string or a dict, got {cand!r}"))
                continue
            unknown = set(cand) - TRANSITION_KEYS
            if unknown:
                problems.append((p, f"unknown key(s) {sorted(unknown)} in transition"))
            raw_targets = cand.get("target")
            targets: list[StateNode] = []
            if raw_targets is not None:
                for j, t in enumerate(raw_targets if isinstance(raw_targets, list) else [raw_targets]):
                    tp = f"{p}.target[{j}]" if isinstance(raw_targets, list) else f"{p}.target"
                    resolved = resolve(node, t, tp)
                    if resolved is not None:
                        targets.append(resolved)
            guard_refs = refs(cand.get("guard"), f"{p}.guard", guards, "guard")
            if len(guard_refs) > 1:
                problems.append((f"{p}.guard", "one guard per transition"))
            reenter = cand.get("reenter", False)
            if not isinstance(reenter, bool):
                problems.append((f"{p}.reenter", "reenter is true or false"))
                reenter = False
            order[0] += 1
            out.append(
                Transition(
                    node,
                    ev if kind == "on" else None,
                    tuple(targets),
                    guard_refs[0] if guard_refs else None,
                    refs(cand.get("actions"), f"{p}.actions", actions, "action"),
                    reenter,
                    order[0],
                )
            )
        if kind == "on":
            node.on.setdefault(ev, []).extend(out)
        else:
            node.always = out

    if problems:
        raise DefinitionError(problems)
    return root
