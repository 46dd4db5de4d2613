"""Lip-sync features: log-mel against a librosa reference, Wav2Lip's window rule, bounded memory, the task in a flow.

The reference is Wav2Lip's ``audio.melspectrogram`` written with librosa 0.11 and scipy: ``lfilter``
pre-emphasis, ``librosa.stft`` (centred, reflect padding as librosa 0.7 had by default),
``librosa.filters.mel`` (Slaney scale and norm), then the same dB and symmetric normalisation.
Tolerance: 1e-4 max absolute difference on the [-4, 4] feature scale.
"""

from __future__ import annotations

import io
import math
import tracemalloc
import warnings

import numpy as np
import pandas as pd
import pytest

from tests.conftest import CORPUS
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import open_store
from voxflow.tasks.helpers import audio
from voxflow.tasks.lipsync import (
    LipsyncOptions,
    LipsyncResult,
    lipsync_windows,
    log_mel,
    mel_filters,
    prepare,
    video_frame_count,
    video_windows,
)

TOLERANCE = 1e-4  # max abs difference on the [-4, 4] scale
SPEECH = CORPUS / "denoise_babble" / "speech.wav"  # 3.1 s, 16 kHz mono
JFK = CORPUS / "asr_en_jfk" / "jfk.flac"  # 11 s, 44.1 kHz stereo
LONG = CORPUS / "diar_2spk_pyannote" / "sample.wav"  # 30 s, 16 kHz mono


def reference_log_mel(x: np.ndarray, options: LipsyncOptions = LipsyncOptions()) -> np.ndarray:
    """Wav2Lip's ``melspectrogram`` computed with librosa and scipy (float64)."""
    import librosa
    import scipy.signal

    emphasised = scipy.signal.lfilter([1, -options.preemphasis], [1], x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa warns when n_fft exceeds a short signal
        spectrum = librosa.stft(
            emphasised,
            n_fft=options.n_fft,
            hop_length=options.hop_samples,
            win_length=options.win_samples,
            window="hann",
            center=True,
            pad_mode=options.pad_mode,
        )
    filters = librosa.filters.mel(
        sr=options.sample_rate_hz,
        n_fft=options.n_fft,
        n_mels=options.n_mels,
        fmin=options.fmin_hz,
        fmax=options.fmax_hz,
    )
    min_level = np.exp(options.min_level_db / 20 * np.log(10))
    db = 20 * np.log10(np.maximum(min_level, filters @ np.abs(spectrum))) - options.ref_level_db
    m = options.max_abs_value
    return np.clip(2 * m * ((db - options.min_level_db) / -options.min_level_db) - m, -m, m)


def wav2lip_windows(mel: np.ndarray, fps: float, count: int, window: int = 16) -> list[np.ndarray]:
    """Wav2Lip inference's loop (``mel_idx_multiplier = 80. / fps``), extended with clamped windows to ``count``."""
    multiplier = 80.0 / fps
    chunks = []
    for i in range(count):
        start = int(i * multiplier)
        chunks.append(mel[:, start : start + window] if start + window <= mel.shape[1] else mel[:, -window:])
    return chunks


def _mono16k(path) -> np.ndarray:
    decoded = audio.decode_file(path)
    return prepare(decoded.samples, decoded.sample_rate_hz, LipsyncOptions())


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return _mono16k(SPEECH)


@pytest.fixture(scope="module")
def jfk16k() -> np.ndarray:
    return _mono16k(JFK)


def _assert_matches_reference(x: np.ndarray, options: LipsyncOptions = LipsyncOptions()) -> np.ndarray:
    ours = log_mel(x, options)
    expected = reference_log_mel(x.astype(np.float32), options)
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=TOLERANCE)
    return ours


