"""Running a notebook of notebooks/ top to bottom, as the suite does, and what its outputs hold."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, folder: Path) -> tuple[str, list[dict]]:
    """Run the notebook in ``folder``; its text outputs joined, and every output."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    errors = [f"{o['ename']}: {o['evalue']}" for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"{name}: {errors}"
    nbformat.write(notebook, folder / f"{name}.executed.ipynb")  # to look at when a check fails
    shown = ("text/plain", "text/markdown", "text/html")
    text = "".join(str(o.get("text", "")) + "".join(str(o.get("data", {}).get(k, "")) for k in shown) for o in outputs)
    return text, outputs


def images(outputs: list[dict]) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)
