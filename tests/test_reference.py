"""Reference pre-processing: real recordings checked, cleaned, trimmed, cut; bad references refused; the task in a flow.

The tiny denoiser has random weights: what it outputs is a low hum unrelated to the speech. Tests of
trimming, loudness and the cut therefore run it with ``dry=1`` (the model still runs on every chunk,
its output is mixed out), so they measure this module on real speech; the noisy-speech test runs it
fully (``dry=0``) and checks that the written reference is exactly the denoiser's output, trimmed
and scaled.

Known speech span of ``LJ050-0131.wav`` (7.658 s): from its first 20 ms (speech starts at once) to
7.56 s, where its last word has decayed 40 dB below its loudest frame.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import CORPUS
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import open_store
from voxflow.tasks.denoise import DEFAULT_MODEL, LIBRARY, DenoiseOptions, denoise, load_denoise_model
from voxflow.tasks.helpers import audio
from voxflow.tasks.kit.runs import is_transient
from voxflow.tasks.reference import (
    ReferenceOptions,
    ReferenceResult,
    UnusableReference,
    check_reference,
    clipped_share,
    prepare_reference,
    speech_frames,
)

LJ = CORPUS / "clone_ref_lj" / "LJ050-0131.wav"  # 7.7 s, 22.05 kHz mono, clean
BABBLE = CORPUS / "denoise_babble" / "speech_bab_0dB.wav"  # 3.1 s, 16 kHz mono, babble at 0 dB SNR
LJ_SPEECH_END_S = 7.56
LJ_DURATION_S = 7.658
PASS_THROUGH = ReferenceOptions(denoise=DenoiseOptions(dry=1.0))  # the denoiser runs; its output is mixed out
BOUND_TOLERANCE_S = 0.15
LOUDNESS_TOLERANCE_LU = 0.5


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model(tiny_models):
    return load_denoise_model(DEFAULT_MODEL, "cpu", tiny_models.build(LIBRARY))


@pytest.fixture(scope="module")
def lj() -> tuple[np.ndarray, int]:
    decoded = audio.decode_file(LJ)
    return decoded.samples, decoded.sample_rate_hz


def noise(seconds: float, rate: int, dbfs: float, seed: int = 0, channels: int = 1) -> np.ndarray:
    """White noise at ``dbfs`` RMS."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((channels, round(seconds * rate))) * 10 ** (dbfs / 20)).astype(np.float32)


def counting(model) -> list[tuple[int, ...]]:
    """The input shapes of every forward call of ``model`` from now on."""
    calls: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda module, inputs: calls.append(tuple(inputs[0].shape)))
    return calls


def assert_one_line(error: pytest.ExceptionInfo, name: str, reason: str) -> None:
    message = str(error.value)
    assert isinstance(error.value, ValueError) and not is_transient(error.value)
    assert "\n" not in message and repr(name) in message and f"is {reason}" in message, message


def test_a_padded_real_reference_is_16k_mono_at_the_target_loudness_and_trimmed_to_its_speech(model, lj):
    samples, rate = lj
    before, after = noise(1.0, rate, -70, seed=1), noise(1.0, rate, -70, seed=2)
    before[0, round(0.3 * rate) : round(0.305 * rate)] = 0.3  # a 5 ms click in the silence is not speech
    padded = np.concatenate([before, samples, after], axis=1)
    stereo = np.concatenate([padded, 0.5 * padded])  # downmixed to one channel
    out, report = prepare_reference(stereo, rate, PASS_THROUGH, model, "lj.wav")

    assert out.shape[0] == 1 and out.dtype == np.float32 and report.duration_s == out.shape[1] / 16_000
    loudness = audio.integrated_loudness(out, 16_000)
    assert loudness == pytest.approx(-20.0, abs=LOUDNESS_TOLERANCE_LU) and report.loudness_lufs_out == loudness
    assert report.peak_dbfs == audio.to_dbfs(audio.peak(out)) <= -1.0
    # the speech of the original file, 1 s in, with trim_pad_s (0.1 s) of the silence kept around it
    assert report.trimmed_start_s == pytest.approx(1.0 - 0.1, abs=BOUND_TOLERANCE_S)
    assert report.trimmed_start_s + report.duration_s == pytest.approx(
        1.0 + LJ_SPEECH_END_S + 0.1, abs=BOUND_TOLERANCE_S
    )
    total_s = report.trimmed_start_s + report.duration_s + report.trimmed_end_s
    assert total_s == pytest.approx(padded.shape[1] / rate, abs=1e-3)
    assert report.speech_s == pytest.approx(LJ_SPEECH_END_S, abs=BOUND_TOLERANCE_S) and report.speech_s >= 3.0
    assert report.loudness_lufs_in == pytest.approx(audio.integrated_loudness(stereo, rate))
    assert not report.cut and report.clipped_fraction == 0.0
    # the kept padding is quiet: the first and last 0.05 s are 40 dB below the speech
    level = lambda x: audio.to_dbfs(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))))  # noqa: E731
    assert level(out[0, :800]) < level(out) - 40 and level(out[0, -800:]) < level(out) - 40


