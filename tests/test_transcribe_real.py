"""Transcription on real trained weights: Whisper base (CTranslate2, assembled from two packages on the
index, see tests/real_models.py) through voxflow's faster-whisper backend, on the public corpus.

Accuracy against faster-whisper's own three modes on the same weights and compute type, word times,
segments at the speaker changes of a reference RTTM, a stereo file with one talker per channel, a
code-switched file, and the command line as a user runs it (backend and model from the environment).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CORPUS
from tests.real_models import JFK_TEXT, LJ_TEXT, REFERENCES, whisper_base_model_dir, word_error_rate
from voxflow.tasks.helpers import audio
from voxflow.tasks.helpers.speakers import parse_rttm
from voxflow.tasks.transcribe import (
    TranscribeOptions,
    assign_speakers,
    channel_suggestion,
    load_transcribe_model,
    load_vad_model,
    split_segments,
    transcribe_channels,
    transcribe_speech,
)

pytestmark = pytest.mark.slow

JFK = CORPUS / "asr_en_jfk" / "jfk.flac"
SAMPLE = CORPUS / "diar_2spk_pyannote" / "sample.wav"
RTTM = CORPUS / "diar_2spk_pyannote" / "sample.rttm"
LJ = CORPUS / "clone_ref_lj" / "LJ050-0131.wav"
RATE = 16_000
ITALIAN = "Buongiorno a tutti. Oggi il tempo a Roma è molto bello, e nel pomeriggio andiamo al parco con i bambini."


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return whisper_base_model_dir()


@pytest.fixture(scope="module")
def options() -> TranscribeOptions:
    """The defaults, on the real base model (int8 on this CPU)."""
    return TranscribeOptions(model="base", backend="faster-whisper")


@pytest.fixture(scope="module")
def model(model_dir):
    return load_transcribe_model("base", "cpu", model_dir, "faster-whisper", "auto")


def _speech(path: Path) -> np.ndarray:
    decoded = audio.decode_file(path)
    return audio.resample(audio.downmix(decoded.samples), decoded.sample_rate_hz, RATE)[0].astype(np.float32)


def _text(transcript) -> str:
    return " ".join(s.text.strip() for s in transcript.segments)


def _transcribe(model, samples: np.ndarray, options: TranscribeOptions):
    return split_segments(transcribe_speech(model, load_vad_model(), samples, options))


def test_jfk_word_for_word_with_americans_at_its_time(model, options):
    transcript = _transcribe(model, _speech(JFK), options)
    assert word_error_rate(JFK_TEXT, _text(transcript)) == 0.0
    assert transcript.language == "en"
    americans = [w for w in transcript.words if "Americans" in w.word]
    assert len(americans) == 1 and 1.2 <= americans[0].start_s < americans[0].end_s <= 2.2


def _faster_whisper(model, samples: np.ndarray, mode: str, options: TranscribeOptions) -> str:
    """faster-whisper's own modes, with the same beam size, fallback schedule (seeded) and compute type."""
    import ctranslate2
    from faster_whisper import BatchedInferencePipeline

    ctranslate2.set_random_seed(options.seed)
    common = dict(language=None, beam_size=options.beam_size, temperature=list(options.temperatures))
    if mode == "batched":
        segments, _ = BatchedInferencePipeline(model).transcribe(samples, batch_size=8, **common)
    else:  # its long-form decoding; conditioned on earlier text it is not reproducible (it loops at random)
        segments, _ = model.transcribe(samples, vad_filter=mode == "vad", condition_on_previous_text=False, **common)
    return " ".join(s.text.strip() for s in segments)


def test_a_conversation_at_least_as_accurate_as_faster_whispers_best_mode(model, options):
    samples = _speech(SAMPLE)
    reference = REFERENCES["diar_2spk_pyannote/sample.wav"]
    upstream = {
        mode: word_error_rate(reference, _faster_whisper(model, samples, mode, options))
        for mode in ("plain", "vad", "batched")
    }
    ours = word_error_rate(reference, _text(_transcribe(model, samples, options)))
    again = word_error_rate(reference, _text(_transcribe(model, samples, options)))
    print(f"sample.wav WER: voxflow {ours:.3f}; faster-whisper {upstream}")
    assert ours == again  # reproducible
    assert ours <= min(upstream.values())
    assert ours < 0.15


