"""Reference: check and clean the recording a voice is cloned from (issue 5, ``run_pre_processing``).

A voice-clone prompt is only as good as its reference: background noise, long silences, a level far
from the model's training data or clipped peaks all end up in every line synthesized with it. The
flow ingests the reference at its own rate, then this stage either

* **checks only** (``process=False``): clipping and silence on the raw samples and enough speech,
  and hands the ingested artifact itself on, unchanged (no model is loaded, nothing is written); or
* **cleans** (``process=True``), in this order: check clipping and silence on the raw input →
  downmix → resample to ``sample_rate_hz`` (16 kHz, the rate the denoiser and the seed pipeline use;
  Qwen3-TTS resamples to 24 kHz itself) → denoise (:func:`voxflow.tasks.denoise.denoise`) → trim leading and
  trailing silence, keeping ``trim_pad_s`` around the speech → cut a reference longer than ``max_s``
  at its quietest pause → check that at least ``min_speech_s`` of speech is left → normalise the
  loudness to ``loudness_lufs`` without letting the sample peak exceed -1 dBFS → 10 ms fades at both
  ends. The cut comes before the loudness normalisation so that the written file, not the longer
  one it was cut from, has the target loudness (the quietest pause does not depend on the gain).

Silence is measured on frames of ``FRAME_S`` (20 ms): a frame is speech when its level is within
``trim_threshold_db`` of the loudest frame. Active stretches shorter than ``MIN_BURST_S`` at the ends
(a click, a bumped microphone) do not count as speech.

A reference that cannot make a good voice raises :class:`UnusableReference`, a ``ValueError`` with a
one-line message naming the file and the reason (too short, silent, clipped); a bad input is never
retried (:func:`voxflow.tasks.kit.runs.is_transient`).

Writes ``artifacts/<sha[:2]>/<sha>/reference/<params>/reference.wav`` (mono float WAV at
``sample_rate_hz``) when it cleans.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import Field

from voxflow.storage.refs import ArtifactRef
from voxflow.storage.settings import StoreSettings
from voxflow.tasks.denoise import DenoiseOptions, denoise, load_denoise_model
from voxflow.tasks.helpers import audio as audio_io
from voxflow.tasks.kit.models import ModelSettings
from voxflow.tasks.kit.options import InvalidOptions, Options
from voxflow.tasks.kit.outputs import audio_input, read_audio, source_sha256_of, write_audio
from voxflow.tasks.kit.stage import StageSpec, stage_task

if TYPE_CHECKING:
    from denoiser.demucs import Demucs

STAGE = "reference"
CODE_VERSION = "1"
AUDIO_NAME = "reference.wav"
FRAME_S = 0.02  # frame of the level measurements (silence, trimming, the cut)
MIN_BURST_S = 0.06  # active stretches shorter than this at the ends are clicks, not speech
PAUSE_S = 0.1  # a cut goes in the middle of the quietest stretch this long
CUT_TOLERANCE_DB = 3.0  # pauses this close to the quietest one count as quiet; the latest one wins
PEAK_CEILING_DBFS = -1.0  # loudness normalisation never raises the sample peak above this
FADE_S = 0.01  # raised-cosine fade-in and fade-out of a cleaned reference (no click where it was cut)
CLIP_LEVEL = 0.99  # |sample| at or above this is at full scale
CLIP_RUN_SAMPLES = 3  # that many full-scale samples in a row are a clipped peak, not a loud one


class UnusableReference(ValueError):
    """A reference recording cannot make a voice; the message names the file and the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"voice reference {name!r} is {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class ReferenceOptions(Options):
    """Whether the reference is cleaned or only checked, and the limits of a usable reference."""

    process: Annotated[
        bool,
        Field(
            description="Clean the reference (denoise, resample, trim, loudness); off: only check it and pass it on unchanged."
        ),
    ] = True
    sample_rate_hz: Annotated[int, Field(ge=8_000, le=192_000, description="Rate of the cleaned reference.")] = 16_000
    loudness_lufs: Annotated[
        float,
        Field(
            ge=-60,
            le=-5,
            description="Integrated loudness of the cleaned reference (BS.1770), unless its peak would pass -1 dBFS.",
        ),
    ] = -20.0
    trim_threshold_db: Annotated[
        float,
        Field(
            gt=0,
            le=120,
            description="Frames quieter than the loudest frame minus this are silence (trimmed at the ends).",
        ),
    ] = 40.0
    trim_pad_s: Annotated[float, Field(ge=0, le=2, description="Silence kept before and after the speech.")] = 0.1
    min_speech_s: Annotated[
        float, Field(ge=0.5, description="Less speech than this is too short to clone a voice from.")
    ] = 3.0
    max_s: Annotated[
        float, Field(gt=0, le=600, description="A longer cleaned reference is cut at its quietest pause before this.")
    ] = 30.0
    silence_dbfs: Annotated[
        float, Field(ge=-120, lt=0, description="A reference whose loudest 20 ms stay below this level is silent.")
    ] = -50.0
    clipped_fraction: Annotated[
        float,
        Field(ge=0, le=1, description="Most samples allowed in clipped runs (3+ samples at full scale in a row)."),
    ] = 0.001
    denoise: Annotated[DenoiseOptions, Field(description="The denoiser run when cleaning.")] = field(
        default_factory=DenoiseOptions
    )

    def check(self) -> None:
        if self.min_speech_s + self.trim_pad_s >= self.max_s:
            raise InvalidOptions(
                f"ReferenceOptions: min_speech_s + trim_pad_s ({self.min_speech_s + self.trim_pad_s:g}) must be "
                f"shorter than max_s ({self.max_s:g})"
            )


