"""Load: ``voxflow ingest-folder`` over 200 generated files, 4 at a time, against a Prefect server on PostgreSQL.

Every file is accounted for exactly once, the command's memory stays bounded, and the time per file does not
grow with the number of files done (the slope is printed and written to ``load.json`` beside the inputs).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests import servers
from tests.synth import tone_and_noise, write_audio
from voxflow.storage.catalog import Catalog
from voxflow.storage.store import LocalStore

pytestmark = pytest.mark.slow
FILES = 200
PARALLEL = 4
PEAK_RSS_BOUND = 2 << 30  # the command with its threads; a leak per file would pass it long before 200 files


class PeakRss:
    """The largest resident memory of a process and its children, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(pid,), daemon=True)
        self._thread.start()

    def _sample(self, pid: int) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(pid)
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            time.sleep(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def test_200_files_four_at_a_time_on_postgresql(tmp_path):
    if servers.postgres_bin() is None:
        pytest.fail("PostgreSQL is not installed; ./dev installs it (apt-get install postgresql-15)")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rng = np.random.default_rng(200)
    for i in range(FILES):
        rate = int(rng.choice([8000, 16000, 44100, 48000]))
        write_audio(inbox / f"call-{i:03d}.wav", tone_and_noise(1, rate, float(rng.uniform(0.5, 2.0)), seed=i), rate)

    with servers.postgres() as url, servers.prefect_server(tmp_path, url) as env:
        command = [str(servers.BIN / "voxflow"), "ingest-folder", str(inbox), "--jobs", str(PARALLEL)]
        started = time.monotonic()
        with open(tmp_path / "command.log", "w") as log:
            run = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
            rss = PeakRss(run.pid)
            code = run.wait(timeout=1200)
            peak = rss.stop()
        wall = time.monotonic() - started
        assert code == 0, (tmp_path / "command.log").read_text()[-3000:]

    catalog = Catalog(LocalStore(env["VOXFLOW_HOME"]))
    names = [f"call-{i:03d}.wav" for i in range(FILES)]
    files = catalog.dataset("files").to_table().to_pylist()  # raw rows: a doubled one would show
    assert sorted(r["source_name"] for r in files) == names
    processed = catalog.dataset("processed").to_table().to_pylist()
    assert sorted(Path(r["source_uri"]).name for r in processed) == names and {r["status"] for r in processed} == {
        "done"
    }
    runs = [r for r in catalog.dataset("stage_runs").to_table().to_pylist() if r["status"] == "completed"]
    assert len(runs) == FILES and not any(r["cache_hit"] for r in runs)
    assert peak < PEAK_RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MiB"

    # time per file against the number of files done: the slope of the completion times' gaps
    finished = np.sort(np.array([r["recorded_at"].timestamp() for r in runs]))
    gaps = np.diff(finished)
    slope_ms = float(np.polyfit(np.arange(gaps.size), gaps, 1)[0] * 1000)  # ms per file, per file done
    first, last = float(np.mean(gaps[:50])), float(np.mean(gaps[-50:]))
    record = {
        "files": FILES,
        "parallel": PARALLEL,
        "wall_s": round(wall, 1),
        "per_file_s": round(wall / FILES, 3),
        "mean_gap_first_50_s": round(first, 3),
        "mean_gap_last_50_s": round(last, 3),
        "gap_slope_ms_per_file": round(slope_ms, 4),
        "peak_rss_mib": round(peak / 2**20),
    }
    (tmp_path / "load.json").write_text(json.dumps(record, indent=2))
    print(f"\nload: {json.dumps(record)}")
    assert last < 3 * first + 0.5, record  # the last files take about as long as the first ones
