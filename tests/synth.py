"""Synthetic test audio: tones and noise written in real file formats (soundfile, or ffmpeg for M4A)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf


def tone_and_noise(channels: int, sample_rate_hz: int, duration_s: float, seed: int = 0) -> np.ndarray:
    """``(channels, samples)``: a different sine per channel plus a little noise, peak near 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(duration_s * sample_rate_hz))) / sample_rate_hz
    rows = [
        0.4 * np.sin(2 * np.pi * (220.0 * (c + 1)) * t) + 0.05 * rng.standard_normal(t.size) for c in range(channels)
    ]
    return np.stack(rows).astype(np.float32)


FFMPEG_CODECS = {".m4a": ["-c:a", "aac", "-b:a", "128k"], ".opus": ["-c:a", "libopus"], ".webm": ["-c:a", "libopus"]}


def write_audio(path: Path, samples: np.ndarray, sample_rate_hz: int, subtype: str | None = None) -> Path:
    """Write ``(channels, samples)`` to ``path``; the suffix picks the format (``.m4a``, ``.opus`` and ``.webm``
    encoded by the ffmpeg command)."""
    path = Path(path)
    if path.suffix in FFMPEG_CODECS:
        wav = path.with_suffix(".src.wav")
        sf.write(wav, samples.T, sample_rate_hz, subtype="FLOAT")
        command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), *FFMPEG_CODECS[path.suffix], str(path)]
        subprocess.run(command, check=True)
        wav.unlink()
        return path
    sf.write(path, samples.T, sample_rate_hz, subtype=subtype)
    return path
