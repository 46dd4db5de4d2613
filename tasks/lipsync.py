"""Lip-sync features: Wav2Lip-style 80-bin log-mel windows of speech, one window per video frame.

The log-mel follows Wav2Lip's ``audio.py`` and ``hparams.py`` (own numpy code, no Wav2Lip import):
pre-emphasis ``y[n] = x[n] - 0.97 x[n-1]``, a centred STFT (n_fft 800, hop 200, periodic Hann window
of 800, reflect padding as in the librosa 0.7 Wav2Lip was trained with), magnitudes through 80
Slaney-normalised Slaney-scale mel filters (55 to 7600 Hz), ``20 log10(max(1e-5, mel)) - 20`` dB,
then mapped symmetrically onto ``[-4, 4]`` (``-100`` dB → -4, clipped). At 16 kHz that is 80 mel
frames per second; frame ``j`` is centred on sample ``j * hop``.

Video frame ``i`` at ``fps`` gets the 16 mel frames from ``int(i * 80 / fps)`` (Wav2Lip's rule);
windows that would run past the end are clamped to the last full window. There are
``ceil(duration * fps)`` video frames, so a video as long as the audio has a window for every frame.

Memory: everything stays on the CPU. The track is read once (float32); the STFT runs over blocks of
:data:`BLOCK_FRAMES` frames (about 35 MB of float64 scratch), so only the mel (80 × 4 bytes per
frame, 92 MB an hour) and the windows (window_frames / (80 / fps) = 5 times the mel at 25 fps) grow
with the audio.

Writes ``features.npy`` (float32 ``(frames, 80, 16)``) and ``windows.parquet`` (frame, start_s,
end_s, mel_start, mel_end) under ``artifacts/<sha[:2]>/<sha>/lipsync/<params>/``.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from voxflow.storage.refs import ArtifactRef
from voxflow.storage.settings import StoreSettings
from voxflow.tasks.helpers.audio import downmix, resample
from voxflow.tasks.kit.options import InvalidOptions, Options
from voxflow.tasks.kit.outputs import audio_input, read_audio, source_sha256_of, write_artifact
from voxflow.tasks.kit.stage import StageSpec, stage_task

STAGE = "lipsync"
CODE_VERSION = "1"
FEATURES_NAME = "features.npy"
INDEX_NAME = "windows.parquet"
BLOCK_FRAMES = 2048  # STFT frames computed at once (25.6 s at hop 200 / 16 kHz)
SLANEY_HZ_PER_MEL = 200.0 / 3  # Slaney mel scale: linear below the break ...
SLANEY_BREAK_HZ = 1000.0  # ... logarithmic above it
SLANEY_BREAK_MEL = SLANEY_BREAK_HZ / SLANEY_HZ_PER_MEL  # 15 mel
SLANEY_LOG_STEP = math.log(6.4) / 27.0  # natural-log step per mel above the break

PadMode = Literal["reflect", "constant"]


@dataclass(frozen=True)
class LipsyncOptions(Options):
    """Wav2Lip's audio features: the log-mel analysis and the window per video frame."""

    fps: Annotated[float, Field(gt=0, le=1000, description="Video frames per second; one window per frame.")] = 25.0
    window_frames: Annotated[int, Field(ge=1, le=1000, description="Mel frames per window (16 = 0.2 s).")] = 16
    sample_rate_hz: Annotated[int, Field(ge=8_000, le=192_000, description="Analysis rate (resampled to).")] = 16_000
    preemphasis: Annotated[float, Field(ge=0, lt=1, description="k of y[n] = x[n] - k x[n-1]; 0: none.")] = 0.97
    n_fft: Annotated[int, Field(ge=16, le=65_536, description="FFT size in samples.")] = 800
    hop_samples: Annotated[int, Field(ge=1, description="Samples between STFT frames.")] = 200
    win_samples: Annotated[int, Field(ge=2, description="Hann window length, at most n_fft (centred in it).")] = 800
    n_mels: Annotated[int, Field(ge=1, le=512, description="Mel bins (Slaney scale, Slaney area normalisation).")] = 80
    fmin_hz: Annotated[float, Field(ge=0, description="Lowest mel filter edge.")] = 55.0
    fmax_hz: Annotated[float, Field(gt=0, description="Highest mel filter edge, at most sample_rate_hz / 2.")] = 7600.0
    ref_level_db: Annotated[float, Field(description="Subtracted from the mel amplitude in dB.")] = 20.0
    # dB mapped to -max_abs_value; 10^(min_level_db / 20) is also the amplitude floor
    min_level_db: Annotated[float, Field(lt=0, description="dB mapped to -max_abs_value (and floor).")] = -100.0
    max_abs_value: Annotated[float, Field(gt=0, description="Features span [-max_abs_value, max_abs_value].")] = 4.0
    # reflect: librosa 0.7's default, what Wav2Lip was trained on; constant: zeros (librosa >= 0.10)
    pad_mode: Annotated[PadMode, Field(description="STFT edge padding: reflect or constant.")] = "reflect"

    def check(self) -> None:
        if self.hop_samples > self.n_fft or self.win_samples > self.n_fft:
            raise InvalidOptions(
                f"LipsyncOptions: hop_samples ({self.hop_samples}) and win_samples ({self.win_samples}) must not "
                f"exceed n_fft ({self.n_fft})"
            )
        if not self.fmin_hz < self.fmax_hz <= self.sample_rate_hz / 2:
            raise InvalidOptions(
                f"LipsyncOptions: need fmin_hz < fmax_hz <= sample_rate_hz / 2, got {self.fmin_hz}, {self.fmax_hz}, "
                f"{self.sample_rate_hz}"
            )

    @property
    def mel_frames_per_s(self) -> float:
        """Mel frames per second of audio (80 at 16 kHz, hop 200)."""
        return self.sample_rate_hz / self.hop_samples


