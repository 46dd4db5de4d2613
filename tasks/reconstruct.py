"""Reconstruct: the new lines fitted to the original timing and mixed back over everything else.

voice_replace's last stage. Its compute is own DSP on the CPU, no model:

1. **Slots** (:func:`line_slots`): where each of the target's lines may be spoken. A line's slot is
   its solo part: the time it speaks with nobody else (policy ``keep``, the default), or its whole
   time (``attenuate``). After the slot, the silent gap up to the next speech onset (anyone's) minus
   ``guard_s`` may be used.
2. **Timing plan** (:func:`plan_timing`), per line, in samples of the output rate::

       natural ≤ slot                 slowed to fill the slot, never below min_rate (then silence pads it)
       slot < natural ≤ slot + gap    spoken as it is, into the gap
       natural > slot + gap           sped up to end where the gap ends: freely up to free_rate,
                                      flagged "fast" up to max_rate, beyond it trimmed and its overflow reported

   Rates are then smoothed: a line is never more than ``smoothing_step`` slower than a neighbour
   ``k`` lines away allows (``rate_j - k · step``), so the pace does not jump from line to line.
3. **Mix** (:func:`render`): the output starts as the input itself. In each line's region (its slot,
   or as far as the fitted line runs into the gap) the input is replaced by the accompaniment plus
   the fitted line, panned like the original voice there and at the loudness of the line it replaces
   (BS.1770); in overlapped parts under ``attenuate`` the other voices stay, ``overlap_attenuation_db``
   lower. Linear crossfades of ``crossfade_s`` inside each region's edges join it to the untouched
   input, so every sample outside the regions is the input's own. Last, the true peak (BS.1770,
   4× oversampled) of every region is held at ``true_peak_dbtp``; an input that already peaks above
   it is lowered as a whole (reported).

Memory: the mix, its two stems and the output (four times the recording), plus one line at a time:
the lines come from an iterator, so their number does not change the peak.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from voxflow.storage.keys import source_name
from voxflow.storage.refs import ArtifactRef
from voxflow.storage.settings import StoreSettings
from voxflow.tasks.helpers import audio
from voxflow.tasks.helpers.speakers import Turn
from voxflow.tasks.helpers.stretch import time_stretch
from voxflow.tasks.kit.options import InvalidOptions, Options
from voxflow.tasks.kit.outputs import read_audio, write_artifact, write_audio
from voxflow.tasks.kit.stage import StageSpec, stage_task
from voxflow.tasks.line_check import LineCheck
from voxflow.tasks.script import ScriptLine

STAGE = "reconstruct"
CODE_VERSION = "1"
MIX_NAME = "replaced.wav"  # the final mix, at the input's rate and channels
VOICE_NAME = "new_voice.wav"  # the fitted lines alone (the new voice's stem)
TABLE_NAME = "lines.parquet"  # one row per target line (the timing plan, levels and quality check)
CSV_NAME = "lines.csv"  # the same table as CSV: edit its text column and give it back as the script
REPORT_NAME = "report.md"
TRUE_PEAK_CHUNK = 1 << 18  # samples per channel oversampled at once when measuring a true peak
TRUE_PEAK_MARGIN = 64  # samples of context either side of a chunk (the interpolation filter's reach)
TRUE_PEAK_TAPS_PER_PHASE = 12  # BS.1770-4 Annex 2: a 48-tap, 4-phase interpolation filter
SILENT_RMS = 1e-5  # a channel quieter than this carries none of the voice (for panning)
OverlapPolicy = Literal["keep", "attenuate"]
StretchBackend = Literal["auto", "rubberband", "wsola"]


@dataclass(frozen=True)
class TimingOptions(Options):
    """How a new line is fitted to the time of the line it replaces."""

    guard_s: Annotated[float, Field(ge=0.0, le=1.0, description="Silence kept before the next speech onset.")] = 0.1
    free_rate: Annotated[
        float, Field(ge=1.0, le=2.0, description="Speed-up applied freely (above it the line is flagged fast).")
    ] = 1.2
    max_rate: Annotated[
        float,
        Field(ge=1.0, le=3.0, description="Largest speed-up; a line still too long is trimmed, its overflow reported."),
    ] = 1.5
    min_rate: Annotated[
        float, Field(gt=0.0, le=1.0, description="Slowest rate for a line shorter than its slot (then padded).")
    ] = 0.85
    smoothing_step: Annotated[
        float, Field(ge=0.0, le=1.0, description="Largest rate difference between neighbouring lines.")
    ] = 0.1

    def check(self) -> None:
        if self.max_rate < self.free_rate:
            raise InvalidOptions(
                f"TimingOptions: max_rate ({self.max_rate}) must be at least free_rate ({self.free_rate})"
            )


@dataclass(frozen=True)
class ReconstructOptions(Options):
    """Timing fit, stretch backend, overlap policy and the mix's edges and ceiling."""

    timing: TimingOptions = field(default_factory=TimingOptions)
    stretch_backend: Annotated[
        StretchBackend,
        Field(
            description="Time-stretch: rubberband (best on speech, GPL extra), wsola (MIT), auto = rubberband if installed."
        ),
    ] = "auto"
    overlap: Annotated[
        OverlapPolicy,
        Field(
            description="Where the target overlaps another speaker: keep the original there, or attenuate it under the new line."
        ),
    ] = "keep"
    overlap_attenuation_db: Annotated[
        float, Field(ge=0.0, le=60.0, description="How much lower the original voices are under attenuate.")
    ] = 12.0
    min_slot_s: Annotated[
        float, Field(ge=0.0, le=5.0, description="A line with less solo time than this is not replaced (flagged).")
    ] = 0.3
    crossfade_s: Annotated[
        float, Field(ge=0.01, le=0.03, description="Crossfade at each region edge, inside the region.")
    ] = 0.02
    match_loudness: Annotated[bool, Field(description="Give each new line the loudness of the line it replaces.")] = (
        True
    )
    true_peak_dbtp: Annotated[
        float, Field(ge=-20.0, le=0.0, description="Ceiling of the mix's true peak (BS.1770, oversampled).")
    ] = -1.0


