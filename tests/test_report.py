"""``voxflow report`` and ``voxflow status`` as a user meets them, and the analysis under the report."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import CORPUS
from voxflow.flows import analytics

JFK = str(CORPUS / "asr_en_jfk" / "jfk.flac")
BAR_BLUE = (0x4C, 0x72, 0xB0)  # the stage-duration bars' colour


def _stage_runs(rows: list[dict]) -> pd.DataFrame:
    start = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    frame = pd.DataFrame(
        [
            {
                "flow_run_id": "f1",
                "task_run_id": f"t{i}",
                "attempt": 1,
                "input_sha256": f"sha-{row.get('file', 'a')}",
                "status": "completed",
                "cache_hit": False,
                "started_at": start + timedelta(minutes=i),
                "error_class": None,
                "error_message": None,
                "audio_s": 60.0,
                **row,
            }
            for i, row in enumerate(rows)
        ]
    )
    return frame


def _analyse(rows: list[dict]) -> analytics.Analysis:
    files = pd.DataFrame(columns=["sha256", "source_name", "duration_s"])
    artifacts = pd.DataFrame(columns=["sha256", "input_sha256"])
    since = datetime(2026, 12, 1, tzinfo=UTC)
    return analytics.analyse(_stage_runs(rows), files, artifacts, since, since + timedelta(days=1))


def test_analysis_counts_hits_retries_failures_and_names_the_dominant_stage():
    analysis = _analyse(
        [
            {"stage": "ingest", "file": "a.wav", "duration_s": 2.0},
            {"stage": "diarize", "file": "a.wav", "duration_s": 30.0},
            {"stage": "transcribe", "file": "a.wav", "duration_s": 6.0},
            {"stage": "ingest", "file": "b.wav", "duration_s": 0.0, "cache_hit": True},
            {
                "stage": "diarize",
                "file": "b.wav",
                "duration_s": 5.0,
                "status": "failed",
                "error_class": "OSError",
                "error_message": "disk full",
                "task_run_id": "retry",
            },
            {
                "stage": "diarize",
                "file": "b.wav",
                "duration_s": 5.0,
                "status": "failed",
                "attempt": 2,
                "error_class": "OSError",
                "error_message": "disk full again",
                "task_run_id": "retry",
            },
        ]
    )
    stages = analysis.stages.set_index("stage")
    assert stages.loc["diarize", "compute_s"] == 30.0 and stages.loc["diarize", "x_real_time"] == 2.0
    assert stages.loc["diarize", "retries"] == 1 and stages.loc["diarize", "failed"] == 2
    assert stages.loc["ingest", "hit_rate"] == 0.5
    # one failure per task run, at its last attempt
    assert analysis.failures[["file", "stage", "attempts", "error_message"]].values.tolist() == [
        ["b.wav", "diarize", 2, "disk full again"]
    ]
    assert analysis.slowest["file"].tolist() == ["a.wav"]
    assert analysis.recommendation.startswith("diarize takes 79% of the compute time (30 s): run it on a GPU")


def test_no_recommendation_when_no_stage_dominates_and_an_empty_span_says_so():
    balanced = _analyse(
        [
            {"stage": "ingest", "file": "a", "duration_s": 4.0},
            {"stage": "diarize", "file": "a", "duration_s": 4.0},
            {"stage": "transcribe", "file": "a", "duration_s": 5.0},
        ]
    )
    assert balanced.recommendation is None
    empty = analytics.analyse(
        _stage_runs([{"stage": "ingest", "file": "a", "duration_s": 1.0}]).iloc[0:0],
        pd.DataFrame(columns=["sha256", "source_name", "duration_s"]),
        pd.DataFrame(columns=["sha256", "input_sha256"]),
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 2, tzinfo=UTC),
    )
    assert empty.empty and analytics.figures(empty) == {}
    assert analytics.headline(empty).startswith("no stage runs between 2026-01-01 00:00")
    assert "<h1>voxflow report</h1>" in analytics.to_html(empty, {})


def test_since_reads_durations_and_times():
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert analytics.parse_since("90m", now) == now - timedelta(minutes=90)
    assert analytics.parse_since("7d", now) == now - timedelta(days=7)
    assert analytics.parse_since("2026-11-30T08:00:00+00:00", now) == datetime(2026, 11, 30, 8, tzinfo=UTC)
    with pytest.raises(ValueError, match="give a duration"):
        analytics.parse_since("last week", now)


@pytest.mark.slow
def test_report_and_status_after_a_run_with_a_broken_file(run_cli, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF" + b"\0" * 40)
    run = run_cli("ingest", JFK, str(broken))
    assert run.returncode == 1

    # status: the latest runs, then the run's files with their stages
    listed = run_cli("status", "--json")
    assert listed.returncode == 0, listed.stderr
    (latest,) = json.loads(listed.stdout)
    assert latest["flow"] == "ingest" and latest["state"] == "Partially failed"
    detail = json.loads(run_cli("status", latest["flow_run_id"], "--json").stdout)
    files = {row["file"]: row for row in detail["files"]}
    assert files["jfk.flac"]["progress"] == "100%" and files["jfk.flac"]["now"] == "finished"
    assert files["broken.wav"]["now"] == "ingest (failed)"
    assert files["jfk.flac"]["compute_s"] > 0
    assert "failed: broken.wav: ingest: cannot decode" in detail["message"]

    # report: the text summary, the failure line, and an HTML page whose images a browser renders
    report = run_cli("report", "--since", "1h", "-o", "out/report.html")
    assert report.returncode == 0, report.stderr
    assert "failed: broken.wav: ingest: AudioDecodeError: cannot decode 'broken.wav'" in report.stdout
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 4 and "jfk.flac" in page
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            "chromium-headless-shell",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,1400",
            f"--screenshot={shot}",
            (tmp_path / "out" / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    blue = np.all(np.abs(pixels.astype(int) - BAR_BLUE) <= 3, axis=1).mean()
    assert blue > 0.002, f"the stage bars are not on the rendered page ({blue:.4%} of pixels)"


def test_status_reads_each_files_progress_from_its_task_run_names():
    from voxflow.flows.cli.runs import file_progress

    runs = [  # as the API lists them: "<stage> · <file>", "-<key>" on a run that never started
        ("ingest · a.wav", "COMPLETED"),
        ("synthesize · a.wav", "COMPLETED"),
        ("synthesize · a.wav", "RUNNING"),  # voice-replace runs it once per line
        ("reconstruct · a.wav-3f2", "PENDING"),
        ("ingest · b.wav", "FAILED"),
        ("transcribe · b.wav-0ab", "PENDING"),
        ("ingest · c.wav", "COMPLETED"),
    ]
    rows = file_progress([{"name": n, "state_type": t, "created": i} for i, (n, t) in enumerate(runs)])
    assert [(r["file"], r["progress"], r["now"]) for r in rows] == [
        ("a.wav", "33%", "synthesize (running)"),
        ("b.wav", "0%", "ingest (failed)"),
        ("c.wav", "100%", "finished"),
    ]
    assert rows[0]["stages"] == "ingest:done synthesize:running reconstruct:pending"