@dataclass(frozen=True)
class ReferenceReport:
    """What was measured on a reference and done to it (seconds on the input's timeline)."""

    duration_s: float  # of the reference handed on (cleaned, or the input when only checked)
    speech_s: float  # from the first to the last speech frame of that reference (the padding left out)
    trimmed_start_s: float  # removed before it (0 when only checked)
    trimmed_end_s: float  # removed after it: trailing silence, and what the cut dropped (0 when only checked)
    loudness_lufs_in: float | None  # integrated loudness of the input; None when too short or silent to measure
    loudness_lufs_out: float | None  # of the reference handed on
    peak_dbfs: float  # sample peak of the reference handed on
    clipped_fraction: float  # share of the input's samples in clipped runs
    cut: bool  # longer than max_s after trimming: cut at a quiet pause


@dataclass(frozen=True)
class ReferenceResult:
    """What the reference task returns: the reference the voice is made from, and its report."""

    artifact: ArtifactRef  # the cleaned reference.wav, or the input artifact itself when only checked
    source_sha256: str
    report: ReferenceReport
    processed: bool  # cleaned (True) or only checked (False)

    @property
    def sha256(self) -> str:
        return self.artifact.sha256

    def summary(self) -> dict:
        """What a summary table shows of a reference."""
        r = self.report
        return {
            "duration_s": round(r.duration_s, 3),
            "speech_s": round(r.speech_s, 3),
            "lufs": round(r.loudness_lufs_out, 2) if r.loudness_lufs_out is not None else None,
            "processed": self.processed,
            "cut": r.cut,
            "sha256": self.source_sha256[:12],
        }


