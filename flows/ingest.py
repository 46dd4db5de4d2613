"""The ``ingest`` flow: decode and measure audio files and store each as 16 kHz mono WAV."""

from __future__ import annotations

import os
from typing import Annotated

from prefect import flow
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from voxflow.flows.environment import Environment
from voxflow.flows.pipelines import FilePipeline, RunReport, register, run_pipeline
from voxflow.tasks.ingest import CODE_VERSION, STAGE, IngestOptions, ingest_file

DEFAULT_PARALLEL_FILES = min(4, os.cpu_count() or 1)
MAX_THREADS = 32  # the task runner's bound; parallelism is set per run by ``parallel_files``


def submit_ingest(source_uri: str, options: IngestOptions, env: Environment) -> dict[str, PrefectFuture]:
    """The per-file chain of this flow: one stage."""
    return {STAGE: env.stage(ingest_file).submit(source_uri, options, env.settings)}


INGEST = register(FilePipeline("ingest", (STAGE,), IngestOptions, submit_ingest, version=f"{STAGE}:{CODE_VERSION}"))


@flow(name="ingest", task_runner=ThreadPoolTaskRunner(max_workers=MAX_THREADS))
def ingest(
    paths: list[str],
    options: IngestOptions = IngestOptions(),
    parallel_files: Annotated[int, Field(ge=1, le=MAX_THREADS)] = DEFAULT_PARALLEL_FILES,
    storage_block: str | None = None,
) -> RunReport:
    """Decode, measure and store each file as 16 kHz mono float WAV with files/artifacts/stage_runs rows.

    Args:
        paths: Audio files, folders or s3:// URIs (wav, flac, mp3, ogg, m4a...).
        options: How each file becomes the working audio.
        parallel_files: How many files are processed at once.
        storage_block: Name of a saved voxflow-storage Block; empty to use the environment.
    """
    return run_pipeline(INGEST, paths, options, parallel_files, storage_block)  # ingest each file
