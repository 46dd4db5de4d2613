"""The Prefect UI as a user sees it: a real ``prefect server start``, a real run of ``voxflow transcribe`` on
two recordings and a broken file, and each page read and photographed by a real browser (headless Chromium,
after the UI's JavaScript has rendered it).

The screenshots land in the test's folder, and in ``$VOXFLOW_UI_SHOTS`` when set, to be looked at."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from tests import servers
from tests.conftest import CORPUS
from tests.servers import BIN

pytestmark = pytest.mark.slow

BROWSER = "chromium-headless-shell"
JFK = CORPUS / "asr_en_jfk" / "jfk.flac"
SAMPLE = CORPUS / "diar_2spk_pyannote" / "sample.wav"


def browse(url: str, shot: Path, size: str = "1400,1300") -> str:
    """The page's visible text once its scripts have rendered it, and its screenshot at ``shot``."""
    common = [BROWSER, "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={size}"]
    common.append("--virtual-time-budget=20000")  # lets the single-page app fetch from the API and render
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20_000, f"{shot.name}: an empty page"
    if os.environ.get("VOXFLOW_UI_SHOTS"):
        shutil.copy(shot, Path(os.environ["VOXFLOW_UI_SHOTS"]) / shot.name)
    text = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


def _latest(env: dict, path: str, body: dict) -> dict:
    return servers.api_post(env, path, {"limit": 1, **body})[0]


