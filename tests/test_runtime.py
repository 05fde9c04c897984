"""Machine over a log: recording, restore, history time travel, failures that record nothing."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corelog.errors import (
    DefinitionMismatch,
    EventNotAccepted,
    MachineError,
    NotAMachineLog,
    NotAtHead,
    NotWritable,
    OutOfRange,
    UnserializableContext,
)
from machine import Event, Machine, Statechart
from tests.test_interpreter import COUNTER, COUNTER_IMPL, GUARDED, GUARDED_IMPL


def clock_from(start=1_700_000_000_000):
    t = [start]

    def clock():
        t[0] += 1
        return t[0]

    return clock


def test_counter_scenario_records_events_and_snapshots(store):
    m = Machine(store.get("m"), COUNTER, **COUNTER_IMPL, clock=clock_from())
    assert m.state == "idle" and len(m.history) == 1 and m.history[0].kind == "header"
    m.send("START", 5)
    m.action("INCREMENT")  # coremachine's name works too
    m.send({"type": "INCREMENT"})
    snap = m.send(Event("STOP"))
    assert snap.value == "idle" and dict(m.context) == {"running": False, "counter": 7}
    rows = list(m.history)
    assert [r.event.type for r in rows[1:]] == ["START", "INCREMENT", "INCREMENT", "STOP"]
    assert rows[1].event.data == 5 and rows[1].state == "running" and rows[1].context["counter"] == 5
    assert all(rows[i].time < rows[i + 1].time for i in range(len(rows) - 1))
    header = msgpack.unpackb(m.log[0])
    assert header["type"] == "corelog/machine" and header["definition"] == COUNTER
    assert header["definition_hash"] == Statechart(COUNTER, **COUNTER_IMPL).hash
    assert m.log.audit().ok


def test_failures_append_nothing(store):
    def bad_action(ctx, ev):
        ctx["counter"] = 1
        raise RuntimeError("action failed")

    impl = {"actions": {**COUNTER_IMPL["actions"], "stop": bad_action}}
    m = Machine(store.get("m"), COUNTER, **impl)
    m.send("START", 0)
    length, snap = m.log.length, m.snapshot
    with pytest.raises(EventNotAccepted):
        m.send("START", 1)
    with pytest.raises(RuntimeError, match="action failed"):
        m.send("STOP")
    assert m.log.length == length and m.snapshot == snap

    impl2 = {"actions": {**COUNTER_IMPL["actions"], "increment": lambda c, e: c.update(bad={1, 2})}}
    m2 = Machine(store.get("m2"), COUNTER, **impl2)
    m2.send("START", 0)
    with pytest.raises(UnserializableContext, match=r"context\.bad is a set"):
        m2.send("INCREMENT")
    with pytest.raises(UnserializableContext, match="event data"):
        m2.send("STOP", object())
    assert m2.log.length == 2 and m2.context == {"running": True, "counter": 0}

    g = Machine(
        store.get("g"),
        GUARDED,
        actions=GUARDED_IMPL["actions"],
        guards={**GUARDED_IMPL["guards"], "isBig": lambda c, e: 1 / 0},
    )
    with pytest.raises(ZeroDivisionError):
        g.send("TRY", 5)
    assert g.log.length == 1


def test_reopen_restores_exactly(tmp_path):
    from corelog import Store

    with Store(tmp_path / "s") as s:
        m = Machine(s.get("m"), COUNTER, **COUNTER_IMPL)
        m.send("START", 1)
        for _ in range(10):
            m.send("INCREMENT")
        before = m.snapshot
        m.close()
    with Store(tmp_path / "s") as s:
        m = Machine(s.get("m"), COUNTER, **COUNTER_IMPL)
        assert m.snapshot == before and m.position == 11
        m.send("STOP")
        viewer = Machine(s.get("m"))  # the stored definition, no implementations: view only
        assert viewer.state == "idle" and viewer.definition == COUNTER
        with pytest.raises(MachineError, match="implementations"):
            viewer.send("START", 1)


def test_history_navigation(store):
    m = Machine(store.get("m"), COUNTER, **COUNTER_IMPL)
    m.send("START", 0)
    for _ in range(5):
        m.send("INCREMENT")
    assert m.position == 6 and m.at_head and m.context["counter"] == 5
    assert m.backward().context["counter"] == 4 and m.position == 5
    # coremachine's bug: the first forward() after backward() must move forward
    assert m.forward().context["counter"] == 5 and m.position == 6 and m.at_head
    m.backward(3)
    assert m.position == 3 and m.context["counter"] == 2 and not m.at_head
    with pytest.raises(NotAtHead):
        m.send("INCREMENT")
    assert m.backward(100).value == "idle" and m.position == 0  # clamps at the header
    assert m.forward(2).context["counter"] == 1
    assert m.seek(-1).context["counter"] == 5 and m.at_head
    with pytest.raises(OutOfRange):
        m.seek(7)
    m.seek(2)
    assert m.live().context["counter"] == 5
    html = m.history._repr_html_()
    assert "INCREMENT" in html and html.count("<tr") == 8


def test_truncate_branches(store):
    m = Machine(store.get("m"), COUNTER, **COUNTER_IMPL)
    m.send("START", 0)
    for _ in range(5):
        m.send("INCREMENT")
    m.seek(3)
    snap = m.truncate(3)  # keep entries 0..2: header, START, INCREMENT
    assert snap.context["counter"] == 1 and m.position == 2 and m.at_head and m.log.fork == 1
    m.send("STOP", 42)
    assert m.context["counter"] == 42 and len(m.history) == 4
    with pytest.raises(OutOfRange, match="header"):
        m.truncate(0)


def test_definition_mismatch_and_migrate(store):
    log = store.get("m")
    m = Machine(log, COUNTER, **COUNTER_IMPL)
    m.send("START", 3)
    m.close()
    v2 = {
        **COUNTER,
        "states": {
            **COUNTER["states"],
            "running": {"on": {**COUNTER["states"]["running"]["on"], "RESET": {"target": "idle"}}},
        },
    }
    with pytest.raises(DefinitionMismatch, match="migrate=True"):
        Machine(log, v2, **COUNTER_IMPL)
    m2 = Machine(log, v2, **COUNTER_IMPL, migrate=True)
    assert m2.history[-1].kind == "header" and m2.context["counter"] == 3 and m2.state == "running"
    m2.send("RESET")
    m2.close()
    m3 = Machine(log, v2, **COUNTER_IMPL)  # O(1) restore finds the migration header
    assert m3.state == "idle" and m3.definition_hash == Statechart(v2, **COUNTER_IMPL).hash
    assert msgpack.unpackb(log[-1])["header"] == 2


def test_not_a_machine_log(store):
    log = store.get("raw")
    log.append(b"not msgpack \xc1")
    with pytest.raises(NotAMachineLog):
        Machine(log, COUNTER, **COUNTER_IMPL)


def test_replica_machine_follows_and_refuses_sends(make_store):
    ws, rs = make_store("w"), make_store("r")
    wlog = ws.get("m")
    m = Machine(wlog, COUNTER, **COUNTER_IMPL)
    m.send("START", 1)
    rlog = rs.get(key=wlog.key)
    rlog.apply(wlog.proof(0, wlog.length))
    replica = Machine(rlog)
    assert replica.state == "running" and replica.context["counter"] == 1
    m.send("INCREMENT")
    m.send("INCREMENT")
    rlog.apply(wlog.proof(rlog.contiguous_length, wlog.length, have=rlog.contiguous_length))
    assert replica.context["counter"] == 3 and replica.position == 3  # followed the log
    with pytest.raises(NotWritable):
        replica.send("INCREMENT")
    replica.seek(1)
    m.send("STOP")
    rlog.apply(wlog.proof(rlog.contiguous_length, wlog.length, have=rlog.contiguous_length))
    assert replica.position == 1 and replica.history[-1].event.type == "STOP"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.tuples(st.sampled_from(["TRY", "TRY", "NOPE"]), st.integers(-3, 20)), max_size=15))
def test_replay_reproduces_every_recorded_snapshot(make_store, events):
    store = make_store()
    m = Machine(store.get("g"), GUARDED, **GUARDED_IMPL)
    for etype, data in events:
        try:
            m.send(etype, data)
        except EventNotAccepted:
            pass
    chart = Statechart(GUARDED, **GUARDED_IMPL)
    rows = list(m.history)
    snap = chart.snapshot_from(rows[0].state, rows[0].context)
    for row in rows[1:]:
        snap = chart.transition(snap, row.event)
        assert (snap.value, dict(snap.context), snap.done) == (row.state, row.context, row.done)
    before = m.snapshot
    m.close()
    assert Machine(store.get("g"), GUARDED, **GUARDED_IMPL).snapshot == before
