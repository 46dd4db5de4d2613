"""Ingest: decode any audio file, measure it, and store it as a 16 kHz mono float WAV.

Streamed: the file is decoded, measured (loudness, peak), downmixed, resampled and written block by
block, so its length does not change the memory it takes (the source's sha256 is streamed too).

Writes the artifact ``artifacts/<sha[:2]>/<sha>/ingest/<params>/audio.wav``, then the ``artifacts``
and ``files`` rows. Caching, retries and the ``stage_runs`` rows come from :mod:`voxflow.tasks.kit.stage`: a
later run on the same bytes with the same options is a cache hit that decodes nothing (and records
the source path when the bytes arrive under a new one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, BinaryIO, Literal

import numpy as np
from pydantic import Field

from voxflow.storage.catalog import Catalog
from voxflow.storage.keys import source_name
from voxflow.storage.refs import ArtifactRef
from voxflow.storage.settings import StoreSettings
from voxflow.storage.sources import FetchedSource, fetch_source
from voxflow.storage.store import shared_store
from voxflow.tasks.helpers import audio
from voxflow.tasks.kit.options import Options
from voxflow.tasks.kit.outputs import staged_output, write_artifact
from voxflow.tasks.kit.runs import StageRun, current_run
from voxflow.tasks.kit.stage import StageSpec, stage_task

STAGE = "ingest"
CODE_VERSION = "2"
AUDIO_NAME = "audio.wav"


ResampleQuality = Literal["QQ", "LQ", "MQ", "HQ", "VHQ"]


@dataclass(frozen=True)
class IngestOptions(Options):
    """How an input file becomes the pipeline's working audio."""

    sample_rate_hz: Annotated[
        int | None,
        Field(ge=8_000, le=192_000, description="Sample rate of the written artifact; empty keeps the source's."),
    ] = 16_000
    mono: Annotated[bool, Field(description="Downmix all channels to one (their mean).")] = True
    resample_quality: Annotated[ResampleQuality, Field(description="soxr resampling quality.")] = "VHQ"


SPEECH = IngestOptions()  # 16 kHz mono: what the speech models read
SPEECH_CHANNELS = IngestOptions(mono=False)  # 16 kHz, channels kept (per-channel transcription)
NATIVE = IngestOptions(sample_rate_hz=None, mono=False)  # the source's own rate and channels (for separation)


@dataclass(frozen=True)
class SourceStats:
    """What the source file holds, measured on its decoded samples."""

    format: str
    subtype: str
    sample_rate_hz: int
    channels: int
    frames: int
    duration_s: float
    integrated_lufs: float | None  # None when shorter than 0.4 s or silent
    peak: float  # largest absolute sample, linear
    peak_dbfs: float


@dataclass(frozen=True)
class IngestResult:
    """What the ingest task returns: the source, its stats and the reference to the working audio.

    Its ``sha256`` (the working audio's) is what the next stage's cache key starts from.
    """

    source_uri: str
    source_name: str
    source_sha256: str
    size_bytes: int
    stats: SourceStats
    artifact: ArtifactRef

    @property
    def sha256(self) -> str:
        return self.artifact.sha256

    def summary(self) -> dict:
        """What a summary table shows of an ingested file."""
        s = self.stats
        return {
            "duration_s": round(s.duration_s, 3),
            "sample_rate_hz": s.sample_rate_hz,
            "channels": s.channels,
            "lufs": round(s.integrated_lufs, 2) if s.integrated_lufs is not None else None,
            "sha256": self.source_sha256[:12],
        }


class Preprocessor:
    """The working audio, block by block: optionally downmixed, resampled to ``options.sample_rate_hz`` (if
    set), float32."""

    def __init__(self, sample_rate_hz: int, channels: int, options: IngestOptions) -> None:
        self.options = options
        self.sample_rate_hz = options.sample_rate_hz or sample_rate_hz
        self.channels = 1 if options.mono else channels
        self.resampler = audio.StreamResampler(
            sample_rate_hz, self.sample_rate_hz, self.channels, options.resample_quality
        )

    def __call__(self, block: np.ndarray) -> np.ndarray:
        return self.resampler(audio.downmix(block) if self.options.mono else block)

    def flush(self) -> np.ndarray:
        """What the resampler still holds at the end of the audio."""
        return self.resampler.flush()


def preprocess(samples: np.ndarray, sample_rate_hz: int, options: IngestOptions) -> np.ndarray:
    """The working audio of ``(channels, samples)`` in one call (the same samples as block by block)."""
    step = Preprocessor(sample_rate_hz, samples.shape[0], options)
    return np.concatenate([step(samples), step.flush()], axis=1)


