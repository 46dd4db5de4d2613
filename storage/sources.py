"""Input files: expand paths, folders and ``s3://`` prefixes, and fetch one file with its sha256."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from voxflow.storage.errors import ObjectNotFound
from voxflow.storage.keys import file_uri, parse_location, printable, source_name
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import S3Store, sha256_file


class SourceChanging(Exception):
    """A source file changed while it was read: a copy or recording still being written. Nothing of it is
    stored; the next run tries it again."""

    def __init__(self, name: str, what: str) -> None:
        super().__init__(f"'{name}' is still being written ({what} while it was read); the next run tries it again")
        self.name = name


@dataclass(frozen=True)
class FetchedSource:
    """A source file available on local disk, with the sha256 and size of its bytes."""

    uri: str
    path: Path
    sha256: str
    size_bytes: int
    mtime_ns: int | None = None  # of a local source when it was hashed (None: a downloaded copy)
    label: str | None = None  # its name as listed, when known (see SourceEntry.name)

    @property
    def name(self) -> str:
        return self.label or source_name(self.uri)

    def check_unchanged(self, expected_sha256: str | None = None) -> None:
        """Raise :class:`SourceChanging` when the file's size or modification time differ from when it was
        hashed, or its hash from ``expected_sha256`` (the one a stage's cache key was computed from)."""
        if self.mtime_ns is not None:
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                raise SourceChanging(self.name, "it was removed") from None
            if (stat.st_size, stat.st_mtime_ns) != (self.size_bytes, self.mtime_ns):
                raise SourceChanging(
                    self.name,
                    f"its size went from {self.size_bytes} to {stat.st_size} bytes"
                    if stat.st_size != self.size_bytes
                    else "it was modified",
                )
        if expected_sha256 is not None and expected_sha256 != self.sha256:
            raise SourceChanging(self.name, "its content changed since it was listed")


@dataclass(frozen=True)
class SourceEntry:
    """A listed source file: its URI, size, version (mtime for files, ETag for S3 objects) and name: its path
    below the folder or prefix it was found in, as written (see :func:`voxflow.storage.keys.printable`), or
    its file name when it was named itself."""

    uri: str
    size_bytes: int
    version: str
    name: str = ""


def _wanted(relative: str, extensions: Iterable[str] | None, pattern: str | None) -> bool:
    """Whether a file found below a listed folder is a source: not hidden (no part of its path starts with a
    dot, like macOS's ``._x.wav`` resource forks), with an audio extension, matching the pattern."""
    if any(part.startswith(".") for part in relative.split("/")):
        return False
    name = relative.rsplit("/", 1)[-1].lower()
    if extensions is not None and name.rsplit(".", 1)[-1] not in {e.lower().lstrip(".") for e in extensions}:
        return False
    return pattern is None or fnmatch.fnmatchcase(relative, pattern)


def _local_entry(path: Path, name: str | None = None) -> SourceEntry:
    stat = path.stat()
    return SourceEntry(file_uri(path), stat.st_size, f"mtime:{stat.st_mtime_ns}", printable(name or path.name))


def list_sources(
    paths: Iterable[str],
    settings: StoreSettings,
    extensions: Iterable[str] | None = None,
    pattern: str | None = None,
) -> list[SourceEntry]:
    """Source files for paths: files as given, folders and ``s3://`` prefixes walked recursively.

    Files named directly are kept whatever their extension (a bad one fails later with a clear
    error); files found in folders are kept only when their extension is in ``extensions`` and
    their path relative to the folder matches the ``fnmatch`` ``pattern`` (``*`` crosses folders).
    A path that does not exist raises :class:`FileNotFoundError` naming it.
    """
    extensions = list(extensions) if extensions is not None else None
    found: dict[str, SourceEntry] = {}
    for path in paths:
        location = parse_location(path)
        if location.scheme == "s3":
            store = S3Store(location.bucket, "", settings=settings)
            head = store.head(location.path) if location.path else None
            if head is not None:
                uri = f"s3://{location.bucket}/{location.path}"
                etag = head["ETag"].strip('"')
                found[uri] = SourceEntry(uri, head["ContentLength"], f"etag:{etag}", source_name(uri))
                continue
            prefix = f"{location.path}/" if location.path else ""
            entries = [
                SourceEntry(f"s3://{location.bucket}/{key}", size, f"etag:{etag}", printable(key[len(prefix) :]))
                for key, size, etag in store.iter_objects(prefix)
                if _wanted(key[len(prefix) :], extensions, pattern)
            ]
            if not entries:
                raise FileNotFoundError(f"{path}: no such object, and no matching audio files under that prefix")
            found.update((e.uri, e) for e in entries)
            continue
        local = Path(location.path)
        if local.is_dir():
            files = sorted(
                (p, relative)
                for p in local.rglob("*")
                if p.is_file() and _wanted(relative := p.relative_to(local).as_posix(), extensions, pattern)
            )
            found.update((e.uri, e) for e in (_local_entry(p, relative) for p, relative in files))
        elif local.exists():
            entry = _local_entry(local)
            found[entry.uri] = entry
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return list(found.values())


def expand_sources(paths: Iterable[str], settings: StoreSettings, extensions: Iterable[str] | None = None) -> list[str]:
    """The URIs of :func:`list_sources`."""
    return [entry.uri for entry in list_sources(paths, settings, extensions)]


_HASHES: OrderedDict[tuple[str, str], str] = OrderedDict()
_HASHES_LOCK = threading.Lock()
HASH_MEMO_ENTRIES = 4096


def source_sha256(uri: str, settings: StoreSettings) -> str:
    """The sha256 of a source's bytes, remembered per URI and version (mtime or ETag) in this process.

    A stage's cache key starts with its input's sha256, so deciding whether ingest is a cache hit
    reads the source once; an ``s3://`` source is streamed through the hash without being kept.
    """
    entry = list_sources([uri], settings)[0]
    memo_key = (entry.uri, f"{entry.version}:{entry.size_bytes}")
    with _HASHES_LOCK:
        if memo_key in _HASHES:
            _HASHES.move_to_end(memo_key)
            return _HASHES[memo_key]
    location = parse_location(uri)
    if location.scheme == "file":
        digest = sha256_file(location.path)
    else:
        digest, _ = S3Store(location.bucket, "", settings=settings).download(location.path, _NullSink())
    with _HASHES_LOCK:
        _HASHES[memo_key] = digest
        while len(_HASHES) > HASH_MEMO_ENTRIES:
            _HASHES.popitem(last=False)
    return digest


class _NullSink:
    def write(self, data: bytes) -> int:
        return len(data)


@contextlib.contextmanager
def fetch_source(uri: str, settings: StoreSettings, name: str | None = None) -> Iterator[FetchedSource]:
    """Make a source available as a local file (downloading ``s3://`` ones to a temporary file); ``name``: its
    name as listed."""
    location = parse_location(uri)
    if location.scheme == "file":
        path = Path(location.path)
        if not path.is_file():
            raise ObjectNotFound(uri)
        uri = file_uri(path)
        before = path.stat()
        sha256 = source_sha256(uri, settings)  # usually known already: the stage's cache key needed it
        yield FetchedSource(uri, path, sha256, before.st_size, before.st_mtime_ns, name)
        return
    store = S3Store(location.bucket, "", settings=settings)
    suffix = Path(location.path).suffix
    fd, tmp = tempfile.mkstemp(prefix="voxflow-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            sha256, size = store.download(location.path, f)
        yield FetchedSource(uri, Path(tmp), sha256, size, label=name)
    finally:
        os.unlink(tmp)
