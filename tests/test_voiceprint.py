"""The GE2E voiceprint on Resemblyzer's real weights: equal to Resemblyzer's own code, and it tells voices apart."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
import soundfile as sf

from tests.conversation import espeak
from tests.real_models import CORPUS, ge2e_weights, piper_speak, resemblyzer_voice_encoder
from voxflow.tasks.helpers import voiceprint
from voxflow.tasks.helpers.speakers import parse_rttm
from voxflow.tasks.helpers.voiceprint import VoiceEncoder, cosine, load_voice_encoder, prepare

DIAR = CORPUS / "diar_2spk_pyannote"
GRID_S = 0.01  # time grid for finding where one speaker speaks alone
SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please call me back tomorrow afternoon when you have a minute to spare.",
)


@pytest.fixture(scope="module")
def encoder() -> VoiceEncoder:
    return load_voice_encoder(ge2e_weights())


@pytest.fixture(scope="module")
def corpus_voiceprints(encoder) -> dict[str, list[np.ndarray]]:
    """Each corpus speaker's two longest stretches of speaking alone, embedded."""
    samples, rate_hz = sf.read(DIAR / "sample.wav", dtype="float32")
    pieces = solo_pieces(parse_rttm((DIAR / "sample.rttm").read_text()))
    return {
        speaker: [encoder.embed(samples[round(a * rate_hz) : round(b * rate_hz)], rate_hz) for a, b in spans[:2]]
        for speaker, spans in pieces.items()
    }


def solo_pieces(turns) -> dict[str, list[tuple[float, float]]]:
    """Per speaker, the stretches (start_s, end_s) where only they speak, longest first."""
    end = max(turn.end_s for turn in turns)
    grid = np.arange(0, end, GRID_S)
    speakers = sorted({turn.speaker for turn in turns})
    masks = {s: np.zeros(grid.size, bool) for s in speakers}
    for turn in turns:
        masks[turn.speaker] |= (grid >= turn.start_s) & (grid < turn.end_s)
    pieces = {}
    for speaker in speakers:
        alone = masks[speaker] & ~np.any([masks[s] for s in speakers if s != speaker], axis=0)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], alone.astype(int), [0]])))
        spans = [(grid[a], grid[b - 1] + GRID_S) for a, b in zip(edges[::2], edges[1::2])]
        pieces[speaker] = sorted(spans, key=lambda span: span[0] - span[1])
    return pieces


def test_same_speaker_is_closer_than_the_other_speaker(corpus_voiceprints):
    (a1, a2), (b1, b2) = corpus_voiceprints.values()
    same = [cosine(a1, a2), cosine(b1, b2)]
    across = [cosine(x, y) for x, y in itertools.product((a1, a2), (b1, b2))]
    print(f"corpus: same speaker {same}, across speakers {across}")
    assert min(same) > max(across)
    assert all(abs(np.linalg.norm(v) - 1) < 1e-5 and v.dtype == np.float32 and v.shape == (256,) for v in (a1, b1))


def test_piper_voice_is_closest_to_itself(encoder, corpus_voiceprints):
    first, second = (encoder.embed(*piper_speak(text)) for text in SENTENCES)
    itself = cosine(first, second)
    others = {
        "espeak en-us": cosine(first, encoder.embed(espeak(SENTENCES[1], "en-us", 22_050), 22_050)),
        **{f"corpus {s}": cosine(first, v[0]) for s, v in corpus_voiceprints.items()},
    }
    print(f"piper: itself {itself:.3f}, others {others}")
    assert itself > max(others.values())


def test_equals_resemblyzers_own_embedding(encoder):
    """Same prepared 16 kHz audio, same weights: Resemblyzer 0.1.4's embed_utterance gives the same vector."""
    upstream = resemblyzer_voice_encoder().VoiceEncoder(
        "cpu", verbose=False, weights_fpath=voiceprint.weights_path(ge2e_weights())
    )
    samples, rate_hz = sf.read(DIAR / "sample.wav", dtype="float32")
    for start_s, end_s in ((10.6, 11.3), (10.6, 14.4), (0.0, 30.0)):  # one padded partial, a few, many
        wav = prepare(samples[round(start_s * rate_hz) : round(end_s * rate_hz)], rate_hz)
        np.testing.assert_allclose(encoder.embed_16k(wav), upstream.embed_utterance(wav), atol=2e-5)


def test_input_forms_and_rates_agree(encoder):
    speech = espeak(SENTENCES[0], "en-us", 44_100)
    mono = encoder.embed(speech, 44_100)
    assert cosine(mono, encoder.embed(np.stack([speech, speech]), 44_100)) > 0.9999
    assert cosine(mono, encoder.embed(espeak(SENTENCES[0], "en-us", 16_000), 16_000)) > 0.99


def test_too_short_audio_is_refused_in_one_line(encoder):
    rate_hz = 16_000
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(0.2 * rate_hz)) / rate_hz)
    audio = np.concatenate([np.zeros(rate_hz), tone, np.zeros(rate_hz)]).astype(np.float32)
    with pytest.raises(ValueError, match=r"too little sound to make a voiceprint: 0\.\d\d s of 2\.20 s") as caught:
        encoder.embed(audio, rate_hz)
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="0.00 s of 1.00 s"):
        encoder.embed(np.zeros(rate_hz, np.float32), rate_hz)


def test_missing_weights_name_the_file_to_get(tmp_path, monkeypatch):
    monkeypatch.setattr(voiceprint, "packaged_weights", lambda: None)
    with pytest.raises(FileNotFoundError) as caught:
        load_voice_encoder(tmp_path)
    message = str(caught.value)
    assert (
        str(tmp_path / "ge2e" / "pretrained.pt") in message and "pip download --no-deps resemblyzer==0.1.4" in message
    )
    assert "resemblyzer/pretrained.pt" in message and "\n" not in message
    with pytest.raises(FileNotFoundError, match="<model dir>/ge2e/pretrained.pt"):
        load_voice_encoder(None)


def test_weights_of_an_installed_resemblyzer_are_found_without_importing_it(tmp_path, monkeypatch):
    package = tmp_path / "resemblyzer"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (package / "pretrained.pt").symlink_to(ge2e_weights() / "ge2e" / "pretrained.pt")
    monkeypatch.syspath_prepend(tmp_path)
    assert voiceprint.weights_path(tmp_path / "empty") == package / "pretrained.pt"
    assert "resemblyzer" not in sys.modules


def test_encoders_are_cached_per_path_and_device():
    root = ge2e_weights()
    assert load_voice_encoder(root) is load_voice_encoder(str(root))
