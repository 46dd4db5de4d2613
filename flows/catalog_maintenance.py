"""The ``catalog-maintenance`` flow (daily): compact, checkpoint and vacuum every catalog table.

Each table is 1. compacted (its small files rewritten into few, sorted by its first key column), 2.
checkpointed, 3. vacuumed (files and log entries that no version younger than ``retention_hours``
needs are removed; time travel reaches back that far). It is safe while writers run: a writer whose
merge read a file the compaction replaced merges again. Two compactions of one table must never run
at once, so every maintenance holds the ``catalog-maintenance`` global concurrency limit (one slot)
and the deployment runs one at a time.
"""

from __future__ import annotations

from typing import Annotated, Literal

from prefect import task
from pydantic import Field

from voxflow.flows import registry
from voxflow.flows.environment import StorageBlock, block_name, store_settings
from voxflow.flows.pipelines import threaded_flow
from voxflow.flows.reporting import publish_table
from voxflow.storage.catalog import TABLES, VACUUM_RETENTION_HOURS, Catalog
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import shared_store
from voxflow.tasks.kit.gpu import ensure_limit

MAINTENANCE_LIMIT = "catalog-maintenance"
CatalogTable = Literal[tuple(TABLES)]  # type: ignore[valid-type]


@task(name="maintain-table", retries=2, retry_delay_seconds=5, task_run_name="maintain · {table}")
def maintain_table(table: str, retention_hours: int, settings: StoreSettings) -> dict:
    """One table's maintenance, holding the one ``catalog-maintenance`` slot."""
    from prefect.concurrency.sync import concurrency

    ensure_limit(MAINTENANCE_LIMIT, 1)
    with concurrency(MAINTENANCE_LIMIT, occupy=1, strict=True):
        return {"table": table, **Catalog(shared_store(settings)).maintain(table, retention_hours)}


@threaded_flow(registry.CATALOG_MAINTENANCE.name)
def catalog_maintenance(
    tables: list[CatalogTable] | None = None,
    retention_hours: Annotated[int, Field(ge=0)] = VACUUM_RETENTION_HOURS,
    storage_block: StorageBlock = None,
) -> list[dict]:
    """Compact, checkpoint and vacuum the catalog's Delta tables (safe while writers run).

    Args:
        tables: The tables to maintain; empty: all of them.
        retention_hours: Keep the files any version of the last this many hours needs (the time-travel window).
        storage_block: A saved voxflow-storage Block (picked, or its name); empty to use the environment.
    """
    settings = store_settings(block_name(storage_block))  # 1. the store
    done = [maintain_table(table, retention_hours, settings) for table in tables or list(TABLES)]  # 2. each table
    publish_table("catalog-maintenance", done, f"{len(done)} table(s) maintained")  # 3. report
    return done
