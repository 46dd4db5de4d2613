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
    diarized = next(m for m in logs if m.startswith("diarize · sample.wav: "))
    assert "speakers 2" in diarized and "model pyannote/speaker-diarization-community-1" in diarized
    assert any("random-weight test models in" in m and "output is noise" in m for m in logs)
    assert not any("record_cache_hit" in m for m in logs)

    transcribe(paths=[str(JFK)], options=TWO_SPEAKERS)
    runs, logs = _task_runs_and_logs(_latest_flow_run(settings))
    assert sorted(run.name for run in runs) == ["diarize · jfk.flac", "ingest · jfk.flac", "transcribe · jfk.flac"]
    assert sum("cached (computed before, key" in m for m in logs) == 3
    assert not any("record_cache_hit" in m for m in logs)


def _artifacts(flow_run_id: str) -> dict[str, object]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {artifact.key: artifact.data for artifact in found}


def test_outputs_open_from_the_ui_presigned_on_s3(s3_settings, use_store):
    import hashlib
    import re
    import urllib.request

    from voxflow.flows.ingest import ingest

    use_store(s3_settings)
    report = ingest(paths=[str(JFK)])
    artifacts = _artifacts(_latest_flow_run(s3_settings))
    files = artifacts["ingest-files"]
    assert "file://" not in files
    (url,) = re.findall(r"\[audio\.wav\]\((http[^)]+)\)", files)
    assert url.startswith(s3_settings.endpoint_url) and "X-Amz-Signature=" in url
    assert s3_settings.secret_access_key not in url
    with urllib.request.urlopen(url, timeout=10) as response:  # what a browser does with the link
        body = response.read()
    assert hashlib.sha256(body).hexdigest() == report.outcomes[0].result.artifact.sha256


def test_outputs_on_a_local_store_are_paths_and_failed_files_say_why(tmp_path, use_store):
    import json

    from voxflow.flows.ingest import ingest
    from voxflow.flows.pipelines import FilesFailed

    settings = StoreSettings(location=str(tmp_path / "store"))
    use_store(settings)
    broken = tmp_path / "broken <take 1>.wav"
    broken.write_bytes(b"RIFF" + b"\0" * 40)
    with pytest.raises(FilesFailed):
        ingest(paths=[str(JFK), str(broken)])
    flow_run_id = _latest_flow_run(settings)
    artifacts = _artifacts(flow_run_id)
    files = artifacts["ingest-files"]
    assert "file://" not in files and f"`{tmp_path / 'store'}/artifacts/" in files
    assert "### broken \\<take 1\\>.wav · failed" in files  # the name as it is, not eaten as HTML
    rows = (
        json.loads(artifacts["ingest-summary"])
        if isinstance(artifacts["ingest-summary"], str)
        else artifacts["ingest-summary"]
    )
    failed = next(r for r in rows if r["status"] == "failed")
    assert list(failed)[-1] == "error" and failed["error"].startswith("ingest: cannot decode")

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    assert state.type.value == "FAILED" and state.name == "Partially failed"
    assert "failed: broken <take 1>.wav: ingest:" in state.message


def test_a_stage_function_called_as_is_outside_prefect_still_runs_and_records(tmp_path):
    """The plain-Python route (bench/bench_e2e.py's baseline): no task run, so no run logger, and no error."""
    from voxflow.storage.catalog import Catalog
    from voxflow.storage.store import open_store
    from voxflow.tasks.ingest import IngestOptions, ingest_file

    settings = StoreSettings(location=str(tmp_path / "store"))
    result = ingest_file.fn(str(JFK), IngestOptions(), settings)
    assert result.summary()["duration_s"] == 11.0
    (row,) = Catalog(open_store(settings)).frame("stage_runs").to_dict("records")
    assert row["file"] == "jfk.flac" and row["audio_s"] == pytest.approx(11.0) and row["status"] == "completed"
