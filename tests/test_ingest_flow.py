"""The ``ingest`` flow end to end under Prefect: corpus recordings, synthetic files, S3, bad input, caching."""

from __future__ import annotations

import shutil

import boto3
import numpy as np
import pytest

from tests.conftest import CORPUS
from tests.synth import tone_and_noise, write_audio
from voxflow.flows.ingest import ingest
from voxflow.flows.pipelines import FilesFailed
from voxflow.storage.keys import parse_location
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import open_store
from voxflow.tasks.helpers import audio
from voxflow.tasks.ingest import IngestOptions

pytestmark = pytest.mark.usefixtures("prefect_harness")

# From tests/data/corpus/README.md (durations to the precision it gives) and SHA256SUMS.
CORPUS_EXPECTED = {
    "asr_en_jfk/jfk.flac": (11.0, 44100, 2),
    "clone_ref_lj/LJ050-0131.wav": (7.7, 22050, 1),
    "denoise_babble/speech.wav": (3.1, 16000, 1),
    "denoise_babble/speech_bab_0dB.wav": (3.1, 16000, 1),
    "diar_2spk_pyannote/sample.wav": (30.0, 16000, 1),
    "music_vocals_mp3/audio_example.mp3": (10.9, 44100, 2),
    "sep_2spk_mixture/mixture_2.wav": (7.2, 16000, 1),
    "sep_2spk_mixture/source1_2.wav": (7.2, 16000, 1),
    "sep_2spk_mixture/source2_2.wav": (7.2, 16000, 1),
}


def _sha256sums() -> dict[str, str]:
    lines = (CORPUS / "SHA256SUMS").read_text().splitlines()
    return {name.removeprefix("./"): sha for sha, name in (line.split(maxsplit=1) for line in lines)}


def test_corpus_files_are_ingested_with_their_reference_facts(tmp_path, use_store):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    report = ingest(paths=[str(CORPUS)])
    assert report.count("done") == len(CORPUS_EXPECTED) and not report.failed

    files = catalog.frame("files").set_index("source_name")
    sums = _sha256sums()
    assert len(files) == len(CORPUS_EXPECTED)
    for relative, (duration_s, rate, channels) in CORPUS_EXPECTED.items():
        row = files.loc[relative]  # named by its path below the folder ingested
        assert row["sha256"] == sums[relative]
        assert row["duration_s"] == pytest.approx(duration_s, abs=0.05)
        assert (row["sample_rate_hz"], row["channels"]) == (rate, channels)
        assert -40 < row["integrated_lufs"] < 0
        assert 0 < row["peak"] < 1.1  # a decoded MP3 may overshoot full scale slightly (1.045 here)

    artifacts = catalog.frame("artifacts")
    store = open_store(StoreSettings.from_env())
    assert len(artifacts) == len(CORPUS_EXPECTED)
    for art in artifacts.itertuples():
        assert (art.stage, art.sample_rate_hz, art.channels, art.media_type) == ("ingest", 16000, 1, "audio/wav")
        samples, rate = audio.decode_wav_bytes(store.get_bytes(art.key, sha256=art.sha256))
        assert rate == 16000 and samples.shape == (1, art.frames)
        assert art.duration_s == pytest.approx(files.set_index("sha256").loc[art.input_sha256, "duration_s"], abs=1e-3)

    runs = catalog.frame("stage_runs")
    assert len(runs) == len(CORPUS_EXPECTED)
    assert set(runs["status"]) == {"completed"} and not runs["cache_hit"].any()
    assert runs["flow_run_id"].notna().all() and runs["task_run_id"].nunique() == len(runs)
    assert (runs["peak_rss_bytes"] > 0).all() and set(runs["device"]) == {"cpu"}


def test_second_run_is_a_cache_hit_without_decoding(tmp_path, use_store, monkeypatch):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    jfk = str(CORPUS / "asr_en_jfk" / "jfk.flac")
    assert ingest(paths=[jfk]).count("done") == 1
    versions = {t: catalog.version(t) for t in ("files", "artifacts")}

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cache hit must not decode")

    monkeypatch.setattr(audio, "open_audio", no_decoding)
    report = ingest(paths=[jfk])
    assert report.count("cached") == 1
    assert report.outcomes[0].result.stats.duration_s == pytest.approx(11.0)
    assert {t: catalog.version(t) for t in ("files", "artifacts")} == versions  # nothing written again
    runs = catalog.frame("stage_runs").sort_values("recorded_at")
    assert list(runs["cache_hit"]) == [False, True]


