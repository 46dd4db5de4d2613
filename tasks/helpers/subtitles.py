"""Transcripts in memory and as text: the JSON artifact, SubRip, WebVTT, TXT, TSV and speaker-labelled lines.

The JSON artifact and the printed lines need no model and no torch: the command line reads a stored
``transcript.json`` with :func:`from_json` and prints :func:`transcript_lines` without loading the
transcription stack. SubRip, WebVTT, TXT and TSV are written by whisper's own writers
(``whisper.utils``), so the files are the ones whisper users know, with the speaker in each cue.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
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
    language: str | None = None  # its own language when detected per chunk, else the transcript's
    model: str | None = None  # the model that decoded it (a second pass may use another)


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
                "language": s.language or transcript.language,
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
            language=s.get("language"),
        )
        for s in body["segments"]
    )
    return Transcript(body["language"], segments)


def _whisper_format(transcript: Transcript, writer: str, text: Callable[[Segment], str]) -> str:
    """``transcript`` written by whisper's own ``whisper.utils.<writer>``: one cue (or line) per segment."""
    from whisper import utils

    result = {
        "language": transcript.language,
        "segments": [{"start": s.start_s, "end": s.end_s, "text": text(s)} for s in transcript.segments],
    }
    buffer = io.StringIO()
    getattr(utils, writer)(output_dir=".").write_result(result, buffer)
    return buffer.getvalue()


def _labelled(segment: Segment) -> str:
    return f"[{segment.speaker}] {segment.text.strip()}" if segment.speaker else segment.text.strip()


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _voiced(segment: Segment) -> str:
    text = _vtt_escape(segment.text.strip())
    return f"<v {_vtt_escape(segment.speaker)}>{text}" if segment.speaker else text


def to_srt(transcript: Transcript) -> str:
    """SubRip (whisper's writer), one cue per segment, prefixed ``[speaker]`` when the segment has one."""
    return _whisper_format(transcript, "WriteSRT", _labelled)


def to_vtt(transcript: Transcript) -> str:
    """WebVTT (whisper's writer), one cue per segment, the speaker as a voice span (``<v SPEAKER_00>``)."""
    return _whisper_format(transcript, "WriteVTT", _voiced)


def to_txt(transcript: Transcript) -> str:
    """Plain text (whisper's writer), one line per segment, prefixed ``[speaker]`` when it has one."""
    return _whisper_format(transcript, "WriteTXT", _labelled)


def to_tsv(transcript: Transcript) -> str:
    """``start<TAB>end<TAB>text`` in integer milliseconds (whisper's writer), the speaker in the text."""
    return _whisper_format(transcript, "WriteTSV", _labelled)


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
