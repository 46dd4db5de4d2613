"""The Delta Lake catalog: explicit schemas, merges on the primary key, concurrent writers (threads,
processes; a local folder, moto's S3 and a real SeaweedFS server), maintenance, time travel, readers
(pandas, pyarrow, DuckDB, delta-rs), and the migration of a store written by the part-file catalog."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from voxflow.storage.catalog import TABLES, Catalog, UnmigratedCatalog, deduplicate
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import open_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _file_row(sha: str, uri: str, duration: float) -> dict:
    return {"sha256": sha, "source_uri": uri, "duration_s": duration, "sample_rate_hz": 16000, "channels": 1}


@pytest.fixture(params=["local", "moto", "seaweedfs"])
def catalog(request, tmp_path) -> Catalog:
    """An empty catalog on a local folder, on moto's S3 server and on a real SeaweedFS server."""
    if request.param == "local":
        return Catalog(open_store(StoreSettings(location=str(tmp_path / "store"))))
    fixture = "s3_settings" if request.param == "moto" else "seaweed_settings"
    return Catalog(open_store(request.getfixturevalue(fixture)))


def test_every_table_has_an_explicit_schema_with_its_key():
    assert set(TABLES) == {"files", "artifacts", "segments", "syntheses", "stage_runs", "processed"}
    for spec in TABLES.values():
        assert "recorded_at" in spec.schema.names
        assert set(spec.primary_key) <= set(spec.schema.names)


def test_rows_are_merged_on_the_key_and_read_with_the_schema(catalog):
    row = _file_row("a" * 64, "file:///x.wav", 1.5)
    catalog.append("files", [row, _file_row("b" * 64, "file:///y.wav", 2.5)])
    catalog.append("files", [{**row, "duration_s": 1.6}])  # the same key again: a retried or later write
    catalog.append("files", [{**row, "duration_s": 1.7}, {**row, "duration_s": 1.8}])  # one call: the last wins
    frame = catalog.frame("files").sort_values("source_uri")
    assert list(frame["duration_s"]) == [1.8, 2.5] and frame["channels"].dtype.name == "int16"
    assert catalog.table("files").schema.equals(TABLES["files"].schema)
    assert catalog.dataset("files").count_rows() == 2  # the table itself holds one row per key
    assert catalog.version("files") == 3  # created empty (0), then one commit per call


def test_unknown_columns_and_tables_are_errors(catalog):
    with pytest.raises(ValueError, match="durration_s"):
        catalog.append("files", [{"sha256": "a", "durration_s": 1.0}])
    with pytest.raises(KeyError, match="unknown catalog table 'file'"):
        catalog.append("file", [{}])
    assert catalog.version("files") is None and catalog.append("files", []) is None


def test_an_empty_table_reads_as_an_empty_frame_with_its_columns(catalog):
    frame = catalog.frame("segments")
    assert len(frame) == 0 and "speaker" in frame.columns


def test_nested_words_and_odd_keys_roundtrip(catalog):
    words = [{"word": "ask", "start_s": 1.0, "end_s": 1.2, "probability": 0.9, "speaker": "S1", "overlapped": False}]
    catalog.append("segments", [{"segment_id": "s1", "index": 0, "speaker": "S1", "text": "ask", "words": words}])
    quoted = _file_row("c" * 64, 'file:///it\'s a "name".wav', 1.0)  # quotes in a key are literals, not SQL
    catalog.append("files", [quoted])
    catalog.append("files", [quoted])
    assert catalog.frame("segments")["words"].iloc[0][0]["word"] == "ask"
    assert list(catalog.frame("files")["source_uri"]) == [quoted["source_uri"]]


def test_a_write_reads_only_the_files_that_can_hold_its_keys(tmp_path):
    catalog = Catalog(open_store(StoreSettings(location=str(tmp_path / "store"))))
    for i in range(30):  # 30 commits: 30 small data files
        catalog.append("stage_runs", [{"task_run_id": f"run-{i:03d}", "attempt": 1, "stage": "ingest"}])
    catalog.append("stage_runs", [{"task_run_id": "run-007", "attempt": 1, "stage": "ingest", "status": "failed"}])
    metrics = _last_operation_metrics(catalog, "stage_runs")
    assert metrics["num_target_files_scanned"] == 1 and metrics["num_target_files_skipped_during_scan"] == 29
    assert len(catalog.frame("stage_runs")) == 30


def _last_operation_metrics(catalog: Catalog, table: str) -> dict:
    from deltalake import DeltaTable

    uri, options = catalog.location(table)
    return DeltaTable(uri, storage_options=options).history(1)[0]["operationMetrics"]


def test_threads_appending_to_one_table_lose_no_commit(catalog):
    def write(writer: int) -> None:
        for i in range(6):
            catalog.append("stage_runs", [{"task_run_id": f"w{writer}-{i}", "attempt": 1, "stage": "ingest"}])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    runs = catalog.frame("stage_runs")
    assert len(runs) == 24 and runs["task_run_id"].nunique() == 24