def test_same_bytes_from_a_new_path_add_only_a_files_row(tmp_path, use_store):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    copy = tmp_path / "copy.flac"
    shutil.copy(CORPUS / "asr_en_jfk" / "jfk.flac", copy)
    ingest(paths=[str(CORPUS / "asr_en_jfk" / "jfk.flac")])
    assert ingest(paths=[str(copy)]).count("cached") == 1
    files = catalog.frame("files")
    assert sorted(files["source_name"]) == ["copy.flac", "jfk.flac"] and files["sha256"].nunique() == 1
    assert len(catalog.frame("artifacts")) == 1


def test_deleted_artifact_is_recomputed(tmp_path, use_store):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    wav = write_audio(tmp_path / "tone.wav", tone_and_noise(1, 16000, 1.0), 16000)
    ingest(paths=[str(wav)])
    key = catalog.frame("artifacts")["key"].iloc[0]
    store = open_store(StoreSettings.from_env())
    store.delete(key)
    assert ingest(paths=[str(wav)]).count("done") == 1
    assert store.exists(key)


def test_changed_options_land_under_a_new_key(tmp_path, use_store):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    jfk = str(CORPUS / "asr_en_jfk" / "jfk.flac")
    ingest(paths=[jfk])
    report = ingest(paths=[jfk], options=IngestOptions(sample_rate_hz=22050, mono=False))
    assert report.count("done") == 1
    artifacts = catalog.frame("artifacts")
    assert sorted(zip(artifacts["sample_rate_hz"], artifacts["channels"])) == [(16000, 1), (22050, 2)]
    assert artifacts["params_hash"].nunique() == 2


def test_synthetic_files_of_every_kind(tmp_path, use_store):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    folder = tmp_path / "synthetic"
    folder.mkdir()
    cases = {
        "tone-8k.wav": (8000, 1, "PCM_16"),
        "noise-96k.wav": (96000, 2, "PCM_24"),
        "surround-48k.flac": (48000, 6, "PCM_24"),
        "octo-44k.wav": (44100, 8, "FLOAT"),
        "stereo.ogg": (44100, 2, "VORBIS"),
        "stereo.mp3": (44100, 2, "MPEG_LAYER_III"),
        "stereo.m4a": (44100, 2, None),
    }
    for name, (rate, channels, subtype) in cases.items():
        write_audio(folder / name, tone_and_noise(channels, rate, 1.5, seed=rate), rate, subtype)
    (folder / "readme.txt").write_text("not audio, skipped when walking a folder")
    report = ingest(paths=[str(folder)])
    assert report.count("done") == len(cases)
    files = catalog.frame("files").set_index("source_name")
    for name, (rate, channels, _) in cases.items():
        assert (files.loc[name, "sample_rate_hz"], files.loc[name, "channels"]) == (rate, channels)
        assert files.loc[name, "duration_s"] == pytest.approx(1.5, abs=0.06)
    assert set(catalog.frame("artifacts")["sample_rate_hz"]) == {16000}


def test_bad_files_fail_alone_and_leave_nothing_half_written(tmp_path, use_store):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = write_audio(folder / "good.wav", tone_and_noise(1, 16000, 1.0), 16000, "PCM_16")
    (folder / "truncated.wav").write_bytes(good.read_bytes()[:5000])
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notes.wav").write_text("plain text\n" * 50)
    with pytest.raises(FilesFailed) as e:
        ingest(paths=[str(folder)])
    report = e.value.report
    assert (report.count("done"), report.count("failed")) == (1, 3)
    errors = {o.source_uri.rsplit("/", 1)[1]: o.error for o in report.failed}
    assert errors["truncated.wav"].startswith("cannot decode 'truncated.wav': file is truncated")
    assert errors["empty.wav"] == "cannot decode 'empty.wav': file is empty"
    assert errors["notes.wav"].startswith("cannot decode 'notes.wav': not a recognised audio format")
    assert {o.failed_stage for o in report.failed} == {"ingest"}
    assert str(e.value).startswith("4 file(s): 1 done, 0 cached, 3 failed; failed: ")  # the run's state message
    assert all(f"{name}: ingest: cannot decode '{name}'" in str(e.value) for name in errors)

    assert list(catalog.frame("files")["source_name"]) == ["good.wav"]
    assert len(catalog.frame("artifacts")) == 1
    store = open_store(StoreSettings.from_env())
    assert len(store.list("artifacts/")) == 1  # good.wav's audio.wav, nothing else
    records = [k for k in store.list("results/") if len(k.rsplit("/", 1)[1]) == 64]
    assert len(records) == 1  # and its cache record (failed runs keep only their exception's record)
    runs = catalog.frame("stage_runs")
    failed = runs[runs["status"] == "failed"]
    assert len(failed) == 3 and set(failed["error_class"]) == {"AudioDecodeError"}
    assert (failed["attempt"] == 1).all()  # bad input is never retried
    assert not any(o.transient for o in report.failed)


