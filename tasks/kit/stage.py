"""The one way a stage becomes a Prefect task: content cache keys, retries, locks, GPU guard, records.

A stage function takes its input (a source URI, or a reference with a ``sha256`` such as
:class:`~voxflow.storage.refs.ArtifactRef`), a frozen ``options`` dataclass and the ``settings`` of the
store, and returns a small result holding references. :func:`stage_task` turns it into a task whose

* **cache key** is the input's sha256 + stage name + hash of (options, model revision, stage code
  version), so the same bytes with the same options are computed once, whoever computes them;
* **cache records** live on the artifact store (``results/<key>``, see :func:`with_results`), visible
  to every worker; a record whose artifacts have disappeared from the store is dropped before the
  lookup, so the stage recomputes;
* **isolation** is ``SERIALIZABLE`` with :class:`~voxflow.tasks.kit.locks.FileLockManager`: a second run of the
  same key waits for the first and reads its record instead of computing again;
* **retries** (exponential backoff with jitter) happen only for transient failures
  (:func:`~voxflow.tasks.kit.runs.is_transient`); a bad input fails at once;
* **GPU stages** hold a slot of the ``gpu`` concurrency limit while they run (:mod:`voxflow.tasks.kit.gpu`);
* every attempt and every cache hit writes a ``stage_runs`` row.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect import Task, task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff
from prefect.transactions import IsolationLevel

from voxflow.storage.catalog import Catalog
from voxflow.storage.errors import ObjectNotFound
from voxflow.storage.keys import result_record_key, source_name
from voxflow.storage.refs import ArtifactRef
from voxflow.storage.settings import StoreSettings
from voxflow.storage.sources import source_sha256
from voxflow.storage.store import ArtifactStore, shared_store
from voxflow.tasks.kit.caching import params_hash, stage_cache_key
from voxflow.tasks.kit.gpu import gpu_guard
from voxflow.tasks.kit.locks import FileLockManager
from voxflow.tasks.kit.models import random_weight_libraries
from voxflow.tasks.kit.runs import StageRun, note_failure, record_stage_run, retry_transient, stage_run_row

log = logging.getLogger(__name__)

RETRIES = 3
RETRY_BACKOFF_S = 0.5  # first retry after ~0.5 s, then 1 s, 2 s (plus jitter)
RETRY_JITTER = 0.5
HIDDEN_SUMMARY = ("sha256", "rttm")  # summary values a log line leaves out (hash prefixes)

FILE_LABEL: ContextVar[str | None] = ContextVar("voxflow_file_label", default=None)
# called with (file, stage, running) when a stage starts (True) and ends (False) computing in this process
STAGE_LISTENERS: list[Callable[[str | None, str, bool], None]] = []


@contextmanager
def file_label(name: str) -> Iterator[None]:
    """Stage tasks submitted inside name their runs ``<stage> · <name>`` (the file a parallel lane works on)."""
    token = FILE_LABEL.set(name)
    try:
        yield
    finally:
        FILE_LABEL.reset(token)


@dataclass(frozen=True)
class StageSpec:
    """What identifies a stage's outputs besides its input and options."""

    name: str  # stage name, in artifact keys and stage_runs rows
    code_version: str  # bump when the compute changes what it writes
    model_revision: str | None = None  # model id/revision not already named by the options
    gpu: bool = False  # holds a ``gpu`` slot while it runs
    inputs: tuple[str, ...] = ()  # parameters whose content keys the cache; default: the first one
    # called on a cache hit with (result, parameters, catalog), e.g. to record a new source path
    on_cache_hit: Callable[[Any, dict[str, Any], Catalog], None] | None = None


@dataclass(frozen=True)
class StageIdentity:
    """The content identity of one stage run: input sha256, params hash and the cache key."""

    input_sha256: str
    params_hash: str
    cache_key: str


def _sha256_of(value: Any, settings: StoreSettings) -> str:
    if value is None:  # an optional input left out (e.g. no diarization before transcription)
        return "none"
    if isinstance(value, str):
        return source_sha256(value, settings)
    sha = getattr(value, "sha256", None)
    if not isinstance(sha, str):
        raise TypeError(f"a stage input must be a source URI or carry a sha256, got {type(value).__name__}")
    return sha


def identify(spec: StageSpec, parameters: dict[str, Any], input_names: tuple[str, ...]) -> StageIdentity:
    """The identity of a stage run from its parameters (a source input is hashed once per process)."""
    settings: StoreSettings = parameters["settings"]
    shas = [_sha256_of(parameters[name], settings) for name in input_names]
    input_sha = shas[0] if len(shas) == 1 else hashlib.sha256("+".join(shas).encode()).hexdigest()
    params = params_hash(parameters.get("options"), code_version=spec.code_version, model_id=spec.model_revision)
    return StageIdentity(input_sha, params, stage_cache_key(input_sha, spec.name, params))


