"""Integrity and faults against a real SeaweedFS S3 server: an outage at the end of a run and the recovery,
5xx answers, wrong credentials, and checksums sent and enforced on every write."""

from __future__ import annotations

import base64
import hashlib
import time

import pytest

from tests.conftest import S3_KEY_ID, S3_SECRET, FlakyS3
from tests.servers import SeaweedFS, s3_client
from tests.synth import tone_and_noise, write_audio
from voxflow.flows.cli.common import print_report
from voxflow.flows.ingest import ingest
from voxflow.flows.ingest_folder import ingest_folder
from voxflow.flows.pipelines import FilesFailed
from voxflow.storage.errors import StorageError
from voxflow.storage.keys import parse_location
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import S3Store, open_store

pytestmark = pytest.mark.usefixtures("prefect_harness")
OUTAGE_BOUND_S = 60  # the run ends this soon after its store went away (object_store alone waited 180 s)


def _folder(tmp_path, count: int):
    folder = tmp_path / "inbox"
    folder.mkdir()
    for i in range(count):
        write_audio(folder / f"take-{i}.wav", tone_and_noise(1, 16000, 1.0, seed=i), 16000)
    return folder


@pytest.mark.slow
def test_store_gone_at_the_end_of_a_run_then_back(tmp_path, use_store, monkeypatch, capsys):
    """The server stops once every file is done, before the run records them: the run ends in bounded time
    naming the endpoint and the cause, keeps and prints every file's outcome; once the server is back with its
    data, the next run finds the finished work as cache hits (before: 180 s, one misleading line, no table,
    and the next run recomputed every file)."""
    from voxflow.flows import ingest_folder as folder_flow

    server = SeaweedFS(tmp_path / "seaweedfs", S3_KEY_ID, S3_SECRET)
    endpoint = server.start()
    try:
        s3_client(endpoint, S3_KEY_ID, S3_SECRET).create_bucket(Bucket="outage")
        settings = StoreSettings(
            location="s3://outage/store",
            endpoint_url=endpoint,
            region="us-east-1",
            access_key_id=S3_KEY_ID,
            secret_access_key=S3_SECRET,
        )
        catalog = use_store(settings)
        folder = _folder(tmp_path, 3)
        run_files = folder_flow.run_files

        def then_the_server_stops(*args, **kwargs):
            outcomes = run_files(*args, **kwargs)
            server.stop()
            return outcomes

        monkeypatch.setattr(folder_flow, "run_files", then_the_server_stops)
        started = time.monotonic()
        state = ingest_folder(source=str(folder), return_state=True)
        took = time.monotonic() - started
        assert state.is_failed() and took < OUTAGE_BOUND_S + 30, f"{took:.0f} s"
        report = state.result(raise_on_failure=False).report
        assert report.summary() == "3 file(s): 3 done, 0 cached, 0 failed"
        (problem,) = report.problems
        assert problem.startswith("not recorded as processed (s3://outage/store/catalog/processed: ")
        assert f"{endpoint}/outage/store/catalog/processed" in problem and "Connection refused" in problem
        assert "next run checks these files again" in problem and "\n" not in problem
        assert problem in state.message and S3_SECRET not in state.message

        assert print_report(report, ("file", "status")) == 1
        printed = capsys.readouterr()
        assert all(f"take-{i}.wav  done" in printed.out for i in range(3))
        assert f"error: {problem}" in printed.err

        monkeypatch.setattr(folder_flow, "run_files", run_files)
        server.start()  # back, with its data
        again = ingest_folder(source=str(folder))
        assert again.summary() == "3 file(s): 0 done, 3 cached, 0 failed"
        assert len(catalog.frame("processed")) == 3
        runs = catalog.frame("stage_runs")
        computed = runs[(runs["status"] == "completed") & ~runs["cache_hit"]]
        assert len(computed) == 3  # computed once each, before the outage (a retried attempt adds a failed row)
    finally:
        server.stop()


def test_5xx_answers_are_retried_until_they_heal(seaweed_settings, use_store, tmp_path):
    """Every first write through this proxy gets 503 SlowDown from a real SeaweedFS path: the stages' retries heal it."""
    flaky = FlakyS3(seaweed_settings.endpoint_url, fail_first=6, method="PUT")
    try:
        settings = StoreSettings(**{**seaweed_settings.__dict__, "endpoint_url": flaky.url})
        catalog = use_store(settings)
        report = ingest(paths=[str(_folder(tmp_path, 2))])
        assert report.count("done") == 2 and flaky.failed == 6
        assert len(catalog.frame("files")) == 2
    finally:
        flaky.close()