def _writers_env(settings: StoreSettings) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VOXFLOW_"))}
    env["VOXFLOW_STORAGE"] = settings.location
    for name, value in (
        ("AWS_ENDPOINT_URL", settings.endpoint_url),
        ("AWS_DEFAULT_REGION", settings.region),
        ("AWS_ACCESS_KEY_ID", settings.access_key_id),
        ("AWS_SECRET_ACCESS_KEY", settings.secret_access_key),
    ):
        if value:
            env[name] = value
    return env


def concurrent_processes(settings: StoreSettings, processes: int, rows: int) -> None:
    """``processes`` writer processes appending ``rows`` rows each to ``stage_runs``, all at once."""
    env = _writers_env(settings)
    command = [sys.executable, "-m", "tests.catalog_writer"]
    started = [
        subprocess.Popen([*command, str(w), str(rows)], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for w in range(processes)
    ]
    for process in started:
        _, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "seaweedfs"])
def test_eight_processes_appending_to_one_table_lose_no_commit(where, tmp_path, request):
    settings = (
        StoreSettings(location=str(tmp_path / "store"))
        if where == "local"
        else request.getfixturevalue("seaweed_settings")
    )
    concurrent_processes(settings, processes=8, rows=25)
    runs = Catalog(open_store(settings)).frame("stage_runs")
    assert len(runs) == 200 and runs["task_run_id"].nunique() == 200  # exactly 8 x 25: none lost, none doubled


def test_maintenance_compacts_and_vacuums_without_changing_a_row(catalog):
    for i in range(12):
        catalog.append("files", [_file_row(f"{i:064x}", f"file:///{i}.wav", float(i))])
    before = catalog.frame("files").sort_values("sha256").reset_index(drop=True)
    report = catalog.maintain("files", retention_hours=0)
    assert report["files_before"] == 12 and report["files_after"] == 1 and report["removed"] == 12
    after = catalog.frame("files").sort_values("sha256").reset_index(drop=True)
    assert after.equals(before)
    catalog.append("files", [_file_row("f" * 64, "file:///new.wav", 9.0)])  # writers carry on after it
    assert len(catalog.frame("files")) == 13


