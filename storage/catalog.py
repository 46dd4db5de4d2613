"""The Parquet catalog: append-only tables of metadata next to the artifacts.

Each table has one explicit pyarrow schema and a primary key. A write appends one part file
``catalog/<table>/part-<uuid>.parquet`` through the store (atomic, write-once); nothing is ever
rewritten. Readers de-duplicate by primary key, keeping the most recently recorded row, so a
retried write never doubles a row. The same files read with pandas, ``pyarrow.dataset`` or DuckDB
(``SELECT * FROM read_parquet('<store>/catalog/files/*.parquet')``).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from voxflow.storage.keys import catalog_prefix, new_part_key
from voxflow.storage.store import ArtifactStore

TIMESTAMP = pa.timestamp("us", tz="UTC")

WORD = pa.struct(
    [
        ("word", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("probability", pa.float64()),
        ("speaker", pa.string()),
        ("overlapped", pa.bool_()),
    ]
)


@dataclass(frozen=True)
class TableSpec:
    """A catalog table: its schema and the columns that identify a row."""

    name: str
    schema: pa.Schema
    primary_key: tuple[str, ...]


FILES = TableSpec(
    "files",
    pa.schema(
        [
            ("sha256", pa.string()),  # sha256 of the source file's bytes
            ("source_uri", pa.string()),
            ("source_name", pa.string()),
            ("format", pa.string()),  # container, e.g. WAV, FLAC, MP3, OGG, M4A
            ("subtype", pa.string()),  # sample encoding, e.g. PCM_16, PCM_24, FLOAT, MPEG_LAYER_III
            ("size_bytes", pa.int64()),
            ("sample_rate_hz", pa.int32()),
            ("channels", pa.int16()),
            ("frames", pa.int64()),
            ("duration_s", pa.float64()),
            ("integrated_lufs", pa.float64()),  # null when too short or silent to measure
            ("peak", pa.float64()),  # largest absolute sample, linear full scale
            ("peak_dbfs", pa.float64()),
            ("ingest_artifact_uri", pa.string()),
            ("flow_run_id", pa.string()),
            ("recorded_at", TIMESTAMP),
        ]
    ),
    ("sha256", "source_uri"),
)

ARTIFACTS = TableSpec(
    "artifacts",
    pa.schema(
        [
            ("uri", pa.string()),
            ("key", pa.string()),
            ("sha256", pa.string()),  # sha256 of the artifact's bytes
            ("size_bytes", pa.int64()),
            ("input_sha256", pa.string()),
            ("stage", pa.string()),
            ("params_hash", pa.string()),
            ("name", pa.string()),
            ("media_type", pa.string()),
            ("sample_rate_hz", pa.int32()),  # audio artifacts only
            ("channels", pa.int16()),
            ("frames", pa.int64()),
            ("duration_s", pa.float64()),
            ("flow_run_id", pa.string()),
            ("task_run_id", pa.string()),
            ("recorded_at", TIMESTAMP),
        ]
    ),
    ("uri",),
)

SEGMENTS = TableSpec(
    "segments",
    pa.schema(
        [
            ("segment_id", pa.string()),
            ("file_sha256", pa.string()),
            ("stage", pa.string()),  # diarize or transcribe
            ("params_hash", pa.string()),
            ("index", pa.int32()),
            ("speaker", pa.string()),
            ("start_s", pa.float64()),
            ("end_s", pa.float64()),
            ("exclusive", pa.bool_()),  # from the exclusive (non-overlapping) diarization
            ("text", pa.string()),
            ("language", pa.string()),
            ("avg_logprob", pa.float64()),
            ("no_speech_prob", pa.float64()),
            ("words", pa.list_(WORD)),
            ("artifact_uri", pa.string()),
            ("flow_run_id", pa.string()),
            ("recorded_at", TIMESTAMP),
        ]
    ),
    ("segment_id",),
)

SYNTHESES = TableSpec(
    "syntheses",
    pa.schema(
        [
            ("synthesis_id", pa.string()),
            ("text", pa.string()),
            ("mode", pa.string()),  # clone, design or custom
            ("language", pa.string()),
            ("speaker", pa.string()),
            ("voice_description", pa.string()),
            ("instruction", pa.string()),
            ("voice_source_sha256", pa.string()),
            ("voice_source", pa.string()),
            ("model_id", pa.string()),
            ("model_revision", pa.string()),
            ("seed", pa.int64()),
            ("duration_s", pa.float64()),
            ("sample_rate_hz", pa.int32()),
            ("real_time_factor", pa.float64()),
            ("artifact_uri", pa.string()),
            ("artifact_sha256", pa.string()),
            ("native_artifact_uri", pa.string()),  # the line as the model wrote it (24 kHz)
            ("enhancement", pa.string()),  # post-chain steps, e.g. denoise,upsample or resample; null: none
            ("attempts", pa.int32()),  # 1 + regenerations by the quality guard
            ("quality_ok", pa.bool_()),  # false: flagged after the last attempt
            ("quality_issues", pa.string()),  # comma-separated: empty, truncated, clipped, silent
            ("synthetic", pa.bool_()),
            ("consent_note", pa.string()),
            ("flow_run_id", pa.string()),
            ("recorded_at", TIMESTAMP),
        ]
    ),
    ("synthesis_id",),
)

STAGE_RUNS = TableSpec(
    "stage_runs",
    pa.schema(
        [
            ("flow_run_id", pa.string()),
            ("task_run_id", pa.string()),
            ("attempt", pa.int32()),  # 1 for the first try
            ("stage", pa.string()),
            ("input_sha256", pa.string()),
            ("params_hash", pa.string()),
            ("cache_key", pa.string()),
            ("status", pa.string()),  # completed or failed
            ("cache_hit", pa.bool_()),
            ("started_at", TIMESTAMP),
            ("ended_at", TIMESTAMP),
            ("duration_s", pa.float64()),
            ("device", pa.string()),
            ("worker", pa.string()),  # host:pid of the process that ran it
            ("peak_rss_bytes", pa.int64()),
            ("peak_cuda_bytes", pa.int64()),  # null when no GPU was used
            ("error_class", pa.string()),
            ("error_message", pa.string()),
            ("recorded_at", TIMESTAMP),
        ]
    ),
    ("task_run_id", "attempt"),
)

PROCESSED = TableSpec(
    "processed",
    pa.schema(
        [
            ("pipeline", pa.string()),  # the flow run on the file, e.g. ingest
            ("params_hash", pa.string()),  # of that flow's options and stage code versions
            ("source_uri", pa.string()),
            ("source_version", pa.string()),  # mtime:<ns> for files, etag:<etag> for S3 objects
            ("size_bytes", pa.int64()),
            ("status", pa.string()),  # done, cached or failed
            ("transient", pa.bool_()),  # a failure that may heal; such files are tried again
            ("source_sha256", pa.string()),
            ("outputs", pa.string()),  # JSON object: output name -> artifact URI
            ("error_message", pa.string()),
            ("flow_run_id", pa.string()),
            ("recorded_at", TIMESTAMP),
        ]
    ),
    ("pipeline", "params_hash", "source_uri", "source_version"),
)

TABLES: dict[str, TableSpec] = {t.name: t for t in (FILES, ARTIFACTS, SEGMENTS, SYNTHESES, STAGE_RUNS, PROCESSED)}


def table_spec(name: str) -> TableSpec:
    """The spec of a catalog table, with a clear error for an unknown name."""
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown catalog table {name!r}; tables are {', '.join(TABLES)}") from None


def utc_now() -> datetime:
    return datetime.now(UTC)


def deduplicate(table: pa.Table, primary_key: Iterable[str]) -> pa.Table:
    """Keep, for each primary key, the row recorded last (ties: the one read last)."""
    if table.num_rows == 0:
        return table
    keys = list(primary_key)
    order = pa.array(range(table.num_rows), pa.int64())
    indexed = table.select(keys + ["recorded_at"]).append_column("__row", order)
    indexed = indexed.sort_by([("recorded_at", "ascending"), ("__row", "ascending")])
    # after the sort, the last row of each key has the largest position in `indexed`
    positions = indexed.append_column("__pos", pa.array(range(indexed.num_rows), pa.int64()))
    last = positions.group_by(keys, use_threads=False).aggregate([("__pos", "max")])
    latest = pa.compute.sort_indices(last.column("__pos_max"))  # back to recorded order
    return table.take(indexed.column("__row").take(last.column("__pos_max").take(latest)))


class Catalog:
    """The catalog tables stored below ``catalog/`` in an artifact store."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    def append(self, table: str, rows: Iterable[Mapping[str, Any]]) -> str | None:
        """Append rows as one new part file; returns its URI (None when there are no rows).

        Columns missing from a row are null, ``recorded_at`` defaults to now, and a column the
        schema does not know is an error (typos never pass silently).
        """
        spec = table_spec(table)
        now = utc_now()
        records = []
        for row in rows:
            unknown = set(row) - set(spec.schema.names)
            if unknown:
                raise ValueError(f"catalog table {table!r} has no column(s) {sorted(unknown)}")
            records.append({"recorded_at": now, **row})
        if not records:
            return None
        data = pa.Table.from_pylist(records, schema=spec.schema)
        buffer = io.BytesIO()
        pq.write_table(data, buffer, compression="zstd")
        return self.store.put_bytes(new_part_key(table), buffer.getvalue()).uri

    def part_keys(self, table: str) -> list[str]:
        """The keys of a table's part files."""
        return [k for k in self.store.list(catalog_prefix(table_spec(table).name)) if k.endswith(".parquet")]

    def dataset(self, table: str) -> ds.Dataset:
        """All part files of a table as one ``pyarrow.dataset`` (raw: may hold retried duplicates)."""
        spec = table_spec(table)
        filesystem, root = self.store.pyarrow_filesystem()
        paths = [f"{root}/{key}" for key in self.part_keys(table)]
        return ds.dataset(paths, schema=spec.schema, format="parquet", filesystem=filesystem)

    def table(self, table: str) -> pa.Table:
        """A table's rows de-duplicated by primary key, as a ``pyarrow.Table``."""
        spec = table_spec(table)
        return deduplicate(self.dataset(table).to_table(), spec.primary_key)

    def frame(self, table: str):
        """A table's rows de-duplicated by primary key, as a pandas DataFrame."""
        return self.table(table).to_pandas()
