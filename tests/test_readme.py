"""Every block of README.md either runs or is clearly a fragment of a program in examples/.

- bash blocks run as scripts in a scratch directory (examples/, benchmarks/, tests/ linked in), ``python``
  being this interpreter; what they leave behind must be git-ignored (stores go under ``stores/``);
- python blocks are complete programs, run twice in the same scratch directory; a ``print(...)  # text``
  line promises that output line; or they are fragments, announced as such in the sentence before the block,
  naming the complete program in examples/ (run by test_examples.py), which uses every name the fragment calls;
- the first block is the set-up command and the test command, and .ci/run runs exactly those.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = [
    (m.group(1), m.group(2), README[: m.start()]) for m in re.finditer(r"```(\w+)\n(.*?)```", README, re.S)
]
BASH = [code for lang, code, _ in BLOCKS if lang == "bash"]
PYTHON = [(code, before) for lang, code, before in BLOCKS if lang == "python"]
INSTALL = (
    "python3 -m venv .venv && . .venv/bin/activate && python -m pip install -e '.[test,notebook,webrtc]'"
)
TEST_CMD = "python -m pytest -q"


def _commands(block: str) -> list[str]:
    lines = []
    for line in block.splitlines():
        cmd = line.split("  #")[0].strip()
        if cmd and not cmd.startswith("#"):
            lines.append(cmd)
    return lines


@pytest.fixture(scope="module")
def path_with_this_python(tmp_path_factory) -> str:
    """PATH where ``python`` is this interpreter and ``corelog`` its console script (as in the venv)."""
    bindir = tmp_path_factory.mktemp("bin")
    # a wrapper, not a symlink: a symlink to a venv's python does not find the venv's pyvenv.cfg
    wrapper = bindir / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    exe = Path(sys.executable).parent / "corelog"
    dirs = [str(bindir)] + ([str(exe.parent)] if exe.exists() else [])
    return os.pathsep.join(dirs + [os.environ.get("PATH", "")])


def test_first_screen_has_python_version_setup_demo_and_tests():
    assert BLOCKS[0][0] == "bash" and "Python 3.11 or newer" in BLOCKS[0][2]
    first = _commands(BASH[0])
    assert first[0] == INSTALL + " && python examples/two_peer_sync.py" and first[1] == TEST_CMD
    ci = (ROOT / ".ci" / "run").read_text()
    assert f'INSTALL="{INSTALL}"' in ci and 'eval "$INSTALL"' in ci
    assert f'TEST_CMD="{TEST_CMD}"' in ci and "$TEST_CMD" in ci.split('TEST_CMD="', 1)[1]
    assert "--user" not in ci and "ipykernel install" not in ci, ".ci/run writes nothing outside the clone"


def test_readme_links_no_file_outside_the_repo():
    assert "../shared/DESIGN.md" not in README, "design notes users need live in docs/"
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BASH)))
def test_readme_bash_block_runs_and_leaves_nothing_untracked(index, tmp_path, path_with_this_python):
    commands = _commands(BASH[index])
    if index == 0:
        commands = [commands[0][len(INSTALL) + 4 :]]  # the demo; installing and the suite itself are CI's job
    if "hypercore_gateway" in BASH[index] and not (ROOT / "node_modules").is_dir():
        pytest.skip("runs the pinned JS peers: `npm ci` first (.ci/run does)")
    for name in ("examples", "benchmarks", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    script = "set -euo pipefail\n" + "\n".join(commands) + "\n"
    with socket.socket() as s:  # the README's port may be taken on a busy machine: use a free one
        s.bind(("127.0.0.1", 0))
        script = script.replace("7400", str(s.getsockname()[1]))
    env = dict(os.environ, PYTHONPATH=str(ROOT), PATH=path_with_this_python)
    proc = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, (
        f"README block {index} failed:\n{script}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    assert "Traceback" not in proc.stderr
    if "bench_log.py --quick" in script:
        assert "MISS" not in proc.stdout.split("corelog machine")[0] and "--quick: small sizes" in proc.stdout
    left = sorted(p.name for p in tmp_path.iterdir() if not p.is_symlink())
    for name in left:  # what a README command writes in the clone must be git-ignored
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index", f"{name}/x"])
        assert ignored.returncode == 0, (
            f"README block {index} leaves {name!r}, which git would show as untracked"
        )


def _fragment_source(before: str) -> Path | None:
    """The example file a fragment belongs to, if the sentence before the block announces a fragment."""
    intro = before.rstrip().rsplit("\n\n", 1)[-1]
    if "fragment" not in intro:
        return None
    named = re.findall(r"`(examples/[\w./]+\.py)`", intro)
    assert named, f"a fragment must name its complete program in examples/: {intro!r}"
    return ROOT / named[0]


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_readme_python_block_runs_or_is_a_fragment_of_an_example(index, tmp_path):
    code, before = PYTHON[index]
    source = _fragment_source(before)
    if source is not None:  # every name the fragment calls is used by the complete program
        text = source.read_text()
        calls = "\n".join(line.split("#")[0] for line in code.splitlines())  # comments may name other APIs
        for name in sorted(set(re.findall(r"(\w+)\(", calls))):
            assert re.search(rf"\b{name}\b", text), (
                f"the fragment calls {name}(), which {source.name} never uses"
            )
        return
    expected = [m.group(1).strip() for m in re.finditer(r"^\s*print\(.*\)\s+# (.*)$", code, re.M)]
    program = tmp_path / "block.py"
    program.write_text(code)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for run in range(2):  # a second run in the same folder must work too
        proc = subprocess.run(
            [sys.executable, str(program)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, f"README python block {index} (run {run + 1}):\n{code}\n{proc.stderr}"
        assert proc.stdout.splitlines() == expected, (proc.stdout, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["block.py"], "a README program leaves no files"


def test_there_is_a_python_block_of_each_kind():
    kinds = [_fragment_source(before) is not None for _, before in PYTHON]
    assert kinds.count(False) >= 3 and kinds.count(True) >= 1
    assert shutil.which("git"), "the untracked-files check needs git"
