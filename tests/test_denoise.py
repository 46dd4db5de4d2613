"""Denoise: our chunked compute against the denoiser's own forward, the model folder, real recordings, the task in a flow.

The upstream reference is ``denoiser.enhance.get_estimate`` (``streaming=False``): one forward pass
of the model over the whole file, then the dry/wet mix. Tolerances are relative to the reference's
peak: 1e-6 where only float rounding differs (one chunk, batch sizes), 1e-5 across chunk joins
(measured: below 5e-7 with the tiny model), 2e-4 after a round trip through soxr resampling.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from tests.conftest import CORPUS
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import open_store
from voxflow.tasks.denoise import (
    DEFAULT_MODEL,
    LIBRARY,
    DenoiseOptions,
    DenoiseResult,
    denoise,
    denoise_at_model_rate,
    load_denoise_model,
    lookahead_samples,
    plan_chunks,
)
from voxflow.tasks.helpers import audio
from voxflow.tasks.kit.model_sources import MODEL_SOURCES, local_denoise_model
from voxflow.tasks.kit.models import ModelNotFound

BABBLE = CORPUS / "denoise_babble" / "speech_bab_0dB.wav"  # 3.1 s, 16 kHz mono
CONVERSATION = CORPUS / "diar_2spk_pyannote" / "sample.wav"  # 30 s, 16 kHz mono (the first 15 s are used)
JFK = CORPUS / "asr_en_jfk" / "jfk.flac"  # 11 s, 44.1 kHz stereo
JOIN_TOLERANCE = 1e-5
ROUNDING_TOLERANCE = 1e-6


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model(tiny_models):
    return load_denoise_model(DEFAULT_MODEL, "cpu", tiny_models.build(LIBRARY))


def _read(path, seconds: float | None = None) -> tuple[np.ndarray, int]:
    decoded = audio.decode_file(path)
    frames = int(seconds * decoded.sample_rate_hz) if seconds else decoded.frames
    return np.ascontiguousarray(decoded.samples[:, :frames]), decoded.sample_rate_hz


def upstream(model, noisy: np.ndarray, dry: float = 0.0) -> np.ndarray:
    """``denoiser.enhance``'s estimate of each channel of ``noisy`` (model rate): the whole file at once."""
    from denoiser.enhance import get_estimate

    threads = torch.get_num_threads()  # get_estimate pins torch to one thread itself
    estimate = get_estimate(model, torch.from_numpy(noisy)[:, None], argparse.Namespace(streaming=False, dry=dry))
    torch.set_num_threads(threads)
    return estimate[:, 0].numpy()


def assert_close(ours: np.ndarray, reference: np.ndarray, tolerance: float) -> None:
    assert ours.shape == reference.shape and ours.dtype == np.float32
    error = float(np.abs(ours - reference).max() / np.abs(reference).max())
    assert error <= tolerance, f"max error {error:.2e} of the peak > {tolerance:.0e}"


@pytest.mark.parametrize("dry", [0.0, 0.3])
def test_a_file_within_one_chunk_equals_the_denoisers_own_forward(model, dry):
    noisy, rate = _read(BABBLE)
    assert plan_chunks(noisy.shape[1], model, DenoiseOptions()).count == 1
    assert_close(denoise(noisy, rate, model, DenoiseOptions(dry=dry)), upstream(model, noisy, dry), ROUNDING_TOLERANCE)


@pytest.mark.parametrize(
    ("path", "options", "chunks"),
    [
        (BABBLE, DenoiseOptions(chunk_s=1.0, overlap_s=0.5, crossfade_s=0.1), 6),
        (BABBLE, DenoiseOptions(chunk_s=0.5, overlap_s=0.2, crossfade_s=0.05, batch_size=3), 11),
        (CONVERSATION, DenoiseOptions(chunk_s=2.0, overlap_s=0.5, crossfade_s=0.2, dry=0.1), 10),
    ],
)
def test_a_file_of_many_chunks_equals_the_whole_file_forward(model, path, options, chunks):
    noisy, rate = _read(path, seconds=15.0)
    assert plan_chunks(noisy.shape[1], model, options).count == chunks
    assert_close(denoise(noisy, rate, model, options), upstream(model, noisy, options.dry), JOIN_TOLERANCE)


