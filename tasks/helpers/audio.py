"""Audio at the edges: decode, encode, resample, loudness. Pure functions, no storage.

In-memory contract: float32 numpy array shaped ``(channels, samples)`` plus ``sample_rate_hz``.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOUNDFILE_FORMATS = ("wav", "flac", "mp3", "ogg", "oga", "aiff", "aif", "w64", "rf64", "caf")
AV_FORMATS = ("m4a", "mp4", "aac", "opus", "webm", "wma", "mka")  # decoded with PyAV (FFmpeg's libraries)
SUPPORTED_FORMATS = SOUNDFILE_FORMATS + AV_FORMATS
MAX_CHANNELS = 8
LOUDNESS_BLOCK_S = 0.4  # BS.1770 gating block
LOUDNESS_OVERLAP = 0.75  # of consecutive gating blocks
K_SHELF_GAIN_DB, K_SHELF_Q, K_SHELF_HZ = 4.0, 1 / np.sqrt(2), 1500.0  # K-weighting stage 1: high shelf
K_HIGHPASS_Q, K_HIGHPASS_HZ = 0.5, 38.0  # K-weighting stage 2: high-pass (RLB)
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
BS1770_WEIGHTS = (1.0, 1.0, 1.0, 1.41, 1.41)  # L, R, C, Ls, Rs; channels past five weigh 1.0


class AudioDecodeError(ValueError):
    """An input file is not decodable audio; the message names the file and the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"cannot decode {name!r}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class DecodedAudio:
    """Samples ``(channels, samples)`` float32 in [-1, 1] and how the file stored them."""

    samples: np.ndarray
    sample_rate_hz: int
    format: str  # container, upper case: WAV, FLAC, MP3, OGG, M4A, ...
    subtype: str  # sample encoding: PCM_16, PCM_24, FLOAT, MPEG_LAYER_III, aac, ...

    @property
    def channels(self) -> int:
        return self.samples.shape[0]

    @property
    def frames(self) -> int:
        return self.samples.shape[1]

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate_hz


def _wav_truncation(data: bytes) -> str | None:
    """Why a RIFF/WAVE file is truncated, or None when its data chunk is complete.

    libsndfile silently reads what is there when a WAV's data chunk is cut short, so the
    declared chunk size is checked against the bytes actually present.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        body = offset + 8
        if chunk_id == b"data":
            present = len(data) - body
            if size != 0xFFFFFFFF and size > present:
                return f"file is truncated: the header declares {size} bytes of audio, only {present} are present"
            return None
        offset = body + size + (size & 1)
    return "file is truncated: no audio data chunk"


def _decode_soundfile(data: bytes) -> DecodedAudio:
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(data)) as f:
        samples = f.read(dtype="float32", always_2d=True)
        return DecodedAudio(np.ascontiguousarray(samples.T), f.samplerate, f.format, f.subtype)


def _decode_av(path: Path, name: str) -> DecodedAudio:
    """The first audio stream of any container FFmpeg reads (M4A/AAC, Opus, WebM, ...), through PyAV."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise AudioDecodeError(name, "not a recognised audio format (no audio stream found)")
            planar = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.rate)  # (channels, n)
            blocks = [out.to_ndarray() for frame in container.decode(stream) for out in planar.resample(frame)]
            blocks += [out.to_ndarray() for out in planar.resample(None)]
            container_name = container.format.name.split(",")[0].upper()
            rate, codec = stream.rate, stream.codec_context.name
    except av.FFmpegError as e:
        raise AudioDecodeError(name, f"not a recognised audio format ({e.strerror or type(e).__name__})") from e
    samples = np.concatenate(blocks, axis=1) if blocks else np.zeros((1, 0), np.float32)
    container_name = "M4A" if path.suffix.lower() in (".m4a", ".mp4") else container_name
    return DecodedAudio(np.ascontiguousarray(samples, dtype=np.float32), rate, container_name, codec)


