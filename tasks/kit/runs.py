"""Recording stage runs, and deciding which failures are worth a retry.

Transient failures heal with time or less memory: storage 5xx and throttling, timeouts, connection
resets, CUDA out-of-memory. Everything else (undecodable input, a missing model or token, invalid
options, a bug) is deterministic and fails at once with its own message.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import os
import resource
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from voxflow.storage.catalog import Catalog
from voxflow.storage.errors import TransientStorageError

T = TypeVar("T")
ERROR_MESSAGE_CHARS = 2000
TRANSIENT_ERRORS = (TransientStorageError, ConnectionError, TimeoutError)
TRANSIENT_HTTP_STATUS = {408, 429, 500, 502, 503, 504}
# Transient errors of libraries imported lazily, by module and class name.
TRANSIENT_NAMES = {
    ("torch.cuda", "OutOfMemoryError"),
    ("torch", "OutOfMemoryError"),
    ("requests.exceptions", "ConnectionError"),
    ("requests.exceptions", "Timeout"),
    ("requests.exceptions", "ReadTimeout"),
    ("requests.exceptions", "ConnectTimeout"),
    ("httpx", "TransportError"),
    ("httpx", "TimeoutException"),
    ("botocore.exceptions", "EndpointConnectionError"),
    ("botocore.exceptions", "ConnectionClosedError"),
    ("botocore.exceptions", "ReadTimeoutError"),
}


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _prefect_ids() -> tuple[str | None, str | None, int]:
    """Flow run id, task run id and attempt number when inside a Prefect run."""
    from prefect.runtime import flow_run, task_run

    flow_id, task_id = flow_run.get_id(), task_run.get_id()
    attempt = task_run.get_run_count() if task_id else 1
    return flow_id, task_id, max(int(attempt or 1), 1)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an error is a CUDA (or other accelerator) out-of-memory error."""
    return any(cls.__name__ == "OutOfMemoryError" and cls.__module__.startswith("torch") for cls in type(error).__mro__)


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error``, then the errors it was raised from, up to one raised ``from None`` (which says it is not
    the error it replaced)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``error``, or one it was raised from, is a ``kind``."""
    return any(isinstance(e, kind) for e in causes(error))


def is_transient(error: BaseException) -> bool:
    """Whether an error (or one it was raised from) can heal on a retry."""
    for current in causes(error):
        if isinstance(current, TRANSIENT_ERRORS):
            return True
        if any((cls.__module__, cls.__name__) in TRANSIENT_NAMES for cls in type(current).__mro__):
            return True
        response = getattr(current, "response", None)
        if getattr(response, "status_code", None) in TRANSIENT_HTTP_STATUS:
            return True
    return False


OUR_PACKAGES = frozenset({"voxflow"})  # the top-level package of voxflow's own code


def raised_in(error: BaseException) -> str | None:
    """The top-level package of the code that raised ``error`` (its innermost traceback frame)."""
    tb = error.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__") or "").split(".")[0] or None


def note_failure(error: BaseException, stage: str) -> None:
    """Mark ``error`` with the stage it failed in and, when a library raised it, that library.

    The marks are attributes, so they survive the pickling of a failed task's result; a later
    :func:`failure_reason` turns them into the one line a user sees.
    """
    with contextlib.suppress(AttributeError, TypeError):  # exceptions with __slots__ take no attributes
        if getattr(error, "voxflow_stage", None) is None:
            origin = raised_in(error)
            error.voxflow_stage = stage  # type: ignore[attr-defined]
            error.voxflow_origin = None if origin in OUR_PACKAGES else origin  # type: ignore[attr-defined]


MODEL_STACKS = frozenset(  # top-level modules of the `models` extra
    {"torch", "torchaudio", "whisper", "demucs", "pyannote", "qwen_tts", "denoiser", "silero_vad", "faster_whisper"}
)


def missing_model_stack(error: BaseException) -> str | None:
    """``missing module 'torch'`` when ``error`` is the import of a module of the ``models`` extra."""
    if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] in MODEL_STACKS:
        return f"missing module {error.name!r}"
    return None


def failed_stage(error: BaseException) -> str | None:
    """The stage ``error`` was raised in (see :func:`note_failure`), if known."""
    return getattr(error, "voxflow_stage", None)


def failure_reason(error: BaseException) -> str:
    """One line a user can act on: voxflow's own messages as they are; a library's unexpected error
    said to be one (with where to find the traceback), followed by the library's own text."""
    text = str(error).strip()
    said = text.splitlines()[0] if text else type(error).__name__
    missing = missing_model_stack(error)
    if missing:
        return f"this stage needs the model stacks, which are not installed: pip install 'voxflow[models]' ({missing})"
    if is_out_of_memory(error):
        return f"out of GPU memory even at a batch of one; lower the stage's batch_size or free the GPU ({said})"
    origin = getattr(error, "voxflow_origin", None)
    if is_transient(error):
        return f"{said} (a storage or network failure that outlasted the retries; the next run tries again)"
    if origin is None:
        return said
    return (
        f"unexpected {type(error).__name__} inside {origin} (a bug to report; the task run's log or "
        f"'voxflow -v' shows the traceback): {said}"
    )


