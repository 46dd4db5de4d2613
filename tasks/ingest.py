"""Ingest: decode any audio file, measure it, and store it as a 16 kHz mono float WAV.

Writes the artifact ``artifacts/<sha[:2]>/<sha>/ingest/<params>/audio.wav``, then the ``artifacts``
and ``files`` rows, then ``manifest.json`` beside the artifact. The manifest is written last, so its
presence means the stage finished: a later run on the same bytes with the same options reads it
instead of decoding again (a cache hit), and recomputes when the audio artifact has disappeared.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Annotated, Literal, get_args

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from pydantic import Field

from storage.catalog import Catalog
from storage.errors import ObjectNotFound
from storage.keys import artifact_key
from storage.refs import ArtifactRef
from storage.settings import StoreSettings
from storage.sources import FetchedSource, fetch_source
from storage.store import ArtifactStore, open_store
from tasks import audio
from tasks.caching import params_hash, stage_cache_key
from tasks.runs import StageRun, record_stage_run, retry_transient

STAGE = "ingest"
CODE_VERSION = "1"
AUDIO_NAME = "audio.wav"
MANIFEST_NAME = "manifest.json"


ResampleQuality = Literal["QQ", "LQ", "MQ", "HQ", "VHQ"]


@dataclass(frozen=True)
class IngestOptions:
    """How an input file becomes the pipeline's working audio."""

    sample_rate_hz: Annotated[int, Field(ge=8_000, le=192_000, description="Sample rate of the written artifact.")] = 16_000
    mono: Annotated[bool, Field(description="Downmix all channels to one (their mean).")] = True
    resample_quality: Annotated[ResampleQuality, Field(description="soxr resampling quality.")] = "VHQ"

    def __post_init__(self) -> None:
        if not 8_000 <= self.sample_rate_hz <= 192_000:
            raise ValueError(f"sample_rate_hz must be between 8000 and 192000, got {self.sample_rate_hz}")
        if self.resample_quality not in get_args(ResampleQuality):
            raise ValueError(f"resample_quality must be one of {get_args(ResampleQuality)}, got {self.resample_quality!r}")


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
    """What the ingest task returns: the source, its stats and the reference to the working audio."""

    source_uri: str
    source_name: str
    source_sha256: str
    size_bytes: int
    stats: SourceStats
    artifact: ArtifactRef
    cache_hit: bool


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
    """The working audio: optionally downmixed, resampled to ``options.sample_rate_hz``, float32."""
    mixed = audio.downmix(samples) if options.mono else samples
    return audio.resample(mixed, sample_rate_hz, options.sample_rate_hz, options.resample_quality)


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


def _artifact_row(ref: ArtifactRef, key: str, input_sha256: str, params: str, run: StageRun) -> dict:
    return {
        "uri": ref.uri, "key": key, "sha256": ref.sha256, "size_bytes": ref.size_bytes,
        "input_sha256": input_sha256, "stage": STAGE, "params_hash": params, "name": AUDIO_NAME,
        "media_type": "audio/wav", "sample_rate_hz": ref.sample_rate_hz, "channels": ref.channels,
        "frames": ref.frames, "duration_s": ref.duration_s,
        "flow_run_id": run.flow_run_id, "task_run_id": run.task_run_id,
    }  # fmt: skip


def _cached(store: ArtifactStore, source: FetchedSource, params: str) -> IngestResult | None:
    """The earlier result for these bytes and options, if its manifest and audio are still stored."""
    try:
        manifest = json.loads(store.get_bytes(artifact_key(source.sha256, STAGE, params, MANIFEST_NAME)))
    except ObjectNotFound:
        return None
    artifact = ArtifactRef(**manifest["artifact"])
    if not store.exists(artifact_key(source.sha256, STAGE, params, AUDIO_NAME)):
        return None
    stats = SourceStats(**manifest["stats"])
    return IngestResult(source.uri, source.name, source.sha256, source.size_bytes, stats, artifact, True)


def _compute(store: ArtifactStore, catalog: Catalog, source: FetchedSource, options: IngestOptions,
             params: str, run: StageRun) -> IngestResult:  # fmt: skip
    """Decode, measure, preprocess and write the artifact, its catalog rows and then the manifest."""
    decoded = audio.decode_file(source.path, source.name)
    stats = measure(decoded)
    working = preprocess(decoded.samples, decoded.sample_rate_hz, options)
    key = artifact_key(source.sha256, STAGE, params, AUDIO_NAME)
    info = store.put_bytes(key, audio.encode_wav(working, options.sample_rate_hz))
    ref = ArtifactRef(info.uri, info.sha256, info.size_bytes, options.sample_rate_hz, *working.shape)
    result = IngestResult(source.uri, source.name, source.sha256, source.size_bytes, stats, ref, False)
    catalog.append("artifacts", [_artifact_row(ref, key, source.sha256, params, run)])
    catalog.append("files", [_files_row(result, run.flow_run_id)])
    manifest = {"stats": asdict(stats), "artifact": asdict(ref)}
    store.put_bytes(artifact_key(source.sha256, STAGE, params, MANIFEST_NAME), json.dumps(manifest).encode())
    return result


def _record_source(catalog: Catalog, result: IngestResult, run: StageRun) -> None:
    """On a cache hit, add a ``files`` row only when these bytes arrive from a new source URI."""
    import pyarrow.dataset as ds

    known = catalog.dataset("files").to_table(
        columns=["source_uri"], filter=ds.field("sha256") == result.source_sha256
    )
    if result.source_uri not in known.column("source_uri").to_pylist():
        catalog.append("files", [_files_row(result, run.flow_run_id)])


@task(
    name="ingest",
    cache_policy=NO_CACHE,  # the stage caches on the store itself (manifest beside the artifact)
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=0.5),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
)
def ingest_file(source_uri: str, options: IngestOptions, settings: StoreSettings) -> IngestResult:
    """Ingest one file into the store; a file already ingested with these options is not decoded."""
    store = open_store(settings)
    catalog = Catalog(store)
    params = params_hash(options, code_version=CODE_VERSION)
    with fetch_source(source_uri, settings) as source:
        run = StageRun(STAGE, source.sha256, params, stage_cache_key(source.sha256, STAGE, params))
        with record_stage_run(catalog, run):
            result = _cached(store, source, params)
            run.cache_hit = result is not None
            if result is not None:
                _record_source(catalog, result, run)
                return result
            return _compute(store, catalog, source, options, params, run)