def test_segments_end_at_every_speaker_change_and_agree_with_the_turns(model, options):
    turns = parse_rttm(RTTM.read_text())
    transcript = split_segments(
        assign_speakers(transcribe_speech(model, load_vad_model(), _speech(SAMPLE), options), turns)
    )
    assert len(transcript.segments) >= 10  # whisper's own segmentation gives 3 here
    for segment in transcript.segments:
        assert {w.speaker for w in segment.words} == {segment.speaker}
        assert segment.start_s <= segment.words[0].start_s and segment.words[-1].end_s <= segment.end_s
    # wherever the turns change speaker (the next turn starts after the previous ends), a segment ends
    changes = [b.start_s for a, b in zip(turns, turns[1:]) if a.speaker != b.speaker and b.start_s >= a.end_s - 0.3]
    boundaries = [s.end_s for s in transcript.segments[:-1]]
    for change in changes:
        assert min(abs(change - b) for b in boundaries) < 0.8, change
    words = [w.word for w in transcript.words]
    assert [w.word for s in transcript.segments for w in s.words] == words  # every word kept, in order


def _stereo() -> np.ndarray:
    """JFK on the left; LJ Speech on the right, starting 2 s in: two talkers over each other."""
    jfk, lj = _speech(JFK), _speech(LJ)
    right = np.concatenate([np.zeros(2 * RATE, np.float32), lj])
    length = max(len(jfk), len(right))
    return np.stack([np.pad(jfk, (0, length - len(jfk))), np.pad(right, (0, length - len(right)))])


def test_one_talker_per_channel_each_transcribed_on_its_own(model, options):
    stereo = _stereo()
    assert channel_suggestion(stereo, options) is not None  # nearly uncorrelated: per_channel suggested
    assert channel_suggestion(np.stack([stereo[0], stereo[0]]), options) is None
    transcript = split_segments(
        transcribe_channels(
            (model, None), load_vad_model(), stereo, RATE, replace(options, per_channel=True), batch_size=8
        ).transcript
    )
    by_speaker = {
        speaker: " ".join(s.text.strip() for s in transcript.segments if s.speaker == speaker)
        for speaker in ("CHANNEL_0", "CHANNEL_1")
    }
    assert word_error_rate(JFK_TEXT, by_speaker["CHANNEL_0"]) <= 0.05
    assert word_error_rate(LJ_TEXT, by_speaker["CHANNEL_1"]) <= 0.2
    starts = [s.start_s for s in transcript.segments]
    assert starts == sorted(starts) and {s.speaker for s in transcript.segments} == {"CHANNEL_0", "CHANNEL_1"}
    mixed = _text(_transcribe(model, stereo.mean(axis=0), options))  # both voices in one: words are lost
    assert word_error_rate(JFK_TEXT + " " + LJ_TEXT, mixed) > word_error_rate(
        JFK_TEXT + " " + LJ_TEXT, " ".join(by_speaker.values())
    )


def _italian(tmp_path: Path) -> np.ndarray:
    """An Italian sentence from Festival's Italian diphone voice (Debian festvox-itapc16k)."""
    if shutil.which("text2wave") is None:
        pytest.fail("Festival's text2wave is missing: ./dev installs festival and festvox-itapc16k")
    text = tmp_path / "it.txt"
    text.write_bytes(ITALIAN.encode("latin-1"))  # Festival reads Latin-1
    wav = tmp_path / "it.wav"
    subprocess.run(
        ["text2wave", "-eval", "(voice_pc_diphone)", str(text), "-o", str(wav)], check=True, capture_output=True
    )
    return _speech(wav)


