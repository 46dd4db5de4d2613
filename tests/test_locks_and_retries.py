"""Stage locks, transient-failure classification and the OOM batch halving, without a flow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from voxflow.storage.errors import StorageError, TransientStorageError
from voxflow.tasks.kit.locks import FileLockManager
from voxflow.tasks.kit.runs import halving_batch_on_oom, is_transient


def test_lock_excludes_other_holders_until_released(tmp_path):
    locks = FileLockManager(tmp_path)
    assert locks.acquire_lock("k", holder="a")
    assert locks.acquire_lock("k", holder="a")  # re-entrant for its holder
    assert locks.is_locked("k") and locks.is_lock_holder("k", "a") and not locks.is_lock_holder("k", "b")
    assert not FileLockManager(tmp_path).acquire_lock("k", holder="b", acquire_timeout=0.2)
    got = []
    waiter = threading.Thread(target=lambda: got.append(FileLockManager(tmp_path).acquire_lock("k", "b", 10)))
    waiter.start()
    time.sleep(0.3)
    assert got == []
    locks.release_lock("k", holder="a")
    waiter.join(5)
    assert got == [True]
    with pytest.raises(ValueError, match="no lock held by a"):
        locks.release_lock("k", holder="a")


def test_lock_of_a_killed_process_is_free_at_once(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from voxflow.tasks.kit.locks import FileLockManager; "
            f"FileLockManager({str(tmp_path)!r}).acquire_lock('k', 'dead'); print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    assert holder.stdout.readline().strip() == "held"
    assert FileLockManager(tmp_path).is_locked("k")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "k.lock").exists()  # the file stays; the kernel released its lock
    assert FileLockManager(tmp_path).remove_stale() == 1  # what the next run does first
    assert not (tmp_path / "k.lock").exists()
    locks = FileLockManager(tmp_path)
    assert locks.acquire_lock("k", holder="next", acquire_timeout=1)
    assert FileLockManager(tmp_path).remove_stale() == 0 and (tmp_path / "k.lock").exists()  # held: kept
    locks.release_lock("k", holder="next")
    assert list(tmp_path.iterdir()) == []  # no lock file outlives its use (before: one per cache key, forever)


def test_a_lock_file_removed_by_its_releaser_is_never_shared(tmp_path):
    """Two managers racing on one key while the holder releases (and removes the file): one wins at a time."""
    first, second = FileLockManager(tmp_path), FileLockManager(tmp_path)
    assert first.acquire_lock("k", "a")
    got = []
    waiter = threading.Thread(target=lambda: got.append(second.acquire_lock("k", "b", acquire_timeout=5)))
    waiter.start()
    time.sleep(0.2)
    assert not got and first.is_locked("k")
    first.release_lock("k", "a")
    waiter.join()
    assert got == [True] and second.is_lock_holder("k", "b")
    assert not FileLockManager(tmp_path).acquire_lock("k", "c", acquire_timeout=0.2)  # b holds it, file or not
    second.release_lock("k", "b")
    assert not first.is_locked("k") and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (TransientStorageError("s3://b/k", "cannot write: 503 SlowDown"), True),
        (ConnectionResetError("connection reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (torch.cuda.OutOfMemoryError("CUDA out of memory"), True),
        (StorageError("s3://b/k", "cannot read: 403 AccessDenied"), False),
        (ValueError("sample_rate_hz must be between 8000 and 192000"), False),
        (FileNotFoundError("no model folder"), False),
        (RuntimeError("a bug"), False),
    ],
)
def test_transient_errors_are_those_that_can_heal(error, transient):
    assert is_transient(error) is transient


def test_a_transient_cause_makes_the_wrapping_error_transient():
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError as e:
            raise RuntimeError("download failed") from e
    except RuntimeError as wrapped:
        assert is_transient(wrapped)


def test_out_of_memory_halves_the_batch_down_to_one_then_raises():
    tried = []

    def compute(batch_size: int) -> int:
        tried.append(batch_size)
        if batch_size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return batch_size

    assert halving_batch_on_oom(compute, 16) == 2 and tried == [16, 8, 4, 2]

    def never_fits(batch_size: int) -> int:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        halving_batch_on_oom(never_fits, 4)

    def bug(batch_size: int) -> int:
        raise KeyError("not an OOM")

    with pytest.raises(KeyError):
        halving_batch_on_oom(bug, 8)
