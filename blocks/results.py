"""Where Prefect keeps the cache records of stages: on the artifact store itself.

A stage's cache record (the small result its task returned) is written under
``results/<cache key>`` of the same local folder or bucket prefix as the artifacts, so a cache
written by one worker is seen by every other. Prefect needs result storage saved as a Block; this
one holds no secret: on S3 it reads credentials from the named ``voxflow-storage`` Block, or else
from the standard AWS chain (environment, config files, instance role) of each worker.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.filesystems import WritableFileSystem
from pydantic import Field

from voxflow.storage.errors import ObjectNotFound
from voxflow.storage.keys import parse_location, result_record_key
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import ArtifactStore, shared_store


@functools.lru_cache(maxsize=8)
def _storage_block_settings(name: str) -> StoreSettings:
    from voxflow.blocks.storage import VoxflowStorage

    return VoxflowStorage.load(name).settings()


class VoxflowResults(WritableFileSystem):
    """Prefect result storage on the voxflow artifact store (``results/<key>``)."""

    _block_type_name = "voxflow-results"
    _description = "Cache records of voxflow stages, kept on the artifact store beside the artifacts."

    location: str = Field(description="Absolute local folder, file:// URI or s3://bucket/prefix of the store.")
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint; empty for AWS S3.")
    region: str | None = Field(default=None, description="S3 region.")
    storage_block: str | None = Field(
        default=None, description="voxflow-storage Block holding the credentials; empty: the worker's AWS chain."
    )

    @classmethod
    def for_store(cls, settings: StoreSettings, storage_block: str | None = None) -> VoxflowResults:
        """The result storage of a store, under a name derived from where the store is."""
        location = settings.location
        if parse_location(location).scheme == "file":
            location = parse_location(location).path
        return cls(
            location=location, endpoint_url=settings.endpoint_url, region=settings.region, storage_block=storage_block
        )

    def block_name(self) -> str:
        identity = f"{self.location}|{self.endpoint_url}|{self.region}|{self.storage_block}"
        return f"store-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"

    def store_settings(self) -> StoreSettings:
        if self.storage_block:
            return _storage_block_settings(self.storage_block)
        from_env = StoreSettings.from_env()
        return dataclasses.replace(
            from_env,
            location=self.location,
            endpoint_url=self.endpoint_url or from_env.endpoint_url,
            region=self.region or from_env.region,
        )

    def _store(self) -> ArtifactStore:
        return shared_store(self.store_settings())

    async def aread_path(self, path: str) -> bytes:
        import anyio

        return await anyio.to_thread.run_sync(self._read, path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        import anyio

        return await anyio.to_thread.run_sync(self._write, path, content)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return self._read(path)

    @async_dispatch(awrite_path)
    def write_path(self, path: str, content: bytes) -> str:
        return self._write(path, content)

    def _read(self, path: str) -> bytes:
        try:
            return self._store().get_bytes(result_record_key(path))
        except ObjectNotFound as e:
            raise ValueError(f"no cache record {path!r}: {e}") from e

    def _write(self, path: str, content: bytes) -> str:
        return self._store().put_bytes(result_record_key(path), content).uri
