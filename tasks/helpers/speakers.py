"""Speaker turns, the currency between diarize and transcribe, and their RTTM text form.

RTTM is written and read by pyannote's own code (``pyannote.core.Annotation.to_rttm`` and
``pyannote.database.util.load_rttm``), so the files are exactly what pyannote users exchange.
"""

from __future__ import annotations

import io
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
    """RTTM lines (``SPEAKER <uri> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>``), in time order."""
    from pyannote.core import Annotation, Segment

    annotation = Annotation(uri=uri.replace(" ", "_") or "audio")
    for track, turn in enumerate(turns):
        annotation[Segment(turn.start_s, turn.end_s), track] = turn.speaker
    return annotation.to_rttm()


def parse_rttm(text: str) -> list[Turn]:
    """The turns of RTTM text (its SPEAKER lines), in time order; a malformed file raises ``ValueError``."""
    from pyannote.database.util import load_rttm

    if not text.strip():
        return []
    try:
        annotations = load_rttm(io.StringIO(text))
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"not an RTTM file: {str(e).splitlines()[0]}") from e
    turns = [
        Turn(segment.start, segment.end, str(speaker))
        for annotation in annotations.values()
        for segment, _, speaker in annotation.itertracks(yield_label=True)
    ]
    return sorted(turns, key=lambda t: (t.start_s, t.end_s, t.speaker))
