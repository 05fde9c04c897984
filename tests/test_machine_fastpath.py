"""The send fast paths record exactly what the general path records, byte for byte.

The interpreter's fast path (``Statechart._fast_plan``: one unguarded transition that keeps the
configuration, only its actions run) and the runtime's encoding shortcuts (extras computed once,
a per-thread msgpack packer) must not change an entry: here the same events are sent with the
fast path disabled and enabled, and the logs compared block by block; and every entry is checked
against the plain ``msgpack.packb`` of the entry dict.
"""

from __future__ import annotations

import msgpack
import pytest

from corelog.machine import Event, Machine, Statechart
from corelog.machine import _interpreter as interp
from corelog.machine.errors import EventNotAccepted, MachineError
from tests.test_runtime import clock_from

CHART = {
    "id": "fp",
    "initial": "idle",
    "context": {"n": 0, "tags": [], "meta": {"k": 1}},
    "states": {
        "idle": {"on": {"GO": {"target": "run", "actions": "start"}}},
        "run": {
            "on": {
                "INC": {"actions": "inc"},  # fast: actions only
                "NOP": {},  # fast: targetless, no action (the context is not even copied)
                "SELF": {"target": "run"},  # fast: a self-transition that does not re-enter
                "TAG": {"actions": "tag"},  # fast: mutates a nested list
                "MAYBE": [{"guard": "even", "actions": "inc"}, {"actions": "dec"}],  # guarded: general
                "RE": {"target": "run", "reenter": True, "actions": "inc"},  # re-enters: general
                "STOP": {"target": "idle"},
            },
            "entry": "entered",
        },
    },
}


def start(ctx, ev):
    ctx["n"] = ev.data


def inc(ctx, ev):
    ctx["n"] += 1


def dec(ctx, ev):
    return {"n": ctx["n"] - 1}


def tag(ctx, ev):
    ctx["tags"].append(ev.data)
    ctx["meta"]["k"] += 1


def entered(ctx, ev):
    ctx["meta"]["entered"] = ctx["meta"].get("entered", 0) + 1


IMPL = {
    "actions": {"start": start, "inc": inc, "dec": dec, "tag": tag, "entered": entered},
    "guards": {"even": lambda ctx, ev: ctx["n"] % 2 == 0},
}
EVENTS = [
    ("GO", 5),
    ("INC", None),
    ("NOP", None),
    ("SELF", None),
    ("TAG", "a"),
    ("MAYBE", None),
    ("MAYBE", None),
    ("RE", None),
    ("TAG", {"x": [1, 2]}),
    ("INC", 7),
    ("STOP", None),
    ("GO", 1),
    ("INC", None),
]


def record(store, name: str) -> list[bytes]:
    m = Machine(store.get(name), Statechart(CHART, **IMPL), clock=clock_from())
    for etype, data in EVENTS:
        m.send(etype, data)
    with pytest.raises(EventNotAccepted):
        m.send("NOPE")
    log = store.get(name)
    return list(log.iter(0, log.length))


def test_fast_and_general_paths_record_the_same_bytes(store, monkeypatch):
    fast = record(store, "fast")
    chart = Statechart(CHART, **IMPL)
    assert chart._fast_plan(chart.transition(chart.initial(0), Event("GO", 1, 1))._config, "INC") is not None

    monkeypatch.setattr(interp.Statechart, "_fast_plan", lambda self, config, etype: None)
    general = record(store, "general")
    assert fast == general
    assert len(fast) == len(EVENTS) + 1


def test_entries_are_the_plain_msgpack_of_the_entry_dict(store):
    for i, raw in enumerate(record(store, "m")):
        e = msgpack.unpackb(raw, raw=False)
        assert msgpack.packb(e, use_bin_type=True) == raw, i
    last = msgpack.unpackb(raw, raw=False)
    assert last["event"] == {"type": "INC"} and last["context"]["n"] == 2


def test_pure_transition_fast_path_matches_general_and_copies(monkeypatch):
    chart = Statechart(CHART, **IMPL)
    s = chart.transition(chart.initial(0), Event("GO", 0, 1))
    fast = []
    for etype, data in EVENTS[1:10]:
        s = chart.transition(s, Event(etype, data, 2))
        fast.append(s)
    # a plain (not frozen) context is copied even when no action runs: the caller's dict is not shared
    nop = chart.transition(fast[-1], Event("NOP", None, 3))
    assert nop.context == fast[-1].context and nop.context is not fast[-1].context
    monkeypatch.setattr(interp.Statechart, "_fast_plan", lambda self, config, etype: None)
    chart2 = Statechart(CHART, **IMPL)
    s = chart2.transition(chart2.initial(0), Event("GO", 0, 1))
    for (etype, data), want in zip(EVENTS[1:10], fast, strict=True):
        s = chart2.transition(s, Event(etype, data, 2))
        assert s == want and s.value == want.value


