"""The library changes no process-wide setting; `corelog sync`/`serve` tune their own process
(a 1 ms GIL switch interval and ``gc.freeze()``: docs/design.md, ``cli._net.own_process``)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()


def test_the_library_leaves_the_switch_interval_and_the_collector_alone(tmp_path):
    interval, frozen = _run(
        f"""
        import gc, sys
        import corelog, corelog.cli, corelog.machine, corelog.replication
        from corelog import Store
        from corelog.machine import Machine
        with Store({str(tmp_path / "s")!r}) as s:
            m = Machine(s.get("m"), {{"id": "c", "initial": "a", "states": {{"a": {{"on": {{"GO": "a"}}}}}}}})
            m.send("GO")
        print(sys.getswitchinterval(), gc.get_freeze_count())
        """
    )
    assert float(interval) == 0.005 and int(frozen) == 0  # CPython's defaults, untouched


def test_corelog_sync_tunes_its_own_process(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: the sync fails after tuning the process
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, interval, frozen = _run(
        f"""
        import gc, sys
        from click.testing import CliRunner
        from corelog import Store
        from corelog.cli import cli
        with Store({str(tmp_path / "w")!r}) as w:
            key = w.get("log").key
        r = CliRunner().invoke(cli, ["sync", {str(tmp_path / "m")!r}, key.hex(), "127.0.0.1:{port}"])
        print(r.exit_code, sys.getswitchinterval(), gc.get_freeze_count())
        """
    )
    assert code != "0"  # nothing to sync from
    assert float(interval) == 0.001 and int(frozen) > 0