def test_the_batch_size_does_not_change_the_result(model):
    noisy, _ = _read(BABBLE)
    stereo = np.stack([noisy[0], noisy[0, ::-1]])  # two channels: batches mix chunks of both
    options = DenoiseOptions(chunk_s=0.5, overlap_s=0.2, crossfade_s=0.05)
    one = denoise_at_model_rate(stereo, model, options, batch_size=1)
    for batch_size in (2, 5, 64):
        assert_close(denoise_at_model_rate(stereo, model, options, batch_size=batch_size), one, ROUNDING_TOLERANCE)


def test_every_channel_is_denoised_on_its_own():
    torch.manual_seed(1)  # a second tiny model, built in memory: any Demucs can be passed in
    from denoiser.demucs import Demucs

    other = Demucs(hidden=4, sample_rate=16_000).eval()
    noisy, rate = _read(BABBLE)
    stereo = np.concatenate([noisy, 0.1 * noisy[:, ::-1]])  # very different levels: per-channel normalization
    ours = denoise(stereo, rate, other, DenoiseOptions(chunk_s=1.0, overlap_s=0.5, crossfade_s=0.1))
    for c in range(2):
        assert_close(ours[c : c + 1], upstream(other, np.ascontiguousarray(stereo[c : c + 1])), JOIN_TOLERANCE)


def test_a_bidirectional_model_is_chunked_with_the_crossfade_in_the_middle():
    from denoiser.demucs import Demucs

    torch.manual_seed(2)
    bidirectional = Demucs(hidden=4, causal=False, sample_rate=16_000).eval()
    noisy, rate = _read(BABBLE)
    options = DenoiseOptions(chunk_s=1.5, overlap_s=1.0, crossfade_s=0.1)
    plan = plan_chunks(noisy.shape[1], bidirectional, options)
    trailing = plan.chunk - plan.hop - plan.crossfade - plan.warmup  # both LSTM directions start cold
    assert trailing >= lookahead_samples(bidirectional) and abs(trailing - plan.warmup) <= 1
    assert_close(denoise(noisy, rate, bidirectional, options), upstream(bidirectional, noisy), JOIN_TOLERANCE)


def test_a_real_stereo_recording_keeps_its_rate_channels_and_length(model):
    noisy, rate = _read(JFK)  # 44.1 kHz stereo: resampled to 16 kHz per channel and back
    assert noisy.shape[0] == 2 and rate == 44_100
    chunked = denoise(noisy, rate, model, DenoiseOptions(chunk_s=2.0, overlap_s=0.5, crossfade_s=0.1, batch_size=3))
    whole = denoise(noisy, rate, model, DenoiseOptions(chunk_s=20.0))
    assert chunked.shape == noisy.shape and chunked.dtype == np.float32
    assert_close(chunked, whole, JOIN_TOLERANCE)
    # the same as resampling, the denoiser's own forward, and resampling back
    at_16k = audio.resample(noisy, rate, 16_000)
    expected = audio.resample(upstream(model, at_16k), 16_000, rate)[:, : noisy.shape[1]]
    assert expected.shape == noisy.shape
    assert_close(chunked, expected, 2e-4)


def test_the_model_never_sees_more_than_a_batch_of_chunks(tiny_models):
    from denoiser.utils import deserialize_model

    fresh = deserialize_model(torch.load(tiny_models.build(LIBRARY) / LIBRARY / "dns48.th", weights_only=False))
    shapes: list[tuple[int, ...]] = []
    fresh.register_forward_pre_hook(lambda module, inputs: shapes.append(tuple(inputs[0].shape)))
    noisy, _ = _read(CONVERSATION, seconds=15.0)
    options = DenoiseOptions(chunk_s=2.0, overlap_s=0.5, crossfade_s=0.2, batch_size=2)
    progress: list[tuple[int, int]] = []
    denoise_at_model_rate(noisy, fresh, options, hook=lambda done, total: progress.append((done, total)))
    plan = plan_chunks(noisy.shape[1], fresh, options)
    assert plan.chunk == 2 * 16_000 and plan.count == 10
    # 9 full chunks in batches of 2, 2, 2, 2, 1, then the shorter last one on its own
    assert shapes == [(2, 1, plan.chunk)] * 4 + [(1, 1, plan.chunk), (1, 1, plan.length(9))]
    assert progress == [(2, 10), (4, 10), (6, 10), (8, 10), (9, 10), (10, 10)]
    assert fresh.normalize  # the model passed in is left as it was


