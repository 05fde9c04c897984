"""SIGKILL a fleet under load (thousands of machines, a listener with a side effect), twice, then restart.

After the restarts: no acknowledged event is lost, and every committed transition's listener ran at
least once (the side effect is a line in a separate file; duplicates are counted and reported).
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from corelog import Store
from corelog.machine import decode_entry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MACHINES = 2000
CHILD = textwrap.dedent(
    """
    import sys
    from corelog.machine import Fleet
    from tests.test_fleet import CHAT, CHAT_IMPL

    path, acked_path, effects_path, mode, machines = sys.argv[1:6]
    machines = int(machines)
    fleet = Fleet(path, sync=True)
    fleet.register("chat", CHAT, CHAT_IMPL)
    effects = open(effects_path, "a")

    def effect(change, services, send):  # the side effect: one line per call, in the OS before it returns
        effects.write(f"{change.id} {change.index}\\n")
        effects.flush()

    fleet.listener("effects", effect, start="beginning")
    with fleet:
        print("ready", flush=True)
        if mode == "drain":
            assert fleet.listeners.wait_idle(120)
            print("drained", fleet.listeners.stats()["effects"], flush=True)
        elif mode == "trio":  # one task per machine, each awaiting its events one after another
            import trio

            acked = open(acked_path, "a")

            async def conversation(mid):
                n = 0
                while True:
                    snap = await fleet.asend(mid, "MSG" if n or mid in fleet else "INQUIRY", {"name": mid})
                    n += 1
                    acked.write(f"{mid} {snap.context['turns']}\\n")
                    acked.flush()

            async def main():
                async with trio.open_nursery() as nursery:
                    for i in range(machines):
                        nursery.start_soon(conversation, f"m{i}")

            trio.run(main)
        else:
            acked = open(acked_path, "a")
            while True:
                ids = [f"m{i}" for i in range(machines)]
                waits = [
                    (mid, fleet.post(mid, "MSG" if mid in fleet else "INQUIRY", {"name": mid})) for mid in ids
                ]
                lines = []
                for mid, wait in waits:
                    snap = wait()
                    lines.append(f"{mid} {snap.context['turns']}\\n")
                acked.write("".join(lines))
                acked.flush()
    """
)


def _run(path: str, acked: str, effects: str, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, path, acked, effects, mode, str(MACHINES)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
        cwd=ROOT,
    )


@pytest.mark.slow
@pytest.mark.parametrize("face", ["load", "trio"])
def test_sigkill_under_load_loses_no_ack_and_no_listener_call(tmp_path, record_property, face):
    path, acked, effects = str(tmp_path / "s"), str(tmp_path / "acked"), str(tmp_path / "effects")
    rng = random.Random(os.environ.get("FLEET_CRASH_SEED", time.time_ns()))
    for _ in range(2):
        proc = _run(path, acked, effects, face)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
            # under load: wait for one acknowledged round, then kill at a random moment
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                if os.path.exists(acked) and os.path.getsize(acked) > 0:
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0.05, 1.0))
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
    proc = _run(path, acked, effects, "drain")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "drained" in out

    # every acknowledged event is in its machine's log
    acked_turns: dict[str, int] = {}
    with open(acked) as f:
        for line in f:
            mid, turns = line.split()
            acked_turns[mid] = max(acked_turns.get(mid, -1), int(turns))
    if face == "load":  # rounds: the load ran long enough to acknowledge every machine at least once
        assert len(acked_turns) == MACHINES
    assert acked_turns
    store = Store(path, readonly=True)
    committed: set[tuple[str, int]] = set()
    for i in range(MACHINES):
        mid = f"m{i}"
        if f"fleet:{mid}" not in store:
            assert mid not in acked_turns
            continue
        log = store.get(f"fleet:{mid}", create=False)
        n = log.length
        last = decode_entry(n - 1, log.get(n - 1))
        assert last.context["turns"] >= acked_turns.get(mid, -1), mid
        committed.update((mid, j) for j in range(1, n))
    store.close()

    # every committed transition's listener ran at least once; count the duplicates
    with open(effects) as f:
        calls = collections.Counter(
            tuple((p[0], int(p[1]))) for p in (line.split() for line in f) if len(p) == 2
        )
    missing = committed - set(calls)
    assert not missing, (
        f"{len(missing)} committed transitions never reached the listener, e.g. {sorted(missing)[:5]}"
    )
    duplicates = sum(c - 1 for c in calls.values())
    record_property("transitions", len(committed))
    record_property("duplicate_listener_calls", duplicates)
    print(
        f"\n{len(committed)} committed transitions, {sum(calls.values())} listener calls, {duplicates} duplicates"
    )
    assert set(calls) <= committed  # nothing delivered that was not committed