def test_a_code_switched_recording_gets_each_language_per_segment(model, options, tmp_path):
    samples = np.concatenate([_speech(JFK), np.zeros(RATE, np.float32), _italian(tmp_path)])
    once = _transcribe(model, samples, options)  # one language for the file: one half is lost or translated
    per_chunk = _transcribe(model, samples, replace(options, language_per_chunk=True))
    english = " ".join(s.text for s in per_chunk.segments if s.language == "en")
    italian = " ".join(s.text for s in per_chunk.segments if s.language == "it")
    assert word_error_rate(JFK_TEXT, english) <= 0.05
    assert "Buongiorno" in italian and "bambini" in italian
    assert {s.language for s in per_chunk.segments} == {"en", "it"}
    assert len({s.language for s in once.segments}) == 1


def _voxflow(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    voxflow = Path(sys.executable).with_name("voxflow")
    return subprocess.run([str(voxflow), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def _catalog_rows(env: dict[str, str], table: str, columns: list[str]) -> list[dict]:
    """Rows of a catalog table of the store in ``env``, read as a user would (VOXFLOW_STORAGE)."""
    code = (
        "import sys; from voxflow.storage.catalog import Catalog; from voxflow.storage.settings import StoreSettings; "
        "from voxflow.storage.store import open_store; "
        f"print(Catalog(open_store(StoreSettings.from_env())).frame({table!r})[{columns!r}].to_json(orient='records'))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_the_command_line_with_backend_and_model_from_the_environment(model_dir, tmp_path):
    import soundfile

    stereo_path = tmp_path / "interview.wav"
    soundfile.write(stereo_path, _stereo().T, RATE)
    env = {
        **os.environ,
        "VOXFLOW_STORAGE": str(tmp_path / "store"),
        "VOXFLOW_MODEL_DIR": str(model_dir),
        "VOXFLOW_WHISPER_BACKEND": "faster-whisper",
        "VOXFLOW_WHISPER_MODEL": "base",
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }
    mixed = _voxflow(["transcribe", str(stereo_path), "--no-diarize"], env, tmp_path)
    assert mixed.returncode == 0, mixed.stderr[-2000:]
    assert "note: the 2 channels are nearly uncorrelated" in mixed.stdout and "--per-channel" in mixed.stdout
    split = _voxflow(["transcribe", str(stereo_path), "--no-diarize", "--per-channel"], env, tmp_path)
    assert split.returncode == 0, split.stderr[-2000:]
    assert "[CHANNEL_0" in split.stdout and "[CHANNEL_1" in split.stdout and "fellow Americans" in split.stdout
    listed = _voxflow(["models", "list"], env, tmp_path)
    assert "transcribe-faster-whisper  faster-whisper  base" in listed.stdout  # the model from the environment
    assert str(model_dir / "faster-whisper" / "base") in listed.stdout
    segments = _catalog_rows(env, "segments", ["speaker", "language", "low_confidence"])
    assert {s["speaker"] for s in segments} >= {"CHANNEL_0", "CHANNEL_1"} and {s["language"] for s in segments} == {
        "en"
    }
    assert all(isinstance(s["low_confidence"], bool) for s in segments)


def test_a_missing_model_fails_at_once_with_one_line(tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"},  # as a user: the hub is tried
        "VOXFLOW_STORAGE": str(tmp_path / "store"),
        "VOXFLOW_MODEL_DIR": str(tmp_path / "models"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }
    (tmp_path / "models").mkdir()
    for args, stage in (
        (["--no-diarize", "--backend", "faster-whisper", "--model", "base"], "transcribe"),
        ([], "diarize"),  # the default: diarization on, pyannote's gated model
    ):
        run = _voxflow(["transcribe", str(JFK), *args], env, tmp_path)
        assert run.returncode == 1
        errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: jfk.flac: {stage}: model ")
        assert str(tmp_path / "models") in errors[0] and "voxflow models pull" in errors[0] and "HF_TOKEN" in errors[0]
        assert "Retrying in" not in run.stderr and "visit https://hf.co" not in run.stdout + run.stderr
    runs = _catalog_rows(env, "stage_runs", ["stage", "attempt", "status", "duration_s"])
    failed = [r for r in runs if r["status"] == "failed"]
    assert sorted(r["stage"] for r in failed) == ["diarize", "transcribe"]
    assert all(r["attempt"] == 1 and r["duration_s"] < 5 for r in failed)