@dataclass(frozen=True)
class VideoWindows:
    """The mel window of every video frame and where it comes from (compute-side record)."""

    features: np.ndarray  # (frames, n_mels, window_frames) float32
    mel_start: np.ndarray  # (frames,) int64: first mel frame of each window
    mel_end: np.ndarray  # (frames,) int64: one past its last real mel frame (short audio is padded)
    mel_frames_per_s: float

    @property
    def count(self) -> int:
        return int(self.features.shape[0])

    def index(self) -> dict[str, np.ndarray]:
        """Columns of ``windows.parquet``: times are those of the window's first and one-past-last mel frame."""
        return {
            "frame": np.arange(self.count, dtype=np.int64),
            "start_s": self.mel_start / self.mel_frames_per_s,
            "end_s": self.mel_end / self.mel_frames_per_s,
            "mel_start": self.mel_start,
            "mel_end": self.mel_end,
        }


@dataclass(frozen=True)
class LipsyncResult:
    """What the lip-sync features task returns: the windows, their index and how many video frames."""

    features: ArtifactRef  # features.npy, float32 (frames, n_mels, window_frames)
    index: ArtifactRef  # windows.parquet, one row per video frame
    fps: float
    frames: int  # video frames, ceil(duration * fps)
    source_sha256: str

    @property
    def sha256(self) -> str:
        return self.features.sha256

    def summary(self) -> dict:
        """What a summary table shows of a file's features."""
        return {
            "frames": self.frames,
            "fps": self.fps,
            "features_mb": round(self.features.size_bytes / 2**20, 2),
            "sha256": self.source_sha256[:12],
        }


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    above = SLANEY_BREAK_MEL + np.log(np.maximum(hz, SLANEY_BREAK_HZ) / SLANEY_BREAK_HZ) / SLANEY_LOG_STEP
    return np.where(hz < SLANEY_BREAK_HZ, hz / SLANEY_HZ_PER_MEL, above)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    above = SLANEY_BREAK_HZ * np.exp(SLANEY_LOG_STEP * (np.maximum(mel, SLANEY_BREAK_MEL) - SLANEY_BREAK_MEL))
    return np.where(mel < SLANEY_BREAK_MEL, mel * SLANEY_HZ_PER_MEL, above)


@functools.lru_cache(maxsize=16)
def mel_filters(sample_rate_hz: int, n_fft: int, n_mels: int, fmin_hz: float, fmax_hz: float) -> np.ndarray:
    """Triangular Slaney-scale filters, each of unit area (Slaney norm): ``(n_mels, n_fft // 2 + 1)`` float64.

    Cached by its parameters and read-only.
    """
    bins_hz = np.arange(n_fft // 2 + 1) * (sample_rate_hz / n_fft)
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(fmin_hz), _hz_to_mel(fmax_hz), n_mels + 2))
    widths_hz = np.diff(edges_hz)
    rising = (bins_hz[None, :] - edges_hz[:-2, None]) / widths_hz[:-1, None]
    falling = (edges_hz[2:, None] - bins_hz[None, :]) / widths_hz[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    filters.setflags(write=False)
    return filters


@functools.lru_cache(maxsize=16)
def hann_window(win_samples: int, n_fft: int) -> np.ndarray:
    """The periodic Hann window of ``win_samples``, centred in ``n_fft`` zeros: float64, read-only, cached."""
    window = np.zeros(n_fft)
    left = (n_fft - win_samples) // 2
    window[left : left + win_samples] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_samples) / win_samples)
    window.setflags(write=False)
    return window


