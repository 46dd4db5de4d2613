"""NoVaSR against a reference built from upstream parts, its loader, the enhance chain's switches, the task.

The reference NoVaSR is assembled from ``alias_free_torch`` (the alias-free ``Activation1d`` that
BigVGAN's is adapted from, with its own filters and padding), SnakeBeta written as BigVGAN writes it
(``x + sin²(x·e^α) / e^β``), torch's convolutions and ``F.interpolate`` in NoVaSR's order, on the
weights of the checkpoint. It interpolates in float64: torch's float32 positions drift along the
file (3e-3 after 1 s of white noise), which our exact ×3 interpolation does not.

Tolerances are relative to the reference's peak: 1e-5 against the reference and where the denoiser
runs in one pass instead of as one chunk, 1e-6 where only chunking or batching differs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import CORPUS
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import open_store
from voxflow.tasks import enhance as enhance_module
from voxflow.tasks.denoise import DenoiseOptions, denoise
from voxflow.tasks.enhance import (
    EnhanceOptions,
    EnhanceResult,
    denoise_step,
    enhance,
    load_enhance_denoiser,
    load_enhance_models,
    output_frames,
    plan_steps,
    resample_tensor,
)
from voxflow.tasks.helpers import audio
from voxflow.tasks.kit.model_sources import MODEL_SOURCES, local_upsample_model
from voxflow.tasks.kit.models import ModelNotFound
from voxflow.tasks.networks.novasr import kaiser_sinc_lowpass
from voxflow.tasks.upsample import (
    HUB_FILE,
    LIBRARY,
    UpsampleOptions,
    load_upsample_model,
    read_checkpoint,
    upsample,
)

BABBLE = CORPUS / "denoise_babble" / "speech_bab_0dB.wav"  # 3.1 s, 16 kHz mono
TTS_RATE_HZ = 24_000  # what the synthesis stage writes
REFERENCE_TOLERANCE = 1e-5
ROUNDING_TOLERANCE = 1e-6
# the official checkpoint's keys (weight norm removed), with their shapes at the official sizes
OFFICIAL_SHAPES = {
    "dec.conv_pre.weight": (32, 1, 7),
    "dec.conv_pre.bias": (32,),
    "dec.resblocks.0.convs1.0.weight": (32, 32, 11),
    "dec.resblocks.0.convs1.0.bias": (32,),
    "dec.resblocks.0.convs2.0.weight": (32, 32, 11),
    "dec.resblocks.0.convs2.0.bias": (32,),
    **{
        f"dec.resblocks.0.activations.{i}.{name}": shape
        for i in (0, 1)
        for name, shape in (
            ("act.alpha", (32,)),
            ("act.beta", (32,)),
            ("upsample.filter", (1, 1, 12)),
            ("downsample.lowpass.filter", (1, 1, 12)),
        )
    },
    "dec.conv_post.weight": (1, 32, 7),
}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def full_model(tmp_path_factory):
    """A full-size random NoVaSR read back from the builder's checkpoint (the official sizes)."""
    from voxflow.tasks.testing import random_models

    (path,) = random_models.build(LIBRARY, tmp_path_factory.mktemp("novasr-full"), "full", seed=5)
    return read_checkpoint(path)


@pytest.fixture(scope="module")
def models(tiny_models):
    """The tiny denoiser and NoVaSR, loaded by the production loaders from the session model folder."""
    folder = tiny_models.build("denoiser", LIBRARY)
    return load_enhance_denoiser("dns48", "cpu", folder), load_upsample_model("novasr", "cpu", folder)


def _speech(rate_hz: int = 16_000, seconds: float | None = None) -> np.ndarray:
    decoded = audio.decode_file(BABBLE)
    samples = audio.resample(decoded.samples, decoded.sample_rate_hz, rate_hz)
    return np.ascontiguousarray(samples[:, : int(seconds * rate_hz)] if seconds else samples)


def assert_close(ours: np.ndarray, reference: np.ndarray, tolerance: float) -> None:
    assert ours.shape == reference.shape and ours.dtype == np.float32
    error = float(np.abs(ours - reference).max() / np.abs(reference).max())
    assert error <= tolerance, f"max error {error:.2e} of the peak > {tolerance:.0e}"


