"""What users meet at the machine's edges: numbers msgpack cannot hold, and a rejected event in pipe_from."""

from __future__ import annotations

import pytest
import trio

from corelog.machine import Coremachine, Machine
from corelog.machine.errors import EventNotAccepted, UnserializableContext

SETTER = {
    "id": "setter",
    "initial": "on",
    "context": {"n": 0},
    "states": {"on": {"on": {"SET": {"actions": "set"}, "OFF": "off"}}, "off": {}},
}
ACTIONS = {"set": lambda ctx, ev: ctx.update(n=ev.data)}


@pytest.mark.parametrize(
    ("data", "where"),
    [(2**80, "event.data"), (-(2**70), "event.data"), ({"a": [1, 2**64]}, "event.data.a[1]")],
)
def test_an_integer_msgpack_cannot_hold_is_a_clear_error_and_records_nothing(store, data, where):
    m = Machine(store.get("m"), SETTER, actions=ACTIONS)
    m.send("SET", 1)
    before = (m.log.length, m.log.head())
    with pytest.raises(
        UnserializableContext, match=rf"{where.replace('[', '.').replace(']', '.')} is an integer"
    ):
        m.send("SET", data)
    assert (m.log.length, m.log.head()) == before and dict(m.context) == {"n": 1}
    m.send("SET", 2**64 - 1)  # the largest that fits is recorded
    assert m.context["n"] == 2**64 - 1


async def test_pipe_from_ends_at_a_rejected_event_keeping_what_came_before(store):
    cm = Coremachine(store.get("c"), SETTER, actions=ACTIONS)
    send, receive = trio.open_memory_channel(10)
    for event in [("SET", 1), ("SET", 2), "NOPE", ("SET", 3)]:
        send.send_nowait(event)
    with pytest.raises(EventNotAccepted):
        await cm.pipe_from(receive)
    assert [e.event.type for e in cm.history[1:]] == ["SET", "SET"] and cm.context["n"] == 2
    with pytest.raises(trio.BrokenResourceError):  # the pipe closed its end: the producer learns it ended
        send.send_nowait(("SET", 4))
    await cm.aclose()


def _tamper(path, log_id: int, index: int) -> None:
    """Flip one byte of block ``index`` straight in LMDB (no Store open), as disk damage or an attacker would."""
    import lmdb

    from corelog._log import block_key

    env = lmdb.open(str(path), max_dbs=8)
    data = env.open_db(b"data")
    with env.begin(write=True, db=data) as txn:
        key = block_key(log_id, index)
        block = bytearray(txn.get(key))
        block[-2] ^= 0x01
        txn.put(key, bytes(block))
    env.close()


@pytest.mark.parametrize("index", [0, 3])  # the header, the last entry: what the machine restores from
def test_a_machine_refuses_to_continue_on_a_damaged_log(tmp_path, index):
    from corelog import Store
    from corelog.errors import Corrupt

    path = tmp_path / "s"
    with Store(path, sync=False) as s:
        m = Machine(s.get("m"), SETTER, actions=ACTIONS)
        for n in (1, 2, 3):
            m.send("SET", n)
        log_id, length = m.log.id, m.log.length
    _tamper(path, log_id, index)
    with Store(path, sync=False) as s:
        assert not s.get("m").audit().ok
        with pytest.raises(Corrupt, match=rf"entry {index} .* Merkle leaf.*corelog audit"):
            Machine(s.get("m"), SETTER, actions=ACTIONS)
        assert s.get("m").length == length  # nothing appended


async def test_subscribe_yields_recorded_entries_as_the_readme_says(store):
    from corelog.machine import HistoryEntry, Snapshot

    cm = Coremachine(store.get("s"), SETTER, actions=ACTIONS)
    await cm.send("SET", 1)
    entries = []
    with trio.fail_after(10):
        async for entry in cm.subscribe(from_index=0):  # replayed history: the header, then SET
            entries.append(entry)
            if len(entries) == 2:
                break
    assert all(isinstance(e, HistoryEntry) for e in entries)
    assert (
        [e.index for e in entries] == [0, 1]
        and entries[1].event.type == "SET"
        and entries[1].context["n"] == 1
    )
    assert isinstance(cm.snapshot, Snapshot)
    await cm.aclose()
