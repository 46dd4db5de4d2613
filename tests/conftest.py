"""Shared fixtures: a real S3-compatible HTTP server on loopback, stores, and one Prefect harness."""

from __future__ import annotations

import os

# Before torch or numpy start thread pools: on a 2-core machine, 1 thread per process is fastest.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "VOXFLOW_STORAGE"):
    os.environ.pop(name, None)

import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from storage.settings import StoreSettings  # noqa: E402
from storage.store import LocalStore, open_store  # noqa: E402

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "corpus"
S3_KEY_ID = "AKIAVOXFLOWTEST"
S3_SECRET = "voxflow-test-secret-never-logged"


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """moto's S3 server on 127.0.0.1 (real HTTP, real boto3 clients; nothing patched in-process)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_settings(s3_endpoint: str) -> StoreSettings:
    """A fresh bucket on the S3 server and store settings for a prefix in it."""
    import boto3

    bucket = f"voxflow-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET,
    ).create_bucket(Bucket=bucket)  # fmt: skip
    return StoreSettings(
        location=f"s3://{bucket}/store",
        endpoint_url=s3_endpoint,
        region="us-east-1",
        access_key_id=S3_KEY_ID,
        secret_access_key=S3_SECRET,
    )


@pytest.fixture(params=["local", "s3"])
def store_settings(request, tmp_path) -> StoreSettings:
    """Each test that takes it runs once on a local folder and once on the S3 server."""
    if request.param == "local":
        return StoreSettings(location=str(tmp_path / "store"))
    return request.getfixturevalue("s3_settings")


@pytest.fixture
def store(store_settings):
    return open_store(store_settings)


@pytest.fixture
def local_store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture(autouse=True)
def voxflow_home(tmp_path, monkeypatch) -> Path:
    """Each test's own VOXFLOW_HOME (default store, stage locks, GPU holder files)."""
    home = tmp_path / "voxflow-home"
    monkeypatch.setenv("VOXFLOW_HOME", str(home))
    return home


@pytest.fixture
def use_store(monkeypatch):
    """Point flows' environment at a store, as a user would with VOXFLOW_STORAGE and AWS_*."""
    from storage.catalog import Catalog

    def use(settings: StoreSettings) -> Catalog:
        monkeypatch.setenv("VOXFLOW_STORAGE", settings.location)
        for var, value in (
            ("AWS_ENDPOINT_URL", settings.endpoint_url),
            ("AWS_DEFAULT_REGION", settings.region),
            ("AWS_ACCESS_KEY_ID", settings.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", settings.secret_access_key),
        ):
            if value:
                monkeypatch.setenv(var, value)
        return Catalog(open_store(settings))

    return use


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test harness (temporary database, ephemeral API) for the whole session.

    Flow-run heartbeats are off here (they add ~1 s to every flow run); they stay on in production.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120), temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
