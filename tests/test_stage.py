"""The stage mechanism under real Prefect runs: cache hits, invalidation, concurrency, retries, GPU guard."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest

from tests import stages
from tests.conftest import CORPUS
from tests.stages import ChainOptions, GainOptions, LevelsOptions, chain
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import open_store

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(autouse=True)
def reset_counters():
    stages.CALLS.clear()
    stages.FAULTS.clear()
    yield
    stages.FAULTS.clear()


def _computed(catalog) -> dict[str, int]:
    runs = catalog.frame("stage_runs")
    done = runs[(runs["status"] == "completed") & ~runs["cache_hit"]]
    return done["stage"].value_counts().to_dict()


@pytest.fixture(scope="session")
def ten_minutes_flac(tmp_path_factory):
    """Ten minutes of real recordings (JFK's speech and the music clip, looped), 44.1 kHz stereo FLAC."""
    import numpy as np
    import soundfile as sf

    from voxflow.tasks.helpers import audio

    parts = []
    for name in ("asr_en_jfk/jfk.flac", "music_vocals_mp3/audio_example.mp3"):
        decoded = audio.decode_file(CORPUS / name)
        parts.append(audio.resample(decoded.samples, decoded.sample_rate_hz, 44100))
    one_pass = np.concatenate(parts, axis=1)
    frames = 600 * 44100
    looped = np.tile(one_pass, (1, -(-frames // one_pass.shape[1])))[:, :frames]
    path = tmp_path_factory.mktemp("long") / "ten-minutes.flac"
    sf.write(path, looped.T, 44100, subtype="PCM_16")
    return path


def test_warm_rerun_is_all_cache_hits(tmp_path, use_store, ten_minutes_flac):
    """Every stage of a re-run is a cache hit with the same result. How long a warm re-run takes against a
    cold one is measured by bench/bench_e2e.py, not asserted here: a flow run's end waits 0-1 s on
    Prefect's heartbeat thread, which made a bound on the ratio flaky."""
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    cold = chain(paths=[str(ten_minutes_flac)])
    warm = chain(paths=[str(ten_minutes_flac)])

    assert cold.outcomes[0].stages == ("ingest", "gain", "levels")
    assert warm.outcomes[0].status == "cached" and warm.outcomes[0].stages == ()
    assert warm.outcomes[0].result == cold.outcomes[0].result
    assert _computed(catalog) == {"ingest": 1, "gain": 1, "levels": 1}
    runs = catalog.frame("stage_runs")
    assert sorted(runs[runs["cache_hit"]]["stage"]) == ["gain", "ingest", "levels"]


def test_changing_one_stage_option_recomputes_that_stage_and_what_follows(tmp_path, use_store):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    jfk = str(CORPUS / "asr_en_jfk" / "jfk.flac")
    chain(paths=[jfk])
    assert chain(paths=[jfk], options=ChainOptions(levels=LevelsOptions(frame_s=0.25))).outcomes[0].stages == (
        "levels",
    )
    report = chain(paths=[jfk], options=ChainOptions(gain=GainOptions(gain_db=-3.0)))
    assert report.outcomes[0].stages == ("gain", "levels")
    assert _computed(catalog) == {"ingest": 1, "gain": 2, "levels": 3}
    # a batch size changes the params hash but not the bytes: the next stage is a hit on the same input
    report = chain(paths=[jfk], options=ChainOptions(gain=GainOptions(batch_size=2)))
    assert report.outcomes[0].stages == ("gain",)


def test_deleting_an_artifact_recomputes_its_stage(tmp_path, use_store):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    wav = str(CORPUS / "denoise_babble" / "speech.wav")
    first = chain(paths=[wav]).outcomes[0]
    store = open_store(StoreSettings.from_env())
    gain_uri = next(uri for uri in store.list("artifacts/") if "/gain/" in uri)
    store.delete(gain_uri)
    again = chain(paths=[wav]).outcomes[0]
    assert again.stages == ("gain",)  # same bytes again, so levels stays a cache hit
    assert store.exists(gain_uri) and again.result == first.result
    assert _computed(catalog) == {"ingest": 1, "gain": 2, "levels": 1}


def test_concurrent_duplicate_runs_compute_each_stage_once(tmp_path, use_store):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    wav = str(CORPUS / "denoise_babble" / "speech.wav")
    options = ChainOptions(gain=GainOptions(hold_s=1.0))
    reports = []
    threads = [threading.Thread(target=lambda: reports.append(chain(paths=[wav], options=options))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(reports) == 2
    assert sorted(r.outcomes[0].status for r in reports) == ["cached", "done"]
    assert stages.CALLS == {"gain": 1, "levels": 1}
    assert _computed(catalog) == {"ingest": 1, "gain": 1, "levels": 1}
    assert reports[0].outcomes[0].result == reports[1].outcomes[0].result


def test_out_of_memory_halves_the_batch_and_succeeds(tmp_path, use_store):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    stages.FAULTS["oom"] = 1
    report = chain(paths=[str(CORPUS / "denoise_babble" / "speech.wav")])
    assert report.outcomes[0].status == "done"
    assert [r for r in report.outcomes[0].result.__dict__] and stages.CALLS["gain"] == 1
    runs = catalog.frame("stage_runs")
    assert list(runs[runs["stage"] == "gain"]["attempt"]) == [1]  # healed inside the attempt


def test_out_of_memory_at_batch_one_is_retried_by_prefect(tmp_path, use_store):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    stages.FAULTS["oom_any_batch"] = 1
    report = chain(
        paths=[str(CORPUS / "denoise_babble" / "speech.wav")], options=ChainOptions(gain=GainOptions(batch_size=1))
    )
    assert report.outcomes[0].status == "done"
    runs = catalog.frame("stage_runs")
    gains = runs[runs["stage"] == "gain"].sort_values("attempt")
    assert list(gains["status"]) == ["failed", "completed"] and list(gains["attempt"]) == [1, 2]
    assert gains["error_class"].iloc[0] == "OutOfMemoryError"


def test_a_deterministic_failure_is_not_retried(tmp_path, use_store):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio at all\n" * 40)
    from voxflow.flows.pipelines import FilesFailed

    with pytest.raises(FilesFailed) as e:
        chain(paths=[str(bad)])
    outcome = e.value.report.outcomes[0]
    assert outcome.error.startswith("cannot decode 'bad.wav'") and not outcome.transient
    runs = catalog.frame("stage_runs")
    assert list(runs["stage"]) == ["ingest"] and list(runs["attempt"]) == [1]
    assert stages.CALLS["gain"] == 0


def test_gpu_stages_share_the_gpu_slots_and_cpu_stages_do_not(tmp_path, use_store, monkeypatch):
    from prefect.client.orchestration import get_client

    from voxflow.tasks.kit import gpu

    monkeypatch.setenv("VOXFLOW_GPU_SLOTS", "1")
    monkeypatch.setattr(gpu, "_ensured", set())
    use_store(StoreSettings(location=str(tmp_path / "store")))
    intervals: list[tuple[float, float]] = []
    original = stages.apply_gain

    def timed(*args, **kwargs):
        start = time.monotonic()
        time.sleep(0.4)
        result = original(*args, **kwargs)
        intervals.append((start, time.monotonic()))
        return result

    monkeypatch.setattr(stages, "apply_gain", timed)
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("speech.wav", "speech_bab_0dB.wav"):
        shutil.copy(CORPUS / "denoise_babble" / name, folder / name)
    shutil.copy(CORPUS / "sep_2spk_mixture" / "mixture_2.wav", folder / "mixture_2.wav")
    with get_client(sync_client=True) as client:
        for limit in client.read_global_concurrency_limits():
            if limit.name == gpu.GPU_LIMIT:
                client.delete_global_concurrency_limit_by_name(gpu.GPU_LIMIT)
    report = chain(paths=[str(folder)], parallel_files=3)
    assert report.count("done") == 3
    intervals.sort()
    assert all(earlier[1] <= later[0] for earlier, later in zip(intervals, intervals[1:])), "GPU stages overlapped"
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(gpu.GPU_LIMIT)
    assert (limit.limit, limit.active_slots) == (1, 0)  # created with one slot per GPU, all released


def test_a_library_error_names_the_file_the_stage_and_says_it_is_unexpected(tmp_path, use_store, monkeypatch):
    use_store(StoreSettings(location=str(tmp_path / "store")))

    def singular(*args, **kwargs):  # raised inside numpy's own code, as a library bug would be
        return np.linalg.inv(np.zeros((2, 2)))

    monkeypatch.setattr(stages, "apply_gain", singular)
    from voxflow.flows.pipelines import FilesFailed

    with pytest.raises(FilesFailed) as e:
        chain(paths=[str(CORPUS / "denoise_babble" / "speech.wav")])
    outcome = e.value.report.outcomes[0]
    assert outcome.failed_stage == "gain" and not outcome.transient
    assert outcome.message.startswith("speech.wav: gain: unexpected LinAlgError inside numpy (a bug to report;")
    assert outcome.message.endswith("): Singular matrix") and "\n" not in outcome.message
    assert "failed: speech.wav: gain: unexpected LinAlgError" in str(e.value)


def test_a_pipeline_that_waits_on_its_stages_still_runs_its_files_at_once(tmp_path, use_store):
    """voice_replace's chain waits between its stages; parallel_files of such files must still run together."""
    use_store(StoreSettings(location=str(tmp_path / "store")))
    paths = [str(CORPUS / "asr_en_jfk" / "jfk.flac"), str(CORPUS / "clone_ref_lj" / "LJ050-0131.wav")]
    stages.WAITING_BARRIER[:] = [threading.Barrier(2, timeout=30)]  # both files inside their chains at once
    report = chain(paths=paths, parallel_files=2, waiting=True)
    assert [o.status for o in report.outcomes] == ["done", "done"]
    assert [o.stages for o in report.outcomes] == [("ingest", "gain", "levels")] * 2
    stages.WAITING_BARRIER[:] = [threading.Barrier(2, timeout=3)]
    with pytest.raises(stages.FilesFailed) as failed:  # one at a time, the first file waits alone: broken
        chain(
            paths=[str(CORPUS / "sep_2spk_mixture" / "mixture_2.wav")] * 1 + paths[:1], parallel_files=1, waiting=True
        )
    assert failed.value.report.failed
