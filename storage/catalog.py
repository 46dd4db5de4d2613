"""The catalog: one Delta Lake table per kind of metadata, next to the artifacts.

Each table (``catalog/<table>/`` of the store, a local folder or an ``s3://`` prefix) is a Delta
Lake table written by delta-rs, with one explicit pyarrow schema and a primary key:

* **writes are merges on the primary key** (``MERGE ... WHEN MATCHED UPDATE WHEN NOT MATCHED
  INSERT``), so a retried write updates its row instead of adding one; the merge names the batch's
  key values as literals, so delta-rs skips every data file whose key range cannot hold them and a
  write costs the same with 10 or 10,000 files in the table;
* **concurrent writers** (threads, processes, machines) commit through Delta's optimistic
  concurrency: each commit is one new log entry written only if absent (a local file created
  exclusively, or an S3 conditional put, which AWS S3, SeaweedFS, MinIO and R2 honour); a writer
  whose commit conflicts re-reads the table and merges again;
* **maintenance** (:meth:`Catalog.maintain`: compaction, a checkpoint, vacuum of old files) runs as
  the ``catalog-maintenance`` flow, one at a time;
* **readers** get the current snapshot (``frame``, ``table``, ``dataset``), or one as of a time or
  version (time travel), with pandas, pyarrow, DuckDB (over the table's Arrow dataset, or its own
  ``delta_scan``) and Spark (``spark.read.format("delta")``).

A store written by an earlier voxflow (append-only Parquet part files ``part-<uuid>.parquet``,
de-duplicated on read) is migrated by ``voxflow catalog migrate`` (:meth:`Catalog.migrate`); until
then writes refuse with :class:`UnmigratedCatalog`, and reads still read the part files.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.dataset as ds

from voxflow.storage.errors import StorageError, TransientStorageError
from voxflow.storage.keys import catalog_prefix
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
            ("low_confidence", pa.bool_()),  # transcribe: mean log-probability below its min_confidence
            ("model", pa.string()),  # transcribe: the Whisper model that decoded it
            ("chosen", pa.bool_()),  # transcribe: in the transcript (false: a second-pass alternative)
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
            ("file", pa.string()),  # the source file, as the run named it (e.g. mic-a/take.wav)
            ("audio_s", pa.float64()),  # the duration of the audio the stage worked on
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


MIGRATE_COMMAND = "voxflow catalog migrate"
LEGACY_PART = re.compile(r"part-[0-9a-f]{32}\.parquet$")  # a part file of the pre-Delta catalog
COMMIT_ATTEMPTS = 40  # merges retried after a conflicting concurrent commit
COMMIT_BACKOFF_S = 0.02  # jittered, growing with each attempt
CREATE_ATTEMPTS = 8  # writers that create a table together
VACUUM_RETENTION_HOURS = 168  # files older than this that no version needs are removed (time travel window)
TABLE_CONFIGURATION = {"delta.checkpointInterval": "10"}  # a load replays at most 10 commits: half the cost of 100
_PERMANENT_S3 = ("403", "Forbidden", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket")


class UnmigratedCatalog(StorageError):
    """The store's catalog is in the part-file format of an earlier voxflow."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri, f"the catalog is in the old part-file format; run '{MIGRATE_COMMAND}' once to convert it")


def _sql_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def merge_predicate(spec: TableSpec, batch: pa.Table) -> str:
    """``t.k = s.k AND ... AND t.k IN (<the batch's keys>)``: the join, plus literals that let delta-rs
    skip the data files whose key ranges cannot hold a key of the batch."""
    join = [f"t.{k} = s.{k}" for k in spec.primary_key]
    known = [
        f"t.{k} IN ({', '.join(_sql_literal(v) for v in sorted(set(batch.column(k).to_pylist())))})"
        for k in spec.primary_key
    ]
    return " AND ".join(join + known)


def one_line(error: BaseException) -> str:
    """delta-rs's error chain (lines marked with coloured arrows) as one plain line, cause last: it names the
    request URL (the endpoint) and why it failed, e.g. ``Connection refused``."""
    text = re.sub(r"\x1b\[[0-9;]*m|↳", "", str(error))
    parts = [" ".join(line.split()) for line in text.splitlines()]
    return ": ".join(p for p in parts if p) or type(error).__name__


