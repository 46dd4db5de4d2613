"""The artifact store, on a local folder and on a real S3 server over HTTP."""

from __future__ import annotations

import hashlib
import os

import boto3
import pytest

from voxflow.storage.errors import ChecksumMismatch, ObjectNotFound, StorageError
from voxflow.storage.keys import artifact_key, parse_location
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import LocalStore, S3Store, open_store

SHA = hashlib.sha256(b"input").hexdigest()


def test_content_addressed_key_layout():
    key = artifact_key(SHA, "ingest", "0123abcd", "audio.wav")
    assert key == f"artifacts/{SHA[:2]}/{SHA}/ingest/0123abcd/audio.wav"
    with pytest.raises(ValueError, match="sha256"):
        artifact_key("not-a-sha", "ingest", "0123abcd", "audio.wav")
    with pytest.raises(ValueError, match="stage"):
        artifact_key(SHA, "../evil", "0123abcd", "audio.wav")


def test_put_get_roundtrip_records_sha256(store):
    data = os.urandom(10_000)
    info = store.put_bytes("artifacts/x/a.bin", data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.size_bytes == len(data)
    assert info.uri.startswith("file://" if isinstance(store, LocalStore) else "s3://")
    assert info.uri.endswith("/artifacts/x/a.bin")
    assert store.exists("artifacts/x/a.bin")
    assert store.get_bytes("artifacts/x/a.bin", sha256=info.sha256) == data


def test_objects_are_written_once(store):
    first = store.put_bytes("k/obj", b"first")
    second = store.put_bytes("k/obj", b"second")  # same key again: the first write wins
    assert second.uri == first.uri
    assert store.get_bytes("k/obj") == b"first"


def test_read_verifies_sha256(store):
    store.put_bytes("k/obj", b"payload")
    with pytest.raises(ChecksumMismatch) as e:
        store.get_bytes("k/obj", sha256=hashlib.sha256(b"other").hexdigest())
    assert "k/obj" in str(e.value)


def test_missing_object_error_names_the_uri(store):
    with pytest.raises(ObjectNotFound) as e:
        store.get_bytes("no/such/object")
    assert e.value.uri == store.uri("no/such/object")
    assert str(e.value).startswith(store.uri("no/such/object"))


def test_listing_by_prefix(store):
    for key in ("catalog/files/part-1.parquet", "catalog/files/part-2.parquet", "catalog/segments/part-3.parquet"):
        store.put_bytes(key, b"x")
    assert store.list("catalog/files/") == ["catalog/files/part-1.parquet", "catalog/files/part-2.parquet"]
    assert len(store.list("catalog/")) == 3
    assert store.list("nothing/") == []


def test_keys_cannot_escape_the_root(store):
    for key in ("../outside", "/abs", "a//b", "a/./b"):
        with pytest.raises(ValueError):
            store.put_bytes(key, b"x")


def test_local_write_is_atomic_and_leaves_no_temporary_file(local_store, monkeypatch):
    def broken_link(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", broken_link)
    with pytest.raises(StorageError, match="No space left"):
        local_store.put_bytes("a/b.bin", b"data")
    monkeypatch.undo()
    assert not local_store.exists("a/b.bin")
    assert list(local_store.root.rglob("*.partial")) == []


def test_s3_large_object_uses_a_completed_multipart_upload(s3_settings, tmp_path):
    store = S3Store(
        parse_location(s3_settings.location).bucket,
        "big",
        settings=s3_settings,
        multipart_threshold_bytes=5 << 20,
        multipart_chunk_bytes=5 << 20,
    )
    path = tmp_path / "big.bin"
    data = os.urandom(12 << 20)
    path.write_bytes(data)
    info = store.put_file("artifacts/big.bin", path)
    head = store.client.head_object(Bucket=store.bucket, Key="big/artifacts/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # three parts: a multipart upload, completed
    assert head["Metadata"]["sha256"] == info.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get_bytes("artifacts/big.bin", sha256=info.sha256) == data
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket)
    assert not uploads.get("Uploads")


def test_s3_read_checks_the_recorded_sha256(s3_settings):
    store = open_store(s3_settings)
    location = parse_location(s3_settings.location)
    # an object changed behind the store's back no longer matches the sha256 in its metadata
    store.client.put_object(
        Bucket=location.bucket, Key=f"{location.path}/k/tampered", Body=b"changed", Metadata={"sha256": "0" * 64}
    )
    with pytest.raises(ChecksumMismatch):
        store.get_bytes("k/tampered")


def test_s3_missing_bucket_error_is_clear_and_has_no_secret(s3_settings):
    settings = StoreSettings(**{**s3_settings.__dict__, "location": "s3://no-such-bucket-voxflow/p"})
    store = open_store(settings)
    with pytest.raises(StorageError) as e:
        store.put_bytes("k", b"x")
    assert "s3://no-such-bucket-voxflow/p/k" in str(e.value)
    assert "does not exist" in str(e.value)
    assert settings.secret_access_key not in str(e.value)
    assert settings.secret_access_key not in repr(settings)


def test_s3_endpoint_from_environment(s3_settings, monkeypatch):
    monkeypatch.setenv("VOXFLOW_STORAGE", s3_settings.location)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_settings.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_settings.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_settings.secret_access_key)
    store = open_store(StoreSettings.from_env())
    store.put_bytes("env/obj", b"hello")
    raw = boto3.client(
        "s3",
        endpoint_url=s3_settings.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=s3_settings.access_key_id,
        aws_secret_access_key=s3_settings.secret_access_key,
    )
    location = parse_location(s3_settings.location)
    assert raw.get_object(Bucket=location.bucket, Key=f"{location.path}/env/obj")["Body"].read() == b"hello"


def test_default_location_is_voxflow_home(monkeypatch, tmp_path):
    monkeypatch.delenv("VOXFLOW_STORAGE", raising=False)
    monkeypatch.setenv("VOXFLOW_HOME", str(tmp_path / "home"))
    store = open_store(StoreSettings.from_env())
    assert isinstance(store, LocalStore) and store.root == tmp_path / "home"
    monkeypatch.delenv("VOXFLOW_HOME")
    monkeypatch.chdir(tmp_path)
    assert open_store(StoreSettings.from_env()).root == tmp_path / ".voxflow"


def test_a_killed_writers_partial_file_is_removed_at_once_a_live_ones_is_kept(local_store):
    """A writer's partial file is locked from the moment it has its name, so the next run removes what a process
    killed a second ago left, without waiting out a grace period, and never a live writer's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    writer = (
        "import sys, time\nfrom voxflow.storage.store import LocalStore\n"
        "store = LocalStore(sys.argv[1])\n"
        "with store.staged('a/b.wav') as f:\n    f.write(b'x' * 1000); f.flush(); print('writing', flush=True); time.sleep(60)\n"
    )
    live = subprocess.Popen([sys.executable, "-c", writer, str(local_store.root)], stdout=subprocess.PIPE, text=True)
    killed = subprocess.Popen([sys.executable, "-c", writer, str(local_store.root)], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline() == killed.stdout.readline() == "writing\n"
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        started = time.monotonic()
        assert len(list(local_store.staging.glob("*.partial"))) == 2
        assert local_store.remove_stale_partials() == 1  # the killed one, a moment after its death
        assert len(list(local_store.staging.glob("*.partial"))) == 1 and time.monotonic() - started < 5
    finally:
        live.kill()
        live.wait()