def test_a_reference_without_silence_keeps_all_its_speech(model, lj):
    samples, rate = lj
    out, report = prepare_reference(samples, rate, PASS_THROUGH, model, "lj.wav")
    assert report.trimmed_start_s == 0.0 and report.trimmed_end_s < 0.1  # speech starts at once, its tail is short
    assert report.duration_s == pytest.approx(LJ_DURATION_S, abs=0.1)
    assert report.loudness_lufs_out == pytest.approx(-20.0, abs=LOUDNESS_TOLERANCE_LU)
    # the same speech as a plain resample, scaled: nothing but gain and the 10 ms fades differ
    plain = audio.resample(samples, rate, 16_000)[:, : out.shape[1]]
    inner, reference = out[0, 160:-160], plain[0, 160:-160]  # past the 10 ms fades
    gain = float(np.dot(inner, reference) / np.dot(reference, reference))
    np.testing.assert_allclose(inner, gain * reference, rtol=0, atol=1e-6 * gain)


def test_a_noisy_reference_goes_through_the_denoiser_and_process_off_leaves_it_alone(tiny_models):
    from denoiser.utils import deserialize_model

    fresh = deserialize_model(torch.load(tiny_models.build(LIBRARY) / LIBRARY / "dns48.th", weights_only=False))
    calls = counting(fresh)
    decoded = audio.decode_file(BABBLE)
    noisy, rate = decoded.samples, decoded.sample_rate_hz
    out, report = prepare_reference(noisy, rate, ReferenceOptions(), fresh, "babble.wav")
    assert calls == [(1, 1, noisy.shape[1])]  # one chunk of the whole 16 kHz file
    assert out.shape[0] == 1 and report.peak_dbfs <= -1.0 and report.speech_s >= 3.0
    # the denoiser's output, trimmed and scaled (the random model hums, so its peak limits the gain)
    estimate = denoise(noisy, rate, fresh, DenoiseOptions())
    start = round(report.trimmed_start_s * 16_000)
    kept = estimate[:, start : start + out.shape[1]]
    inner, reference = out[0, 160:-160], kept[0, 160:-160]  # past the 10 ms fades
    gain = float(np.dot(inner, reference) / np.dot(reference, reference))
    np.testing.assert_allclose(inner, gain * reference, rtol=0, atol=1e-6 * gain)
    assert report.loudness_lufs_out <= -20.0 + LOUDNESS_TOLERANCE_LU

    calls.clear()
    same, checked = prepare_reference(noisy, rate, ReferenceOptions(process=False), None, "babble.wav")
    assert same is noisy and not calls  # no model needed, nothing denoised
    assert checked == check_reference(noisy, rate, "babble.wav", ReferenceOptions())
    assert (checked.trimmed_start_s, checked.trimmed_end_s, checked.cut) == (0.0, 0.0, False)
    assert checked.duration_s == pytest.approx(3.1) and checked.loudness_lufs_in == checked.loudness_lufs_out
    assert checked.peak_dbfs == pytest.approx(audio.to_dbfs(audio.peak(noisy)))


def _bad(kind: str, lj: tuple[np.ndarray, int]) -> np.ndarray:
    samples, rate = lj
    return {
        "short": samples[:, :rate],  # 1 s of speech
        "zeros": np.zeros_like(samples),
        "quiet noise": noise(samples.shape[1] / rate, rate, -70.0),
        "clipped": np.clip(samples * 20.0, -1.0, 1.0),
    }[kind]


