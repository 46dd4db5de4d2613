"""Diarize: who speaks when, with the pyannote.audio 4 speaker-diarization pipeline (community-1).

The pipeline slides its segmentation model (10 s windows) over the track, embeds each local speaker
of each window, clusters the embeddings (VBx, or KMeans when the speaker count is given) and returns
two diarizations: the regular one, where speakers may overlap, and the exclusive one, with at most
one speaker at a time (what transcription assigns words to).

Memory: the whole 16 kHz mono track stays a CPU tensor. pyannote's ``Inference`` cuts it into
windows and moves one batch of ``segmentation_batch_size`` windows at a time to the device; the
embedding step crops one window per (window, speaker) pair on the CPU and moves batches of
``embedding_batch_size`` to the device. Every model output comes back to the CPU as numpy. CUDA
out-of-memory halves both batch sizes and runs again (:func:`voxflow.tasks.kit.runs.halving_batch_on_oom`).

Turns are the pipeline's own, clipped to the end of the track. Writes ``diarization.rttm`` and
``exclusive.rttm`` (RTTM, times in ms) under ``artifacts/<sha[:2]>/<sha>/diarize/<params>/``
and one ``segments`` row per turn of each (``exclusive`` false/true).

pyannote sends usage metrics to otel.pyannote.ai unless ``PYANNOTE_METRICS_ENABLED`` says otherwise;
the loader sets it to 0 when it is unset, so nothing leaves the machine unless a user opts in.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, Field

from voxflow.storage.catalog import Catalog
from voxflow.storage.refs import ArtifactRef
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import shared_store
from voxflow.tasks.helpers import audio as audio_ops
from voxflow.tasks.helpers.speakers import Turn, to_rttm
from voxflow.tasks.kit.model_sources import MODEL_SOURCES, local_pipeline
from voxflow.tasks.kit.model_sources import hub_folder_name as local_folder_name
from voxflow.tasks.kit.models import (
    RESIDENT,
    ModelNotFound,
    ModelSettings,
    holding,
    hub_errors,
)
from voxflow.tasks.kit.options import InvalidOptions, Options, not_blank
from voxflow.tasks.kit.outputs import audio_input, read_audio, source_sha256_of, write_artifact
from voxflow.tasks.kit.runs import current_run, halving_batch_on_oom, is_out_of_memory
from voxflow.tasks.kit.stage import StageSpec, stage_task

STAGE = "diarize"
CODE_VERSION = "1"
LIBRARY, DEFAULT_MODEL = (
    MODEL_SOURCES[STAGE].library,
    MODEL_SOURCES[STAGE].name,
)  # <model dir>/pyannote/<repository name>/
HUB_URL = "https://hf.co/{name}"  # where a gated pipeline's conditions are accepted
SAMPLE_RATE_HZ = 16_000  # what the pipeline's models take
RTTM_NAME = "diarization.rttm"
EXCLUSIVE_RTTM_NAME = "exclusive.rttm"
METRICS_ENV = "PYANNOTE_METRICS_ENABLED"  # pyannote's telemetry switch
PROGRESS_TOTAL = 100  # progress is reported in percent ...
PROGRESS_PHASES = {"segmentation": (0, 20), "embeddings": (20, 80)}  # ... step -> (start, share) in percent

# One diarization at a time per process: batch sizes are set on the shared (resident) pipeline.


@dataclass(frozen=True)
class DiarizeOptions(Options):
    """Which pipeline diarizes, what it may assume about the speakers, and its batch sizes."""

    model: Annotated[
        str,
        Field(
            min_length=1,
            description="Hugging Face pipeline id, found first in <model dir>/pyannote/<repository name>/; or a pipeline folder.",
        ),
        AfterValidator(not_blank),
    ] = DEFAULT_MODEL
    num_speakers: Annotated[
        int | None, Field(ge=1, description="Exact number of speakers when known (forces that many clusters).")
    ] = None
    min_speakers: Annotated[int | None, Field(ge=1, description="At least this many speakers.")] = None
    max_speakers: Annotated[int | None, Field(ge=1, description="At most this many speakers.")] = None
    segmentation_batch_size: Annotated[int, Field(ge=1, le=1024, description="10 s windows segmented at once.")] = 32
    embedding_batch_size: Annotated[
        int, Field(ge=1, le=1024, description="(window, speaker) pairs embedded at once.")
    ] = 32

    def check(self) -> None:
        if self.num_speakers is not None and (self.min_speakers is not None or self.max_speakers is not None):
            raise InvalidOptions("DiarizeOptions: give num_speakers, or min_speakers/max_speakers, not both")
        if self.min_speakers is not None and self.max_speakers is not None and self.min_speakers > self.max_speakers:
            raise InvalidOptions(
                f"DiarizeOptions: min_speakers ({self.min_speakers}) must not exceed max_speakers ({self.max_speakers})"
            )

    def speaker_counts(self) -> dict[str, int]:
        """The speaker-count keyword arguments of the pipeline call (only those that are set)."""
        counts = {
            "num_speakers": self.num_speakers,
            "min_speakers": self.min_speakers,
            "max_speakers": self.max_speakers,
        }
        return {name: value for name, value in counts.items() if value is not None}


@dataclass(frozen=True)
class Diarization:
    """Speaker turns of one track, in the pipeline's order (by start time)."""

    turns: tuple[Turn, ...]  # regular diarization: speakers may overlap
    exclusive: tuple[Turn, ...]  # at most one speaker at a time
    speakers: tuple[str, ...]  # labels of the regular turns, sorted (SPEAKER_00, SPEAKER_01, ...)

    @property
    def speech_s(self) -> float:
        """Time during which at least one speaker speaks."""
        return _active_time(self.turns, 1)

    @property
    def overlap_s(self) -> float:
        """Time during which two or more speakers speak at once."""
        return _active_time(self.turns, 2)


