"""Shared fixtures: a real S3-compatible HTTP server on loopback, stores, and one Prefect harness."""

from __future__ import annotations

import os

# Before torch or numpy start thread pools: on a 2-core machine, 1 thread per process is fastest.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may download; a wrong local path fails fast
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "VOXFLOW_STORAGE"):
    os.environ.pop(name, None)

import subprocess  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.servers import s3_client  # noqa: E402
from voxflow.storage.settings import StoreSettings  # noqa: E402
from voxflow.storage.store import LocalStore, open_store  # noqa: E402

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
    """A fresh bucket on the moto S3 server and store settings for a prefix in it."""
    return _bucket_settings(s3_endpoint)


@pytest.fixture(scope="session")
def seaweed_endpoint(tmp_path_factory) -> str:
    """A real SeaweedFS S3 gateway on 127.0.0.1 for the session: it enforces credentials, checksums and
    conditional writes as AWS S3 does (moto is lenient)."""
    from tests import servers

    with servers.seaweedfs(tmp_path_factory.mktemp("seaweedfs"), S3_KEY_ID, S3_SECRET) as endpoint:
        _bucket_settings(endpoint)  # warm it up: its first bucket takes a while
        yield endpoint


SEAWEED_BUCKET = "voxflow-tests"  # one bucket for the session (every bucket costs SeaweedFS volumes)


def _bucket_settings(endpoint: str, bucket: str | None = None) -> StoreSettings:
    """Store settings for a fresh prefix in ``bucket`` (created when None: a new bucket)."""
    if bucket is None:
        bucket = f"voxflow-{uuid.uuid4().hex[:12]}"
        s3_client(endpoint, S3_KEY_ID, S3_SECRET).create_bucket(Bucket=bucket)
    return StoreSettings(
        location=f"s3://{bucket}/{uuid.uuid4().hex[:12]}",
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id=S3_KEY_ID,
        secret_access_key=S3_SECRET,
    )


@pytest.fixture
def seaweed_settings(seaweed_endpoint: str) -> StoreSettings:
    """A fresh prefix in the session's bucket on the SeaweedFS server."""
    client = s3_client(seaweed_endpoint, S3_KEY_ID, S3_SECRET)
    if SEAWEED_BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=SEAWEED_BUCKET)
    return _bucket_settings(seaweed_endpoint, SEAWEED_BUCKET)


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
    from voxflow.storage.catalog import Catalog

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


@pytest.fixture
def use_models(tiny_models, monkeypatch):
    """Point flows at a model folder on the CPU, as a user would with VOXFLOW_MODEL_DIR: the tiny models of
    the libraries named (``use_models("demucs", "whisper")``), or any folder (``use_models(folder=...)``)."""

    def use(*libraries: str, folder=None):
        folder = folder or tiny_models.build(*libraries)
        monkeypatch.setenv("VOXFLOW_MODEL_DIR", str(folder))
        monkeypatch.setenv("VOXFLOW_DEVICE", "cpu")
        return folder

    return use


