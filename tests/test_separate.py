"""The separate stage on tiny random HTDemucs models, checked against demucs' own entry points.

``demucs.api.Separator`` and ``demucs.apply.apply_model`` run on the same weights and input; our
batched segments, bag weighting, shifts, normalisation and rate/channel conversions must give the
same stems within float32 tolerance (the sums run in another order, convolutions in batches).
"""

from __future__ import annotations

import json
import random

import demucs.apply
import numpy as np
import pytest
import torch
from demucs.api import Separator
from demucs.apply import BagOfModels, apply_model
from demucs.audio import convert_audio_channels
from demucs.htdemucs import HTDemucs
from prefect import flow

from tests.conftest import CORPUS
from voxflow.flows.environment import environment
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import open_store
from voxflow.tasks.helpers import audio
from voxflow.tasks.ingest import NATIVE, ingest_file
from voxflow.tasks.kit.model_sources import MODEL_SOURCES
from voxflow.tasks.kit.models import ModelNotFound, ModelSettings
from voxflow.tasks.separate import (
    SeparateOptions,
    SeparateResult,
    load_separate_model,
    save_package,
    separate,
    separate_audio,
    separate_stems,
)
from voxflow.tasks.testing.random_models.demucs import TINY, random_htdemucs, write_bag

RTOL, ATOL = 1e-4, 1e-5  # float32, relative to stems of about 0.1 full scale
MUSIC = CORPUS / "music_vocals_mp3" / "audio_example.mp3"  # 10.9 s, 44.1 kHz stereo: several 1.95 s segments
SPEECH_16K = CORPUS / "sep_2spk_mixture" / "mixture_2.wav"  # 7.2 s, 16 kHz mono


def assert_close(ours: np.ndarray | torch.Tensor, theirs: np.ndarray | torch.Tensor) -> None:
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=RTOL, atol=ATOL)


