"""Per-file pipelines: the chain of stage tasks a flow runs on one file, and running it over many files.

A per-file flow's module defines its chain as ``PIPELINE`` (a :class:`FilePipeline`), so
``ingest_folder`` can run any such flow on each new file of a folder without a subflow per file
(subflows cost ~1 s each): the files' stage tasks are submitted straight to the flow's task runner,
at most ``parallel_files`` files at a time.
"""

from __future__ import annotations

import contextvars
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Annotated, Any

from prefect import Flow, flow
from prefect.futures import PrefectFuture, as_completed
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field, TypeAdapter, ValidationError

from voxflow.flows.environment import Environment, ModelsBlock, StorageBlock, environment
from voxflow.flows.reporting import Progress, markdown_preview, publish_markdown, publish_table
from voxflow.storage.keys import source_name
from voxflow.storage.settings import StoreSettings
from voxflow.storage.sources import SourceChanging, SourceEntry, list_sources
from voxflow.storage.store import ArtifactStore, shared_store
from voxflow.tasks.helpers.audio import SUPPORTED_FORMATS
from voxflow.tasks.kit.caching import params_hash
from voxflow.tasks.kit.markdown import markdown_text
from voxflow.tasks.kit.runs import caused_by, failed_stage, failure_reason, is_transient
from voxflow.tasks.kit.stage import artifact_refs, file_label

MAX_THREADS = 32  # the flows' task-runner bound; parallelism is set per run by ``parallel_files``
DEFAULT_PARALLEL_FILES = min(4, os.cpu_count() or 1)
UNKNOWN = {"unexpected_keyword_argument": "not an option of this flow (a typo?)"}  # pydantic's words, a user's
STATUS_WORDS = {"skipped": "already processed", "waiting": "still being written"}  # what users read, everywhere
ROW_ERROR_CHARS = 60  # a summary row's error, cut to fit the table (the whole one: the run's state, its Markdown)
MARKDOWN_FILES = 200  # files listed in a run's Markdown artifact (failed ones first)
ParallelFiles = Annotated[int, Field(ge=1, le=MAX_THREADS)]  # the flows' ``parallel_files`` parameter
Submit = Callable[[str, Any, Environment], dict[str, PrefectFuture]]
Describe = Callable[[Any, StoreSettings], tuple[str, ...]]


def threaded_flow(name: str) -> Callable[[Callable], Flow]:
    """The ``@flow`` of every voxflow flow: its registry name, and its tasks on a bounded thread pool
    (a flow over many files runs ``parallel_files`` of them at a time on it)."""
    return flow(name=name, task_runner=ThreadPoolTaskRunner(max_workers=MAX_THREADS))


@dataclass(frozen=True)
class FilePipeline:
    """How one flow processes one file."""

    name: str  # the flow's name (its registry entry's)
    stages: tuple[str, ...]  # every stage it can run, in order (options may leave some out)
    options_type: type  # the flow's options (a frozen dataclass or pydantic model)
    submit: Submit  # submits the file's stage tasks in order; their futures by stage (the last one is the result)
    version: str  # changes when any of its stages' code versions change
    describe: Describe | None = None  # lines the command line prints of a file's result (read where the flow runs)
    waits: bool = False  # its submit waits on its own stages (a later one needs an earlier one's answer)

    @classmethod
    def of_stages(
        cls,
        name: str,
        options_type: type,
        submit: Submit,
        *stages: ModuleType,
        describe: Describe | None = None,
        waits: bool = False,
    ) -> FilePipeline:
        """A pipeline over stage modules (each with ``STAGE`` and ``CODE_VERSION``), its version from theirs."""
        version = ",".join(f"{m.STAGE}:{m.CODE_VERSION}" for m in stages)
        return cls(name, tuple(m.STAGE for m in stages), options_type, submit, version, describe, waits)

    def options(self, params: dict[str, Any] | Any) -> Any:
        """The options from flow parameters, with a one-line error naming the pipeline."""
        if isinstance(params, self.options_type):
            return params
        try:
            return TypeAdapter(self.options_type).validate_python(params or {})
        except (ValidationError, ValueError, TypeError) as e:
            reason = (
                "; ".join(
                    f"{'.'.join(map(str, err['loc']))}: {UNKNOWN.get(err['type'], err['msg'])}" for err in e.errors()
                )
                if isinstance(e, ValidationError)
                else str(e)
            )
            raise ValueError(f"invalid parameters for the {self.name!r} flow: {reason}") from None

    def params_hash(self, options: Any) -> str:
        return params_hash({"pipeline": self.name, "options": options}, code_version=self.version)