@pytest.fixture
def run_cli(tmp_path):
    """Run ``voxflow ...`` in a clean environment: ephemeral Prefect API, store in ./.voxflow."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VOXFLOW_", "AWS_"))}
    base.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    voxflow = Path(sys.executable).with_name("voxflow")

    def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        command, environment = [str(voxflow), *args], {**base, **(env or {})}
        return subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)

    return run


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test harness (temporary database, ephemeral API) for the whole session.

    Flow-run heartbeats are off here (they add ~1 s to every flow run); they stay on in production.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


class FlakyS3:
    """An HTTP proxy in front of an S3 server that answers 503 SlowDown to the first N matching requests, or
    (``corrupt``) forwards them with one byte of their body flipped, as a faulty network path would."""

    def __init__(self, upstream: str, fail_first: int, method: str, corrupt: bool = False) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlparse

        self.fail_first, self.method, self.failed = fail_first, method, 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path, headers of each forwarded one
        lock = threading.Lock()
        target = urlparse(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" not in self.headers.get("Transfer-Encoding", ""):
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                raw = b""  # forwarded as it came: chunks, last chunk and trailers
                while True:
                    line = self.rfile.readline()
                    raw += line
                    size = int(line.split(b";")[0].strip(), 16)
                    if size == 0:
                        break
                    raw += self.rfile.read(size + 2)
                while True:
                    line = self.rfile.readline()
                    raw += line
                    if line in (b"\r\n", b"\n", b""):
                        return raw

            def _forward(self) -> None:
                body = self._body()
                with lock:
                    fail = self.command == proxy.method and proxy.failed < proxy.fail_first
                    proxy.failed += fail
                if fail and corrupt and len(body) > 64:
                    middle = len(body) // 2
                    body = body[:middle] + bytes([body[middle] ^ 0x20]) + body[middle + 1 :]
                elif fail:
                    error = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                headers = dict(self.headers.items())  # the Host the client signed (SeaweedFS checks signatures)
                with lock:
                    proxy.requests.append((self.command, self.path, dict(headers)))
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                self.send_response(response.status)
                for k, v in response.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def flaky_s3(s3_endpoint):
    """``make(fail_first, method="PUT")``: a proxy URL to the S3 server that fails the first requests."""
    proxies: list[FlakyS3] = []

    def make(fail_first: int, method: str = "PUT") -> FlakyS3:
        proxies.append(FlakyS3(s3_endpoint, fail_first, method))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


class TinyModels:
    """One session folder of tiny random-weight models, each library built on first request."""

    def __init__(self, root) -> None:
        import threading

        self.root = root
        self._built: set[str] = set()
        self._lock = threading.Lock()

    def build(self, *libraries: str):
        """The model folder, with the tiny models of ``libraries`` written into it."""
        from voxflow.tasks.testing import random_models

        with self._lock:
            for library in libraries:
                if library not in self._built:
                    random_models.build(library, self.root, "tiny")
                    self._built.add(library)
        return self.root

    def settings(self, *libraries: str):
        """``ModelSettings`` on the CPU pointing at the folder, with ``libraries`` built."""
        from voxflow.tasks.kit.models import ModelSettings

        return ModelSettings(model_dir=str(self.build(*libraries)), device="cpu")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    """Tiny random-weight models of the real architectures in the real on-disk formats (no download)."""
    return TinyModels(tmp_path_factory.mktemp("models"))


# The faults the suite injects, and where (the README's "Bad input and faults" table lists what each does).
FAULTS = {
    "S3 store gone at the end of a run, then back with its data": "test_s3_faults.py",
    "S3 answering 503 SlowDown to the first writes (moto and SeaweedFS)": "test_s3_faults.py, test_ingest_folder.py",
    "wrong S3 credentials": "test_s3_faults.py",
    "a request body corrupted on its way to S3": "test_s3_faults.py",
    "SIGKILL at seeded random points of ingest-folder, 10 rounds": "test_kill_loop.py",
    "SIGKILL in the middle of a stage holding its lock and the GPU slot": "test_resume.py",
    "SIGKILL of a command that started Prefect's ephemeral server": "test_cli.py",
    "a lock file left by a killed holder": "test_locks_and_retries.py",
    "a file growing while it is read": "test_ingest_folder.py",
    "CUDA out of memory, injected": "test_stage.py, test_locks_and_retries.py",
    "two runs of the same files at once": "test_stage.py",
    "200 files, 4 at a time, on a Prefect server on PostgreSQL": "test_load.py",
}


def pytest_terminal_summary(terminalreporter) -> None:
    """Say how many kinds of bad input and of fault the suite tries."""
    from tests.bad_inputs import KIND_COUNT

    terminalreporter.write_line(
        f"voxflow: {KIND_COUNT} kinds of input (tests/bad_inputs.py) and {len(FAULTS)} kinds of fault "
        "(tests/conftest.py FAULTS) are in this suite"
    )
