"""``voxflow ingest-folder`` killed with SIGKILL at seeded random points, then run again, round after round.

Each round drops new files into the folder, starts the command, kills it (SIGKILL to the command only,
as a timeout or the out-of-memory killer would) at a random moment after its first file started, then
runs it again to the end. After every round: every file is in the catalog exactly once (raw Delta rows,
not a de-duplicated view), each has one ``processed`` row, nothing half-written is left in the store or
the staging folders, no lock file is left, and no process of the killed command outlives it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.synth import tone_and_noise, write_audio
from voxflow.storage.catalog import Catalog
from voxflow.storage.store import LocalStore

pytestmark = pytest.mark.slow
ROUNDS = 10
FILES_PER_ROUND = 4
SEED = 16
KILL_WITHIN_S = 3.0  # after the first file started
ROUND_TIMEOUT_S = 120


def _voxflow(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VOXFLOW_", "AWS_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),  # the ephemeral API: its database outlives each command
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        VOXFLOW_HOME=str(tmp_path / "home"),
        VOXFLOW_STORAGE=str(tmp_path / "store"),
    )
    command = [str(Path(sys.executable).with_name("voxflow")), *args]
    log = open(tmp_path / "commands.log", "a")  # noqa: SIM115 (closed with the process's lifetime)
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)


def _started_work(tmp_path: Path) -> bool:
    """Whether the command began a file: a stage lock or a staged write exists."""
    locks, staging = tmp_path / "home" / "locks", tmp_path / "store" / ".tmp-staging"
    return staging.is_dir() or (locks.is_dir() and any(locks.glob("*.lock")))


def _raw_rows(catalog: Catalog, table: str) -> list[dict]:
    """Every row the table's current Delta version holds (a doubled row would show here)."""
    return catalog.dataset(table).to_table().to_pylist()


def test_sigkill_at_random_points_then_rerun_processes_every_file_exactly_once(tmp_path):
    rng = random.Random(SEED)
    folder = tmp_path / "inbox"
    folder.mkdir()
    killed_at = []
    for round_ in range(ROUNDS):
        for i in range(FILES_PER_ROUND):
            seconds = rng.uniform(4.0, 12.0)
            write_audio(
                folder / f"r{round_:02d}-{i}.flac", tone_and_noise(2, 44100, seconds, seed=round_ * 10 + i), 44100
            )

        command = _voxflow(tmp_path, "ingest-folder", str(folder), "--jobs", "2")
        deadline = time.monotonic() + ROUND_TIMEOUT_S
        while not _started_work(tmp_path) and command.poll() is None:
            assert time.monotonic() < deadline, "the command never started a file"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, KILL_WITHIN_S))
        family = psutil.Process(command.pid).children(recursive=True) if command.poll() is None else []
        killed_at.append(command.poll() is None)
        command.send_signal(signal.SIGKILL)
        command.wait()
        _, alive = psutil.wait_procs(family, timeout=20)
        for process in alive:
            process.kill()
        assert not alive, f"round {round_}: processes outlived the killed command: {[p.cmdline() for p in alive]}"

        rerun = _voxflow(tmp_path, "ingest-folder", str(folder), "--jobs", "2")
        assert rerun.wait(timeout=ROUND_TIMEOUT_S) == 0, (tmp_path / "commands.log").read_text()[-3000:]

        files = sorted(folder.iterdir())
        catalog = Catalog(LocalStore(tmp_path / "store"))
        rows = _raw_rows(catalog, "files")
        assert sorted(r["source_name"] for r in rows) == [f.name for f in files], f"round {round_}"
        processed = _raw_rows(catalog, "processed")
        assert sorted(Path(r["source_uri"]).name for r in processed) == [f.name for f in files]
        assert {r["status"] for r in processed} <= {"done", "cached"}
        artifacts = _raw_rows(catalog, "artifacts")
        assert len(artifacts) == len(files) == len({r["key"] for r in artifacts})
        leftovers = [p for p in (tmp_path / "store").rglob("*") if p.name.startswith(".tmp-") and p.is_file()]
        leftovers += list((tmp_path / "home").rglob("*.partial")) + list((tmp_path / "home").rglob("*.lock"))
        assert not leftovers, f"round {round_}: left behind: {leftovers}"
    assert sum(killed_at) >= ROUNDS // 2, "most kills must land while the command still runs"
