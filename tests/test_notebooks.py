"""Notebooks run top to bottom against a catalog filled by a real flow run."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import CORPUS
from voxflow.flows.ingest import ingest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.usefixtures("prefect_harness")
def test_catalog_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.delenv("VOXFLOW_STORAGE", raising=False)
    monkeypatch.setenv("VOXFLOW_HOME", str(tmp_path / "store"))
    ingest(paths=[str(CORPUS / "asr_en_jfk"), str(CORPUS / "denoise_babble")])
    notebook = nbformat.read(NOTEBOOKS / "catalog.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = "".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "3 files" in outputs and "jfk.flac" in outputs
    assert not any(o.get("output_type") == "error" for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