def test_run_page_artifacts_and_forms_in_a_browser(tmp_path, tiny_models):
    shots = tmp_path / "shots"
    shots.mkdir()
    broken = tmp_path / "broken <take 1>.wav"
    broken.write_bytes(b"RIFF" + b"\0" * 40)
    models = {"VOXFLOW_MODEL_DIR": str(tiny_models.build("pyannote", "whisper")), "VOXFLOW_DEVICE": "cpu"}
    with servers.prefect_server(tmp_path) as env:
        env = {**env, **models}
        run = subprocess.run(
            [str(BIN / "voxflow"), "transcribe", str(JFK), str(SAMPLE), str(broken), "--beam-size", "1"]
            + ["--no-fallback", "--num-speakers", "2"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert run.returncode == 1 and "broken <take 1>.wav: ingest: cannot decode" in run.stderr, run.stderr
        apply = "from voxflow.flows.deployments import deployments\nfor d in deployments('inbox'): d.apply()\n"
        subprocess.run([str(BIN / "python"), "-c", apply], env=env, cwd=tmp_path, check=True, timeout=300)
        ui = env["PREFECT_API_URL"].removesuffix("/api")
        flow_run = _latest(env, "/flow_runs/filter", {"sort": "START_TIME_DESC"})

        # the run page: its state names the partial failure; its lanes and log lines name stage and file
        page = browse(f"{ui}/runs/flow-run/{flow_run['id']}", shots / "run.png", "1600,1100")
        assert "Partially failed" in page
        assert "transcribe · jfk.flac" in page and "diarize · sample.wav" in page
        assert re.search(r"transcribe · sample\.wav: [\d.]+ s, 30\.0 s of audio, [\d.]+× real time, on cpu", page)
        assert "random-weight test models" in page and "record_cache_hit" not in page

        # its artifacts: the summary table shows the broken file's error; the files page its outputs and transcript
        keys = {a["key"]: a["id"] for a in servers.api_post(env, "/artifacts/filter", {"limit": 20}) if a["key"]}
        summary = browse(f"{ui}/artifacts/artifact/{keys['transcribe-summary']}", shots / "summary.png", "1600,700")
        assert "ingest: cannot decode 'broken <take 1>.wav'" in summary
        files = browse(f"{ui}/artifacts/artifact/{keys['transcribe-files']}", shots / "files.png", "1600,1400")
        assert "broken <take 1>.wav · failed" in files and "jfk.flac · done" in files
        assert "transcript.srt" in files and "SPEAKER_00" in files and "file://" not in files

        # the forms: titles with units, descriptions as written, the language a choice
        transcribe = servers.deployment(env, "transcribe/transcribe")
        form = browse(f"{ui}/deployments/deployment/{transcribe['id']}/run", shots / "form-transcribe.png", "1400,3200")
        assert "Chunk (s)" in form and "VAD min silence (s)" in form and "Chunk S" not in form
        assert "<model dir>/whisper/<name>.pt" in form
        language = transcribe["parameter_openapi_schema"]["definitions"]["TranscribeOptions"]["properties"]["language"]
        assert language["enum"][:2] == ["auto", "af"] and "en" in language["enum"]
        folder = servers.deployment(env, "ingest-folder/ingest-folder")
        form = browse(f"{ui}/deployments/deployment/{folder['id']}/run", shots / "form-ingest-folder.png")
        assert re.search(r"\(e\.g\. \*/\*\.wav ?\)", form) and '{"sample_rate_hz": 16000}' in form
        # params: a typed form per pipeline (a link's ?parameters= prefills the transcribe one)
        prefill = urllib.parse.quote(json.dumps({"pipeline": "transcribe", "params": {"run_denoise": True}}))
        form = browse(f"{ui}/deployments/deployment/{folder['id']}/run?parameters={prefill}", shots / "form-params.png")
        assert "IngestOptions TranscribeFlowOptions SeparateFlowOptions LipsyncFlowOptions VoiceReplaceOptions" in form
        assert "Run denoise (Optional)" in form and "Chunk (s)" in form

        # the Block parameters: Prefect's Block picker, here with a saved Block picked (as the form's link
        # with ?parameters= prefills it), and the form's own validation of that choice
        save = "from voxflow.blocks import VoxflowStorage\nprint(VoxflowStorage(location='picked').save('my-store'))"
        saved = subprocess.run([str(BIN / "python"), "-c", save], env=env, capture_output=True, text=True, check=True)
        picked = {"storage_block": {"$ref": {"block_document_id": saved.stdout.strip()}}}
        ingest = servers.deployment(env, "ingest/ingest")
        link = f"{ui}/deployments/deployment/{ingest['id']}/run?parameters={urllib.parse.quote(json.dumps(picked))}"
        form = browse(link, shots / "form-block-picker.png")
        assert re.search(r"storage_block .* VoxflowStorage str None .*my-store Add", form)
        schema = {"schema": ingest["parameter_openapi_schema"], "values": {"paths": ["x.wav"], **picked}}
        assert servers.api_post(env, "/ui/schemas/validate", schema)["valid"] is True

        # voxflow report --artifact: the same report as a Markdown artifact, its plots rendered in the UI
        report = subprocess.run(
            [str(BIN / "voxflow"), "report", "--since", "1h", "--artifact", "-q"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert report.returncode == 0 and "FutureWarning" not in report.stderr, report.stderr
        artifact = _latest(env, "/artifacts/filter", {"artifacts": {"key": {"any_": ["voxflow-report"]}}})
        page = browse(f"{ui}/artifacts/artifact/{artifact['id']}", shots / "report-artifact.png", "1400,1400")
        assert "Stage durations and speed" in page and "Slowest files" in page

        # the Blocks page lists the user's Blocks only (the result storage is saved anonymous)
        blocks = browse(f"{ui}/blocks", shots / "blocks.png", "1400,700")
        assert "store-" not in blocks
        anonymous = servers.api_post(
            env, "/block_documents/filter", {"block_documents": {"is_anonymous": {"eq_": True}}}
        )
        assert any(doc["block_type"]["slug"] == "voxflow-results" for doc in anonymous)
    names = ["run.png", "summary.png", "files.png", "form-transcribe.png", "form-ingest-folder.png", "blocks.png"]
    names += ["report-artifact.png", "form-block-picker.png", "form-params.png"]
    assert sorted(p.name for p in shots.iterdir()) == sorted(names)
