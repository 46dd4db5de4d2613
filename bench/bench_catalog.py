"""The catalog's cost as it grows: the Delta Lake catalog against the part-file catalog it replaced.

For N single-row appends to ``stage_runs`` (as stage runs are written), both catalogs on a local store:

* ``delta``: :meth:`Catalog.append` (a merge on the primary key), then ``Catalog.frame`` before and after
  :meth:`Catalog.maintain` (compaction, checkpoint, vacuum);
* ``parts``: the earlier design, one Parquet part file per append, read back by de-duplicating every
  part (what ``Catalog.frame`` read before the migration).

Then concurrent writers: ``--processes`` processes appending ``--rows`` rows each to one table, on a
local store and on a SeaweedFS server started here; the table must hold exactly processes × rows rows.

    python bench/bench_catalog.py                       # 1,000 and 10,000 appends; 8 x 1,000 concurrent
    python bench/bench_catalog.py --appends 1000 --rows 100 --big-rows 100000
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, cell, print_table  # noqa: E402


def _catalog(folder: Path):
    from voxflow.storage.catalog import Catalog
    from voxflow.storage.settings import StoreSettings
    from voxflow.storage.store import open_store

    return Catalog(open_store(StoreSettings(location=str(folder))))


def _row(i: int, batch: int = 0) -> dict:
    return {"task_run_id": f"run-{batch:06d}-{i:06d}", "attempt": 1, "stage": "bench", "status": "completed"}


def delta_side(appends: int, rows_per_append: int = 1) -> dict:
    """Seconds per append, and read seconds before and after maintenance."""
    catalog = _catalog(Path(tempfile.mkdtemp(prefix="bench-delta-")))
    started = time.perf_counter()
    for batch in range(appends):
        catalog.append("stage_runs", [_row(i, batch) for i in range(rows_per_append)])
    per_append = (time.perf_counter() - started) / appends
    read_before = _timed(lambda: catalog.frame("stage_runs"))
    maintained = _timed(lambda: catalog.maintain("stage_runs", retention_hours=0))
    read_after = _timed(lambda: catalog.frame("stage_runs"))
    rows = len(catalog.frame("stage_runs"))
    return {
        "append_ms": 1e3 * per_append,
        "read_s": read_before,
        "maintain_s": maintained,
        "read_after_s": read_after,
        "rows": rows,
    }


def parts_side(appends: int, rows_per_append: int = 1) -> dict:
    """The part-file catalog: one Parquet object per append, de-duplicated on every read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from voxflow.storage.catalog import TABLES

    catalog = _catalog(Path(tempfile.mkdtemp(prefix="bench-parts-")))
    schema = TABLES["stage_runs"].schema
    started = time.perf_counter()
    for batch in range(appends):
        rows = [{**_row(i, batch), "recorded_at": datetime.now(UTC)} for i in range(rows_per_append)]
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer, compression="zstd")
        catalog.store.put_bytes(f"catalog/stage_runs/part-{uuid.uuid4().hex}.parquet", buffer.getvalue())
    per_append = (time.perf_counter() - started) / appends
    read = _timed(lambda: catalog.frame("stage_runs"))  # an unmigrated table is read as the old code read it
    return {"append_ms": 1e3 * per_append, "read_s": read, "rows": len(catalog.frame("stage_runs"))}


def _timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def concurrent_side(where: str, processes: int, rows: int) -> dict:
    """``processes`` writers of ``rows`` rows each, all at once; rows found and seconds taken."""
    from tests.conftest import S3_KEY_ID, S3_SECRET
    from tests.servers import s3_client, seaweedfs
    from voxflow.storage.settings import StoreSettings

    with tempfile.TemporaryDirectory(prefix="bench-concurrent-") as folder:
        if where == "local":
            return _writers(StoreSettings(location=f"{folder}/store"), processes, rows)
        with seaweedfs(Path(folder) / "seaweedfs", S3_KEY_ID, S3_SECRET) as endpoint:
            s3_client(endpoint, S3_KEY_ID, S3_SECRET).create_bucket(Bucket="voxflow-bench")
            settings = StoreSettings(
                location="s3://voxflow-bench/store",
                endpoint_url=endpoint,
                region="us-east-1",
                access_key_id=S3_KEY_ID,
                secret_access_key=S3_SECRET,
            )
            return _writers(settings, processes, rows)


