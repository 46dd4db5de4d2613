"""What a flow shows while and after it runs: a progress bar, Prefect progress and table artifacts."""

from __future__ import annotations

import re
from collections.abc import Sequence

from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.context import FlowRunContext


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


class Progress:
    """``hook(completed, total)``: a tqdm bar on a terminal plus a Prefect progress artifact."""

    def __init__(self, name: str, total: int) -> None:
        from tqdm import tqdm

        self.total = total
        self.bar = tqdm(total=total, desc=name, unit="file", disable=None, leave=True)
        in_flow = FlowRunContext.get() is not None
        self.artifact_id = create_progress_artifact(0.0, key=_key(f"{name}-progress")) if in_flow and total else None

    def __call__(self, completed: int, total: int) -> None:
        self.bar.update(completed - self.bar.n)
        if self.artifact_id is not None:
            update_progress_artifact(self.artifact_id, 100.0 * completed / total)

    def close(self) -> None:
        self.bar.close()


def publish_table(name: str, rows: Sequence[dict], description: str) -> None:
    """A Prefect table artifact (one row per item) when running inside a flow."""
    if FlowRunContext.get() is not None and rows:
        create_table_artifact(key=_key(name), table=list(rows), description=description)