def _storage_error(uri: str, error: Exception) -> StorageError:
    text = one_line(error)
    permanent = any(marker in str(error) for marker in _PERMANENT_S3)
    return (StorageError if permanent else TransientStorageError)(uri, f"catalog table: {text}")


def with_columns_of(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """``rows`` in ``schema``: a column added to the schema after they were written reads as null
    (the table gains it with its next write, by Delta schema evolution)."""
    columns = [rows.column(f.name) if f.name in rows.column_names else pa.nulls(rows.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(columns, names=schema.names).cast(schema)


class Catalog:
    """The catalog tables stored below ``catalog/`` in an artifact store."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    def location(self, table: str) -> tuple[str, dict[str, str]]:
        """A table's URI and the delta-rs storage options that reach it (credentials: never log them)."""
        return self.store.table_location(catalog_prefix(table_spec(table).name))

    def _delta(self, table: str, as_of: datetime | int | str | None = None) -> Any | None:
        """The table's current (or ``as_of``) snapshot; None when it has never been written."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        uri, options = self.location(table)
        try:
            delta = DeltaTable(uri, storage_options=options)
        except TableNotFoundError:
            return None
        except OSError as e:
            raise _storage_error(uri, e) from e
        if as_of is not None:
            delta.load_as_version(as_of)
        return delta

    def _create(self, spec: TableSpec, *, migrating: bool = False) -> Any:
        """The table, created empty with its schema unless it exists (concurrent creators agree);
        refused while the table still has part files, unless ``migrating`` them.

        Creators that start together are spread out and retried: SeaweedFS answers 500 to concurrent
        conditional puts into a folder that does not exist yet, until one of them has made it.
        """
        from deltalake import DeltaTable

        uri, options = self.location(spec.name)
        if not migrating and self.legacy_parts(spec.name):
            raise UnmigratedCatalog(uri)
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                return DeltaTable.create(
                    uri,
                    spec.schema,
                    mode="ignore",
                    name=spec.name,
                    storage_options=options,
                    configuration=TABLE_CONFIGURATION,
                )
            except Exception as e:
                existing = self._delta(spec.name)  # another writer created it first
                if existing is not None:
                    return existing
                if attempt == CREATE_ATTEMPTS or not isinstance(e, OSError):
                    raise _storage_error(uri, e) from e
                time.sleep(random.uniform(0.05, 0.5) * attempt)
        raise AssertionError("unreachable")

    def require_migrated(self) -> None:
        """Raise :class:`UnmigratedCatalog` (a one-line error naming the command) when a table is still
        in the part-file format; cheap for a migrated or new store (one look per table)."""
        for table in TABLES:
            if not self.is_delta(table) and self.legacy_parts(table):
                raise UnmigratedCatalog(self.store.uri("catalog"))

    def is_delta(self, table: str) -> bool:
        """Whether a table has a Delta log (its first commit, or a checkpoint once old commits are cleaned)."""
        log = catalog_prefix(table_spec(table).name) + "_delta_log/"
        return self.store.exists(log + "00000000000000000000.json") or self.store.exists(log + "_last_checkpoint")

    def legacy_parts(self, table: str) -> list[str]:
        """The keys of a table's pre-Delta part files (none once migrated)."""
        prefix = catalog_prefix(table_spec(table).name)
        return [k for k in self.store.list(prefix) if "/" not in k[len(prefix) :] and LEGACY_PART.search(k)]

    def append(self, table: str, rows: Iterable[Mapping[str, Any]]) -> int | None:
        """Merge rows into a table on its primary key; the table version written (None: no rows).

        Columns missing from a row are null, ``recorded_at`` defaults to now, and a column the schema
        does not know is an error (typos never pass silently). Within one call the last row of a
        key wins; a row whose key is already in the table replaces it.
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
        batch = deduplicate(pa.Table.from_pylist(records, schema=spec.schema), spec.primary_key)
        return self._merge(spec, batch)

    def _merge(self, spec: TableSpec, batch: pa.Table) -> int:
        from deltalake.exceptions import CommitFailedError

        uri, _ = self.location(spec.name)
        predicate = merge_predicate(spec, batch)
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                delta = self._delta(spec.name) or self._create(spec)
                merge = delta.merge(batch, predicate=predicate, source_alias="s", target_alias="t", merge_schema=True)
                merge.when_matched_update_all().when_not_matched_insert_all().execute()
                return delta.version()
            except CommitFailedError:  # a concurrent commit touched what this merge read: read again
                if attempt == COMMIT_ATTEMPTS:
                    raise TransientStorageError(uri, f"catalog table: {attempt} commits conflicted") from None
                time.sleep(random.uniform(0, COMMIT_BACKOFF_S * attempt))
            except OSError as e:
                raise _storage_error(uri, e) from e
        raise AssertionError("unreachable")

    def version(self, table: str) -> int | None:
        """The table's current version (one more per commit); None when it has never been written."""
        delta = self._delta(table)
        return delta.version() if delta is not None else None

    def dataset(self, table: str, as_of: datetime | int | str | None = None) -> ds.Dataset:
        """A table's rows as a ``pyarrow.dataset`` (the current snapshot, or ``as_of`` a time or version)."""
        spec = table_spec(table)
        delta = self._delta(table, as_of)
        if delta is not None:
            return delta.to_pyarrow_dataset()
        filesystem, root = self.store.pyarrow_filesystem()
        paths = [f"{root}/{key}" for key in self.legacy_parts(table)]  # an unmigrated store, read as it is
        return ds.dataset(paths, schema=spec.schema, format="parquet", filesystem=filesystem)

    def table(self, table: str, as_of: datetime | int | str | None = None) -> pa.Table:
        """A table's rows as a ``pyarrow.Table`` with its schema, in the order they were recorded (keys unique)."""
        spec = table_spec(table)
        delta = self._delta(table, as_of)
        if delta is None:
            return deduplicate(self.dataset(table).to_table(), spec.primary_key)
        rows = with_columns_of(delta.to_pyarrow_table(), spec.schema)
        return rows.sort_by([("recorded_at", "ascending")])  # in the order they were recorded

    def frame(self, table: str, as_of: datetime | int | str | None = None):
        """A table's rows as a pandas DataFrame (the current snapshot, or ``as_of`` a time or version)."""
        return self.table(table, as_of).to_pandas()

    def maintain(self, table: str, retention_hours: int = VACUUM_RETENTION_HOURS) -> dict[str, int]:
        """Compact a table's small files (sorted by its first key column), write a checkpoint, and remove
        the files and log entries no version younger than ``retention_hours`` needs.

        Safe while writers run: a writer whose merge read a file the compaction replaced retries. Two
        maintenance runs of one table must not overlap (the ``catalog-maintenance`` flow takes care):
        deltalake releases after 1.6.3 let two concurrent compactions both commit (rows doubled).
        """
        delta = self._delta(table)
        if delta is None:
            return {"files_before": 0, "files_after": 0, "removed": 0, "version": -1}
        uri, _ = self.location(table)
        before = len(delta.file_uris())
        try:
            delta.optimize.z_order([table_spec(table).primary_key[0]])
            delta.create_checkpoint()
            removed = delta.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False)
            delta.cleanup_metadata()
        except OSError as e:
            raise _storage_error(uri, e) from e
        delta.update_incremental()
        return {
            "files_before": before,
            "files_after": len(delta.file_uris()),
            "removed": len(removed),
            "version": delta.version(),
        }

    def migrate(self, table: str) -> int:
        """Convert a table's pre-Delta part files into its Delta table (merged on the primary key, so
        running it again, or after an interruption, is harmless), then delete them; rows migrated."""
        parts = self.legacy_parts(table)
        if not parts:
            return 0
        spec = table_spec(table)
        filesystem, root = self.store.pyarrow_filesystem()
        rows = ds.dataset([f"{root}/{k}" for k in parts], schema=spec.schema, format="parquet", filesystem=filesystem)
        latest = deduplicate(rows.to_table(), spec.primary_key)
        if latest.num_rows:
            if self._delta(spec.name) is None:
                self._create(spec, migrating=True)
            self._merge(spec, latest)
        for key in parts:
            self.store.delete(key)
        return latest.num_rows
