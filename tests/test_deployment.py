"""Served deployments against a real ``prefect server start`` on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests import servers
from tests.conftest import CORPUS
from tests.servers import BIN, deployment, run_deployment, voxflow_serve
from voxflow.flows import registry
from voxflow.flows.registry import FLOWS
from voxflow.storage.catalog import Catalog
from voxflow.storage.store import LocalStore

pytestmark = pytest.mark.slow


@pytest.fixture
def prefect_server(tmp_path):
    """A real Prefect server (SQLite) on a free loopback port; yields the environment to reach it."""
    with servers.prefect_server(tmp_path) as env:
        yield env


def test_served_deployments_run_from_the_prefect_cli(prefect_server, tmp_path, tiny_models):
    models = {"VOXFLOW_MODEL_DIR": str(tiny_models.build("pyannote", "whisper")), "VOXFLOW_DEVICE": "cpu"}
    env = {**prefect_server, **models}
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with voxflow_serve(env, tmp_path, "--inbox", str(inbox)):
        jfk = str(CORPUS / "asr_en_jfk" / "jfk.flac")
        run_deployment(env, "ingest/ingest", f"paths={json.dumps([jfk])}")
        files = Catalog(LocalStore(env["VOXFLOW_HOME"])).frame("files")
        assert list(files["source_name"]) == ["jfk.flac"]
        assert files["flow_run_id"].notna().all()

        # a Block picked in the UI's form arrives as a reference to the saved Block, which the run loads
        picked = tmp_path / "picked-store"
        save = (
            f"from voxflow.blocks import VoxflowStorage\nprint(VoxflowStorage(location={str(picked)!r}).save('picked'))"
        )
        saved = subprocess.run([str(BIN / "python"), "-c", save], env=env, capture_output=True, text=True, check=True)
        reference = {"$ref": {"block_document_id": saved.stdout.strip()}}
        run_deployment(env, "ingest/ingest", f"paths={json.dumps([jfk])}", f"storage_block={json.dumps(reference)}")
        assert list(Catalog(LocalStore(picked)).frame("files")["source_name"]) == ["jfk.flac"]

        folder = deployment(env, "ingest-folder/ingest-folder")
        assert folder["parameters"] == {"source": str(inbox)}
        assert [s["schedule"]["cron"] for s in folder["schedules"]] == ["*/10 * * * *"]
        assert folder["global_concurrency_limit"]["limit"] == 1  # scheduled runs never overlap
        assert folder["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
        schema = folder["parameter_openapi_schema"]["properties"]
        assert schema["pattern"]["default"] == "*" and "fnmatch" in schema["pattern"]["description"]
        assert "ingest" in str(schema["pipeline"]) and schema["parallel_files"]["minimum"] == 1
        choices = [c.get("title") for c in schema["params"]["anyOf"]]  # a typed form per pipeline
        assert choices == [f"{name} options" for name in registry.PER_FILE] + [None]
        for name in ("speech.wav", "speech_bab_0dB.wav"):
            (inbox / name).write_bytes((CORPUS / "denoise_babble" / name).read_bytes())
        run_deployment(env, "ingest-folder/ingest-folder", "parallel_files=2", 'params={"sample_rate_hz": 8000}')
        processed = Catalog(LocalStore(env["VOXFLOW_HOME"])).frame("processed")
        assert sorted(processed["source_uri"].str.rsplit("/", n=1).str[1]) == ["speech.wav", "speech_bab_0dB.wav"]
        assert set(processed["status"]) == {"done"}

        for name in ("transcribe/transcribe", "separate/separate", "lipsync-features/lipsync-features"):
            assert deployment(env, name)["parameter_openapi_schema"]["properties"]["paths"]
        speech = str(CORPUS / "denoise_babble" / "speech.wav")
        run_deployment(  # a model flow from the UI's route: the worker's VOXFLOW_MODEL_DIR has the models
            env,
            "transcribe/transcribe",
            f"paths={json.dumps([speech])}",
            'options={"diarize": {"num_speakers": 1}, "transcribe": {"language": "en"}}',
            timeout_s=360,
        )
        segments = Catalog(LocalStore(env["VOXFLOW_HOME"])).frame("segments")
        assert set(segments["stage"]) == {"diarize", "transcribe"} and set(segments["speaker"]) == {"SPEAKER_00"}


def test_prefect_yaml_deploys_to_a_work_pool(prefect_server):
    env = prefect_server
    root = Path(__file__).resolve().parents[1]
    prefect = str(BIN / "prefect")
    pool = subprocess.run(
        [prefect, "work-pool", "create", "voxflow", "--type", "process"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all"], env=env, cwd=root, capture_output=True, text=True, timeout=300
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    for entry in FLOWS:  # prefect.yaml is generated from the registry
        declared = deployment(env, f"{entry.name}/{entry.name}")
        assert declared["work_pool_name"] == "voxflow" and declared["entrypoint"] == entry.entrypoint
    folder = deployment(env, "ingest-folder/ingest-folder")
    assert folder["global_concurrency_limit"]["limit"] == 1
    assert folder["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"


def test_a_command_runs_on_the_server_of_the_users_profile(prefect_server, tmp_path):
    """``voxflow`` starts its own API server ahead of its imports only when Prefect would start one: a user who
    chose a server with ``prefect config set PREFECT_API_URL`` (not in the environment) has the run on it."""
    env = {k: v for k, v in prefect_server.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "user-prefect")
    url = prefect_server["PREFECT_API_URL"]
    subprocess.run([str(BIN / "prefect"), "config", "set", f"PREFECT_API_URL={url}"], env=env, check=True, timeout=60)
    jfk = str(CORPUS / "asr_en_jfk" / "jfk.flac")
    done = subprocess.run(
        [str(BIN / "voxflow"), "ingest", jfk], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    completed = {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}
    assert [run["name"] for run in servers.api_post(prefect_server, "/flow_runs/filter", completed)]
    assert not list((tmp_path / "user-prefect").glob("*.db"))  # no ephemeral server kept a database there

    # voxflow doctor reaches the same server through the profile and finds its scheduler on
    doctor = subprocess.run(
        [str(BIN / "voxflow"), "doctor", "--json"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    found = {f["check"]: f for f in json.loads(doctor.stdout)}
    assert found["prefect api"]["status"] == "ok" and url in found["prefect api"]["detail"]
    assert found["scheduler"]["status"] == "ok"
    assert found["database"]["status"] == "warn" and "SQLite" in found["database"]["detail"]
