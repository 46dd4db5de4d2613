"""Input files: expand paths, folders and ``s3://`` prefixes, and fetch one file with its sha256."""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from storage.errors import ObjectNotFound
from storage.keys import file_uri, parse_location
from storage.settings import StoreSettings
from storage.store import S3Store, sha256_file


@dataclass(frozen=True)
class FetchedSource:
    """A source file available on local disk, with the sha256 and size of its bytes."""

    uri: str
    path: Path
    sha256: str
    size_bytes: int

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]


def _has_extension(name: str, extensions: Iterable[str] | None) -> bool:
    return extensions is None or name.lower().rsplit(".", 1)[-1] in {e.lower().lstrip(".") for e in extensions}


def expand_sources(
    paths: Iterable[str], settings: StoreSettings, extensions: Iterable[str] | None = None
) -> list[str]:
    """Source URIs for paths: files as given, folders and ``s3://`` prefixes walked recursively.

    Files named directly are kept whatever their extension (a bad one fails later with a clear
    error); files found in folders are kept only when their extension is in ``extensions``.
    A path that does not exist raises :class:`FileNotFoundError` naming it.
    """
    extensions = list(extensions) if extensions is not None else None
    found: list[str] = []
    for path in paths:
        location = parse_location(path)
        if location.scheme == "s3":
            store = S3Store(location.bucket, "", settings=settings)
            if location.path and store.exists(location.path):
                found.append(f"s3://{location.bucket}/{location.path}")
                continue
            prefix = f"{location.path}/" if location.path else ""
            keys = [k for k in store.list(prefix) if _has_extension(k, extensions)]
            if not keys:
                raise FileNotFoundError(f"{path}: no such object, and no audio files under that prefix")
            found.extend(f"s3://{location.bucket}/{k}" for k in keys)
            continue
        local = Path(location.path)
        if local.is_dir():
            files = sorted(p for p in local.rglob("*") if p.is_file() and _has_extension(p.name, extensions))
            found.extend(file_uri(p) for p in files)
        elif local.exists():
            found.append(file_uri(local))
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return list(dict.fromkeys(found))


@contextlib.contextmanager
def fetch_source(uri: str, settings: StoreSettings) -> Iterator[FetchedSource]:
    """Make a source available as a local file (downloading ``s3://`` ones to a temporary file)."""
    location = parse_location(uri)
    if location.scheme == "file":
        path = Path(location.path)
        if not path.is_file():
            raise ObjectNotFound(uri)
        yield FetchedSource(file_uri(path), path, sha256_file(path), path.stat().st_size)
        return
    store = S3Store(location.bucket, "", settings=settings)
    suffix = Path(location.path).suffix
    fd, tmp = tempfile.mkstemp(prefix="voxflow-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            sha256, size = store.download(location.path, f)
        yield FetchedSource(uri, Path(tmp), sha256, size)
    finally:
        os.unlink(tmp)