def test_s3_source_into_s3_store(s3_settings, use_store):
    catalog = use_store(s3_settings)
    location = parse_location(s3_settings.location)
    client = boto3.client(
        "s3",
        endpoint_url=s3_settings.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=s3_settings.access_key_id,
        aws_secret_access_key=s3_settings.secret_access_key,
    )
    for name in ("asr_en_jfk/jfk.flac", "music_vocals_mp3/audio_example.mp3"):
        client.upload_file(str(CORPUS / name), location.bucket, f"incoming/{name}")
    report = ingest(paths=[f"s3://{location.bucket}/incoming"])
    assert report.count("done") == 2
    files = catalog.frame("files").set_index("source_name")
    jfk = "asr_en_jfk/jfk.flac"  # its key below the prefix ingested
    assert files.loc[jfk, "source_uri"] == f"s3://{location.bucket}/incoming/asr_en_jfk/jfk.flac"
    assert files.loc[jfk, "sha256"] == _sha256sums()["asr_en_jfk/jfk.flac"]
    assert catalog.dataset("artifacts").count_rows() == 2
    assert all(
        uri.startswith(f"s3://{location.bucket}/{location.path}/artifacts/")
        for uri in catalog.frame("artifacts")["uri"]
    )
    assert ingest(paths=[f"s3://{location.bucket}/incoming/asr_en_jfk/jfk.flac"]).count("cached") == 1
    # secrets never reach the catalog, nor the flow/task runs and logs the Prefect API keeps
    for table in ("files", "artifacts", "stage_runs"):
        assert s3_settings.secret_access_key not in catalog.frame(table).to_csv()
    assert s3_settings.secret_access_key not in _everything_the_api_recorded()


def _everything_the_api_recorded() -> str:
    import asyncio

    from prefect.client.orchestration import get_client

    async def read() -> str:
        async with get_client() as client:
            records = [
                *await client.read_flow_runs(),
                *await client.read_task_runs(),
                *await client.read_logs(),
                *await client.read_artifacts(),
            ]
            return "\n".join(r.model_dump_json() for r in records)

    return asyncio.run(read())


def test_missing_path_is_a_clear_error(tmp_path, use_store):
    use_store(StoreSettings(location=str(tmp_path / "store")))
    with pytest.raises(FileNotFoundError, match="nope.wav: no such file or folder"):
        ingest(paths=[str(tmp_path / "nope.wav")])


def test_working_audio_matches_direct_compute(tmp_path, use_store):
    """The stored artifact is exactly the pure compute's output for the decoded file."""
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    source = CORPUS / "clone_ref_lj" / "LJ050-0131.wav"
    ingest(paths=[str(source)])
    from voxflow.tasks.ingest import preprocess

    decoded = audio.decode_file(source)
    expected = preprocess(decoded.samples, decoded.sample_rate_hz, IngestOptions())
    art = catalog.frame("artifacts").iloc[0]
    stored, _ = audio.decode_wav_bytes(open_store(StoreSettings.from_env()).get_bytes(art["key"]))
    np.testing.assert_array_equal(stored, expected)


def test_a_run_on_an_unmigrated_catalog_stops_at_once_naming_the_command(tmp_path, use_store):
    from tests.test_catalog import _legacy_store
    from voxflow.storage.catalog import UnmigratedCatalog

    legacy = _legacy_store(tmp_path)  # a store written by the part-file catalog
    use_store(StoreSettings(location=str(legacy.store.root)))
    with pytest.raises(UnmigratedCatalog, match="run 'voxflow catalog migrate' once to convert it"):
        ingest(paths=[str(CORPUS / "denoise_babble" / "speech.wav")])
    assert not (legacy.store.root / "artifacts").exists()  # nothing was computed or written
    assert legacy.migrate("files") == 2 and legacy.migrate("stage_runs") == 1
    assert ingest(paths=[str(CORPUS / "denoise_babble" / "speech.wav")]).count("done") == 1


def test_names_are_shown_and_stored_as_written(tmp_path, use_store):
    """A name with accents and spaces is neither percent-encoded in the run's table nor in ``files``."""
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    folder = tmp_path / "réunions"
    folder.mkdir()
    write_audio(folder / "été à Paris #1.wav", tone_and_noise(1, 16000, 1.0), 16000)
    report = ingest(paths=[str(folder)])
    assert [o.name for o in report.outcomes] == ["été à Paris #1.wav"]
    assert report.outcomes[0].row()["file"] == "été à Paris #1.wav"
    assert list(catalog.frame("files")["source_name"]) == ["été à Paris #1.wav"]