# ----------------------------------------------------------------------------------------------------------------
# 1. Slots


@dataclass(frozen=True)
class Slot:
    """Where a line may be spoken: its slot ``[start_s, end_s)`` and the usable gap after it."""

    line_id: str
    start_s: float
    end_s: float
    gap_s: float  # silence after the slot, up to the next speech onset minus the guard
    overlap_s: float  # time of the line spoken over by someone else
    attenuate: tuple[tuple[float, float], ...] = ()  # overlapped spans (attenuate policy)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def _intervals(turns: Iterable[Turn]) -> list[tuple[float, float]]:
    """The union of turns as sorted disjoint intervals."""
    merged: list[list[float]] = []
    for start, end in sorted((t.start_s, t.end_s) for t in turns if t.end_s > t.start_s):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def _clip(spans: Sequence[tuple[float, float]], start: float, end: float) -> list[tuple[float, float]]:
    return [(max(a, start), min(b, end)) for a, b in spans if b > start and a < end]


def _solo_part(start: float, end: float, others: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The longest stretch of ``[start, end)`` that no other speaker covers."""
    best, cursor = (start, start), start
    for a, b in _clip(others, start, end) + [(end, end)]:
        if a - cursor > best[1] - best[0]:
            best = (cursor, a)
        cursor = max(cursor, b)
    return best


def line_slots(
    lines: Sequence[ScriptLine], turns: Sequence[Turn], target: str, duration_s: float, options: ReconstructOptions
) -> list[Slot]:
    """The slot and usable gap of each of the target's lines (see the module's step 1)."""
    others = _intervals(t for t in turns if t.speaker != target)
    onsets = sorted({t.start_s for t in turns} | {line.start_s for line in lines})
    slots = []
    for line in lines:
        overlapped = _clip(others, line.start_s, line.end_s)
        if options.overlap == "attenuate":
            start, end, attenuate = line.start_s, line.end_s, tuple(overlapped)
        else:
            (start, end), attenuate = _solo_part(line.start_s, line.end_s, others), ()
        following = [t for t in onsets if t >= end and t > start] + [a for a, _ in others if a >= end]
        next_onset = min(following, default=duration_s)
        gap = max(0.0, min(next_onset, duration_s) - end - options.timing.guard_s)
        slots.append(Slot(line.line_id, start, end, gap, sum(b - a for a, b in overlapped), attenuate))
    return slots


# ----------------------------------------------------------------------------------------------------------------
# 2. Timing plan


@dataclass(frozen=True)
class LinePlan:
    """How one line is fitted, in samples of the output rate."""

    line_id: str
    start: int  # first sample of the slot
    slot: int  # samples of the slot
    gap: int  # samples of usable gap after it
    natural: int  # samples of the new line as spoken (0: the line is not replaced)
    planned_rate: float  # the speed the line needs to fit (natural / room)
    applied_rate: float  # after clamping and smoothing
    length: int  # samples of the fitted line placed at ``start``
    overflow: int  # samples cut off the end (a line too long even at max_rate)

    @property
    def gap_used(self) -> int:
        return max(0, self.length - self.slot)

    @property
    def padding(self) -> int:
        return max(0, self.slot - self.length)

    @property
    def region(self) -> tuple[int, int]:
        """The samples this line replaces: its slot, or as far as it runs into the gap."""
        return self.start, self.start + max(self.slot, self.length)

    @property
    def replaced(self) -> bool:
        return self.natural > 0 and self.slot > 0


def required_rate(natural: int, slot: int, gap: int) -> float:
    """The rate that fits ``natural`` samples: fill a longer slot, use the gap, then speed up."""
    if natural <= 0 or slot <= 0:
        return 1.0
    return max(natural / (slot + gap), min(natural / slot, 1.0))


def smooth_rates(rates: Sequence[float], step: float) -> list[float]:
    """Each rate raised to at least ``rate_j - step · |i - j|`` of every other line ``j`` (never lowered)."""
    smoothed = list(rates)
    for i in range(1, len(smoothed)):  # forward then backward: the max over all j with the distance penalty
        smoothed[i] = max(smoothed[i], smoothed[i - 1] - step)
    for i in range(len(smoothed) - 2, -1, -1):
        smoothed[i] = max(smoothed[i], smoothed[i + 1] - step)
    return smoothed


def plan_timing(
    slots: Sequence[Slot], natural_samples: Sequence[int], rate_hz: int, options: TimingOptions
) -> list[LinePlan]:
    """The fit of each line (see the module's step 2); ``natural_samples`` at ``rate_hz``, 0 for a line left out."""
    room = [(round(s.start_s * rate_hz), round(s.duration_s * rate_hz), round(s.gap_s * rate_hz)) for s in slots]
    planned = [required_rate(n, slot, gap) for n, (_, slot, gap) in zip(natural_samples, room, strict=True)]
    fitted = [i for i, n in enumerate(natural_samples) if n > 0 and room[i][1] > 0]
    smoothed = smooth_rates([planned[i] for i in fitted], options.smoothing_step)
    applied = dict(zip(fitted, smoothed))
    plans = []
    for i, (slot, n) in enumerate(zip(slots, natural_samples)):
        start, length_slot, gap = room[i]
        rate = min(max(applied.get(i, 1.0), options.min_rate), options.max_rate)
        stretched = round(n / rate) if i in applied else 0
        length = min(stretched, length_slot + gap)
        plans.append(LinePlan(slot.line_id, start, length_slot, gap, n, planned[i], rate, length, stretched - length))
    return plans


NOTICES = ("fast", "overlap kept", "overlap attenuated")  # notes that tell, not flag: the line was still replaced


def line_notes(plan: LinePlan, slot: Slot, options: ReconstructOptions) -> tuple[str, ...]:
    """What the report says of a line's fit: not replaced, overflow, fast, overlap kept or attenuated."""
    notes = []
    if not plan.replaced:
        notes.append("not replaced: no solo time" if plan.slot <= 0 else "not replaced")
    if plan.overflow:
        notes.append("overflow")
    if plan.replaced and plan.applied_rate > options.timing.free_rate + 1e-9:
        notes.append("fast")
    if slot.overlap_s > 0:
        notes.append("overlap attenuated" if options.overlap == "attenuate" else "overlap kept")
    return tuple(notes)


# ----------------------------------------------------------------------------------------------------------------
# 3. Mix


def loudness_lufs(samples: np.ndarray, rate_hz: int) -> float | None:
    """BS.1770 loudness: integrated (gated) where there is a 400 ms block, else ungated K-weighted power."""
    from scipy.signal import lfilter

    integrated = audio.integrated_loudness(samples, rate_hz)
    if integrated is not None or samples.shape[1] == 0:
        return integrated
    weighted = samples.astype(np.float64)
    for b, a in audio.k_weighting(rate_hz):
        weighted = lfilter(b, a, weighted, axis=1)
    power = float(np.mean(weighted**2, axis=1).sum())
    return -0.691 + 10 * np.log10(power) if power > 0 else None


@functools.lru_cache(maxsize=4)
def _interpolator(factor: int) -> np.ndarray:
    """BS.1770-4's oversampling filter shape: 12 taps per phase, low-pass at the original Nyquist (gain = factor)."""
    from scipy.signal import firwin

    return (firwin(TRUE_PEAK_TAPS_PER_PHASE * factor, 1.0 / factor, window=("kaiser", 5.0)) * factor).astype(np.float32)


def true_peak(samples: np.ndarray, rate_hz: int) -> float:
    """BS.1770-4 true peak (linear): the largest absolute value of the signal oversampled to ≥ 176.4 kHz.

    Runs chunk by chunk (with context either side), so memory stays bounded on long recordings.
    """
    from scipy.signal import upfirdn

    factor = 4 if rate_hz < 96_000 else 2 if rate_hz < 192_000 else 1
    frames, found = samples.shape[1], audio.peak(samples)
    if factor == 1:
        return found
    taps = _interpolator(factor)
    for start in range(0, frames, TRUE_PEAK_CHUNK):
        lo, hi = max(0, start - TRUE_PEAK_MARGIN), min(frames, start + TRUE_PEAK_CHUNK + TRUE_PEAK_MARGIN)
        found = max(found, float(np.max(np.abs(upfirdn(taps, samples[:, lo:hi], up=factor, axis=1)))))
    return found


def pan_gains(voice: np.ndarray) -> np.ndarray:
    """Per-channel gains that place a mono line where ``voice`` (the original, ``(channels, n)``) sits."""
    rms = np.sqrt(np.mean(voice.astype(np.float64) ** 2, axis=1)) if voice.shape[1] else np.zeros(voice.shape[0])
    if rms.max(initial=0.0) < SILENT_RMS:
        return np.ones(voice.shape[0])
    return rms / np.sqrt(np.mean(rms**2))


def fade_weights(length: int, crossfade: int) -> np.ndarray:
    """0 → 1 over the first ``crossfade`` samples, 1, then 1 → 0 over the last: the replacement's share."""
    weights = np.ones(length)
    ramp = min(crossfade, length // 2)
    if ramp:
        rising = (np.arange(ramp) + 0.5) / ramp
        weights[:ramp], weights[length - ramp :] = rising, rising[::-1]
    return weights


@dataclass(frozen=True)
class Placed:
    """One line as mixed: its gain (loudness match and ceiling) and the loudness of old and new."""

    line_id: str
    gain_db: float
    original_lufs: float | None
    new_lufs: float | None
    true_peak_dbtp: float  # of its region in the final mix


@dataclass(frozen=True)
class Rendered:
    """The final mix, the new voice alone, each placed line, and the whole-mix gain (0 unless the input peaked)."""

    mix: np.ndarray
    voice: np.ndarray
    placed: tuple[Placed, ...]
    global_gain_db: float
    true_peak_dbtp: float


def _attenuation_mask(plan: LinePlan, slot: Slot, rate_hz: int, options: ReconstructOptions) -> np.ndarray:
    """The share of the original voices kept in each sample of a region (0 in solo parts)."""
    start, end = plan.region
    mask = np.zeros(end - start)
    keep = 10 ** (-options.overlap_attenuation_db / 20)
    for a, b in slot.attenuate:
        lo, hi = max(round(a * rate_hz) - start, 0), min(round(b * rate_hz) - start, end - start)
        mask[lo:hi] = keep
    return mask


def _fitted(line: np.ndarray, line_rate_hz: int, plan: LinePlan, rate_hz: int, backend: str) -> np.ndarray:
    """The line (mono at the output rate) stretched to its planned length (overflow cut with a short fade).

    It is stretched at the lower of its own rate and the output rate (fewer samples to stretch), then
    resampled; the resampled length is off by a sample at most, which is cut or padded.
    """
    work_hz = min(line_rate_hz, rate_hz)
    total = plan.length + plan.overflow
    mono = audio.resample(audio.downmix(line if line.ndim == 2 else line[None]), line_rate_hz, work_hz)
    stretched = audio.resample(time_stretch(mono, work_hz, round(total * work_hz / rate_hz), backend), work_hz, rate_hz)
    fitted = np.zeros(plan.length, np.float32)
    kept = min(plan.length, stretched.shape[1])
    fitted[:kept] = stretched[0, :kept]
    if plan.overflow:
        fade = min(plan.length, round(0.01 * rate_hz))
        fitted[plan.length - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return fitted


def _place(
    out: np.ndarray,
    voice_out: np.ndarray,
    mix: np.ndarray,
    vocals: np.ndarray,
    accompaniment: np.ndarray,
    line: tuple[np.ndarray, int],
    plan: LinePlan,
    slot: Slot,
    rate_hz: int,
    options: ReconstructOptions,
) -> Placed:
    start, end = plan.region
    original = vocals[:, plan.start : plan.start + plan.slot]
    new = np.zeros((out.shape[0], end - start))
    new[:, : plan.length] = pan_gains(original)[:, None] * _fitted(*line, plan, rate_hz, options.stretch_backend)
    before, after = loudness_lufs(original, rate_hz), loudness_lufs(new, rate_hz)
    gain_db = before - after if options.match_loudness and before is not None and after is not None else 0.0
    new *= 10 ** (gain_db / 20)
    bed = accompaniment[:, start:end] + vocals[:, start:end] * _attenuation_mask(plan, slot, rate_hz, options)
    weights = fade_weights(end - start, round(options.crossfade_s * rate_hz))
    ceiling = 10 ** (options.true_peak_dbtp / 20)
    region = mix[:, start:end] * (1 - weights) + (bed + new) * weights
    for _ in range(3):  # hold the region under the ceiling by lowering the new line
        peak = true_peak(region, rate_hz)
        if peak <= ceiling:
            break
        scale = ceiling / peak * 0.995
        new *= scale
        gain_db += float(20 * np.log10(scale))
        region = mix[:, start:end] * (1 - weights) + (bed + new) * weights
    out[:, start:end] = region
    voice_out[:, start:end] += new
    return Placed(
        plan.line_id, float(gain_db), before, loudness_lufs(new, rate_hz), audio.to_dbfs(true_peak(region, rate_hz))
    )


def render(
    mix: np.ndarray,
    vocals: np.ndarray,
    accompaniment: np.ndarray,
    rate_hz: int,
    plans: Sequence[LinePlan],
    slots: Sequence[Slot],
    lines: Iterable[tuple[np.ndarray, int] | None],
    options: ReconstructOptions = ReconstructOptions(),
) -> Rendered:
    """The final mix (see the module's step 3).

    ``mix``, ``vocals`` and ``accompaniment`` are ``(channels, n)`` at ``rate_hz``; ``lines`` yields,
    in the plans' order, each new line as ``(samples, its rate)`` (None for a line not replaced): it is
    consumed one line at a time.
    """
    if not (mix.shape == vocals.shape == accompaniment.shape):
        raise ValueError(f"the mix and its stems differ in shape: {mix.shape}, {vocals.shape}, {accompaniment.shape}")
    out = np.array(mix, dtype=np.float32, copy=True)
    voice_out = np.zeros_like(out)
    placed = []
    for plan, slot, line in zip(plans, slots, lines, strict=True):
        if plan.replaced and line is not None:
            placed.append(_place(out, voice_out, mix, vocals, accompaniment, line, plan, slot, rate_hz, options))
    ceiling = 10 ** (options.true_peak_dbtp / 20)
    peak = true_peak(out, rate_hz)
    global_gain_db = 0.0
    if peak > ceiling:  # the input itself peaks above the ceiling: lower everything, and say so
        scale = ceiling / peak * 0.995
        out *= scale
        voice_out *= scale
        global_gain_db, peak = float(20 * np.log10(scale)), peak * scale
    return Rendered(out, voice_out, tuple(placed), global_gain_db, audio.to_dbfs(peak))


# ----------------------------------------------------------------------------------------------------------------
# The line table and the report


@dataclass(frozen=True)
class NewLine:
    """One of the target's lines as it reaches reconstruction: the finished new line and its check."""

    line: ScriptLine
    audio: ArtifactRef | None  # the finished line (None: not synthesized)
    fingerprint: str  # sha256 of what decided it: text, voice, options (a changed one is synthesized again)
    seed: int | None = None
    attempts: int = 0
    check: LineCheck | None = None  # None: not checked

    @property
    def issues(self) -> tuple[str, ...]:
        return self.check.issues if self.check else ()


@dataclass(frozen=True)
class ReconstructRequest:
    """Everything reconstruction reads: the mix, its stems, the turns, the target and its new lines."""

    mix: ArtifactRef
    vocals: ArtifactRef  # the mix itself when nothing was separated
    accompaniment: ArtifactRef | None  # None: nothing was separated (a recording of voices alone)
    turns: tuple[Turn, ...]
    target: str
    lines: tuple[NewLine, ...]
    target_note: str = ""  # how the target was chosen (e.g. every speaker's similarity to a sample)
    name: str = ""  # the recording's file name, for the report

    @property
    def sha256(self) -> str:
        accompaniment = self.accompaniment.sha256 if self.accompaniment else None
        parts = [self.mix.sha256, self.vocals.sha256, str(accompaniment), self.target, self.target_note, self.name]
        parts += [f"{t.start_s}:{t.end_s}:{t.speaker}" for t in self.turns]
        parts += [f"{n.line}:{n.audio.sha256 if n.audio else None}:{n.check}" for n in self.lines]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()


TABLE_COLUMNS = (  # the line table's columns, in order (see line_rows)
    "line_id",
    "speaker",
    "start_s",
    "end_s",
    "text",
    "original_text",
    "edited",
    "fingerprint",
    "slot_start_s",
    "slot_s",
    "gap_s",
    "natural_s",
    "gap_used_s",
    "padding_s",
    "planned_rate",
    "applied_rate",
    "overflow_s",
    "duration_error_s",
    "overlap_s",
    "replaced",
    "gain_db",
    "original_lufs",
    "new_lufs",
    "heard",
    "wer",
    "cer",
    "similarity",
    "dnsmos",
    "seed",
    "attempts",
    "quality_ok",
    "flagged",
    "notes",
    "line_uri",
)


def line_rows(
    request: ReconstructRequest,
    slots: Sequence[Slot],
    plans: Sequence[LinePlan],
    placed: Sequence[Placed],
    rate_hz: int,
    options: ReconstructOptions,
) -> list[dict]:
    """One row per target line: its text, fingerprint, timing plan, mix levels and quality check."""
    by_id = {p.line_id: p for p in placed}
    rows = []
    for new, slot, plan in zip(request.lines, slots, plans, strict=True):
        check, mixed = new.check, by_id.get(plan.line_id)
        notes = line_notes(plan, slot, options) + new.issues
        rows.append(
            {
                "line_id": new.line.line_id,
                "speaker": new.line.speaker,
                "start_s": round(new.line.start_s, 3),
                "end_s": round(new.line.end_s, 3),
                "text": new.line.text,
                "original_text": new.line.original_text if new.line.edited else new.line.text,
                "edited": new.line.edited,
                "fingerprint": new.fingerprint,
                "slot_start_s": round(slot.start_s, 3),
                "slot_s": round(plan.slot / rate_hz, 3),
                "gap_s": round(plan.gap / rate_hz, 3),
                "natural_s": round(plan.natural / rate_hz, 3),
                "gap_used_s": round(plan.gap_used / rate_hz, 3),
                "padding_s": round(plan.padding / rate_hz, 3),
                "planned_rate": round(plan.planned_rate, 4),
                "applied_rate": round(plan.applied_rate, 4),
                "overflow_s": round(plan.overflow / rate_hz, 3),
                "duration_error_s": round((plan.natural - plan.slot) / rate_hz, 3),
                "overlap_s": round(slot.overlap_s, 3),
                "replaced": bool(mixed),
                "gain_db": round(mixed.gain_db, 2) if mixed else None,
                "original_lufs": _rounded(mixed.original_lufs if mixed else None),
                "new_lufs": _rounded(mixed.new_lufs if mixed else None),
                "heard": check.heard if check else None,
                "wer": _rounded(check.wer if check else None, 3),
                "cer": _rounded(check.cer if check else None, 3),
                "similarity": _rounded(check.similarity if check else None, 3),
                "dnsmos": _rounded(check.dnsmos if check else None, 2),
                "seed": new.seed,
                "attempts": new.attempts,
                "quality_ok": check.passed if check else None,
                "flagged": any(n not in NOTICES for n in notes),
                "notes": "; ".join(notes) or None,
                "line_uri": new.audio.uri if new.audio else None,
            }
        )
    return rows


def _rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def report_markdown(
    name: str, target: str, rows: Sequence[dict], rendered: Rendered, options: ReconstructOptions, target_note: str = ""
) -> str:
    """The run's report: what was replaced, the timing fit, the levels and every flagged line with its reasons."""
    replaced = sum(r["replaced"] for r in rows)
    flagged = [r for r in rows if r["flagged"]]
    lines = [
        f"# Voice replaced in {name}",
        "",
        f"Target **{target_note or target}**: {replaced} of {len(rows)} line(s) replaced; {len(flagged)} flagged. "
        f"True peak {rendered.true_peak_dbtp:.1f} dBTP (ceiling {options.true_peak_dbtp:.1f})"
        + (
            f"; the whole mix was lowered {-rendered.global_gain_db:.1f} dB because the input peaks above it."
            if rendered.global_gain_db
            else "."
        ),
        "",
        "| line | start | slot s | natural s | rate | gap used s | overflow s | WER | similarity | DNSMOS | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['line_id']} | {r['start_s']:.2f} | {r['slot_s']:.2f} | {r['natural_s']:.2f} | {r['applied_rate']:.2f} "
            f"| {r['gap_used_s']:.2f} | {r['overflow_s']:.2f} | {_cell(r['wer'])} | {_cell(r['similarity'])} "
            f"| {_cell(r['dnsmos'])} | {r['notes'] or ''} |"
        )
    if not rows:
        lines += ["", f"Nothing was transcribed for {target}: the output is the input."]
    if flagged:
        lines += ["", "## Flagged lines", ""]
        lines += [f'- **{r["line_id"]}** ({r["start_s"]:.2f} s) "{r["text"]}": {r["notes"]}' for r in flagged]
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def table_bytes(rows: Sequence[dict]) -> tuple[bytes, bytes]:
    """The line table as Parquet and as CSV (the CSV is what a user edits to change the words)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = (
        pa.Table.from_pylist(list(rows))
        if rows
        else pa.table({name: pa.array([], pa.null()) for name in TABLE_COLUMNS})
    )
    parquet, csv = io.BytesIO(), io.BytesIO()
    pq.write_table(table, parquet)
    pacsv.write_csv(table, csv)
    return parquet.getvalue(), csv.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# Stage task


@dataclass(frozen=True)
class ReconstructResult:
    """What the reconstruct stage returns: the final mix, the new voice's stem, the line table and the report."""

    artifact: ArtifactRef  # replaced.wav, the input's rate and channels
    voice: ArtifactRef  # new_voice.wav: the fitted lines alone
    table: ArtifactRef  # lines.parquet
    csv: ArtifactRef  # lines.csv (edit its text column, give it as the script)
    report: ArtifactRef  # report.md
    vocals: ArtifactRef | None  # the separated stems the mix was rebuilt from (None: nothing was separated)
    accompaniment: ArtifactRef | None
    target: str
    lines: int
    replaced: int
    flagged: int
    true_peak_dbtp: float
    global_gain_db: float
    target_note: str = ""  # how the target was chosen

    def summary(self) -> dict:
        return {
            "target": self.target,
            "lines": self.lines,
            "replaced": self.replaced,
            "flagged": self.flagged,
            "true_peak_dbtp": round(self.true_peak_dbtp, 2),
        }


def _line_audio(request: ReconstructRequest, settings: StoreSettings) -> Iterator[tuple[np.ndarray, int] | None]:
    for new in request.lines:
        yield read_audio(new.audio, settings) if new.audio is not None else None


def natural_samples(ref: ArtifactRef | None, rate_hz: int) -> int:
    """A line's length once resampled to ``rate_hz``."""
    if ref is None or not ref.frames or not ref.sample_rate_hz:
        return 0
    return round(ref.frames * rate_hz / ref.sample_rate_hz)


@stage_task(StageSpec(STAGE, code_version=CODE_VERSION, inputs=("request",)))
def reconstruct_audio(
    request: ReconstructRequest, options: ReconstructOptions, settings: StoreSettings
) -> ReconstructResult:
    """Fit the new lines to the original timing and mix them over the accompaniment (see the module)."""
    mix, rate = read_audio(request.mix, settings)
    vocals, _ = read_audio(request.vocals, settings)
    accompaniment = read_audio(request.accompaniment, settings)[0] if request.accompaniment else np.zeros_like(mix)
    script = [new.line for new in request.lines]
    slots = line_slots(script, request.turns, request.target, mix.shape[1] / rate, options)
    naturals = [
        natural_samples(new.audio, rate) if s.duration_s >= options.min_slot_s else 0
        for new, s in zip(request.lines, slots)
    ]
    plans = plan_timing(slots, naturals, rate, options.timing)
    rendered = render(mix, vocals, accompaniment, rate, plans, slots, _line_audio(request, settings), options)
    rows = line_rows(request, slots, plans, rendered.placed, rate, options)
    parquet, csv = table_bytes(rows)
    name = request.name or source_name(request.mix.uri)
    return ReconstructResult(
        write_audio(settings, MIX_NAME, rendered.mix, rate),
        write_audio(settings, VOICE_NAME, rendered.voice, rate),
        write_artifact(settings, TABLE_NAME, parquet),
        write_artifact(settings, CSV_NAME, csv),
        write_artifact(
            settings,
            REPORT_NAME,
            report_markdown(name, request.target, rows, rendered, options, request.target_note).encode(),
        ),
        request.vocals if request.accompaniment else None,
        request.accompaniment,
        request.target,
        len(rows),
        sum(r["replaced"] for r in rows),
        sum(r["flagged"] for r in rows),
        rendered.true_peak_dbtp,
        rendered.global_gain_db,
        request.target_note,
    )
