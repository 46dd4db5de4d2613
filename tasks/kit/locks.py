"""Locks that make two concurrent runs of one stage on one input compute it once.

Prefect's ``SERIALIZABLE`` cache isolation takes a lock per cache key before computing and releases
it after the result record is written; a run that finds the key locked waits, then reads the
record. Prefect's own file lock manager writes lock files that never expire, so a process killed
with SIGKILL leaves a lock behind and the next run on that key waits forever. This manager holds an
OS advisory lock (``flock``) on the lock file instead: the kernel releases it when the holder dies,
so a killed run never blocks a later one. A lock file is removed when its lock is released, and the
files killed holders left are removed at the start of the next run (:meth:`FileLockManager.remove_stale`). Locks are per host (processes and threads); runs on
different machines that share an S3 store may both compute a stage, which is harmless because
artifacts are write-once under content-addressed keys.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from voxflow.storage.settings import voxflow_home

POLL_S = 0.05


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


class FileLockManager:
    """A Prefect ``LockManager`` on ``flock``-ed files in ``<VOXFLOW_HOME>/locks`` (or ``directory``)."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._held: dict[str, tuple[str, int]] = {}  # key -> (holder, open file descriptor)
        self._mutex = threading.Lock()

    def __getstate__(self) -> dict:  # sent to other processes (Dask) without the held locks
        return {"directory": self.directory}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"])

    def _path(self, key: str) -> Path:
        directory = self.directory or voxflow_home() / "locks"
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"{key}.lock"

    def _try_lock(self, key: str, create: bool = True) -> int | None:
        """The descriptor of the key's lock file, flocked; None when another holds it (or, with ``create``
        False, when there is no lock file).

        A released lock's file is removed (see :meth:`release_lock`), so a lock is only ours once the path
        still names the file we locked: otherwise a releaser removed it meanwhile, and we try again.
        """
        path = self._path(key)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
            except FileNotFoundError:
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            if _names(path, fd):
                return fd
            os.close(fd)
            if not create:
                return None

    def remove_stale(self) -> int:
        """Remove the lock files no live process holds (left by killed runs); returns how many."""
        directory = self.directory or voxflow_home() / "locks"
        removed = 0
        for path in directory.glob("*.lock") if directory.is_dir() else ():
            with self._mutex:
                if path.stem in self._held:
                    continue
                fd = self._try_lock(path.stem, create=False)
                if fd is not None:
                    path.unlink(missing_ok=True)
                    os.close(fd)
                    removed += 1
        return removed

    def acquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        while True:
            with self._mutex:
                held = self._held.get(key)
                if held is not None and held[0] == holder:
                    return True
                fd = None if held is not None else self._try_lock(key)
                if fd is not None:
                    self._held[key] = (holder, fd)
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)

    async def aacquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        import anyio

        return await anyio.to_thread.run_sync(lambda: self.acquire_lock(key, holder, acquire_timeout))

    def release_lock(self, key: str, holder: str) -> None:
        with self._mutex:
            held = self._held.get(key)
            if held is None or held[0] != holder:
                raise ValueError(f"no lock held by {holder} for key {key}")
            del self._held[key]
            self._path(key).unlink(missing_ok=True)  # while still held: no lock file outlives its use
            os.close(held[1])  # closing the descriptor releases the flock

    def is_locked(self, key: str) -> bool:
        with self._mutex:
            if key in self._held:
                return True
            if not self._path(key).exists():
                return False
            fd = self._try_lock(key, create=False)
            if fd is None:
                return self._path(key).exists()  # held by another, or removed by its releaser meanwhile
            self._path(key).unlink(missing_ok=True)  # a stale file: nobody holds it
            os.close(fd)
            return False

    def is_lock_holder(self, key: str, holder: str) -> bool:
        with self._mutex:
            held = self._held.get(key)
            return held is not None and held[0] == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        import anyio

        return await anyio.to_thread.run_sync(lambda: self.wait_for_lock(key, timeout))
