"""What a flow shows while and after it runs: a progress bar, Prefect progress and table artifacts."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext

from voxflow.tasks.kit.markdown import markdown_text
from voxflow.tasks.kit.stage import STAGE_LISTENERS

PREVIEW_LINES = 20  # lines of a result (e.g. a transcript) a Markdown artifact shows per file
TRANSCRIPT_LINE = re.compile(r"^\[(?P<speaker>\S+) (?P<time>[0-9:.]+)\] (?P<text>.*)$")  # [SPEAKER_00 0:01.2] text


def markdown_preview(lines: Sequence[str]) -> str:
    """The first :data:`PREVIEW_LINES` lines of a result as a Markdown list; a ``[SPEAKER 0:01.2] text`` line
    shows its speaker in bold and its time as code."""
    items = []
    for line in lines[:PREVIEW_LINES]:
        turn = TRANSCRIPT_LINE.match(line)
        items.append(
            f"- **{markdown_text(turn['speaker'])}** `{turn['time']}` {markdown_text(turn['text'])}"
            if turn
            else f"- {markdown_text(line)}"
        )
    if len(lines) > PREVIEW_LINES:
        items.append(f"- ... {len(lines) - PREVIEW_LINES} more line(s)")
    return "\n".join(items)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


class Progress:
    """``hook(completed, total)``: a tqdm bar on a terminal, showing the stage each running file is in
    (``jfk.flac: diarize, take.wav: transcribe``), plus a Prefect progress artifact."""

    def __init__(self, name: str, total: int) -> None:
        from tqdm import tqdm

        self.total = total
        self.bar = tqdm(total=total, desc=name, unit="file", disable=None, leave=True)
        context = FlowRunContext.get()
        self.flow_run_id = context.flow_run.id if context and context.flow_run else None
        self.artifact_id = create_progress_artifact(0.0, key=_key(f"{name}-progress")) if context and total else None
        self.running: dict[str, str] = {}  # file -> the stage computing it now
        self.lock = threading.Lock()
        STAGE_LISTENERS.append(self.on_stage)

    def __call__(self, completed: int, total: int) -> None:
        self.bar.update(completed - self.bar.n)
        if self.artifact_id is not None:
            update_progress_artifact(self.artifact_id, 100.0 * completed / total)

    def on_stage(self, file: str | None, stage: str, running: bool) -> None:
        """A stage of this flow run started or ended on a file (called from the stage's thread)."""
        context = FlowRunContext.get()
        if file is None or context is None or context.flow_run is None or context.flow_run.id != self.flow_run_id:
            return
        with self.lock:
            if running:
                self.running[file] = stage
            elif self.running.get(file) == stage:
                del self.running[file]
            self.bar.set_postfix_str(", ".join(f"{f}: {s}" for f, s in self.running.items()), refresh=True)

    def close(self) -> None:
        if self.on_stage in STAGE_LISTENERS:
            STAGE_LISTENERS.remove(self.on_stage)
        self.bar.close()


def publish_table(name: str, rows: Sequence[dict], description: str) -> None:
    """A Prefect table artifact (one row per item) when running inside a flow."""
    if FlowRunContext.get() is not None and rows:
        create_table_artifact(key=_key(name), table=list(rows), description=description)


def publish_markdown(name: str, markdown: str) -> None:
    """A Prefect Markdown artifact (a report) when running inside a flow."""
    if FlowRunContext.get() is not None:
        create_markdown_artifact(key=_key(name), markdown=markdown)


class StageBars:
    """A progress bar per stage of one file on a terminal (``<file> <stage>``), for flows that wait on each stage."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.bars: dict[str, object] = {}

    def start(self, stage: str, total: int) -> None:
        from tqdm import tqdm

        self.bars[stage] = tqdm(total=total, desc=f"{self.name} {stage}", unit="step", disable=None, leave=True)

    def grow(self, stage: str, more: int) -> None:
        bar = self.bars[stage]
        bar.total += more
        bar.refresh()

    def advance(self, stage: str, count: int = 1) -> None:
        if stage not in self.bars:
            self.start(stage, count)
        self.bars[stage].update(count)

    def done(self, stage: str) -> None:
        """A one-step stage has finished."""
        self.start(stage, 1)
        self.bars[stage].update(1)
        self.bars[stage].close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