@dataclass(frozen=True)
class DiarizeResult:
    """What the diarize task returns: the audio it diarized and the two RTTM artifacts.

    Its ``sha256`` is the regular RTTM's (transcription is keyed by audio and diarization); its
    ``artifact`` is the audio, so the next stage can read the audio from it.
    """

    audio: ArtifactRef  # the audio that was diarized
    rttm: ArtifactRef  # diarization.rttm (overlapping turns)
    exclusive_rttm: ArtifactRef  # exclusive.rttm (one speaker at a time)
    speakers: tuple[str, ...]
    turns: int  # number of regular turns
    speech_s: float
    overlap_s: float
    source_sha256: str

    @property
    def sha256(self) -> str:
        return self.rttm.sha256

    @property
    def artifact(self) -> ArtifactRef:
        return self.audio

    def summary(self) -> dict:
        """What a summary table shows of a diarized file."""
        return {
            "speakers": len(self.speakers),
            "turns": self.turns,
            "speech_s": round(self.speech_s, 2),
            "overlap_s": round(self.overlap_s, 2),
            "rttm": self.rttm.sha256[:12],
        }


def load_diarize_model(
    name: str = DEFAULT_MODEL, device: str = "cpu", model_dir: str | Path | None = None, token: str | None = None
) -> Any:
    """The pyannote pipeline ``name`` on ``device``, loaded once per process.

    A local folder (``<model_dir>/pyannote/<repository name>/``, else ``name`` itself) is read with
    ``Pipeline.from_pretrained(folder)``; otherwise the Hugging Face hub (gated: needs ``token``).
    """
    settings = ModelSettings(model_dir=str(model_dir) if model_dir else None)
    folder = local_pipeline(name, settings)
    key = (LIBRARY, name, str(folder) if folder else None)
    expected = settings.folder / LIBRARY / local_folder_name(name) if settings.folder else None
    return RESIDENT.get(key, device, lambda: _load_pipeline(name, folder, device, token, expected), stage=STAGE)


def import_pyannote() -> Any:
    """``pyannote.audio``, imported with its usage metrics off unless ``PYANNOTE_METRICS_ENABLED`` is set."""
    os.environ.setdefault(METRICS_ENV, "0")  # before pyannote's import sets its default (on)
    import pyannote.audio

    return pyannote.audio