def test_chunk_weights_sum_to_one_and_skip_the_warmup_and_the_lookahead(model):
    plan = plan_chunks(100_000, model, DenoiseOptions(chunk_s=1.0, overlap_s=0.5, crossfade_s=0.1))
    lookahead = lookahead_samples(model)
    assert lookahead == 597 + 168 and plan.hop % model.total_stride == 0
    total = np.zeros(plan.frames)
    for k in range(plan.count):
        start, end = plan.bounds(k)
        w = plan.weights(k)
        total[start:end] += w
        if k > 0:
            assert not w[: plan.warmup].any()
        if k < plan.count - 1:
            assert not w[-lookahead:].any()
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_silence_stays_silent_and_a_dry_mix_of_one_returns_the_input(model):
    silence = np.zeros((2, 24_000), np.float32)
    assert not denoise(silence, 48_000, model).any()
    noisy, rate = _read(JFK)
    np.testing.assert_array_equal(denoise(noisy, rate, model, DenoiseOptions(dry=1.0, chunk_s=3.0)), noisy)
    tiny = noisy[:, :40]  # shorter than the model's valid length
    assert denoise(tiny, rate, model).shape == tiny.shape


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dry": 1.5}, r"^DenoiseOptions.dry: Input should be less than or equal to 1 \(got 1.5\)$"),
        ({"chunk_s": 0.0}, r"^DenoiseOptions.chunk_s: Input should be greater than 0 \(got 0.0\)$"),
        ({"overlap_s": 10.0}, r"overlap_s \(10.0\) must be shorter than chunk_s \(10.0\)"),
        ({"crossfade_s": 2.0}, r"crossfade_s \(2.0\) must be shorter than overlap_s \(1.0\)"),
        ({"chunk_s": 1.0, "overlap_s": 0.9, "crossfade_s": 0.2}, "crossfade_s .* must not exceed chunk_s - overlap_s"),
        ({"batch_size": 0}, "DenoiseOptions.batch_size: Input should be greater than or equal to 1"),
        ({"model": "../dns48"}, "DenoiseOptions.model: must be a model name, not a path"),
    ],
)
def test_invalid_options_fail_with_one_line(change, message):
    with pytest.raises(ValueError, match=message) as error:
        DenoiseOptions(**change)
    assert "\n" not in str(error.value)


def test_an_overlap_shorter_than_the_lookahead_and_crossfade_is_refused(model):
    with pytest.raises(ValueError, match=r"overlap_s must be at least 0\.058 s for this model"):
        plan_chunks(100_000, model, DenoiseOptions(chunk_s=1.0, overlap_s=0.04, crossfade_s=0.01))
    with pytest.raises(ValueError, match="expected \\(channels, samples\\) audio"):
        denoise(np.zeros(100, np.float32), 16_000, model)


def test_the_loader_reads_the_tiny_model_from_the_model_folder(tiny_models):
    from denoiser.demucs import Demucs

    settings = tiny_models.settings(LIBRARY)
    path = settings.folder / "denoiser" / "dns48.th"
    assert local_denoise_model(DEFAULT_MODEL, settings) == path
    loaded = load_denoise_model(DEFAULT_MODEL, settings.torch_device(), settings.model_dir)
    assert isinstance(loaded, Demucs) and loaded.hidden == 4 and loaded.depth == 5 and loaded.sample_rate == 16_000
    assert load_denoise_model(DEFAULT_MODEL, "cpu", settings.model_dir) is loaded  # resident: loaded once
    package = torch.load(path, weights_only=False)
    assert package["class"] is Demucs and package["kwargs"] == {"hidden": 4, "sample_rate": 16_000}
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, package["state"][name]), name
    source = MODEL_SOURCES["denoise"]
    assert (source.library, source.name) == (LIBRARY, DEFAULT_MODEL) and source.present(DEFAULT_MODEL, settings) == path


def test_the_builder_is_deterministic_and_full_has_dns48s_arguments(tmp_path):
    from denoiser import pretrained

    from voxflow.tasks.testing import random_models

    first = random_models.build(LIBRARY, tmp_path / "a", "tiny", seed=3)[0]
    second = random_models.build(LIBRARY, tmp_path / "b", "tiny", seed=3)[0]
    a, b = (torch.load(p, weights_only=False)["state"] for p in (first, second))
    assert all(torch.equal(a[k], b[k]) for k in a)
    full = pretrained.dns48(pretrained=False)  # the real architecture, no download
    assert full._init_args_kwargs == ((), {"hidden": 48, "sample_rate": 16_000})
    from voxflow.tasks.testing.random_models.denoiser import SIZES

    assert {**SIZES["full"], "sample_rate": 16_000} == full._init_args_kwargs[1]


