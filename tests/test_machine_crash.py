"""A SIGKILLed machine writer (sync=True) loses no event whose send had returned."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from corelog import Store
from corelog.machine import Machine
from tests.test_interpreter import COUNTER, COUNTER_IMPL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = textwrap.dedent(
    """
    import sys
    from corelog import Store
    from corelog.machine import Machine
    from tests.test_interpreter import COUNTER, COUNTER_IMPL
    log = Store(sys.argv[1], sync=True).get("m")
    if sys.argv[2] == "sync":
        m = Machine(log, COUNTER, **COUNTER_IMPL)
        m.send("START", 0)
        print("ready", flush=True)
        for _ in range(100_000):
            snap = m.send("INCREMENT")
            print(snap.context["counter"], flush=True)
    else:  # the trio face: the durable append runs in a worker thread
        import trio
        from corelog.machine import Coremachine

        async def main():
            cm = Coremachine(log, COUNTER, **COUNTER_IMPL)
            await cm.send("START", 0)
            print("ready", flush=True)
            for _ in range(100_000):
                snap = await cm.send("INCREMENT")
                print(snap.context["counter"], flush=True)

        trio.run(main)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("face", ["sync", "trio"])
def test_sigkill_loses_no_returned_send(tmp_path, face):
    path = str(tmp_path / "s")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, path, face],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    last = 0
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        deadline = time.monotonic() + 30
        for _ in range(120):
            last = int(proc.stdout.readline())
            assert time.monotonic() < deadline
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    with Store(path) as s:
        m = Machine(s.get("m"), COUNTER, **COUNTER_IMPL)
        assert m.context["counter"] >= last >= 120
        assert m.log.audit().ok
        assert [e.context["counter"] for e in m.history[2:]] == list(range(1, m.context["counter"] + 1))
