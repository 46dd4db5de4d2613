"""The synthesis flows end to end under Prefect with tiny random-weight models: ``clone_enhanced``,
``synthesize`` in its three modes, their switches, and ``voxflow clone`` / ``voxflow synth`` as a user runs them."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import CORPUS
from voxflow.flows.cli import main
from voxflow.flows.clone_enhanced import clone_enhanced
from voxflow.flows.speech import SpeechOptions
from voxflow.flows.synthesize import SpeechItem, synthesize
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import open_store
from voxflow.tasks import synthesize as tts
from voxflow.tasks.helpers import audio
from voxflow.tasks.reference import ReferenceOptions
from voxflow.tasks.synthesize import SynthesizeOptions
from voxflow.tasks.transcribe import TranscribeOptions

pytestmark = pytest.mark.usefixtures("prefect_harness")

REFERENCE = CORPUS / "clone_ref_lj" / "LJ050-0131.wav"
REFERENCE_TEXT = (
    "unless a system is established for the frequent formal review of activities thereunder. in this regard"
)
BABBLE = CORPUS / "denoise_babble" / "speech_bab_0dB.wav"
# short generations keep the tiny models fast; the guard runs but never regenerates (noise runs to the limit)
QUICK = SynthesizeOptions(frames_per_char=0.5, margin_frames=4, max_new_tokens_cap=16, quality_retries=0)
# the reference heard greedily at one temperature: random weights fail every fallback rule (minutes of decoding)
QUICK_HEARING = TranscribeOptions(beam_size=1, temperatures=(0.0,))


@pytest.fixture
def models_env(use_models):
    """VOXFLOW_MODEL_DIR pointing at the tiny models, on the CPU: flows resolve their models from it."""
    return use_models("denoiser", "whisper", "qwen_tts", "novasr")


@pytest.fixture
def prompt_calls(monkeypatch):
    """Counts the Base model's voice-clone prompt computations in this process."""
    calls = []
    original = tts.voice_prompt

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(tts, "voice_prompt", counting)
    return calls


def _wav(settings: StoreSettings, uri: str) -> tuple[np.ndarray, int]:
    store = open_store(settings)
    return audio.decode_wav_bytes(store.get_bytes(store.key_of(uri)))


def test_clone_enhanced_writes_48k_lines_and_rows_and_reuses_the_voice_prompt(
    tmp_path, use_store, models_env, prompt_calls
):
    settings = StoreSettings(location=str(tmp_path / "store"))
    catalog = use_store(settings)
    options = SpeechOptions(synthesize=QUICK, transcribe=QUICK_HEARING, consent_note="LJ Speech is public domain")
    report = clone_enhanced(
        reference=str(REFERENCE), lines=["Hello there.", "A second line."], language="English", options=options
    )
    assert [line.text for line in report.lines] == ["Hello there.", "A second line."]
    assert {"ingest", "reference", "transcribe", "voice_prompt", "synthesize", "enhance"} <= set(report.computed)
    for line in report.lines:
        samples, rate = _wav(settings, line.uri)
        assert rate == 48000 and line.sample_rate_hz == 48000 and samples.shape[1] > 0
        assert line.duration_s == pytest.approx(samples.shape[1] / rate)

    rows = catalog.frame("syntheses")
    assert len(rows) == 2 and set(rows["text"]) == {"Hello there.", "A second line."}
    assert (rows["mode"] == "clone").all() and rows["synthetic"].all() and (rows["sample_rate_hz"] == 48000).all()
    source_sha = catalog.frame("files")["sha256"].iloc[0]
    assert (rows["voice_source_sha256"] == source_sha).all() and (rows["voice_source"] == str(REFERENCE)).all()
    assert (rows["consent_note"] == "LJ Speech is public domain").all()
    assert (rows["model_id"] == tts.DEFAULT_MODELS["clone"]).all() and rows["model_revision"].str.len().gt(0).all()
    assert (rows["enhancement"] == "denoise,upsample").all() and (rows["real_time_factor"] > 0).all()
    assert (rows["seed"] == 0).all() and (rows["attempts"] == 1).all()
    assert set(rows["artifact_uri"]) == {line.uri for line in report.lines}
    assert prompt_calls == [1]

    again = clone_enhanced(
        reference=str(REFERENCE), lines=["Hello there.", "A second line."], language="English", options=options
    )
    assert again.computed == () and [line.uri for line in again.lines] == [line.uri for line in report.lines]
    assert prompt_calls == [1]  # the cached prompt was reused, not computed again
    prompts = catalog.frame("stage_runs").query("stage == 'voice_prompt'")
    assert sorted(prompts["cache_hit"]) == [False, True]
    assert len(catalog.frame("syntheses")) == 2  # one row per line, however often it runs

    more = clone_enhanced(reference=str(REFERENCE), lines=["A third line."], language="English", options=options)
    assert "voice_prompt" not in more.computed and "synthesize" in more.computed and prompt_calls == [1]