# ---- the model ----------------------------------------------------------------------------------


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """NoVaSR's forward from upstream parts: ``(batch, 1, n)`` → ``(batch, 1, 3 n)``."""
    from alias_free_torch import Activation1d

    class SnakeBeta(torch.nn.Module):  # BigVGAN's activations.SnakeBeta with alpha_logscale=True
        def __init__(self, alpha: torch.Tensor, beta: torch.Tensor) -> None:
            super().__init__()
            self.alpha, self.beta = alpha, beta

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            alpha, beta = self.alpha.exp()[None, :, None], self.beta.exp()[None, :, None]
            return x + (1.0 / (beta + 1e-9)) * torch.sin(x * alpha) ** 2

    def activation(i: int) -> Activation1d:
        prefix = f"dec.resblocks.0.activations.{i}."
        act = Activation1d(SnakeBeta(state[prefix + "act.alpha"], state[prefix + "act.beta"]))
        act.load_state_dict(
            {
                "upsample.filter": state[prefix + "upsample.filter"],
                "downsample.lowpass.filter": state[prefix + "downsample.lowpass.filter"],
            }
        )
        return act

    def conv(h: torch.Tensor, name: str) -> torch.Tensor:
        weight = state[f"dec.{name}.weight"]
        return F.conv1d(h, weight, state.get(f"dec.{name}.bias"), padding=weight.shape[-1] // 2)

    h = conv(x, "conv_pre")
    h = F.interpolate(h.double(), size=3 * h.shape[-1], mode="linear").float()
    branch = conv(activation(0)(h), "resblocks.0.convs1.0")
    h = h + conv(activation(1)(branch), "resblocks.0.convs2.0")
    return torch.tanh(conv(h, "conv_post"))


def test_our_novasr_equals_the_reference_built_from_upstream_parts(full_model):
    noise = 0.3 * np.random.default_rng(0).standard_normal(16_000, np.float32)
    x = torch.from_numpy(np.stack([_speech()[0, :16_000], noise]))[:, None]  # speech and noise, 1 s each, one batch
    with torch.no_grad():
        ours, reference = full_model(x), reference_forward(full_model.state_dict(), x)
    assert ours.shape == (2, 1, 48_000)
    assert_close(ours.numpy(), reference.numpy(), REFERENCE_TOLERANCE)
    assert reference.std() > 0.01  # the output is not saturated or flat: the comparison means something


def test_the_filters_are_the_ones_bigvgan_designs():
    from alias_free_torch import DownSample1d, UpSample1d

    ours = kaiser_sinc_lowpass(0.25, 0.3, 12)
    assert torch.equal(ours, UpSample1d(2, 12).filter) and torch.equal(ours, DownSample1d(2, 12).lowpass.filter)


@pytest.mark.parametrize(
    ("options", "chunks"),
    [
        (UpsampleOptions(chunk_s=0.05), 62),
        (UpsampleOptions(chunk_s=0.3, batch_size=3), 11),
        (UpsampleOptions(chunk_s=1.0, batch_size=4), 4),
    ],
)
def test_chunks_give_what_the_whole_file_gives(full_model, options, chunks):
    speech = _speech()
    stereo = np.concatenate([speech, 0.5 * speech[:, ::-1]])
    progress: list[tuple[int, int]] = []
    chunked = upsample(stereo, full_model, options, hook=lambda done, total: progress.append((done, total)))
    with torch.no_grad():
        whole = full_model(torch.from_numpy(stereo)[:, None])[:, 0].numpy()
    assert chunked.shape == (2, 3 * speech.shape[1]) and progress[-1] == (2 * chunks, 2 * chunks)
    assert_close(chunked, whole, ROUNDING_TOLERANCE)


def test_the_context_is_the_models_receptive_field(full_model):
    context = full_model.context_samples()
    assert context == 12
    base = torch.from_numpy(0.1 * np.random.default_rng(1).standard_normal((1, 1, 400), np.float32))
    bumped = base.clone()
    bumped[..., 200] += 0.5
    with torch.no_grad():
        changed = torch.nonzero((full_model(bumped) - full_model(base))[0, 0]).flatten()
    first, last = int(changed.min()), int(changed.max())
    assert 3 * (200 - context) <= first and last < 3 * (200 + context + 1)  # nothing past the context
    assert first <= 3 * (200 - context + 2) and last >= 3 * (200 + context - 2)  # and the context is not padded much


def test_upsample_keeps_the_type_and_the_device_and_triples_the_length(full_model):
    speech = _speech(seconds=0.5)
    as_numpy = upsample(speech, full_model)
    as_tensor = upsample(torch.from_numpy(speech), full_model)
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32 and as_numpy.shape == (1, 24_000)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.device == torch.device("cpu")
    np.testing.assert_array_equal(as_tensor.numpy(), as_numpy)
    for frames in (1, 2, 7, 25):  # shorter than the context
        assert upsample(speech[:, :frames], full_model).shape == (1, 3 * frames)
    silence = upsample(np.zeros((2, 1000), np.float32), full_model)
    assert silence.shape == (2, 3000) and np.isfinite(silence).all()
    for bad in (speech[0], speech[:, :0]):
        with pytest.raises(ValueError, match=r"expected \(channels, samples\) audio"):
            upsample(bad, full_model)


# ---- files and loading --------------------------------------------------------------------------


def test_the_builder_is_deterministic_and_writes_the_official_format(tmp_path):
    from voxflow.tasks.testing import random_models

    (first,) = random_models.build(LIBRARY, tmp_path / "a", "tiny", seed=3)
    (second,) = random_models.build(LIBRARY, tmp_path / "b", "tiny", seed=3)
    (other,) = random_models.build(LIBRARY, tmp_path / "c", "tiny", seed=4)
    assert first == tmp_path / "a" / "novasr" / "pytorch_model_v1.bin"
    a, b, c = (torch.load(p, weights_only=True) for p in (first, second, other))
    assert a.keys() == b.keys() == set(OFFICIAL_SHAPES) and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["dec.conv_pre.weight"], c["dec.conv_pre.weight"])
    assert a["dec.conv_pre.weight"].shape == (8, 1, 7)  # tiny: 8 channels
    (full,) = random_models.build(LIBRARY, tmp_path / "full", "full", seed=0)
    state = torch.load(full, weights_only=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == OFFICIAL_SHAPES
    assert sum(v.numel() for k, v in state.items() if not k.endswith("filter")) == 23_200


def test_the_loader_reads_the_model_folder_strictly_and_keeps_the_model_resident(tiny_models):
    settings = tiny_models.settings(LIBRARY)
    path = settings.folder / "novasr" / "pytorch_model_v1.bin"
    assert local_upsample_model("novasr", settings) == path
    loaded = load_upsample_model("novasr", "cpu", settings.model_dir)
    assert (
        loaded.channels == 8
        and not loaded.training
        and load_upsample_model("novasr", "cpu", settings.model_dir) is loaded
    )
    stored = torch.load(path, weights_only=True)
    assert loaded.state_dict().keys() == stored.keys() and all(
        torch.equal(loaded.state_dict()[k], v) for k, v in stored.items()
    )
    source = MODEL_SOURCES["enhance"]
    assert (source.library, source.name) == ("novasr", "novasr") and source.present("novasr", settings) == path
    assert next(load_upsample_model("novasr", "cpu", settings.model_dir, half=True).parameters()).dtype == torch.float32


def test_a_float16_checkpoint_and_another_name_load_as_float32(tmp_path, full_model):
    folder = tmp_path / "novasr"
    folder.mkdir()
    torch.save({k: v.half() for k, v in full_model.state_dict().items()}, folder / "half.bin")
    loaded = load_upsample_model("half", "cpu", tmp_path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert torch.equal(loaded.dec.conv_pre.weight, full_model.dec.conv_pre.weight.half().float())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("dec.conv_post.weight"), r"missing keys dec\.conv_post\.weight"),
        (lambda s: s.pop("dec.conv_pre.weight"), r"missing key dec\.conv_pre\.weight"),
        (
            lambda s: s.update({"dec.conv_pre.weight_g": torch.ones(8, 1, 1)}),
            r"unexpected keys dec\.conv_pre\.weight_g",
        ),
        (
            lambda s: s.update({"dec.conv_post.weight": torch.ones(1, 4, 7)}),
            r"size mismatch for dec\.conv_post\.weight",
        ),
    ],
)
def test_a_checkpoint_with_wrong_keys_fails_naming_the_file(tmp_path, tiny_models, change, message):
    state = torch.load(tiny_models.build(LIBRARY) / LIBRARY / HUB_FILE, weights_only=True)
    change(state)
    path = tmp_path / "novasr" / "broken.bin"
    path.parent.mkdir()
    torch.save(state, path)
    with pytest.raises(
        ModelNotFound, match=rf"cannot load NovaSR checkpoint .*broken\.bin: {message}.*YatharthS/NovaSR"
    ):
        load_upsample_model("broken", "cpu", tmp_path)


