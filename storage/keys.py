"""URIs and the key layout of the store.

Artifacts are content-addressed: the same input with the same options always lands on
``artifacts/<sha[:2]>/<sha>/<stage>/<params hash>/<name>``. Catalog part files live under
``catalog/<table>/part-<uuid>.parquet``; Prefect's cache records of stages under ``results/<cache key>``.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlparse

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9._=-]+$")


@dataclass(frozen=True)
class Location:
    """A parsed store location: ``scheme`` is ``file`` or ``s3``."""

    scheme: str
    bucket: str  # empty for file://
    path: str  # absolute folder for file://, key prefix (no leading or trailing slash) for s3://


def parse_location(location: str | Path) -> Location:
    """Parse a local path, ``file://`` URI or ``s3://bucket/prefix`` into a Location."""
    text = str(location)
    if text.startswith("s3://"):
        parsed = urlparse(text)
        if not parsed.netloc:
            raise ValueError(f"{text!r}: an s3:// URI needs a bucket name")
        return Location("s3", parsed.netloc, parsed.path.strip("/"))
    if text.startswith("file://"):
        text = os.fsdecode(unquote_to_bytes(urlparse(text).path))  # names in any encoding, as the disk has them
    elif "://" in text:
        raise ValueError(f"{text!r}: unsupported scheme; use a local path, file:// or s3://")
    return Location("file", "", os.path.abspath(Path(text).expanduser()))  # links kept: named as the user named them


def source_name(uri: str) -> str:
    """The file name of a source or artifact URI as its owner wrote it (``file://`` URIs are percent-encoded),
    made safe to print and store (see :func:`printable`)."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    return printable(os.fsdecode(unquote_to_bytes(name)) if uri.startswith("file:") else name)


def printable(name: str) -> str:
    """A name as written, with what cannot be shown on one line escaped: control characters (a newline, a
    terminal escape) as Python writes them, bytes that are not UTF-8 as ``\\xNN``."""
    if name.isprintable():
        return name
    out = []
    for ch in name:
        if 0xDC80 <= ord(ch) <= 0xDCFF:  # a byte os.fsdecode could not decode
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ch if ch.isprintable() else repr(ch)[1:-1])
    return "".join(out)


def file_uri(path: str | Path) -> str:
    """The ``file://`` URI of a local path, made absolute; a symbolic link keeps its own path."""
    return Path(os.path.abspath(Path(path).expanduser())).as_uri()


def check_key(key: str) -> str:
    """Reject keys that could escape the store root (``..``, absolute paths, empty segments)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid store key {key!r}")
    return key


def artifact_key(input_sha256: str, stage: str, params_hash: str, name: str) -> str:
    """The content-addressed key of a stage output."""
    if not SHA256_HEX.match(input_sha256):
        raise ValueError(f"input sha256 must be 64 lowercase hex digits, got {input_sha256!r}")
    for label, segment in (("stage", stage), ("params hash", params_hash), ("name", name)):
        if not _SAFE_SEGMENT.match(segment):
            raise ValueError(f"invalid {label} {segment!r} for an artifact key")
    return f"artifacts/{input_sha256[:2]}/{input_sha256}/{stage}/{params_hash}/{name}"


def catalog_prefix(table: str) -> str:
    """The key prefix under which a catalog table's part files live."""
    if not _SAFE_SEGMENT.match(table):
        raise ValueError(f"invalid table name {table!r}")
    return f"catalog/{table}/"


def new_part_key(table: str) -> str:
    """A fresh, never-reused key for one Parquet part file of a table."""
    return f"{catalog_prefix(table)}part-{uuid.uuid4().hex}.parquet"


RESULTS_PREFIX = "results/"


def result_record_key(cache_key: str) -> str:
    """The key of the Prefect cache record of one stage run (what a cache hit reads)."""
    if not _SAFE_SEGMENT.match(cache_key):
        raise ValueError(f"invalid cache key {cache_key!r}")
    return f"{RESULTS_PREFIX}{cache_key}"