def artifact_refs(value: Any) -> Iterator[ArtifactRef]:
    """Every :class:`ArtifactRef` inside a result (dataclasses, lists, tuples, dicts)."""
    if isinstance(value, ArtifactRef):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from artifact_refs(getattr(value, f.name))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from artifact_refs(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from artifact_refs(item)


def _missing_artifacts(store: ArtifactStore, record_bytes: bytes) -> list[str]:
    from prefect.results import ResultRecord

    try:
        result = ResultRecord.deserialize(record_bytes).result
    except Exception as e:  # unreadable (e.g. written by an older voxflow): recompute
        return [f"unreadable cache record ({type(e).__name__})"]
    missing = []
    for ref in artifact_refs(result):
        key = store.key_of(ref.uri)
        if key is None or not store.exists(key):
            missing.append(ref.uri)
    return missing


def drop_stale_record(store: ArtifactStore, cache_key: str) -> bool:
    """Delete the cache record of a key when an artifact it references is gone; True if dropped."""
    record_key = result_record_key(cache_key)
    try:
        record_bytes = store.get_bytes(record_key)
    except ObjectNotFound:
        return False
    missing = _missing_artifacts(store, record_bytes)
    if missing:
        log.warning("cache record %s is stale (%s missing): recomputing", cache_key[:12], ", ".join(missing))
        store.delete(record_key)
    return bool(missing)


@dataclass
class StageCachePolicy(CachePolicy):
    """Prefect cache policy of a stage: the content cache key, after dropping a stale record."""

    spec: StageSpec | None = None
    input_names: tuple[str, ...] = ()

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        assert self.spec is not None
        identity = identify(self.spec, inputs, self.input_names)
        if drop_stale_record(shared_store(inputs["settings"]), identity.cache_key) and task_ctx is not None:
            task_ctx.result_store.cache.pop(identity.cache_key, None)
        return identity.cache_key


def _file_label(parameters: dict[str, Any], input_names: tuple[str, ...]) -> str | None:
    """The file a stage run works on: the label it was submitted under, else the name of a source-URI input."""
    label, source = FILE_LABEL.get(), parameters.get(input_names[0])
    return source_name(source) if label is None and isinstance(source, str) else label


def _audio_s(value: Any) -> float | None:
    return next((ref.duration_s for ref in artifact_refs(value) if ref.duration_s), None)


def _file_and_audio(parameters: dict[str, Any], input_names: tuple[str, ...]) -> tuple[str | None, float | None]:
    """What a ``stage_runs`` row says of the input: the file's name and the audio's duration."""
    return _file_label(parameters, input_names), _audio_s([parameters[name] for name in input_names])


def _tell_listeners(file: str | None, stage: str, running: bool) -> None:
    for listener in list(STAGE_LISTENERS):
        listener(file, stage, running)


def _task_run_name(spec: StageSpec, input_names: tuple[str, ...]) -> Callable[..., str]:
    """``transcribe · jfk.flac``: the stage and the file it runs on, so the Prefect UI tells parallel lanes apart."""

    def name(parameters: dict[str, Any]) -> str:
        label = _file_label(parameters, input_names)
        return f"{spec.name} · {label}" if label else spec.name

    return name


def _log_computed(spec: StageSpec, parameters: dict[str, Any], result: Any, elapsed_s: float, device: str) -> None:
    """One line a user reads in the run's logs: the stage, the file, the time (× real time), the device and
    what the result says (language, speakers, ...). Nothing outside a task run (a stage function called as is)."""
    context = TaskRunContext.get()
    if context is None:
        return
    facts = [f"{elapsed_s:.1f} s"]
    audio_s = _audio_s(parameters)
    if audio_s:
        facts.append(f"{audio_s:.1f} s of audio, {audio_s / max(elapsed_s, 1e-6):.1f}× real time")
    facts.append(f"on {device}")
    model = getattr(parameters.get("options"), "model", None) or spec.model_revision
    if model:
        facts.append(f"model {model}")
    summary = getattr(result, "summary", None)
    if callable(summary):
        facts += [f"{k} {v}" for k, v in summary().items() if k not in HIDDEN_SUMMARY and v not in (None, "")]
    logger = get_run_logger()
    logger.info("%s: %s", context.task_run.name, ", ".join(facts))
    models = parameters.get("models")
    randoms = random_weight_libraries(models) if models is not None else []
    if randoms:
        logger.warning("random-weight test models in %s: this output is noise", ", ".join(randoms))


class _QuietHook(logging.Filter):
    """Drop Prefect's two lines around :func:`record_cache_hit` ("Running hook ... in response to entering
    state 'Completed'") on every stage run: it does nothing but on a cache hit, and then says so itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "'record_cache_hit'" not in record.getMessage()


logging.getLogger("prefect.task_runs").addFilter(_QuietHook())


def _record_cache_hit(spec: StageSpec, input_names: tuple[str, ...]) -> Callable:
    def record_cache_hit(task_: Task, task_run: Any, state: Any) -> None:
        if state.name != "Cached":  # a computed run: its row was written as it ran
            return
        context = TaskRunContext.get()
        # the parameters as submitted: upstream results may still be (finished) futures
        parameters = {k: v.result() if isinstance(v, PrefectFuture) else v for k, v in context.parameters.items()}
        identity = identify(spec, parameters, input_names)
        file, audio_s = _file_and_audio(parameters, input_names)
        run = StageRun(
            spec.name,
            identity.input_sha256,
            identity.params_hash,
            identity.cache_key,
            cache_hit=True,
            flow_run_id=str(task_run.flow_run_id) if task_run.flow_run_id else None,
            task_run_id=str(task_run.id),
            attempt=max(task_run.run_count, 1),
            file=file,
            audio_s=audio_s or _audio_s(state.result()),
        )
        get_run_logger().info("%s: cached (computed before, key %s)", task_run.name, identity.cache_key[:12])
        now = datetime.now(UTC)
        catalog = Catalog(shared_store(parameters["settings"]))
        catalog.append("stage_runs", [stage_run_row(run, status="completed", started=now, ended=now, duration_s=0.0)])
        if spec.on_cache_hit is not None:
            spec.on_cache_hit(state.result(), parameters, catalog)

    return record_cache_hit


def stage_task(spec: StageSpec, *, retries: int = RETRIES, lock_manager: FileLockManager | None = None) -> Callable:
    """Decorator: make a stage function ``fn(input, options, settings, ...)`` a cached, retrying task."""

    def decorate(fn: Callable) -> Task:
        signature = inspect.signature(fn)
        names = list(signature.parameters)
        if "settings" not in names:
            raise TypeError(f"stage {spec.name!r}: the function needs a 'settings' parameter")
        input_names = spec.inputs or (names[0],)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            parameters = signature.bind(*args, **kwargs).arguments
            identity = identify(spec, parameters, input_names)
            catalog = Catalog(shared_store(parameters["settings"]))
            stage_run = StageRun(spec.name, identity.input_sha256, identity.params_hash, identity.cache_key)
            stage_run.file, stage_run.audio_s = _file_and_audio(parameters, input_names)
            models = parameters.get("models")  # a model stage's ModelSettings: the device its row records
            if models is not None:
                stage_run.device = models.torch_device()
            started = time.perf_counter()
            _tell_listeners(stage_run.file, spec.name, True)
            try:
                with record_stage_run(catalog, stage_run), gpu_guard(None if spec.gpu else 0):
                    result = fn(*args, **kwargs)
                    stage_run.audio_s = stage_run.audio_s or _audio_s(result)  # ingest: known once decoded
            except Exception as e:
                note_failure(e, spec.name)  # the stage and the library that raised it, for the user's one line
                raise
            finally:
                _tell_listeners(stage_run.file, spec.name, False)
            _log_computed(spec, parameters, result, time.perf_counter() - started, stage_run.device)
            return result

        policy = StageCachePolicy(
            spec=spec,
            input_names=input_names,
            isolation_level=IsolationLevel.SERIALIZABLE,
            lock_manager=lock_manager or FileLockManager(),
        )
        return task(
            name=spec.name,
            task_run_name=_task_run_name(spec, input_names),
            cache_policy=policy,
            retries=retries,
            retry_delay_seconds=exponential_backoff(backoff_factor=RETRY_BACKOFF_S),
            retry_jitter_factor=RETRY_JITTER,
            retry_condition_fn=retry_transient,
            on_completion=[_record_cache_hit(spec, input_names)],
        )(run)

    return decorate


def with_results(stage: Task, result_storage: Any) -> Task:
    """The stage task with its cache records on ``result_storage`` (a saved result-storage Block); inside
    :func:`file_label`, named after the file too, so that a run which never starts (its upstream failed) is
    ``transcribe · broken.wav-3f2`` in the UI, not ``transcribe-3f2``."""
    label = FILE_LABEL.get()
    named = {"name": f"{stage.name} · {label}"} if label else {}
    return stage.with_options(result_storage=result_storage, **named)
