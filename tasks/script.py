"""Script: the lines of a recording (who says what, when) with their ids, and a user's edits of them.

voice_replace speaks each of the target's lines again; by default with its original words. The
script stage makes the line list from

* the transcribe stage's transcript (one line per segment, in time order: ``line-000``, ``line-001``,
  ...) and the diarization's turns (which also hold speech nobody transcribed, and the overlaps); or
* a **lines file** given instead of diarizing and transcribing: CSV, JSON (a list of objects) or
  Parquet with columns ``line_id``, ``speaker``, ``start_s``, ``end_s``, ``text`` (the line table
  a run writes has them all); its lines are also its turns;

then applies an **edited script**: a CSV, JSON or Parquet file with ``line_id`` and ``text`` (for
example the line table of a first run, with some texts changed). Lines whose text changed are marked
``edited``; an id the script does not have is an error naming it.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import PurePosixPath
from typing import Any

from voxflow.storage.settings import StoreSettings
from voxflow.storage.sources import fetch_source
from voxflow.tasks.helpers.speakers import Turn
from voxflow.tasks.kit.options import Options
from voxflow.tasks.kit.stage import StageSpec, stage_task
from voxflow.tasks.transcribe import read_turns

STAGE = "script"
CODE_VERSION = "1"
LINE_COLUMNS = ("line_id", "speaker", "start_s", "end_s", "text")
TABLE_FORMATS = (".csv", ".json", ".parquet")


class ScriptError(ValueError):
    """A lines file or edited script that cannot be used (a bad input: never retried)."""


@dataclass(frozen=True)
class ScriptLine:
    """One line: its id, speaker, time span (seconds) and words."""

    line_id: str
    speaker: str
    start_s: float
    end_s: float
    text: str
    original_text: str | None = None  # the words before an edit (None: not edited)

    @property
    def edited(self) -> bool:
        return self.original_text is not None


@dataclass(frozen=True)
class Script:
    """Every line of a recording and every speaker turn (the turns also cover speech without a line)."""

    lines: tuple[ScriptLine, ...]
    turns: tuple[Turn, ...]

    @property
    def sha256(self) -> str:
        canonical = {"lines": [asdict(line) for line in self.lines], "turns": [asdict(t) for t in self.turns]}
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()

    def of(self, speaker: str) -> tuple[ScriptLine, ...]:
        """The lines of one speaker, in time order."""
        return tuple(line for line in self.lines if line.speaker == speaker)


@dataclass(frozen=True)
class ScriptOptions(Options):
    """The script stage has no choices; its inputs decide everything."""


def line_id(index: int) -> str:
    return f"line-{index:03d}"


def script_of(segments: Sequence[Any], turns: Sequence[Turn]) -> Script:
    """Lines from transcript segments (id by position; an unlabelled segment's speaker is ``UNKNOWN``)."""
    lines = tuple(
        ScriptLine(line_id(i), s.speaker or "UNKNOWN", float(s.start_s), float(s.end_s), s.text.strip())
        for i, s in enumerate(seg for seg in segments if seg.text.strip())
    )
    return Script(lines, tuple(turns) or tuple(Turn(x.start_s, x.end_s, x.speaker) for x in lines))


def read_table(data: bytes, name: str) -> list[dict]:
    """The rows of a CSV, JSON (a list of objects) or Parquet file."""
    suffix = PurePosixPath(name).suffix.lower()
    try:
        if suffix == ".csv":
            import pandas as pd

            return pd.read_csv(io.BytesIO(data), dtype={"line_id": str, "text": str}, keep_default_na=False).to_dict(
                "records"
            )
        if suffix == ".json":
            rows = json.loads(data)
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ValueError("expected a list of objects")
            return rows
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(io.BytesIO(data)).to_pylist()
    except Exception as e:
        raise ScriptError(f"{name}: cannot read it: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    raise ScriptError(f"{name}: unsupported format {suffix or '(none)'}; use {', '.join(TABLE_FORMATS)}")


def _need(rows: list[dict], columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if not rows or c not in rows[0]]
    if not rows:
        raise ScriptError(f"{name}: it has no lines")
    if missing:
        raise ScriptError(f"{name}: missing column(s) {', '.join(missing)}; a script needs {', '.join(columns)}")


def parse_lines(rows: list[dict], name: str) -> Script:
    """A script from a lines file's rows (columns :data:`LINE_COLUMNS`)."""
    _need(rows, LINE_COLUMNS, name)
    try:
        lines = tuple(
            sorted(
                (
                    ScriptLine(
                        str(r["line_id"]), str(r["speaker"]), float(r["start_s"]), float(r["end_s"]), str(r["text"])
                    )
                    for r in rows
                ),
                key=lambda line: (line.start_s, line.line_id),
            )
        )
    except (TypeError, ValueError) as e:
        raise ScriptError(f"{name}: a start_s or end_s is not a number ({e})") from None
    bad = [line.line_id for line in lines if not line.end_s > line.start_s >= 0]
    if bad:
        raise ScriptError(f"{name}: line(s) {', '.join(bad)} do not end after they start")
    return Script(lines, tuple(Turn(line.start_s, line.end_s, line.speaker) for line in lines))


def apply_edits(script: Script, rows: list[dict], name: str) -> Script:
    """The script with the texts of an edited script (rows with ``line_id`` and ``text``)."""
    _need(rows, ("line_id", "text"), name)
    edits = {str(r["line_id"]): str(r["text"]).strip() for r in rows}
    known = {line.line_id for line in script.lines}
    unknown = sorted(set(edits) - known)
    if unknown:
        raise ScriptError(f"{name}: no line(s) {', '.join(unknown[:5])} in this recording's script")
    lines = tuple(
        replace(line, text=edits[line.line_id], original_text=line.text)
        if line.line_id in edits and edits[line.line_id] != line.text
        else line
        for line in script.lines
    )
    return replace(script, lines=lines)


def read_source_table(uri: str, settings: StoreSettings) -> list[dict]:
    with fetch_source(uri, settings) as fetched:
        return read_table(fetched.path.read_bytes(), PurePosixPath(uri).name)


@stage_task(StageSpec(STAGE, code_version=CODE_VERSION, inputs=("words", "diarization", "edits")))
def make_script(
    words: Any, diarization: Any | None, edits: str | None, options: ScriptOptions, settings: StoreSettings
) -> Script:
    """The script of a recording: from a transcribe result (and its diarization) or a lines file URI, edits applied."""
    if isinstance(words, str):
        script = parse_lines(read_source_table(words, settings), PurePosixPath(words).name)
    else:
        script = script_of(words.transcript(settings).segments, read_turns(diarization, settings))
    return apply_edits(script, read_source_table(edits, settings), PurePosixPath(edits).name) if edits else script
