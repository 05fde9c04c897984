"""Run a notebook top to bottom and show its results in the terminal (``jupyter execute`` shows none).

    python examples/run_notebook.py                                   # examples/time_travel.ipynb
    python examples/run_notebook.py --output build/time_travel.ipynb  # also save the executed copy
    python examples/run_notebook.py --inplace                         # refresh the committed copy

The kernel is this interpreter (a kernel spec in a temporary folder: nothing is installed into your
home); text outputs are printed as they are, HTML tables and plots as one-line placeholders. Open
the saved copy (or the committed notebook, which is stored executed) in Jupyter to see tables and plots.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNEL = "corelog-python"


@contextmanager
def this_interpreter_as_kernel():
    """A kernel spec for ``sys.executable`` found first on JUPYTER_PATH; runtime files in the same temp dir."""
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "JUPYTER_RUNTIME_DIR")}
    with tempfile.TemporaryDirectory(prefix="corelog-kernel-") as tmp:
        spec = Path(tmp, "kernels", KERNEL)
        spec.mkdir(parents=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        (spec / "kernel.json").write_text(
            json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
        )
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [tmp, saved["JUPYTER_PATH"]]))
        os.environ["JUPYTER_RUNTIME_DIR"] = str(Path(tmp, "runtime"))
        try:
            yield KERNEL
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def execute(path: Path, cwd: Path | None = None, timeout: int = 120):
    """The notebook at ``path`` executed (an nbformat node), the working directory ``cwd``."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    with this_interpreter_as_kernel() as kernel:
        resources = {"metadata": {"path": str(cwd or Path.cwd())}}
        NotebookClient(nb, timeout=timeout, kernel_name=kernel, resources=resources).execute()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    return nb


def text_of(output) -> str:
    """What a terminal can show of one cell output."""
    kind = output.get("output_type")
    if kind == "stream":
        return output.get("text", "").rstrip("\n")
    if kind == "error":
        return f"{output.get('ename')}: {output.get('evalue')}"
    data = output.get("data", {})
    if "image/png" in data:
        return "[plot: open the notebook to see it]"
    if "text/html" in data and "<table" in data["text/html"]:
        plain = data.get("text/plain", "").splitlines()
        return "[table: open the notebook to see it]" + (f" {plain[0]}" if plain else "")
    return data.get("text/plain", "").rstrip("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebook", nargs="?", type=Path, default=HERE / "time_travel.ipynb")
    ap.add_argument("--output", type=Path, help="also write the executed notebook here")
    ap.add_argument("--inplace", action="store_true", help="write the executed notebook back (maintainers)")
    args = ap.parse_args()
    if args.inplace:
        args.output = args.notebook
    try:
        nb = execute(args.notebook)
    except ModuleNotFoundError as exc:
        raise SystemExit(f"{exc}: install the notebook extra: pip install -e '.[notebook]'") from None
    for number, cell in enumerate((c for c in nb.cells if c.cell_type == "code"), 1):
        shown = [t for t in map(text_of, cell.get("outputs", [])) if t]
        if shown:
            print(f"--- cell {number}")
            print("\n".join(shown))
    if args.output:
        import nbformat

        args.output.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, args.output)
        print(f"executed notebook written to {args.output}")


if __name__ == "__main__":
    main()
