"""voice_replace end to end under Prefect: a generated conversation with tiny random-weight models, known lines
injected so reconstruction is deterministic, an edited script, and ``voxflow replace`` as a user runs it."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conversation import SCRIPT, SCRIPT_OVERLAP_LINE, build_conversation, true_peak_dbfs
from tests.notebook_run import execute, images
from tests.synth import write_audio
from voxflow.flows.cli import main
from voxflow.flows.speech import SpeechOptions
from voxflow.flows.voice_replace import VoiceReplaceOptions, voice_replace
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import open_store
from voxflow.tasks import reconstruct
from voxflow.tasks import synthesize as tts
from voxflow.tasks.helpers import audio
from voxflow.tasks.line_check import CheckOptions
from voxflow.tasks.synthesize import SynthesizeOptions
from voxflow.tasks.target import TargetOptions

pytestmark = pytest.mark.usefixtures("prefect_harness")

TARGET = "SPEAKER_00"
# short generations keep the tiny models fast; no enhancement models (plain resampling to 48 kHz)
QUICK_SPEECH = SpeechOptions(
    synthesize=SynthesizeOptions(frames_per_char=0.5, margin_frames=4, max_new_tokens_cap=24, quality_retries=0),
    run_post_processing=False,
    run_upsampling=False,
    consent_note="synthetic test voice",
)


@pytest.fixture(scope="module")
def conversation():
    return build_conversation(SCRIPT, overlap_line=SCRIPT_OVERLAP_LINE)


@pytest.fixture
def models_env(use_models):
    return use_models("demucs", "whisper", "qwen_tts", "pyannote")


@pytest.fixture
def tts_calls(monkeypatch):
    """The texts each TTS model call spoke, in this process."""
    calls: list[str] = []
    original = tts._call_model

    def counting(model, mode, pieces, *args, **kwargs):
        calls.extend(p.text for p in pieces)
        return original(model, mode, pieces, *args, **kwargs)

    monkeypatch.setattr(tts, "_call_model", counting)
    return calls


def write_lines(conversation, path: Path) -> Path:
    """The conversation's known lines as a lines file (what diarization and transcription would find)."""
    rows = [
        {"line_id": x.line_id, "speaker": x.speaker, "start_s": x.start_s, "end_s": x.end_s, "text": x.text}
        for x in conversation.lines
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def stored(settings: StoreSettings, uri: str) -> bytes:
    store = open_store(settings)
    return store.get_bytes(store.key_of(uri))


def regions(table: pd.DataFrame, rate: int, frames: int) -> np.ndarray:
    """Samples outside every replaced line's region (its slot, or as far as it ran into the gap), 5 ms margins."""
    mask = np.ones(frames, bool)
    margin = round(0.005 * rate)
    for row in table[table.replaced].itertuples():
        start = round(row.slot_start_s * rate) - margin
        end = round((row.slot_start_s + row.slot_s + row.gap_used_s) * rate) + margin
        mask[max(start, 0) : end] = False
    return mask


def test_voice_replace_on_a_conversation_keeps_everything_but_the_target(
    tmp_path, use_store, models_env, conversation, tts_calls
):
    settings = StoreSettings(location=str(tmp_path / "store"))
    catalog = use_store(settings)
    source = conversation.write(tmp_path / "talk.wav")
    options = VoiceReplaceOptions(
        target=TargetOptions(speaker=TARGET),
        design="a calm, low voice",
        language="English",
        lines=str(write_lines(conversation, tmp_path / "lines.csv")),
        speech=QUICK_SPEECH,
        quality=CheckOptions(retries=1),
    )
    report = voice_replace(paths=[str(source)], options=options)
    (outcome,) = report.outcomes
    result = outcome.result
    mix, rate = audio.decode_wav_bytes(stored(settings, result.artifact.uri))
    assert rate == conversation.sample_rate_hz and mix.shape == conversation.mix.shape
    table = pd.read_parquet(io.BytesIO(stored(settings, result.table.uri)))
    assert list(table.line_id) == [x.line_id for x in conversation.lines if x.speaker == TARGET]
    assert table.replaced.all() and (table.speaker == TARGET).all()
    assert tuple(table.columns) == reconstruct.TABLE_COLUMNS
    outside = regions(table, rate, mix.shape[1])
    np.testing.assert_allclose(mix[:, outside], conversation.mix[:, outside], atol=1e-4)
    assert true_peak_dbfs(mix) <= -1.0
    # tiny random models speak noise: every line fails its check, is tried again once, and is flagged
    assert (table.attempts == 2).all() and table.flagged.all() and table.notes.str.contains("wer").all()
    assert len(tts_calls) == 2 * len(table)
    report_md = stored(settings, result.report.uri).decode()
    assert report_md.startswith("# Voice replaced in talk.wav\n")
    assert "## Flagged lines" in report_md and all(line_id in report_md for line_id in table.line_id)
    assert set(outcome.outputs) >= {"replaced.wav", "new_voice.wav", "lines.parquet", "lines.csv", "report.md"}
    vocals, _ = audio.decode_wav_bytes(stored(settings, outcome.result.voice.uri))
    assert vocals.shape == mix.shape
    rows = catalog.frame("syntheses")
    assert len(rows) == len(table) and set(rows.consent_note) == {"synthetic test voice"}
    assert set(rows["mode"]) == {"design"} and rows["synthetic"].all()

    # the review notebook reads the same run back: its line table, the timing plot, before and after
    text, outputs = execute("voice_replace_review", tmp_path)
    assert f"{len(table)} lines" in text and f"{len(table)} flagged" in text and table.line_id.iloc[0] in text
    assert images(outputs) == 1
    assert sum("<audio" in o.get("data", {}).get("text/html", "") for o in outputs) == 3


def test_an_edited_script_synthesizes_only_the_edited_line(tmp_path, use_store, models_env, conversation, tts_calls):
    settings = StoreSettings(location=str(tmp_path / "store"))
    use_store(settings)
    source = conversation.write(tmp_path / "talk.wav")
    options = VoiceReplaceOptions(
        design="a bright voice",
        lines=str(write_lines(conversation, tmp_path / "lines.csv")),
        speech=QUICK_SPEECH,
        quality=CheckOptions(enabled=False),
    )
    first = voice_replace(paths=[str(source)], options=options).outcomes[0].result
    talk = {s: sum(x.end_s - x.start_s for x in conversation.lines if x.speaker == s) for s in conversation.voices}
    assert first.target == max(talk, key=talk.get)  # the speaker who talks most
    lines_csv = pd.read_csv(io.BytesIO(stored(settings, first.csv.uri)))
    assert len(tts_calls) == len(lines_csv)
    edited = lines_csv.copy()
    edited.loc[1, "text"] = "The numbers are better than anyone hoped."
    edited.to_csv(tmp_path / "edited.csv", index=False)
    tts_calls.clear()
    second = voice_replace(paths=[str(source)], options=replace(options, script=str(tmp_path / "edited.csv")))
    second = second.outcomes[0].result
    assert tts_calls == ["The numbers are better than anyone hoped."]
    table = pd.read_parquet(io.BytesIO(stored(settings, second.table.uri)))
    assert table.edited.tolist() == [False, True, False]
    assert table.original_text[1] == lines_csv.text[1]
    changed = table.fingerprint != lines_csv.fingerprint
    assert changed.tolist() == [False, True, False]
    before, rate = audio.decode_wav_bytes(stored(settings, first.artifact.uri))
    after, _ = audio.decode_wav_bytes(stored(settings, second.artifact.uri))
    row = table.iloc[0]  # an unedited line mixes the same
    span = slice(round(row.slot_start_s * rate), round((row.slot_start_s + row.slot_s) * rate))
    np.testing.assert_array_equal(before[:, span], after[:, span])


def test_a_target_that_is_not_there_fails_the_file_in_one_line(tmp_path, use_store, models_env, conversation):
    use_store(StoreSettings(location=str(tmp_path / "store")))
    source = conversation.write(tmp_path / "talk.wav")
    options = VoiceReplaceOptions(
        target=TargetOptions(speaker="SPEAKER_07"),
        design="a voice",
        lines=str(write_lines(conversation, tmp_path / "lines.csv")),
        speech=QUICK_SPEECH,
    )
    state = voice_replace(paths=[str(source)], options=options, return_state=True)
    assert state.is_failed()
    assert "talk.wav: target: no speaker 'SPEAKER_07' in the recording; its speakers are SPEAKER_00, SPEAKER_01" in (
        state.message
    )


def test_a_voice_recording_wins_over_the_default_description_and_the_target_is_named_once():
    assert VoiceReplaceOptions().mode == "design" and VoiceReplaceOptions(voice="ref.wav").mode == "clone"
    assert VoiceReplaceOptions(voice="ref.wav").item("Hi.").voice_description is None
    with pytest.raises(ValueError, match="target.speaker or by like, not both"):
        VoiceReplaceOptions(like="sample.wav", target=TargetOptions(speaker="SPEAKER_00"))


def test_voxflow_replace_writes_the_mix_stems_table_and_report(tmp_path, use_store, models_env, conversation):
    use_store(StoreSettings(location=str(tmp_path / "store")))
    source = conversation.write(tmp_path / "talk.wav")
    out = tmp_path / "out" / "talk.replaced.wav"
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = main(
            [
                "replace",
                str(source),
                "--speaker",
                TARGET,
                "--design",
                "a calm, low voice",
                "--lines",
                str(write_lines(conversation, tmp_path / "lines.csv")),
                "--no-check",
                "--no-post-processing",
                "--no-upsampling",
                "--max-new-tokens-cap",
                "40",
                "-o",
                str(out),
            ]
        )
    assert code == 0, stderr.getvalue()
    written, rate = audio.decode_wav_bytes(out.read_bytes())
    assert rate == conversation.sample_rate_hz and written.shape == conversation.mix.shape
    for suffix in (".vocals.wav", ".accompaniment.wav", ".new_voice.wav", ".lines.parquet", ".lines.csv", ".report.md"):
        assert out.with_name(out.stem + suffix).is_file(), suffix
    printed = stdout.getvalue()
    assert "target SPEAKER_00: 3 of 3 line(s) replaced" in printed and "line_002" in printed
    assert f"wrote {out}" in printed


def test_ingest_folder_runs_voice_replace_on_each_new_file_with_one_voice(
    tmp_path, use_store, models_env, conversation
):
    from voxflow.flows.ingest_folder import ingest_folder
    from voxflow.flows.pipelines import FilesFailed

    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    conversation.write(inbox / "monday.wav")
    write_audio(inbox / "tuesday.flac", conversation.mix, conversation.sample_rate_hz)  # the talk in 16-bit FLAC
    (inbox / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    params = {
        "design": "a calm, low voice",
        "target": {"speaker": TARGET},
        "lines": str(write_lines(conversation, tmp_path / "lines.csv")),
        "quality": {"enabled": False},
        "speech": {
            "run_post_processing": False,
            "run_upsampling": False,
            "synthesize": {"frames_per_char": 0.5, "margin_frames": 4, "max_new_tokens_cap": 24},
        },
    }
    with pytest.raises(FilesFailed) as failed:
        ingest_folder(source=str(inbox), pipeline="voice-replace", params=params, parallel_files=2)
    report = failed.value.report
    by_name = {o.name: o for o in report.outcomes}
    assert by_name["monday.wav"].status == "done" and by_name["tuesday.flac"].status == "done"
    assert by_name["broken.wav"].message.startswith("broken.wav: ingest: ")
    # the two ran at once (parallel_files=2), each replacing the same lines in its own audio
    monday, tuesday = by_name["monday.wav"].result, by_name["tuesday.flac"].result
    assert (monday.lines, monday.replaced) == (tuesday.lines, tuesday.replaced) == (3, 3)
    assert monday.artifact.frames == tuesday.artifact.frames == conversation.mix.shape[1]
    processed = catalog.frame("processed")
    assert set(processed.query("status == 'done'").source_uri.str.rsplit("/", n=1).str[-1]) == {
        "monday.wav",
        "tuesday.flac",
    }
    with pytest.raises(FilesFailed) as again:  # nothing runs again; the broken file stays failed
        ingest_folder(source=str(inbox), pipeline="voice-replace", params=params, parallel_files=2)
    assert {o.name: o.status for o in again.value.report.outcomes} == {
        "monday.wav": "skipped",
        "tuesday.flac": "skipped",
        "broken.wav": "failed",
    }


def test_like_without_speaker_encoder_weights_says_what_to_fetch(tmp_path, use_store, models_env, conversation):
    use_store(StoreSettings(location=str(tmp_path / "store")))
    source = conversation.write(tmp_path / "talk.wav")
    sample = write_audio(tmp_path / "sample.wav", conversation.voices[TARGET], conversation.sample_rate_hz)
    options = VoiceReplaceOptions(
        like=str(sample), lines=str(write_lines(conversation, tmp_path / "lines.csv")), speech=QUICK_SPEECH
    )
    state = voice_replace(paths=[str(source)], options=options, return_state=True)
    assert state.is_failed()
    assert "talk.wav: target: no GE2E speaker-encoder weights at " in state.message
    assert "pip download --no-deps resemblyzer==0.1.4" in state.message and "\n" not in state.message
