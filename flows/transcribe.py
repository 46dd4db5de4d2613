"""The ``transcribe`` flow: who said what, when — ingest → [separate] → [denoise] → diarize → transcribe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from prefect.futures import PrefectFuture
from pydantic import Field

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
from voxflow.storage.settings import StoreSettings
from voxflow.tasks import denoise, diarize, ingest, separate
from voxflow.tasks import transcribe as transcription
from voxflow.tasks.denoise import DenoiseOptions, denoise_audio
from voxflow.tasks.diarize import DiarizeOptions, diarize_audio
from voxflow.tasks.ingest import IngestOptions, ingest_file
from voxflow.tasks.kit.options import Options
from voxflow.tasks.separate import SeparateOptions, separate_audio
from voxflow.tasks.transcribe import TranscribeOptions, transcribe_audio


@dataclass(frozen=True)
class TranscribeFlowOptions(Options):
    """Which optional stages run on each file, and every stage's options."""

    run_separate: Annotated[bool, Field(description="Isolate the voices from music and effects first.")] = False
    run_denoise: Annotated[bool, Field(description="Remove background noise before diarization.")] = False
    run_diarize: Annotated[bool, Field(description="Label speakers (else every segment is unlabelled).")] = True
    ingest: Annotated[
        IngestOptions | None,
        Field(description="Working audio; empty: 16 kHz with the source's channels, or its own rate when separating."),
    ] = None
    separate: SeparateOptions = field(default_factory=SeparateOptions)
    denoise: DenoiseOptions = field(default_factory=DenoiseOptions)
    diarize: DiarizeOptions = field(default_factory=DiarizeOptions)
    transcribe: TranscribeOptions = field(default_factory=TranscribeOptions)

    def ingest_options(self) -> IngestOptions:
        return self.ingest or (ingest.NATIVE if self.run_separate else ingest.SPEECH_CHANNELS)


def submit_transcribe(source_uri: str, options: TranscribeFlowOptions, env: Environment) -> dict[str, PrefectFuture]:
    """The per-file chain; each stage reads the audio the previous one wrote."""
    futures = {
        "ingest": env.stage(ingest_file).submit(
            source_uri, options.ingest_options(), env.settings, env.name_of(source_uri)
        )
    }  # 1
    audio = futures["ingest"]
    if options.run_separate:  # 2. the vocals, without music and effects
        audio = futures["separate"] = env.stage(separate_audio).submit(
            audio, options.separate, env.settings, env.models
        )
    if options.run_denoise:  # 3. the speech, without noise
        audio = futures["denoise"] = env.stage(denoise_audio).submit(audio, options.denoise, env.settings, env.models)
    turns = None
    if options.run_diarize:  # 4. who speaks when
        turns = futures["diarize"] = env.stage(diarize_audio).submit(audio, options.diarize, env.settings, env.models)
    futures["transcribe"] = env.stage(transcribe_audio).submit(  # 5. what they say
        audio, turns, options.transcribe.resolved(env.models), env.settings, env.models
    )
    return futures


def transcript_lines(result: transcription.TranscribeResult, settings: StoreSettings) -> tuple[str, ...]:
    """``[SPEAKER_00 0:01.2] text`` per segment (after a ``note:`` line when there is a suggestion):
    what the command line prints of a file."""
    note = (f"note: {result.suggestion}",) if result.suggestion else ()
    return note + tuple(result.transcript_lines(settings))


PIPELINE = FilePipeline.of_stages(
    registry.TRANSCRIBE.name,
    TranscribeFlowOptions,
    submit_transcribe,
    ingest,
    separate,
    denoise,
    diarize,
    transcription,
    describe=transcript_lines,
)


@threaded_flow(registry.TRANSCRIBE.name)
def transcribe(
    paths: list[str],
    options: TranscribeFlowOptions = TranscribeFlowOptions(),
    parallel_files: ParallelFiles = DEFAULT_PARALLEL_FILES,
    storage_block: StorageBlock = None,
    models_block: ModelsBlock = None,
) -> RunReport:
    """Speaker-labelled transcripts (segments rows, RTTM, SRT, VTT and JSON) of audio files.

    Args:
        paths: Audio files, folders or s3:// URIs.
        options: Which optional stages run (separate, denoise, diarize) and each stage's options.
        parallel_files: How many files are processed at once (GPU stages still take turns).
        storage_block: A saved voxflow-storage Block (picked, or its name); empty to use the environment.
        models_block: A saved voxflow-models Block (picked, or its name); empty to use VOXFLOW_MODEL_DIR and HF_TOKEN.
    """
    return run_pipeline(PIPELINE, paths, options, parallel_files, storage_block, models_block)
