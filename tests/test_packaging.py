"""Packaging and layering: what a `pip install` gives, what each layer imports, optional WebRTC."""

from __future__ import annotations

import ast
import importlib.util
import io
import os
import subprocess
import sys
import tomllib
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "corelog"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.add(".".join(base + ([node.module] if node.module else [])))
            else:
                out.add(node.module or "")
    return out


def _layer_violations(files, forbidden: tuple[str, ...]) -> list[tuple[str, str]]:
    return [
        (str(f.relative_to(ROOT)), name)
        for f in files
        for name in _imports(f)
        if any(name == p or name.startswith(p + ".") for p in forbidden)
    ]


def test_log_modules_import_no_upper_layer():
    files = [*PKG.glob("_*.py"), PKG / "errors.py", PKG / "__init__.py"]
    assert len(files) >= 5
    assert _layer_violations(files, ("corelog.machine", "corelog.replication", "corelog.cli")) == []


def test_replication_imports_neither_machine_nor_cli_and_machine_not_the_cli():
    replication = list((PKG / "replication").rglob("*.py"))
    assert _layer_violations(replication, ("corelog.machine", "corelog.cli")) == []
    assert (
        _layer_violations(list((PKG / "machine").rglob("*.py")), ("corelog.cli", "corelog.replication")) == []
    )


def test_layering_holds_at_run_time():
    code = (
        "import sys, corelog; assert not [m for m in sys.modules if m.startswith(('corelog.machine', "
        "'corelog.replication', 'corelog.cli'))], sorted(sys.modules); "
        "import corelog.replication; assert 'corelog.machine' not in sys.modules; "
        "assert 'aiortc' not in sys.modules, 'aiortc is imported only when WebRTC is used'"
    )
    p = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_replication_works_without_aiortc_and_webrtc_says_which_extra_to_install():
    code = """
import sys
sys.modules["aiortc"] = None  # as if the webrtc extra were not installed
import trio
import corelog.replication as r
from corelog.replication import connect_webrtc, memory_signaling_pair
a, _ = memory_signaling_pair()
try:
    trio.run(lambda: connect_webrtc(a, initiator=True))
except ImportError as exc:
    print(exc)
else:
    raise SystemExit("no ImportError")
"""
    p = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "pip install 'corelog[webrtc]'" in p.stdout


def test_pyproject_core_install_extras_and_license():
    project = PYPROJECT["project"]
    assert project["requires-python"] == ">=3.11"
    assert not [d for d in project["dependencies"] if d.startswith(("aiortc", "av"))], "WebRTC is an extra"
    assert any(d.startswith("aiortc") for d in project["optional-dependencies"]["webrtc"])
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]  # SPDX (PEP 639)
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"][0]  # the first to accept SPDX strings
    assert not [
        c for c in project.get("classifiers", []) if c.startswith("License ::")
    ]  # deprecated with SPDX


def test_every_package_is_in_the_wheel():
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["corelog*"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in PKG.rglob("__init__.py")}
    from setuptools import find_packages

    assert set(find_packages(str(ROOT), include=find["include"])) == on_disk


def test_bench_quick_runs_withhold_their_verdicts():
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = [("append", "4,000 /s", ">= 15,000 /s  MISS"), ("raw", "400 /s", "baseline")]
    for quick in (False, True):
        out = io.StringIO()
        with redirect_stdout(out):
            module.print_table("t", rows, quick=quick)
        text = out.getvalue()
        if quick:
            assert "MISS" not in text and "(not judged)" in text and "--quick: small sizes" in text
            assert "baseline  (not judged)" not in text
        else:
            assert "MISS" in text and "not judged" not in text
