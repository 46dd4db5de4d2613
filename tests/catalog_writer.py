"""One writer process for the catalog concurrency tests and bench: ``python -m tests.catalog_writer
WRITER ROWS`` appends ROWS rows to ``stage_runs`` one at a time, on the store of ``VOXFLOW_STORAGE``."""

from __future__ import annotations

import sys

from voxflow.storage.catalog import Catalog
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import open_store


def main(writer: str, rows: int) -> None:
    catalog = Catalog(open_store(StoreSettings.from_env()))
    for i in range(rows):
        catalog.append("stage_runs", [{"task_run_id": f"writer-{writer}-{i:06d}", "attempt": 1, "stage": "bench"}])


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
