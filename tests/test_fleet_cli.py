"""``corelog fleet``: list machines by kind and state, one machine's history, listeners, dead letters, replay."""

from __future__ import annotations

import json

from click.testing import CliRunner

from corelog import Store
from corelog.cli import cli
from corelog.machine import Fleet
from tests.test_fleet import CHAT, CHAT_IMPL, TICKET, clock


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def _fleet_store(path, failing=True):
    store = Store(path, sync=False)
    f = Fleet(store, clock=clock)
    f.register("chat", CHAT, CHAT_IMPL)
    f.register("ticket", TICKET)
    calls = []

    def mail(change, services, send):
        calls.append(change.id)
        if failing and change.id == "c1" and change.event.type == "INQUIRY":
            raise ConnectionError("smtp down")

    f.listener("mail", mail, kinds=["chat"], max_attempts=2, backoff=0.001)
    return store, f, calls


def test_ls_history_listeners_dead_letters_and_replay(tmp_path):
    path = tmp_path / "s"
    store, f, _ = _fleet_store(path)
    with f:
        f.send("c1", "INQUIRY", {"name": "ann"}, kind="chat")
        f.send("c1", "MSG", kind="chat")
        f.send("c2", "INQUIRY", {"name": "bob"}, kind="chat")
        f.send("t1", "ASSIGN", kind="ticket")
        assert f.listeners.wait_idle(10)
    store.close()

    code, out = run("fleet", "ls", path)
    assert (
        code == 0 and "c1" in out and "t1" in out and "assigned" in out and "count by kind and state" in out
    )
    code, out = run("fleet", "ls", path, "--kind", "chat", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["id"] for r in rows] == ["c1", "c2"] and rows[0]["length"] == 3
    code, out = run("fleet", "ls", path, "--state", "assigned", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["t1"]

    code, out = run("fleet", "history", path, "c1", "--json")
    events = [json.loads(line)["event"] for line in out.splitlines()]
    assert code == 0 and [e and e["type"] for e in events] == [None, "INQUIRY", "MSG"]
    code, out = run("fleet", "history", path, "nobody")
    assert code == 2 and "no fleet machine 'nobody'" in out

    code, out = run("fleet", "listeners", path)
    assert code == 0 and "mail" in out
    code, out = run("fleet", "dead-letters", path, "--json")
    (dead,) = [json.loads(line) for line in out.splitlines()]
    assert (
        dead["id"] == "c1" and dead["index"] == 1 and "smtp down" in dead["error"] and dead["attempts"] == 2
    )
    code, out = run("fleet", "dead-letters", path)
    assert code == 0 and "dead letters in" in out and "smtp" in out

    # replay needs the store's writer lock: refused while a fleet holds it
    store, f, calls = _fleet_store(path, failing=False)
    with f:
        code, out = run("fleet", "replay", path)
        assert code == 2 and "fleet.listeners.replay()" in out
    store.close()
    code, out = run("fleet", "replay", path, "--listener", "mail")
    assert code == 0 and "requeued 1" in out
    code, out = run("fleet", "replay", path, "--listener", "nobody")
    assert code == 2
    store, f, calls = _fleet_store(path, failing=False)
    with f:  # the next start delivers the requeued row first
        assert f.listeners.wait_idle(10)
        assert calls == ["c1"] and f.listeners.dead_letters() == []
    store.close()
    assert run("fleet", "dead-letters", path)[1].strip() == "no dead letters"
