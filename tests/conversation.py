"""Conversations whose truth is known: who speaks which words when, each voice's own track, the bed.

:func:`build_conversation` lays a script of ``(speaker, text)`` lines out in time, spoken by
espeak-ng voices (or any callables), panned apart, over a stereo music-like bed::

    1 s bed | line 0 | gap | line 1 | gap | line 2 ... | 1 s bed
                                 line k starts overlap_s before line k-1 ends (one overlap)

Each line starts and ends where its voice's speech does (the synthesizer's own leading and
trailing silence is cut), so :meth:`Conversation.turns` is exact ground truth for diarization and
``mix == bed + sum(voices)``: a separation or a voice replacement can be checked per speaker.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter, resample_poly

from voxflow.tasks.helpers.audio import resample
from voxflow.tasks.helpers.speakers import Turn

LEAD_S = 1.0  # bed only, before the first line
TRAIL_S = 1.0  # bed only, after the last line
SPEECH_RMS_DBFS = -20.0  # each line's level before panning
TRUE_PEAK_DBFS = -3.0  # the mix's true peak stays at or below this
TRUE_PEAK_TARGET_DBFS = -3.5  # a louder mix is scaled down to this true peak
TRUE_PEAK_OVERSAMPLING = 4  # BS.1770's true-peak estimate
GAP_SPREAD = 0.2  # gaps vary by up to ±20 % of gap_s
SPEECH_EDGE_BELOW_PEAK_DB = 50.0  # a line's speech starts and ends where it first and last reaches this
PAN_EXTENT = 0.6  # speakers stand from this far left to this far right (1: hard left / right)
BED_NOTES_HZ = ((110.0, 220.0, 329.6, 440.0), (146.8, 293.7, 370.0, 554.4))  # one chord per channel
BED_TREMOLO_HZ = (0.25, 0.4)  # slow swell per channel
BED_NOISE_SHARE = 0.3  # noise RMS relative to the tones'
BED_NOISE_POLE = 0.95  # one-pole low-pass on the noise: a soft, brown-ish hiss

# a male, a female and a Klatt-synthesized male: the GE2E voiceprints of two sentences of one voice have
# cosine 0.89-0.92, across these voices 0.55-0.81 (en+m3 and en+croak reach 0.88-0.91 with en-us, en-gb+m7 0.93)
ESPEAK_VOICES = ("en-us", "en+f3", "en+klatt2")

SCRIPT = [
    ("SPEAKER_00", "Good morning, thank you for coming in so early today."),
    ("SPEAKER_01", "Of course. I wanted to go over the budget before the meeting."),
    ("SPEAKER_00", "The numbers for the third quarter look better than we expected."),
    ("SPEAKER_01", "That is good news, but the travel costs are still far too high."),
    ("SPEAKER_00", "I agree, we should cut the trips that are not essential."),
    ("SPEAKER_01", "Let us write that down and send it to the whole team this afternoon."),
]
SCRIPT_OVERLAP_LINE = 3  # SPEAKER_01 starts line 3 before SPEAKER_00 finishes line 2

SCRIPT_3SPK = [
    ("SPEAKER_00", "Welcome back everyone, let us pick up where we stopped yesterday."),
    ("SPEAKER_01", "I finished the report on the new warehouse last night."),
    ("SPEAKER_02", "Great, did you include the delivery times from the north office?"),
    ("SPEAKER_01", "Yes, they are on the second page, together with the costs."),
    ("SPEAKER_00", "Then we can decide on the location before the end of the week."),
    ("SPEAKER_02", "I will book a room for Thursday morning so we can all meet."),
]
SCRIPT_3SPK_OVERLAP_LINE = 2


@dataclass(frozen=True)
class Line:
    """One line of the script as it sounds in the mix: who, when (seconds), what."""

    line_id: str
    speaker: str
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Conversation:
    """A mix and its parts: ``mix == bed + sum(voices.values())``, all ``(channels, n)`` float32."""

    mix: np.ndarray
    sample_rate_hz: int
    bed: np.ndarray  # music-like tones and noise, a different content per channel
    voices: dict[str, np.ndarray]  # each speaker's own contribution, panned
    lines: tuple[Line, ...]  # ground truth, in time order

    def turns(self) -> list[Turn]:
        """One speaker turn per line, in time order."""
        return [Turn(line.start_s, line.end_s, line.speaker) for line in self.lines]

    def write(self, path: str | Path) -> Path:
        """The mix as a 32-bit float WAV file."""
        sf.write(path, self.mix.T, self.sample_rate_hz, subtype="FLOAT")
        return Path(path)


def espeak(text: str, voice: str, rate_hz: int) -> np.ndarray:
    """``text`` spoken by espeak-ng's ``voice`` (e.g. ``en-us``, ``en+f3``): mono float32 at ``rate_hz``."""
    result = subprocess.run(["espeak-ng", "-v", voice, "--stdout"], input=text.encode(), capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"espeak-ng -v {voice} failed: {result.stderr.decode().strip()}")
    samples, native_hz = sf.read(io.BytesIO(result.stdout), dtype="float32")
    return resample(samples[np.newaxis], native_hz, rate_hz)[0]


