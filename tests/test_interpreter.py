"""The pure interpreter: XState v5 semantics scenarios, validation, and properties.

Expected values follow XState v5's documentation (stately.ai/docs): transitions
(`/docs/transitions`: exit actions, then transition actions, then entry actions;
re-entry only with `reenter: true`), parent/child states (`/docs/parent-states`),
parallel states (`/docs/parallel-states`: the value has every region), eventless
transitions (`/docs/eventless-transitions`), final states (`/docs/final-states`).
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corelog.machine import Event, Statechart, definition_hash, transition
from corelog.machine.errors import DefinitionError, EndlessLoop, EventNotAccepted

COUNTER = {
    "id": "counter",
    "initial": "idle",
    "context": {"running": False, "counter": 0},
    "states": {
        "idle": {"on": {"START": {"target": "running", "actions": "start"}}},
        "running": {
            "on": {
                "INCREMENT": {"target": "running", "actions": "increment"},
                "STOP": {"target": "idle", "actions": "stop"},
            }
        },
    },
}


def start(ctx, ev):
    ctx["running"] = True
    ctx["counter"] = ev.data


def increment(ctx, ev):
    ctx["counter"] += 1


def stop(ctx, ev):
    ctx["running"] = False
    if ev.data is not None:
        ctx["counter"] = ev.data


COUNTER_IMPL = {"actions": {"start": start, "increment": increment, "stop": stop}}


def test_coremachine_readme_scenario():
    c = Statechart(COUNTER, **COUNTER_IMPL)
    s = c.initial()
    assert (s.value, dict(s.context)) == ("idle", {"running": False, "counter": 0})
    s = c.transition(s, Event("START", 10))
    s = c.transition(s, Event("INCREMENT"))
    s = c.transition(s, Event("INCREMENT"))
    assert (s.value, dict(s.context)) == ("running", {"running": True, "counter": 12})
    s = c.transition(s, Event("STOP", 100))
    assert (s.value, dict(s.context)) == ("idle", {"running": False, "counter": 100})
    with pytest.raises(EventNotAccepted):
        c.transition(s, Event("INCREMENT"))
    assert c.available_events(s) == ["START"] and c.can(s, "START") and not c.can(s, "STOP")


def recorder(names):
    return {n: (lambda name: lambda ctx, ev: ctx["log"].append(name))(n) for n in names}


ORDER = {
    "id": "m",
    "initial": "a",
    "context": {"log": []},
    "states": {
        "a": {
            "initial": "a1",
            "entry": "enter a",
            "exit": "exit a",
            "states": {
                "a1": {
                    "entry": "enter a1",
                    "exit": "exit a1",
                    "on": {"TO_B2": {"target": "#m.b.b2", "actions": "t"}},
                },
                "a2": {"entry": "enter a2", "exit": "exit a2"},
            },
            "on": {"TO_A2": {"target": ".a2", "actions": "t"}, "NOTE": {"actions": "t"}},
        },
        "b": {
            "id": "bee",
            "initial": "b1",
            "entry": "enter b",
            "exit": "exit b",
            "states": {
                "b1": {"entry": "enter b1", "exit": "exit b1"},
                "b2": {"entry": "enter b2", "exit": "exit b2"},
            },
            "on": {
                "SELF": {"target": "b", "actions": "t"},
                "REENTER": {"target": "b", "reenter": True, "actions": "t"},
            },
        },
    },
}
ORDER_IMPL = recorder(
    [
        "enter a",
        "exit a",
        "enter a1",
        "exit a1",
        "enter a2",
        "exit a2",
        "enter b",
        "exit b",
        "enter b1",
        "exit b1",
        "enter b2",
        "exit b2",
        "t",
    ]
)


def _log_after(chart, s, ev):
    before = len(s.context["log"])
    s2 = chart.transition(s, Event(ev))
    return s2, s2.context["log"][before:]


def test_entry_exit_transition_order():
    c = Statechart(ORDER, actions=ORDER_IMPL)
    s = c.initial()
    assert s.value == {"a": "a1"} and s.context["log"] == ["enter a", "enter a1"]
    # child to child inside a: a is neither exited nor re-entered
    s2, log = _log_after(c, s, "TO_A2")
    assert s2.value == {"a": "a2"} and log == ["exit a1", "t", "enter a2"]
    # across parents via #id: innermost exits first, then the action, then outermost entries
    s3, log = _log_after(c, s, "TO_B2")
    assert s3.value == {"b": "b2"} and log == ["exit a1", "exit a", "t", "enter b", "enter b2"]
    assert s3.matches("b.b2") and s3.matches("b") and not s3.matches("a")
    # targetless: only the action
    s4, log = _log_after(c, s, "NOTE")
    assert s4.value == s.value and log == ["t"]
    # self-transition without reenter: b is not exited; its child is reset to the initial state
    s5, log = _log_after(c, s3, "SELF")
    assert s5.value == {"b": "b1"} and log == ["exit b2", "t", "enter b1"]
    # with reenter: true, b is exited and entered again
    s6, log = _log_after(c, s3, "REENTER")
    assert s6.value == {"b": "b1"} and log == ["exit b2", "exit b", "t", "enter b", "enter b1"]


PARALLEL = {
    "id": "editor",
    "type": "parallel",
    "context": {},
    "states": {
        "bold": {
            "initial": "off",
            "states": {
                "off": {"on": {"TOGGLE_BOLD": "on", "RESET": "off"}},
                "on": {"on": {"TOGGLE_BOLD": "off", "RESET": "off"}},
            },
        },
        "italic": {
            "initial": "off",
            "states": {
                "off": {"on": {"TOGGLE_ITALIC": "on"}},
                "on": {"on": {"TOGGLE_ITALIC": "off", "RESET": "off"}},
            },
        },
    },
}


def test_parallel_regions():
    c = Statechart(PARALLEL)
    s = c.initial()
    assert s.value == {"bold": "off", "italic": "off"}
    s = c.transition(s, Event("TOGGLE_BOLD"))
    s = c.transition(s, Event("TOGGLE_ITALIC"))
    assert s.value == {"bold": "on", "italic": "on"}
    assert s.matches({"bold": "on"}) and s.matches("italic.on")
    s = c.transition(s, Event("RESET"))  # handled by both regions in one step
    assert s.value == {"bold": "off", "italic": "off"}


GUARDED = {
    "initial": "idle",
    "context": {"attempts": 0},
    "states": {
        "idle": {
            "on": {
                "TRY": [
                    {"target": "big", "guard": "isBig", "actions": "count"},
                    {"target": "small", "guard": {"type": "atLeast", "params": {"n": 0}}, "actions": "count"},
                ]
            }
        },
        "big": {"type": "final"},
        "small": {"always": [{"target": "idle", "guard": "retry"}]},
    },
}
GUARDED_IMPL = {
    "actions": {"count": lambda ctx, ev: {"attempts": ctx["attempts"] + 1}},
    "guards": {
        "isBig": lambda ctx, ev: (ev.data or 0) > 10,
        "atLeast": lambda ctx, ev, n: (ev.data or 0) >= n,
        "retry": lambda ctx, ev: ctx["attempts"] < 3,
    },
}


def test_guards_first_enabled_wins_always_and_final():
    c = Statechart(GUARDED, **GUARDED_IMPL)
    s = c.initial()
    s = c.transition(s, Event("TRY", 1))  # small, then `always` straight back to idle
    assert s.value == "idle" and s.context["attempts"] == 1
    s = c.transition(s, Event("TRY", 1))
    s = c.transition(s, Event("TRY", 1))  # third attempt: the always guard is false now
    assert s.value == "small" and s.context["attempts"] == 3
    with pytest.raises(EventNotAccepted):
        c.transition(s, Event("TRY", -1))  # no handler in `small`
    s = c.transition(c.initial(), Event("TRY", 50))
    assert s.value == "big" and s.done
    with pytest.raises(EventNotAccepted, match="done"):
        c.transition(s, Event("TRY", 1))


def test_endless_always_loop_is_an_error():
    d = {"initial": "a", "states": {"a": {"always": "b"}, "b": {"always": "a"}}}
    with pytest.raises(EndlessLoop, match="eventless"):
        Statechart(d, max_microsteps=50).initial()


def test_done_state_event_of_a_compound():
    d = {
        "initial": "job",
        "states": {
            "job": {
                "id": "job",
                "initial": "working",
                "states": {"working": {"on": {"FINISH": "finished"}}, "finished": {"type": "final"}},
                "on": {"xstate.done.state.job": "report"},
            },
            "report": {},
        },
    }
    c = Statechart(d)
    s = c.transition(c.initial(), Event("FINISH"))
    assert s.value == "report" and not s.done


def test_raising_action_or_guard_changes_nothing():
    boom = {
        "actions": {"start": lambda c, e: (c.update(counter=99), 1 / 0), "increment": increment, "stop": stop}
    }
    c = Statechart(COUNTER, **boom)
    s = c.initial()
    frozen = copy.deepcopy(dict(s.context))
    with pytest.raises(ZeroDivisionError):
        c.transition(s, Event("START", 1))
    assert dict(s.context) == frozen
    g = Statechart(
        GUARDED,
        actions=GUARDED_IMPL["actions"],
        guards={**GUARDED_IMPL["guards"], "isBig": lambda c, e: [][0]},
    )
    with pytest.raises(IndexError):
        g.transition(g.initial(), Event("TRY", 5))


def test_validation_lists_every_problem():
    bad = {
        "initial": "nowhere",
        "context": {"s": {1, 2}},
        "states": {
            "a": {
                "on": {"GO": {"target": "missing", "actions": "unknownAction", "guard": "unknownGuard"}},
                "colour": 1,
            },
            "b": {"type": "compound", "states": {"x": {}}},
            "c": {"type": "final", "on": {"X": "a"}},
            "d": {"initial": "x"},
        },
    }
    with pytest.raises(DefinitionError) as info:
        Statechart(bad)
    paths = {p for p, _ in info.value.problems}
    assert {
        "initial",
        "context.s",
        "states.a.on.GO.target",
        "states.a.on.GO.actions",
        "states.a.on.GO.guard",
        "states.a",
        "states.b.initial",
        "states.c",
        "states.d.initial",
    } <= paths, info.value.problems
    assert "unknownAction" in str(info.value) and "missing" in str(info.value)
    with pytest.raises(DefinitionError, match="NaN"):
        Statechart({"initial": "a", "context": {"x": float("nan")}, "states": {"a": {}}})


def test_definition_hash_is_canonical():
    a = {"initial": "x", "states": {"x": {}}, "id": "m"}
    b = {"id": "m", "states": {"x": {}}, "initial": "x"}
    assert definition_hash(a) == definition_hash(b) and len(definition_hash(a)) == 64
    assert definition_hash(a) != definition_hash({**a, "id": "n"})


def test_snapshot_from_restores_configuration():
    c = Statechart(ORDER, actions=ORDER_IMPL)
    s = c.transition(c.initial(), Event("TO_B2"))
    r = c.snapshot_from(s.value, s.context)
    assert r == s and r.matches("b.b2")
    assert c.transition(r, Event("SELF")).value == {"b": "b1"}


CHARTS = [
    (COUNTER, COUNTER_IMPL, ["START", "INCREMENT", "STOP", "NOPE"]),
    (ORDER, {"actions": ORDER_IMPL}, ["TO_A2", "TO_B2", "NOTE", "SELF", "REENTER"]),
    (PARALLEL, {}, ["TOGGLE_BOLD", "TOGGLE_ITALIC", "RESET"]),
    (GUARDED, GUARDED_IMPL, ["TRY"]),
]


@settings(max_examples=80, deadline=None)
@given(which=st.integers(0, len(CHARTS) - 1), data=st.data())
def test_transition_is_pure_and_deterministic(which, data):
    definition, impl, events = CHARTS[which]
    chart = Statechart(definition, **impl)
    s = chart.initial(time=0)
    for _ in range(data.draw(st.integers(1, 25))):
        ev = Event(
            data.draw(st.sampled_from(events)), data.draw(st.integers(-5, 20)), data.draw(st.integers(0, 10))
        )
        before = copy.deepcopy((s.value, dict(s.context), s.done))
        try:
            s2 = transition(chart, s, ev)
        except EventNotAccepted:
            assert (s.value, dict(s.context), s.done) == before
            continue
        assert (s.value, dict(s.context), s.done) == before  # the input snapshot is untouched
        assert transition(chart, s, ev) == s2  # same inputs, same output
        assert chart.snapshot_from(s2.value, s2.context) == s2  # the value names a real configuration
        s = s2


# --- generated charts ----------------------------------------------------------------------------

EVENTS = ["A", "B", "C"]


@st.composite
def charts(draw):
    """Random nested/parallel charts; every node has an id so transitions can target any node."""
    counter = iter(range(1000))
    nodes: list[str] = []

    def node(depth: int) -> dict:
        nid = f"s{next(counter)}"
        nodes.append(nid)
        out: dict = {"id": nid, "entry": "enter", "exit": "exit"}
        kind = draw(
            st.sampled_from(["atomic", "compound", "parallel", "final"] if depth < 2 else ["atomic", "final"])
        )
        if kind == "final":
            out["type"] = "final"
        elif kind != "atomic":
            keys = [f"k{i}" for i in range(draw(st.integers(2, 3)))]
            out["states"] = {k: node(depth + 1) for k in keys}
            if kind == "parallel":
                out["type"] = "parallel"
            else:
                out["initial"] = keys[0]
        return out

    root = {
        "id": "root",
        "initial": "a",
        "context": {"log": [], "budget": 3},
        "states": {"a": node(0), "b": node(0)},
    }

    def add_transitions(n: dict) -> None:
        if n.get("type") == "final":
            return
        if draw(st.integers(0, 4)) == 0:  # a guarded eventless transition (bounded by its guard)
            n["always"] = [
                {"target": f"#{draw(st.sampled_from(nodes))}", "guard": "budget", "actions": "spend"}
            ]
        if draw(st.booleans()):
            n["on"] = {
                ev: {
                    "target": f"#{draw(st.sampled_from(nodes))}",
                    "actions": "t",
                    "reenter": draw(st.booleans()),
                }
                for ev in draw(st.lists(st.sampled_from(EVENTS), max_size=2, unique=True))
            }
        for child in n.get("states", {}).values():
            add_transitions(child)

    for child in root["states"].values():
        add_transitions(child)
    return root


def _ordered(chart, segment):
    """Within one microstep's log: every exit, then transition actions, then every entry."""
    phases = {"exit": 0, "t": 1, "enter": 2}
    seen = [phases[name.split(":")[0]] for name in segment]
    return seen == sorted(seen)


