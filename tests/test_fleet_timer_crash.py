"""SIGKILL a fleet with thousands of pending ``after`` timers and running ``invoke`` services, then reopen.

The first process runs a load (thousands of machines entering states with timers of varied due times,
leaving some of them early, starting a slow, flaky service in others) and is SIGKILLed at a random
moment; the second (which only recovers: no event is sent to it) is SIGKILLed while it recovers; the
third recovers and runs until every machine is quiet. Then, from the logs alone:

- every timer pending at a kill fires exactly once, never before its due time, promptly after the
  reopen when it was overdue, and only while its state is still active (a timer whose state is left
  first, e.g. by a racing timer, never fires);
- every invocation running at a kill ends with exactly one done/error event in the log; its side
  effect (a line with its idempotency key in a separate file) happened at least once when it is done:
  duplicates by key are counted and reported;
- every machine's log audits and replays;
- the reopened fleet runs every timer and service with one scheduler thread and a bounded pool, not a
  task or thread per machine.

The seed is printed; ``FLEET_TIMER_CRASH_SEED`` repeats its random choices (the load, the services'
failures, when the kills fall), not the exact interleaving.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from corelog import Store
from corelog.machine import Statechart, decode_entry
from corelog.machine import _fleet_store as fs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MACHINES = 3000
MAX_DELAY = 3000  # ms: timers are due 50 ms .. 3 s after their state is entered
LATE_BOUND = 5000  # ms: a timer fires at most this long after max(due, the reopen); generous for 2 busy cores
JOB = {
    "id": "job",
    "initial": "idle",
    "context": {"id": None, "delay": 0, "deadline": 0, "result": None},
    "states": {
        "idle": {
            "on": {
                "WAIT": {"target": "waiting", "actions": "setup"},
                "RACE": {"target": "racing", "actions": "setup"},
                "FETCH": {"target": "loading", "actions": "setup"},
            }
        },
        "waiting": {"after": {"wait": "expired"}, "on": {"ANSWER": "answered"}},
        # two timers: the first to fire leaves the state, so the other must never fire
        "racing": {"after": {"wait": "expired", "deadline": "timedout"}, "on": {"ANSWER": "answered"}},
        "expired": {"after": {"300": "closed"}},  # armed by a timer firing: a timer armed after recovery
        "loading": {
            "invoke": {
                "src": "work",
                "retry": {"attempts": 3, "backoff": 10},
                "onDone": {"target": "fetched", "actions": "save"},
                "onError": {"target": "failed", "actions": "save"},
            }
        },
        "answered": {"on": {"AGAIN": "idle"}},
        "timedout": {"on": {"AGAIN": "idle"}},
        "closed": {"on": {"AGAIN": "idle"}},
        "fetched": {"on": {"AGAIN": "idle"}},
        "failed": {"on": {"AGAIN": "idle"}},
    },
}
JOB_ACTIONS = {
    "setup": lambda c, e: {"id": e.data["id"], "delay": e.data["delay"], "deadline": e.data["deadline"]},
    "save": lambda c, e: {"result": e.data},
}
JOB_DELAYS = {"wait": lambda c, e: c["delay"], "deadline": lambda c, e: c["deadline"]}


def replay_chart(definition: dict) -> Statechart:
    """For ``corelog audit --replay tests.test_fleet_timer_crash:replay_chart``."""
    return Statechart(definition, JOB_ACTIONS, delays=JOB_DELAYS)


CHILD = textwrap.dedent(
    """
    import json, os, random, sys, threading, time
    from corelog.machine import Fleet
    from tests.test_fleet_timer_crash import JOB, JOB_ACTIONS, JOB_DELAYS, MAX_DELAY

    path, effects_path, mode, machines, seed, quiet_by = sys.argv[1:7]
    machines, rng = int(machines), random.Random(seed)
    effects = open(effects_path, "a")
    pid = os.getpid()

    def work(inp, ctx, key):  # slow and flaky; its side effect is a line in a separate file
        time.sleep(rng.uniform(0.001, 0.01))
        if rng.random() < 0.3:
            raise ConnectionError("flaky")
        effects.write(f"{ctx['id']} {key} {pid}\\n")
        effects.flush()
        time.sleep(rng.uniform(0.001, 0.01))  # the outcome is recorded a while after the effect
        return {"pid": pid}

    opened = time.time() * 1000
    fleet = Fleet(path, sync=True)
    fleet.register("job", JOB, JOB_ACTIONS, delays=JOB_DELAYS, services={"work": work})
    with fleet:
        started = time.time() * 1000
        names = [t.name for t in threading.enumerate()]
        print(json.dumps({"pid": pid, "opened": opened, "started": started, "recovered": fleet.recovered,
                          "pending": fleet.scheduler.pending, "threads": names}), flush=True)
        if mode == "drain":  # send nothing: only what recovery resumes runs; stop once all is quiet
            while time.time() < float(quiet_by):
                busy = sum(1 for m in fleet.machines() if m.extras and (m.extras.get("timers")
                           or m.extras.get("invocations")))
                if not busy:
                    break
                time.sleep(0.1)
            print(json.dumps({"busy": busy, "fired": fleet.scheduler.fired,
                              "invoked": fleet.scheduler.invoked}), flush=True)
        else:  # load: rounds over every machine, each acting on its acknowledged state
            state = {f"m{i}": "new" for i in range(machines)}
            rounds = 0
            while True:
                waits = []
                for mid, st in state.items():
                    r = rng.random()
                    delay = rng.randint(50, MAX_DELAY)
                    data = {"id": mid, "delay": delay, "deadline": rng.randint(50, MAX_DELAY)}
                    if st in ("new", "idle"):
                        ev = "FETCH" if r < 0.15 else "RACE" if r < 0.4 else "WAIT"
                    elif st in ("waiting", "racing") and r < 0.1:
                        ev = "ANSWER"
                    elif st in ("answered", "timedout", "closed", "fetched", "failed") and r < 0.5:
                        ev = "AGAIN"
                    else:
                        continue
                    waits.append((mid, fleet.post(mid, ev, data, kind="job")))
                for mid, wait in waits:
                    try:
                        state[mid] = wait().value
                    except Exception:  # e.g. ANSWER after the timer fired: not accepted, nothing recorded
                        state[mid] = fleet.snapshot(mid).value
                rounds += 1
                if rounds == 1:
                    print("loaded", flush=True)
                time.sleep(0.05)
    """
)


def _run(path: str, effects: str, mode: str, seed: str, quiet_by: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, path, effects, mode, str(MACHINES), seed, str(quiet_by)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
        cwd=ROOT,
    )


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def _pending(path: str) -> tuple[dict, dict, dict]:
    """After a kill: per machine, its log length, pending timers {event: due} and running invocations."""
    lengths, timers, invocations = {}, {}, {}
    store = Store(path, readonly=True)
    with store._env.begin() as txn:
        for mid, row in fs.iter_index(txn, store._dbs):
            extras = (row[5] if len(row) > 5 else None) or {}
            lengths[mid] = row[4]
            if extras.get("timers"):
                timers[mid] = {e: d for e, d in extras["timers"].items() if d is not None}
            if extras.get("invocations"):
                invocations[mid] = dict(extras["invocations"])
    store.close()
    return lengths, timers, invocations


@pytest.mark.slow
def test_sigkill_with_timers_and_services_in_flight_recovers_each_once(tmp_path, record_property):
    from corelog.cli._inspect import _replay
    from corelog.machine._snapshot import invocation_key

    path, effects = str(tmp_path / "s"), str(tmp_path / "effects")
    seed = os.environ.get("FLEET_TIMER_CRASH_SEED", str(time.time_ns()))
    rng = random.Random(seed)
    print(f"\nseed {seed} (FLEET_TIMER_CRASH_SEED={seed} repeats it)")

    # 1. the load, SIGKILLed at a random moment once every machine has acted once
    proc = _run(path, effects, "load", seed)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("{"), proc.stderr.read() if proc.stderr else ""
        assert proc.stdout.readline().strip() == "loaded", proc.stderr.read() if proc.stderr else ""
        pause = rng.uniform(0.05, 1.2)
        time.sleep(pause)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        _kill(proc)
    kills = [_pending(path)]
    assert sum(len(t) for t in kills[0][1].values()) >= 1000 and len(kills[0][2]) >= 100  # at scale
    opens: list[dict] = [json.loads(line)]

    # 2. a reopen that only recovers, SIGKILLed while it does
    proc = _run(path, effects, "drain", seed, time.time() + 60)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("{"), proc.stderr.read() if proc.stderr else ""
        opens.append(json.loads(line))
        pause2 = rng.uniform(0.05, 0.8)
        time.sleep(pause2)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        _kill(proc)
    kills.append(_pending(path))

    # 3. a reopen that recovers and runs until every timer and invocation is over
    t3 = time.monotonic()
    quiet_by = time.time() + MAX_DELAY / 1000 + 20
    proc = _run(path, effects, "drain", seed, quiet_by)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    first, last = (json.loads(x) for x in out.splitlines()[:2])
    opens.append(first)
    assert last["busy"] == 0, f"{last['busy']} machines still have pending timers or running invocations"

    # one scheduler for all machines: thousands of timers pending, a handful of threads
    recovered_timers, recovered_invocations = first["recovered"]
    pending_at_kill = sum(len(t) for t in kills[1][1].values())
    running_at_kill = sum(len(i) for i in kills[1][2].values())
    assert recovered_timers == pending_at_kill and recovered_invocations == running_at_kill
    threads = first["threads"]
    assert threads.count("corelog-fleet-scheduler") == 1
    assert sum(n.startswith("corelog-fleet-service") for n in threads) <= 4
    assert len(threads) <= 10, threads  # main, writer, scheduler, <= 4 service workers, listeners: none

    t4 = time.monotonic()
    # the logs, entry by entry
    store = Store(path, readonly=True)
    entries: dict[str, list] = {}
    for mid in kills[-1][0]:
        log = store.get(f"fleet:{mid}", create=False)
        assert log.audit().ok, mid
        assert _replay(log, replay_chart, lambda i: None) is None, mid
        entries[mid] = [decode_entry(i, b) for i, b in enumerate(log.iter(0, log.length))]
    store.close()
    assert len(entries) == MACHINES
    t5 = time.monotonic()

    def opened_before(t: float) -> float:  # the start of the process that recorded an entry at time t
        return max(o["opened"] for o in opens if o["opened"] <= t)

    fired = collections.Counter()  # (mid, event, due) -> times fired
    outcomes = collections.Counter()  # (mid, invocation key) -> done/error events
    done_by: dict[tuple[str, str], tuple[str, int | None]] = {}
    lateness: list[float] = []
    resumed: list[float] = []  # overdue timers at the last reopen: ms from the reopen to their firing
    for mid, es in entries.items():
        for prev, e in zip(es, es[1:], strict=False):
            if e.event is None:
                continue
            etype, t = e.event.type, e.event.time
            if etype.startswith("xstate.after."):
                due = prev.extras and (prev.extras.get("timers") or {}).get(etype)
                assert due is not None, f"{mid}[{e.index}]: {etype} fired while not pending (state left?)"
                assert t >= due, f"{mid}[{e.index}]: {etype} fired {due - t} ms early"
                fired[(mid, etype, due)] += 1
                if e.index >= kills[0][0][mid]:  # recorded after the first kill: by a reopened fleet
                    lateness.append(t - max(due, opened_before(t)))
                    if due <= first["opened"] <= t:  # overdue at the last reopen
                        resumed.append(t - first["opened"])
            elif etype.startswith(("xstate.done.actor.", "xstate.error.actor.")):
                iid = etype.split(".", 3)[3]
                inv = prev.extras and (prev.extras.get("invocations") or {}).get(iid)
                assert inv, f"{mid}[{e.index}]: {etype} recorded while the invocation was not running"
                key = invocation_key(iid, inv)
                outcomes[(mid, key)] += 1
                pid = e.event.data.get("pid") if etype.startswith("xstate.done") and e.event.data else None
                done_by[(mid, key)] = (etype.split(".")[1], pid)
    assert all(n == 1 for n in fired.values())  # (mid, event, due) is one arming: it fired once
    assert all(n == 1 for n in outcomes.values())
    assert max(lateness) <= LATE_BOUND, f"a timer fired {max(lateness)} ms late after a reopen"

    # every timer pending at a kill: the earliest of its machine fires (exactly once); the others, whose
    # state that firing leaves, never (nothing but recovery sends events after the first kill)
    with open(effects) as f:
        effect_pids = collections.defaultdict(list)
        for line in f:
            p = line.split()
            if len(p) == 3:
                effect_pids[(p[0], p[1])].append(int(p[2]))
    figures = []
    for k, (lengths, timers, invocations) in enumerate(kills):
        for mid, pending in timers.items():
            earliest = min(pending, key=lambda e: (pending[e], e))
            nxt = entries[mid][lengths[mid]]
            assert nxt.event is not None and nxt.event.type == earliest, (mid, pending, nxt.event)
            assert fired[(mid, earliest, pending[earliest])] == 1
            for e, d in pending.items():
                if e != earliest:
                    assert fired[(mid, e, d)] == 0, f"{mid}: {e} fired after its state was left"
        rerun = errors = 0
        for mid, invs in invocations.items():
            for iid, inv in invs.items():
                key = invocation_key(iid, inv)
                assert outcomes[(mid, key)] == 1, f"{mid} {key}: running at kill {k + 1}, no outcome"
                how, pid = done_by[(mid, key)]
                if how == "done":  # run again after the kill, by a later process, its effect on file
                    assert pid != opens[k]["pid"] and pid in effect_pids[(mid, key)], (mid, key, pid)
                    rerun += 1
                else:
                    errors += 1
        overdue = sum(1 for t in timers.values() for d in t.values() if d <= opens[k + 1]["opened"])
        figures.append(
            f"kill {k + 1}: {sum(len(t) for t in timers.values())} timers pending in {len(timers)} machines "
            f"({overdue} overdue at the reopen), {sum(len(i) for i in invocations.values())} invocations running, "
            f"{rerun} of them run again to done by a later process, {errors} failed 3 times: error"
        )
    # at least once across processes, but once per process: a process never runs an invocation twice
    twice = {k: v for k, v in effect_pids.items() if len(set(v)) < len(v)}
    assert not twice, f"{len(twice)} invocations ran twice in one process, e.g. {next(iter(twice.items()))}"
    duplicates = sum(len(v) - 1 for v in effect_pids.values())
    dup_keys = sum(1 for v in effect_pids.values() if len(v) > 1)
    resume = first["started"] - first["opened"]
    assert recovered_timers >= 500 and resumed  # the last reopen had hundreds of timers to resume, some late
    record_property("duplicate_service_effects", duplicates)
    print(
        f"{MACHINES} machines; killed {pause:.2f} s into the load and {pause2:.2f} s into recovery\n"
        + "\n".join(figures)
        + f"\nlast reopen ran {t4 - t3:.1f} s, audit+replay {t5 - t4:.1f} s"
        + f"\n{sum(outcomes.values())} invocation outcomes, {len(effect_pids)} side effects by key, "
        f"{duplicates} duplicates ({dup_keys} keys)\nlast reopen: recovered {recovered_timers} timers and "
        f"{recovered_invocations} invocations in {resume:.0f} ms with {len(threads)} threads; the "
        f"{len(resumed)} overdue timers fired within {max(resumed):.0f} ms of the reopen; timers fired after a reopen: {len(lateness)}, at most {max(lateness):.0f} ms after max(due, reopen)"
    )
