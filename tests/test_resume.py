"""A flow process killed with SIGKILL mid-stage, then run again: it completes, reusing finished stages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import CORPUS
from voxflow.storage.catalog import TABLES, Catalog
from voxflow.storage.store import LocalStore

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _start(tmp_path: Path, files: list[str], **extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VOXFLOW_", "AWS_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),  # ephemeral API: its SQLite database outlives the process
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        VOXFLOW_HOME=str(tmp_path / "home"),
        VOXFLOW_GPU_SLOTS="1",  # the gain stage holds the one gpu slot while it runs
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "tests.run_chain", *files],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _raw(catalog: Catalog, table: str) -> pd.DataFrame:
    """Every row the table holds (a doubled row would show here)."""
    return catalog.dataset(table).to_table().to_pandas() if catalog.version(table) is not None else pd.DataFrame()


def test_killed_mid_stage_then_rerun_reuses_finished_stages(tmp_path):
    files = [str(CORPUS / "denoise_babble" / "speech.wav"), str(CORPUS / "sep_2spk_mixture" / "mixture_2.wav")]
    started = tmp_path / "gain-started"
    first = _start(tmp_path, files, VOXFLOW_TEST_STAGE_STARTED=str(started), VOXFLOW_TEST_STAGE_HOLD_S="600")
    deadline = time.monotonic() + 180
    while not started.exists():
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "the gain stage never started"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # holding the gain stage's cache lock and the gpu slot
    first.wait()

    store = LocalStore(tmp_path / "home")
    catalog = Catalog(store)
    before = catalog.frame("stage_runs")
    assert set(before["stage"]) <= {"ingest", "gain", "levels"} and "ingest" in set(before["stage"])

    second = _start(tmp_path, files)
    try:
        output, _ = second.communicate(timeout=240)  # would hang on a stale lock or a leaked gpu slot
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    assert second.returncode == 0, output
    assert "2 file(s):" in output and "0 failed" in output

    runs = catalog.frame("stage_runs")
    computed = runs[(runs["status"] == "completed") & ~runs["cache_hit"]]
    assert computed["stage"].value_counts().to_dict() == {"ingest": 2, "gain": 2, "levels": 2}
    ingested_first = set(before[before["stage"] == "ingest"]["input_sha256"])
    rerun = runs[~runs["task_run_id"].isin(before["task_run_id"])]
    assert set(rerun[rerun["stage"] == "ingest"]["input_sha256"]) >= ingested_first
    assert rerun[(rerun["stage"] == "ingest") & rerun["input_sha256"].isin(ingested_first)]["cache_hit"].all()

    for name, spec in TABLES.items():  # no duplicate rows, even before de-duplication
        raw = _raw(catalog, name)
        if len(raw):
            assert not raw.duplicated(list(spec.primary_key)).any(), name
    assert not [p for p in (tmp_path / "home").rglob(".tmp-*") if p.is_file()], "partial objects left behind"
    for key in store.list("artifacts/"):
        assert store.get_bytes(key)  # every visible object is whole (sha256 verified on S3, non-empty here)