def decode_file(path: str | Path, name: str | None = None) -> DecodedAudio:
    """Decode any supported file (1 to 8 channels, any rate, int16/int24/int32/float).

    soundfile (libsndfile) reads WAV, FLAC, MP3, OGG and friends; other containers (M4A/AAC, Opus,
    WebM) go through PyAV (FFmpeg's libraries, no ffmpeg binary). Raises :class:`AudioDecodeError` naming the file and the reason.
    """
    import soundfile as sf

    path = Path(path)
    name = name or path.name
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AudioDecodeError(name, e.strerror or str(e)) from e
    if not data:
        raise AudioDecodeError(name, "file is empty")
    truncation = _wav_truncation(data)
    if truncation:
        raise AudioDecodeError(name, truncation)
    try:
        audio = _decode_soundfile(data)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        if path.suffix.lower().lstrip(".") in SOUNDFILE_FORMATS and "not recognised" not in str(e):
            raise AudioDecodeError(name, str(e).split(": ", 1)[-1]) from e
        audio = _decode_av(path, name)
    if audio.frames == 0:
        raise AudioDecodeError(name, "file holds no audio samples")
    if not 1 <= audio.channels <= MAX_CHANNELS:
        raise AudioDecodeError(name, f"{audio.channels} channels; 1 to {MAX_CHANNELS} are supported")
    if not np.isfinite(audio.samples).all():
        raise AudioDecodeError(name, "samples contain NaN or infinity")
    return audio


WAVE_FORMAT_IEEE_FLOAT = 3
RIFF_MAX_BYTES = (1 << 32) - 1


def _float_wav(samples: np.ndarray, sample_rate_hz: int) -> bytes:
    channels, frames = samples.shape
    data = np.ascontiguousarray(samples.T, dtype="<f4").tobytes()
    fmt = struct.pack(
        "<HHIIHHH", WAVE_FORMAT_IEEE_FLOAT, channels, sample_rate_hz, sample_rate_hz * channels * 4, channels * 4, 32, 0
    )
    body = b"".join(
        [
            b"WAVE",
            b"fmt ",
            struct.pack("<I", len(fmt)),
            fmt,
            b"fact",
            struct.pack("<II", 4, frames),
            b"data",
            struct.pack("<I", len(data)),
            data,
        ]
    )
    if len(body) > RIFF_MAX_BYTES:
        raise ValueError(f"{frames} frames x {channels} channels do not fit a WAV file (4 GiB)")
    return b"RIFF" + struct.pack("<I", len(body)) + body


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


def integrated_loudness(samples: np.ndarray, sample_rate_hz: int) -> float | None:
    """ITU-R BS.1770-4 integrated loudness in LUFS; None when shorter than one gating block or silent.

    K-weighting (:func:`k_weighting`), 400 ms blocks overlapping by 75 %, absolute (-70 LUFS) and relative
    (-10 LU) gates. Block energies come from cumulative sums, and any channel count is measured: the
    first five follow BS.1770's L, R, C, Ls, Rs weights, further channels weigh 1.0.
    """
    from scipy.signal import lfilter

    block = int(LOUDNESS_BLOCK_S * sample_rate_hz)
    frames = samples.shape[1]
    if frames < block:
        return None
    weighted = samples.astype(np.float64)
    for b, a in k_weighting(sample_rate_hz):
        weighted = lfilter(b, a, weighted, axis=1)
    step = 1.0 - LOUDNESS_OVERLAP
    blocks = int(np.round((frames / sample_rate_hz - LOUDNESS_BLOCK_S) / (LOUDNESS_BLOCK_S * step))) + 1
    j = np.arange(blocks)
    starts = (LOUDNESS_BLOCK_S * (j * step) * sample_rate_hz).astype(int)
    ends = np.minimum((LOUDNESS_BLOCK_S * (j * step + 1) * sample_rate_hz).astype(int), frames)
    energy = np.concatenate([np.zeros((samples.shape[0], 1)), np.cumsum(weighted**2, axis=1)], axis=1)
    z = (energy[:, ends] - energy[:, starts]) / (LOUDNESS_BLOCK_S * sample_rate_hz)  # mean square per block
    weights = np.array([BS1770_WEIGHTS[c] if c < len(BS1770_WEIGHTS) else 1.0 for c in range(samples.shape[0])])
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


def peak(samples: np.ndarray) -> float:
    """The largest absolute sample value (linear full scale)."""
    return float(np.max(np.abs(samples))) if samples.size else 0.0


def to_dbfs(value: float) -> float:
    """Linear full-scale amplitude in dBFS (-inf for zero)."""
    return float(20.0 * np.log10(value)) if value > 0 else float("-inf")