class Measurer:
    """Integrated loudness and peak of a source, block by block."""

    def __init__(self, sample_rate_hz: int, channels: int) -> None:
        self.loudness = audio.LoudnessMeter(sample_rate_hz, channels)
        self.peak = 0.0

    def __call__(self, block: np.ndarray) -> None:
        self.loudness.add(block)
        self.peak = max(self.peak, audio.peak(block))

    def stats(self, format: str, subtype: str) -> SourceStats:
        meter = self.loudness
        return SourceStats(
            format=format,
            subtype=subtype,
            sample_rate_hz=meter.sample_rate_hz,
            channels=meter.channels,
            frames=meter.frames,
            duration_s=meter.frames / meter.sample_rate_hz,
            integrated_lufs=meter.integrated(),
            peak=self.peak,
            peak_dbfs=audio.to_dbfs(self.peak),
        )


def measure(decoded: audio.DecodedAudio) -> SourceStats:
    """Format, shape, integrated loudness and peak of decoded audio."""
    measurer = Measurer(decoded.sample_rate_hz, decoded.channels)
    measurer(decoded.samples)
    return measurer.stats(decoded.format, decoded.subtype)


@dataclass(frozen=True)
class WorkingAudio:
    """What :func:`ingest_audio` wrote."""

    sample_rate_hz: int
    channels: int
    frames: int


def ingest_audio(path: Path, name: str, options: IngestOptions, out: BinaryIO) -> tuple[SourceStats, WorkingAudio]:
    """Decode, measure and preprocess a source block by block, writing the working audio into ``out`` as a
    float WAV: memory stays that of a few blocks whatever the file's length."""
    with audio.open_audio(path, name) as source:
        measurer = Measurer(source.sample_rate_hz, source.channels)
        step = Preprocessor(source.sample_rate_hz, source.channels, options)
        writer = audio.FloatWavWriter(out, step.channels, step.sample_rate_hz)
        try:
            for block in source.blocks():
                measurer(block)
                writer.write(step(block))
            writer.write(step.flush())
        finally:
            step.resampler.close()
        writer.finish()
        if writer.frames == 0:
            raise audio.AudioDecodeError(
                name,
                f"too short: {source.frames} sample(s) at {source.sample_rate_hz} Hz leave no audio at "
                f"{step.sample_rate_hz} Hz",
            )
        return measurer.stats(source.format, source.subtype), WorkingAudio(
            step.sample_rate_hz, step.channels, writer.frames
        )


def _files_row(result: IngestResult, flow_run_id: str | None) -> dict:
    return {
        "sha256": result.source_sha256,
        "source_uri": result.source_uri,
        "source_name": result.source_name,
        "size_bytes": result.size_bytes,
        **asdict(result.stats),
        "ingest_artifact_uri": result.artifact.uri,
        "flow_run_id": flow_run_id,
    }


def _compute(settings: StoreSettings, source: FetchedSource, options: IngestOptions, run: StageRun) -> IngestResult:
    """Decode, measure, preprocess and write the artifact (streamed), then its catalog rows.

    A source that changes while it is read (a copy still being written) raises :class:`SourceChanging`
    and stores nothing, whatever its decoding said.
    """
    with staged_output(settings, AUDIO_NAME, run=run) as staged:
        try:
            stats, working = ingest_audio(source.path, source.name, options, staged)
        except audio.AudioDecodeError:
            source.check_unchanged(run.input_sha256)
            raise
        source.check_unchanged(run.input_sha256)
        ref = write_artifact(
            settings,
            AUDIO_NAME,
            staged,
            run=run,
            sample_rate_hz=working.sample_rate_hz,
            channels=working.channels,
            frames=working.frames,
        )
    result = IngestResult(source.uri, source.name, source.sha256, source.size_bytes, stats, ref)
    Catalog(shared_store(settings)).append("files", [_files_row(result, run.flow_run_id)])
    return result


def _record_source(result: IngestResult, parameters: dict, catalog: Catalog) -> None:
    """On a cache hit of bytes first seen under another path, add a ``files`` row for this path.

    The ``files`` primary key is (sha256, source_uri), so repeating this row never doubles it.
    """
    source_uri = parameters["source_uri"]
    if source_uri != result.source_uri:
        name = parameters.get("name") or source_name(source_uri)
        catalog.append("files", [_files_row(replace(result, source_uri=source_uri, source_name=name), None)])


INGEST = StageSpec(STAGE, code_version=CODE_VERSION, on_cache_hit=_record_source)


@stage_task(INGEST)
def ingest_file(
    source_uri: str, options: IngestOptions, settings: StoreSettings, name: str | None = None
) -> IngestResult:
    """Ingest one source file into the store as the pipeline's working audio; ``name``: the file's name as
    listed (relative to the folder it was found in; default: its file name)."""
    with fetch_source(source_uri, settings, name) as source:
        return _compute(settings, source, options, current_run())
