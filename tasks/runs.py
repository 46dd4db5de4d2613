"""Recording stage runs and deciding which failures are worth a retry."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator

from storage.catalog import Catalog
from storage.errors import TransientStorageError

ERROR_MESSAGE_CHARS = 2000
TRANSIENT_ERRORS = (TransientStorageError, ConnectionError, TimeoutError)


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _prefect_ids() -> tuple[str | None, str | None, int]:
    """Flow run id, task run id and attempt number when inside a Prefect run."""
    from prefect.runtime import flow_run, task_run

    flow_id, task_id = flow_run.get_id(), task_run.get_id()
    attempt = task_run.get_run_count() if task_id else 1
    return flow_id, task_id, max(int(attempt or 1), 1)


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


@contextlib.contextmanager
def record_stage_run(catalog: Catalog, run: StageRun) -> Iterator[StageRun]:
    """Time the block and append its ``stage_runs`` row, completed or failed (then re-raise)."""
    flow_id, task_id, attempt = _prefect_ids()
    run.flow_run_id = run.flow_run_id or flow_id
    run.task_run_id = task_id or run.task_run_id
    run.attempt = attempt
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    error: BaseException | None = None
    try:
        yield run
    except BaseException as e:
        error = e
        raise
    finally:
        catalog.append(
            "stage_runs",
            [
                {
                    "flow_run_id": run.flow_run_id,
                    "task_run_id": run.task_run_id,
                    "attempt": run.attempt,
                    "stage": run.stage,
                    "input_sha256": run.input_sha256,
                    "params_hash": run.params_hash,
                    "cache_key": run.cache_key,
                    "status": "failed" if error else "completed",
                    "cache_hit": run.cache_hit,
                    "started_at": started,
                    "ended_at": datetime.now(timezone.utc),
                    "duration_s": time.perf_counter() - clock,
                    "device": run.device,
                    "peak_rss_bytes": _peak_rss_bytes(),
                    "error_class": type(error).__name__ if error else None,
                    "error_message": str(error)[:ERROR_MESSAGE_CHARS] if error else None,
                }
            ],
        )


def retry_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry what can heal (storage 5xx, timeouts), never bad input."""
    try:
        state.result()
    except TRANSIENT_ERRORS:
        return True
    except BaseException:
        return False
    return False