def test_fast_path_failing_action_records_nothing(store):
    def boom(ctx, ev):
        ctx["n"] = 99
        raise RuntimeError("no")

    impl = {"actions": {**IMPL["actions"], "inc": boom}, "guards": IMPL["guards"]}
    m = Machine(store.get("m"), Statechart(CHART, **impl), clock=clock_from())
    m.send("GO", 1)
    n = m.log.length
    with pytest.raises(RuntimeError):
        m.send("INC")
    assert m.log.length == n and m.context["n"] == 1

    def bad(ctx, ev):
        ctx["n"] = {1, 2}

    impl = {"actions": {**IMPL["actions"], "inc": bad}, "guards": IMPL["guards"]}
    m = Machine(store.get("m2"), Statechart(CHART, **impl), clock=clock_from())
    m.send("GO", 1)
    with pytest.raises(MachineError):
        m.send("INC")
    assert m.log.length == 2 and m.context["n"] == 1


TIMED = {
    "id": "timed",
    "initial": "wait",
    "context": {"n": 0},
    "states": {"wait": {"after": {"1000": "done"}, "entry": "inc"}, "done": {"type": "final"}},
}


@pytest.mark.parametrize("definition", [CHART, TIMED])
def test_header_with_the_definition_spliced_in_is_the_plain_msgpack(definition):
    from corelog.machine._entries import encode_header, packed_definition

    chart = Statechart(definition, **IMPL)
    for snap in (chart.initial(1234), chart.initial_readonly(1234)):
        plain = encode_header(chart.definition, chart.hash, snap, 1234)
        spliced = encode_header(chart.definition, chart.hash, snap, 1234, packed_definition(chart))
        assert spliced == plain
        e = msgpack.unpackb(plain, raw=False)
        assert list(e)[:4] == ["type", "version", "definition", "definition_hash"]
        assert e["definition"] == definition and msgpack.packb(e, use_bin_type=True) == plain


def test_initial_snapshot_shared_only_when_it_cannot_depend_on_time():
    chart = Statechart(CHART, **IMPL)
    a, b = chart.initial_readonly(1), chart.initial_readonly(2)
    assert a is b and a == chart.initial(3)
    with pytest.raises(TypeError):
        a.context["n"] = 1  # type: ignore[index]
    timed = Statechart(TIMED, **IMPL)
    a, b = timed.initial_readonly(1), timed.initial_readonly(2)
    assert a is not b and a.timers != b.timers and a.context == {"n": 1}


def test_fast_constructors_and_copies_equal_the_plain_ones():
    """make_event/make_snapshot (slots set directly) give the same frozen values as the dataclass
    constructors; copy_json's and freeze's flat-dict shortcuts give the same copies as their
    general paths (nested containers still copied, non-JSON still refused)."""
    import dataclasses

    from corelog.machine import FrozenDict, FrozenList, Snapshot, UnserializableContext
    from corelog.machine._frozen import freeze
    from corelog.machine._snapshot import copy_json, make_event, make_snapshot

    e = make_event("GO", {"a": 1}, 5)
    assert e == Event("GO", {"a": 1}, 5) and type(e) is Event and repr(e) == repr(Event("GO", {"a": 1}, 5))
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.type = "X"  # type: ignore[misc]
    cfg = frozenset({1})
    args = ("run", {"n": 1}, True, {"o": 1}, {"h": ["a"]}, {"t": 3}, {"i": {"src": "s"}}, cfg)
    s = make_snapshot(*args)
    assert s == Snapshot(*args) and s._config is cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.context = {}  # type: ignore[misc]

    frozen = freeze({"n": 1, "tags": ["a", {"b": 2}], "meta": {"k": 1.5}, "ok": True, "x": None})
    for value in (frozen, dict(frozen), FrozenDict({"n": 1, "s": "t"})):
        c = copy_json(value)
        assert c == value and type(c) is dict and c is not value
        c["n"] = 2  # the copy is mutable and independent
        assert value["n"] == 1
    c = copy_json(frozen)
    assert type(c["tags"]) is list and type(c["tags"][1]) is dict and type(c["meta"]) is dict
    c["tags"].append(1)
    assert frozen["tags"] == ["a", {"b": 2}]

    flat = {"a": 1, "b": "x", "c": True, "d": None}
    f = freeze(flat)
    assert type(f) is FrozenDict and f == flat and f is not flat
    flat["a"] = 2
    assert f["a"] == 1
    assert type(freeze({"l": [1]})["l"]) is FrozenList
    for bad, where in (
        ({1: 2}, "non-string key"),
        ({"a": float("nan")}, "NaN"),
        ({"a": {1, 2}}, "context.a"),
    ):
        with pytest.raises(UnserializableContext, match=where):
            freeze(bad)
