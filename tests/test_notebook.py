"""The time-travel notebook runs top to bottom (nbclient, kernel "python3"), so it cannot rot."""

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "examples" / "time_travel.ipynb"


def test_time_travel_notebook_runs(tmp_path, monkeypatch):
    # the kernel imports this checkout, whatever checkout the editable install points at
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("<table" in h and "POUR" in h for h in html), "the history renders as an HTML table"
    assert any("context.level" in h for h in html), "to_dataframe() gives a pandas table"
    assert any(o.get("data", {}).get("image/png") for o in outputs), "the plot is drawn"
    text = "".join(o.get("text", "") for o in outputs)
    assert "position 7 full" in text and "position 8 idle" in text and "position 4 filling" in text
    assert "refused:" in text and "fork 1" in text
    assert list(tmp_path.iterdir()) == [], "the notebook cleans up its temporary store"
