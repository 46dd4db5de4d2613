"""Audio at the edges: encode, resample, loudness (decoding: :mod:`voxflow.tasks.helpers.decode`). No storage.

In-memory contract: float32 numpy array shaped ``(channels, samples)`` plus ``sample_rate_hz``.
"""

from __future__ import annotations

import io
import struct
from typing import BinaryIO

import numpy as np

from voxflow.tasks.helpers.decode import (  # noqa: F401  (decoding lives there; callers read it from here too)
    SUPPORTED_FORMATS,
    AudioDecodeError,
    DecodedAudio,
    decode_file,
    open_audio,
)

LOUDNESS_BLOCK_S = 0.4  # BS.1770 gating block
LOUDNESS_OVERLAP = 0.75  # of consecutive gating blocks
K_SHELF_GAIN_DB, K_SHELF_Q, K_SHELF_HZ = 4.0, 1 / np.sqrt(2), 1500.0  # K-weighting stage 1: high shelf
K_HIGHPASS_Q, K_HIGHPASS_HZ = 0.5, 38.0  # K-weighting stage 2: high-pass (RLB)
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
BS1770_WEIGHTS = (1.0, 1.0, 1.0, 1.41, 1.41)  # L, R, C, Ls, Rs; channels past five weigh 1.0


WAVE_FORMAT_IEEE_FLOAT = 3
RIFF_MAX_BYTES = (1 << 32) - 1


def _float_wav_header(channels: int, sample_rate_hz: int, frames: int) -> bytes:
    data_bytes = frames * channels * 4
    fmt = struct.pack(
        "<HHIIHHH", WAVE_FORMAT_IEEE_FLOAT, channels, sample_rate_hz, sample_rate_hz * channels * 4, channels * 4, 32, 0
    )
    chunks = b"".join(
        [b"WAVE", b"fmt ", struct.pack("<I", len(fmt)), fmt, b"fact", struct.pack("<II", 4, frames), b"data"]
    )
    riff_bytes = len(chunks) + 4 + data_bytes
    if riff_bytes > RIFF_MAX_BYTES:
        raise ValueError(f"{frames} frames x {channels} channels do not fit a WAV file (4 GiB)")
    return b"RIFF" + struct.pack("<I", riff_bytes) + chunks + struct.pack("<I", data_bytes)


def _float_wav(samples: np.ndarray, sample_rate_hz: int) -> bytes:
    channels, frames = samples.shape
    return _float_wav_header(channels, sample_rate_hz, frames) + np.ascontiguousarray(samples.T, dtype="<f4").tobytes()


class FloatWavWriter:
    """Writes a 32-bit float WAV block by block into an open binary file; :meth:`finish` completes the header.

    The bytes are exactly :func:`encode_wav`'s for the same samples.
    """

    def __init__(self, f: BinaryIO, channels: int, sample_rate_hz: int) -> None:
        self.f, self.channels, self.sample_rate_hz, self.frames = f, channels, sample_rate_hz, 0
        f.write(_float_wav_header(channels, sample_rate_hz, 0))

    def write(self, block: np.ndarray) -> None:
        """Append ``(channels, n)`` samples."""
        if block.shape[0] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {block.shape[0]}")
        _float_wav_header(self.channels, self.sample_rate_hz, self.frames + block.shape[1])  # still fits 4 GiB
        self.f.write(np.ascontiguousarray(block.T, dtype="<f4").tobytes())
        self.frames += block.shape[1]

    def finish(self) -> None:
        """Write the final sizes into the header."""
        end = self.f.tell()
        self.f.seek(0)
        self.f.write(_float_wav_header(self.channels, self.sample_rate_hz, self.frames))
        self.f.seek(end)


def encode_wav(samples: np.ndarray, sample_rate_hz: int, subtype: str = "FLOAT") -> bytes:
    """WAV bytes of a ``(channels, samples)`` array (32-bit float by default).

    The same samples always give the same bytes, so artifact checksums (and the cache keys of the
    stages that read them) depend on the audio only. libsndfile's float WAVs carry a PEAK chunk
    with the time of writing, so float WAVs are written here directly.
    """
    if subtype == "FLOAT":
        return _float_wav(np.asarray(samples, dtype=np.float32), sample_rate_hz)
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.ascontiguousarray(samples.T), sample_rate_hz, subtype=subtype, format="WAV")
    return buffer.getvalue()