def test_unreadable_or_missing_models_fail_with_a_clear_error(tmp_path):
    (tmp_path / "novasr").mkdir()
    (tmp_path / "novasr" / "garbage.bin").write_bytes(b"not a torch file")
    with pytest.raises(ModelNotFound, match=r"cannot load NovaSR checkpoint .*garbage\.bin"):
        load_upsample_model("garbage", "cpu", tmp_path)
    torch.save([torch.zeros(1)], tmp_path / "novasr" / "list.bin")
    with pytest.raises(ModelNotFound, match="list.bin: not a state dict of tensors"):
        load_upsample_model("list", "cpu", tmp_path)
    with pytest.raises(
        ModelNotFound, match=r"'nope' is not in the model folder \(no .*novasr/nope\.bin\); only 'novasr' downloads"
    ):
        load_upsample_model("nope", "cpu", tmp_path)
    with pytest.raises(ModelNotFound, match="could not be downloaded"):  # HF_HUB_OFFLINE: the hub is not asked
        load_upsample_model("novasr", "cpu", tmp_path / "empty")


def test_pull_copies_the_hub_file_where_the_loader_reads_it(tmp_path, tiny_models, monkeypatch):
    import huggingface_hub

    from voxflow.tasks.kit.models import ModelSettings

    cached = tiny_models.build(LIBRARY) / LIBRARY / HUB_FILE
    asked = []
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda repo, name, token=None: asked.append((repo, name)) or str(cached)
    )
    settings = ModelSettings(model_dir=str(tmp_path / "models"), device="cpu")
    source = MODEL_SOURCES["enhance"]
    assert source.present("novasr", settings) is None
    path = source.pull("novasr", settings)
    assert asked == [("YatharthS/NovaSR", "pytorch_model_v1.bin")] and path == tmp_path / "models" / "novasr" / HUB_FILE
    assert path.read_bytes() == cached.read_bytes() and source.present("novasr", settings) == path
    with pytest.raises(ModelNotFound, match="only 'novasr' can be pulled"):
        source.pull("other", settings)


