"""Where the store lives: plain settings, chosen once by the flow entrypoint or the CLI.

Embedded default: a local folder ``./.voxflow`` (or ``$VOXFLOW_HOME``). ``VOXFLOW_STORAGE`` (a path,
``file://`` or ``s3://bucket/prefix``) overrides it; S3 endpoints and credentials come from the
standard AWS variables (``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``, ...)
unless a storage Block supplies them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOME = ".voxflow"


def voxflow_home(environ: Mapping[str, str] | None = None) -> Path:
    """The local working folder: ``$VOXFLOW_HOME`` or ``./.voxflow``."""
    env = os.environ if environ is None else environ
    return Path(env.get("VOXFLOW_HOME") or DEFAULT_HOME).expanduser().resolve()


@dataclass(frozen=True)
class StoreSettings:
    """Everything needed to open the artifact store; credentials never appear in ``repr``."""

    location: str  # local folder, file:// URI or s3://bucket/prefix
    endpoint_url: str | None = None  # any S3-compatible endpoint; None means AWS
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StoreSettings:
        """Settings from ``VOXFLOW_STORAGE``/``VOXFLOW_HOME`` and the standard AWS variables."""
        env = os.environ if environ is None else environ
        location = env.get("VOXFLOW_STORAGE") or str(voxflow_home(env))
        return cls(
            location=location,
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
        )