def test_wrong_credentials_fail_at_once_in_one_line_without_the_secret(seaweed_settings, use_store, tmp_path):
    wrong = "not-the-secret-" + "x" * 20
    settings = StoreSettings(**{**seaweed_settings.__dict__, "secret_access_key": wrong})
    use_store(settings)
    started = time.monotonic()
    with pytest.raises(StorageError) as e:
        ingest(paths=[str(_folder(tmp_path, 1))])
    message = str(e.value)
    assert time.monotonic() - started < 30
    assert message.startswith(f"s3://{parse_location(settings.location).bucket}/") and "\n" not in message
    assert "access denied" in message and "check the credentials for http://127.0.0.1:" in message
    assert wrong not in message and S3_SECRET not in message


def test_every_write_sends_a_checksum_and_a_corrupted_body_is_never_stored(seaweed_settings):
    data = bytes(range(256)) * 300
    digest = hashlib.sha256(data).hexdigest()
    proxy = FlakyS3(seaweed_settings.endpoint_url, fail_first=1, method="PUT", corrupt=True)
    try:
        store = S3Store(
            *_bucket_and_prefix(seaweed_settings),
            settings=StoreSettings(**{**seaweed_settings.__dict__, "endpoint_url": proxy.url}),
            max_attempts=1,
        )
        with pytest.raises(StorageError):  # the first PUT arrives with a byte flipped: refused
            store.put_bytes("artifacts/x/corrupted.bin", data)
        assert not open_store(seaweed_settings).exists("artifacts/x/corrupted.bin")

        store.put_bytes("artifacts/x/whole.bin", data)  # the proxy passes the next one intact
        puts = [headers for method, path, headers in proxy.requests if method == "PUT" and path.endswith(".bin")]
        sent = {h.get("x-amz-checksum-sha256") or h.get("X-Amz-Checksum-Sha256") for h in puts}
        assert sent == {base64.b64encode(bytes.fromhex(digest)).decode()}
        assert open_store(seaweed_settings).get_bytes("artifacts/x/whole.bin", sha256=digest) == data
    finally:
        proxy.close()


def test_a_large_object_goes_up_in_parts_each_with_its_checksum(seaweed_settings, tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * (4096 * 24))  # 24 MiB: three 8 MiB parts
    proxy = FlakyS3(seaweed_settings.endpoint_url, fail_first=0, method="PUT")
    try:
        store = S3Store(
            *_bucket_and_prefix(seaweed_settings),
            settings=StoreSettings(**{**seaweed_settings.__dict__, "endpoint_url": proxy.url}),
            multipart_threshold_bytes=8 << 20,
            multipart_chunk_bytes=8 << 20,
        )
        info = store.put_file("artifacts/x/big.bin", path)
        parts = [h for method, p, h in proxy.requests if method == "PUT" and "partNumber=" in p]
        assert len(parts) == 3
        assert all(any(k.lower() == "x-amz-checksum-sha256" for k in h) or "trailer" in str(h).lower() for h in parts)
        assert open_store(seaweed_settings).get_bytes("artifacts/x/big.bin", sha256=info.sha256) == path.read_bytes()
    finally:
        proxy.close()


def _bucket_and_prefix(settings: StoreSettings) -> tuple[str, str]:
    location = parse_location(settings.location)
    return location.bucket, location.path


def test_partial_outputs_never_appear_under_a_final_key_when_a_run_fails(seaweed_settings, use_store, tmp_path):
    """A folder with a bad file and good ones on S3: only whole objects under final keys, rows exact."""
    catalog = use_store(seaweed_settings)
    folder = _folder(tmp_path, 2)
    (folder / "broken.wav").write_bytes(b"RIFF" + b"\0" * 40)
    with pytest.raises(FilesFailed):
        ingest(paths=[str(folder)])
    store = open_store(seaweed_settings)
    keys = store.list("artifacts/")
    assert len(keys) == 2 == len(catalog.frame("artifacts"))
    for row in catalog.frame("artifacts").itertuples():
        assert hashlib.sha256(store.get_bytes(row.key)).hexdigest() == row.sha256