def test_two_maintenance_runs_at_once_never_double_rows(tmp_path):
    """Two compactions of one table at once: one must lose (deltalake 1.6.6 lets both commit: pinned 1.6.3)."""
    catalog = Catalog(open_store(StoreSettings(location=str(tmp_path / "store"))))
    for i in range(20):
        catalog.append("stage_runs", [{"task_run_id": f"r{i}", "attempt": 1, "stage": "ingest"}])
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def compact() -> None:
        from deltalake import DeltaTable

        uri, options = catalog.location("stage_runs")
        table = DeltaTable(uri, storage_options=options)
        start.wait()
        try:
            table.optimize.compact()
            outcomes.append("committed")
        except Exception as e:
            outcomes.append(type(e).__name__)

    threads = [threading.Thread(target=compact) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["CommitFailedError", "committed"]
    assert len(catalog.frame("stage_runs")) == 20


def test_time_travel_reads_a_table_as_it_was(tmp_path):
    catalog = Catalog(open_store(StoreSettings(location=str(tmp_path / "store"))))
    catalog.append("files", [_file_row("a" * 64, "file:///x.wav", 1.0)])
    between = datetime.now(UTC)
    catalog.append("files", [_file_row("b" * 64, "file:///y.wav", 2.0)])
    assert len(catalog.frame("files")) == 2
    assert list(catalog.frame("files", as_of=between)["source_uri"]) == ["file:///x.wav"]
    assert len(catalog.frame("files", as_of=0)) == 0  # the version that created it, empty


def test_duckdb_pandas_and_deltalake_read_a_table(tmp_path):
    from deltalake import DeltaTable

    catalog = Catalog(open_store(StoreSettings(location=str(tmp_path / "store"))))
    catalog.append("files", [_file_row("a" * 64, "file:///x.wav", 1.5), _file_row("b" * 64, "file:///y.wav", 2.0)])
    catalog.append("files", [_file_row("c" * 64, "file:///z.wav", 4.0), _file_row("a" * 64, "file:///x.wav", 1.5)])
    folder = str(tmp_path / "store" / "catalog" / "files")
    files = DeltaTable(folder).to_pyarrow_dataset()  # noqa: F841  (DuckDB scans it by its name: no extension)
    assert duckdb.sql("SELECT sum(duration_s), count(*) FROM files").fetchall() == [(7.5, 3)]
    assert len(DeltaTable(folder).to_pandas()) == 3


def _legacy_store(tmp_path) -> Catalog:
    """A store as the part-file catalog wrote it: one Parquet part per write, retried writes doubled."""
    store = open_store(StoreSettings(location=str(tmp_path / "legacy")))
    t0 = datetime(2026, 11, 1, tzinfo=UTC)

    def part(table: str, rows: list[dict]) -> None:
        data = pa.Table.from_pylist(rows, schema=TABLES[table].schema)
        buffer = io.BytesIO()
        pq.write_table(data, buffer, compression="zstd")
        store.put_bytes(f"catalog/{table}/part-{uuid.uuid4().hex}.parquet", buffer.getvalue())

    part("files", [{**_file_row("a" * 64, "file:///x.wav", 1.0), "recorded_at": t0}])
    part("files", [{**_file_row("a" * 64, "file:///x.wav", 1.1), "recorded_at": t0 + timedelta(seconds=1)}])
    part("files", [{**_file_row("b" * 64, "file:///y.wav", 2.0), "recorded_at": t0}])
    part("stage_runs", [{"task_run_id": "t", "attempt": 1, "stage": "ingest", "recorded_at": t0}])
    return Catalog(store)


def test_a_part_file_store_is_read_refused_for_writes_then_migrated_once(tmp_path):
    catalog = _legacy_store(tmp_path)
    assert sorted(catalog.frame("files")["duration_s"]) == [1.1, 2.0]  # still readable, de-duplicated
    with pytest.raises(UnmigratedCatalog, match="run 'voxflow catalog migrate' once") as refused:
        catalog.append("files", [_file_row("c" * 64, "file:///z.wav", 3.0)])
    assert "\n" not in str(refused.value) and str(tmp_path / "legacy") in str(refused.value)

    assert catalog.migrate("files") == 2 and catalog.migrate("stage_runs") == 1
    assert catalog.legacy_parts("files") == [] and catalog.migrate("files") == 0  # again: nothing to do
    assert sorted(catalog.frame("files")["duration_s"]) == [1.1, 2.0]
    catalog.append("files", [_file_row("c" * 64, "file:///z.wav", 3.0)])
    assert len(catalog.frame("files")) == 3


def test_deduplicate_keeps_the_most_recently_recorded_row():
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    table = pa.table(
        {
            "k": ["a", "b", "a", "a"],
            "v": [1, 2, 3, 4],
            "recorded_at": pa.array([t0, t0, t0 + timedelta(seconds=2), t0 + timedelta(seconds=1)]),
        }
    )
    out = deduplicate(table, ["k"]).to_pylist()
    assert sorted((r["k"], r["v"]) for r in out) == [("a", 3), ("b", 2)]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_the_maintenance_flow_runs_while_processes_write(tmp_path, use_store):
    from voxflow.flows.catalog_maintenance import catalog_maintenance

    settings = StoreSettings(location=str(tmp_path / "store"))
    catalog = use_store(settings)
    concurrent_processes(settings, processes=2, rows=10)  # a table with a few small files first
    env = _writers_env(settings)
    writers = [
        subprocess.Popen([sys.executable, "-m", "tests.catalog_writer", f"late{w}", "25"], env=env, cwd=ROOT)
        for w in range(2)
    ]
    done = catalog_maintenance(tables=["stage_runs", "files"], retention_hours=0)
    for writer in writers:
        assert writer.wait(timeout=600) == 0
    assert [d["table"] for d in done] == ["stage_runs", "files"] and done[0]["files_before"] >= 2
    runs = catalog.frame("stage_runs")
    assert len(runs) == 70 and runs["task_run_id"].nunique() == 70  # no write lost or doubled around it


def test_a_table_written_before_a_column_was_added_gains_it_on_its_next_write(tmp_path):
    from deltalake import write_deltalake

    catalog = Catalog(open_store(StoreSettings(location=str(tmp_path))))
    schema = TABLES["segments"].schema
    added = ("low_confidence", "model", "chosen")  # the columns the second release of the table added
    older = pa.schema([f for f in schema if f.name not in added])
    old_row = {"segment_id": "a", "stage": "transcribe", "text": "before", "recorded_at": datetime.now(UTC)}
    write_deltalake(str(tmp_path / "catalog" / "segments"), pa.Table.from_pylist([old_row], schema=older))
    before = catalog.frame("segments")
    assert list(before.columns) == schema.names and before["model"].isna().all()  # read with nulls
    catalog.append(
        "segments", [{"segment_id": "b", "stage": "transcribe", "text": "after", "model": "base", "chosen": True}]
    )
    rows = catalog.frame("segments").set_index("segment_id")
    assert rows.loc["b", "model"] == "base" and bool(rows.loc["b", "chosen"]) and rows.loc["a", "text"] == "before"
    assert rows.loc["a", "model"] is None or rows.loc["a", "model"] != rows.loc["a", "model"]  # None or NaN
    from deltalake import DeltaTable

    assert set(added) <= set(DeltaTable(str(tmp_path / "catalog" / "segments")).schema().to_arrow().names)
