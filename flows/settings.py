"""Where a run's store and models come from: a saved Block by name, else the environment.

Kept apart from :mod:`voxflow.flows.environment` so that commands that run no flow (``voxflow catalog``)
import neither Prefect nor torch: the Block types, which need Prefect, are imported only when a Block is named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from voxflow.storage.settings import StoreSettings

if TYPE_CHECKING:
    from voxflow.tasks.kit.models import ModelSettings


def store_settings(storage_block: str | None) -> StoreSettings:
    """Settings from the named ``voxflow-storage`` Block, else from the environment."""
    if not storage_block:
        return StoreSettings.from_env()
    from voxflow.blocks.storage import VoxflowStorage

    return VoxflowStorage.load(storage_block).settings()


def model_settings(models_block: str | None) -> ModelSettings:
    """Model folder, device and HF token from the named ``voxflow-models`` Block, else the environment."""
    if not models_block:
        from voxflow.tasks.kit.models import ModelSettings

        return ModelSettings.from_env()
    from voxflow.blocks.models import VoxflowModels

    return VoxflowModels.load(models_block).settings()