# ---- the chain ----------------------------------------------------------------------------------


class Spies:
    """Counts the loads and the forward calls of the chain's two models."""

    def __init__(self, monkeypatch, denoiser, sr_model) -> None:
        self.loads: list[str] = []
        self.calls: list[str] = []
        self._hooks = [
            denoiser.register_forward_hook(lambda *_: self.calls.append("denoiser")),
            sr_model.register_forward_hook(lambda *_: self.calls.append("novasr")),
        ]
        monkeypatch.setattr(
            enhance_module, "load_enhance_denoiser", lambda *a, **k: self.loads.append("denoiser") or denoiser
        )
        monkeypatch.setattr(
            enhance_module, "load_upsample_model", lambda *a, **k: self.loads.append("novasr") or sr_model
        )

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


@pytest.fixture
def spies(monkeypatch, models):
    spies = Spies(monkeypatch, *models)
    yield spies
    spies.remove()


def _to_16k(line: np.ndarray, rate_hz: int) -> np.ndarray:
    return resample_tensor(torch.from_numpy(line), rate_hz, 16_000).numpy()


@pytest.mark.parametrize(
    ("denoise_on", "upsample_on", "steps"),
    [
        (True, True, ("denoise", "upsample")),
        (False, True, ("upsample",)),
        (True, False, ("denoise", "resample")),
        (False, False, ("resample",)),
    ],
)
def test_each_switch_changes_exactly_its_own_step(models, spies, denoise_on, upsample_on, steps):
    denoiser, sr_model = models
    line = _speech(TTS_RATE_HZ, seconds=2.0)  # as the synthesis stage writes it: 24 kHz
    options = EnhanceOptions(denoise=denoise_on, upsample=upsample_on, denoiser=DenoiseOptions(dry=0.1))
    ours = enhance(line, TTS_RATE_HZ, options, *load_enhance_models(options, "cpu"))
    assert plan_steps(TTS_RATE_HZ, options) == steps and ours.shape == (1, 96_000)

    model_calls = {"denoiser": int(denoise_on), "novasr": 2 if upsample_on else 0}  # 2 s: two 1 s chunks
    assert spies.loads == [name for name in ("denoiser", "novasr") if model_calls[name]]
    assert (
        spies.calls.count("denoiser") == model_calls["denoiser"]
        and spies.calls.count("novasr") == model_calls["novasr"]
    )

    at_16k = _to_16k(line, TTS_RATE_HZ)
    clean = (
        denoise(at_16k, 16_000, denoiser, options.denoiser) if denoise_on else at_16k
    )  # the denoise stage's own path
    if upsample_on:
        expected = upsample(clean, sr_model)
    else:
        expected = audio.resample(clean if denoise_on else line, 16_000 if denoise_on else TTS_RATE_HZ, 48_000)
    assert_close(ours, expected[:, : ours.shape[1]], REFERENCE_TOLERANCE if denoise_on else ROUNDING_TOLERANCE)
    if not denoise_on and not upsample_on:
        np.testing.assert_array_equal(ours, audio.resample(line, TTS_RATE_HZ, 48_000)[:, :96_000])


