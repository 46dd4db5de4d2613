"""Quality checks of synthesized speech: the failures a TTS model makes without raising an error.

:func:`check_speech` looks at one mono waveform and the text it should speak and returns its issues,
an empty tuple when it passes:

* ``empty``: (almost) no samples at all;
* ``silent``: samples, but below :attr:`QualityThresholds.silent_rms_dbfs` (a decoder gone quiet);
* ``clipped``: too many samples at full scale (or values that are not finite numbers);
* ``truncated``: the speech was cut off. Three signs, any one suffices:

  - the model ran to its ``max_new_tokens`` limit without emitting its end-of-speech token (the
    caller knows: the number of codec frames it got back equals the limit), which is how a cut at
    the token limit shows;
  - the duration is far below what the text needs (:func:`expected_duration_s`, by character
    class: CJK characters take about three times as long to say as Latin letters);
  - the audio ends at full level: the last :attr:`QualityThresholds.end_window_s` are as loud as
    the loud part of the line, where finished speech fades out.

Pure numpy, no model and no I/O: :func:`voxflow.tasks.synthesize.synthesize` calls it on every piece it
generates and regenerates the lines that fail.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import Field

from voxflow.tasks.kit.options import Options

EMPTY, SILENT, CLIPPED, TRUNCATED = "empty", "silent", "clipped", "truncated"
ISSUES = (EMPTY, SILENT, CLIPPED, TRUNCATED)
LATIN_CHARS_PER_S = 12.0  # letters and digits per second of ordinary read speech (about 150 words a minute)
CJK_CHARS_PER_S = 4.5  # Chinese characters, kana or hangul syllables per second


@dataclass(frozen=True)
class QualityThresholds(Options):
    """Where each check draws its line (levels in dBFS or linear full scale, times in seconds)."""

    min_duration_s: Annotated[float, Field(ge=0, description="Shorter: empty.")] = 0.1
    silent_rms_dbfs: Annotated[float, Field(le=0, description="RMS of the whole line below this: silent.")] = -50.0
    clip_level: Annotated[float, Field(gt=0, le=1, description="A |sample| at or above this counts as clipped.")] = (
        0.999
    )
    clipped_fraction: Annotated[
        float, Field(ge=0, lt=1, description="More than this share of clipped samples: clipped.")
    ] = 0.001
    min_duration_ratio: Annotated[
        float, Field(ge=0, lt=1, description="Shorter than this share of the expected duration: truncated.")
    ] = 0.4
    frame_s: Annotated[float, Field(gt=0, description="Frames the level is measured in.")] = 0.02
    end_window_s: Annotated[
        float, Field(gt=0, description="The end of the line whose level is compared with the loud frames.")
    ] = 0.05
    loud_percentile: Annotated[
        float, Field(gt=0, le=100, description="The level of the loud part of the line (a percentile of frames).")
    ] = 90.0
    end_level_ratio: Annotated[
        float | None,
        Field(gt=0, description="End RMS at or above this share of the loud level: truncated; None: not checked."),
    ] = 0.8


def is_cjk(char: str) -> bool:
    """Whether a character is a CJK ideograph, kana or hangul syllable (one syllable of speech each)."""
    name = unicodedata.name(char, "")
    return name.startswith(("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH", "HIRAGANA", "KATAKANA", "HANGUL"))


def expected_duration_s(text: str) -> float:
    """How long ``text`` typically takes to say: CJK characters at 4.5 a second, other letters and
    digits at 12 a second (spaces and punctuation are not counted)."""
    cjk = sum(1 for c in text if is_cjk(c))
    other = sum(1 for c in text if c.isalnum()) - cjk
    return cjk / CJK_CHARS_PER_S + other / LATIN_CHARS_PER_S


def rms_dbfs(samples: np.ndarray) -> float:
    """The RMS level of ``samples`` in dB relative to full scale (``-inf`` for digital silence)."""
    if samples.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def ends_at_full_level(
    samples: np.ndarray, sample_rate_hz: int, thresholds: QualityThresholds = QualityThresholds()
) -> bool:
    """Whether the last ``end_window_s`` are as loud as the loud frames of the line (no fade-out)."""
    if thresholds.end_level_ratio is None:
        return False
    frame = max(round(thresholds.frame_s * sample_rate_hz), 1)
    end = max(round(thresholds.end_window_s * sample_rate_hz), 1)
    if samples.size < 2 * end or samples.size < 2 * frame:
        return False
    frames = samples[: samples.size // frame * frame].reshape(-1, frame).astype(np.float64)
    loud = float(np.percentile(np.sqrt(np.mean(frames**2, axis=1)), thresholds.loud_percentile))
    tail = float(np.sqrt(np.mean(samples[-end:].astype(np.float64) ** 2)))
    return loud > 0 and tail >= thresholds.end_level_ratio * loud


def check_speech(
    samples: np.ndarray,
    sample_rate_hz: int,
    text: str,
    expected_s: float | None = None,
    *,
    hit_token_limit: bool = False,
    thresholds: QualityThresholds = QualityThresholds(),
) -> tuple[str, ...]:
    """The issues of one synthesized mono line (``samples``, float, 1-D) meant to say ``text``.

    ``expected_s`` overrides the duration estimated from the text; ``hit_token_limit`` says the model
    stopped at its ``max_new_tokens`` limit instead of at its end-of-speech token. Issues come in the
    order of :data:`ISSUES`; an empty or silent line gets no further checks.
    """
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"check_speech expects mono 1-D samples, got shape {samples.shape}")
    if sample_rate_hz <= 0:
        raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
    duration_s = samples.size / sample_rate_hz
    if samples.size == 0 or duration_s < thresholds.min_duration_s:
        return (EMPTY,)
    finite = bool(np.isfinite(samples).all())
    if finite and rms_dbfs(samples) < thresholds.silent_rms_dbfs:
        return (SILENT,)
    issues = []
    if not finite or np.mean(np.abs(samples) >= thresholds.clip_level) > thresholds.clipped_fraction:
        issues.append(CLIPPED)
    expected = expected_duration_s(text) if expected_s is None else expected_s
    if (
        hit_token_limit
        or duration_s < thresholds.min_duration_ratio * expected
        or (finite and ends_at_full_level(samples, sample_rate_hz, thresholds))
    ):
        issues.append(TRUNCATED)
    return tuple(issues)
