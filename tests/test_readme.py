"""Every command in README.md runs: each ```bash block is executed as a script in a scratch directory.

The install step of the first block is what CI itself runs (`.ci/run`), and the test command is this suite, so
those two are checked against `.ci/run` instead of being run again here.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.S)
INSTALL = "python3 -m pip install -e '.[test,notebook]' && "
TEST_CMD = "python3 -m pytest -q"


def _commands(block: str) -> list[str]:
    lines = []
    for line in block.splitlines():
        cmd = line.split("  #")[0].strip()
        if cmd and not cmd.startswith("#"):
            lines.append(cmd)
    return lines


def test_first_screen_has_setup_demo_and_test_commands():
    first = _commands(BLOCKS[0])
    assert first[0].startswith(INSTALL) and first[1] == TEST_CMD
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -e '.[test,notebook]'" in ci and f'TEST_CMD="{TEST_CMD}"' in ci


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path):
    commands = _commands(BLOCKS[index])
    if index == 0:
        commands = [commands[0][len(INSTALL) :]]  # the demo; installing and the suite itself are CI's job
    for name in ("examples", "benchmarks", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    script = "set -euo pipefail\n" + "\n".join(commands) + "\n"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, (
        f"README block {index} failed:\n{script}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


def test_readme_machine_snippet_runs(tmp_path, monkeypatch):
    block = re.search(
        r"```python\n(from corelog import Store\nfrom corelog.machine import Machine.*?)```", README, re.S
    )
    assert block
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    m = namespace["m"]
    assert m.log.fork == 1 and len(m.history) == 2 and m.state == "running"