def test_unknown_or_broken_models_fail_with_a_clear_error(tmp_path):
    with pytest.raises(
        ModelNotFound, match=r"'nope' is not in the model folder \(no .*/denoiser/nope.th\) .*dns48, dns64, master64"
    ):
        load_denoise_model("nope", "cpu", tmp_path)
    (tmp_path / "denoiser").mkdir()
    (tmp_path / "denoiser" / "broken.th").write_bytes(b"not a torch file")
    with pytest.raises(ModelNotFound, match="cannot load denoiser model .*broken.th"):
        load_denoise_model("broken", "cpu", tmp_path)


def test_pull_saves_the_downloaded_model_where_the_loader_reads_it(tmp_path, monkeypatch):
    from denoiser import pretrained
    from denoiser.demucs import Demucs

    from voxflow.tasks.kit.models import ModelSettings

    downloaded = []

    def download(pretrained=True):  # stands in for torch.hub's download of the real weights
        torch.manual_seed(4)
        downloaded.append(Demucs(hidden=4, sample_rate=16_000))
        return downloaded[-1]

    monkeypatch.setattr(pretrained, "dns64", download)
    settings = ModelSettings(model_dir=str(tmp_path / "models"), device="cpu")
    source = MODEL_SOURCES["denoise"]
    assert source.present("dns64", settings) is None
    path = source.pull("dns64", settings)
    assert path == tmp_path / "models" / "denoiser" / "dns64.th" and source.present("dns64", settings) == path
    assert not list(path.parent.glob("*.part"))
    loaded = load_denoise_model("dns64", "cpu", settings.model_dir)
    assert loaded is not downloaded[0] and len(downloaded) == 1  # read from the folder, not downloaded again
    for name, tensor in downloaded[0].state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


@pytest.mark.usefixtures("prefect_harness")
def test_the_task_in_a_flow_writes_the_denoised_audio(tmp_path, use_store, tiny_models):
    from prefect import flow

    from voxflow.flows.environment import environment
    from voxflow.tasks.denoise import denoise_audio
    from voxflow.tasks.ingest import IngestOptions, ingest_file

    models = tiny_models.settings(LIBRARY)
    options = DenoiseOptions(chunk_s=3.0, overlap_s=0.5, crossfade_s=0.1)

    @flow(name="test-denoise")
    def denoise_flow(path: str) -> DenoiseResult:
        env = environment(None)
        # keep stereo at 22.05 kHz, so the stage itself resamples to 16 kHz and back per channel
        working = env.stage(ingest_file)(path, IngestOptions(sample_rate_hz=22_050, mono=False), env.settings)
        return env.stage(denoise_audio)(working, options, env.settings, models)

    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    result = denoise_flow(str(JFK))
    store = open_store(StoreSettings.from_env())
    artifacts = catalog.frame("artifacts").set_index("stage")
    ingested = artifacts.loc["ingest"]
    working, rate = audio.decode_wav_bytes(store.get_bytes(ingested["key"], ingested["sha256"]))
    clean, clean_rate = audio.decode_wav_bytes(store.get_bytes(store.key_of(result.artifact.uri), result.sha256))
    assert (clean_rate, clean.shape) == (22_050, working.shape) and working.shape[0] == 2
    np.testing.assert_array_equal(
        clean, denoise(working, rate, load_denoise_model(DEFAULT_MODEL, "cpu", models.model_dir), options)
    )

    row = artifacts.loc["denoise"]
    assert (row["name"], row["media_type"], row["sha256"]) == ("denoised.wav", "audio/wav", result.sha256)
    assert (row["sample_rate_hz"], row["channels"], row["frames"]) == (22_050, 2, working.shape[1])
    assert row["input_sha256"] == ingested["sha256"] and "/denoise/" in result.artifact.uri
    assert result.source_sha256 == catalog.frame("files")["sha256"].iloc[0] and result.model == "dns48"
    assert result.summary()["duration_s"] == pytest.approx(11.0, abs=0.05)

    assert denoise_flow(str(JFK)) == result  # the same file again: a cache hit
    runs = catalog.frame("stage_runs")
    mine = runs[runs["stage"] == "denoise"]
    assert sorted(mine["cache_hit"]) == [False, True] and set(mine["status"]) == {"completed"}
    assert set(mine["device"]) == {"cpu"}
