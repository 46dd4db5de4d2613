"""Speaker turns, the currency between diarize and transcribe, and their RTTM text form."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Turn:
    """One speaker speaking from ``start_s`` to ``end_s`` (seconds from the start of the audio)."""

    start_s: float
    end_s: float
    speaker: str

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def to_rttm(turns: Iterable[Turn], uri: str) -> str:
    """RTTM lines (``SPEAKER <uri> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>``), times in ms."""
    uri = uri.replace(" ", "_") or "audio"
    return "".join(
        f"SPEAKER {uri} 1 {t.start_s:.3f} {t.duration_s:.3f} <NA> <NA> {t.speaker} <NA> <NA>\n" for t in turns
    )


def parse_rttm(text: str) -> list[Turn]:
    """The turns of RTTM text (SPEAKER lines only), in file order."""
    turns = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] != "SPEAKER":
            continue
        if len(fields) < 8:
            raise ValueError(f"RTTM line {number} has {len(fields)} fields, expected 10: {line!r}")
        start, duration = float(fields[3]), float(fields[4])
        turns.append(Turn(start, start + duration, fields[7]))
    return turns