def _load_pipeline(name: str, folder: Path | None, device: str, token: str | None, expected: Path | None) -> Any:
    """Load from ``folder``, else from the hub (``expected``: where the folder was looked for)."""
    import torch

    Pipeline = import_pyannote().Pipeline
    if folder is not None:
        pipeline = Pipeline.from_pretrained(folder)
    else:
        # pyannote prints a help text when the hub fails: the one-line error below says it instead
        with (
            hub_errors(name, gated_url=HUB_URL.format(name=name), folder=expected),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            pipeline = Pipeline.from_pretrained(name, token=token)
    if pipeline is None:
        raise ModelNotFound(
            f"pyannote could not load pipeline {name!r}: check the name, or put its folder in the model dir"
        )
    return pipeline.to(torch.device(device))


def pull_diarize_model(name: str, settings: ModelSettings) -> Path:
    """Download pipeline ``name`` (all its files) into ``<model dir>/pyannote/<repository name>/``."""
    from huggingface_hub import snapshot_download

    target = settings.library_dir(LIBRARY) / local_folder_name(name)
    with hub_errors(name, gated_url=HUB_URL.format(name=name), folder=target):
        snapshot_download(name, token=settings.token(), local_dir=target)
    return target


def waveform_input(samples: np.ndarray, sample_rate_hz: int) -> dict[str, Any]:
    """The pipeline's input: ``{"waveform": (1, T) float32 CPU tensor at 16 kHz, "sample_rate": 16000}``.

    ``samples`` is ``(channels, T)`` at ``sample_rate_hz``; it is downmixed and resampled (soxr).
    """
    import torch

    mono = audio_ops.downmix(samples) if samples.shape[0] != 1 else samples
    resampled = audio_ops.resample(np.asarray(mono, dtype=np.float32), sample_rate_hz, SAMPLE_RATE_HZ)
    waveform = torch.from_numpy(np.ascontiguousarray(resampled, dtype=np.float32))
    return {"waveform": waveform, "sample_rate": SAMPLE_RATE_HZ}


def diarize(
    waveform: Mapping[str, Any], pipeline: Any, options: DiarizeOptions, hook: Callable[[int, int], None] | None = None
) -> Diarization:
    """Diarize ``waveform`` (see :func:`waveform_input`) with a loaded pyannote ``pipeline``.

    The turns are the pipeline's own, clipped to the track (see :func:`annotation_turns`).
    ``hook(completed, total)`` gets the progress in percent (segmentation, then embeddings).
    """
    samples = waveform["waveform"]
    if waveform["sample_rate"] != SAMPLE_RATE_HZ or samples.ndim != 2 or samples.shape[0] != 1:
        raise ValueError(
            f"expected a (1, samples) waveform at {SAMPLE_RATE_HZ} Hz, got {tuple(samples.shape)} at "
            f"{waveform['sample_rate']} Hz (see waveform_input)"
        )
    if samples.shape[1] == 0:
        return Diarization((), (), ())

    def run(batch_size: int) -> Any:
        with holding(pipeline):  # the batch sizes are set on the shared pipeline
            pipeline.segmentation_batch_size = min(options.segmentation_batch_size, batch_size)
            pipeline.embedding_batch_size = min(options.embedding_batch_size, batch_size)
            try:
                return pipeline(dict(waveform), hook=_pyannote_hook(hook), **options.speaker_counts())
            except MemoryError as e:  # pyannote's segmentation turns CUDA OOM into a MemoryError
                if e.__context__ is not None and is_out_of_memory(e.__context__):
                    raise e.__context__ from None
                raise

    output = halving_batch_on_oom(run, max(options.segmentation_batch_size, options.embedding_batch_size))
    if hook is not None:
        hook(PROGRESS_TOTAL, PROGRESS_TOTAL)
    end_s = samples.shape[1] / SAMPLE_RATE_HZ
    turns = annotation_turns(output.speaker_diarization, end_s)
    exclusive = annotation_turns(output.exclusive_speaker_diarization, end_s)
    return Diarization(turns, exclusive, speakers=tuple(sorted({t.speaker for t in turns})))


def annotation_turns(annotation: Any, end_s: float = float("inf")) -> tuple[Turn, ...]:
    """The tracks of a ``pyannote.core.Annotation`` as turns, in its (chronological) order, cut at ``end_s``.

    pyannote zero-pads the last window of a track; a turn it finds in that padding would run past
    the end of the audio, so turns are clipped to ``end_s`` (those starting at or after it are dropped).
    """
    tracks = annotation.itertracks(yield_label=True)
    return tuple(Turn(s.start, min(s.end, end_s), str(label)) for s, _, label in tracks if s.start < end_s)


def _pyannote_hook(hook: Callable[[int, int], None] | None) -> Callable[..., None] | None:
    """pyannote's ``hook(step, artifact, file=, total=, completed=)`` as our ``hook(completed, total)`` in percent."""
    if hook is None:
        return None

    def on_step(
        step_name: str, step_artifact: Any, file: Any = None, total: int | None = None, completed: int | None = None
    ) -> None:
        if step_name in PROGRESS_PHASES and total and completed is not None:
            start, share = PROGRESS_PHASES[step_name]
            hook(start + share * min(completed, total) // total, PROGRESS_TOTAL)

    return on_step


def _active_time(turns: tuple[Turn, ...], at_least: int) -> float:
    """Total time during which at least ``at_least`` turns are active at once."""
    events = sorted([(t.start_s, 1) for t in turns] + [(t.end_s, -1) for t in turns])
    active, total, since = 0, 0.0, 0.0
    for time_s, change in events:
        if active >= at_least:
            total += time_s - since
        active, since = active + change, time_s
    return total


def segment_rows(
    found: Diarization,
    file_sha256: str,
    params_hash: str,
    rttm: ArtifactRef,
    exclusive_rttm: ArtifactRef,
    flow_run_id: str | None,
) -> list[dict]:
    """``segments`` rows of both diarizations, with ids stable for the same file, options and turn."""
    rows = []
    for exclusive, turns, ref in ((False, found.turns, rttm), (True, found.exclusive, exclusive_rttm)):
        for index, turn in enumerate(turns):
            identity = f"{file_sha256}:{STAGE}:{params_hash}:{int(exclusive)}:{index}"
            rows.append(
                {
                    "segment_id": hashlib.sha256(identity.encode()).hexdigest(),
                    "file_sha256": file_sha256,
                    "stage": STAGE,
                    "params_hash": params_hash,
                    "index": index,
                    "speaker": turn.speaker,
                    "start_s": turn.start_s,
                    "end_s": turn.end_s,
                    "exclusive": exclusive,
                    "artifact_uri": ref.uri,
                    "flow_run_id": flow_run_id,
                }
            )
    return rows


SPEC = StageSpec(STAGE, code_version=CODE_VERSION, gpu=True)


@stage_task(SPEC)
def diarize_audio(audio: Any, options: DiarizeOptions, settings: StoreSettings, models: ModelSettings) -> DiarizeResult:
    """Speaker turns of a stage's audio: ``diarization.rttm``, ``exclusive.rttm`` and ``segments`` rows."""
    ref, file_sha256, run = audio_input(audio), source_sha256_of(audio), current_run()
    samples, rate = read_audio(ref, settings)
    pipeline = load_diarize_model(options.model, models.torch_device(), models.model_dir, token=models.token())
    found = diarize(waveform_input(samples, rate), pipeline, options)
    rttm = write_artifact(settings, RTTM_NAME, to_rttm(found.turns, file_sha256).encode())
    exclusive = write_artifact(settings, EXCLUSIVE_RTTM_NAME, to_rttm(found.exclusive, file_sha256).encode())
    rows = segment_rows(found, file_sha256, run.params_hash, rttm, exclusive, run.flow_run_id)
    Catalog(shared_store(settings)).append("segments", rows)
    return DiarizeResult(
        ref, rttm, exclusive, found.speakers, len(found.turns), found.speech_s, found.overlap_s, file_sha256
    )