def _imported_torch():
    """torch when some code has imported it completely (never importing it here), else None."""
    torch = sys.modules.get("torch")
    if torch is None or getattr(getattr(torch, "__spec__", None), "_initializing", False):
        return None  # not imported, or being imported by another thread right now
    return torch


def free_accelerator_memory() -> None:
    """Drop unreferenced tensors and return cached CUDA memory to the driver."""
    gc.collect()
    torch = _imported_torch()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def halving_batch_on_oom(compute: Callable[[int], T], batch_size: int) -> T:
    """``compute(batch_size)``, retried with half the batch (memory freed) after each out-of-memory.

    At a batch of one the error is raised: it is transient, so the task's retries try again after
    their backoff, when other work may have released the memory.
    """
    while True:
        try:
            return compute(batch_size)
        except Exception as e:
            if not is_out_of_memory(e) or batch_size <= 1:
                raise
        free_accelerator_memory()
        batch_size = max(batch_size // 2, 1)
        current = CURRENT_RUN.get()
        if current is not None:
            current.oom_halvings += 1


def _cuda_peak_start() -> bool:
    torch = _imported_torch()
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return False
    torch.cuda.reset_peak_memory_stats()
    return True


def _cuda_peak_bytes() -> int | None:
    torch = _imported_torch()
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.max_memory_allocated())


@dataclass
class StageRun:
    """One attempt of one stage on one input; the caller sets ``cache_hit``."""

    stage: str
    input_sha256: str | None
    params_hash: str
    cache_key: str | None = None
    device: str = "cpu"
    cache_hit: bool = False
    flow_run_id: str | None = None
    task_run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    attempt: int = 1
    oom_halvings: int = 0  # how often the batch was halved after running out of memory
    file: str | None = None  # the source file it works on, as the run named it (e.g. mic-a/take.wav)
    audio_s: float | None = None  # the duration of the audio it works on


CURRENT_RUN: contextvars.ContextVar[StageRun | None] = contextvars.ContextVar("voxflow_stage_run", default=None)


def current_run() -> StageRun:
    """The stage run being recorded around the calling code."""
    run = CURRENT_RUN.get()
    if run is None:
        raise RuntimeError("not inside a stage run (see voxflow.tasks.kit.stage.stage_task)")
    return run


def stage_run_row(
    run: StageRun,
    *,
    status: str,
    started: datetime,
    ended: datetime,
    duration_s: float,
    peak_cuda_bytes: int | None = None,
    error: BaseException | None = None,
) -> dict:
    """The ``stage_runs`` row of one attempt (or cache hit) of a stage."""
    return {
        "flow_run_id": run.flow_run_id,
        "task_run_id": run.task_run_id,
        "attempt": run.attempt,
        "stage": run.stage,
        "input_sha256": run.input_sha256,
        "params_hash": run.params_hash,
        "cache_key": run.cache_key,
        "status": status,
        "cache_hit": run.cache_hit,
        "started_at": started,
        "ended_at": ended,
        "duration_s": duration_s,
        "device": run.device,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "peak_rss_bytes": _peak_rss_bytes(),
        "peak_cuda_bytes": peak_cuda_bytes,
        "error_class": type(error).__name__ if error else None,
        "error_message": str(error)[:ERROR_MESSAGE_CHARS] if error else None,
        "file": run.file,
        "audio_s": run.audio_s,
    }


@contextlib.contextmanager
def record_stage_run(catalog: Catalog, run: StageRun) -> Iterator[StageRun]:
    """Time the block and append its ``stage_runs`` row, completed or failed (then re-raise)."""
    flow_id, task_id, attempt = _prefect_ids()
    run.flow_run_id = run.flow_run_id or flow_id
    run.task_run_id = task_id or run.task_run_id
    run.attempt = attempt
    started, clock = datetime.now(UTC), time.perf_counter()
    measuring_cuda = _cuda_peak_start()
    token = CURRENT_RUN.set(run)
    error: BaseException | None = None
    try:
        yield run
    except BaseException as e:
        error = e
        raise
    finally:
        CURRENT_RUN.reset(token)
        peak_cuda = _cuda_peak_bytes() if measuring_cuda or run.device.startswith("cuda") else None
        row = stage_run_row(
            run,
            status="failed" if error else "completed",
            started=started,
            ended=datetime.now(UTC),
            duration_s=time.perf_counter() - clock,
            peak_cuda_bytes=peak_cuda,
            error=error,
        )
        catalog.append("stage_runs", [row])


def retry_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry what can heal (storage 5xx, timeouts, OOM), never bad input."""
    try:
        state.result()
    except BaseException as e:
        return is_transient(e)
    return False