def named_outputs(result: Any) -> list[tuple[str, str]]:
    """(artifact file name, URI) of every artifact in a stage's result."""
    return [(ref.uri.rsplit("/", 1)[-1], ref.uri) for ref in artifact_refs(result)]


@dataclass(frozen=True)
class FileOutcome:
    """One file's outcome: ``done`` (some stage computed), ``cached`` (every stage a cache hit),
    ``failed`` (with the failing stage and its one-line reason), ``skipped`` (already processed) or
    ``waiting`` (still being written: nothing stored, tried again on the next run)."""

    source_uri: str
    status: str
    result: Any = None
    error: str | None = None  # why it failed, in one line (see voxflow.tasks.kit.runs.failure_reason)
    transient: bool = False
    stages: tuple[str, ...] = ()  # the stages that computed (not cache hits)
    failed_stage: str | None = None  # the stage that failed (None: before any stage ran)
    lines: tuple[str, ...] = ()  # what the command line prints of the result (e.g. the transcript)
    label: str | None = None  # the name as listed (relative to the folder it was found in)
    stage_outputs: tuple[tuple[str, str], ...] = ()  # (name, URI) of every stage's artifacts, in stage order

    @property
    def name(self) -> str:
        return self.label or source_name(self.source_uri)

    @property
    def message(self) -> str:
        """``<file>: <stage>: <reason>``: the one line that tells a user which file failed where and why."""
        return ": ".join(part for part in (self.name, self.failed_stage, self.error or self.status) if part)

    @property
    def outputs(self) -> dict[str, str]:
        """Artifact URIs of the final result, by artifact file name."""
        return dict(named_outputs(self.result))

    @property
    def every_output(self) -> dict[str, str]:
        """Artifact URIs of every stage's result (e.g. the diarization's RTTM too), by artifact file name."""
        return {**dict(self.stage_outputs), **self.outputs}

    def row(self) -> dict:
        """One row of the summary table: the file, its status, what the result says of it and the error, last and
        cut short, so that the table fits the UI's panel (the outputs: :func:`files_markdown`)."""
        summary = getattr(self.result, "summary", None)
        error = ": ".join(p for p in (self.failed_stage, self.error) if p)
        return {
            "file": self.name,
            "status": STATUS_WORDS.get(self.status, self.status),
            "computed": ", ".join(self.stages),
            **(summary() if callable(summary) else {}),
            "error": error if len(error) <= ROW_ERROR_CHARS else error[: ROW_ERROR_CHARS - 1] + "…",
        }

    def markdown(self, store: ArtifactStore) -> str:
        """The file's section of :func:`files_markdown`: status, error, its outputs where a person opens them
        (presigned links on S3, paths on a local store) and a preview of what the result says."""
        parts = [f"### {markdown_text(self.name)} · {self.status}"]
        if self.status == "failed":
            parts.append(f"> {markdown_text(self.message)}")
        links = [(name, store.link(key) if (key := store.key_of(uri)) else uri) for name, uri in self.outputs.items()]
        if any(url.startswith("http") for _, url in links):  # presigned: each name opens its object
            parts.append(" · ".join(f"[{markdown_text(name)}]({url})" for name, url in links))
        elif links:  # paths: one line per folder, its file names after it
            folders: dict[str, list[str]] = {}
            for name, path in links:
                folders.setdefault(path.rsplit("/", 1)[0] + "/", []).append(name)
            parts.append(
                "\n".join(f"- `{folder}` {', '.join(map(markdown_text, names))}" for folder, names in folders.items())
            )
        if self.lines:
            parts += ["**Preview**", markdown_preview(self.lines)]
        return "\n\n".join(parts)


