"""The time-travel notebook runs top to bottom (nbclient), so it cannot rot."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "time_travel.ipynb"


def test_time_travel_notebook_runs(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("<table" in h and "POUR" in h for h in html), "the history renders as an HTML table"
    assert any(o.get("data", {}).get("image/png") for o in outputs), "the plot is drawn"
    text = "".join(o.get("text", "") for o in outputs)
    assert "refused:" in text and "fork 1" in text
