"""The Parquet catalog: explicit schemas, append-only parts, de-duplicated reads, DuckDB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from voxflow.storage.catalog import TABLES, Catalog, deduplicate


def _file_row(sha: str, uri: str, duration: float) -> dict:
    return {"sha256": sha, "source_uri": uri, "duration_s": duration, "sample_rate_hz": 16000, "channels": 1}


def test_every_table_has_an_explicit_schema_with_its_key():
    assert set(TABLES) == {"files", "artifacts", "segments", "syntheses", "stage_runs", "processed"}
    for spec in TABLES.values():
        assert "recorded_at" in spec.schema.names
        assert set(spec.primary_key) <= set(spec.schema.names)


def test_append_writes_parts_readable_as_pandas_and_pyarrow(store):
    catalog = Catalog(store)
    catalog.append("files", [_file_row("a" * 64, "file:///x.wav", 1.5)])
    catalog.append("files", [_file_row("b" * 64, "file:///y.wav", 2.5)])
    assert len(catalog.part_keys("files")) == 2
    assert all(k.startswith("catalog/files/part-") and k.endswith(".parquet") for k in catalog.part_keys("files"))
    frame = catalog.frame("files")
    assert sorted(frame["duration_s"]) == [1.5, 2.5]
    assert frame["channels"].dtype.name == "int16"
    dataset = catalog.dataset("files")
    assert dataset.schema.equals(TABLES["files"].schema)
    assert dataset.count_rows() == 2


def test_retried_write_never_doubles_a_row(store):
    catalog = Catalog(store)
    row = _file_row("a" * 64, "file:///x.wav", 1.5)
    catalog.append("files", [row])
    catalog.append("files", [{**row, "duration_s": 1.6}])  # the same key written again, later
    assert catalog.dataset("files").count_rows() == 2  # raw parts keep both
    frame = catalog.frame("files")
    assert len(frame) == 1 and frame["duration_s"].iloc[0] == 1.6  # readers keep the latest


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


def test_unknown_columns_and_tables_are_errors(local_store):
    catalog = Catalog(local_store)
    with pytest.raises(ValueError, match="durration_s"):
        catalog.append("files", [{"sha256": "a", "durration_s": 1.0}])
    with pytest.raises(KeyError, match="unknown catalog table 'file'"):
        catalog.append("file", [{}])
    assert catalog.part_keys("files") == []


def test_empty_table_reads_as_empty_frame_with_columns(store):
    frame = Catalog(store).frame("segments")
    assert len(frame) == 0 and "speaker" in frame.columns


def test_nested_words_column_roundtrips(local_store):
    catalog = Catalog(local_store)
    words = [{"word": "ask", "start_s": 1.0, "end_s": 1.2, "probability": 0.9, "speaker": "S1", "overlapped": False}]
    catalog.append("segments", [{"segment_id": "s1", "speaker": "S1", "text": "ask", "words": words}])
    assert catalog.frame("segments")["words"].iloc[0][0]["word"] == "ask"


def test_duckdb_queries_the_catalog_folder(local_store):
    catalog = Catalog(local_store)
    catalog.append("files", [_file_row("a" * 64, "file:///x.wav", 1.5), _file_row("b" * 64, "file:///y.wav", 2.0)])
    catalog.append("files", [_file_row("c" * 64, "file:///z.wav", 4.0)])
    glob = str(local_store.root / "catalog" / "files" / "*.parquet")
    ((total, count),) = duckdb.sql(f"SELECT sum(duration_s), count(*) FROM read_parquet('{glob}')").fetchall()
    assert (total, count) == (7.5, 3)


def test_parts_are_plain_parquet_files_with_the_schema(local_store):
    catalog = Catalog(local_store)
    catalog.append("stage_runs", [{"task_run_id": "t", "attempt": 1, "stage": "ingest", "status": "completed"}])
    (key,) = catalog.part_keys("stage_runs")
    schema = pq.read_schema(local_store.root / key)
    assert schema.equals(TABLES["stage_runs"].schema, check_metadata=False)
