"""voice_replace's closed quality loop on real trained weights: Whisper base hears the new lines, the GE2E
encoder compares voices, DNSMOS rates them; a test synthesizer speaks with the real Piper voice.

The models come from the package index (tests/real_models.py); the tests skip when it cannot be reached.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conversation import SCRIPT, SCRIPT_OVERLAP_LINE, build_conversation, espeak
from tests.real_models import ge2e_weights, piper_speak, whisper_base_model_dir
from tests.synth import write_audio
from voxflow.flows.speech import SpeechOptions
from voxflow.flows.voice_replace import RETRY_SEED_STRIDE, VoiceReplaceOptions, voice_replace
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import open_store
from voxflow.tasks import synthesize as tts
from voxflow.tasks.helpers import audio
from voxflow.tasks.helpers.voiceprint import load_voice_encoder
from voxflow.tasks.kit.models import ModelSettings
from voxflow.tasks.line_check import CHECK_RATE_HZ, CheckOptions, check_line, hearing
from voxflow.tasks.synthesize import Speech
from voxflow.tasks.target import TargetOptions, choose_target
from voxflow.tasks.transcribe import TranscribeOptions

pytestmark = pytest.mark.slow

TARGET = "SPEAKER_00"
WRONG = "Completely different words about the weather at the seaside."
BASE = TranscribeOptions(model="base", backend="faster-whisper")


@pytest.fixture(scope="module")
def real_models(tmp_path_factory, tiny_models) -> Path:
    """One model folder: the real Whisper base and GE2E encoder beside tiny Demucs, Qwen3-TTS, pyannote and DNS48."""
    folder = tmp_path_factory.mktemp("real-models")
    tiny = tiny_models.build("demucs", "qwen_tts", "pyannote", "denoiser")
    for library in ("demucs", "qwen-tts", "pyannote", "denoiser"):
        (folder / library).symlink_to(Path(tiny) / library)
    (folder / "faster-whisper").symlink_to(whisper_base_model_dir() / "faster-whisper")
    (folder / "ge2e").symlink_to(ge2e_weights() / "ge2e")
    return folder


@pytest.fixture(scope="module")
def settings(real_models) -> ModelSettings:
    return ModelSettings(model_dir=str(real_models), device="cpu")


def piper_16k(text: str) -> np.ndarray:
    samples, rate = piper_speak(text)
    return audio.mono_at(samples[None] * 0.5, rate, CHECK_RATE_HZ)


def test_the_check_passes_a_correct_line_and_fails_one_that_says_something_else(settings):
    encoder = load_voice_encoder(settings.model_dir)
    hear = hearing(BASE, settings)
    voice = encoder.embed(piper_16k("This is how my voice sounds when I read a sentence aloud."), CHECK_RATE_HZ)

    def embed(samples):
        return encoder.embed(samples, CHECK_RATE_HZ)

    text = SCRIPT[0][1]
    good = check_line(piper_16k(text), text, CheckOptions(), hear, embed, voice)
    assert good.passed, good.issues
    assert good.wer <= 0.15 and good.similarity > 0.8 and good.dnsmos > 2.5
    bad = check_line(piper_16k(WRONG), text, CheckOptions(), hear, embed, voice)
    assert not bad.passed and bad.wer > 0.5 and any(issue.startswith("wer") for issue in bad.issues)
    other = check_line(espeak(text, "en-us", CHECK_RATE_HZ), text, CheckOptions(), hear, embed, voice)
    assert other.similarity < good.similarity - 0.15  # Piper's voice is closer to itself than espeak-ng's


def test_like_a_sample_finds_the_speaker_and_reports_every_similarity(settings):
    conversation = build_conversation(SCRIPT, overlap_line=SCRIPT_OVERLAP_LINE)
    encoder = load_voice_encoder(settings.model_dir)
    speech = audio.mono_at(sum(conversation.voices.values()), conversation.sample_rate_hz, CHECK_RATE_HZ)
    sample = espeak("I will call you back after lunch to talk about the plan.", "en+f3", CHECK_RATE_HZ)
    choice = choose_target(
        conversation.turns(), TargetOptions(), speech, sample, lambda s: encoder.embed(s, CHECK_RATE_HZ)
    )
    assert choice.speaker == "SPEAKER_01" and choice.method == "like"  # espeak-ng's en+f3 speaks SPEAKER_01's lines
    assert set(choice.similarity) == {"SPEAKER_00", "SPEAKER_01"}
    assert choice.similarity["SPEAKER_01"] > choice.similarity["SPEAKER_00"] + 0.1
    assert "closest to the sample" in choice.describe()


def test_the_loop_keeps_good_lines_and_regenerates_then_flags_a_wrong_one(
    tmp_path, use_store, use_models, prefect_harness, real_models, monkeypatch
):
    """A test synthesizer speaks each line with Piper, except one line, which it always gets wrong."""
    conversation = build_conversation(SCRIPT, overlap_line=SCRIPT_OVERLAP_LINE)
    target_texts = [x.text for x in conversation.lines if x.speaker == TARGET]
    calls: list[tuple[str, int]] = []

    def piper_synthesize(model, mode, items, options, prompt=None, hook=None, **_):
        calls.extend((item.text, options.seed) for item in items)
        spoken = []
        for item in items:
            samples, rate = piper_speak(WRONG if item.text == target_texts[1] else item.text)
            spoken.append(
                Speech(audio.resample(samples[None] * 0.5, rate, 24_000)[0], 24_000, options.seed, 1, (), 0.1)
            )
        return spoken

    monkeypatch.setattr(tts, "synthesize", piper_synthesize)
    use_models(folder=real_models)
    settings = StoreSettings(location=str(tmp_path / "store"))
    use_store(settings)
    reference_text = "This is how my voice sounds when I read a sentence aloud, slowly and clearly."
    samples, rate = piper_speak(reference_text)
    reference = write_audio(tmp_path / "piper.wav", samples[None] * 0.5, rate)
    lines = tmp_path / "lines.json"
    pd.DataFrame([vars(x) for x in conversation.lines]).to_json(lines, orient="records")
    options = VoiceReplaceOptions(
        target=TargetOptions(speaker=TARGET),
        voice=str(reference),
        voice_transcript=reference_text,
        language="English",
        lines=str(lines),
        speech=SpeechOptions(run_post_processing=False, run_upsampling=False, consent_note="Piper joe voice, MIT"),
        quality=CheckOptions(retries=2, transcribe=BASE),
    )
    source = conversation.write(tmp_path / "talk.wav")
    result = voice_replace(paths=[str(source)], options=options).outcomes[0].result
    store = open_store(settings)
    table = pd.read_parquet(io.BytesIO(store.get_bytes(store.key_of(result.table.uri)))).set_index("line_id")
    good, wrong = table.drop(index=table.index[1]), table.iloc[1]
    assert (good.attempts == 1).all() and good.quality_ok.all() and not good.flagged.any()
    assert (good.wer <= 0.15).all() and (good.similarity > 0.7).all() and (good.dnsmos > 2.0).all()
    assert wrong.attempts == 3 and wrong.flagged and not wrong.quality_ok and "wer" in wrong.notes
    seeds = [seed for text, seed in calls if text == target_texts[1]]
    assert seeds == [0, RETRY_SEED_STRIDE, 2 * RETRY_SEED_STRIDE]  # a new seed each time
    report = store.get_bytes(store.key_of(result.report.uri)).decode()
    assert f"**{table.index[1]}**" in report and "wer" in report.split("## Flagged lines")[1]


@pytest.mark.parametrize(
    ("name", "run_separate"), [("diar_2spk_pyannote/sample.wav", False), ("music_vocals_mp3/audio_example.mp3", True)]
)
def test_the_flow_end_to_end_on_corpus_recordings(
    name, run_separate, tmp_path, use_store, use_models, prefect_harness, real_models, monkeypatch
):
    """Real Whisper base hears the lines (tiny pyannote and Qwen3-TTS do the rest): the recording keeps its rate,
    channels and length, and every sample outside the replaced lines.

    sample.wav is speech alone, so it runs without separation and Whisper finds its lines. The song runs
    through tiny Demucs, whose random vocals stem holds no words: nothing is transcribed for the target,
    and the output must then be the input itself."""
    from tests.conftest import CORPUS

    use_models(folder=real_models)
    monkeypatch.setenv("VOXFLOW_WHISPER_MODEL", "base")
    monkeypatch.setenv("VOXFLOW_WHISPER_BACKEND", "faster-whisper")
    settings = StoreSettings(location=str(tmp_path / "store"))
    use_store(settings)
    options = VoiceReplaceOptions(
        language="English",
        run_separate=run_separate,
        speech=SpeechOptions(
            synthesize=tts.SynthesizeOptions(
                frames_per_char=0.5, margin_frames=4, max_new_tokens_cap=24, quality_retries=0
            ),
            run_post_processing=False,
            run_upsampling=False,
        ),
        quality=CheckOptions(enabled=False),
    )
    result = voice_replace(paths=[str(CORPUS / name)], options=options).outcomes[0].result
    source = audio.decode_file(CORPUS / name)
    store = open_store(settings)
    mix, rate = audio.decode_wav_bytes(store.get_bytes(store.key_of(result.artifact.uri)))
    assert rate == source.sample_rate_hz and mix.shape == source.samples.shape
    table = pd.read_parquet(io.BytesIO(store.get_bytes(store.key_of(result.table.uri))))
    if not run_separate:
        assert table.replaced.sum() >= 10  # Whisper base found the target's lines
        assert table[~table.replaced].notes.str.contains("not replaced").all()  # too little solo time
    else:
        assert len(table) == 0 and result.lines == 0
    outside = np.ones(mix.shape[1], bool)
    for row in table[table.replaced].itertuples():
        start = round(row.slot_start_s * rate) - round(0.005 * rate)
        outside[max(start, 0) : round((row.slot_start_s + row.slot_s + row.gap_used_s + 0.005) * rate)] = False
    peak_scale = 10 ** (result.global_gain_db / 20)
    np.testing.assert_allclose(mix[:, outside], source.samples[:, outside] * peak_scale, atol=1e-4)
    assert result.true_peak_dbtp <= -1.0
