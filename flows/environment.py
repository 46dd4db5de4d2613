"""The environment, chosen once per flow run: which store (a storage Block or the environment)."""

from __future__ import annotations

from storage.settings import StoreSettings


def store_settings(storage_block: str | None) -> StoreSettings:
    """Settings from the named ``voxflow-storage`` Block, else from the environment."""
    if not storage_block:
        return StoreSettings.from_env()
    from blocks.storage import VoxflowStorage

    return VoxflowStorage.load(storage_block).settings()