def test_each_switch_changes_exactly_its_own_step(tmp_path, use_store, models_env):
    settings = StoreSettings(location=str(tmp_path / "store"))
    catalog = use_store(settings)
    base = SpeechOptions(synthesize=QUICK, transcribe=QUICK_HEARING)

    def run(**switches):
        report = clone_enhanced(
            reference=str(REFERENCE),
            lines=["Hello there."],
            transcript=REFERENCE_TEXT,
            options=SpeechOptions(synthesize=QUICK, transcribe=QUICK_HEARING, **switches),
        )
        row = catalog.frame("syntheses").set_index("artifact_uri", drop=False).loc[report.lines[0].uri]
        return report, row

    everything, row = run()
    assert row["enhancement"] == "denoise,upsample"
    native = row["native_artifact_uri"]

    _, no_post = run(run_post_processing=False)  # the same line, not denoised
    assert no_post["native_artifact_uri"] == native and no_post["enhancement"] == "upsample"

    _, no_sr = run(run_upsampling=False)  # the same line, plainly resampled
    assert no_sr["native_artifact_uri"] == native and no_sr["enhancement"] == "denoise,resample"
    assert _wav(settings, no_sr["artifact_uri"])[1] == 48000

    raw, raw_row = run(run_pre_processing=False)  # the reference as ingested: another voice prompt
    assert "reference" in raw.computed and "voice_prompt" in raw.computed
    assert raw_row["enhancement"] == "denoise,upsample" and raw_row["native_artifact_uri"] != native
    references = catalog.frame("artifacts").query("stage == 'reference'")
    assert len(references) == 1  # only the processed run wrote a cleaned reference

    native_only, native_row = run(run_post_processing=False, run_upsampling=False, output_rate_hz=24000)
    assert pd.isna(native_row["enhancement"]) and native_only.lines[0].uri == native  # the model's own WAV
    assert base.run_pre_processing and base.run_post_processing and base.run_upsampling  # the defaults


def test_synthesize_flow_designs_custom_voices_and_clones_in_item_order(tmp_path, use_store, models_env, monkeypatch):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    calls = []
    original = tts._call_model

    def counting(model, mode, pieces, *args, **kwargs):
        calls.append((mode, len(pieces)))
        return original(model, mode, pieces, *args, **kwargs)

    monkeypatch.setattr(tts, "_call_model", counting)
    options = SpeechOptions(
        synthesize=SynthesizeOptions(
            batch_size=4, frames_per_char=0.5, margin_frames=4, max_new_tokens_cap=8, quality_retries=0
        ),
        run_post_processing=False,
    )
    texts = [f"Line {i}: " + "word " * (i % 5) for i in range(8)]
    designed = synthesize(
        mode="design",
        items=[SpeechItem(text=t, voice_description="a calm low voice") for t in texts],
        language="English",
        options=options,
    )
    assert [line.text for line in designed.lines] == texts and calls == [("design", 4), ("design", 4)]

    calls.clear()
    custom = synthesize(
        mode="custom",
        items=[
            SpeechItem(text="Hi.", speaker="Vivian", instruction="cheerful"),
            SpeechItem(text="Bye.", speaker="Ryan"),
        ],
        options=options,
    )
    assert len(custom.lines) == 2 and calls == [("custom", 2)]

    clone = synthesize(
        mode="clone",
        items=[
            SpeechItem(text="One.", reference=str(REFERENCE), reference_transcript=REFERENCE_TEXT),
            SpeechItem(text="Two.", reference=str(BABBLE), reference_transcript="noisy speech"),
            SpeechItem(text="Three.", reference=str(REFERENCE), reference_transcript=REFERENCE_TEXT),
        ],
        options=replace_reference(options, min_speech_s=1.0),
    )
    assert [line.text for line in clone.lines] == ["One.", "Two.", "Three."]
    rows = catalog.frame("syntheses").set_index("artifact_uri")
    sources = [rows.loc[line.uri, "voice_source"] for line in clone.lines]
    assert sources == [str(REFERENCE), str(BABBLE), str(REFERENCE)]
    assert set(rows["mode"]) == {"design", "custom", "clone"} and len(rows) == 8 + 2 + 3
    assert (
        rows.loc[custom.lines[0].uri, "speaker"] == "Vivian"
        and rows.loc[custom.lines[0].uri, "instruction"] == "cheerful"
    )


