"""The storage Block: a local folder or an S3-compatible bucket prefix, with its credentials."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr

from voxflow.blocks.schema import closed_schema
from voxflow.storage.settings import StoreSettings


class VoxflowStorage(Block):
    """Where voxflow keeps artifacts and the Parquet catalog."""

    model_config = ConfigDict(json_schema_extra=closed_schema)  # a reference to a saved Block is not one

    _block_type_name = "voxflow-storage"
    _description = "voxflow artifact store: a local folder or s3://bucket/prefix on any S3-compatible endpoint."

    location: str = Field(
        default=".voxflow", description="Local folder, file:// URI or s3://bucket/prefix (AWS S3, MinIO, Ceph, R2)."
    )
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint; empty for AWS S3.")
    region: str | None = Field(default=None, description="S3 region, e.g. us-east-1.")
    access_key_id: SecretStr | None = Field(default=None, description="S3 access key id.")
    secret_access_key: SecretStr | None = Field(default=None, description="S3 secret access key.")
    session_token: SecretStr | None = Field(default=None, description="Temporary-credentials session token.")

    def settings(self) -> StoreSettings:
        """Plain settings for the store, secrets revealed only here."""

        def reveal(value: SecretStr | None) -> str | None:
            return value.get_secret_value() if value is not None else None

        return StoreSettings(
            location=self.location,
            endpoint_url=self.endpoint_url,
            region=self.region,
            access_key_id=reveal(self.access_key_id),
            secret_access_key=reveal(self.secret_access_key),
            session_token=reveal(self.session_token),
        )
