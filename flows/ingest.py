"""The ``ingest`` flow: decode and measure audio files and store each as 16 kHz mono WAV."""

from __future__ import annotations

from prefect.futures import PrefectFuture

from voxflow.flows import registry
from voxflow.flows.environment import Environment, StorageBlock
from voxflow.flows.pipelines import (
    DEFAULT_PARALLEL_FILES,
    FilePipeline,
    ParallelFiles,
    RunReport,
    run_pipeline,
    threaded_flow,
)
from voxflow.tasks import ingest as ingestion
from voxflow.tasks.ingest import STAGE, IngestOptions, ingest_file


def submit_ingest(source_uri: str, options: IngestOptions, env: Environment) -> dict[str, PrefectFuture]:
    """The per-file chain of this flow: one stage."""
    return {STAGE: env.stage(ingest_file).submit(source_uri, options, env.settings, env.name_of(source_uri))}


PIPELINE = FilePipeline.of_stages(registry.INGEST.name, IngestOptions, submit_ingest, ingestion)


@threaded_flow(registry.INGEST.name)
def ingest(
    paths: list[str],
    options: IngestOptions = IngestOptions(),
    parallel_files: ParallelFiles = DEFAULT_PARALLEL_FILES,
    storage_block: StorageBlock = None,
) -> RunReport:
    """Decode, measure and store each file as 16 kHz mono float WAV with files/artifacts/stage_runs rows.

    Args:
        paths: Audio files, folders or s3:// URIs (wav, flac, mp3, ogg, m4a...).
        options: How each file becomes the working audio.
        parallel_files: How many files are processed at once.
        storage_block: A saved voxflow-storage Block (picked, or its name); empty to use the environment.
    """
    return run_pipeline(PIPELINE, paths, options, parallel_files, storage_block)  # ingest each file