def decode_wav_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """The ``(channels, samples)`` float32 array and rate of WAV bytes written by :func:`encode_wav`."""
    import soundfile as sf

    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return np.ascontiguousarray(samples.T), rate


def resample(samples: np.ndarray, from_hz: int, to_hz: int, quality: str = "VHQ") -> np.ndarray:
    """Resample ``(channels, samples)`` with soxr; a no-op when the rates match."""
    import soxr

    if from_hz == to_hz:
        return samples
    out = soxr.resample(np.ascontiguousarray(samples.T), from_hz, to_hz, quality=quality)
    return np.ascontiguousarray(out.T, dtype=np.float32).reshape(samples.shape[0], -1)


class StreamResampler:
    """:func:`resample` block by block (soxr's stream resampler: the same samples as one call on the whole)."""

    def __init__(self, from_hz: int, to_hz: int, channels: int, quality: str = "VHQ") -> None:
        import soxr

        self.stream = None if from_hz == to_hz else soxr.ResampleStream(from_hz, to_hz, channels, "float32", quality)
        self.channels = channels

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        """The resampled ``(channels, n)`` block; ``last`` flushes what the filter still holds."""
        if self.stream is None:
            return block
        out = self.stream.resample_chunk(np.ascontiguousarray(block.T, dtype=np.float32), last=last)
        return np.ascontiguousarray(out.T, dtype=np.float32).reshape(self.channels, -1)

    def flush(self) -> np.ndarray:
        """What the filter still holds at the end of the audio; the stream is released after it."""
        out = self(np.zeros((self.channels, 0), np.float32), last=True)
        self.close()
        return out

    def close(self) -> None:
        """Release soxr's stream (also when the audio ends early with an error)."""
        self.stream = None


def downmix(samples: np.ndarray) -> np.ndarray:
    """The mean of all channels, shaped ``(1, samples)``."""
    return samples.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)


