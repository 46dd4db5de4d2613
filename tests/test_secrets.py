"""No secret reaches any output: S3 runs with environment credentials and with a storage Block, against a real
Prefect server and a real SeaweedFS, then every output is scanned for the secret values: the store's objects
(artifacts, catalog, cache records), the local folders (Prefect's home and database, voxflow's home), the
server's log, the commands' stdout and stderr, and what the Prefect API serves (logs, artifacts, flow runs,
task runs, Blocks)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests import servers
from tests.conftest import S3_KEY_ID, S3_SECRET, SEAWEED_BUCKET
from tests.servers import s3_client
from tests.synth import tone_and_noise, write_audio

pytestmark = pytest.mark.slow


def _inbox(folder: Path) -> Path:
    folder.mkdir()
    write_audio(folder / "good.wav", tone_and_noise(1, 16000, 1.0), 16000)
    (folder / "broken.wav").write_bytes(b"RIFF" + b"\0" * 40)  # its error travels too
    return folder


def _voxflow(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(servers.BIN / "voxflow"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def _api_outputs(env: dict[str, str]) -> str:
    body = {"limit": 200}
    texts = []
    for path in (
        "/logs/filter",
        "/artifacts/filter",
        "/flow_runs/filter",
        "/task_runs/filter",
        "/block_documents/filter",
    ):
        texts.append(json.dumps(servers.api_post(env, path, body)))
    return "\n".join(texts)


def test_no_secret_in_any_output_with_environment_credentials_or_a_block(seaweed_endpoint, tmp_path):
    secrets = [S3_SECRET]
    client = s3_client(seaweed_endpoint, S3_KEY_ID, S3_SECRET)
    if SEAWEED_BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=SEAWEED_BUCKET)
    prefix = f"secrets-{uuid.uuid4().hex[:8]}"
    location = f"s3://{SEAWEED_BUCKET}/{prefix}"
    outputs: list[str] = []

    with servers.prefect_server(tmp_path) as env:
        # 1. credentials in the environment
        with_env = {
            **env,
            "VOXFLOW_STORAGE": location,
            "AWS_ENDPOINT_URL": seaweed_endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": S3_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        }
        run = _voxflow(with_env, tmp_path, "ingest-folder", str(_inbox(tmp_path / "inbox-env")))
        assert run.returncode == 1 and "good.wav" in run.stdout, run.stdout + run.stderr
        outputs += [run.stdout, run.stderr]
        listed = _voxflow(with_env, tmp_path, "catalog", "files")
        outputs += [listed.stdout, listed.stderr]

        # 2. credentials in a saved voxflow-storage Block (the environment holds none)
        save = (
            "from pydantic import SecretStr\n"
            "from voxflow.blocks import VoxflowStorage\n"
            f"VoxflowStorage(location={location!r}, endpoint_url={seaweed_endpoint!r}, region='us-east-1', "
            f"access_key_id=SecretStr({S3_KEY_ID!r}), secret_access_key=SecretStr({S3_SECRET!r}))"
            ".save('secret-store', overwrite=True)\n"
        )
        saved = subprocess.run([sys.executable, "-c", save], env=env, capture_output=True, text=True, timeout=120)
        assert saved.returncode == 0, saved.stderr
        run = _voxflow(
            env, tmp_path, "ingest-folder", str(_inbox(tmp_path / "inbox-block")), "--storage-block", "secret-store"
        )
        assert run.returncode == 1 and "good.wav" in run.stdout, run.stdout + run.stderr
        outputs += [run.stdout, run.stderr, saved.stdout, saved.stderr]
        outputs.append(_api_outputs(env))

    found = []
    for i, text in enumerate(outputs):
        found += [f"command or API output #{i}" for secret in secrets if secret in text]
    for path in tmp_path.rglob("*"):  # Prefect's home and SQLite database, voxflow's home, the server's log
        if path.is_file():
            data = path.read_bytes()
            found += [str(path) for secret in secrets if secret.encode() in data]
    objects = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=SEAWEED_BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            objects += 1
            body = client.get_object(Bucket=SEAWEED_BUCKET, Key=item["Key"])["Body"].read()
            found += [f"s3://{SEAWEED_BUCKET}/{item['Key']}" for secret in secrets if secret.encode() in body]
    assert objects > 10  # artifacts, catalog tables and cache records were written and scanned
    assert not found, f"a secret value is in: {found}"
