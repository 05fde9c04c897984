"""The machine quickstart (coremachine's README example, made Pythonic).

Run: python3 examples/counter.py [--store DIR]   (default: a temporary store)
``IMPL`` is importable, e.g. for ``corelog audit DIR counter --replay examples.counter:IMPL``.
"""

import argparse
import tempfile

from corelog import Store
from corelog.machine import Machine

definition = {
    "id": "counter",
    "initial": "idle",
    "context": {"running": False, "counter": 0},
    "states": {
        "idle": {"on": {"START": {"target": "running", "actions": "start"}}},
        "running": {
            "on": {
                "INCREMENT": {"actions": "increment"},
                "STOP": {"target": "idle", "actions": "stop"},
            }
        },
    },
}


def start(ctx, event):
    ctx["running"] = True
    ctx["counter"] = event.data


def increment(ctx, event):
    ctx["counter"] += 1


def stop(ctx, event):
    ctx["running"] = False


IMPL = {"actions": {"start": start, "increment": increment, "stop": stop}}


def main(path: str) -> None:
    with Store(path) as store:
        m = Machine(store.get("counter"), definition, **IMPL)
        if len(m.history) > 1:
            m.truncate(1)  # a re-run starts over (fork + 1): the log keeps its signed history
        m.send("START", 10)
        m.send("INCREMENT")
        m.send("INCREMENT")
        print(m.state, dict(m.context))  # running {'running': True, 'counter': 12}

        m.backward()  # time travel: the cursor moves, the log does not
        print(m.position, dict(m.context))  # 2 {'running': True, 'counter': 11}
        m.live()
        m.send("STOP")
        print(
            m.state, [e.event.type for e in m.history[1:]]
        )  # idle ['START', 'INCREMENT', 'INCREMENT', 'STOP']


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", help="store directory (default: a temporary one)")
    args = ap.parse_args()
    if args.store:
        main(args.store)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(tmp)