def mono_at(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """``(channels, samples)`` downmixed and resampled: 1-D float32 at ``to_hz``."""
    return resample(downmix(samples), from_hz, to_hz)[0]


def k_weighting(sample_rate_hz: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """BS.1770's K-weighting at ``sample_rate_hz`` as two ``(b, a)`` biquads: a high shelf (+4 dB above
    about 1.5 kHz), then a high-pass (about 38 Hz).

    Designed for the given rate with the Audio EQ Cookbook formulas from the parameters pyloudnorm's
    ``Meter`` uses, so any rate gets the same filter (tests/test_audio.py checks the loudness against
    pyloudnorm's and BS.1770's 997 Hz reference). Owned here rather than read from pyloudnorm's
    private attributes; applied with ``scipy.signal.lfilter``, it can also run block by block.
    """
    gain = 10 ** (K_SHELF_GAIN_DB / 40)
    w0 = 2 * np.pi * K_SHELF_HZ / sample_rate_hz
    cos, edge = np.cos(w0), np.sqrt(gain) * np.sin(w0) / K_SHELF_Q
    shelf_b = gain * np.array(
        [
            (gain + 1) + (gain - 1) * cos + edge,
            -2 * ((gain - 1) + (gain + 1) * cos),
            (gain + 1) + (gain - 1) * cos - edge,
        ]
    )
    shelf_a = np.array(
        [
            (gain + 1) - (gain - 1) * cos + edge,
            2 * ((gain - 1) - (gain + 1) * cos),
            (gain + 1) - (gain - 1) * cos - edge,
        ]
    )
    w0 = 2 * np.pi * K_HIGHPASS_HZ / sample_rate_hz
    cos, alpha = np.cos(w0), np.sin(w0) / (2 * K_HIGHPASS_Q)
    pass_b = np.array([(1 + cos) / 2, -(1 + cos), (1 + cos) / 2])
    pass_a = np.array([1 + alpha, -2 * cos, 1 - alpha])
    return tuple((b / a[0], a / a[0]) for b, a in ((shelf_b, shelf_a), (pass_b, pass_a)))


class LoudnessMeter:
    """ITU-R BS.1770-4 integrated loudness, fed block by block: memory grows by one number per channel and
    100 ms, not with the samples.

    K-weighting (:func:`k_weighting`, filter state carried across blocks), 400 ms blocks overlapping by
    75 %, absolute (-70 LUFS) and relative (-10 LU) gates. Block energies are differences of the running
    energy sampled at every block edge, and any channel count is measured: the first five follow BS.1770's
    L, R, C, Ls, Rs weights, further channels weigh 1.0.
    """

    def __init__(self, sample_rate_hz: int, channels: int) -> None:
        self.sample_rate_hz, self.channels, self.frames = sample_rate_hz, channels, 0
        self.filters = k_weighting(sample_rate_hz)
        self.states = [np.zeros((channels, 2)) for _ in self.filters]
        self.energy = np.zeros(channels)  # running sum of squared K-weighted samples
        self.edges = [self.energy]  # the running energy at every block edge passed so far

    def _edge(self, k: int) -> int:
        return int(LOUDNESS_BLOCK_S * (k * (1.0 - LOUDNESS_OVERLAP)) * self.sample_rate_hz)

    def add(self, block: np.ndarray) -> None:
        """Measure the next ``(channels, n)`` samples."""
        from scipy.signal import lfilter

        weighted = block.astype(np.float64)
        for i, (b, a) in enumerate(self.filters):
            weighted, self.states[i] = lfilter(b, a, weighted, axis=1, zi=self.states[i])
        running = self.energy[:, None] + np.cumsum(weighted**2, axis=1)
        n = block.shape[1]
        while (edge := self._edge(len(self.edges))) <= self.frames + n:
            self.edges.append(running[:, edge - self.frames - 1].copy() if edge > self.frames else self.energy)
        if n:
            self.energy = running[:, -1].copy()
        self.frames += n

    def integrated(self) -> float | None:
        """The integrated loudness in LUFS; None when shorter than one gating block or silent."""
        rate, frames = self.sample_rate_hz, self.frames
        if frames < int(LOUDNESS_BLOCK_S * rate):
            return None
        step = 1.0 - LOUDNESS_OVERLAP
        blocks = int(np.round((frames / rate - LOUDNESS_BLOCK_S) / (LOUDNESS_BLOCK_S * step))) + 1
        per_block = int(round(1 / step))  # edges per block
        edges = np.stack([*self.edges, self.energy], axis=1)  # the last column: the end of the audio
        last = edges.shape[1] - 1
        starts = np.minimum(np.arange(blocks), last)
        ends = np.minimum(np.arange(blocks) + per_block, last)
        z = (edges[:, ends] - edges[:, starts]) / (LOUDNESS_BLOCK_S * rate)  # mean square per block
        weights = np.array([BS1770_WEIGHTS[c] if c < len(BS1770_WEIGHTS) else 1.0 for c in range(self.channels)])
        with np.errstate(divide="ignore"):
            block_lufs = -0.691 + 10.0 * np.log10(weights @ z)
            gated = block_lufs >= ABSOLUTE_GATE_LUFS
            if not gated.any():
                return None
            relative = -0.691 + 10.0 * np.log10(weights @ z[:, gated].mean(axis=1)) + RELATIVE_GATE_LU
            gated = (block_lufs > relative) & (block_lufs > ABSOLUTE_GATE_LUFS)
            if not gated.any():
                return None
            return float(-0.691 + 10.0 * np.log10(weights @ z[:, gated].mean(axis=1)))


def integrated_loudness(samples: np.ndarray, sample_rate_hz: int) -> float | None:
    """ITU-R BS.1770-4 integrated loudness in LUFS of ``(channels, samples)`` (see :class:`LoudnessMeter`);
    None when shorter than one gating block or silent."""
    meter = LoudnessMeter(sample_rate_hz, samples.shape[0])
    meter.add(samples)
    return meter.integrated()


def peak(samples: np.ndarray) -> float:
    """The largest absolute sample value (linear full scale)."""
    return float(np.max(np.abs(samples))) if samples.size else 0.0


def to_dbfs(value: float) -> float:
    """Linear full-scale amplitude in dBFS (-inf for zero)."""
    return float(20.0 * np.log10(value)) if value > 0 else float("-inf")
