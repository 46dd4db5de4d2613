"""The ``separate`` flow: split each recording into vocals and accompaniment — ingest → separate."""

from __future__ import annotations

from dataclasses import dataclass, field

from prefect.futures import PrefectFuture

from voxflow.flows import registry
from voxflow.flows.environment import Environment, ModelsBlock, StorageBlock
from voxflow.flows.pipelines import (
    DEFAULT_PARALLEL_FILES,
    FilePipeline,
    ParallelFiles,
    RunReport,
    run_pipeline,
    threaded_flow,
)
from voxflow.tasks import ingest
from voxflow.tasks import separate as separation
from voxflow.tasks.ingest import IngestOptions, ingest_file
from voxflow.tasks.kit.options import Options
from voxflow.tasks.separate import SeparateOptions, separate_audio


@dataclass(frozen=True)
class SeparateFlowOptions(Options):
    """The working audio (the source's rate and channels by default) and the separation options."""

    ingest: IngestOptions = ingest.NATIVE
    separate: SeparateOptions = field(default_factory=SeparateOptions)


def submit_separate(source_uri: str, options: SeparateFlowOptions, env: Environment) -> dict[str, PrefectFuture]:
    """The per-file chain: 1. ingest, 2. separate."""
    mix = env.stage(ingest_file).submit(source_uri, options.ingest, env.settings, env.name_of(source_uri))
    return {
        "ingest": mix,
        "separate": env.stage(separate_audio).submit(mix, options.separate, env.settings, env.models),
    }


PIPELINE = FilePipeline.of_stages(registry.SEPARATE.name, SeparateFlowOptions, submit_separate, ingest, separation)


@threaded_flow(registry.SEPARATE.name)
def separate(
    paths: list[str],
    options: SeparateFlowOptions = SeparateFlowOptions(),
    parallel_files: ParallelFiles = DEFAULT_PARALLEL_FILES,
    storage_block: StorageBlock = None,
    models_block: ModelsBlock = None,
) -> RunReport:
    """vocals.wav and accompaniment.wav (the sum of the other stems) of each file, at its own sample rate.

    Args:
        paths: Audio files, folders or s3:// URIs.
        options: The working audio and the Demucs model and its options.
        parallel_files: How many files are processed at once (GPU stages still take turns).
        storage_block: A saved voxflow-storage Block (picked, or its name); empty to use the environment.
        models_block: A saved voxflow-models Block (picked, or its name); empty to use VOXFLOW_MODEL_DIR.
    """
    return run_pipeline(PIPELINE, paths, options, parallel_files, storage_block, models_block)
