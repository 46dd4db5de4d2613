"""The scheduled ``ingest_folder`` flow: new files only, failures isolated, S3 faults healed, Dask scale-out."""

from __future__ import annotations

import dataclasses
import os
import shutil

import boto3
import pytest

from tests.conftest import CORPUS
from tests.synth import tone_and_noise, write_audio
from voxflow.flows.ingest_folder import ingest_folder
from voxflow.flows.pipelines import FilesFailed
from voxflow.storage.keys import parse_location
from voxflow.storage.settings import StoreSettings

pytestmark = pytest.mark.usefixtures("prefect_harness")
CORPUS_FILES = 9


def _artifacts_of_run(state) -> dict:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    return {a.key: a for a in artifacts if a.flow_run_id == state.state_details.flow_run_id}


def test_corpus_then_everything_already_processed(tmp_path, use_store):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    first = ingest_folder(source=str(CORPUS), return_state=True)
    report = first.result()
    assert first.is_completed() and report.count("done") == CORPUS_FILES
    artifacts = _artifacts_of_run(first)
    assert artifacts["ingest-folder-progress"].data == 100.0
    table = artifacts["ingest-folder-summary"]
    assert "asr_en_jfk/jfk.flac" in str(table.data)  # one row per file (its outputs: the files artifact)
    files = artifacts["ingest-folder-files"].data  # where each output is: a path on a local store
    assert f"`{tmp_path / 'store'}/artifacts/" in files and "/ingest/" in files and "file://" not in files

    second = ingest_folder(source=str(CORPUS)).summary()
    assert second == f"{CORPUS_FILES} file(s): 0 done, 0 cached, {CORPUS_FILES} already processed, 0 failed"
    assert len(catalog.frame("processed")) == CORPUS_FILES
    assert catalog.frame("stage_runs")["cache_hit"].sum() == 0  # skipped files never reach their stages


def test_new_and_changed_files_run_again_and_pattern_selects(tmp_path, use_store):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    inbox = tmp_path / "inbox"
    (inbox / "day1").mkdir(parents=True)
    write_audio(inbox / "day1" / "a.wav", tone_and_noise(1, 16000, 1.0, seed=1), 16000)
    write_audio(inbox / "day1" / "b.flac", tone_and_noise(2, 44100, 1.0, seed=2), 44100)
    assert ingest_folder(source=str(inbox), pattern="*.wav").count("done") == 1
    assert ingest_folder(source=str(inbox)).summary() == "2 file(s): 1 done, 0 cached, 1 already processed, 0 failed"

    write_audio(inbox / "day1" / "a.wav", tone_and_noise(1, 16000, 2.0, seed=3), 16000)  # replaced
    write_audio(inbox / "c.wav", tone_and_noise(1, 8000, 1.0, seed=4), 8000)  # new
    report = ingest_folder(source=str(inbox))
    assert sorted((o.source_uri.rsplit("/", 1)[1], o.status) for o in report.outcomes) == [
        ("a.wav", "done"),
        ("b.flac", "skipped"),
        ("c.wav", "done"),
    ]
    assert len(catalog.frame("files")) == 4  # the replaced file's bytes are a new source


def test_other_parameters_process_the_folder_again(tmp_path, use_store):
    use_store(StoreSettings(location=str(tmp_path / "store")))
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(CORPUS / "denoise_babble" / "speech.wav", folder)
    ingest_folder(source=str(folder))
    assert ingest_folder(source=str(folder), params={"sample_rate_hz": 8000}).count("done") == 1
    with pytest.raises(ValueError, match="invalid parameters for the 'ingest' flow: sample_rate_hz"):
        ingest_folder(source=str(folder), params={"sample_rate_hz": "fast"})


