"""Prefect Block types: where the store lives and how models are found (secrets as SecretStr)."""

from voxflow.blocks.models import VoxflowModels
from voxflow.blocks.results import VoxflowResults
from voxflow.blocks.storage import VoxflowStorage

BLOCK_TYPES = (VoxflowStorage, VoxflowModels, VoxflowResults)

__all__ = ["BLOCK_TYPES", "VoxflowModels", "VoxflowResults", "VoxflowStorage", "register_block_types"]


def register_block_types() -> list[str]:
    """Register every voxflow Block type with the Prefect API; returns their slugs."""
    for block_type in BLOCK_TYPES:
        block_type.register_type_and_schema()
    return [block_type.get_block_type_slug() for block_type in BLOCK_TYPES]