@pytest.mark.parametrize("process", [True, False])
@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("short", "too short"),
        ("zeros", "silent"),
        ("quiet noise", "silent"),
        ("clipped", "clipped"),
    ],
)
def test_a_bad_reference_fails_with_one_line_naming_it(model, lj, kind, reason, process):
    options = ReferenceOptions(process=process)
    with pytest.raises(UnusableReference) as error:
        prepare_reference(_bad(kind, lj), lj[1], options, model, "voices/bad.wav")
    assert_one_line(error, "voices/bad.wav", reason)


def test_a_reference_silent_only_after_denoising_is_refused(lj):
    from denoiser.demucs import Demucs

    muting = Demucs(hidden=4, sample_rate=16_000).eval()  # all weights zero: a denoiser that finds only noise
    with torch.no_grad():
        for parameter in muting.parameters():
            parameter.zero_()
    with pytest.raises(UnusableReference) as error:
        prepare_reference(lj[0], lj[1], ReferenceOptions(), muting, "noise-only.wav")
    assert_one_line(error, "noise-only.wav", "silent after denoising")


def test_clipping_counts_only_runs_of_three_full_scale_samples():
    x = np.zeros((2, 1000), np.float32)
    x[0, 10:12] = 1.0  # two in a row: a loud peak
    x[0, 100:105] = -0.995  # five: clipped
    x[1, 0:3] = 0.99  # three, at the start of the second channel
    x[0, -1], x[1, 0] = 1.0, 1.0  # no run across the channels' boundary
    assert clipped_share(x) == pytest.approx(8 / 2000)
    assert speech_frames(np.array([-80.0, -10.0, -80.0, -20.0, -20.0, -20.0, -80.0]), -40.0) == (3, 6)
    assert speech_frames(np.array([-80.0, -10.0, -80.0]), -40.0) == (1, 2)  # only short bursts: they count
    assert speech_frames(np.full(4, -80.0), -40.0) is None


def test_a_long_reference_is_cut_at_a_quiet_pause_before_max_s(model, lj):
    samples, rate = lj
    gap_s = 0.5
    pieces = [np.concatenate([samples, noise(gap_s, rate, -70.0, seed=k)], axis=1) for k in range(5)]
    long = np.concatenate(pieces, axis=1)
    assert long.shape[1] / rate > 40.0
    out, report = prepare_reference(long, rate, PASS_THROUGH, model, "long.wav")
    assert report.cut and report.duration_s <= 30.0 and out.shape[1] / 16_000 == report.duration_s
    # it ends in a gap between two readings, after the speech of the last one kept (plus its padding)
    period_s = LJ_DURATION_S + gap_s
    end_s = report.trimmed_start_s + report.duration_s
    readings = round(end_s / period_s)
    assert readings == 3  # the gap after the third reading is the latest quiet pause in [15, 29.9] s
    speech_end_s = (readings - 1) * period_s + LJ_SPEECH_END_S
    assert speech_end_s - 0.05 <= end_s <= speech_end_s + 0.1 + 0.05  # no more than trim_pad_s of the pause kept
    assert report.trimmed_end_s == pytest.approx(long.shape[1] / rate - end_s, abs=1e-3)
    assert report.loudness_lufs_out == pytest.approx(-20.0, abs=LOUDNESS_TOLERANCE_LU)  # of what is kept
    tail = out[0, -800:]  # the last 50 ms: the quiet end of a word, not the middle of one
    assert np.sqrt(np.mean(tail.astype(np.float64) ** 2)) < 0.01 * np.abs(out).max()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sample_rate_hz": 4000}, "ReferenceOptions.sample_rate_hz: Input should be greater than or equal to 8000"),
        ({"loudness_lufs": 0.0}, "ReferenceOptions.loudness_lufs: Input should be less than or equal to -5"),
        ({"trim_threshold_db": 0.0}, "ReferenceOptions.trim_threshold_db: Input should be greater than 0"),
        ({"min_speech_s": 0.1}, "ReferenceOptions.min_speech_s: Input should be greater than or equal to 0.5"),
        ({"min_speech_s": 10.0, "max_s": 10.0}, r"min_speech_s \+ trim_pad_s \(10.1\) must be shorter than max_s"),
        ({"silence_dbfs": 3.0}, "ReferenceOptions.silence_dbfs: Input should be less than 0"),
        ({"clipped_fraction": 2.0}, "ReferenceOptions.clipped_fraction: Input should be less than or equal to 1"),
    ],
)
def test_invalid_options_fail_with_one_line(change, message):
    with pytest.raises(ValueError, match=message):
        ReferenceOptions(**change)


