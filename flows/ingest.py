"""The ``ingest`` flow: decode and measure audio files and store each as 16 kHz mono WAV."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Annotated

from prefect import flow, unmapped
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from flows.environment import store_settings
from flows.reporting import Progress, publish_table
from storage.sources import expand_sources
from tasks.audio import SUPPORTED_FORMATS
from tasks.ingest import IngestOptions, IngestResult, ingest_file

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class FileOutcome:
    """One input file's outcome: ``ingested``, ``cached`` or ``failed`` (with the one-line reason)."""

    source_uri: str
    status: str
    result: IngestResult | None = None
    error: str | None = None

    def row(self) -> dict:
        r, stats = self.result, self.result.stats if self.result else None
        return {
            "file": self.source_uri.rsplit("/", 1)[-1],
            "status": self.status,
            "sha256": r.source_sha256[:12] if r else "",
            "duration_s": round(stats.duration_s, 3) if stats else None,
            "sample_rate_hz": stats.sample_rate_hz if stats else None,
            "channels": stats.channels if stats else None,
            "lufs": round(stats.integrated_lufs, 2) if stats and stats.integrated_lufs is not None else None,
            "artifact": r.artifact.uri if r else "",
            "error": self.error or "",
        }


@dataclass(frozen=True)
class IngestReport:
    """The outcome of every file of one ``ingest`` run."""

    outcomes: list[FileOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def summary(self) -> str:
        return (
            f"{len(self.outcomes)} file(s): {self.count('ingested')} ingested, "
            f"{self.count('cached')} cached, {self.count('failed')} failed"
        )


class FilesFailed(Exception):
    """Some files failed; carries the whole report so callers still see what succeeded."""

    def __init__(self, report: IngestReport) -> None:
        reasons = "; ".join(o.error or "" for o in report.failed)
        super().__init__(f"{report.summary()}: {reasons}")
        self.report = report


def collect(futures, sources: list[str], progress: Progress) -> IngestReport:
    """Wait for every file, in completion order, keeping failures apart from successes."""
    by_future = dict(zip(futures, sources))
    outcomes: dict[str, FileOutcome] = {}
    for done, future in enumerate(as_completed(list(futures)), start=1):
        source = by_future[future]
        try:
            result: IngestResult = future.result()
            outcomes[source] = FileOutcome(source, "cached" if result.cache_hit else "ingested", result)
        except Exception as e:  # one bad file never stops the others
            outcomes[source] = FileOutcome(source, "failed", error=str(e).splitlines()[0] if str(e) else repr(e))
        progress(done, len(sources))
    progress.close()
    return IngestReport([outcomes[s] for s in sources])


@flow(name="ingest", task_runner=ThreadPoolTaskRunner(max_workers=DEFAULT_WORKERS))
def ingest(
    paths: Annotated[list[str], Field(description="Audio files, folders or s3:// URIs (wav, flac, mp3, ogg, m4a...).")],
    options: IngestOptions = IngestOptions(),
    storage_block: Annotated[str | None, Field(description="Name of a voxflow-storage Block; empty: environment.")] = None,
) -> IngestReport:
    """Decode, measure and store each file as 16 kHz mono float WAV with files/artifacts/stage_runs rows."""
    settings = store_settings(storage_block)  # 1. choose the store
    sources = expand_sources(paths, settings, SUPPORTED_FORMATS)  # 2. list the input files
    futures = ingest_file.map(sources, unmapped(options), unmapped(settings))  # 3. ingest each in parallel
    report = collect(futures, sources, Progress("ingest", len(sources)))  # 4. wait, isolating failures
    publish_table("ingest-summary", [o.row() for o in report.outcomes], report.summary())  # 5. publish
    if report.failed:
        raise FilesFailed(report)
    return report
