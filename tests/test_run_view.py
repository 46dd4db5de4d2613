"""What a user reads of a run in Prefect: task runs named after their stage and file, log lines that say
what happened to each file, and no misleading hook lines."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogWorker

from tests.conftest import CORPUS
from tests.test_analysis_flows import TWO_SPEAKERS
from voxflow.flows.transcribe import transcribe
from voxflow.storage.settings import StoreSettings

pytestmark = pytest.mark.usefixtures("prefect_harness")

JFK = CORPUS / "asr_en_jfk" / "jfk.flac"
SAMPLE = CORPUS / "diar_2spk_pyannote" / "sample.wav"


def _task_runs_and_logs(flow_run_id: str) -> tuple[list, list[str]]:
    APILogWorker.drain_all(timeout=30)
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return runs, [log.message for log in logs]


def _latest_flow_run(settings: StoreSettings) -> str:
    from voxflow.storage.catalog import Catalog
    from voxflow.storage.store import open_store

    rows = Catalog(open_store(settings)).frame("stage_runs")
    return rows["flow_run_id"].iloc[-1]


def test_task_runs_name_stage_and_file_and_logs_say_what_happened(tmp_path, use_store, use_models):
    use_models("pyannote", "whisper")
    settings = StoreSettings(location=str(tmp_path / "store"))
    use_store(settings)
    transcribe(paths=[str(JFK), str(SAMPLE)], options=TWO_SPEAKERS, parallel_files=2)
    runs, logs = _task_runs_and_logs(_latest_flow_run(settings))

    names = sorted(run.name for run in runs)
    assert names == sorted(
        f"{stage} · {file}" for stage in ("ingest", "diarize", "transcribe") for file in ("jfk.flac", "sample.wav")
    )
    line = next(m for m in logs if m.startswith("transcribe · jfk.flac: "))
    assert "s of audio" in line and "× real time" in line and "on cpu" in line and "language" in line
    assert any(m.startswith("diarize · sample.wav: ") and "speakers 2" in m for m in logs)
    assert any("random-weight test models in" in m and "output is noise" in m for m in logs)
    assert not any("record_cache_hit" in m for m in logs)

    transcribe(paths=[str(JFK)], options=TWO_SPEAKERS)
    runs, logs = _task_runs_and_logs(_latest_flow_run(settings))
    assert sorted(run.name for run in runs) == ["diarize · jfk.flac", "ingest · jfk.flac", "transcribe · jfk.flac"]
    assert sum("cached (computed before, key" in m for m in logs) == 3
    assert not any("record_cache_hit" in m for m in logs)
