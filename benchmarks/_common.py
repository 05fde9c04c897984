"""Shared by the benchmark scripts: the result table, and the JS anchors run in the same run.

The anchors (../shared/anchors: coremachine and Hypercore) are optional: they need node and npm; the folder
is copied to a temp dir and installed once. ``run_anchor`` returns the parsed ``RESULT {...}`` line, or a
string saying why it did not run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ANCHORS = Path(__file__).resolve().parent.parent.parent / "shared" / "anchors"
WORK = Path(tempfile.gettempdir()) / "corelog-anchors"


def run_anchor(script: str, *args: object, timeout: int = 300) -> dict | str:
    if not shutil.which("node") or not shutil.which("npm"):
        return "node/npm not installed"
    if not ANCHORS.exists():
        return f"{ANCHORS} not found"
    try:
        if not (WORK / "node_modules" / "hypercore").exists():
            shutil.copytree(ANCHORS, WORK, dirs_exist_ok=True)
            subprocess.run(
                ["npm", "install", "--legacy-peer-deps", "--no-audit", "--no-fund"],
                cwd=WORK,
                check=True,
                capture_output=True,
                timeout=600,
            )
        out = subprocess.run(
            ["node", script, *map(str, args)],
            cwd=WORK,
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
        ).stdout
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        return json.loads(line[len("RESULT ") :])
    except Exception as exc:  # optional comparison: report why it did not run
        return f"not run ({type(exc).__name__}: {str(exc)[:80]})"


QUICK_NOTE = (
    "--quick: small sizes, to check that the script runs; per-call costs (fsync, signing, process start) weigh "
    "more at these sizes, so the targets are judged only on a full run (without --quick)"
)


def print_table(title: str, rows: list[tuple[str, str, str]], *, quick: bool = False) -> None:
    """Print ``(measure, result, target)`` rows under a header naming the machine.

    With ``quick`` the OK/MISS verdicts are withheld (``not judged``) and a note says why.
    """
    w = max(len(r[0]) for r in rows)
    print(f"{title}  (python {sys.version.split()[0]}, {os.cpu_count()} cpus)")
    print(f"{'measure':<{w}}  {'result':>22}  target")
    print("-" * (w + 60))
    for name, val, target in rows:
        if quick and re.search(r"\b(OK|MISS)\b", target):
            target = re.sub(r"\s*\b(OK|MISS)\b", "", target).rstrip() + "  (not judged)"
        print(f"{name:<{w}}  {val:>22}  {target}")
    if quick:
        print(QUICK_NOTE)
