"""Synthesize: tiny random Qwen3-TTS models, our batched synthesis against the package's own calls, the stages.

The tiny models (``voxflow.tasks.testing.random_models.qwen_tts``) have the real architectures and ids with 32-wide
stacks, and never emit their end token: every generation runs to ``max_new_tokens`` and yields
``max_new_tokens - 1`` codec frames of 1920 samples. That makes lengths exact (the batching and
splitting tests count samples) and makes every line fail the "truncated" check, which the quality
tests use; a passing line is driven by a stand-in for the model call.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import CORPUS
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import open_store
from voxflow.tasks.helpers import audio, quality
from voxflow.tasks.kit.model_sources import MODEL_SOURCES
from voxflow.tasks.kit.model_sources import hub_folder_name as local_folder_name
from voxflow.tasks.kit.models import ModelNotFound, ModelSettings
from voxflow.tasks.synthesize import (
    DEFAULT_MODELS,
    LIBRARY,
    SAMPLE_RATE_HZ,
    ReferenceText,
    SynthesisItem,
    SynthesisRequest,
    SynthesizeOptions,
    VoicePrompt,
    VoicePromptOptions,
    crossfade_join,
    load_tts_model,
    max_new_tokens_for,
    model_revision,
    split_text,
    supported_languages,
    supported_speakers,
    synthesize,
    validate_items,
    voice_prompt,
)

REFERENCE = CORPUS / "clone_ref_lj" / "LJ050-0131.wav"  # 7.7 s, 22.05 kHz mono
REFERENCE_TEXT = (
    "unless a system is established for the frequent formal review of activities thereunder. in this regard"
)
HOP = 1920  # samples per codec frame at 24 kHz
SHORT = dict(frames_per_char=0.25, margin_frames=4, max_new_tokens_cap=40)  # a few frames per call
LINES = ("Good morning.", "The quick brown fox jumps over the lazy dog.", "Is it ready?", "Yes, it is ready now.")


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def folder(tiny_models) -> Path:
    return tiny_models.build("qwen_tts")


def _load(mode: str, folder: Path):
    return load_tts_model(DEFAULT_MODELS[mode], "cpu", folder)


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, int]:
    decoded = audio.decode_file(REFERENCE)
    return decoded.samples, decoded.sample_rate_hz


@pytest.fixture(scope="module")
def prompt(folder, reference) -> VoicePrompt:
    return voice_prompt(_load("clone", folder), *reference, REFERENCE_TEXT)


class Recorder:
    """Wraps a model's generate method: records each call's texts, max_new_tokens, seed and output."""

    def __init__(self, model, method: str, monkeypatch, fake=None) -> None:
        self.calls: list[dict] = []
        real = getattr(model, method)

        def call(**kwargs):
            seed = torch.initial_seed()  # what torch.manual_seed set right before the call
            wavs, rate = fake(kwargs["text"], seed) if fake else real(**kwargs)
            self.calls.append(
                {"texts": list(kwargs["text"]), "max_new_tokens": kwargs["max_new_tokens"], "seed": seed, "wavs": wavs}
            )
            return wavs, rate

        monkeypatch.setattr(model, method, call)

    def output_of(self, text: str) -> np.ndarray:
        return next(c["wavs"][c["texts"].index(text)] for c in self.calls if text in c["texts"])


def test_the_builder_is_deterministic_and_the_folders_load_without_missing_weights(folder, tmp_path):
    from safetensors.torch import load_file

    from voxflow.tasks.kit.models import RANDOM_WEIGHTS_MARKER
    from voxflow.tasks.testing import random_models

    root = folder / LIBRARY
    rebuilt = random_models.build("qwen_tts", tmp_path, "tiny", seed=0)
    digest = {p.relative_to(tmp_path / LIBRARY): hashlib.sha256(p.read_bytes()).hexdigest() for p in rebuilt}
    marker = root / RANDOM_WEIGHTS_MARKER  # beside the models: they are random (voxflow doctor and the logs say so)
    assert marker.read_text().startswith("random-weight tiny test models")
    assert digest == {
        p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and p != marker
    }
    assert len(digest) == 3 * 9 and not any(p.is_symlink() for p in root.rglob("*"))  # copies, not links
    kinds = {}
    for mode, name in DEFAULT_MODELS.items():
        path = root / local_folder_name(name)
        model = load_tts_model(name, "cpu", folder)
        saved = load_file(path / "model.safetensors")
        loaded = model.model.state_dict()
        assert set(saved) == set(loaded)  # nothing missing, nothing unexpected
        assert all(torch.equal(saved[k], loaded[k]) for k in saved)
        config = json.loads((path / "config.json").read_text())
        assert "model_type" not in config["speaker_encoder_config"]  # the upstream round-trip fix
        kinds[mode] = (config["tts_model_type"], config["tts_model_size"], ("speaker_encoder.asp.conv.weight" in saved))
        assert supported_languages(model) == [
            "auto",
            "chinese",
            "english",
            "french",
            "german",
            "italian",
            "japanese",
            "korean",
            "portuguese",
            "russian",
            "spanish",
        ]
    assert kinds == {
        "clone": ("base", "0b6", True),
        "design": ("voice_design", "1b7", False),
        "custom": ("custom_voice", "1b7", False),
    }
    assert "ryan" in supported_speakers(_load("custom", folder)) and supported_speakers(_load("design", folder)) == []


def test_full_size_models_have_the_released_parameter_counts():
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

    from voxflow.tasks.testing.random_models import qwen_tts

    tokenizer = qwen_tts.text_tokenizer()
    with torch.device("meta"):  # constructed without memory: shapes only
        counts = {
            kind: sum(
                p.numel()
                for p in Qwen3TTSForConditionalGeneration(
                    Qwen3TTSConfig(**qwen_tts.model_config(kind, "full", tokenizer))
                ).parameters()
            )
            for kind in ("base", "voice_design", "custom_voice")
        }
        codec = Qwen3TTSTokenizerV2Model(Qwen3TTSTokenizerV2Config(**qwen_tts._speech_tokenizer_config("full")))
    # Hugging Face lists 0.9B for the 0.6B models and 2B for the 1.7B ones; the codec file is 682 MB in float32
    assert round(counts["base"] / 1e9, 2) == 0.91 and round(counts["voice_design"] / 1e9, 2) == 1.92
    assert counts["custom_voice"] == counts["voice_design"]
    codec_bytes = 4 * (sum(p.numel() for p in codec.parameters()) + sum(b.numel() for b in codec.buffers()))
    assert round(codec_bytes / 1e6) == 682


@pytest.mark.parametrize("mode", ["design", "custom", "clone"])
def test_one_bucket_equals_the_packages_own_call(folder, prompt, mode):
    model = _load(mode, folder)
    options = SynthesizeOptions(seed=7, quality_retries=0, **SHORT)
    fields = {
        "design": lambda i: {"voice_description": ["a calm low voice", "bright", "an old man"][i]},
        "custom": lambda i: {"speaker": ["Ryan", "vivian", "Eric"][i], "instruction": ["", "happy", "slowly"][i]},
        "clone": lambda i: {},
    }[mode]
    items = [
        SynthesisItem(text, language, **fields(i))
        for i, (text, language) in enumerate(zip(LINES[1:], ["english", "auto", "chinese"]))
    ]
    ours = synthesize(model, mode, items, options, prompt if mode == "clone" else None)

    order = sorted(range(3), key=lambda i: -len(items[i].text))  # one call, longest text first
    texts, languages = [items[i].text for i in order], [items[i].language for i in order]
    common = {"text": texts, "language": languages, "max_new_tokens": max_new_tokens_for(texts, options)}
    torch.manual_seed(7)
    if mode == "design":
        wavs, rate = model.generate_voice_design(instruct=[items[i].voice_description for i in order], **common)
    elif mode == "custom":
        wavs, rate = model.generate_custom_voice(
            speaker=[items[i].speaker for i in order], instruct=[items[i].instruction for i in order], **common
        )
    else:
        wavs, rate = model.generate_voice_clone(
            ref_audio=(audio.decode_file(REFERENCE).samples[0], 22_050), ref_text=REFERENCE_TEXT, **common
        )
    assert rate == SAMPLE_RATE_HZ
    for position, i in enumerate(order):
        assert ours[i].samples.dtype == np.float32 and ours[i].sample_rate_hz == rate and ours[i].seed == 7
        np.testing.assert_array_equal(ours[i].samples, wavs[position])  # bit-identical: the same call
    assert len({s.samples.size for s in ours}) == 1  # one call: the same max_new_tokens for all three


def test_the_voice_prompt_equals_the_packages_and_round_trips_through_bytes(folder, reference, prompt):
    base = _load("clone", folder)
    samples, rate = reference
    [item] = base.create_voice_clone_prompt(ref_audio=(samples[0], rate), ref_text=REFERENCE_TEXT)
    np.testing.assert_array_equal(prompt.ref_code, item.ref_code.numpy())
    np.testing.assert_allclose(prompt.ref_spk_embedding, item.ref_spk_embedding.numpy(), rtol=0, atol=1e-6)
    assert (prompt.icl_mode, prompt.x_vector_only_mode, prompt.ref_text) == (True, False, REFERENCE_TEXT)
    assert prompt.ref_code.shape == (96, 16) and prompt.ref_code.dtype == np.int64  # 7.7 s at 12.5 Hz, 16 groups

    data = prompt.to_bytes()
    again = VoicePrompt.from_bytes(data)
    assert again.to_bytes() == data and again.ref_text == REFERENCE_TEXT and again.icl_mode
    np.testing.assert_array_equal(again.ref_code, prompt.ref_code)
    np.testing.assert_array_equal(again.ref_spk_embedding, prompt.ref_spk_embedding)

    stereo = np.concatenate([samples, samples])  # (channels, samples) is downmixed
    only_voice = voice_prompt(base, stereo, rate, None, x_vector_only=True)
    assert only_voice.ref_code is None and not only_voice.icl_mode and only_voice.ref_text is None
    np.testing.assert_allclose(only_voice.ref_spk_embedding, prompt.ref_spk_embedding, rtol=0, atol=1e-5)
    assert VoicePrompt.from_bytes(only_voice.to_bytes()).ref_code is None

    with pytest.raises(ValueError, match="needs its transcript"):
        voice_prompt(base, samples, rate, "  ")
    with pytest.raises(ValueError, match=r"reference recording is 0\.50 s long; a voice needs at least 1 s"):
        voice_prompt(base, samples[:, : rate // 2], rate, REFERENCE_TEXT)
    with pytest.raises(ValueError, match="needs a base model"):
        voice_prompt(_load("design", folder), samples, rate, REFERENCE_TEXT)
    with pytest.raises(ValueError, match="not a voice prompt"):
        VoicePrompt.from_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}              ")


def test_lines_are_sorted_by_length_and_each_bucket_is_one_call(folder, monkeypatch):
    model = _load("design", folder)
    recorder = Recorder(model, "generate_voice_design", monkeypatch)
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    rng = np.random.default_rng(3)
    items = [
        SynthesisItem(" ".join(rng.choice(words, size=1 + i % 7 + (i * 5) % 3)) + f" {i}.", voice_description="calm")
        for i in range(16)
    ]
    progress = []
    speeches = synthesize(
        model,
        "design",
        items,
        SynthesizeOptions(batch_size=8, quality_retries=0, **SHORT),
        hook=lambda done, total: progress.append((done, total)),
    )

    assert len(recorder.calls) == math.ceil(16 / 8) == 2
    by_length = sorted((item.text for item in items), key=len, reverse=True)
    assert [len(t) for c in recorder.calls for t in c["texts"]] == [len(t) for t in by_length]
    assert sorted(t for c in recorder.calls for t in c["texts"]) == sorted(item.text for item in items)
    for call in recorder.calls:  # each call's budget comes from its own longest text
        assert (
            call["max_new_tokens"] == max_new_tokens_for(call["texts"], SynthesizeOptions(**SHORT))
            and call["seed"] == 0
        )
        assert all(w.size == (call["max_new_tokens"] - 1) * HOP for w in call["wavs"])
    assert recorder.calls[0]["max_new_tokens"] > recorder.calls[1]["max_new_tokens"]
    for item, speech in zip(items, speeches):  # back in input order
        np.testing.assert_array_equal(speech.samples, recorder.output_of(item.text))
    assert progress == [(8, 16), (16, 16)]


def test_max_new_tokens_grows_with_the_text_and_a_long_text_is_split_and_joined(folder, monkeypatch):
    options = SynthesizeOptions(**SHORT)
    budgets = [max_new_tokens_for([t], options) for t in ("a", "a" * 40, "a" * 80, "a" * 1000)]
    assert budgets == [5, 14, 24, 40] and budgets == sorted(budgets)  # ceil(chars * 0.25) + 4, capped at 40
    assert max_new_tokens_for(["a" * 10, "a" * 80], options) == budgets[2]  # the longest text decides

    model = _load("design", folder)
    recorder = Recorder(model, "generate_voice_design", monkeypatch)
    text = "The first sentence is here. A second one follows it! Does the third come last?"
    options = SynthesizeOptions(max_chars=30, batch_size=1, crossfade_s=0.02, quality_retries=0, **SHORT)
    [speech] = synthesize(model, "design", [SynthesisItem(text, voice_description="calm")], options)
    pieces = ["The first sentence is here.", "A second one follows it!", "Does the third come last?"]
    assert sorted(c["texts"][0] for c in recorder.calls) == sorted(pieces) and len(recorder.calls) == 3
    sizes = [recorder.output_of(p).size for p in pieces]
    assert sizes == [(max_new_tokens_for([p], options) - 1) * HOP for p in pieces]
    crossfade = round(0.02 * SAMPLE_RATE_HZ)
    assert speech.samples.size == sum(sizes) - 2 * crossfade
    np.testing.assert_array_equal(speech.samples[: sizes[0] - crossfade], recorder.output_of(pieces[0])[:-crossfade])
    np.testing.assert_array_equal(speech.samples[-(sizes[2] - crossfade) :], recorder.output_of(pieces[2])[crossfade:])


@pytest.mark.parametrize(
    ("text", "max_chars", "pieces"),
    [
        ("Short enough.", 50, ["Short enough."]),
        ("One. Two! Three? Four.", 10, ["One. Two!", "Three?", "Four."]),
        ("Pi is 3.14 today. Next sentence here.", 20, ["Pi is 3.14 today.", "Next sentence here."]),
        (
            "a long clause, another clause; and a third one",
            20,
            ["a long clause,", "another clause;", "and a third one"],
        ),
        (
            "many small words without any punctuation at all",
            15,
            ["many small", "words without", "any punctuation", "at all"],
        ),
        ("今天天气很好。我们去公园吧！好吗？", 8, ["今天天气很好。", "我们去公园吧！", "好吗？"]),
        ("第一部分，第二部分，第三部分。", 6, ["第一部分，", "第二部分，", "第三部分。"]),
        ("abcdefghijklmnopqrstuvwxyz", 10, ["abcdefghij", "klmnopqrst", "uvwxyz"]),
        ("  spaced \n\n  out   text.  ", 50, ["spaced out text."]),
    ],
)
def test_split_text_cuts_at_sentences_then_clauses_then_words(text, max_chars, pieces):
    assert split_text(text, max_chars) == pieces
    assert all(len(p) <= max_chars for p in split_text(text, max_chars))


def test_crossfade_join_keeps_a_steady_signal_steady():
    ones = [np.ones(1000, np.float32), np.ones(500, np.float32), np.ones(800, np.float32)]
    joined = crossfade_join(ones, 100)
    assert joined.size == 2300 - 2 * 100
    np.testing.assert_allclose(joined, 1.0, atol=1e-6)  # the fade-out and fade-in weights sum to one
    assert crossfade_join([np.ones(10, np.float32), np.zeros(3, np.float32)], 100).size == 10  # at most the shorter
    assert crossfade_join([], 10).size == 0


@pytest.mark.parametrize(
    ("mode", "item", "message"),
    [
        (
            "design",
            SynthesisItem("Hi.", "klingon", voice_description="calm"),
            r"line 0: language 'klingon' is not supported; supported: auto, chinese, english, .*, spanish",
        ),
        (
            "custom",
            SynthesisItem("Hi.", speaker="nobody"),
            r"speaker 'nobody' is not supported; speakers: aiden, dylan, .*, vivian",
        ),
        ("custom", SynthesisItem("Hi."), r"custom mode needs a speaker; speakers: aiden, dylan"),
        ("design", SynthesisItem("Hi."), "design mode needs a voice_description"),
        ("design", SynthesisItem("  ", voice_description="calm"), "line 0: text is empty"),
        (
            "design",
            SynthesisItem("Hi.", speaker="ryan", voice_description="calm"),
            "speaker and instruction are for custom mode",
        ),
        (
            "custom",
            SynthesisItem("Hi.", speaker="ryan", voice_description="calm"),
            "voice_description is for design mode",
        ),
    ],
)
def test_lines_a_model_cannot_speak_fail_with_one_line_naming_the_choices(folder, mode, item, message):
    with pytest.raises(ValueError, match=message):
        validate_items(_load(mode, folder), mode, [item])


def test_a_model_of_the_wrong_kind_and_a_misplaced_prompt_are_refused(folder, prompt, monkeypatch):
    design = _load("design", folder)
    with pytest.raises(
        ValueError, match="mode 'custom' needs a custom_voice model .* but the model is a voice_design model"
    ):
        synthesize(design, "custom", [SynthesisItem("Hi.", speaker="ryan")])
    with pytest.raises(ValueError, match="design mode takes no voice prompt"):
        synthesize(design, "design", [SynthesisItem("Hi.", voice_description="calm")], prompt=prompt)
    with pytest.raises(ValueError, match="clone mode needs a voice prompt"):
        synthesize(_load("clone", folder), "clone", [SynthesisItem("Hi.")])
    custom = _load("custom", folder)
    monkeypatch.setattr(custom.model, "tts_model_size", "0b6")  # the 0.6B CustomVoice drops instructions silently
    with pytest.raises(ValueError, match="0.6B CustomVoice model ignores instructions"):
        validate_items(custom, "custom", [SynthesisItem("Hi.", speaker="ryan", instruction="happy")])


def _speech_like(seconds: float, seed: int) -> np.ndarray:
    """Noise at speech level that fades in and out (passes every check)."""
    n = int(seconds * SAMPLE_RATE_HZ)
    return (0.1 * np.random.default_rng(seed).standard_normal(n) * np.hanning(n)).astype(np.float32)


def test_failing_lines_are_regenerated_together_with_new_seeds_then_flagged(folder, monkeypatch):
    model = _load("design", folder)

    def fake(texts, seed):  # "bad" is always silent, "flaky" only with the first seed
        silent = lambda text: text.startswith("bad") or (text.startswith("flaky") and seed == 5)  # noqa: E731
        time.sleep(0.02)  # a call's time, shared by its lines: more calls, more compute time
        return [np.zeros(24_000, np.float32) if silent(t) else _speech_like(1.5, seed) for t in texts], SAMPLE_RATE_HZ

    recorder = Recorder(model, "generate_voice_design", monkeypatch, fake)
    items = [SynthesisItem(t, voice_description="calm") for t in ("good line here", "flaky line", "bad line")]
    good, flaky, bad = synthesize(model, "design", items, SynthesizeOptions(seed=5, quality_retries=2))

    assert [(c["texts"], c["seed"]) for c in recorder.calls] == [
        (["good line here", "flaky line", "bad line"], 5),
        (["flaky line", "bad line"], 1005),
        (["bad line"], 2005),
    ]
    assert (good.attempts, good.seed, good.issues) == (1, 5, ())
    assert (flaky.attempts, flaky.seed, flaky.issues) == (2, 1005, ())
    assert (bad.attempts, bad.seed, bad.issues) == (3, 2005, ("silent",))
    assert not bad.samples.any() and good.samples.any() and bad.compute_s > flaky.compute_s > 0


def test_a_line_cut_at_max_new_tokens_is_flagged_truncated_after_its_retries(folder, monkeypatch):
    model = _load("custom", folder)  # tiny models never stop by themselves
    recorder = Recorder(model, "generate_custom_voice", monkeypatch)
    [speech] = synthesize(
        model,
        "custom",
        [SynthesisItem("Hello there.", speaker="aiden")],
        SynthesizeOptions(seed=1, quality_retries=1, **SHORT),
    )
    assert [c["seed"] for c in recorder.calls] == [1, 1001]
    assert (speech.attempts, speech.seed, speech.issues) == (2, 1001, ("truncated",))
    np.testing.assert_array_equal(speech.samples, recorder.calls[-1]["wavs"][0])


def test_check_speech_names_each_kind_of_failure():
    rate = SAMPLE_RATE_HZ
    text = "A line of about two seconds of speech."  # 30 letters: 2.5 s expected
    good = _speech_like(2.0, 0)
    assert quality.check_speech(good, rate, text) == ()
    assert quality.check_speech(np.zeros(0, np.float32), rate, text) == ("empty",)
    assert quality.check_speech(np.zeros(rate, np.float32), rate, text) == ("silent",)
    assert quality.check_speech(good * 1e-4, rate, text) == ("silent",)  # -80 dBFS
    assert quality.check_speech(np.clip(good * 40, -1, 1), rate, text) == ("clipped",)
    assert quality.check_speech(good[: rate // 2] * np.hanning(rate // 2), rate, text) == ("truncated",)  # 0.5 s < 40 %
    assert quality.check_speech(good, rate, text, hit_token_limit=True) == ("truncated",)
    assert quality.check_speech(good[: int(1.2 * rate)], rate, text) == ("truncated",)  # ends at full level
    assert quality.check_speech(np.full(rate, np.nan, np.float32), rate, text) == ("clipped",)
    assert quality.check_speech(good, rate, text, expected_s=10.0) == ("truncated",)
    # CJK takes longer per character: 9 characters are 2 s, 9 Latin letters 0.75 s
    assert quality.expected_duration_s("今天天气很好我们去") == pytest.approx(2.0)
    assert quality.expected_duration_s("Todayweat") == pytest.approx(0.75)
    assert quality.rms_dbfs(np.full(10, 0.1)) == pytest.approx(-20.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": 0}, "SynthesizeOptions.batch_size: Input should be greater than or equal to 1"),
        ({"max_chars": 5}, "SynthesizeOptions.max_chars: Input should be greater than or equal to 10"),
        ({"crossfade_s": -0.1}, "SynthesizeOptions.crossfade_s: Input should be greater than or equal to 0"),
        (
            {"margin_frames": 100, "max_new_tokens_cap": 50},
            r"margin_frames \(100\) must not exceed max_new_tokens_cap \(50\)",
        ),
        ({"top_p": 1.5}, "SynthesizeOptions.top_p: Input should be less than or equal to 1"),
        ({"quality_retries": 11}, "SynthesizeOptions.quality_retries: Input should be less than or equal to 10"),
        ({"model": " "}, "SynthesizeOptions.model: must be a repo id"),
    ],
)
def test_invalid_options_fail_with_one_line(change, message):
    with pytest.raises(ValueError, match=message):
        SynthesizeOptions(**change)


def test_requests_and_transcripts_key_the_cache_by_content():
    a = SynthesisRequest("design", [SynthesisItem("Hi.", voice_description="calm")])  # a list becomes a tuple
    assert isinstance(a.items, tuple) and a == SynthesisRequest(
        "design", (SynthesisItem("Hi.", voice_description="calm"),)
    )
    assert a.sha256 == SynthesisRequest("design", (SynthesisItem("Hi.", voice_description="calm"),)).sha256
    assert a.sha256 != SynthesisRequest("design", (SynthesisItem("Hi!", voice_description="calm"),)).sha256
    assert ReferenceText("words").sha256 == hashlib.sha256(b"words").hexdigest()
    with pytest.raises(ValueError, match="mode must be one of clone, design, custom"):
        SynthesisRequest("sing", (SynthesisItem("Hi."),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one line"):
        SynthesisRequest("clone", ())
    assert SynthesizeOptions(x_vector_only=True).voice_prompt_options() == VoicePromptOptions(
        DEFAULT_MODELS["clone"], True
    )


def test_models_load_once_from_the_folder_and_a_missing_one_fails_clearly(folder, tmp_path, monkeypatch):
    name = DEFAULT_MODELS["clone"]
    assert load_tts_model(name, "cpu", folder) is load_tts_model(name, "cpu", folder)
    settings = ModelSettings(model_dir=str(folder))
    source = MODEL_SOURCES["synthesize"]
    path = folder / LIBRARY / "Qwen3-TTS-12Hz-0.6B-Base"
    assert (source.library, source.name, source.present(name, settings)) == (LIBRARY, name, path)
    assert load_tts_model(str(path), "cpu") is not None  # a folder path works as a name too
    revision = model_revision(name, folder)
    assert revision.startswith("local-") and revision == model_revision(name, folder)
    with pytest.raises(
        ModelNotFound, match=r"'Qwen/Nope-TTS' is not in .*qwen-tts/Nope-TTS and could not be downloaded"
    ):
        load_tts_model("Qwen/Nope-TTS", "cpu", tmp_path)  # HF_HUB_OFFLINE=1: the download fails at once
    broken = tmp_path / LIBRARY / "Broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")
    with pytest.raises(ModelNotFound, match="cannot load Qwen3-TTS model folder .*Broken"):
        load_tts_model("Broken", "cpu", tmp_path)

    import huggingface_hub

    def snapshot_download(repo_id, token=None, local_dir=None):  # stands in for the hub: copies the tiny folder
        import shutil

        shutil.copytree(folder / LIBRARY / local_folder_name(repo_id), local_dir)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    pulled = source.pull(name, ModelSettings(model_dir=str(tmp_path / "pulled")))
    assert pulled == tmp_path / "pulled" / LIBRARY / "Qwen3-TTS-12Hz-0.6B-Base" and (pulled / "config.json").is_file()


@pytest.mark.usefixtures("prefect_harness")
def test_the_stages_in_a_flow_compute_the_prompt_once_and_write_24khz_lines(
    tmp_path, use_store, tiny_models, monkeypatch
):
    from prefect import flow

    from voxflow.flows.environment import environment
    from voxflow.tasks.ingest import IngestOptions, ingest_file
    from voxflow.tasks.synthesize import clone_prompt, synthesize_lines

    models = tiny_models.settings("qwen_tts")
    base = _load("clone", models.folder)
    prompts = []
    real = base.create_voice_clone_prompt
    monkeypatch.setattr(base, "create_voice_clone_prompt", lambda **kw: prompts.append(kw) or real(**kw))
    options = SynthesizeOptions(quality_retries=0, **SHORT)
    cloned = SynthesisRequest("clone", (SynthesisItem("First line."), SynthesisItem("And a second, longer line.")))
    designed = SynthesisRequest("design", (SynthesisItem("Designed.", voice_description="a warm voice"),))

    @flow(name="test-synthesize")
    def synthesize_flow(path: str):
        env = environment(None)
        reference = env.stage(ingest_file)(path, IngestOptions(sample_rate_hz=None), env.settings)
        voice = env.stage(clone_prompt)(
            reference, ReferenceText(REFERENCE_TEXT), options.voice_prompt_options(), env.settings, models
        )
        again = env.stage(clone_prompt)(
            reference, ReferenceText(REFERENCE_TEXT), options.voice_prompt_options(), env.settings, models
        )
        lines = env.stage(synthesize_lines)(cloned, again, options, env.settings, models)
        return (
            reference,
            voice,
            again,
            lines,
            env.stage(synthesize_lines)(designed, None, options, env.settings, models),
        )

    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    reference, voice, again, lines, design = synthesize_flow(str(REFERENCE))
    assert voice == again and len(prompts) == 1  # the second is a cache hit: computed once
    runs = catalog.frame("stage_runs")
    assert sorted(runs[runs["stage"] == "voice_prompt"]["cache_hit"]) == [False, True]
    store = open_store(StoreSettings.from_env())
    stored = VoicePrompt.from_bytes(store.get_bytes(store.key_of(voice.artifact.uri), voice.sha256))
    np.testing.assert_array_equal(
        stored.ref_code,
        voice_prompt(
            base,
            *audio.decode_wav_bytes(store.get_bytes(store.key_of(reference.artifact.uri), reference.sha256)),
            REFERENCE_TEXT,
        ).ref_code,
    )
    assert (voice.model, voice.transcript, voice.reference_sha256) == (
        DEFAULT_MODELS["clone"],
        REFERENCE_TEXT,
        reference.source_sha256,
    )

    assert [line.text for line in lines.lines] == ["First line.", "And a second, longer line."]
    for i, line in enumerate(lines.lines):
        samples, rate = audio.decode_wav_bytes(store.get_bytes(store.key_of(line.artifact.uri), line.artifact.sha256))
        assert rate == SAMPLE_RATE_HZ and samples.shape == (1, round(line.duration_s * rate))
        assert "/synthesize/" in line.artifact.uri and line.artifact.uri.endswith(f"/line-{i:03d}.wav")
        assert (line.mode, line.model, line.seed, line.attempts, line.issues) == (
            "clone",
            DEFAULT_MODELS["clone"],
            0,
            1,
            ("truncated",),
        )
        assert line.voice_source_sha256 == reference.source_sha256 and line.model_revision.startswith("local-")
        assert line.real_time_factor == pytest.approx(line.compute_s / line.duration_s)
    assert lines.summary() == {
        "lines": 2,
        "flagged": 2,
        "duration_s": pytest.approx(sum(x.duration_s for x in lines.lines)),
        "model": DEFAULT_MODELS["clone"],
    }
    [designed_line] = design.lines
    assert (designed_line.mode, designed_line.voice_description, designed_line.voice_source_sha256) == (
        "design",
        "a warm voice",
        None,
    )
    names = set(catalog.frame("artifacts")["name"])
    assert {"voice_prompt.safetensors", "line-000.wav", "line-001.wav"} <= names