@dataclass(frozen=True)
class RunReport:
    """The outcome of every file of one run."""

    outcomes: list[FileOutcome] = field(default_factory=list)
    problems: tuple[str, ...] = ()  # what went wrong for the run as a whole (e.g. its results not recorded)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def summary(self) -> str:
        statuses = ("done", "cached", *(s for s in ("skipped", "waiting") if self.count(s)), "failed")
        counts = ", ".join(f"{self.count(s)} {STATUS_WORDS.get(s, s)}" for s in statuses)
        return f"{len(self.outcomes)} file(s): {counts}"

    def state_message(self) -> str:
        """The summary, then each failed file with its stage and reason, then the run's problems (a flow run's
        state message)."""
        failed = "; ".join(o.message for o in self.failed)
        parts = [self.summary(), *([f"failed: {failed}"] if failed else []), *self.problems]
        return "; ".join(parts)


def files_markdown(report: RunReport, store: ArtifactStore) -> str:
    """A Markdown artifact of the run: its summary, then each file (failed first) with its outputs and preview."""
    ordered = sorted(report.outcomes, key=lambda o: o.status != "failed")
    sections = [o.markdown(store) for o in ordered[:MARKDOWN_FILES]]
    more = len(ordered) - MARKDOWN_FILES
    tail = (
        [f"... and {more} more file(s): the `processed` and `artifacts` catalog tables list them"] if more > 0 else []
    )
    return "\n\n".join([f"**{markdown_text(report.state_message())}**", *sections, *tail])


class FilesFailed(Exception):
    """Some files failed; carries the whole report so callers still see what succeeded."""

    def __init__(self, report: RunReport) -> None:
        super().__init__(report.state_message())
        self.report = report


def failed_outcome(source_uri: str, error: BaseException, stage: str | None = None) -> FileOutcome:
    """A failed file: the stage it failed in and the reason, in words a user can act on (``waiting`` when
    the file was still being written)."""
    return FileOutcome(
        source_uri,
        "waiting" if caused_by(error, SourceChanging) else "failed",
        error=failure_reason(error),
        transient=is_transient(error),
        failed_stage=failed_stage(error) or stage,
    )


def file_outcome(
    source_uri: str, futures: dict[str, PrefectFuture], pipeline: FilePipeline, settings: StoreSettings
) -> FileOutcome:
    """The outcome of one file from its finished stage futures (by stage, in the order they ran)."""
    for stage, future in futures.items():
        if not future.state.is_completed():
            error = future.result(raise_on_failure=False)
            if not isinstance(error, BaseException):
                error = RuntimeError(future.state.message or future.state.name)
            return failed_outcome(source_uri, error, stage)
    computed = tuple(stage for stage, f in futures.items() if f.state.name != "Cached")
    result = list(futures.values())[-1].result()
    lines = pipeline.describe(result, settings) if pipeline.describe else ()
    every = tuple(pair for f in futures.values() for pair in named_outputs(f.result()))
    status = "done" if computed else "cached"
    return FileOutcome(source_uri, status, result, stages=computed, lines=lines, stage_outputs=every)


def submit_file(pipeline: FilePipeline, source: str, options: Any, env: Environment) -> dict[str, PrefectFuture]:
    """Submit one file's stage tasks, their runs named after the file (``transcribe · jfk.flac``)."""
    with file_label(env.name_of(source)):
        return pipeline.submit(source, options, env)


def run_files(
    pipeline: FilePipeline,
    sources: Sequence[str],
    options: Any,
    env: Environment,
    parallel_files: int,
    progress: Progress,
) -> list[FileOutcome]:
    """Run the pipeline on every source, at most ``parallel_files`` at a time, isolating failures."""
    if pipeline.waits:
        return run_waiting_files(pipeline, sources, options, env, parallel_files, progress)
    pending = list(sources)[::-1]
    running: dict[PrefectFuture, tuple[str, dict[str, PrefectFuture]]] = {}
    outcomes: dict[str, FileOutcome] = {}

    def start_next() -> None:
        while pending and len(running) < max(parallel_files, 1):
            source = pending.pop()
            try:
                futures = submit_file(pipeline, source, options, env)
            except Exception as e:  # one bad file never stops the others
                outcomes[source] = failed_outcome(source, e)
                progress(len(outcomes), len(sources))
                continue
            running[list(futures.values())[-1]] = (source, futures)

    start_next()
    while running:
        finished = next(iter(as_completed(list(running))))
        source, futures = running.pop(finished)
        for future in futures.values():
            future.wait()
        outcomes[source] = file_outcome(source, futures, pipeline, env.settings)
        progress(len(outcomes), len(sources))
        start_next()
    progress.close()
    return [replace(outcomes[s], label=env.name_of(s)) for s in sources]