@settings(max_examples=300, deadline=None)
@given(definition=charts(), events=st.lists(st.sampled_from(EVENTS), max_size=8))
def test_generated_charts_keep_their_invariants(definition, events):
    def logger(name):
        return lambda ctx, ev: ctx["log"].append(name)

    def spend(ctx, ev):
        ctx["budget"] -= 1
        ctx["log"].append("t")

    chart = Statechart(
        definition,
        actions={"enter": logger("enter"), "exit": logger("exit"), "t": logger("t"), "spend": spend},
        guards={"budget": lambda ctx, ev: ctx["budget"] > 0},
    )
    s = chart.initial()
    for name in events:
        if s.done:
            with pytest.raises(EventNotAccepted):
                chart.transition(s, Event(name))
            break
        before = copy.deepcopy((s.value, dict(s.context)))
        try:
            s2 = chart.transition(s, Event(name))
        except EventNotAccepted:
            assert (s.value, dict(s.context)) == before
            continue
        assert (s.value, dict(s.context)) == before
        assert chart.transition(s, Event(name)) == s2
        rebuilt = chart.snapshot_from(s2.value, s2.context)  # a consistent configuration:
        assert rebuilt == s2 and rebuilt._config == s2._config  # one child per compound, all regions
        # with always, one macrostep holds several microsteps; reaching the top-level final state
        # runs every active state's exit actions afterwards (XState v5)
        if not any(n.always for n in chart._nodes) and not s2.done:
            assert _ordered(chart, s2.context["log"][len(s.context["log"]) :])
        assert s2.done == chart._in_final(s2._config, chart.root)
        assert s2.done >= any(n.type == "final" and n.parent is chart.root for n in s2._config)
        s = s2
