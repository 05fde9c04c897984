"""Mermaid stateDiagram-v2 in and out: import cases from Mermaid's documentation
(mermaid.js.org/syntax/stateDiagram: composite states, [*] start/end, choice,
fork/join, concurrency with --, notes, `state "description" as id`, direction),
gamgee's ConditionsWorkflow, errors naming the line, and the round trip
from_mermaid(to_mermaid(d)) on generated definitions (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corelog.machine import Event, MermaidError, Statechart, from_mermaid, to_mermaid

CONDITIONS = """---
title: ConditionsWorkflow
---

stateDiagram-v2
    state choice <<choice>>

    direction LR
    [*] --> decide
    decide --> choice
    choice --> left: chooseLeft
    choice --> right: chooseRight
    left --> [*]
    right --> [*]
"""


def test_gamgee_conditions_workflow():
    d = from_mermaid(CONDITIONS)
    assert d == {
        "id": "ConditionsWorkflow",
        "initial": "decide",
        "states": {
            "decide": {
                "always": [
                    {"target": "left", "guard": "chooseLeft"},
                    {"target": "right", "guard": "chooseRight"},
                ]
            },
            "left": {"type": "final"},
            "right": {"type": "final"},
        },
    }
    for left, expected in ((True, "left"), (False, "right")):
        chart = Statechart(d, guards={"chooseLeft": lambda c, e, x=left: x, "chooseRight": lambda c, e: True})
        s = chart.initial()
        assert s.value == expected and s.done


def test_composites_start_and_end_inside_long_names_notes_and_direction():
    text = """stateDiagram-v2
    direction TB
    [*] --> First
    state First {
        [*] --> fir
        fir --> [*]
    }
    First --> Second : NEXT
    state "A long name" as Second
    note right of Second : the second step
    note left of First
        two lines
        of notes
    end note
    Second --> [*] : FINISH [allowed] / close, log
    """
    d = from_mermaid(text)
    assert d["initial"] == "First"
    assert d["states"]["First"]["initial"] == "fir"
    assert d["states"]["First"]["states"]["fir"] == {"type": "final"}
    assert d["states"]["First"]["description"] == "two lines\nof notes"
    assert d["states"]["First"]["on"] == {"NEXT": [{"target": "Second"}]}
    second = d["states"]["Second"]
    assert second["description"] == "A long name\nthe second step"
    assert second["on"] == {"FINISH": [{"target": "end", "guard": "allowed", "actions": ["close", "log"]}]}
    assert d["states"]["end"] == {"type": "final"}
    c = Statechart(
        d, actions={"close": lambda c, e: None, "log": lambda c, e: None}, guards={"allowed": lambda c, e: 1}
    )
    s = c.initial()
    assert s.value == {"First": "fir"}
    s = c.transition(c.transition(s, Event("NEXT")), Event("FINISH"))
    assert s.value == "end" and s.done


def test_choice_with_else_and_an_event_into_it():
    text = """stateDiagram-v2
    [*] --> idle
    state check <<choice>>
    idle --> check : SUBMIT / record
    check --> big : else
    check --> small : [isSmall]
    """
    d = from_mermaid(text)
    assert d["states"]["idle"]["on"]["SUBMIT"] == [
        {"target": "small", "guard": "isSmall", "actions": ["record"]},
        {"target": "big", "actions": ["record"]},
    ]


def test_fork_and_join_become_a_parallel_state_with_on_done():
    text = """stateDiagram-v2
    state fork_state <<fork>>
      [*] --> fork_state
      fork_state --> State2
      fork_state --> State3

      state join_state <<join>>
      State2 --> join_state : A_DONE
      State3 --> join_state : B_DONE
      join_state --> State4
      State4 --> [*]
    """
    d = from_mermaid(text)
    fork = d["states"]["fork_state"]
    assert fork["type"] == "parallel" and fork["onDone"] == [{"target": "State4"}]
    assert fork["states"]["region1"]["initial"] == "State2"
    assert fork["states"]["region1"]["states"]["State2"]["on"] == {"A_DONE": [{"target": "end"}]}
    c = Statechart(d)
    s = c.initial()
    assert s.value == {"fork_state": {"region1": "State2", "region2": "State3"}}
    s = c.transition(s, Event("B_DONE"))
    assert s.value == {"fork_state": {"region1": "State2", "region2": "end"}}
    s = c.transition(s, Event("A_DONE"))
    assert s.value == "State4" and s.done  # joined: the parallel state's onDone, then the end


def test_concurrency_separator_makes_regions():
    text = """stateDiagram-v2
    [*] --> Active
    state Active {
        [*] --> NumLockOff
        NumLockOff --> NumLockOn : EvNumLockPressed
        NumLockOn --> NumLockOff : EvNumLockPressed
        --
        [*] --> CapsLockOff
        CapsLockOff --> CapsLockOn : EvCapsLockPressed
        CapsLockOn --> CapsLockOff : EvCapsLockPressed
    }
    """
    d = from_mermaid(text)
    c = Statechart(d)
    s = c.transition(c.initial(), Event("EvCapsLockPressed"))
    assert s.value == {"Active": {"region1": "NumLockOff", "region2": "CapsLockOn"}}


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("stateDiagram-v2\n  a --> b\n  this is not mermaid\n", 3, "cannot read"),
        ("stateDiagram-v2\n  state a {\n    [*] --> b\n", 2, "not closed"),
        ("stateDiagram-v2\n  [*] --> a\n  --\n", 3, "inside a composite"),
        ("stateDiagram-v2\n  state x <<weird>>\n", 2, "unsupported stereotype"),
        ("flowchart LR\n", 1, "expected 'stateDiagram-v2'"),
        ("stateDiagram-v2\n  state f <<fork>>\n  [*] --> f\n  f --> a : GO\n  f --> b\n", 2, "two or more"),
        ("stateDiagram-v2\n  state c <<choice>>\n  a --> c : X [g]\n  c --> b\n", 3, "takes no guard"),
        ("stateDiagram-v2\n  [*] --> a\n  a --> b : two words here\n", 3, "not an event name"),
        ("stateDiagram-v2\n  }\n", 2, "closes no composite"),
    ],
)
def test_errors_name_the_line(text, line, message):
    with pytest.raises(MermaidError, match=message) as info:
        from_mermaid(text)
    assert info.value.line == line and f"line {line}" in str(info.value)


# --- round trip ---------------------------------------------------------------------------------


def targets(t) -> list[str]:
    """Target paths; a self-target on an atomic state without reenter is the same as none."""
    if not t.reenter and not t.source.children and list(t.targets) == [t.source]:
        return []
    return [x.path for x in t.targets]


def canon(definition) -> dict:
    """What a definition means, by state path (ids, target spellings and region names aside)."""
    chart = Statechart(definition, implementations=False)
    out = {}
    nodes = [n for n in chart._nodes] + list(chart._histories.values())
    for n in nodes:
        kinds = {a.event: f"after {a.delay}" for a in n.after}
        for d in n.invoke:
            kinds[d.done_event], kinds[d.error_event] = "invoke.done", "invoke.error"
        kinds[f"xstate.done.state.{n.id}"] = "done"
        trs = {}
        for ev, ts in list(n.on.items()) + [(None, n.always)]:
            if ts:
                trs[kinds.get(ev, ev) if ev else "always"] = [
                    (
                        t.guard.name if t.guard else None,
                        [a.name for a in t.actions],
                        targets(t),
                    )
                    for t in ts
                ]
        out[n.path] = (
            n.type,
            n.initial.key if n.initial else None,
            n.history,
            [x.path for x in n.default],
            [a.name for a in n.entry],
            [a.name for a in n.exit],
            [d.src for d in n.invoke],
            trs,
        )
    return out


@st.composite
def definitions(draw):
    names = iter(f"s{i}" for i in range(1000))
    paths: list[str] = []
    specs: list[tuple[dict, str, str]] = []  # (raw, path, type)

    def state(depth: int, path_prefix: str, in_compound: bool) -> tuple[str, dict]:
        key = next(names)
        path = f"{path_prefix}.{key}" if path_prefix else key
        kind = draw(st.sampled_from(["atomic"] * 3 + (["compound", "parallel"] if depth < 2 else [])))
        if kind == "atomic" and in_compound and draw(st.integers(0, 4)) == 0:
            kind = "final"
        raw: dict = {}
        if kind in ("compound", "parallel"):
            raw["type"] = kind
            kids = dict(state(depth + 1, path, kind == "compound") for _ in range(draw(st.integers(2, 3))))
            if kind == "parallel":
                kids = {k: v if v.get("type") != "final" else {} for k, v in kids.items()}
            raw["states"] = kids
            if kind == "compound":
                raw["initial"] = next(k for k, v in kids.items())
                if draw(st.booleans()):
                    raw["states"][f"h{key}"] = {
                        "type": "history",
                        "history": draw(st.sampled_from(["shallow", "deep"])),
                    }
        elif kind == "final":
            raw["type"] = "final"
        if draw(st.integers(0, 3)) == 0 and kind != "final":
            raw["entry"] = ["a1"]
        paths.append(path)
        specs.append((raw, path, kind))
        return key, raw

    root_states = dict(state(0, "", True) for _ in range(draw(st.integers(2, 4))))
    root = {"id": "m", "initial": next(iter(root_states)), "states": root_states}
    root["states"] = {
        k: v if v.get("type") != "final" or k != root["initial"] else {} for k, v in root_states.items()
    }
    for raw, _path, kind in specs:
        if kind == "final":
            continue

        def target():
            return "#m." + draw(st.sampled_from(paths))

        def cands():
            out = []
            for _ in range(draw(st.integers(1, 2))):
                c = {"target": target()}
                if draw(st.booleans()):
                    c["guard"] = draw(st.sampled_from(["g1", "g2"]))
                if draw(st.integers(0, 3)) == 0:
                    c["actions"] = ["a2"]
                out.append(c)
            return out

        for ev in draw(st.lists(st.sampled_from(["GO", "STOP", "x.y"]), max_size=2, unique=True)):
            raw.setdefault("on", {})[ev] = cands()
        if draw(st.integers(0, 4)) == 0:
            raw["after"] = {"100": cands()}
        if draw(st.integers(0, 5)) == 0:
            raw["always"] = [{"target": target(), "guard": "g1"}]
        if kind in ("compound", "parallel") and draw(st.booleans()):
            raw["onDone"] = cands()
        if kind == "atomic" and draw(st.integers(0, 4)) == 0:
            raw["invoke"] = {"src": "svc", "onDone": cands(), "onError": cands()}
    # the root's initial state must not be final, nor a region's child be final in a parallel
    Statechart(root, implementations=False)  # the strategy only yields valid definitions
    return root


@settings(max_examples=150, deadline=None)
@given(definitions())
def test_round_trip_of_generated_definitions(d):
    text = to_mermaid(d)
    back = from_mermaid(text)
    assert canon(back) == canon(d), text


@pytest.mark.parametrize("name", ["COUNTER", "DOOR", "CHART"])
def test_export_of_the_cli_definitions_round_trips(name):
    import tests.test_cli as cli_tests

    d = getattr(cli_tests, name)
    assert canon(from_mermaid(to_mermaid(d))) == canon(d)


def test_export_marks_current_states_and_imports_ignore_classes():
    d = from_mermaid(CONDITIONS)
    text = to_mermaid(d, "left")
    assert "class left current" in text
    assert canon(from_mermaid(text)) == canon(d)


@pytest.mark.parametrize("name", ["SHALLOW", "DEEP", "PARALLEL", "TIMED", "INVOKING"])
def test_export_of_history_timer_and_invoke_charts_round_trips(name):
    import tests.test_statecharts as charts

    d = getattr(charts, name)
    assert canon(from_mermaid(to_mermaid(d))) == canon(d), to_mermaid(d)