def test_plain_resampling_keeps_a_4khz_tone_at_4khz():
    rate = TTS_RATE_HZ
    tone = (0.5 * np.sin(2 * np.pi * 4000 * np.arange(rate) / rate)).astype(np.float32)[None]
    for options in (
        EnhanceOptions(denoise=False, upsample=False),
        EnhanceOptions(denoise=False, upsample=False, output_rate_hz=44_100),
    ):
        out = enhance(tone, rate, options)  # plain resampling: no model
        out_rate = options.output_rate_hz
        assert out.shape == (1, out_rate)
        power = np.abs(np.fft.rfft(out[0] * np.hanning(out.shape[1]))) ** 2
        frequencies = np.fft.rfftfreq(out.shape[1], 1 / out_rate)
        assert abs(frequencies[power.argmax()] - 4000) <= 1.0
        assert power[np.abs(frequencies - 4000) <= 50].sum() / power.sum() > 0.999
    on_device = resample_tensor(torch.from_numpy(tone), rate, 16_000).numpy()[0]  # the chain's way down to 16 kHz
    power = np.abs(np.fft.rfft(on_device * np.hanning(on_device.size))) ** 2
    assert on_device.size == 16_000 and power[3950:4051].sum() / power.sum() > 0.999


def test_a_rate_other_than_48khz_is_resampled_after_the_upsampling(models, spies):
    _, sr_model = models
    line = _speech(TTS_RATE_HZ, seconds=1.0)
    options = EnhanceOptions(denoise=False, output_rate_hz=44_100)
    assert plan_steps(TTS_RATE_HZ, options) == ("upsample", "resample")
    ours = enhance(line, TTS_RATE_HZ, options, *load_enhance_models(options, "cpu"))
    expected = audio.resample(upsample(_to_16k(line, TTS_RATE_HZ), sr_model), 48_000, 44_100)
    assert ours.shape == (1, 44_100) and output_frames(24_000, TTS_RATE_HZ, 44_100) == 44_100
    assert_close(ours, expected[:, :44_100], ROUNDING_TOLERANCE)
    assert plan_steps(16_000, EnhanceOptions(upsample=False, output_rate_hz=16_000)) == ("denoise",)


def test_the_one_pass_denoise_equals_the_denoise_stage_and_a_long_line_takes_its_chunked_path(models):
    denoiser, _ = models
    noisy = _speech()
    short = DenoiseOptions(dry=0.2)
    ours, rate = denoise_step(torch.from_numpy(noisy), 16_000, denoiser, short)
    assert rate == 16_000
    assert_close(ours.numpy(), denoise(noisy, 16_000, denoiser, short), REFERENCE_TOLERANCE)
    long = DenoiseOptions(chunk_s=1.0, overlap_s=0.5, crossfade_s=0.1)  # the line is 3.1 s: chunked
    chunked, _ = denoise_step(torch.from_numpy(noisy), 16_000, denoiser, long)
    np.testing.assert_array_equal(chunked.numpy(), denoise(noisy, 16_000, denoiser, long))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"output_rate_hz": 4000}, "EnhanceOptions.output_rate_hz: Input should be greater than or equal to 8000"),
        ({"sr": {"chunk_s": 0.0}}, "UpsampleOptions.chunk_s: Input should be greater than 0"),
        ({"sr": {"batch_size": 0}}, "UpsampleOptions.batch_size: Input should be greater than or equal to 1"),
        ({"sr": {"model": "../novasr"}}, "UpsampleOptions.model: must be a model name, not a path"),
    ],
)
def test_invalid_options_fail_with_one_line(change, message):
    with pytest.raises(ValueError, match=message):
        EnhanceOptions(**{k: UpsampleOptions(**v) if k == "sr" else v for k, v in change.items()})


