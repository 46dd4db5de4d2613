"""``voxflow doctor`` as a user runs it: what it flags on a machine that lacks something, and the fix it prints."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tests.servers import free_port
from voxflow.tasks.testing import random_models


def findings(run) -> dict[str, list[dict]]:
    by_check: dict[str, list[dict]] = {}
    for finding in json.loads(run.stdout):
        by_check.setdefault(finding["check"], []).append(finding)
    return by_check


def test_doctor_flags_missing_ffmpeg_hf_token_and_api_with_their_fixes(run_cli, tmp_path):
    bare_path = tmp_path / "bin"  # a PATH with Python and nothing else: no ffmpeg, no sox
    bare_path.mkdir()
    (bare_path / "python").symlink_to(sys.executable)
    env = {
        "PATH": str(bare_path),
        "HF_TOKEN": "",
        "VOXFLOW_MODEL_DIR": str(tmp_path / "models"),  # empty: the gated diarization model is not there
        "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",  # nothing listens there
    }
    run = run_cli("doctor", env=env)
    assert run.returncode == 1, run.stderr
    out = run.stdout
    assert "warn  ffmpeg" in out and "fix: sudo apt-get install ffmpeg" in out
    assert "warn  sox" in out
    assert "FAIL  hf token" in out and "pyannote/speaker-diarization-community-1 is gated" in out
    assert "export HF_TOKEN=" in out
    assert "FAIL  prefect api" in out and "not reachable" in out and "fix: start it (prefect server start)" in out
    assert "ok    store" in out
    assert out.rstrip().splitlines()[-1].startswith("2 failed")


def test_doctor_on_a_ready_machine_names_the_token_source_never_the_token(run_cli, tmp_path):
    token = "hf_doctor_secret_0123456789"
    models = tmp_path / "models"
    for library in ("pyannote", "whisper"):
        random_models.build(library, models, "tiny")
    env = {
        "HF_TOKEN": token,
        "VOXFLOW_MODEL_DIR": str(models),
        "PATH": os.environ["PATH"],
    }
    run = run_cli("doctor", "--json", env=env)
    assert token not in run.stdout + run.stderr
    found = findings(run)
    assert [f["status"] for f in found["hf token"]] == ["ok"]
    assert "HF_TOKEN" in found["hf token"][0]["detail"]
    assert found["store"][0]["status"] == "ok" and found["packages"][0]["status"] == "ok"
    # the tiny models are random: the folder check says so, and names what is missing from it
    folder = " ".join(f["detail"] for f in found["model folder"])
    assert "random-weight test models in pyannote, whisper" in folder
    assert "no denoise" in folder


def test_doctor_fails_a_store_it_cannot_write(run_cli, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    run = run_cli("doctor", "--json", env={"VOXFLOW_STORAGE": str(blocker / "store")})
    assert run.returncode == 1
    store = findings(run)["store"][0]
    assert store["status"] == "fail" and str(blocker) in store["detail"]
    assert "VOXFLOW_STORAGE" in store["fix"]
    assert not list(Path(tmp_path).rglob("*.probe"))
