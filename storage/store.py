"""The artifact store: write-once objects under keys, on a local folder or any S3-compatible bucket.

Both backends share one contract:

* ``put_bytes``/``put_file`` write an object atomically and only once: a reader sees the whole object
  or nothing, and a key that already holds an object is never overwritten (the first write wins;
  keys are content-addressed, so a second write of the same key carries the same content).
* every write records the sha256 of the bytes; ``get_bytes(key, sha256=...)`` verifies it on read
  (S3 objects also carry it in their metadata, checked on every read).
* errors name the object's URI and the cause (:mod:`voxflow.storage.errors`).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import io
import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import BinaryIO

from voxflow.storage.errors import ChecksumMismatch, ObjectNotFound, StorageError, TransientStorageError
from voxflow.storage.keys import Location, check_key, parse_location
from voxflow.storage.settings import StoreSettings, voxflow_home

CHUNK_BYTES = 1 << 20
TMP_PREFIX = ".tmp-"
PARTIAL_SUFFIX = ".partial"
PARTIAL_GRACE_S = 10.0  # how old an empty partial file must be before a cleaner takes it for a killed writer's
STAGING_FOLDER = f"{TMP_PREFIX}staging"
TRANSIENT_S3_CODES = ("SlowDown", "Throttling", "RequestTimeout", "BadDigest", "XAmzContentSHA256Mismatch")
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 5, 60  # per S3 request (boto3 and delta-rs)
CATALOG_MAX_RETRIES, CATALOG_RETRY_TIMEOUT_S = 4, 20  # delta-rs's retries of one request


@dataclass(frozen=True)
class ObjectInfo:
    """What a write returns: where the object is and what it holds."""

    uri: str
    key: str
    sha256: str
    size_bytes: int


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _held_partial(path: Path) -> Iterator[BinaryIO]:
    """Create ``path`` for writing, held with ``flock`` until the block ends, then remove it."""
    with open(path, "w+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            yield f
        finally:
            path.unlink(missing_ok=True)


def _remove_partials(folder: Path) -> int:
    """Remove the ``.tmp-*.partial`` files below ``folder`` whose writer is gone: no lock held on them, and
    either holding bytes (so its writer had locked it: a process killed a second ago left it) or untouched
    for ``PARTIAL_GRACE_S`` (an empty one may be a writer's between creating it and taking its lock)."""
    if not folder.is_dir():
        return 0
    removed, cutoff = 0, time.time() - PARTIAL_GRACE_S
    for path in folder.rglob(f"{TMP_PREFIX}*{PARTIAL_SUFFIX}"):
        try:
            info = path.stat()
            if info.st_size == 0 and info.st_mtime > cutoff:
                continue
            with open(path, "rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a live writer
                path.unlink()
            removed += 1
        except (BlockingIOError, FileNotFoundError):
            continue
    return removed


def _verify(uri: str, data: bytes, expected: str | None) -> bytes:
    if expected is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise ChecksumMismatch(uri, expected, actual)
    return data


LINK_EXPIRY_S = 7 * 24 * 3600  # a presigned link's life: SigV4's longest


class ArtifactStore(ABC):
    """Write-once objects addressed by keys below one root (a folder or a bucket prefix)."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """The ``file://`` or ``s3://`` URI of a key."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under the key."""

    @abstractmethod
    def key_of(self, uri: str) -> str | None:
        """The key of a URI of this store, or None when the URI lies elsewhere."""

    @abstractmethod
    def link(self, key: str) -> str:
        """Where a person opens the object: a presigned ``https://`` URL (S3), or the file's path (local;
        browsers do not open ``file://`` links from a web page)."""

    def put_file(self, key: str, path: str | Path, sha256: str | None = None) -> ObjectInfo:
        """Store a local file under the key (streamed; multipart on S3 when large)."""
        size = os.path.getsize(path)
        digest = sha256 or sha256_file(path)
        with open(path, "rb") as f:
            return self._put_stream(key, f, size, digest)

    def _staging_folder(self, key: str) -> Path:
        return voxflow_home() / "staging"

    @contextlib.contextmanager
    def staged(self, key: str) -> Iterator[BinaryIO]:
        """A new local temporary file, open for writing, to store under ``key`` with :meth:`put_file` before
        leaving the block; it is removed on leaving.

        Its name starts with ``.tmp-`` and ends with ``.partial``, and it is held with an advisory lock
        while this process lives, so :meth:`remove_stale_partials` removes it only once its writer died.
        """
        folder = self._staging_folder(key)
        folder.mkdir(parents=True, exist_ok=True)
        with _held_partial(folder / f"{TMP_PREFIX}{uuid.uuid4().hex}-{key.rsplit('/', 1)[-1]}{PARTIAL_SUFFIX}") as f:
            yield f

    def remove_stale_partials(self) -> int:
        """Remove the temporary files (``.tmp-*.partial``) that killed writers left; returns how many."""
        return _remove_partials(voxflow_home() / "staging")

    @abstractmethod
    def get_bytes(self, key: str, sha256: str | None = None) -> bytes:
        """Read a whole object, verifying its sha256 when known."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys that start with ``prefix``, sorted; temporary files are never listed."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object (for maintenance and tests; stages never modify objects)."""

    @abstractmethod
    def pyarrow_filesystem(self) -> tuple[object, str]:
        """A ``pyarrow.fs`` filesystem and the root path in it, for dataset scans."""

    @abstractmethod
    def table_location(self, key: str) -> tuple[str, dict[str, str]]:
        """Where the Delta table under ``key`` lives for delta-rs: its URI and its storage options
        (credentials included: never log them)."""

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store bytes under the key."""
        return self._put_stream(key, io.BytesIO(data), len(data), hashlib.sha256(data).hexdigest())

    @abstractmethod
    def _put_stream(self, key: str, stream: BinaryIO, size: int, sha256: str) -> ObjectInfo:
        """Write a stream whose size and sha256 are known."""


class LocalStore(ArtifactStore):
    """A folder: writes go to a hidden temporary file in the target folder, then a no-clobber link."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def link(self, key: str) -> str:
        return str(self._path(key))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def key_of(self, uri: str) -> str | None:
        location = parse_location(uri)
        if location.scheme != "file":
            return None
        path = Path(location.path)
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else None

    @property
    def staging(self) -> Path:
        """Where writes are staged: one hidden folder of the store (same file system: objects are linked into
        place, never copied), never listed, and cleaned of what killed writers left."""
        return self.root / STAGING_FOLDER

    def _staging_folder(self, key: str) -> Path:
        return self.staging

    def remove_stale_partials(self) -> int:
        return _remove_partials(self.staging) + super().remove_stale_partials()

    def put_file(self, key: str, path: str | Path, sha256: str | None = None) -> ObjectInfo:
        """A file from :meth:`staged` is linked into place (no copy); any other file is copied."""
        path = Path(path)
        if path.parent != self.staging:
            return super().put_file(key, path, sha256)
        info = ObjectInfo(self.uri(key), key, sha256 or sha256_file(path), path.stat().st_size)
        return self._link(path, info)

    def _put_stream(self, key: str, stream: BinaryIO, size: int, sha256: str) -> ObjectInfo:
        info = ObjectInfo(self.uri(key), key, sha256, size)
        if self._path(key).is_file():
            return info
        try:
            with self.staged(key) as f:
                shutil.copyfileobj(stream, f, CHUNK_BYTES)
                f.flush()
                return self._link(Path(f.name), info)
        except OSError as e:
            raise StorageError(info.uri, f"cannot write: {e.strerror or e}") from e

    def _link(self, staged: Path, info: ObjectInfo) -> ObjectInfo:
        """Put a complete staged file in the object's place: synced, then linked, which is atomic and never
        overwrites (the first writer wins)."""
        target = self._path(info.key)
        try:
            with open(staged, "rb") as f:
                os.fsync(f.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(staged, target)
        except FileExistsError:
            pass
        except OSError as e:
            raise StorageError(info.uri, f"cannot write: {e.strerror or e}") from e
        return info

    def get_bytes(self, key: str, sha256: str | None = None) -> bytes:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise ObjectNotFound(path.as_uri()) from e
        except OSError as e:
            raise StorageError(path.as_uri(), f"cannot read: {e.strerror or e}") from e
        return _verify(path.as_uri(), data, sha256)

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for path in base.rglob("*"):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and not any(part.startswith(TMP_PREFIX) for part in key.split("/")):
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def pyarrow_filesystem(self) -> tuple[object, str]:
        import pyarrow.fs

        return pyarrow.fs.LocalFileSystem(), str(self.root)

    def table_location(self, key: str) -> tuple[str, dict[str, str]]:
        return str(self._path(key.rstrip("/"))), {}


class S3Store(ArtifactStore):
    """A bucket prefix on any S3-compatible endpoint, through boto3.

    Small objects are one ``PutObject``; objects over ``multipart_threshold_bytes`` are a multipart
    upload that becomes visible only when completed (an interrupted one is aborted). Every write sends
    a SHA-256 checksum the server verifies before storing (``x-amz-checksum-sha256``; per part for a
    multipart upload), and every object carries its sha256 in the ``x-amz-meta-sha256`` header, checked
    on every read.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        settings: StoreSettings | None = None,
        multipart_threshold_bytes: int = 64 << 20,
        multipart_chunk_bytes: int = 16 << 20,
        max_attempts: int = 5,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.settings = settings or StoreSettings(location=f"s3://{bucket}/{self.prefix}")
        self.multipart_threshold_bytes = multipart_threshold_bytes
        self.multipart_chunk_bytes = multipart_chunk_bytes
        self.max_attempts = max_attempts

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={self.settings.endpoint_url!r})"

    @cached_property
    def client(self):
        import boto3
        from botocore.config import Config

        s = self.settings
        return boto3.session.Session().client(
            "s3",
            endpoint_url=s.endpoint_url,
            region_name=s.region,
            aws_access_key_id=s.access_key_id,
            aws_secret_access_key=s.secret_access_key,
            aws_session_token=s.session_token,
            config=Config(
                retries={"mode": "standard", "max_attempts": self.max_attempts},
                signature_version="s3v4",  # also for presigned links (boto's default there may be SigV2)
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
            ),
        )

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def key_of(self, uri: str) -> str | None:
        root = f"s3://{self.bucket}/{self.prefix}/" if self.prefix else f"s3://{self.bucket}/"
        return uri[len(root) :] if uri.startswith(root) else None

    def link(self, key: str) -> str:
        """A GET URL signed for :data:`LINK_EXPIRY_S` (the signature, never the secret key, is in it)."""
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=LINK_EXPIRY_S)

    def _error(self, key: str, action: str, e: Exception, uri: str | None = None) -> StorageError:
        from botocore.exceptions import BotoCoreError, ClientError

        uri = uri or self.uri(key)
        if isinstance(e, ClientError):
            error = e.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("404", "NoSuchKey", "NotFound"):
                return ObjectNotFound(uri)
            reason = f"cannot {action}: {code} {error.get('Message', '')}".strip()
            if code == "NoSuchBucket":
                reason = f"cannot {action}: bucket {self.bucket!r} does not exist"
            elif status == 403:
                reason = (
                    f"cannot {action}: access denied ({code or 403} {error.get('Message') or 'Forbidden'}".strip()
                    + f"): check the credentials for {self.settings.endpoint_url or 'AWS S3'} and their rights"
                    f" on bucket {self.bucket!r}"
                )
            # BadDigest, XAmzContentSHA256Mismatch: the body changed on its way (the checksum we sent caught it)
            transient = status >= 500 or code in TRANSIENT_S3_CODES
            return (TransientStorageError if transient else StorageError)(uri, reason)
        if isinstance(e, BotoCoreError):
            return TransientStorageError(uri, f"cannot {action}: {e}")
        return StorageError(uri, f"cannot {action}: {e}")

    def head(self, key: str) -> dict | None:
        """The object's ``HeadObject`` response, or None when there is none."""
        return self._head(key)

    def _head(self, key: str) -> dict | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as e:
            error = self._error(key, "read metadata", e)
            if isinstance(error, ObjectNotFound):
                return None
            raise error from e

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def _put_stream(self, key: str, stream: BinaryIO, size: int, sha256: str) -> ObjectInfo:
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        info = ObjectInfo(self.uri(key), key, sha256, size)
        if self._head(key) is not None:
            return info
        try:
            if size < self.multipart_threshold_bytes:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self._key(key),
                    Body=stream.read(),
                    Metadata={"sha256": sha256},
                    ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(),  # the server verifies it
                )
            else:
                config = TransferConfig(
                    multipart_threshold=self.multipart_threshold_bytes,
                    multipart_chunksize=self.multipart_chunk_bytes,
                    use_threads=False,
                )
                extra = {"Metadata": {"sha256": sha256}, "ChecksumAlgorithm": "SHA256"}  # each part verified
                self.client.upload_fileobj(stream, self.bucket, self._key(key), ExtraArgs=extra, Config=config)
        except (ClientError, BotoCoreError) as e:
            raise self._error(key, "write", e) from e
        except Exception as e:  # boto3's transfer manager wraps failures in its own types
            cause = e.__cause__ or e.__context__
            if isinstance(cause, (ClientError, BotoCoreError)):
                raise self._error(key, "write", cause) from e
            raise StorageError(info.uri, f"cannot write: {e}") from e
        return info

    def get_bytes(self, key: str, sha256: str | None = None) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            data = response["Body"].read()
        except (ClientError, BotoCoreError) as e:
            raise self._error(key, "read", e) from e
        recorded = response.get("Metadata", {}).get("sha256")
        _verify(self.uri(key), data, recorded)
        return _verify(self.uri(key), data, sha256)

    def download(self, key: str, f: BinaryIO) -> tuple[str, int]:
        """Stream an object into an open file; returns the sha256 and size of the bytes."""
        from botocore.exceptions import BotoCoreError, ClientError

        digest, size = hashlib.sha256(), 0
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            for block in iter(lambda: body.read(CHUNK_BYTES), b""):
                digest.update(block)
                size += len(block)
                f.write(block)
        except (ClientError, BotoCoreError) as e:
            raise self._error(key, "read", e) from e
        return digest.hexdigest(), size

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        return (key for key, _, _ in self.iter_objects(prefix))

    def iter_objects(self, prefix: str = "") -> Iterator[tuple[str, int, str]]:
        """Key, size and ETag of every object under the prefix."""
        from botocore.exceptions import BotoCoreError, ClientError

        if ".." in prefix.split("/") or prefix.startswith("/"):
            raise ValueError(f"invalid key prefix {prefix!r}")
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    yield item["Key"][strip:], item["Size"], item["ETag"].strip('"')
        except (ClientError, BotoCoreError) as e:
            raise self._error("", "list", e, uri=f"s3://{self.bucket}/{full}") from e

    def list(self, prefix: str = "") -> list[str]:
        return sorted(self.iter_keys(prefix))

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as e:
            raise self._error(key, "delete", e) from e

    def pyarrow_filesystem(self) -> tuple[object, str]:
        import pyarrow.fs

        s = self.settings
        fs = pyarrow.fs.S3FileSystem(
            access_key=s.access_key_id,
            secret_key=s.secret_access_key,
            session_token=s.session_token,
            region=s.region or "us-east-1",
            endpoint_override=s.endpoint_url,
        )
        return fs, f"{self.bucket}/{self.prefix}".rstrip("/")

    def table_location(self, key: str) -> tuple[str, dict[str, str]]:
        """Commits on S3 are safe for concurrent writers: delta-rs writes each log entry with a
        conditional put (``If-None-Match``), which AWS S3, SeaweedFS, MinIO and R2 honour."""
        s = self.settings
        options = {
            "AWS_REGION": s.region or "us-east-1",
            "AWS_ENDPOINT_URL": s.endpoint_url,
            "AWS_ALLOW_HTTP": "true" if (s.endpoint_url or "").startswith("http://") else None,
            "AWS_ACCESS_KEY_ID": s.access_key_id,
            "AWS_SECRET_ACCESS_KEY": s.secret_access_key,
            "AWS_SESSION_TOKEN": s.session_token,
            # bounded: an unreachable endpoint fails a catalog write in seconds, not after object_store's 3 minutes
            "connect_timeout": f"{CONNECT_TIMEOUT_S}s",
            "max_retries": str(CATALOG_MAX_RETRIES),
            "retry_timeout": f"{CATALOG_RETRY_TIMEOUT_S}s",
        }
        return self.uri(key.rstrip("/")), {k: v for k, v in options.items() if v}


def open_store(settings: StoreSettings, **s3_options) -> ArtifactStore:
    """The store the settings name: a :class:`LocalStore` or an :class:`S3Store`."""
    location: Location = parse_location(settings.location)
    if location.scheme == "s3":
        return S3Store(location.bucket, location.path, settings=settings, **s3_options)
    return LocalStore(location.path)


@lru_cache(maxsize=16)
def shared_store(settings: StoreSettings) -> ArtifactStore:
    """One store (and S3 client, which is thread-safe) per settings in this process."""
    return open_store(settings)