def build_conversation(
    script: list[tuple[str, str]],
    voices: dict[str, Callable[[str], np.ndarray]] | None = None,
    sample_rate_hz: int = 44_100,
    channels: int = 2,
    gap_s: float = 0.6,
    overlap_line: int | None = None,
    overlap_s: float = 0.5,
    bed_level_db: float = -26.0,
    seed: int = 0,
) -> Conversation:
    """The conversation ``script`` (``[(speaker, text), ...]``) over a bed, with known truth.

    ``voices`` maps each speaker to a callable giving mono float32 speech at ``sample_rate_hz``
    (default: espeak-ng voices, in order of first appearance). Line ``overlap_line`` starts
    ``overlap_s`` before the previous line ends. Lines are at -20 dBFS RMS before panning, the bed at
    ``bed_level_db`` RMS per channel; the whole mix is scaled down if its true peak exceeds -3 dBFS.
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    speakers = list(dict.fromkeys(speaker for speaker, _ in script))
    voices = voices or _espeak_voices(speakers, sample_rate_hz)
    rng = np.random.default_rng(seed)
    speech = [_level(_trim(voices[speaker](text))) for speaker, text in script]
    starts = _starts(script, [s.size for s in speech], sample_rate_hz, gap_s, overlap_line, overlap_s, rng)
    n = max(start + s.size for start, s in zip(starts, speech)) + round(TRAIL_S * sample_rate_hz)
    tracks = {speaker: np.zeros(n, np.float32) for speaker in speakers}
    for (speaker, _), start, s in zip(script, starts, speech):
        tracks[speaker][start : start + s.size] += s
    pans = _pans(len(speakers))
    panned = {speaker: _pan(tracks[speaker], pans[i], channels) for i, speaker in enumerate(speakers)}
    bed = _bed(n, sample_rate_hz, channels, bed_level_db, rng)
    gain = _peak_gain(bed + sum(panned.values()))
    bed, panned = bed * gain, {speaker: track * gain for speaker, track in panned.items()}
    lines = tuple(
        Line(f"line_{i:03d}", speaker, start / sample_rate_hz, (start + s.size) / sample_rate_hz, text)
        for i, ((speaker, text), start, s) in enumerate(zip(script, starts, speech))
    )
    mix = (bed + sum(panned.values())).astype(np.float32)
    return Conversation(mix, sample_rate_hz, bed, panned, tuple(sorted(lines, key=lambda line: line.start_s)))


def _espeak_voices(speakers: list[str], rate_hz: int) -> dict[str, Callable[[str], np.ndarray]]:
    if len(speakers) > len(ESPEAK_VOICES):
        raise ValueError(f"{len(speakers)} speakers but only {len(ESPEAK_VOICES)} espeak-ng voices; pass voices=")
    return {speaker: partial(espeak, voice=voice, rate_hz=rate_hz) for speaker, voice in zip(speakers, ESPEAK_VOICES)}


def _trim(speech: np.ndarray) -> np.ndarray:
    """``speech`` from the first to the last sample within 50 dB of its peak."""
    speech = np.asarray(speech, dtype=np.float32)
    loud = np.flatnonzero(np.abs(speech) >= np.abs(speech).max() * 10 ** (-SPEECH_EDGE_BELOW_PEAK_DB / 20))
    if loud.size == 0:
        raise ValueError("a voice returned silence")
    return speech[loud[0] : loud[-1] + 1]


def _level(speech: np.ndarray) -> np.ndarray:
    rms = np.sqrt(np.mean(speech.astype(np.float64) ** 2))
    return (speech * (10 ** (SPEECH_RMS_DBFS / 20) / rms)).astype(np.float32)


def _starts(script, lengths, rate_hz, gap_s, overlap_line, overlap_s, rng) -> list[int]:
    """Each line's first sample: after the latest end so far plus a gap, or overlapping the line before."""
    if overlap_line is not None and not (
        0 < overlap_line < len(script) and script[overlap_line][0] != script[overlap_line - 1][0]
    ):
        raise ValueError(f"overlap_line {overlap_line} must follow a line of another speaker")
    starts, latest_end = [], round(LEAD_S * rate_hz)
    for i, length in enumerate(lengths):
        if i == overlap_line:
            start = starts[-1] + lengths[i - 1] - round(overlap_s * rate_hz)
            if start <= starts[-1]:
                raise ValueError(f"overlap_s {overlap_s} is longer than line {i - 1}")
        elif i == 0:
            start = latest_end
        else:
            start = latest_end + round(gap_s * rate_hz * rng.uniform(1 - GAP_SPREAD, 1 + GAP_SPREAD))
        starts.append(start)
        latest_end = max(latest_end, start + length)
    return starts


