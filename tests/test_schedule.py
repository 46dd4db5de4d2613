"""The scheduled ``ingest-folder`` fires by itself on a real ``prefect server start``, on SQLite and on
PostgreSQL: served with a short interval, two files dropped in its inbox are ingested by a run that the
server's scheduler created, and the scheduler logs no error."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request

import pytest

from tests import servers
from tests.conftest import CORPUS
from tests.servers import BIN
from voxflow.storage.catalog import Catalog
from voxflow.storage.store import LocalStore

pytestmark = pytest.mark.slow
INTERVAL_S = 5


def _post(api: str, path: str, body: dict) -> list | dict:
    request = urllib.request.Request(
        f"{api}{path}", data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _get(api: str, path: str) -> dict:
    with urllib.request.urlopen(f"{api}{path}", timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request, tmp_path):
    """A real Prefect server on SQLite, or on a PostgreSQL server started for the test."""
    if request.param == "sqlite":
        with servers.prefect_server(tmp_path) as env:
            yield env, tmp_path / "server.log"
        return
    if servers.postgres_bin() is None:
        pytest.fail("PostgreSQL is not installed; ./dev installs it (apt-get install postgresql-15)")
    with servers.postgres() as url, servers.prefect_server(tmp_path, url) as env:
        yield env, tmp_path / "server.log"


def test_the_scheduler_runs_ingest_folder_on_new_files(server, tmp_path):
    env, server_log = server
    api = env["PREFECT_API_URL"]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen(
        [str(BIN / "voxflow"), "serve", "--inbox", str(inbox), "--interval", str(INTERVAL_S)],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        servers.wait_for(
            lambda: bool(_get(api, "/deployments/name/ingest-folder/ingest-folder")), 120, "voxflow serve", serve
        )
        deployment = _get(api, "/deployments/name/ingest-folder/ingest-folder")
        assert [s["schedule"]["interval"] for s in deployment["schedules"]] == [INTERVAL_S]
        for name in ("speech.wav", "speech_bab_0dB.wav"):
            shutil.copy(CORPUS / "denoise_babble" / name, inbox / name)

        def scheduled_runs(state: str) -> list[dict]:
            return [
                run
                for run in _post(
                    api,
                    "/flow_runs/filter",
                    {
                        "flow_runs": {
                            "deployment_id": {"any_": [deployment["id"]]},
                            "state": {"type": {"any_": [state]}},
                        }
                    },
                )
                if run["auto_scheduled"]
            ]

        def catalog_files() -> set[str]:
            frame = Catalog(LocalStore(env["VOXFLOW_HOME"])).frame("files")
            return set(frame["source_name"]) if len(frame) else set()

        servers.wait_for(
            lambda: catalog_files() == {"speech.wav", "speech_bab_0dB.wav"},
            240,
            "both files ingested by a scheduled run",
            serve,
            every_s=2,
        )
        servers.wait_for(lambda: bool(scheduled_runs("COMPLETED")), 60, "a completed scheduled run", serve)
        failed = scheduled_runs("FAILED") + scheduled_runs("CRASHED")
        assert not failed, [run["state"]["message"] for run in failed]
        processed = Catalog(LocalStore(env["VOXFLOW_HOME"])).frame("processed")
        assert sorted(processed["status"]) == ["done", "done"]
        assert set(processed["flow_run_id"]) <= {run["id"] for run in scheduled_runs("COMPLETED")}
    finally:
        servers.stop(serve)
        log.close()
    errors = [line for line in server_log.read_text().splitlines() if "ERROR" in line or "Traceback" in line]
    assert not errors, "\n".join(errors[:20])