def upstream_two_stems(stems: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """The Separator's stems as vocals and the sum of the others (demucs' ``--other-method add``)."""
    others = sum(stem for name, stem in stems.items() if name != "vocals")
    return stems["vocals"].numpy(), others.numpy()


@pytest.fixture(scope="module")
def model_dir(tiny_models):
    return tiny_models.build("demucs")


@pytest.fixture(scope="module")
def model(model_dir):
    return load_separate_model("htdemucs", "cpu", model_dir)


@pytest.fixture(scope="module")
def separator(model_dir) -> Separator:
    """demucs' own entry point on the same local repo, as its CLI runs it but without shifts."""
    return Separator("htdemucs", repo=model_dir / "demucs", device="cpu", shifts=0, overlap=0.25)


@pytest.fixture(scope="module")
def music() -> audio.DecodedAudio:
    return audio.decode_file(MUSIC)


@pytest.fixture(scope="module")
def music_separated(model, music):
    """Ours on the music clip with batches of 4 segments, and the shapes the model was given."""
    shapes: list[tuple[int, ...]] = []
    progress: list[tuple[int, int]] = []
    handle = model.models[0].register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    try:
        found = separate(
            music.samples,
            music.sample_rate_hz,
            model,
            SeparateOptions(batch_size=4),
            hook=lambda done, total: progress.append((done, total)),
        )
    finally:
        handle.remove()
    return found, shapes, progress


def test_the_loader_reads_the_tiny_model_from_the_model_folder(tiny_models):
    settings = tiny_models.settings("demucs")
    loaded = load_separate_model("htdemucs", settings.torch_device(), settings.model_dir)
    assert isinstance(loaded, BagOfModels) and len(loaded.models) == 1  # htdemucs.yaml names one package
    (member,) = loaded.models
    assert isinstance(member, HTDemucs) and not member.training
    assert member.encoder[0].conv.out_channels == TINY["channels"]  # the tiny model, not a real one
    assert member.segment == TINY["segment"] and member.samplerate == 44_100 and member.audio_channels == 2
    assert loaded.sources == ["drums", "bass", "other", "vocals"]
    assert load_separate_model("htdemucs", "cpu", settings.model_dir) is loaded  # resident: loaded once
    source = MODEL_SOURCES["separate"]
    assert (source.library, source.name) == ("demucs", "htdemucs")
    assert source.present("htdemucs", settings) == settings.folder / "demucs"
    assert source.present("htdemucs_ft", settings) is None
    assert source.present("htdemucs", ModelSettings()) is None


def test_pull_stores_the_hub_bag_as_a_local_repo(tmp_path, monkeypatch):
    """``pull`` against a stand-in for the hub serving a bag as demucs publishes it (yaml + safetensors)."""
    import huggingface_hub
    from safetensors.torch import save_file

    published = random_htdemucs("tiny", seed=3)
    args, kwargs = published._init_args_kwargs
    hub = tmp_path / "hub"
    hub.mkdir()
    write_bag(hub, "htdemucs", ["abcd1234"])
    encode = lambda value: {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}  # noqa: E731
    save_file(
        {k: v.contiguous() for k, v in published.state_dict().items()},
        hub / "abcd1234.safetensors",
        metadata={
            "klass": "demucs.htdemucs.HTDemucs",
            "args": json.dumps(args),
            "kwargs": json.dumps(kwargs, default=encode),
        },
    )
    asked = []

    def download(repo_id: str, filename: str, **kwargs) -> str:
        asked.append((repo_id, filename))
        return str(hub / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    settings = ModelSettings(model_dir=str(tmp_path / "models"), device="cpu")
    source = MODEL_SOURCES["separate"]
    assert source.present("htdemucs", settings) is None
    folder = source.pull("htdemucs", settings)
    assert asked == [("adefossez/HTDemucs", "htdemucs.yaml"), ("adefossez/HTDemucs", "abcd1234.safetensors")]
    assert source.present("htdemucs", settings) == folder == tmp_path / "models" / "demucs"
    (member,) = load_separate_model("htdemucs", "cpu", settings.model_dir).models
    for name, value in published.state_dict().items():
        torch.testing.assert_close(member.state_dict()[name], value.half().float())  # stored half, as released


def test_an_unknown_model_is_a_model_not_found_error(model_dir):
    with pytest.raises(ModelNotFound, match="'no_such_model' is not in the model folder"):
        load_separate_model("no_such_model", "cpu", model_dir)


def test_music_equals_demucs_separator(music_separated, music, separator):
    found, _, _ = music_separated
    _, stems = separator.separate_tensor(torch.from_numpy(music.samples))  # already at the model's rate
    vocals, accompaniment = upstream_two_stems(stems)
    assert found.vocals.shape == found.accompaniment.shape == music.samples.shape
    assert found.sample_rate_hz == 44_100 and found.sources == ("drums", "bass", "other", "vocals")
    assert_close(found.vocals, vocals)
    assert_close(found.accompaniment, accompaniment)
    assert_close(found.vocals + found.accompaniment, sum(stems.values()).numpy())  # the model's total output
    assert np.abs(found.vocals).max() > 1e-3 and np.abs(found.accompaniment).max() > 1e-3


def test_batches_keep_the_model_input_bounded_and_the_result_unchanged(music_separated, model, music):
    found, shapes, progress = music_separated
    segment = int(TINY["segment"] * 44_100)
    stride = int(0.75 * segment)
    count = -(-music.frames // stride)
    assert music.frames > 5 * segment  # the clip spans many segments
    assert [s[0] for s in shapes] == [4] * (count // 4) + ([count % 4] if count % 4 else [])
    assert {s[1:] for s in shapes} == {(2, segment)}  # never more than one segment per item, whatever the length
    assert progress[-1] == (count, count) and len(progress) == len(shapes)
    one_by_one = separate(music.samples, music.sample_rate_hz, model, SeparateOptions(batch_size=1))
    assert_close(one_by_one.vocals, found.vocals)
    assert_close(one_by_one.accompaniment, found.accompaniment)


def test_16k_mono_speech_is_resampled_for_the_model_and_back(model, separator):
    decoded = audio.decode_file(SPEECH_16K)
    assert (decoded.sample_rate_hz, decoded.channels) == (16_000, 1)
    found = separate(decoded.samples, 16_000, model, SeparateOptions())
    assert found.vocals.shape == found.accompaniment.shape == decoded.samples.shape and found.sample_rate_hz == 16_000

    at_model_rate = convert_audio_channels(torch.from_numpy(audio.resample(decoded.samples, 16_000, 44_100)), 2)
    _, stems = separator.separate_tensor(at_model_rate)
    for ours, theirs in zip((found.vocals, found.accompaniment), upstream_two_stems(stems)):
        back = audio.resample(theirs.mean(axis=0, keepdims=True), 44_100, 16_000)
        back = np.pad(back, ((0, 0), (0, max(decoded.frames - back.shape[1], 0))))[:, : decoded.frames]
        assert_close(ours, back)


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    """A bag of two tiny models weighted per stem, in a local repo, loaded through our loader."""
    folder = tmp_path_factory.mktemp("bag")
    for seed in (1, 2):
        save_package(random_htdemucs("tiny", seed), folder / "demucs", f"member{seed}")
    write_bag(folder / "demucs", "tinybag", ["member1", "member2"], [[1.0, 0.5, 0.0, 2.0], [0.5, 1.0, 1.0, 1.0]])
    return load_separate_model("tinybag", "cpu", folder)


@pytest.fixture(scope="module")
def short_mix(music) -> torch.Tensor:
    """4.5 s of the music clip, normalised as the Separator does."""
    mix = torch.from_numpy(music.samples[:, 44_100 : 44_100 * 11 // 2])
    reference = mix.mean(0)
    return (mix - reference.mean()) / (reference.std() + 1e-8)


@pytest.fixture(scope="module")
def bag_unshifted(bag, short_mix) -> torch.Tensor:
    """apply_model on the bag, all four stems, no shifts."""
    return apply_model(bag, short_mix[None], shifts=0, split=True, overlap=0.25)[0]


def test_a_bag_of_two_models_equals_apply_model_on_the_bag(bag, short_mix, bag_unshifted):
    assert isinstance(bag, BagOfModels) and len(bag.models) == 2
    ours = separate_stems(bag, short_mix, torch.eye(4), batch_size=3)
    assert ours.shape == bag_unshifted.shape == (4, 2, short_mix.shape[1])
    assert_close(ours, bag_unshifted)


def test_shifts_draw_their_offsets_in_apply_models_order_from_their_own_seed(
    bag, short_mix, bag_unshifted, monkeypatch
):
    ours = separate_stems(bag, short_mix, torch.eye(4), shifts=2, shift_seed=7, batch_size=2)
    # apply_model draws from the global random, which every HTDemucs forward call also consumes: give
    # its draws their own generator, as ours has
    monkeypatch.setattr(demucs.apply, "random", random.Random(7))
    theirs = apply_model(bag, short_mix[None], shifts=2, split=True, overlap=0.25)[0]
    assert_close(ours, theirs)
    assert not np.allclose(ours, bag_unshifted, rtol=RTOL, atol=ATOL)  # the shifts did change the passes


def test_a_shorter_segment_equals_the_separator_with_that_segment(model, model_dir, music):
    clip = music.samples[:, : 44_100 * 4]
    found = separate(clip, 44_100, model, SeparateOptions(segment_s=1.5, overlap=0.1, batch_size=3))
    upstream = Separator("htdemucs", repo=model_dir / "demucs", device="cpu", shifts=0, overlap=0.1, segment=1.5)
    vocals, accompaniment = upstream_two_stems(upstream.separate_tensor(torch.from_numpy(clip))[1])
    assert_close(found.vocals, vocals)
    assert_close(found.accompaniment, accompaniment)


def test_cuda_out_of_memory_halves_the_batch_and_gives_the_same_result(model, music):
    clip = music.samples[:, : 44_100 * 5]  # 4 segments of 1.95 s, 1.46 s apart
    batches: list[int] = []

    def at_most_two(module, args) -> None:
        batches.append(args[0].shape[0])
        if args[0].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB (injected)")

    handle = model.models[0].register_forward_pre_hook(at_most_two)
    try:
        halved = separate(clip, 44_100, model, SeparateOptions(batch_size=4))
    finally:
        handle.remove()
    assert batches == [4, 2, 2]  # all four segments at once failed, then two batches of two
    one_by_one = separate(clip, 44_100, model, SeparateOptions(batch_size=1))
    assert_close(halved.vocals, one_by_one.vocals)
    assert_close(halved.accompaniment, one_by_one.accompaniment)


def test_batch_size_defaults_to_one_on_a_cpu_and_four_on_a_gpu():
    assert (SeparateOptions().batch_size_on("cpu"), SeparateOptions().batch_size_on("cuda")) == (1, 4)
    assert SeparateOptions(batch_size=8).batch_size_on("cpu") == 8


def test_bad_options_and_inputs_fail_with_the_reason(model):
    with pytest.raises(ValueError, match="SeparateOptions.overlap: Input should be less than 1"):
        SeparateOptions(overlap=1.0)
    with pytest.raises(ValueError, match="SeparateOptions.batch_size: Input should be"):
        SeparateOptions(batch_size=0)
    with pytest.raises(ValueError, match="SeparateOptions.segment_s: Input should be greater than 0"):
        SeparateOptions(segment_s=0.0)
    tone = np.sin(np.arange(44_100, dtype=np.float32) / 10.0)[None]
    with pytest.raises(ValueError, match="longer than the transformer model was trained for"):
        separate(tone, 44_100, model, SeparateOptions(segment_s=5.0))
    with pytest.raises(ValueError, match="4-channel audio with a 2-channel model"):
        separate(np.repeat(tone, 4, axis=0), 44_100, model, SeparateOptions())
    with pytest.raises(ValueError, match="empty audio"):
        separate(tone[:, :0], 44_100, model, SeparateOptions())


@flow
def separate_one(path: str, options: SeparateOptions, model_dir: str) -> SeparateResult:
    """ingest (the source's rate and channels) → separate, as the separate flow chains them."""
    env = environment(None)
    mix = env.stage(ingest_file)(path, NATIVE, env.settings)
    return env.stage(separate_audio)(mix, options, env.settings, ModelSettings(model_dir=model_dir, device="cpu"))


@pytest.mark.usefixtures("prefect_harness")
def test_the_task_writes_vocals_and_accompaniment_and_is_cached(tmp_path, use_store, model_dir, music, music_separated):
    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    options = SeparateOptions(batch_size=4)
    result = separate_one(str(MUSIC), options, str(model_dir))

    store = open_store(StoreSettings.from_env())
    artifacts = catalog.frame("artifacts")
    rows = artifacts[artifacts["stage"] == "separate"].set_index("name")
    assert sorted(rows.index) == ["accompaniment.wav", "vocals.wav"]
    assert (
        set(rows["sample_rate_hz"]) == {44_100}
        and set(rows["channels"]) == {2}
        and set(rows["frames"]) == {music.frames}
    )
    assert (
        rows.loc["vocals.wav", "uri"] == result.artifact.uri
        and rows.loc["accompaniment.wav", "uri"] == result.accompaniment.uri
    )
    assert rows["input_sha256"].nunique() == 1 and "/separate/" in result.artifact.uri

    expected = music_separated[0]  # the same samples (stored as float WAV) with the same options
    vocals, rate = audio.decode_wav_bytes(store.get_bytes(rows.loc["vocals.wav", "key"], sha256=result.sha256))
    accompaniment, _ = audio.decode_wav_bytes(store.get_bytes(rows.loc["accompaniment.wav", "key"]))
    assert rate == 44_100
    assert_close(vocals, expected.vocals)
    assert_close(accompaniment, expected.accompaniment)
    summary = result.summary()
    assert summary["model"] == "htdemucs" and summary["duration_s"] == pytest.approx(music.duration_s, abs=1e-3)
    assert -60 < summary["vocals_dbfs"] < 0 and -60 < summary["accompaniment_dbfs"] < 0
    assert result.source_sha256 == catalog.frame("files")["sha256"].iloc[0]

    again = separate_one(str(MUSIC), options, str(model_dir))
    assert again == result
    runs = catalog.frame("stage_runs")
    separations = runs[runs["stage"] == "separate"]
    assert sorted(separations["cache_hit"]) == [False, True]
    assert set(separations["status"]) == {"completed"} and set(separations["device"]) == {"cpu"}