def frame_levels_db(samples: np.ndarray, rate_hz: int) -> np.ndarray:
    """Mean-square level in dB (re full scale) of each ``FRAME_S`` frame of each channel: ``(channels, frames)``.

    The last frame may be shorter (its own mean); an all-zero frame is ``-inf``.
    """
    size = max(round(FRAME_S * rate_hz), 1)
    channels, frames = samples.shape
    count = -(-frames // size)
    padded = np.pad(np.asarray(samples, dtype=np.float32), ((0, 0), (0, count * size - frames)))
    energy = np.square(padded).reshape(channels, count, size).sum(axis=2, dtype=np.float64)
    lengths = np.full(count, size, dtype=np.float64)
    lengths[-1] = frames - (count - 1) * size
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(energy / lengths)


def speech_frames(levels_db: np.ndarray, floor_db: float) -> tuple[int, int] | None:
    """The first speech frame and the frame after the last one of mono ``levels_db``; None without speech.

    A frame is speech at ``floor_db`` or louder; active stretches shorter than ``MIN_BURST_S`` are
    left out when a longer one exists.
    """
    active = np.concatenate([[False], levels_db >= floor_db, [False]])
    edges = np.flatnonzero(np.diff(active.astype(np.int8)))
    if edges.size == 0:
        return None
    starts, ends = edges[0::2], edges[1::2]
    long_enough = ends - starts >= max(round(MIN_BURST_S / FRAME_S), 1)
    if long_enough.any():
        starts, ends = starts[long_enough], ends[long_enough]
    return int(starts[0]), int(ends[-1])


def clipped_share(samples: np.ndarray) -> float:
    """The share of samples in runs of ``CLIP_RUN_SAMPLES`` or more at ``|x| >= CLIP_LEVEL`` (any channel)."""
    hot = np.abs(samples) >= CLIP_LEVEL
    if not hot.any():
        return 0.0
    rows = np.pad(hot, ((0, 0), (1, 1))).ravel()  # the padding keeps runs from crossing channels
    edges = np.flatnonzero(np.diff(rows.astype(np.int8)))
    lengths = edges[1::2] - edges[0::2]
    return float(lengths[lengths >= CLIP_RUN_SAMPLES].sum() / samples.size)


def _check_levels(samples: np.ndarray, rate_hz: int, name: str, options: ReferenceOptions) -> float:
    """Raise :class:`UnusableReference` when the raw input is empty, clipped or silent; its clipped share."""
    if samples.ndim != 2 or samples.shape[1] == 0:
        raise UnusableReference(name, f"not (channels, samples) audio with samples: its shape is {samples.shape}")
    share = clipped_share(samples)
    if share > options.clipped_fraction:
        raise UnusableReference(
            name,
            f"clipped: {share:.2%} of its samples are in runs at full scale, more than "
            f"the {options.clipped_fraction:.2%} allowed; record it again at a lower gain",
        )
    _check_not_silent(frame_levels_db(samples, rate_hz).max(), name, options, "")
    return share


def _check_not_silent(loudest_db: float, name: str, options: ReferenceOptions, when: str) -> None:
    if loudest_db < options.silence_dbfs:
        raise UnusableReference(
            name,
            f"silent{when}: its loudest {FRAME_S * 1000:.0f} ms are at {loudest_db:.1f} dBFS, "
            f"below the {options.silence_dbfs:g} dBFS silence level",
        )


def _check_speech(speech_s: float, name: str, options: ReferenceOptions) -> None:
    if speech_s < options.min_speech_s:
        raise UnusableReference(
            name, f"too short: {speech_s:.2f} s of speech, at least {options.min_speech_s:g} s needed"
        )


def _speech_bounds(mono: np.ndarray, rate_hz: int, options: ReferenceOptions) -> tuple[int, int]:
    """First and end sample of the speech in ``(1, n)`` audio (0, 0 when there is none)."""
    levels = frame_levels_db(mono, rate_hz)[0]
    frames = speech_frames(levels, levels.max() - options.trim_threshold_db)
    if frames is None:
        return 0, 0
    size = max(round(FRAME_S * rate_hz), 1)
    return frames[0] * size, min(frames[1] * size, mono.shape[1])


def check_reference(
    samples: np.ndarray, rate_hz: int, name: str, options: ReferenceOptions = ReferenceOptions()
) -> ReferenceReport:
    """Check a raw ``(channels, samples)`` reference as it is: not clipped, not silent, enough speech.

    Raises :class:`UnusableReference` naming ``name``; the report describes the input itself (nothing
    trimmed, not cut), its speech measured on the channels' mean.
    """
    share = _check_levels(samples, rate_hz, name, options)
    start, end = _speech_bounds(audio_io.downmix(samples), rate_hz, options)
    speech_s = (end - start) / rate_hz
    _check_speech(speech_s, name, options)
    loudness = audio_io.integrated_loudness(samples, rate_hz)
    return ReferenceReport(
        duration_s=samples.shape[1] / rate_hz,
        speech_s=speech_s,
        trimmed_start_s=0.0,
        trimmed_end_s=0.0,
        loudness_lufs_in=loudness,
        loudness_lufs_out=loudness,
        peak_dbfs=audio_io.to_dbfs(audio_io.peak(samples)),
        clipped_fraction=share,
        cut=False,
    )


def cut_point(mono: np.ndarray, rate_hz: int, options: ReferenceOptions) -> int:
    """Where a reference longer than ``max_s`` is cut: the middle of its quietest ``PAUSE_S`` (a sample index).

    Pauses are looked for between ``max(min_speech_s, max_s / 2)`` and ``max_s - trim_pad_s``, so the
    cut keeps at least half of ``max_s`` and leaves room for the padding after the last word; of the
    pauses within ``CUT_TOLERANCE_DB`` of the quietest one, the latest wins (the most speech is kept).
    """
    size = max(round(FRAME_S * rate_hz), 1)
    power = 10.0 ** (frame_levels_db(mono, rate_hz)[0] / 10.0)
    width = max(round(PAUSE_S / FRAME_S), 1)
    pause_db = 10.0 * np.log10(np.convolve(power, np.ones(width) / width, mode="valid") + 1e-20)
    centers = np.arange(pause_db.size) + width // 2  # frame at the middle of each window
    lowest = max(options.min_speech_s, options.max_s / 2.0) * rate_hz / size
    highest = (options.max_s - options.trim_pad_s) * rate_hz / size
    inside = (centers >= lowest) & (centers <= highest)
    if not inside.any():  # shorter than a pause window past the lower bound: cut at the upper one
        return min(int(highest) * size, mono.shape[1])
    candidates = np.flatnonzero(inside)
    quiet = candidates[pause_db[candidates] <= pause_db[candidates].min() + CUT_TOLERANCE_DB]
    return int(centers[quiet[-1]]) * size


def _fade(samples: np.ndarray, rate_hz: int) -> np.ndarray:
    """Raised-cosine fades of ``FADE_S`` at both ends (a new array)."""
    length = min(round(FADE_S * rate_hz), samples.shape[1] // 2)
    out = samples.copy()
    if length > 0:
        rise = (np.sin(0.5 * np.pi * (np.arange(length) + 0.5) / length) ** 2).astype(np.float32)
        out[:, :length] *= rise
        out[:, -length:] *= rise[::-1]
    return out


def normalize_loudness(samples: np.ndarray, rate_hz: int, loudness_lufs: float) -> np.ndarray:
    """``samples`` with the gain that reaches ``loudness_lufs``, lowered so the peak stays at or below -1 dBFS.

    Audio too short or quiet to measure (:func:`voxflow.tasks.helpers.audio.integrated_loudness` is None) is returned as it is.
    """
    loudness = audio_io.integrated_loudness(samples, rate_hz)
    if loudness is None:
        return samples
    gain_db = min(loudness_lufs - loudness, PEAK_CEILING_DBFS - audio_io.to_dbfs(audio_io.peak(samples)))
    return (samples * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)


def prepare_reference(
    samples: np.ndarray, rate_hz: int, options: ReferenceOptions, denoiser: Demucs | None, name: str
) -> tuple[np.ndarray, ReferenceReport]:
    """The cleaned reference, ``(1, m)`` float32 at ``options.sample_rate_hz``, and its report.

    ``samples`` is ``(channels, n)`` at ``rate_hz`` and stays on the CPU; ``denoiser`` (a Demucs, see
    :func:`voxflow.tasks.denoise.load_denoise_model`) sees it in chunks on its own device. With
    ``options.process`` off, ``denoiser`` may be None and the input comes back unchanged with
    :func:`check_reference`'s report. Raises :class:`UnusableReference` naming ``name``.
    """
    if not options.process:
        return samples, check_reference(samples, rate_hz, name, options)
    if denoiser is None:
        raise TypeError("prepare_reference needs a denoiser model when options.process is on")
    share = _check_levels(samples, rate_hz, name, options)
    rate = options.sample_rate_hz
    mono = audio_io.resample(audio_io.downmix(samples), rate_hz, rate)
    clean = denoise(mono, rate, denoiser, options.denoise)
    _check_not_silent(frame_levels_db(clean, rate).max(), name, options, " after denoising")
    pad = round(options.trim_pad_s * rate)
    start, end = _speech_bounds(clean, rate, options)
    first, last = max(start - pad, 0), min(end + pad, clean.shape[1])
    cut = (last - first) / rate > options.max_s
    if cut:  # the speech before the cut, then as much of the pause after it as the padding allows
        kept = clean[:, first:last]
        at = cut_point(kept, rate, options)
        _, speech_end = _speech_bounds(kept[:, :at], rate, options)
        last = first + min(speech_end + pad, at)
    trimmed = clean[:, first:last]
    speech_start, speech_end = _speech_bounds(trimmed, rate, options)
    speech_s = (speech_end - speech_start) / rate
    _check_speech(speech_s, name, options)
    out = _fade(normalize_loudness(trimmed, rate, options.loudness_lufs), rate)
    loudness_out = audio_io.integrated_loudness(out, rate)
    if loudness_out is None:
        raise UnusableReference(name, "silent after denoising: too quiet to measure its loudness (BS.1770 gates)")
    report = ReferenceReport(
        duration_s=out.shape[1] / rate,
        speech_s=speech_s,
        trimmed_start_s=first / rate,
        trimmed_end_s=(clean.shape[1] - last) / rate,
        loudness_lufs_in=audio_io.integrated_loudness(samples, rate_hz),
        loudness_lufs_out=loudness_out,
        peak_dbfs=audio_io.to_dbfs(audio_io.peak(out)),
        clipped_fraction=share,
        cut=cut,
    )
    return out, report


def reference_name(value: Any) -> str:
    """How errors name a stage input: its source URI when it carries one (an ingest result), else its artifact's URI."""
    source = getattr(value, "source_uri", None)
    return source if isinstance(source, str) and source else audio_input(value).uri


SPEC = StageSpec(STAGE, code_version=CODE_VERSION, gpu=True)


@stage_task(SPEC)
def prepare_reference_audio(
    audio: Any, options: ReferenceOptions, settings: StoreSettings, models: ModelSettings
) -> ReferenceResult:
    """Check a voice reference, and clean it into ``reference.wav`` when ``options.process`` is on."""
    ref, name = audio_input(audio), reference_name(audio)
    samples, rate = read_audio(ref, settings)
    if not options.process:  # nothing loaded, nothing written: the input is the reference
        return ReferenceResult(ref, source_sha256_of(audio), check_reference(samples, rate, name, options), False)
    denoiser = load_denoise_model(options.denoise.model, models.torch_device(), models.model_dir)
    clean, report = prepare_reference(samples, rate, options, denoiser, name)
    artifact = write_audio(settings, AUDIO_NAME, clean, options.sample_rate_hz)
    return ReferenceResult(artifact, source_sha256_of(audio), report, True)
