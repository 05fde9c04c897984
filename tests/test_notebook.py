"""The time-travel notebook runs top to bottom, and the committed copy shows its results to whoever opens it.

It is executed with this interpreter as the kernel (examples/run_notebook.py writes a kernel spec into a
temporary folder), so no kernel has to be installed into the user's home.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "examples" / "time_travel.ipynb"
RUNNER = REPO / "examples" / "run_notebook.py"


def _runner():
    spec = importlib.util.spec_from_file_location("run_notebook", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _outputs(nb) -> list:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def _check_results(nb) -> None:
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("<table" in h and "POUR" in h for h in html), "the history renders as an HTML table"
    assert any("context.level" in h for h in html), "to_dataframe() gives a pandas table"
    assert any(o.get("data", {}).get("image/png") for o in outputs), "the plot is drawn"
    text = "".join(o.get("text", "") for o in outputs)
    assert "position 7 full" in text and "position 8 idle" in text and "position 4 filling" in text
    assert "refused:" in text and "fork 1" in text


def test_time_travel_notebook_runs(tmp_path, monkeypatch):
    # the kernel imports this checkout, whatever checkout the editable install points at
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    before = dict(os.environ)
    nb = _runner().execute(NOTEBOOK, cwd=tmp_path)
    _check_results(nb)
    assert list(tmp_path.iterdir()) == [], "the notebook cleans up its temporary store"
    assert dict(os.environ) == before, "the kernel spec and runtime files lived in a temporary folder"


def test_the_committed_notebook_shows_its_results():
    """Opened on GitHub or in Jupyter without running anything, the notebook already shows every result."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), (
        "commit the notebook executed (run_notebook.py --inplace)"
    )
    _check_results(nb)


def test_run_notebook_prints_the_results_in_the_terminal(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    out = tmp_path / "out" / "executed.ipynb"
    p = subprocess.run(
        [sys.executable, str(RUNNER), "--output", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 0, p.stderr
    assert "position 7 full" in p.stdout and "[plot:" in p.stdout and "[table:" in p.stdout
    assert "fork 1 entries" in p.stdout
    _check_results(nbformat.read(out, as_version=4))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out"]
