"""The ``ingest_folder`` flow (the scheduled job): run a flow on every new file of a folder or bucket.

New means not yet processed by that flow with those parameters: the ``processed`` catalog table
remembers each file's URI and version (mtime or ETag), so an unchanged file is skipped, a changed
one runs again, and a file that failed for a reason that may heal (a timeout, a 5xx) is tried again. A
file that failed for its content is not run again until it changes, but it stays failed in every run's
report and state message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect.runtime import flow_run

from voxflow.flows import registry
from voxflow.flows.environment import ModelsBlock, StorageBlock, environment
from voxflow.flows.pipelines import (
    DEFAULT_PARALLEL_FILES,
    FileOutcome,
    FilePipeline,
    ParallelFiles,
    RunReport,
    files_markdown,
    final_state,
    processed_rows,
    run_files,
    threaded_flow,
)
from voxflow.flows.reporting import Progress, publish_markdown, publish_table
from voxflow.storage.catalog import Catalog
from voxflow.storage.errors import StorageError
from voxflow.storage.sources import SourceEntry, list_sources
from voxflow.storage.store import shared_store
from voxflow.tasks.helpers.audio import SUPPORTED_FORMATS


def unprocessed(
    catalog: Catalog, pipeline: FilePipeline, options: Any, entries: Sequence[SourceEntry]
) -> tuple[list[SourceEntry], list[FileOutcome]]:
    """Split listed files into those to run and the outcomes of the others: already processed with these
    options and unchanged (``skipped``), or unchanged since they failed for their content (still ``failed``,
    with the reason recorded then, so a scheduled job never looks healthy while a bad file sits there)."""
    frame = catalog.frame("processed")
    settled: dict[tuple[str, str], str | None] = {}  # (uri, version) -> the recorded error (None: processed)
    if len(frame):
        frame = frame[(frame["pipeline"] == pipeline.name) & (frame["params_hash"] == pipeline.params_hash(options))]
        kept = frame[frame["status"].isin(["done", "cached"]) | ~frame["transient"].fillna(False).astype(bool)]
        for row in kept.itertuples():
            failed = row.status == "failed"
            settled[(row.source_uri, row.source_version)] = (row.error_message or "failed") if failed else None
    todo = [e for e in entries if (e.uri, e.version) not in settled]
    return todo, [_earlier(e, settled[(e.uri, e.version)]) for e in entries if (e.uri, e.version) in settled]


def _earlier(entry: SourceEntry, error: str | None) -> FileOutcome:
    """A file not run again: skipped, or still failed with the ``stage: reason`` recorded when it failed."""
    if error is None:
        return FileOutcome(entry.uri, "skipped", label=entry.name)
    stage, _, reason = error.partition(": ") if ": " in error else (None, "", error)
    return FileOutcome(
        entry.uri, "failed", error=f"unchanged since it failed: {reason}", failed_stage=stage, label=entry.name
    )


def record_processed(catalog: Catalog, rows: list[dict]) -> tuple[str, ...]:
    """Append the ``processed`` rows; when the store cannot take them, the problem in one line (the files'
    outputs and cache records are already stored: the next run finds them as cache hits)."""
    try:
        catalog.append("processed", rows)
    except StorageError as e:
        return (f"not recorded as processed ({e}); the next run checks these files again, finding what finished",)
    return ()


@threaded_flow(registry.INGEST_FOLDER.name)
def ingest_folder(
    source: str,
    pattern: str = "*",
    pipeline: registry.PerFileFlow = registry.INGEST.name,
    params: dict[str, Any] | None = None,
    parallel_files: ParallelFiles = DEFAULT_PARALLEL_FILES,
    storage_block: StorageBlock = None,
    models_block: ModelsBlock = None,
) -> RunReport:
    """Find the files of a folder not yet processed by a flow with these parameters, and process them.

    Args:
        source: Local folder or s3://bucket/prefix to scan for audio files.
        pattern: fnmatch pattern on the paths below the source; `*` also crosses folders (e.g. `*/*.wav`).
        pipeline: The flow to run on each new file.
        params: That flow's options, e.g. `{"sample_rate_hz": 16000}` for ingest or `{"run_denoise": true}` for transcribe; empty for its defaults.
        parallel_files: How many files are processed at once.
        storage_block: A saved voxflow-storage Block (picked, or its name); empty to use the environment.
        models_block: A saved voxflow-models Block (picked, or its name); empty to use VOXFLOW_MODEL_DIR and HF_TOKEN.
    """
    env = environment(storage_block, models_block)  # 1. choose the store and the models
    chosen = registry.flow_entry(pipeline).pipeline()
    options = chosen.options(params or {})  # 2. validate the chosen flow's parameters
    entries = list_sources([source], env.settings, SUPPORTED_FORMATS, pattern)  # 3. list the folder
    catalog = Catalog(shared_store(env.settings))
    todo, earlier = unprocessed(catalog, chosen, options, entries)  # 4. keep the new files
    progress = Progress(registry.INGEST_FOLDER.name, len(todo))
    env = env.naming(entries)
    outcomes = run_files(chosen, [e.uri for e in todo], options, env, parallel_files, progress)  # 5. run them
    problems = record_processed(catalog, processed_rows(chosen, options, todo, outcomes, flow_run.get_id()))  # 6.
    report = RunReport(outcomes + earlier, problems)
    publish_table("ingest-folder-summary", [o.row() for o in report.outcomes], report.summary())  # 7. publish
    publish_markdown("ingest-folder-files", files_markdown(report, catalog.store))
    return final_state(report)