def _writers(settings, processes: int, rows: int) -> dict:
    from voxflow.storage.catalog import Catalog
    from voxflow.storage.store import open_store

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VOXFLOW_"))}
    env |= {"VOXFLOW_STORAGE": settings.location}
    if settings.endpoint_url:
        env |= {
            "AWS_ENDPOINT_URL": settings.endpoint_url,
            "AWS_DEFAULT_REGION": settings.region,
            "AWS_ACCESS_KEY_ID": settings.access_key_id,
            "AWS_SECRET_ACCESS_KEY": settings.secret_access_key,
        }
    started = time.perf_counter()
    writers = [
        subprocess.Popen([sys.executable, "-m", "tests.catalog_writer", str(w), str(rows)], cwd=ROOT, env=env)
        for w in range(processes)
    ]
    failed = sum(writer.wait() != 0 for writer in writers)
    seconds = time.perf_counter() - started
    frame = Catalog(open_store(settings)).frame("stage_runs")
    return {"rows": len(frame), "unique": frame["task_run_id"].nunique(), "seconds": seconds, "failed": failed}


def _table_row(label: str, parts: dict, delta: dict) -> list[str]:
    """One line of the append table."""
    return [
        label,
        cell(parts["append_ms"]),
        cell(delta["append_ms"]),
        cell(parts["read_s"], 2),
        cell(delta["read_s"], 2),
        cell(delta["maintain_s"], 2),
        cell(delta["read_after_s"], 3),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appends", default="1000,10000", help="comma-separated append counts (default 1000,10000)")
    parser.add_argument("--big-rows", type=int, default=100_000, help="rows of the large table, 100 per append")
    parser.add_argument("--processes", type=int, default=8, help="concurrent writer processes (default 8)")
    parser.add_argument("--rows", type=int, default=1000, help="rows each writer appends (default 1000)")
    parser.add_argument("--skip-seaweedfs", action="store_true", help="the concurrent writers on a local store only")
    args = parser.parse_args()

    table = []
    for appends in [int(n) for n in args.appends.split(",")]:
        delta, parts = delta_side(appends), parts_side(appends)
        table.append(_table_row(f"{appends:,} x 1 row", parts, delta))
        print(f"{appends} appends: parts {parts}, delta {delta}", flush=True)
    if args.big_rows:
        batches = args.big_rows // 100
        delta, parts = delta_side(batches, 100), parts_side(batches, 100)
        table.append(_table_row(f"{batches:,} x 100 rows", parts, delta))
        print(f"{args.big_rows} rows: parts {parts}, delta {delta}", flush=True)
    print_table(
        [
            "appends",
            "parts: ms/append",
            "delta: ms/append",
            "parts: read s",
            "delta: read s",
            "delta: maintain s",
            "delta: read after s",
        ],
        table,
    )

    places = ["local"] + ([] if args.skip_seaweedfs else ["seaweedfs"])
    rows = []
    for where in places:
        found = concurrent_side(where, args.processes, args.rows)
        expected = args.processes * args.rows
        rows.append(
            [
                where,
                f"{args.processes} x {args.rows:,}",
                f"{found['rows']:,}",
                f"{found['unique']:,}",
                "yes" if found["rows"] == found["unique"] == expected and not found["failed"] else "NO",
                cell(found["seconds"], 0),
                cell(expected / found["seconds"], 1),
            ]
        )
        print(f"concurrent {where}: {found}", flush=True)
    print_table(["store", "writers x rows", "rows", "distinct keys", "exact", "seconds", "appends/s"], rows)


if __name__ == "__main__":
    main()
