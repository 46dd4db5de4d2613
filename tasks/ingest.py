"""Ingest: decode any audio file, measure it, and store it as a 16 kHz mono float WAV.

Writes the artifact ``artifacts/<sha[:2]>/<sha>/ingest/<params>/audio.wav``, then the ``artifacts``
and ``files`` rows. Caching, retries and the ``stage_runs`` rows come from :mod:`voxflow.tasks.kit.stage`: a
later run on the same bytes with the same options is a cache hit that decodes nothing (and records
the source path when the bytes arrive under a new one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Annotated, Literal

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
from voxflow.tasks.kit.outputs import write_audio
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


def measure(decoded: audio.DecodedAudio) -> SourceStats:
    """Format, shape, integrated loudness and peak of decoded audio."""
    peak = audio.peak(decoded.samples)
    return SourceStats(
        format=decoded.format,
        subtype=decoded.subtype,
        sample_rate_hz=decoded.sample_rate_hz,
        channels=decoded.channels,
        frames=decoded.frames,
        duration_s=decoded.duration_s,
        integrated_lufs=audio.integrated_loudness(decoded.samples, decoded.sample_rate_hz),
        peak=peak,
        peak_dbfs=audio.to_dbfs(peak),
    )


def preprocess(samples: np.ndarray, sample_rate_hz: int, options: IngestOptions) -> np.ndarray:
    """The working audio: optionally downmixed, resampled to ``options.sample_rate_hz`` (if set), float32."""
    mixed = audio.downmix(samples) if options.mono else samples
    return audio.resample(mixed, sample_rate_hz, options.sample_rate_hz or sample_rate_hz, options.resample_quality)


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
    """Decode, measure, preprocess and write the artifact, then its catalog rows."""
    decoded = audio.decode_file(source.path, source.name)
    stats = measure(decoded)
    working = preprocess(decoded.samples, decoded.sample_rate_hz, options)
    ref = write_audio(settings, AUDIO_NAME, working, options.sample_rate_hz or decoded.sample_rate_hz, run=run)
    result = IngestResult(source.uri, source.name, source.sha256, source.size_bytes, stats, ref)
    Catalog(shared_store(settings)).append("files", [_files_row(result, run.flow_run_id)])
    return result


def _record_source(result: IngestResult, parameters: dict, catalog: Catalog) -> None:
    """On a cache hit of bytes first seen under another path, add a ``files`` row for this path.

    The ``files`` primary key is (sha256, source_uri), so repeating this row never doubles it.
    """
    source_uri = parameters["source_uri"]
    if source_uri != result.source_uri:
        moved = replace(result, source_uri=source_uri, source_name=source_name(source_uri))
        catalog.append("files", [_files_row(moved, None)])


INGEST = StageSpec(STAGE, code_version=CODE_VERSION, on_cache_hit=_record_source)


@stage_task(INGEST)
def ingest_file(source_uri: str, options: IngestOptions, settings: StoreSettings) -> IngestResult:
    """Ingest one source file into the store as the pipeline's working audio."""
    with fetch_source(source_uri, settings) as source:
        return _compute(settings, source, options, current_run())
