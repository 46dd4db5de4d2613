"""The scheduled ``ingest-folder`` fires by itself on a real ``prefect server start``, on SQLite and on
PostgreSQL: served with a short interval, two files dropped in its inbox are ingested by a run that the
server's scheduler created, and the scheduler logs no error."""

from __future__ import annotations

import shutil

import pytest

from tests import servers
from tests.conftest import CORPUS
from voxflow.storage.catalog import Catalog
from voxflow.storage.store import LocalStore

pytestmark = pytest.mark.slow
INTERVAL_S = 5


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
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with servers.voxflow_serve(env, tmp_path, "--inbox", str(inbox), "--interval", str(INTERVAL_S)) as serve:
        folder = servers.deployment(env, "ingest-folder/ingest-folder")
        assert [s["schedule"]["interval"] for s in folder["schedules"]] == [INTERVAL_S]
        for name in ("speech.wav", "speech_bab_0dB.wav"):
            shutil.copy(CORPUS / "denoise_babble" / name, inbox / name)

        def scheduled_runs(state: str) -> list[dict]:
            wanted = {"deployment_id": {"any_": [folder["id"]]}, "state": {"type": {"any_": [state]}}}
            return [
                run
                for run in servers.api_post(env, "/flow_runs/filter", {"flow_runs": wanted})
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
    errors = [line for line in server_log.read_text().splitlines() if "ERROR" in line or "Traceback" in line]
    assert not errors, "\n".join(errors[:20])