def _emphasised(x: np.ndarray, start: int, stop: int, k: float) -> np.ndarray:
    """Pre-emphasised samples ``start:stop`` of ``x`` in float64 (``y[0] = x[0]``)."""
    seg = x[max(start - 1, 0) : stop].astype(np.float64)
    if start == 0:
        return np.concatenate([seg[:1], seg[1:] - k * seg[:-1]])
    return seg[1:] - k * seg[:-1]


def _padded_emphasised(x: np.ndarray, begin: int, end: int, pad: int, k: float, mode: str) -> np.ndarray:
    """Samples ``begin:end`` of the pre-emphasised signal padded by ``pad`` on both sides (as ``np.pad``)."""
    n = x.size
    if n <= pad + 1:  # the padding reflects more than once: pad the whole (short) signal
        return np.pad(_emphasised(x, 0, n, k), pad, mode=mode)[begin:end]
    parts = []
    if begin < pad:
        parts.append(np.pad(_emphasised(x, 0, pad + 1, k), (pad, 0), mode=mode)[begin : min(end, pad)])
    if max(begin, pad) < min(end, pad + n):
        parts.append(_emphasised(x, max(begin, pad) - pad, min(end, pad + n) - pad, k))
    if end > pad + n:  # the tail array starts at padded position n - 1
        tail = np.pad(_emphasised(x, n - pad - 1, n, k), (0, pad), mode=mode)
        parts.append(tail[max(begin, pad + n) - (n - 1) : end - (n - 1)])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def normalise_db(mel: np.ndarray, options: LipsyncOptions) -> np.ndarray:
    """Mel magnitudes → ``20 log10(max(floor, mel)) - ref_level_db`` mapped onto ``[-max_abs, max_abs]``."""
    floor = 10.0 ** (options.min_level_db / 20)
    db = 20.0 * np.log10(np.maximum(floor, mel)) - options.ref_level_db
    scaled = (2 * options.max_abs_value) * ((db - options.min_level_db) / -options.min_level_db) - options.max_abs_value
    return np.clip(scaled, -options.max_abs_value, options.max_abs_value)