def replace_reference(options: SpeechOptions, **changes) -> SpeechOptions:
    from dataclasses import replace

    return replace(options, reference=replace(options.reference, **changes))


def test_a_bad_reference_fails_the_run_with_one_line_naming_it(tmp_path, use_store, models_env):
    use_store(StoreSettings(location=str(tmp_path / "store")))
    short = tmp_path / "short.wav"
    samples, rate = audio.decode_wav_bytes(REFERENCE.read_bytes())
    short.write_bytes(audio.encode_wav(samples[:, :rate], rate))
    state = clone_enhanced(
        reference=str(short),
        lines=["Hello."],
        transcript="unless",
        options=SpeechOptions(synthesize=QUICK),
        return_state=True,
    )
    error = state.result(raise_on_failure=False)
    assert state.is_failed() and "short.wav" in str(error) and "too short" in str(error)
    assert len(str(error).strip().splitlines()) == 1


def test_unknown_speaker_or_language_lists_the_supported_ones(tmp_path, use_store, models_env):
    use_store(StoreSettings(location=str(tmp_path / "store")))
    options = SpeechOptions(synthesize=QUICK, run_post_processing=False)
    state = synthesize(
        mode="custom", items=[SpeechItem(text="Hi.", speaker="Nobody")], options=options, return_state=True
    )
    message = str(state.result(raise_on_failure=False))
    assert state.is_failed() and "Nobody" in message and "vivian" in message.lower()
    state = synthesize(
        mode="design",
        items=[SpeechItem(text="Hi.", voice_description="calm", language="Klingon")],
        options=options,
        return_state=True,
    )
    message = str(state.result(raise_on_failure=False))
    assert state.is_failed() and "Klingon" in message and "english" in message.lower()
    with pytest.raises(ValueError, match="voice_description"):
        synthesize(mode="design", items=[SpeechItem(text="Hi.")], options=options)


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_voxflow_clone_and_synth_commands(tmp_path, use_store, models_env, monkeypatch):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    out = tmp_path / "out"
    code, stdout, stderr = _cli(
        "clone",
        str(REFERENCE),
        "Hello there.",
        "A second line.",
        "--transcript",  # transcribing the reference is the flow test's (random weights decode for minutes)
        REFERENCE_TEXT,
        "--out",
        str(out),
        "--batch-size",
        "2",
    )
    assert code == 0, stderr
    assert "2 line(s) written" in stdout and "Hello there." in stdout
    written = sorted(out.glob("*.wav"))
    assert [p.name for p in written] == ["line-000.wav", "line-001.wav"]
    assert all(audio.decode_wav_bytes(p.read_bytes())[1] == 48000 for p in written)
    assert len(catalog.frame("syntheses")) == 2

    code, stdout, stderr = _cli(
        "synth", "--design", "a calm low voice", "Good morning.", "--no-upsampling", "--no-post-processing"
    )
    assert code == 0, stderr
    assert "1 line(s) written" in stdout
    rows = catalog.frame("syntheses")
    assert set(rows["mode"]) == {"clone", "design"}
    assert rows.set_index("mode").loc["design", "enhancement"] == "resample"

    code, _, stderr = _cli("synth", "--speaker", "Nobody", "Hi.")
    assert code != 0 and "Nobody" in stderr and len(stderr.strip().splitlines()) == 1


def test_speech_options_reject_bad_values():
    with pytest.raises(ValueError, match="SpeechOptions.output_rate_hz: Input should be greater than or equal to 8000"):
        SpeechOptions(output_rate_hz=100)
    assert SpeechOptions().reference_options() == ReferenceOptions()
    assert SpeechOptions(run_pre_processing=False).reference_options().process is False
    assert Path(REFERENCE).exists()