def test_partial_failure_state_and_bad_files_are_not_retried_on_the_next_run(tmp_path, use_store):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(CORPUS / "denoise_babble" / "speech.wav", folder)
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00")
    state = ingest_folder(source=str(folder), return_state=True)
    assert state.is_failed() and state.name == "Partially failed"
    assert state.message.startswith("2 file(s): 1 done, 0 cached, 1 failed; failed: broken.wav: ingest: cannot decode")
    error = state.result(raise_on_failure=False)
    assert isinstance(error, FilesFailed) and error.report.failed[0].error.startswith("cannot decode 'broken.wav'")

    again = ingest_folder(source=str(folder), return_state=True)  # the bad file is not run again, nor forgotten
    assert again.is_failed() and again.name == "Partially failed"
    assert "failed: broken.wav: ingest: unchanged since it failed: cannot decode 'broken.wav'" in again.message
    report = again.result(raise_on_failure=False).report
    assert report.count("skipped") == 1 and report.count("failed") == 1
    processed = catalog.frame("processed").set_index("source_uri")
    assert list(processed["status"].sort_values()) == ["done", "failed"]


def test_a_file_still_being_written_waits_stores_nothing_and_runs_next_time(tmp_path, use_store, monkeypatch):
    """A recording that grows while it is read is neither stored nor remembered: the run stays healthy and
    says so, and the next run ingests the finished file (before: the part read was stored as done, and the
    finished file added a second ``files`` row under the same path)."""
    from voxflow.tasks import ingest as ingestion

    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    folder = tmp_path / "recorder"
    folder.mkdir()
    growing = write_audio(folder / "live.wav", tone_and_noise(1, 16000, 1.0), 16000, "PCM_16")
    write_audio(folder / "done.wav", tone_and_noise(1, 16000, 1.0, seed=2), 16000, "PCM_16")
    read = ingestion.ingest_audio

    def recorder_writes_on(path, name, *args):
        result = read(path, name, *args)
        if path.name == "live.wav":
            with open(path, "ab") as f:
                f.write(b"\0" * 3200)
        return result

    monkeypatch.setattr(ingestion, "ingest_audio", recorder_writes_on)
    state = ingest_folder(source=str(folder), return_state=True)
    report = state.result()
    assert state.is_completed() and report.summary() == ("2 file(s): 1 done, 0 cached, 1 still being written, 0 failed")
    (waiting,) = [o for o in report.outcomes if o.status == "waiting"]
    assert waiting.name == "live.wav" and waiting.error.startswith(
        "'live.wav' is still being written (its size went from 32044 to 35244 bytes while it was read)"
    )
    assert list(catalog.frame("files")["source_name"]) == ["done.wav"]  # nothing of it stored
    assert len(catalog.frame("artifacts")) == 1
    assert list(catalog.frame("processed")["source_uri"].str.rsplit("/", n=1).str[1]) == ["done.wav"]

    monkeypatch.setattr(ingestion, "ingest_audio", read)  # the recording is finished
    again = ingest_folder(source=str(folder))
    assert again.summary() == "2 file(s): 1 done, 0 cached, 1 already processed, 0 failed"
    files = catalog.frame("files")
    assert sorted(files["source_name"]) == ["done.wav", "live.wav"] and growing.stat().st_size == 35244


def test_names_are_relative_to_the_folder_and_links_keep_their_own_path(tmp_path, use_store):
    """Same-named files in two subfolders are told apart, and a link to a file outside the folder is named
    and recorded as the link (before: 'take.wav' twice, and the link under its target's path)."""
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    folder, elsewhere = tmp_path / "session", tmp_path / "elsewhere"
    for part in ("mic-a", "mic-b"):
        (folder / part).mkdir(parents=True)
        write_audio(folder / part / "take.wav", tone_and_noise(1, 16000, 1.0, seed=len(part) + ord(part[-1])), 16000)
    elsewhere.mkdir()
    target = write_audio(elsewhere / "room.wav", tone_and_noise(1, 16000, 1.0, seed=9), 16000)
    (folder / "room-link.wav").symlink_to(target)
    (folder / "loop").symlink_to(folder)  # a link back up is never walked into

    report = ingest_folder(source=str(folder))
    assert sorted(o.name for o in report.outcomes) == ["mic-a/take.wav", "mic-b/take.wav", "room-link.wav"]
    assert sorted(o.row()["file"] for o in report.outcomes) == ["mic-a/take.wav", "mic-b/take.wav", "room-link.wav"]
    files = catalog.frame("files").set_index("source_name")
    assert sorted(files.index) == ["mic-a/take.wav", "mic-b/take.wav", "room-link.wav"]
    assert files.loc["room-link.wav", "source_uri"] == (folder / "room-link.wav").as_uri()


