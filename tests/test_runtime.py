"""Machine over a log: recording, restore, history time travel, failures that record nothing."""

from __future__ import annotations

import sys

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corelog.errors import NotWritable, OutOfRange
from corelog.machine import Event, Machine, Statechart, decode_entry
from corelog.machine.errors import (
    DefinitionMismatch,
    EventNotAccepted,
    MachineError,
    NotAMachineLog,
    NotAtHead,
    UnserializableContext,
)
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
        assert viewer.available_events() == ["START"] and not viewer.can("START")
        with pytest.raises(
            MachineError, match=r"view only.*actions=\{'start', 'increment', 'stop': \.\.\.\}"
        ):
            viewer.send("START", 1)
        assert viewer.log.length == 13
        partial = Machine(s.get("m"), actions={"start": COUNTER_IMPL["actions"]["start"]})
        with pytest.raises(MachineError, match=r"actions=\{'increment', 'stop'"):
            partial.send("START", 1)


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
    with pytest.raises(DefinitionMismatch, match=r"states\.running\.on\.RESET added.*migrate=True"):
        Machine(log, v2, **COUNTER_IMPL)
    assert log.length == 2
    # the current state must exist in the new definition: a clear error, nothing appended
    renamed = {
        **COUNTER,
        "states": {
            "idle": {"on": {"START": {"target": "busy", "actions": "start"}}},
            "busy": {"on": {"STOP": {"target": "idle", "actions": "stop"}}},
        },
    }
    with pytest.raises(DefinitionMismatch, match="cannot migrate"):
        Machine(log, renamed, **COUNTER_IMPL, migrate=True)
    assert log.length == 2
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
    other = store.get("other")
    other.append(msgpack.packb({"event": {"type": "X"}, "state": "a", "context": {}, "time": 1}))
    with pytest.raises(NotAMachineLog, match="entry 0 is not a machine header"):
        Machine(other)
    m = Machine(store.get("m"), COUNTER, **COUNTER_IMPL)
    bad = {"event": {"type": "X"}, "state": "a", "context": {}, "time": 1, "header": 5}
    for entry, msg in [(bad, "header 5"), ({**bad, "header": 0, "time": "now"}, "time"), ({"x": 1}, "state")]:
        with pytest.raises(NotAMachineLog, match=msg):
            decode_entry(1, msgpack.packb(entry))
    assert m.state == "idle"


def test_history_rows_html_and_dataframe(store, monkeypatch):
    m = Machine(store.get("m"), COUNTER, **COUNTER_IMPL, clock=clock_from())
    m.send("START", 2)
    m.send("INCREMENT")
    row = m.history[1]
    assert row.to_dict() == {
        "index": 1,
        "kind": "transition",
        "event": {"type": "START", "data": 2},
        "state": "running",
        "context": {"running": True, "counter": 2},
        "time": row.time,
    }
    assert "START" in row._repr_html_() and "<td>1</td>" in row._repr_html_()
    assert m.history[0].to_dict()["event"] is None and "(header)" in m.history[0]._repr_html_()
    assert [r.index for r in m.history[::2]] == [0, 2] and m.history[-1].context["counter"] == 3
    with pytest.raises(IndexError):
        m.history[3]
    pytest.importorskip("pandas")
    df = m.history.to_dataframe()
    assert list(df["event"]) == ["(header)", "START", "INCREMENT"]
    assert list(df["context.counter"]) == [0, 2, 3]
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="needs pandas"):
        m.history.to_dataframe()


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


def test_replica_reorganised_by_a_higher_fork_clamps_the_cursor(make_store):
    ws, rs = make_store("w"), make_store("r")
    wlog = ws.get("m")
    m = Machine(wlog, COUNTER, **COUNTER_IMPL)
    m.send("START", 0)
    for _ in range(4):
        m.send("INCREMENT")
    rlog = rs.get(key=wlog.key)
    rlog.apply(wlog.proof(0, wlog.length))
    replica = Machine(rlog)
    low = Machine(rlog)
    replica.seek(4)
    low.seek(2)
    m.truncate(3)  # the writer branches: entries 3.. are replaced
    m.send("STOP")
    m.send("START", 7)
    m.send("INCREMENT")
    assert rlog.apply(wlog.proof(3, wlog.length, have=3)) and rlog.fork == 1
    # entry 4 was cut: the cursor clamps onto the last kept entry; one below the cut stays put
    assert replica.position == 2 and not replica.at_head and replica.context["counter"] == 1
    assert low.position == 2 and low.context["counter"] == 1
    assert replica.live().context["counter"] == 8 and replica.position == 5
    assert [e.event.type for e in replica.history[1:]] == ["START", "INCREMENT", "STOP", "START", "INCREMENT"]


def test_machine_on_a_read_only_store_follows_the_writer(tmp_path):
    from corelog import Store

    with Store(tmp_path / "s", sync=False) as ws:
        m = Machine(ws.get("m"), COUNTER, **COUNTER_IMPL)
        m.send("START", 1)
        with Store(tmp_path / "s", readonly=True) as rs:
            viewer = Machine(rs.get("m"))
            assert viewer.context["counter"] == 1 and viewer.position == 1
            with pytest.raises(NotWritable):
                viewer.send("INCREMENT")
            m.send("INCREMENT")
            m.send("INCREMENT")
            assert viewer.context["counter"] == 3 and viewer.position == 3 and len(viewer.history) == 4
            viewer.seek(1)
            m.send("STOP")
            assert viewer.position == 1 and viewer.history[-1].event.type == "STOP"
        assert [e.index for e in m.history[::-2]] == [4, 2, 0]
        assert [e.index for e in m.history[3:1:-1]] == [3, 2]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.tuples(st.sampled_from(["TRY", "TRY", "NOPE"]), st.integers(-3, 20)), max_size=15))
def test_replay_reproduces_every_recorded_snapshot(tmp_path_factory, events):
    from corelog import Store

    path = tmp_path_factory.mktemp("h")
    store = Store(path, sync=False)
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
    store.close()
    with Store(path) as reopened:
        again = Machine(reopened.get("g"), GUARDED, **GUARDED_IMPL)
        assert again.snapshot == before and again.position == len(rows) - 1
