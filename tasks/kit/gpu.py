"""The GPU guard: a ``gpu`` global concurrency limit, one slot per visible GPU, around GPU stages.

Parallel files then never put two models on one GPU at once, while CPU stages run unguarded. The
slot is taken inside the task body (not as a task tag), so a task waiting out a retry backoff does
not hold the GPU. ``VOXFLOW_GPU_SLOTS`` overrides the count (for example 2 on a large GPU).

Prefect's ephemeral API (no ``PREFECT_API_URL``) never reclaims the slot of a process killed while
holding it: every later GPU stage would wait forever. Each holder therefore leaves a small file
naming its process under ``<VOXFLOW_HOME>/gpu-holders``; before taking a slot, a run frees the slots
that outnumber the live holders. A real Prefect server reclaims such slots itself when their lease
expires (``LEASE_S``).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from voxflow.storage.settings import voxflow_home

GPU_LIMIT = "gpu"
LEASE_S = 60.0
_ensured: set[tuple[str, str]] = set()  # (Prefect API, limit name) pairs known to exist


def gpu_slots() -> int:
    """``VOXFLOW_GPU_SLOTS``, else the number of CUDA devices torch sees (0 without torch or a GPU)."""
    if os.environ.get("VOXFLOW_GPU_SLOTS"):
        return max(int(os.environ["VOXFLOW_GPU_SLOTS"]), 0)
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _api_url() -> str | None:
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def ensure_limit(name: str, slots: int) -> None:
    """Create the global concurrency limit ``name`` with ``slots`` slots unless it exists (an existing one
    is left as its owner set it); once per limit and Prefect API in this process."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    ensured = (_api_url() or "ephemeral", name)
    if ensured in _ensured:
        return
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
    _ensured.add(ensured)


def ensure_gpu_limit(slots: int) -> None:
    """Create the ``gpu`` limit with ``slots`` slots unless it exists."""
    ensure_limit(GPU_LIMIT, slots)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _holder_file() -> Iterator[Path]:
    folder = voxflow_home() / "gpu-holders"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{os.getpid()}-{uuid.uuid4().hex}"
    path.touch()
    try:
        yield folder
    finally:
        path.unlink(missing_ok=True)


def reclaim_leaked_slots(holders: Path) -> int:
    """Free ``gpu`` slots held by dead processes (ephemeral API only); returns how many were freed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    if _api_url() is not None:
        return 0
    live = 0
    for path in holders.iterdir():
        pid = int(path.name.split("-", 1)[0]) if path.name.split("-", 1)[0].isdigit() else -1
        if _alive(pid):
            live += 1
        else:
            path.unlink(missing_ok=True)
    others = max(live - 1, 0)  # every live holder but this one may hold a slot
    with get_client(sync_client=True) as client:
        active = client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots
        if active <= others:
            return 0
        client.update_global_concurrency_limit(GPU_LIMIT, GlobalConcurrencyLimitUpdate(active_slots=others))
    return active - others


@contextlib.contextmanager
def gpu_guard(slots: int | None = None) -> Iterator[bool]:
    """Hold one ``gpu`` slot for the block when GPUs are in use; yields whether a slot is held."""
    from prefect.concurrency.sync import concurrency

    slots = gpu_slots() if slots is None else slots
    if slots == 0:
        yield False
        return
    ensure_gpu_limit(slots)
    with _holder_file() as holders:
        reclaim_leaked_slots(holders)
        with concurrency(GPU_LIMIT, occupy=1, strict=True, lease_duration=LEASE_S):
            yield True
