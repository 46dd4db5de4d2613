"""The environment, chosen once per flow run: which store, and where stages keep cache records."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from prefect import Task

from storage.settings import StoreSettings
from tasks.stage import with_results


def store_settings(storage_block: str | None) -> StoreSettings:
    """Settings from the named ``voxflow-storage`` Block, else from the environment."""
    if not storage_block:
        return StoreSettings.from_env()
    from blocks.storage import VoxflowStorage

    return VoxflowStorage.load(storage_block).settings()


@dataclass(frozen=True)
class Environment:
    """The store of a flow run and the saved result storage that puts cache records on it."""

    settings: StoreSettings
    results: Any  # blocks.results.VoxflowResults, saved

    def stage(self, stage: Task) -> Task:
        """A stage task bound to this run's store for its cache records."""
        return with_results(stage, self.results)


_SAVED: dict[tuple[str | None, str], Any] = {}
_SAVED_LOCK = threading.Lock()


def _saved_results(api_url: str | None, results: Any) -> Any:
    """Save the result-storage Block once per API and store in this process (a save is 3 API calls)."""
    key = (api_url, results.block_name())
    with _SAVED_LOCK:
        if key not in _SAVED:
            results.save(results.block_name(), overwrite=True)
            _SAVED[key] = results
        return _SAVED[key]


def environment(storage_block: str | None) -> Environment:
    """Resolve the store (Block or environment) and save its result-storage Block (no secrets in it)."""
    from prefect.settings import get_current_settings

    from blocks.results import VoxflowResults

    settings = store_settings(storage_block)
    results = VoxflowResults.for_store(settings, storage_block)
    return Environment(settings, _saved_results(get_current_settings().api.url, results))
