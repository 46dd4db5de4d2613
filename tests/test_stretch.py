"""The time-stretch of voice_replace's timing fit, both backends, on real speech and synthetic signals."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import CORPUS
from voxflow.tasks.helpers import audio, stretch

RATE_HZ = 16_000
SPEECH_S = 4.0
RATES = (0.85, 1.0, 1.2, 1.5)
FRAME_S = 0.01  # level frames of the speech-duration measure
SILENCE_DB = 25.0  # a frame this far below the original's loudest one is silence (jfk.flac's hiss sits 30-36 dB down)
BACKENDS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(name not in stretch.available_backends(), reason=f"{name} backend not installed"),
    )
    for name in stretch.BACKENDS
]


@pytest.fixture(scope="module")
def jfk() -> tuple[np.ndarray, int]:
    """The first ``SPEECH_S`` of jfk.flac as decoded: stereo, 44.1 kHz."""
    samples, rate_hz = sf.read(CORPUS / "asr_en_jfk" / "jfk.flac", dtype="float32", always_2d=True)
    return np.ascontiguousarray(samples[: round(SPEECH_S * rate_hz)].T), rate_hz


@pytest.fixture(scope="module")
def speech(jfk) -> np.ndarray:
    """The same speech downmixed to mono at 16 kHz."""
    return audio.resample(audio.downmix(jfk[0]), jfk[1], RATE_HZ)


def frame_levels_db(samples: np.ndarray, rate_hz: int) -> np.ndarray:
    """The level of each ``FRAME_S`` frame of the first channel, in dB."""
    size = round(FRAME_S * rate_hz)
    frames = samples[0, : samples.shape[1] // size * size].reshape(-1, size)
    return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)


def speech_seconds(samples: np.ndarray, rate_hz: int, loudest_db: float) -> float:
    """Seconds of ``FRAME_S`` frames louder than ``SILENCE_DB`` below ``loudest_db``."""
    return float(np.sum(frame_levels_db(samples, rate_hz) > loudest_db - SILENCE_DB)) * FRAME_S


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rate", RATES)
def test_exact_length_on_speech_and_stereo(speech, jfk, backend, rate):
    for samples, rate_hz in ((speech, RATE_HZ), jfk):
        length = round(samples.shape[1] / rate)
        out = stretch.time_stretch(samples, rate_hz, length, backend)
        assert out.shape == (samples.shape[0], length)
        assert out.dtype == np.float32
        assert np.isfinite(out).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_length_is_an_untouched_copy(speech, backend):
    out = stretch.time_stretch(speech, RATE_HZ, speech.shape[1], backend)
    np.testing.assert_array_equal(out, speech)
    assert out is not speech


@pytest.mark.parametrize("backend", BACKENDS)
def test_pitch_is_preserved(backend):
    times = np.arange(2 * RATE_HZ) / RATE_HZ
    sine = (0.5 * np.sin(2 * np.pi * 220.0 * times)).astype(np.float32)[None]
    out = stretch.time_stretch(sine, RATE_HZ, round(sine.shape[1] / 1.3), backend)
    padded = 16 * out.shape[1]  # zero padding: bins of 1/16 Hz-ish, finer than the tolerance
    spectrum = np.abs(np.fft.rfft(out[0] * np.hanning(out.shape[1]), padded))
    assert np.fft.rfftfreq(padded, 1 / RATE_HZ)[spectrum.argmax()] == pytest.approx(220.0, abs=2.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rate", (0.85, 1.2, 1.5))
def test_speech_duration_scales_by_the_rate(speech, backend, rate):
    out = stretch.time_stretch(speech, RATE_HZ, round(speech.shape[1] / rate), backend)
    loudest_db = frame_levels_db(speech, RATE_HZ).max()
    expected_s = speech_seconds(speech, RATE_HZ, loudest_db) / rate
    assert speech_seconds(out, RATE_HZ, loudest_db) == pytest.approx(expected_s, rel=0.05)


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_stay_aligned(speech, backend):
    identical = np.concatenate([speech, speech])
    out = stretch.time_stretch(identical, RATE_HZ, round(speech.shape[1] / 1.2), backend)
    np.testing.assert_array_equal(out[0], out[1])
    noise = np.random.default_rng(0).standard_normal(speech.shape).astype(np.float32) * 0.3 * speech.std()
    different = np.concatenate([speech, speech + noise])  # the same speech, different noise per channel
    out = stretch.time_stretch(different, RATE_HZ, round(speech.shape[1] / 1.2), backend)
    lags = np.arange(-200, 201)
    correlation = [np.dot(out[0, 200:-200], np.roll(out[1], lag)[200:-200]) for lag in lags]
    assert lags[int(np.argmax(correlation))] == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("frames", "length"), [(0, 10), (10, 0), (5, 7), (400, 600), (900, 810), (16_000, 100)])
def test_tiny_inputs_and_outputs_do_not_crash(backend, frames, length):
    samples = np.random.default_rng(1).standard_normal((2, frames)).astype(np.float32) * 0.1
    out = stretch.time_stretch(samples, RATE_HZ, length, backend)
    assert out.shape == (2, length)
    assert np.isfinite(out).all()


def test_the_input_is_not_modified(speech):
    before = speech.copy()
    for backend in stretch.available_backends():
        stretch.time_stretch(speech, RATE_HZ, round(speech.shape[1] / 1.5), backend)
    np.testing.assert_array_equal(speech, before)


def test_unknown_backend_is_a_one_line_error(speech):
    with pytest.raises(ValueError, match="unknown time-stretch backend 'sox'") as error:
        stretch.time_stretch(speech, RATE_HZ, 1000, "sox")
    assert "\n" not in str(error.value)


def test_missing_backend_names_the_install(monkeypatch, speech):
    monkeypatch.setattr(stretch, "_importable", lambda backend: backend != "rubberband")
    assert stretch.available_backends() == ("wsola",)
    with pytest.raises(ValueError, match=r"pip install 'voxflow\[rubberband\]'") as error:
        stretch.time_stretch(speech, RATE_HZ, 1000, "rubberband")
    assert "\n" not in str(error.value)
    assert stretch.time_stretch(speech, RATE_HZ, speech.shape[1] // 2, "auto").shape == (1, speech.shape[1] // 2)