def run_waiting_files(
    pipeline: FilePipeline,
    sources: Sequence[str],
    options: Any,
    env: Environment,
    parallel_files: int,
    progress: Progress,
) -> list[FileOutcome]:
    """:func:`run_files` for a pipeline whose submit waits on its own stages: each file's submit runs in a
    thread of its own (with the flow run's context), ``parallel_files`` at a time, isolating failures."""
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import as_completed as threads_completed

    outcomes: dict[str, FileOutcome] = {}
    with ThreadPoolExecutor(max_workers=max(parallel_files, 1), thread_name_prefix=pipeline.name) as pool:
        running = {
            pool.submit(contextvars.copy_context().run, submit_file, pipeline, source, options, env): source
            for source in sources
        }
        for done in threads_completed(running):
            source = running[done]
            try:
                outcomes[source] = file_outcome(source, done.result(), pipeline, env.settings)
            except Exception as e:  # one bad file never stops the others
                outcomes[source] = failed_outcome(source, e)
            progress(len(outcomes), len(sources))
    progress.close()
    return [replace(outcomes[s], label=env.name_of(s)) for s in sources]


def processed_rows(
    pipeline: FilePipeline,
    options: Any,
    entries: Sequence[SourceEntry],
    outcomes: Sequence[FileOutcome],
    flow_run_id: str | None,
) -> list[dict]:
    """``processed`` catalog rows for the files that ran (not the skipped ones)."""
    by_uri = {e.uri: e for e in entries}
    rows = []
    for outcome in outcomes:
        if outcome.status in ("skipped", "waiting"):  # waiting: not recorded, so the next run tries it again
            continue
        entry = by_uri[outcome.source_uri]
        rows.append(
            {
                "pipeline": pipeline.name,
                "params_hash": pipeline.params_hash(options),
                "source_uri": entry.uri,
                "source_version": entry.version,
                "size_bytes": entry.size_bytes,
                "status": outcome.status,
                "transient": outcome.transient,
                "source_sha256": getattr(outcome.result, "source_sha256", None),
                "outputs": json.dumps(outcome.outputs),
                "error_message": ": ".join(p for p in (outcome.failed_stage, outcome.error) if p) or None,
                "flow_run_id": flow_run_id,
            }
        )
    return rows


def final_state(report: RunReport) -> State:
    """The flow run's state: ``Completed`` with the summary, else ``Partially failed`` (some files failed) or
    ``Failed`` (all of them, or the run's own problem), each naming the failed files; a failed state raises
    :class:`FilesFailed` (with the report) to a Python caller."""
    if not report.failed and not report.problems:
        return Completed(message=report.summary(), data=report)
    partial = not report.problems and len(report.failed) < len(report.outcomes)
    return Failed(
        name="Partially failed" if partial else "Failed", message=report.state_message(), data=FilesFailed(report)
    )


def run_pipeline(
    pipeline: FilePipeline,
    paths: Sequence[str],
    options: Any,
    parallel_files: int,
    storage_block: StorageBlock,
    models_block: ModelsBlock = None,
) -> State:
    """A flow's body over many files: choose the environment, list the files, run each, publish; the flow
    run's final state (:func:`final_state`)."""
    env = environment(storage_block, models_block)
    entries = list_sources(paths, env.settings, SUPPORTED_FORMATS)
    env, sources = env.naming(entries), [e.uri for e in entries]
    progress = Progress(pipeline.name, len(sources))
    report = RunReport(run_files(pipeline, sources, options, env, parallel_files, progress))
    publish_table(f"{pipeline.name}-summary", [o.row() for o in report.outcomes], report.summary())
    publish_markdown(f"{pipeline.name}-files", files_markdown(report, shared_store(env.settings)))
    return final_state(report)
