"""Transcripts in memory and as text: the JSON artifact, SubRip, WebVTT and speaker-labelled lines.

No model and no torch here: the command line reads a stored ``transcript.json`` with
:func:`from_json` and prints :func:`transcript_lines` without loading the transcription stack.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace

JSON_VERSION = 1
NO_SPEAKER = "SPEAKER"  # label of a line when no diarization was given


@dataclass(frozen=True)
class Word:
    """One word with its times (seconds from the start of the audio) and the speaker saying it."""

    word: str  # as whisper writes it: a leading space starts a new word
    start_s: float
    end_s: float
    probability: float  # mean probability of its tokens
    speaker: str | None = None
    overlapped: bool = False  # turns of two or more speakers cover it


@dataclass(frozen=True)
class Segment:
    """One transcribed segment: times, text, whisper's confidences for its window, and its words."""

    start_s: float
    end_s: float
    text: str
    avg_logprob: float  # mean log-probability of the window's sampled tokens
    no_speech_prob: float  # probability of <|nospeech|> at the window's start
    words: tuple[Word, ...] = ()
    speaker: str | None = None
    tokens: tuple[int, ...] = ()  # whisper's tokens, timestamps included (not stored in the JSON)


@dataclass(frozen=True)
class Transcript:
    """The segments of one recording, in time order, and its language (a whisper language code)."""

    language: str | None  # None when no speech was found to detect it
    segments: tuple[Segment, ...]

    @property
    def words(self) -> tuple[Word, ...]:
        return tuple(w for s in self.segments for w in s.words)

    @property
    def speakers(self) -> tuple[str, ...]:
        """The speakers of its segments and words, sorted."""
        found = {s.speaker for s in self.segments} | {w.speaker for w in self.words}
        return tuple(sorted(s for s in found if s is not None))

    def with_segments(self, segments: Iterable[Segment]) -> Transcript:
        return replace(self, segments=tuple(segments))


def _word_dict(word: Word) -> dict:
    return {
        "word": word.word,
        "start": round(word.start_s, 3),
        "end": round(word.end_s, 3),
        "probability": round(word.probability, 4),
        "speaker": word.speaker,
        "overlapped": word.overlapped,
    }


def to_json(transcript: Transcript) -> bytes:
    """The ``transcript.json`` artifact: language and segments (speaker, times, text, confidences, words)."""
    body = {
        "version": JSON_VERSION,
        "language": transcript.language,
        "segments": [
            {
                "speaker": s.speaker,
                "start": round(s.start_s, 3),
                "end": round(s.end_s, 3),
                "text": s.text.strip(),
                "avg_logprob": round(s.avg_logprob, 4),
                "no_speech_prob": round(s.no_speech_prob, 4),
                "words": [_word_dict(w) for w in s.words],
            }
            for s in transcript.segments
        ],
    }
    return json.dumps(body, ensure_ascii=False, indent=1).encode()


def from_json(data: bytes) -> Transcript:
    """The transcript of a ``transcript.json`` artifact (tokens are not stored)."""
    body = json.loads(data)
    if body.get("version") != JSON_VERSION:
        raise ValueError(f"transcript JSON version {body.get('version')!r} is not {JSON_VERSION}")
    segments = tuple(
        Segment(
            s["start"],
            s["end"],
            s["text"],
            s["avg_logprob"],
            s["no_speech_prob"],
            tuple(
                Word(w["word"], w["start"], w["end"], w["probability"], w["speaker"], w["overlapped"])
                for w in s["words"]
            ),
            s["speaker"],
        )
        for s in body["segments"]
    )
    return Transcript(body["language"], segments)


def _clock(seconds: float, decimal: str) -> str:
    """``HH:MM:SS<decimal>mmm``, as SubRip (``,``) and WebVTT (``.``) write times."""
    ms = max(round(seconds * 1000), 0)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    return f"{hours:02d}:{minutes:02d}:{ms // 1000:02d}{decimal}{ms % 1000:03d}"


def to_srt(transcript: Transcript) -> str:
    """SubRip cues, one per segment, prefixed ``[speaker]`` when the segment has one."""
    cues = []
    for number, s in enumerate(transcript.segments, 1):
        text = f"[{s.speaker}] {s.text.strip()}" if s.speaker else s.text.strip()
        cues.append(f"{number}\n{_clock(s.start_s, ',')} --> {_clock(s.end_s, ',')}\n{text}\n")
    return "\n".join(cues)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(transcript: Transcript) -> str:
    """WebVTT cues, one per segment, the speaker as a voice span (``<v SPEAKER_00>``)."""
    cues = ["WEBVTT\n"]
    for s in transcript.segments:
        text = _vtt_escape(s.text.strip())
        text = f"<v {_vtt_escape(s.speaker)}>{text}" if s.speaker else text
        cues.append(f"{_clock(s.start_s, '.')} --> {_clock(s.end_s, '.')}\n{text}\n")
    return "\n".join(cues)


def _short_clock(seconds: float) -> str:
    """``M:SS.s`` (``H:MM:SS.s`` from an hour on)."""
    tenths = max(round(seconds * 10), 0)
    minutes, tenths = divmod(tenths, 600)
    hours, minutes = divmod(minutes, 60)
    clock = f"{minutes}:{tenths // 10:02d}.{tenths % 10}"
    return f"{hours}:{minutes:02d}:{tenths // 10:02d}.{tenths % 10}" if hours else clock


def transcript_lines(transcript: Transcript) -> list[str]:
    """``[SPEAKER_00 0:01.2] text`` per segment: what the command line prints."""
    return [f"[{s.speaker or NO_SPEAKER} {_short_clock(s.start_s)}] {s.text.strip()}" for s in transcript.segments]