def log_mel(
    samples_16k: np.ndarray,
    options: LipsyncOptions = LipsyncOptions(),
    *,
    block_frames: int = BLOCK_FRAMES,
    hook: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Wav2Lip's normalised log-mel of mono speech at ``options.sample_rate_hz``: ``(n_mels, 1 + n // hop)`` float32.

    ``samples_16k`` is ``(samples,)`` or ``(1, samples)``. The STFT runs in blocks of ``block_frames``
    frames (float64); the result does not depend on the block size. ``hook(done, total)`` counts frames.
    """
    x = np.asarray(samples_16k)
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1:
        raise ValueError(f"log_mel needs mono samples shaped (samples,) or (1, samples), got {x.shape}")
    if x.size == 0:
        raise ValueError("log_mel needs at least one sample, got none")
    if block_frames < 1:
        raise ValueError(f"block_frames must be at least 1, got {block_frames}")
    n_fft, hop, pad = options.n_fft, options.hop_samples, options.n_fft // 2
    window = hann_window(options.win_samples, n_fft)
    filters_t = mel_filters(options.sample_rate_hz, n_fft, options.n_mels, options.fmin_hz, options.fmax_hz).T
    total = 1 + (x.size + 2 * pad - n_fft) // hop
    out = np.empty((options.n_mels, total), dtype=np.float32)
    for first in range(0, total, block_frames):
        last = min(first + block_frames, total)
        seg = _padded_emphasised(x, first * hop, (last - 1) * hop + n_fft, pad, options.preemphasis, options.pad_mode)
        step = seg.itemsize
        frames = np.lib.stride_tricks.as_strided(seg, (last - first, n_fft), (hop * step, step), writeable=False)
        magnitude = np.abs(np.fft.rfft(frames * window, axis=-1))
        out[:, first:last] = normalise_db(magnitude @ filters_t, options).T
        if hook is not None:
            hook(last, total)
    return out


def video_frame_count(samples: int, sample_rate_hz: int, fps: float) -> int:
    """Video frames spanning ``samples`` of audio: ``ceil(duration * fps)``."""
    return max(math.ceil(samples * fps / sample_rate_hz - 1e-9), 0)


def video_windows(
    mel: np.ndarray,
    fps: float,
    window_frames: int,
    *,
    count: int,
    mel_frames_per_s: float = LipsyncOptions().mel_frames_per_s,
    pad_value: float = -LipsyncOptions().max_abs_value,
) -> VideoWindows:
    """The ``window_frames`` mel frames of each of ``count`` video frames: ``(count, n_mels, window_frames)`` float32.

    Frame ``i`` starts at mel frame ``int(i * mel_frames_per_s / fps)`` (Wav2Lip's rule), clamped so the
    window ends at the last mel frame. A mel shorter than one window is padded at its end with
    ``pad_value`` (silence: the features' floor).
    """
    if mel.ndim != 2 or mel.shape[1] == 0:
        raise ValueError(f"mel must be shaped (n_mels, frames) with at least one frame, got {mel.shape}")
    if fps <= 0 or window_frames < 1 or count < 0:
        raise ValueError(f"need fps > 0, window_frames >= 1 and count >= 0, got {fps}, {window_frames}, {count}")
    available = mel.shape[1]
    if available < window_frames:
        mel = np.concatenate([mel, np.full((mel.shape[0], window_frames - available), pad_value, mel.dtype)], axis=1)
    starts = np.floor(np.arange(count) * (mel_frames_per_s / fps)).astype(np.int64)
    starts = np.minimum(starts, mel.shape[1] - window_frames)
    view = np.lib.stride_tricks.sliding_window_view(mel, window_frames, axis=1).transpose(1, 0, 2)
    features = np.ascontiguousarray(view[starts], dtype=np.float32)
    return VideoWindows(features, starts, np.minimum(starts + window_frames, available), mel_frames_per_s)


def prepare(samples: np.ndarray, sample_rate_hz: int, options: LipsyncOptions) -> np.ndarray:
    """Mono speech at ``options.sample_rate_hz``, shaped ``(samples,)``: channels averaged, soxr-resampled."""
    mono = downmix(samples) if samples.shape[0] > 1 else samples
    return resample(mono, sample_rate_hz, options.sample_rate_hz)[0]


def lipsync_windows(
    samples_16k: np.ndarray,
    options: LipsyncOptions = LipsyncOptions(),
    *,
    hook: Callable[[int, int], None] | None = None,
) -> VideoWindows:
    """The windows of every video frame of mono speech at ``options.sample_rate_hz``."""
    mel = log_mel(samples_16k, options, hook=hook)
    count = video_frame_count(np.shape(samples_16k)[-1], options.sample_rate_hz, options.fps)
    return video_windows(
        mel,
        options.fps,
        options.window_frames,
        count=count,
        mel_frames_per_s=options.mel_frames_per_s,
        pad_value=-options.max_abs_value,
    )


def npy_bytes(array: np.ndarray) -> bytes:
    """The ``.npy`` file of an array (no pickles)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def index_parquet(windows: VideoWindows) -> bytes:
    """The ``windows.parquet`` file: one row per video frame, explicit schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("frame", pa.int64()),
            ("start_s", pa.float64()),
            ("end_s", pa.float64()),
            ("mel_start", pa.int64()),
            ("mel_end", pa.int64()),
        ]
    )
    buffer = io.BytesIO()
    pq.write_table(pa.table(windows.index(), schema=schema), buffer)
    return buffer.getvalue()


LIPSYNC = StageSpec(STAGE, code_version=CODE_VERSION)


@stage_task(LIPSYNC)
def lipsync_features(audio: Any, options: LipsyncOptions, settings: StoreSettings) -> LipsyncResult:
    """Log-mel windows of every video frame of a speech artifact (features.npy) and their index (windows.parquet)."""
    samples, rate = read_audio(audio_input(audio), settings)
    windows = lipsync_windows(prepare(samples, rate, options), options)
    features = write_artifact(settings, FEATURES_NAME, npy_bytes(windows.features))
    index = write_artifact(settings, INDEX_NAME, index_parquet(windows))
    return LipsyncResult(features, index, options.fps, windows.count, source_sha256_of(audio))