def test_log_mel_matches_the_librosa_reference_on_real_speech(speech, jfk16k):
    for x in (speech, jfk16k):
        ours = _assert_matches_reference(x)
        assert ours.shape == (80, 1 + x.size // 200)
        # real speech spans the scale: neither all clipped nor flat
        assert ours.max() > 1.0 and ours.min() == -4.0 and ours.std() > 0.5


@pytest.mark.parametrize(
    "part",
    [
        "one sample",
        "100 samples",
        "400 samples",
        "401 samples",
        "402 samples",
        "1000 samples",
        "0.19 s",
        "silence",
        "full scale",
    ],
)
def test_log_mel_matches_the_reference_on_edge_cases(speech, part):
    voiced = speech[24_000:]  # inside a word, so short pieces are not silent
    x = {
        "one sample": voiced[:1],
        "100 samples": voiced[:100],
        "400 samples": voiced[:400],
        "401 samples": voiced[:401],
        "402 samples": voiced[:402],
        "1000 samples": voiced[:1000],
        "0.19 s": voiced[:3040],  # 16 mel frames: exactly one window
        "silence": np.zeros(16_000, np.float32),
        "full scale": np.sign(voiced[:8000]).astype(np.float32),
    }[part]
    ours = _assert_matches_reference(x)
    if part == "silence":
        assert (ours == -4.0).all()
    elif part != "one sample":
        assert ours.max() > -2.0  # the piece is not silent, so the comparison is not of two floors


@pytest.mark.parametrize(
    "options",
    [
        LipsyncOptions(pad_mode="constant"),
        LipsyncOptions(win_samples=600, preemphasis=0.0),
        LipsyncOptions(
            sample_rate_hz=22_050,
            n_fft=1024,
            hop_samples=256,
            win_samples=1024,
            n_mels=40,
            fmin_hz=0,
            fmax_hz=11_025,
            ref_level_db=0,
            min_level_db=-80,
            max_abs_value=1.0,
        ),
    ],
    ids=["constant padding", "shorter window, no pre-emphasis", "22 kHz, 40 mels"],
)
def test_other_analysis_settings_match_the_reference(speech, options):
    _assert_matches_reference(speech, options)


def test_mel_filters_match_librosa_slaney_filters():
    import librosa

    for sr, n_fft, n_mels, fmin, fmax in ((16_000, 800, 80, 55.0, 7600.0), (22_050, 1024, 40, 0.0, 11_025.0)):
        expected = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)  # float32
        np.testing.assert_allclose(mel_filters(sr, n_fft, n_mels, fmin, fmax), expected, rtol=1e-5, atol=1e-8)
    assert mel_filters(16_000, 800, 80, 55.0, 7600.0) is mel_filters(16_000, 800, 80, 55.0, 7600.0)  # cached


def test_blocks_give_the_unblocked_result_and_report_progress():
    x = _mono16k(LONG)  # 30 s: 2401 frames, more than one default block (2048)
    whole = log_mel(x, block_frames=10**6)
    calls: list[tuple[int, int]] = []
    blocked = log_mel(x, block_frames=333, hook=lambda done, total: calls.append((done, total)))
    np.testing.assert_array_equal(blocked, whole)
    np.testing.assert_array_equal(log_mel(x), whole)
    total = whole.shape[1]
    assert calls == [(min(done, total), total) for done in range(333, total + 333, 333)]


def test_memory_stays_bounded_by_the_block_not_the_track(jfk16k):
    x = np.tile(jfk16k, 30)  # 5.5 minutes: 26 400 frames, 169 MB of float64 frames if done at once
    out_bytes = 80 * (1 + x.size // 200) * 4
    tracemalloc.start()
    try:
        blocked = log_mel(x, block_frames=256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    scratch_bytes = 256 * 800 * 8  # one block of float64 frames
    assert peak < out_bytes + 6 * scratch_bytes, f"peak {peak / 2**20:.1f} MB"
    np.testing.assert_array_equal(blocked[:, 100:200], log_mel(x[: 300 * 200])[:, 100:200])


@pytest.mark.parametrize("fps", [25.0, 30.0, 29.97, 24.0, 60.0])
def test_windows_follow_wav2lips_rule_and_clamp_at_the_end(speech, fps):
    mel = log_mel(speech)
    count = video_frame_count(speech.size, 16_000, fps)
    assert count == math.ceil(speech.size / 16_000 * fps - 1e-9)
    windows = video_windows(mel, fps, 16, count=count)
    assert windows.features.shape == (count, 80, 16) and windows.features.dtype == np.float32
    for got, expected in zip(windows.features, wav2lip_windows(mel, fps, count), strict=True):
        np.testing.assert_array_equal(got, expected)
    last_start = mel.shape[1] - 16
    assert windows.mel_start[-1] == last_start and (windows.mel_start <= last_start).all()
    assert (np.diff(windows.mel_start) >= 0).all() and (windows.mel_end - windows.mel_start == 16).all()
    index = windows.index()
    np.testing.assert_allclose(index["start_s"], windows.mel_start / 80.0)
    np.testing.assert_allclose(index["end_s"], (windows.mel_start + 16) / 80.0)


def test_counts_and_index_of_whole_durations():
    assert video_frame_count(48_000, 16_000, 25.0) == 75  # 3 s exactly: no extra frame
    assert video_frame_count(48_001, 16_000, 25.0) == 76
    assert video_frame_count(1, 16_000, 25.0) == 1
    x = np.random.default_rng(4).standard_normal(48_000).astype(np.float32) * 0.1
    windows = lipsync_windows(x)
    assert windows.count == 75 and windows.mel_start[:4].tolist() == [0, 3, 6, 9]  # int(i * 3.2)
    assert windows.mel_start[5] == 16 and windows.mel_start[-1] == 241 - 16  # 1 + 48000 // 200 mel frames


def test_audio_shorter_than_one_window_is_padded_with_silence(speech):
    x = speech[24_000:25_000]  # 1000 samples: 6 mel frames, 2 video frames
    windows = lipsync_windows(x)
    mel = log_mel(x)
    assert windows.count == 2 and windows.features.shape == (2, 80, 16)
    for window in windows.features:
        np.testing.assert_array_equal(window[:, :6], mel)
        assert (window[:, 6:] == -4.0).all()
    assert windows.mel_start.tolist() == [0, 0] and windows.mel_end.tolist() == [6, 6]


def test_prepare_downmixes_and_resamples():
    decoded = audio.decode_file(JFK)
    assert decoded.channels == 2 and decoded.sample_rate_hz == 44_100
    mono = prepare(decoded.samples, decoded.sample_rate_hz, LipsyncOptions())
    expected = audio.resample(audio.downmix(decoded.samples), 44_100, 16_000)[0]
    np.testing.assert_array_equal(mono, expected)
    assert mono.ndim == 1 and abs(mono.size - decoded.frames * 16_000 / 44_100) <= 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"fps": 0}, "LipsyncOptions.fps: Input should be greater than 0"),
        ({"window_frames": 0}, "LipsyncOptions.window_frames: Input should be greater than or equal to 1"),
        ({"preemphasis": 1.0}, "LipsyncOptions.preemphasis: Input should be less than 1"),
        ({"win_samples": 1000}, r"win_samples \(1000\) must not exceed n_fft \(800\)"),
        ({"fmax_hz": 9000}, "fmax_hz"),
        ({"min_level_db": 0}, "LipsyncOptions.min_level_db: Input should be less than 0"),
        ({"pad_mode": "edge"}, "LipsyncOptions.pad_mode: Input should be 'reflect' or 'constant'"),
        ({"hop_samples": 0}, "LipsyncOptions.hop_samples: Input should be greater than or equal to 1"),
    ],
)
def test_invalid_options_fail_with_one_line(change, message):
    with pytest.raises(ValueError, match=message) as error:
        LipsyncOptions(**change)
    assert "\n" not in str(error.value)


