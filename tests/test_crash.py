"""Crash safety and one-writer rules, with real child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from corelog import Store
from corelog.errors import StoreLocked

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WRITER = textwrap.dedent(
    """
    import sys
    from corelog import Store
    store = Store(sys.argv[1], sync=True)
    log = store.get("crash")
    i = log.length
    print("ready", flush=True)
    while i < 100_000:
        batch = [b"entry %d" % j for j in range(i, i + 1 + i % 3)]
        i = log.append(batch if len(batch) > 1 else batch[0])
        print(i, flush=True)
    """
)


def _spawn(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [5, 150])
def test_sigkill_loses_nothing_returned(tmp_path, kill_after):
    path = str(tmp_path / "store")
    proc = _spawn(WRITER, path)
    reported = 0
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        deadline = time.monotonic() + 30
        for _ in range(kill_after):
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            reported = int(line)
            assert time.monotonic() < deadline
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    with Store(path) as s:
        log = s.get("crash")
        assert log.length >= reported
        report = log.audit()
        assert report.ok, report.problems
        assert list(log) == [b"entry %d" % j for j in range(log.length)]
        log.append(b"after the crash")  # and the lock was released by the kernel
        assert log.audit().ok


HOLDER = textwrap.dedent(
    """
    import sys, time
    from corelog import Store
    store = Store(sys.argv[1])
    store.get("a").append(b"x")
    print("holding", flush=True)
    sys.stdin.readline()
    """
)


def test_second_writer_process_gets_clear_error(tmp_path):
    path = tmp_path / "store"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "holding"
        with pytest.raises(StoreLocked, match=f"pid {proc.pid}.*readonly=True"):
            Store(path)
        with Store(path, readonly=True) as ro:  # reading alongside is fine
            assert ro.get("a")[0] == b"x"
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
    with Store(path) as s:  # released when the holder exits
        assert s.get("a").length == 1


READER = textwrap.dedent(
    """
    import sys, time
    from corelog import Store, _crypto
    store = Store(sys.argv[1], readonly=True)
    log = store.get("live")
    last = 0
    seen = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and last < int(sys.argv[2]):
        h = log.head()
        assert h.length >= last, (h.length, last)
        assert _crypto.verify(h.signable(log.key), h.signature, log.public_key), "bad head seen"
        if h.length not in seen and len(seen) % 10 == 0:
            report = log.audit()
            assert report.ok and report.length >= h.length, report
        seen.add(h.length)
        last = h.length
    print(len(seen), last, flush=True)
    """
)


@pytest.mark.slow
def test_reader_process_sees_consistent_heads(tmp_path):
    path = tmp_path / "store"
    target = 3000
    with Store(path, sync=False) as s:
        log = s.get("live")
        log.append(b"first")
        reader = _spawn(READER, str(path), str(target))
        deadline = time.monotonic() + 20
        while log.length < target and time.monotonic() < deadline:
            log.append([b"v%d" % log.length] * (1 + log.length % 5))
            time.sleep(0.0005)
        out, err = reader.communicate(timeout=30)
    assert reader.returncode == 0, err
    distinct, last = map(int, out.split())
    assert last >= target and distinct > 5