def test_bad_input_fails_before_any_model_loads(spies):
    with pytest.raises(ValueError, match=r"expected \(channels, samples\) audio"):
        enhance(np.zeros(100, np.float32), 16_000)
    with pytest.raises(ValueError, match="rate_hz must be positive"):
        enhance(np.zeros((1, 100), np.float32), 0)
    assert spies.loads == []
    with pytest.raises(TypeError, match="the denoise and upsample step needs its model"):
        enhance(np.zeros((1, 100), np.float32), 16_000)  # models are passed in, never loaded here


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_chain_on_a_gpu_gives_what_the_cpu_gives(tiny_models):
    folder = tiny_models.build("denoiser", LIBRARY)
    line = _speech(TTS_RATE_HZ, seconds=2.0)
    on_cpu = enhance(line, TTS_RATE_HZ, EnhanceOptions(), *load_enhance_models(EnhanceOptions(), "cpu", folder))
    on_gpu = enhance(line, TTS_RATE_HZ, EnhanceOptions(), *load_enhance_models(EnhanceOptions(), "cuda", folder))
    assert_close(on_gpu, on_cpu, 5e-3)  # cuDNN convolutions may run in TF32
    halved = EnhanceOptions(sr=UpsampleOptions(half=True))
    half = enhance(line, TTS_RATE_HZ, halved, *load_enhance_models(halved, "cuda", folder))
    assert_close(half, on_cpu, 5e-2)
    gpu_line = torch.from_numpy(_speech(seconds=1.0)).cuda()
    out = upsample(gpu_line, load_upsample_model("novasr", "cuda", folder))
    assert out.device == gpu_line.device and out.shape == (1, 48_000)  # a tensor on the GPU stays there


# ---- the task -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_the_task_in_a_flow_writes_48khz_speech_and_is_cached(tmp_path, use_store, tiny_models):
    from prefect import flow

    from voxflow.flows.environment import environment
    from voxflow.tasks.enhance import enhance_audio
    from voxflow.tasks.ingest import IngestOptions, ingest_file

    models = tiny_models.settings("denoiser", LIBRARY)
    options = EnhanceOptions()

    @flow(name="test-enhance")
    def enhance_flow(path: str) -> EnhanceResult:
        env = environment(None)
        line = env.stage(ingest_file)(path, IngestOptions(sample_rate_hz=TTS_RATE_HZ), env.settings)  # a 24 kHz line
        return env.stage(enhance_audio)(line, options, env.settings, models)

    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    result = enhance_flow(str(BABBLE))
    store = open_store(StoreSettings.from_env())
    artifacts = catalog.frame("artifacts").set_index("stage")
    ingested = artifacts.loc["ingest"]
    line, rate = audio.decode_wav_bytes(store.get_bytes(ingested["key"], ingested["sha256"]))
    enhanced, enhanced_rate = audio.decode_wav_bytes(store.get_bytes(store.key_of(result.artifact.uri), result.sha256))
    assert rate == TTS_RATE_HZ and enhanced_rate == 48_000 and enhanced.shape == (1, 2 * line.shape[1])
    denoiser, sr_model = (
        load_enhance_denoiser("dns48", "cpu", models.model_dir),
        load_upsample_model("novasr", "cpu", models.model_dir),
    )
    np.testing.assert_array_equal(enhanced, enhance(line, rate, options, denoiser, sr_model))

    row = artifacts.loc["enhance"]
    assert (row["name"], row["sample_rate_hz"], row["frames"], row["sha256"]) == (
        "enhanced.wav",
        48_000,
        enhanced.shape[1],
        result.sha256,
    )
    assert result.steps == ("denoise", "upsample") and "/enhance/" in result.artifact.uri
    assert result.source_sha256 == catalog.frame("files")["sha256"].iloc[0]
    assert result.summary()["steps"] == "denoise → upsample" and result.summary()["duration_s"] == pytest.approx(
        3.1, abs=0.05
    )

    assert enhance_flow(str(BABBLE)) == result  # the same line again: a cache hit
    runs = catalog.frame("stage_runs")
    mine = runs[runs["stage"] == "enhance"]
    assert sorted(mine["cache_hit"]) == [False, True] and set(mine["status"]) == {"completed"}
