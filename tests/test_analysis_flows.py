"""The analysis flows end to end under Prefect with tiny random-weight models: transcribe, separate,
lip-sync features, and ingest_folder running them; and ``voxflow transcribe`` as a user runs it."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from tests.conftest import CORPUS
from voxflow.flows.ingest_folder import ingest_folder
from voxflow.flows.lipsync_features import lipsync_features
from voxflow.flows.separate import separate
from voxflow.flows.transcribe import TranscribeFlowOptions, transcribe
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import open_store
from voxflow.tasks.diarize import DiarizeOptions
from voxflow.tasks.helpers.speakers import parse_rttm
from voxflow.tasks.kit.outputs import read_audio
from voxflow.tasks.transcribe import TranscribeOptions

pytestmark = pytest.mark.usefixtures("prefect_harness")

SAMPLE = CORPUS / "diar_2spk_pyannote" / "sample.wav"
MUSIC = CORPUS / "music_vocals_mp3" / "audio_example.mp3"
# greedy, one temperature: random weights fail every fallback rule, so the default beam 5 over six temperatures
# would decode each window 30 times over (minutes) to check the same plumbing
TWO_SPEAKERS = TranscribeFlowOptions(
    diarize=DiarizeOptions(num_speakers=2), transcribe=TranscribeOptions(beam_size=1, temperatures=(0.0,))
)


@pytest.fixture
def models_env(use_models):
    """VOXFLOW_MODEL_DIR pointing at the tiny models, on the CPU: flows resolve their models from it."""
    return use_models("denoiser", "demucs", "pyannote", "whisper")


def _bytes(settings: StoreSettings, uri: str) -> bytes:
    store = open_store(settings)
    return store.get_bytes(store.key_of(uri))


def test_transcribe_writes_turns_subtitles_and_segments_then_is_cached(tmp_path, use_store, models_env):
    settings = StoreSettings(location=str(tmp_path / "store"))
    catalog = use_store(settings)
    report = transcribe(paths=[str(SAMPLE)], options=TWO_SPEAKERS)
    outcome = report.outcomes[0]
    assert outcome.status == "done" and outcome.stages == ("ingest", "diarize", "transcribe")

    result = outcome.result
    assert set(outcome.outputs) >= {
        "audio.wav",
        "transcript.json",
        "transcript.srt",
        "transcript.vtt",
        "transcript.txt",
        "transcript.tsv",
    }
    assert _bytes(settings, result.srt.uri).decode().startswith("1\n") or result.segments == 0
    assert _bytes(settings, result.vtt.uri).decode().startswith("WEBVTT")

    segments = catalog.frame("segments")  # readable by pandas, one explicit schema
    turns = segments[segments["stage"] == "diarize"]
    assert set(turns["speaker"]) == {"SPEAKER_00", "SPEAKER_01"} and turns["exclusive"].any()
    assert (turns["end_s"] <= 30.0 + 1e-6).all() and (turns["start_s"] < turns["end_s"]).all()
    spoken = segments[segments["stage"] == "transcribe"]
    assert len(spoken) == result.segments > 0  # random weights still decode (noise) tokens
    assert set(spoken["speaker"].dropna()) <= {"SPEAKER_00", "SPEAKER_01"}
    words = [w for ws in spoken["words"] for w in ws]
    assert len(words) == result.words and all(w["speaker"] in ("SPEAKER_00", "SPEAKER_01") for w in words)
    assert (spoken["file_sha256"] == catalog.frame("files")["sha256"].iloc[0]).all()

    rttm = catalog.frame("artifacts").query("name == 'diarization.rttm'")["uri"].iloc[0]
    assert {t.speaker for t in parse_rttm(_bytes(settings, rttm).decode())} == {"SPEAKER_00", "SPEAKER_01"}
    lines = result.transcript_lines(settings)
    assert len(lines) == result.segments and lines[0].startswith("[SPEAKER_0")

    again = transcribe(paths=[str(SAMPLE)], options=TWO_SPEAKERS).outcomes[0]
    assert again.status == "cached" and again.result == result
    assert len(catalog.frame("segments")) == len(segments)  # a cache hit adds no rows


def test_transcribe_with_separation_and_denoising_runs_every_stage(tmp_path, use_store, models_env):
    use_store(StoreSettings(location=str(tmp_path / "store")))
    options = TranscribeFlowOptions(run_separate=True, run_denoise=True, run_diarize=False)
    outcome = transcribe(paths=[str(MUSIC)], options=options).outcomes[0]
    assert outcome.status == "done", outcome.error
    assert outcome.stages == ("ingest", "separate", "denoise", "transcribe")
    assert outcome.result.speakers == ()  # no diarization: unlabelled segments


def test_separate_keeps_the_source_rate_and_channels(tmp_path, use_store, models_env):
    settings = StoreSettings(location=str(tmp_path / "store"))
    use_store(settings)
    result = separate(paths=[str(MUSIC)]).outcomes[0].result
    vocals, rate = read_audio(result.artifact, settings)
    accompaniment, _ = read_audio(result.accompaniment, settings)
    assert rate == 44100 and vocals.shape[0] == 2 and vocals.shape == accompaniment.shape
    assert abs(vocals.shape[1] / rate - 10.9) < 0.05


def test_lipsync_flow_writes_features_and_index(tmp_path, use_store):
    settings = StoreSettings(location=str(tmp_path / "store"))
    use_store(settings)
    result = lipsync_features(paths=[str(CORPUS / "denoise_babble" / "speech.wav")]).outcomes[0].result
    index = pd.read_parquet(io.BytesIO(_bytes(settings, result.index.uri)))
    assert len(index) == result.frames and result.frames == pytest.approx(3.1 * 25, abs=2)


def test_ingest_folder_runs_the_transcribe_flow_on_new_files(tmp_path, use_store, models_env):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(CORPUS / "denoise_babble" / "speech.wav", inbox)
    params = {"diarize": {"num_speakers": 1}, "transcribe": {"language": "en"}}
    state = ingest_folder(source=str(inbox), pipeline="transcribe", params=params, return_state=True)
    report = state.result()
    assert [o.status for o in report.outcomes] == ["done"]
    processed = catalog.frame("processed")
    assert list(processed["pipeline"]) == ["transcribe"] and "transcript.json" in processed["outputs"].iloc[0]
    again = ingest_folder(source=str(inbox), pipeline="transcribe", params=params, return_state=True).result()
    assert [o.status for o in again.outcomes] == ["skipped"]


@pytest.mark.slow
def test_voxflow_transcribe_command_prints_a_speaker_labelled_transcript(tiny_models, tmp_path):
    """The done-when command: ``voxflow transcribe sample.wav`` with VOXFLOW_MODEL_DIR at the tiny models."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VOXFLOW_", "AWS_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        VOXFLOW_MODEL_DIR=str(tiny_models.build("pyannote", "whisper")),
    )
    voxflow = Path(sys.executable).with_name("voxflow")
    result = subprocess.run(
        # random weights never end a window: greedy and no fallback keep the decode short
        [str(voxflow), "transcribe", str(SAMPLE), "--num-speakers", "2", "--beam-size", "1", "--no-fallback"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "sample.wav  done" in result.stdout and "1 done, 0 cached, 0 failed" in result.stdout
    assert "== sample.wav" in result.stdout and "[SPEAKER_0" in result.stdout
    names = {p.name for p in (tmp_path / ".voxflow" / "artifacts").rglob("*") if p.is_file()}
    assert {"diarization.rttm", "exclusive.rttm", "transcript.srt", "transcript.vtt", "transcript.json"} <= names
    segments = DeltaTable(str(tmp_path / ".voxflow" / "catalog" / "segments")).to_pandas()
    assert set(segments["stage"]) == {"diarize", "transcribe"}
