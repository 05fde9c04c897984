"""History, delayed transitions, onDone/output, invocations and XState v5 details (pure interpreter).

Expected values follow XState v5's documented semantics (stately.ai/docs):
history states (`/docs/history-states`: shallow remembers the direct child,
deep the atomic descendants, the default `target` when nothing is remembered),
delayed transitions (`/docs/delayed-transitions`: `xstate.after.<delay>.<id>`,
started on entry, cancelled on exit), final states and `onDone`
(`/docs/final-states`: `xstate.done.state.<id>`, `output`), invoked actors
(`/docs/invoke`: `xstate.done.actor.<id>` / `xstate.error.actor.<id>`, default
id `<index>.<stateId>`, stopped on exit) and eventless transitions
(`/docs/eventless-transitions`). The history machines are those of XState's own
history tests (packages/core/test/history.test.ts).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corelog.machine import Event, Statechart
from corelog.machine.errors import DefinitionError, EventNotAccepted

SHALLOW = {
    "id": "history",
    "initial": "off",
    "states": {
        "off": {"on": {"POWER": "on.hist", "H_POWER": "on.H"}},
        "on": {
            "initial": "first",
            "states": {
                "first": {"on": {"SWITCH": "second"}},
                "second": {"on": {"SWITCH": "third"}},
                "third": {},
                "hist": {"type": "history", "history": "shallow"},
                "H": {"type": "history", "history": "deep"},
            },
            "on": {"POWER": "off", "H_POWER": "off"},
        },
    },
}


def run(chart: Statechart, *events, time: int = 0):
    s = chart.initial(time)
    for e in events:
        s = chart.transition(s, e if isinstance(e, Event) else Event(e, None, time))
    return s


def test_shallow_history_goes_to_the_most_recent_child_or_the_initial():
    c = Statechart(SHALLOW)
    assert run(c, "POWER").value == {"on": "first"}  # nothing remembered: the parent's initial
    s = run(c, "POWER", "SWITCH", "POWER", "POWER")
    assert s.value == {"on": "second"}
    assert s.history == {"history.on.hist": ["on.second"], "history.on.H": ["on.second"]}
    assert run(c, "POWER", "SWITCH", "SWITCH", "POWER", "H_POWER").value == {"on": "third"}


DEEP = {
    "initial": "off",
    "states": {
        "off": {"on": {"POWER": "on.history", "DEEP_POWER": "on.deepHistory"}},
        "on": {
            "initial": "A",
            "states": {
                "A": {"on": {"INNER": "B"}},
                "B": {
                    "initial": "P",
                    "states": {"P": {"on": {"INNER": "Q"}}, "Q": {"on": {"INNER": "R"}}, "R": {}},
                },
                "history": {"type": "history"},
                "deepHistory": {"type": "history", "history": "deep"},
            },
            "on": {"POWER": "off"},
        },
    },
}


def test_deep_history_restores_atomic_descendants_shallow_only_the_child():
    c = Statechart(DEEP)
    base = ["POWER", "INNER", "INNER", "POWER"]  # on.A -> on.B.P -> on.B.Q -> off
    assert run(c, *base, "DEEP_POWER").value == {"on": {"B": "Q"}}
    assert run(c, *base, "POWER").value == {"on": {"B": "P"}}  # shallow: B, then B's initial
    s = run(c, *base)
    assert s.history == {"machine.on.history": ["on.B"], "machine.on.deepHistory": ["on.B.Q"]}


def test_history_default_target():
    d = {
        "initial": "a",
        "states": {
            "a": {"on": {"GO": "b.h"}},
            "b": {
                "initial": "one",
                "states": {"one": {}, "two": {}, "h": {"type": "history", "target": "two"}},
                "on": {"BACK": "a"},
            },
        },
    }
    c = Statechart(d)
    assert run(c, "GO").value == {"b": "two"}  # default target, not the initial state


PARALLEL = {
    "initial": "off",
    "states": {
        "off": {"on": {"SWITCH": "on", "DEEP": "on.deepHistory", "SHALLOW": "on.shallowHistory"}},
        "on": {
            "type": "parallel",
            "states": {
                "A": {
                    "initial": "B",
                    "states": {
                        "B": {"on": {"INNER_A": "C"}},
                        "C": {"initial": "D", "states": {"D": {"on": {"INNER_A": "E"}}, "E": {}}},
                        "hist": {"type": "history"},
                    },
                },
                "K": {
                    "initial": "L",
                    "states": {
                        "L": {"on": {"INNER_K": "M"}},
                        "M": {"initial": "N", "states": {"N": {"on": {"INNER_K": "O"}}, "O": {}}},
                        "hist": {"type": "history"},
                    },
                },
                "shallowHistory": {"type": "history", "history": "shallow"},
                "deepHistory": {"type": "history", "history": "deep"},
            },
            "on": {"SWITCH": "off", "REGION_HIST": "#machine.on.A.hist"},
        },
    },
}


def test_history_in_parallel_states():
    c = Statechart(PARALLEL)
    seq = ["SWITCH", "INNER_A", "INNER_K", "INNER_K", "SWITCH"]  # A: C.D, K: M.O, then off
    assert run(c, *seq, "DEEP").value == {"on": {"A": {"C": "D"}, "K": {"M": "O"}}}
    assert run(c, *seq, "SHALLOW").value == {"on": {"A": "B", "K": "L"}}  # regions re-enter initials
    assert run(c, "SWITCH").value == {"on": {"A": "B", "K": "L"}}
    # a region's own history: A's shallow history inside the parallel state
    s = run(c, "SWITCH", "INNER_A", "REGION_HIST")
    assert s.value == {"on": {"A": {"C": "D"}, "K": "L"}}


def test_history_validation():
    bad = {
        "initial": "a",
        "states": {
            "a": {"type": "history", "history": "sideways", "on": {"X": "a"}},
            "b": {"history": "deep"},
        },
    }
    with pytest.raises(DefinitionError) as info:
        Statechart(bad)
    text = str(info.value)
    assert "sideways" in text or "'shallow' or 'deep'" in text
    assert "history states only" in text and "history/target/id" in text


# --- onDone, output, done events ----------------------------------------------------------


def test_done_events_carry_full_ids_and_output():
    seen = []
    d = {
        "id": "m",
        "initial": "job",
        "output": {"result": "all done"},
        "states": {
            "job": {
                "initial": "step",
                "states": {
                    "step": {"on": {"FINISH": "finished"}},
                    "finished": {"type": "final", "output": {"code": 7}},
                },
                "onDone": {"target": "report", "actions": "note"},
            },
            "report": {"on": {"CLOSE": "closed"}},
            "closed": {"type": "final"},
        },
    }
    c = Statechart(d, actions={"note": lambda ctx, ev: seen.append((ev.type, ev.data))})
    s = run(c, "FINISH")
    assert s.value == "report" and not s.done and s.output is None
    assert seen == [("xstate.done.state.m.job", {"code": 7})]
    s = c.transition(s, Event("CLOSE"))
    assert s.done and s.output == {"result": "all done"}


def test_parallel_on_done_and_parallel_root_done():
    d = {
        "id": "p",
        "initial": "work",
        "states": {
            "work": {
                "type": "parallel",
                "states": {
                    "upload": {
                        "initial": "busy",
                        "states": {"busy": {"on": {"UP": "ok"}}, "ok": {"type": "final"}},
                    },
                    "scan": {
                        "initial": "busy",
                        "states": {"busy": {"on": {"SCAN": "ok"}}, "ok": {"type": "final"}},
                    },
                },
                "onDone": "complete",
            },
            "complete": {},
        },
    }
    c = Statechart(d)
    s = run(c, "UP")
    assert s.value == {"work": {"upload": "ok", "scan": "busy"}}
    assert run(c, "UP", "SCAN").value == "complete"
    root = {"type": "parallel", "states": d["states"]["work"]["states"], "output": 1}
    c2 = Statechart(root)
    s = run(c2, "SCAN")
    assert not s.done
    s = c2.transition(s, Event("UP"))
    assert s.done and s.output == 1  # a parallel root is done when every region is final
    assert c2.snapshot_from(s.value, s.context).done


def test_top_level_final_runs_every_exit_action():
    log: list[str] = []

    def rec(name):
        return lambda ctx, ev: log.append(name)

    names = ["root", "a", "a1", "end"]
    d = {
        "initial": "a",
        "entry": "in_root",
        "exit": "out_root",
        "states": {
            "a": {
                "initial": "a1",
                "exit": "out_a",
                "states": {"a1": {"exit": "out_a1", "on": {"END": "#machine.end"}}},
            },
            "end": {"type": "final", "entry": "in_end", "exit": "out_end"},
        },
    }
    actions = {f"{p}_{n}": rec(f"{p} {n}") for n in names for p in ("in", "out")}
    c = Statechart(d, actions=actions)
    s = run(c, "END")
    assert s.done
    assert log == ["in root", "out a1", "out a", "in end", "out end", "out root"]


def test_on_done_on_an_atomic_state_is_rejected():
    with pytest.raises(DefinitionError, match="never fires"):
        Statechart({"initial": "a", "states": {"a": {"onDone": "a"}}})


# --- always ------------------------------------------------------------------------------


def test_always_guard_receives_the_triggering_event():
    seen = []

    def fast(ctx, ev):
        seen.append(ev.type)
        return ev.data == "fast"

    d = {
        "initial": "a",
        "states": {
            "a": {"on": {"GO": "b"}},
            "b": {"always": [{"target": "c", "guard": "fast"}]},
            "c": {},
        },
    }
    c = Statechart(d, guards={"fast": fast})
    assert c.transition(c.initial(), Event("GO", "fast")).value == "c"
    assert c.transition(c.initial(), Event("GO", "slow")).value == "b"
    assert seen[0] == "GO"


def test_always_is_evaluated_after_unhandled_events():
    d = {
        "initial": "idle",
        "context": {"n": 0},
        "states": {
            "idle": {"always": {"target": "busy", "guard": "ping", "actions": "count"}},
            "busy": {},
        },
    }
    c = Statechart(
        d,
        actions={"count": lambda ctx, ev: {"n": ctx["n"] + 1}},
        guards={"ping": lambda ctx, ev: ev.type == "PING"},
    )
    s = c.initial()
    with pytest.raises(EventNotAccepted):
        c.transition(s, Event("OTHER"))  # nothing would change
    s2 = c.transition(s, Event("PING"))  # no handler, but an always transition fires
    assert s2.value == "busy" and s2.context == {"n": 1}


# --- delayed transitions -------------------------------------------------------------------

TIMED = {
    "id": "t",
    "initial": "waiting",
    "context": {"fast": False},
    "states": {
        "waiting": {
            "after": {
                "1000": [{"target": "quick", "guard": "isFast"}, {"target": "slow"}],
                "SHORT": {"target": "short"},
            },
            "on": {"LEAVE": "away"},
        },
        "quick": {},
        "slow": {},
        "short": {"after": {"200": "waiting"}},
        "away": {},
    },
}


def test_timers_start_on_entry_race_and_cancel_on_exit():
    c = Statechart(TIMED, guards={"isFast": lambda ctx, ev: ctx["fast"]}, delays={"SHORT": 500})
    s = c.initial(10_000)
    assert s.timers == {"xstate.after.1000.t.waiting": 11_000, "xstate.after.SHORT.t.waiting": 10_500}
    s2 = c.transition(s, Event("xstate.after.SHORT.t.waiting", None, 10_500))  # the shorter one wins
    assert s2.value == "short" and s2.timers == {"xstate.after.200.t.short": 10_700}
    with pytest.raises(EventNotAccepted, match="not pending"):  # the 1000 ms timer was cancelled
        c.transition(s2, Event("xstate.after.1000.t.waiting", None, 11_000))
    assert c.transition(s, Event("LEAVE", None, 10_001)).timers == {}
    s3 = c.transition(s, Event("xstate.after.1000.t.waiting", None, 11_000))
    assert s3.value == "slow"  # guarded candidates: the first whose guard passes
    back = c.transition(s2, Event("xstate.after.200.t.short", None, 10_700))
    assert back.value == "waiting" and back.timers["xstate.after.SHORT.t.waiting"] == 11_200


def test_named_delay_from_context_and_missing_delay():
    d = {"initial": "a", "context": {"ms": 42}, "states": {"a": {"after": {"WAIT": "b"}}, "b": {}}}
    c = Statechart(d, delays={"WAIT": lambda ctx, ev: ctx["ms"]})
    assert c.initial(0).timers == {"xstate.after.WAIT.machine.a": 42}
    with pytest.raises(DefinitionError, match="unknown delay 'WAIT'"):
        Statechart(d)


def test_a_fired_timer_is_consumed_even_when_no_guard_passes():
    d = {"initial": "a", "states": {"a": {"after": {"5": {"target": "b", "guard": "no"}}}, "b": {}}}
    c = Statechart(d, guards={"no": lambda ctx, ev: False})
    s = c.initial(0)
    s2 = c.transition(s, Event("xstate.after.5.machine.a", None, 5))
    assert s2.value == "a" and s2.timers == {}
    with pytest.raises(EventNotAccepted):
        c.transition(s2, Event("xstate.after.5.machine.a", None, 6))  # fires once


# --- invocations -------------------------------------------------------------------------

INVOKING = {
    "id": "w",
    "initial": "loading",
    "context": {"user": None, "error": None},
    "states": {
        "loading": {
            "invoke": {
                "src": "fetchUser",
                "input": {"id": 42},
                "onDone": {"target": "ready", "actions": "save"},
                "onError": {"target": "failed", "actions": "fail"},
            },
            "on": {"CANCEL": "idle"},
        },
        "ready": {},
        "failed": {},
        "idle": {"on": {"RETRY": "loading"}},
    },
}
INV_IMPL = {
    "actions": {"save": lambda ctx, ev: {"user": ev.data}, "fail": lambda ctx, ev: {"error": ev.data}},
}


def test_invocations_start_on_entry_end_with_an_outcome_and_stop_on_exit():
    c = Statechart(INVOKING, **INV_IMPL)
    s = c.initial(0)
    assert c.services == ["fetchUser"]
    assert s.invocations == {"0.w.loading": {"src": "fetchUser", "input": {"id": 42}, "state": "loading"}}
    ok = c.transition(s, Event("xstate.done.actor.0.w.loading", {"name": "Ada"}, 5))
    assert ok.value == "ready" and ok.context["user"] == {"name": "Ada"} and ok.invocations == {}
    err = c.transition(s, Event("xstate.error.actor.0.w.loading", "boom", 5))
    assert err.value == "failed" and err.context["error"] == "boom"
    idle = c.transition(s, Event("CANCEL", None, 1))
    assert idle.invocations == {}
    with pytest.raises(EventNotAccepted, match="not running"):  # a late outcome of a stopped invocation
        c.transition(idle, Event("xstate.done.actor.0.w.loading", {}, 9))
    again = c.transition(idle, Event("RETRY", None, 2))
    assert "0.w.loading" in again.invocations


def test_invoke_validation():
    d = {"initial": "a", "states": {"a": {"invoke": [{"src": "x", "id": "i"}, {"id": "i", "src": ""}]}}}
    with pytest.raises(DefinitionError, match="service name"):
        Statechart(d)


# --- replay: the stored form (value, context, extras) reproduces every snapshot -------------

EVENTS = [
    "POWER",
    "SWITCH",
    "H_POWER",
    "LEAVE",
    "CANCEL",
    "RETRY",
    "xstate.after.1000.t.waiting",
    "xstate.after.SHORT.t.waiting",
    "xstate.after.200.t.short",
    "xstate.done.actor.0.w.loading",
    "xstate.error.actor.0.w.loading",
]


@settings(max_examples=60, deadline=None)
@given(
    which=st.sampled_from(["shallow", "deep", "parallel", "timed", "invoking"]),
    steps=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 400)), max_size=25),
)
def test_replay_from_stored_snapshots_reproduces_every_snapshot(which, steps):
    defs = {"shallow": SHALLOW, "deep": DEEP, "parallel": PARALLEL, "timed": TIMED, "invoking": INVOKING}
    kw = {
        "timed": {"guards": {"isFast": lambda ctx, ev: ctx["fast"]}, "delays": {"SHORT": 500}},
        "invoking": INV_IMPL,
    }.get(which, {})
    c = Statechart(defs[which], **kw)
    names = sorted(
        {ev for n in c._nodes for ev in n.on}
        | {"xstate.after.1000.t.waiting", "xstate.done.actor.0.w.loading"}
    )
    t = 0
    s = c.initial(t)
    recorded = [(None, s)]
    for pick, dt in steps:
        t += dt
        ev = Event(names[pick % len(names)], {"n": pick}, t)
        try:
            s = c.transition(s, ev)
        except EventNotAccepted:
            continue
        recorded.append((ev, s))
    # replay: rebuild from what a log stores and take the same events
    replayed = c.snapshot_from(recorded[0][1].value, recorded[0][1].context, None, recorded[0][1].extras())
    assert replayed == recorded[0][1]
    for ev, snap in recorded[1:]:
        replayed = c.transition(replayed, ev)
        assert replayed == snap
        stored = c.snapshot_from(snap.value, snap.context, snap.done, snap.extras())
        assert stored == snap and stored._config == snap._config
        replayed = stored