def test_empty_or_multichannel_input_is_refused():
    with pytest.raises(ValueError, match="at least one sample"):
        log_mel(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="mono samples"):
        log_mel(np.zeros((2, 1000), np.float32))


@pytest.mark.usefixtures("prefect_harness")
def test_the_task_in_a_flow_writes_features_and_index(tmp_path, use_store):
    from prefect import flow

    from voxflow.flows.environment import environment
    from voxflow.tasks.ingest import IngestOptions, ingest_file
    from voxflow.tasks.lipsync import lipsync_features

    @flow(name="test-lipsync-features")
    def features_flow(path: str) -> LipsyncResult:
        env = environment(None)
        # keep the source's 44.1 kHz stereo so the stage itself downmixes and resamples
        working = env.stage(ingest_file)(path, IngestOptions(sample_rate_hz=44_100, mono=False), env.settings)
        return env.stage(lipsync_features)(working, LipsyncOptions(), env.settings)

    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    result = features_flow(str(JFK))
    decoded = audio.decode_file(JFK)
    expected = lipsync_windows(prepare(decoded.samples, decoded.sample_rate_hz, LipsyncOptions()))

    store = open_store(StoreSettings.from_env())
    features = np.load(io.BytesIO(store.get_bytes(store.key_of(result.features.uri), result.features.sha256)))
    assert result.frames == expected.count == math.ceil(decoded.duration_s * 25) and result.fps == 25.0
    assert features.shape == (result.frames, 80, 16) and features.dtype == np.float32
    np.testing.assert_array_equal(features, expected.features)
    index = pd.read_parquet(io.BytesIO(store.get_bytes(store.key_of(result.index.uri), result.index.sha256)))
    assert list(index.columns) == ["frame", "start_s", "end_s", "mel_start", "mel_end"]
    assert index["frame"].tolist() == list(range(result.frames))
    np.testing.assert_array_equal(index["mel_start"], expected.mel_start)
    assert result.source_sha256 == catalog.frame("files")["sha256"].iloc[0]
    assert result.summary()["frames"] == result.frames

    rows = catalog.frame("artifacts")
    mine = rows[rows["stage"] == "lipsync"].set_index("name")
    assert sorted(mine.index) == ["features.npy", "windows.parquet"]
    assert mine.loc["features.npy", "sha256"] == result.features.sha256
    assert mine.loc["windows.parquet", "media_type"] == "application/vnd.apache.parquet"
    assert "/lipsync/" in result.features.uri and "/lipsync/" in result.index.uri

    assert features_flow(str(JFK)) == result  # the same file again: a cache hit
    runs = catalog.frame("stage_runs")
    lipsync_runs = runs[runs["stage"] == "lipsync"]
    assert sorted(lipsync_runs["cache_hit"]) == [False, True] and set(lipsync_runs["status"]) == {"completed"}
