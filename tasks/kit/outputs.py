"""Reading a stage's input audio and writing its outputs: objects on the store plus ``artifacts`` rows.

Every output lands at ``artifacts/<input sha[:2]>/<input sha>/<stage>/<params hash>/<name>``, taken
from the stage run being recorded (:func:`voxflow.tasks.kit.runs.current_run`), so the same input with the same
options always writes the same keys.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np

from voxflow.storage.catalog import Catalog
from voxflow.storage.keys import artifact_key
from voxflow.storage.refs import ArtifactRef
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import ObjectInfo, shared_store
from voxflow.tasks.helpers import audio
from voxflow.tasks.kit.runs import StageRun, current_run

MEDIA_TYPES = {
    "wav": "audio/wav",
    "rttm": "text/plain",
    "srt": "application/x-subrip",
    "vtt": "text/vtt",
    "json": "application/json",
    "npy": "application/x-npy",
    "parquet": "application/vnd.apache.parquet",
}


def audio_input(value: Any) -> ArtifactRef:
    """The audio a stage reads: an :class:`ArtifactRef`, or a previous stage's result's ``artifact``."""
    if isinstance(value, ArtifactRef):
        return value
    ref = getattr(value, "artifact", None)
    if not isinstance(ref, ArtifactRef):
        raise TypeError(f"expected audio (an ArtifactRef or a stage result with .artifact), got {type(value).__name__}")
    return ref


def read_audio(ref: ArtifactRef, settings: StoreSettings) -> tuple[np.ndarray, int]:
    """The ``(channels, samples)`` float32 samples and rate of a stored WAV (sha256 verified)."""
    return audio.decode_wav_bytes(read_bytes(ref, settings))


def read_bytes(ref: ArtifactRef, settings: StoreSettings) -> bytes:
    """The bytes of a stored artifact (sha256 verified)."""
    store = shared_store(settings)
    key = store.key_of(ref.uri)
    if key is None:
        raise ValueError(f"{ref.uri} is not on the configured store")
    return store.get_bytes(key, ref.sha256)


def _output_key(run: StageRun, name: str) -> str:
    return artifact_key(run.input_sha256 or "", run.stage, run.params_hash, name)


def write_artifact(
    settings: StoreSettings,
    name: str,
    data: bytes | BinaryIO,
    *,
    run: StageRun | None = None,
    sample_rate_hz: int | None = None,
    channels: int | None = None,
    frames: int | None = None,
) -> ArtifactRef:
    """Store one output of the current stage run and append its ``artifacts`` row: bytes, or a file written
    into :func:`staged_output` (streamed, never read whole)."""
    run = run or current_run()
    key, store = _output_key(run, name), shared_store(settings)
    if isinstance(data, bytes):
        info = store.put_bytes(key, data)
    else:
        data.flush()
        info = store.put_file(key, data.name)
    return _record(settings, run, name, key, info, sample_rate_hz, channels, frames)


@contextlib.contextmanager
def staged_output(settings: StoreSettings, name: str, *, run: StageRun | None = None) -> Iterator[BinaryIO]:
    """A local temporary file to write a large output into piece by piece; store it with :func:`write_artifact`
    inside the block (it is removed on leaving, and by the next run if this process is killed)."""
    run = run or current_run()
    with shared_store(settings).staged(_output_key(run, name)) as f:
        yield f


def _record(
    settings: StoreSettings,
    run: StageRun,
    name: str,
    key: str,
    info: ObjectInfo,
    sample_rate_hz: int | None,
    channels: int | None,
    frames: int | None,
) -> ArtifactRef:
    ref = ArtifactRef(info.uri, info.sha256, info.size_bytes, sample_rate_hz, channels, frames)
    Catalog(shared_store(settings)).append(
        "artifacts",
        [
            {
                "uri": ref.uri,
                "key": key,
                "sha256": ref.sha256,
                "size_bytes": ref.size_bytes,
                "input_sha256": run.input_sha256,
                "stage": run.stage,
                "params_hash": run.params_hash,
                "name": name,
                "media_type": MEDIA_TYPES.get(name.rsplit(".", 1)[-1], "application/octet-stream"),
                "sample_rate_hz": sample_rate_hz,
                "channels": channels,
                "frames": frames,
                "duration_s": ref.duration_s,
                "flow_run_id": run.flow_run_id,
                "task_run_id": run.task_run_id,
            }
        ],
    )
    return ref


def write_audio(
    settings: StoreSettings, name: str, samples: np.ndarray, sample_rate_hz: int, *, run: StageRun | None = None
) -> ArtifactRef:
    """Store ``(channels, samples)`` audio as a float WAV output of the current stage run."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[None]
    data = audio.encode_wav(samples, sample_rate_hz)
    return write_artifact(
        settings, name, data, run=run, sample_rate_hz=sample_rate_hz, channels=samples.shape[0], frames=samples.shape[1]
    )


def source_sha256_of(value: Any) -> str:
    """The sha256 of the source file a stage input descends from (its own sha256 when unknown)."""
    sha = getattr(value, "source_sha256", None)
    return sha if isinstance(sha, str) else audio_input(value).sha256