def _pans(count: int) -> list[float]:
    """Stereo positions (-1 left, +1 right), evenly spread between -0.6 and +0.6; a single speaker in the centre."""
    return [0.0] if count == 1 else [float(p) for p in np.linspace(-PAN_EXTENT, PAN_EXTENT, count)]


def _pan(track: np.ndarray, position: float, channels: int) -> np.ndarray:
    """A constant-power pan of mono ``track`` to ``position`` (-1 left, +1 right); mono stays as is."""
    if channels == 1:
        return track[np.newaxis]
    angle = (position + 1) * np.pi / 4
    return np.stack([track * np.cos(angle), track * np.sin(angle)]).astype(np.float32)


def _bed(n: int, rate_hz: int, channels: int, level_db: float, rng: np.random.Generator) -> np.ndarray:
    """Per channel: a slowly swelling chord plus low-passed noise, at ``level_db`` RMS."""
    t = np.arange(n) / rate_hz
    rows = []
    for c in range(channels):
        chord = sum(
            np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) / (k + 1) for k, f in enumerate(BED_NOTES_HZ[c])
        )
        chord = chord * (0.6 + 0.4 * np.sin(2 * np.pi * BED_TREMOLO_HZ[c] * t))
        noise = lfilter([1 - BED_NOISE_POLE], [1, -BED_NOISE_POLE], rng.standard_normal(n))
        row = chord / _rms(chord) + BED_NOISE_SHARE * noise / _rms(noise)
        rows.append(row * 10 ** (level_db / 20) / _rms(row))
    return np.stack(rows).astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def true_peak_dbfs(samples: np.ndarray) -> float:
    """The true peak of ``(channels, n)`` in dBFS, estimated at 4x oversampling."""
    oversampled = resample_poly(samples.astype(np.float64), TRUE_PEAK_OVERSAMPLING, 1, axis=-1)
    return float(20 * np.log10(max(np.abs(oversampled).max(), np.abs(samples).max(), 1e-12)))


def _peak_gain(mix: np.ndarray) -> float:
    """1, or the gain that brings a mix whose true peak exceeds -3 dBFS down to -3.5 dBFS."""
    peak_db = true_peak_dbfs(mix)
    return 1.0 if peak_db <= TRUE_PEAK_DBFS else 10 ** ((TRUE_PEAK_TARGET_DBFS - peak_db) / 20)
