"""The ``lipsync_features`` flow: lip-sync model input features of speech — ingest → lip-sync features."""

from __future__ import annotations

from dataclasses import dataclass, field

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
from voxflow.tasks import ingest, lipsync
from voxflow.tasks.ingest import IngestOptions, ingest_file
from voxflow.tasks.kit.options import Options
from voxflow.tasks.lipsync import LipsyncOptions
from voxflow.tasks.lipsync import lipsync_features as features_task


@dataclass(frozen=True)
class LipsyncFlowOptions(Options):
    """The working audio (16 kHz mono) and the feature options (fps, window)."""

    ingest: IngestOptions = IngestOptions()
    features: LipsyncOptions = field(default_factory=LipsyncOptions)


def submit_lipsync(source_uri: str, options: LipsyncFlowOptions, env: Environment) -> dict[str, PrefectFuture]:
    """The per-file chain: 1. ingest, 2. features."""
    speech = env.stage(ingest_file).submit(source_uri, options.ingest, env.settings, env.name_of(source_uri))
    return {"ingest": speech, lipsync.STAGE: env.stage(features_task).submit(speech, options.features, env.settings)}


PIPELINE = FilePipeline.of_stages(registry.LIPSYNC_FEATURES.name, LipsyncFlowOptions, submit_lipsync, ingest, lipsync)


@threaded_flow(registry.LIPSYNC_FEATURES.name)
def lipsync_features(
    paths: list[str],
    options: LipsyncFlowOptions = LipsyncFlowOptions(),
    parallel_files: ParallelFiles = DEFAULT_PARALLEL_FILES,
    storage_block: StorageBlock = None,
) -> RunReport:
    """80-bin log-mel windows per video frame (features.npy) and their index (windows.parquet) per file.

    Args:
        paths: Audio files, folders or s3:// URIs.
        options: The working audio and the feature options (video fps, window frames).
        parallel_files: How many files are processed at once.
        storage_block: A saved voxflow-storage Block (picked, or its name); empty to use the environment.
    """
    return run_pipeline(PIPELINE, paths, options, parallel_files, storage_block)
