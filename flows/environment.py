"""The environment, chosen once per flow run: which store, and where stages keep cache records."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from prefect import Task

from voxflow.storage.catalog import Catalog
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import shared_store
from voxflow.tasks.kit.models import ModelSettings
from voxflow.tasks.kit.stage import with_results


def store_settings(storage_block: str | None) -> StoreSettings:
    """Settings from the named ``voxflow-storage`` Block, else from the environment."""
    if not storage_block:
        return StoreSettings.from_env()
    from voxflow.blocks.storage import VoxflowStorage

    return VoxflowStorage.load(storage_block).settings()


def model_settings(models_block: str | None) -> ModelSettings:
    """Model folder, device and HF token from the named ``voxflow-models`` Block, else the environment."""
    if not models_block:
        return ModelSettings.from_env()
    from voxflow.blocks.models import VoxflowModels

    return VoxflowModels.load(models_block).settings()


@dataclass(frozen=True)
class Environment:
    """The store of a flow run, the saved result storage that puts cache records on it, and the models."""

    settings: StoreSettings
    results: Any  # voxflow.blocks.results.VoxflowResults, saved
    models: ModelSettings = ModelSettings()

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


def environment(storage_block: str | None, models_block: str | None = None) -> Environment:
    """Resolve the store and the models (Blocks or environment); save the result-storage Block (no secrets)."""
    from prefect.settings import get_current_settings

    from voxflow.blocks.results import VoxflowResults

    settings = store_settings(storage_block)
    Catalog(shared_store(settings)).require_migrated()  # a run never writes half into an old-format catalog
    results = VoxflowResults.for_store(settings, storage_block)
    return Environment(settings, _saved_results(get_current_settings().api.url, results), model_settings(models_block))
