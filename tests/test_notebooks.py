"""The notebooks run top to bottom against a store filled by a real demo run (tiny models), and their executed
copies hold what they promise: tables, plots, audio players. The copies in git carry no outputs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tests.conftest import CORPUS
from tests.notebook_run import NOTEBOOKS, execute, images
from voxflow.flows.ingest import ingest
from voxflow.flows.transcribe import TranscribeFlowOptions, transcribe
from voxflow.tasks.diarize import DiarizeOptions
from voxflow.tasks.transcribe import TranscribeOptions

SAMPLE = CORPUS / "diar_2spk_pyannote" / "sample.wav"

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_notebooks_in_git_carry_no_outputs():
    for path in NOTEBOOKS.glob("*.ipynb"):
        cells = json.loads(path.read_text())["cells"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in cells if c["cell_type"] == "code"), path


def test_catalog_tour_reads_every_table_locally_and_on_s3(tmp_path, monkeypatch, s3_settings, use_store):
    monkeypatch.delenv("VOXFLOW_STORAGE", raising=False)
    monkeypatch.setenv("VOXFLOW_HOME", str(tmp_path / "store"))
    ingest(paths=[str(CORPUS / "asr_en_jfk"), str(CORPUS / "denoise_babble")])
    text, _ = execute("catalog_tour", tmp_path)
    assert "3 files" in text and "jfk.flac" in text and "LocalStore" in text

    use_store(s3_settings)  # the same notebook on an s3:// store
    ingest(paths=[str(CORPUS / "asr_en_jfk")])
    text, _ = execute("catalog_tour", tmp_path)
    assert "1 files" in text and "S3Store" in text and "jfk.flac" in text


@pytest.mark.slow
def test_transcript_review_and_pipeline_analytics_after_a_transcription(tmp_path, monkeypatch, use_models):
    use_models("demucs", "denoiser", "pyannote", "whisper")
    monkeypatch.delenv("VOXFLOW_STORAGE", raising=False)
    monkeypatch.setenv("VOXFLOW_HOME", str(tmp_path / "store"))
    plain = TranscribeFlowOptions(
        diarize=DiarizeOptions(num_speakers=2), transcribe=TranscribeOptions(beam_size=1, temperatures=(0.0,))
    )
    transcribe(paths=[str(SAMPLE)], options=plain)  # random weights find speech in the plain audio
    transcribe(paths=[str(SAMPLE)], options=replace(plain, run_separate=True, run_denoise=True))  # every step

    text, outputs = execute("transcript_review", tmp_path)
    assert "sample.wav" in text and "SPEAKER_0" in text
    assert images(outputs) == 2  # the three steps' waveforms and spectrograms; the diarization timeline
    players = [o for o in outputs if "text/html" in o.get("data", {}) and "<audio" in o["data"]["text/html"]]
    assert len(players) == 3  # input, separated vocals, denoised

    text, outputs = execute("pipeline_analytics", tmp_path)
    assert images(outputs) == 4 and "transcribe" in text and "diarize" in text