@pytest.mark.usefixtures("prefect_harness")
def test_the_task_in_a_flow_cleans_caches_checks_and_refuses(tmp_path, use_store, tiny_models, lj, monkeypatch):
    from prefect import flow

    import voxflow.tasks.reference
    from voxflow.flows.environment import environment
    from voxflow.tasks.ingest import IngestOptions, ingest_file
    from voxflow.tasks.reference import prepare_reference_audio

    models = tiny_models.settings(LIBRARY)
    samples, rate = lj
    voice, short = tmp_path / "voice.wav", tmp_path / "short.wav"
    voice.write_bytes(audio.encode_wav(np.concatenate([noise(1.0, rate, -70.0), samples], axis=1), rate))
    short.write_bytes(audio.encode_wav(samples[:, :rate], rate))

    @flow(name="test-reference")
    def reference_flow(path: str, options: ReferenceOptions) -> ReferenceResult:
        env = environment(None)
        ingested = env.stage(ingest_file)(path, IngestOptions(sample_rate_hz=None), env.settings)  # native rate
        return env.stage(prepare_reference_audio)(ingested, options, env.settings, models)

    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    result = reference_flow(str(voice), PASS_THROUGH)
    store = open_store(StoreSettings.from_env())
    artifacts = catalog.frame("artifacts").set_index("stage")
    ingested = artifacts.loc["ingest"]
    working, working_rate = audio.decode_wav_bytes(store.get_bytes(ingested["key"], ingested["sha256"]))
    clean, clean_rate = audio.decode_wav_bytes(store.get_bytes(store.key_of(result.artifact.uri), result.sha256))
    model = load_denoise_model(DEFAULT_MODEL, "cpu", models.model_dir)
    expected, report = prepare_reference(working, working_rate, PASS_THROUGH, model, "voice.wav")
    assert (working_rate, clean_rate, clean.shape[0]) == (22_050, 16_000, 1)
    np.testing.assert_array_equal(clean, expected)
    assert (
        result.report == report and result.processed and result.report.trimmed_start_s == pytest.approx(0.9, abs=0.15)
    )
    row = artifacts.loc["reference"]
    assert (row["name"], row["sample_rate_hz"], row["channels"], row["input_sha256"]) == (
        "reference.wav",
        16_000,
        1,
        ingested["sha256"],
    )
    assert result.source_sha256 == catalog.frame("files")["sha256"].iloc[0]
    assert result.summary()["lufs"] == pytest.approx(-20.0, abs=LOUDNESS_TOLERANCE_LU)

    assert reference_flow(str(voice), PASS_THROUGH) == result  # the same reference again: a cache hit

    def no_model(*args, **kwargs):
        raise AssertionError("the denoiser was loaded although process is off")

    monkeypatch.setattr(voxflow.tasks.reference, "load_denoise_model", no_model)
    checked = reference_flow(str(voice), ReferenceOptions(process=False))
    assert checked.artifact.uri == ingested["uri"] and checked.sha256 == ingested["sha256"] and not checked.processed
    assert len(catalog.frame("artifacts")) == 2  # the ingested audio and the cleaned reference, nothing new

    with pytest.raises(UnusableReference) as error:
        reference_flow(str(short), ReferenceOptions(process=False))
    assert_one_line(error, error.value.name, "too short")
    assert error.value.name.endswith("short.wav")  # named by its source, not by the stored artifact

    runs = catalog.frame("stage_runs")
    mine = runs[runs["stage"] == "reference"]
    assert list(mine["cache_hit"]) == [False, True, False, False]
    assert list(mine["status"]) == ["completed", "completed", "completed", "failed"]
    failed = mine[mine["status"] == "failed"]
    assert list(failed["error_class"]) == ["UnusableReference"] and list(failed["attempt"]) == [1]  # never retried
