"""Every example script runs as a user would run it (a subprocess, from another directory) and says what it should.

A new script under examples/ is picked up automatically: it must at least exit 0 within the timeout.
two_peer_sync.py is left to its owner's tests (it needs network namespaces and a WebRTC stack).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from corelog.cli import cli

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
SKIP = {"two_peer_sync.py", "run_notebook.py"}  # run_notebook.py: tests/test_notebook.py
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if p.name not in SKIP)

# what each script must print (substrings of stdout, in this order)
EXPECTED = {
    "stream_pipe.py": [
        "yellow cycles=0",
        "red    cycles=0",
        "green  cycles=1",
        "yellow cycles=1",
        "red    cycles=1",
        "green  cycles=2",
        "recorded 7 entries; audit ok: True",
    ],
    "counter.py": [
        "running {'running': True, 'counter': 12}",
        "2 {'running': True, 'counter': 11}",
        "idle ['START', 'INCREMENT', 'INCREMENT', 'STOP']",
    ],
    "mermaid_workflow.py": [
        "shipped {'amount': 30, 'currency': 'EUR'}",
        "['PAY', 'xstate.done.actor.0.order.charging']",
    ],
    "conditions_workflow.py": ["ConditionsWorkflow: decide -> left (done: True)"],
    "chatbot_fleet.py": [
        "t+9s check: 0 timed out",
        "t+13s check: 400 timed out",
        "states: {'inquired': 600, 'timeout': 400}",
        "emails sent: 400; first: ('bob@help.com', 'The person user600 has not responded')",
        "conv-0 history: ['INQUIRY', 'MSG']",
        "conv-0 log audit ok: True",
        "after restart, t+17s check: 600 timed out",
        "emails sent after restart: 600",
    ],
    "order_workflow.py": [
        "20 orders placed",
        "payment calls: 61 (42 failed and were retried)",
        "dead letters: ['order-13']",
        "states: {'placed': 1, 'shipped': 19}",
        "replayed: 1",
        "states: {'shipped': 20}",
        "order-13 history: ['PLACE', 'PAID', 'SHIPPED']",
        "charged 20 orders once each; shipped 20",
    ],
    "log_basics.py": [
        "length=4 fork=0",
        "replica holds: ['hello', 'hola', 'bonjour', 'ciao']",
        "after truncate: ['hello', 'hola', 'hallo'] fork 1",
        "audit writer: True  audit replica: True",
    ],
}


def run_example(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    # the scripts import this checkout, whatever checkout the editable install points at
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_examples_are_found():
    assert "stream_pipe.py" in SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs_and_prints_what_it_should(name, tmp_path):
    p = run_example(name, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    pos = 0
    for expected in EXPECTED.get(name, []):
        found = p.stdout.find(expected, pos)
        assert found >= 0, f"{name}: {expected!r} missing (or out of order) in:\n{p.stdout}"
        pos = found + len(expected)
    assert list(tmp_path.iterdir()) == [], f"{name} left files in the working directory"


def test_stream_pipe_prints_one_line_per_snapshot(tmp_path):
    lines = run_example("stream_pipe.py", cwd=tmp_path).stdout.splitlines()
    assert len(lines) == 7 and [line.split()[0] for line in lines[:6]] == ["yellow", "red", "green"] * 2


def test_counter_example_with_a_store_then_the_cli_audits_it_by_replay(tmp_path, monkeypatch):
    store = tmp_path / "demo-store"
    assert run_example("counter.py", "--store", str(store), cwd=tmp_path).returncode == 0
    p = run_example("counter.py", "--store", str(store), cwd=tmp_path)  # a re-run branches (fork 1)
    assert p.returncode == 0 and "idle ['START', 'INCREMENT', 'INCREMENT', 'STOP']" in p.stdout
    monkeypatch.chdir(REPO)  # --replay imports MODULE from the current directory, as the README shows
    result = CliRunner().invoke(cli, ["audit", str(store), "counter", "--replay", "examples.counter:IMPL"])
    assert result.exit_code == 0, result.output
