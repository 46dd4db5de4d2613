"""A three-stage chain built with the real stage mechanism, for testing it: ingest → gain → levels.

``gain`` is marked as a GPU stage (it holds a ``gpu`` slot when slots are configured) and processes
its audio in batches through :func:`voxflow.tasks.kit.runs.halving_batch_on_oom`; ``FAULTS`` injects failures.
Each stage counts its computations in ``CALLS`` (cache hits never run the function).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from prefect import flow
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from voxflow.flows.environment import Environment, environment
from voxflow.flows.pipelines import FilePipeline, FilesFailed, RunReport, run_files
from voxflow.flows.reporting import Progress
from voxflow.storage.keys import artifact_key
from voxflow.storage.refs import ArtifactRef
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import shared_store
from voxflow.tasks.helpers import audio
from voxflow.tasks.ingest import IngestOptions, IngestResult, ingest_file
from voxflow.tasks.kit.runs import current_run, halving_batch_on_oom
from voxflow.tasks.kit.stage import StageSpec, stage_task

CALLS: Counter[str] = Counter()
FAULTS: Counter[str] = Counter()  # "oom": raise OOM on that many compute calls; "oom_any_batch": even at 1


@dataclass(frozen=True)
class GainOptions:
    gain_db: float = -6.0  # gain applied to the working audio
    batch_size: int = 8  # chunks processed at once
    hold_s: float = 0.0  # sleep before writing (lets tests overlap or kill a running stage)


@dataclass(frozen=True)
class LevelsOptions:
    frame_s: float = 0.5  # RMS frame length


@dataclass(frozen=True)
class ChainOptions:
    ingest: IngestOptions = field(default_factory=IngestOptions)
    gain: GainOptions = field(default_factory=GainOptions)
    levels: LevelsOptions = field(default_factory=LevelsOptions)


@dataclass(frozen=True)
class GainResult:
    artifact: ArtifactRef
    batch_size: int  # the batch that fit in memory

    @property
    def sha256(self) -> str:
        return self.artifact.sha256


@dataclass(frozen=True)
class LevelsResult:
    artifact: ArtifactRef
    mean_db: float


def _out_of_memory() -> Exception:
    import torch

    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def apply_gain(samples: np.ndarray, gain_db: float, batch_size: int, chunk: int = 4096) -> np.ndarray:
    """Scale in batches of ``batch_size`` chunks (raises an injected OOM while ``FAULTS`` says so)."""
    if FAULTS["oom_any_batch"] > 0 or (FAULTS["oom"] > 0 and batch_size > 1):
        FAULTS["oom_any_batch" if FAULTS["oom_any_batch"] > 0 else "oom"] -= 1
        raise _out_of_memory()
    out = np.empty_like(samples)
    step = chunk * batch_size
    for start in range(0, samples.shape[-1], step):
        out[:, start : start + step] = samples[:, start : start + step] * np.float32(10 ** (gain_db / 20))
    return out


@stage_task(StageSpec("gain", code_version="1", gpu=True))
def gain(previous: IngestResult, options: GainOptions, settings: StoreSettings) -> GainResult:
    CALLS["gain"] += 1
    store = shared_store(settings)
    samples, rate = audio.decode_wav_bytes(store.get_bytes(store.key_of(previous.artifact.uri)))
    used: list[int] = []

    def compute(batch_size: int) -> np.ndarray:
        used.append(batch_size)
        return apply_gain(samples, options.gain_db, batch_size)

    louder = halving_batch_on_oom(compute, options.batch_size)
    time.sleep(options.hold_s)
    marker = os.environ.get("VOXFLOW_TEST_STAGE_STARTED")
    if marker:
        open(marker, "a").close()
        time.sleep(float(os.environ.get("VOXFLOW_TEST_STAGE_HOLD_S", "0")))
    run = current_run()
    info = store.put_bytes(
        artifact_key(previous.sha256, "gain", run.params_hash, "audio.wav"), audio.encode_wav(louder, rate)
    )
    return GainResult(ArtifactRef(info.uri, info.sha256, info.size_bytes, rate, *louder.shape), used[-1])


@stage_task(StageSpec("levels", code_version="1"))
def levels(previous: GainResult, options: LevelsOptions, settings: StoreSettings) -> LevelsResult:
    CALLS["levels"] += 1
    store = shared_store(settings)
    samples, rate = audio.decode_wav_bytes(store.get_bytes(store.key_of(previous.artifact.uri)))
    frame = max(int(options.frame_s * rate), 1)
    frames = samples[0, : samples.shape[-1] // frame * frame].reshape(-1, frame)
    rms_db = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)) + 1e-12)
    body = json.dumps({"frame_s": options.frame_s, "rms_db": rms_db.round(3).tolist()}).encode()
    info = store.put_bytes(artifact_key(previous.sha256, "levels", current_run().params_hash, "levels.json"), body)
    return LevelsResult(ArtifactRef(info.uri, info.sha256, info.size_bytes), float(rms_db.mean()))


def submit_chain(source_uri: str, options: ChainOptions, env: Environment) -> dict[str, PrefectFuture]:
    first = env.stage(ingest_file).submit(source_uri, options.ingest, env.settings)
    second = env.stage(gain).submit(first, options.gain, env.settings)
    return {"ingest": first, "gain": second, "levels": env.stage(levels).submit(second, options.levels, env.settings)}


CHAIN = FilePipeline("test-chain", ("ingest", "gain", "levels"), ChainOptions, submit_chain, "test:1")


WAITING_BARRIER: list[threading.Barrier] = []  # set by a test: files that must be waiting at the same time


def submit_waiting_chain(source_uri: str, options: ChainOptions, env: Environment) -> dict[str, PrefectFuture]:
    """The chain, waiting on each stage before the next (as voice_replace does) and, in between, for the
    other files at ``WAITING_BARRIER`` (a run that took the files one by one breaks it)."""
    futures = {"ingest": env.stage(ingest_file).submit(source_uri, options.ingest, env.settings)}
    futures["ingest"].result()
    WAITING_BARRIER[0].wait()
    futures["gain"] = env.stage(gain).submit(futures["ingest"], options.gain, env.settings)
    futures["levels"] = env.stage(levels).submit(futures["gain"].result(), options.levels, env.settings)
    futures["levels"].result()
    return futures


WAITING_CHAIN = FilePipeline(
    "test-waiting-chain", ("ingest", "gain", "levels"), ChainOptions, submit_waiting_chain, "test:1", waits=True
)


@flow(name="test-chain", task_runner=ThreadPoolTaskRunner(max_workers=16))
def chain(
    paths: list[str], options: ChainOptions = ChainOptions(), parallel_files: int = 2, waiting: bool = False
) -> RunReport:
    """ingest → gain → levels on each file (``waiting``: each stage waited on before the next)."""
    env = environment(None)
    from voxflow.storage.sources import expand_sources

    sources = expand_sources(paths, env.settings, audio.SUPPORTED_FORMATS)
    pipeline = WAITING_CHAIN if waiting else CHAIN
    report = RunReport(run_files(pipeline, sources, options, env, parallel_files, Progress("test-chain", len(sources))))
    if report.failed:
        raise FilesFailed(report)
    return report