def test_s3_prefix_with_an_endpoint_failing_the_first_writes(s3_settings, use_store, flaky_s3):
    flaky = flaky_s3(fail_first=6)  # boto3 sends a request up to 6 times: only the stage retry can heal this
    settings = dataclasses.replace(s3_settings, endpoint_url=flaky.url)
    catalog = use_store(settings)
    location = parse_location(s3_settings.location)
    client = boto3.client(
        "s3",
        endpoint_url=s3_settings.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=s3_settings.access_key_id,
        aws_secret_access_key=s3_settings.secret_access_key,
    )
    for name in ("denoise_babble/speech.wav", "music_vocals_mp3/audio_example.mp3", "clone_ref_lj/LJ050-0131.wav"):
        client.upload_file(str(CORPUS / name), location.bucket, f"drop/{name}")
    client.put_object(Bucket=location.bucket, Key="drop/notes.txt", Body=b"not audio")

    report = ingest_folder(source=f"s3://{location.bucket}/drop", pattern="*/*.wav", parallel_files=1)
    assert flaky.failed == 6
    assert report.count("done") == 2 and not report.failed  # the mp3 does not match the pattern
    runs = catalog.frame("stage_runs").sort_values(["recorded_at"])
    failed = runs[runs["status"] == "failed"]
    assert list(failed["error_class"]) == ["TransientStorageError"] and list(failed["attempt"]) == [1]
    assert list(runs[runs["status"] == "completed"]["attempt"]).count(2) == 1
    assert ingest_folder(source=f"s3://{location.bucket}/drop", pattern="*/*.wav").count("skipped") == 2


@pytest.mark.slow
def test_dask_cluster_gives_the_same_results_as_the_default_runner(s3_settings, s3_endpoint, use_store, tmp_path):
    from prefect_dask import DaskTaskRunner

    location = parse_location(s3_settings.location)
    default_settings = dataclasses.replace(s3_settings, location=f"s3://{location.bucket}/default")
    dask_settings = dataclasses.replace(s3_settings, location=f"s3://{location.bucket}/dask")

    use_store(default_settings)
    default = ingest_folder(source=str(CORPUS))
    catalog = use_store(dask_settings)
    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True})
    dask = ingest_folder.with_options(task_runner=runner)(source=str(CORPUS))

    assert dask.count("done") == default.count("done") == CORPUS_FILES
    summaries = {o.source_uri: (o.status, o.result.summary(), o.result.artifact.sha256) for o in default.outcomes}
    assert {o.source_uri: (o.status, o.result.summary(), o.result.artifact.sha256) for o in dask.outcomes} == summaries
    from voxflow.storage.catalog import Catalog
    from voxflow.storage.store import open_store

    columns = ["sha256", "source_uri", "duration_s", "integrated_lufs", "peak"]
    by_runner = [
        Catalog(open_store(s)).frame("files")[columns].sort_values("sha256").reset_index(drop=True)
        for s in (default_settings, dask_settings)
    ]
    assert by_runner[0].equals(by_runner[1])
    workers = {int(w.rsplit(":", 1)[1]) for w in catalog.frame("stage_runs")["worker"]}
    assert workers and os.getpid() not in workers  # the stages ran in the Dask worker processes
