"""Denoise: remove background noise from speech with Facebook's denoiser (Demucs DNS48, 16 kHz).

The model runs at its own rate (16 kHz): every channel is resampled to it, denoised on its own, and
resampled back, so the output keeps the input's rate, channels and length exactly. ``dry`` mixes the
untouched input back in, as ``denoiser.enhance`` does.

Files of any length run in bounded memory, with the same result as one forward pass over the whole
file (what ``denoiser.enhance`` computes), up to small edge effects (below 1e-6 of the peak with
random DNS48 weights, see ``tests/test_denoise.py``; a trained LSTM may remember longer, which a
longer ``overlap_s`` absorbs):

* **one normalization per file**: the model divides each call's input by its standard deviation,
  so each channel is divided by the std of the whole channel instead, and the chunks go through the
  model with its own normalization off;
* **chunks on the model's stride grid**: chunk starts are multiples of ``model.total_stride``
  (256 samples for DNS48), so every convolution sees the frames it sees on the whole file; each
  chunk is padded to a valid length by the model itself, as the whole file is;
* **overlap-add**: the causal LSTM starts cold at each chunk, and a chunk's last samples miss their
  right context (:func:`lookahead_samples`). Neighbouring chunks share ``overlap_s``: the later chunk
  uses the start of it only to warm up, the earlier one drops its last ``lookahead`` samples, and a
  raised-cosine cross-fade of ``crossfade_s`` joins them in between.

Memory: the track, its 16 kHz copy and the output stay on the CPU (numpy); only a batch of
``batch_size`` chunks at a time goes to the model's device, and a CUDA out-of-memory error halves
the batch (:func:`voxflow.tasks.kit.runs.halving_batch_on_oom`).

Writes ``artifacts/<sha[:2]>/<sha>/denoise/<params>/denoised.wav``.
"""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import AfterValidator, Field

from voxflow.storage.refs import ArtifactRef
from voxflow.storage.settings import StoreSettings
from voxflow.tasks.helpers import audio
from voxflow.tasks.kit.model_sources import MODEL_SOURCES
from voxflow.tasks.kit.models import (
    MODEL_DIR_ENV,
    RESIDENT,
    ModelNotFound,
    ModelSettings,
    holding,
)
from voxflow.tasks.kit.options import InvalidOptions, Options, model_name
from voxflow.tasks.kit.outputs import audio_input, read_audio, source_sha256_of, write_audio
from voxflow.tasks.kit.runs import halving_batch_on_oom
from voxflow.tasks.kit.stage import StageSpec, stage_task

if TYPE_CHECKING:
    from denoiser.demucs import Demucs

STAGE = "denoise"
CODE_VERSION = "1"
LIBRARY, DEFAULT_MODEL = MODEL_SOURCES[STAGE].library, MODEL_SOURCES[STAGE].name  # <model dir>/denoiser/<name>.th
PRETRAINED = ("dns48", "dns64", "master64")  # names denoiser.pretrained downloads
AUDIO_NAME = "denoised.wav"
STD_BLOCK_SAMPLES = 1 << 20  # samples per block when measuring a channel's level (8 MB of float64)
RESAMPLE_ZEROS = 56  # half-width of denoiser.resample's sinc filters, in samples of the lower rate


@dataclass(frozen=True)
class DenoiseOptions(Options):
    """Which denoiser runs, how much of the input is kept, and how a long file is cut into chunks."""

    model: Annotated[
        str,
        Field(min_length=1, description="dns48, dns64, master64, or <name> of a <model dir>/denoiser/<name>.th."),
        AfterValidator(model_name),
    ] = DEFAULT_MODEL
    dry: Annotated[
        float,
        Field(ge=0, le=1, description="Share of the input mixed back in: 0 fully denoised, 1 the input unchanged."),
    ] = 0.0
    chunk_s: Annotated[float, Field(gt=0, le=600, description="Audio the model sees at once; bounds memory.")] = 10.0
    overlap_s: Annotated[
        float,
        Field(
            gt=0, description="Audio neighbouring chunks share: the model's warm-up, the cross-fade and its lookahead."
        ),
    ] = 1.0
    crossfade_s: Annotated[
        float, Field(gt=0, description="Raised-cosine cross-fade between neighbouring chunks, inside the overlap.")
    ] = 0.1
    batch_size: Annotated[
        int, Field(ge=1, le=256, description="Chunks per forward pass on the device (halved on out-of-memory).")
    ] = 4

    def check(self) -> None:
        if self.overlap_s >= self.chunk_s:
            raise InvalidOptions(
                f"DenoiseOptions: overlap_s ({self.overlap_s}) must be shorter than chunk_s ({self.chunk_s})"
            )
        if self.crossfade_s >= self.overlap_s:
            raise InvalidOptions(
                f"DenoiseOptions: crossfade_s ({self.crossfade_s}) must be shorter than overlap_s ({self.overlap_s})"
            )
        if self.crossfade_s > self.chunk_s - self.overlap_s:
            raise InvalidOptions(
                f"DenoiseOptions: crossfade_s ({self.crossfade_s}) must not exceed chunk_s - overlap_s "
                f"({self.chunk_s - self.overlap_s:g})"
            )


@dataclass(frozen=True)
class DenoiseResult:
    """What the denoise task returns: the denoised audio (the input's rate, channels and length)."""

    artifact: ArtifactRef
    source_sha256: str
    model: str  # the denoiser that ran (dns48, ...)

    @property
    def sha256(self) -> str:
        return self.artifact.sha256

    def summary(self) -> dict:
        """What a summary table shows of a denoised file."""
        duration_s = round(self.artifact.duration_s or 0.0, 3)
        return {"model": self.model, "duration_s": duration_s, "sha256": self.source_sha256[:12]}


def write_denoise_package(model: Demucs, path: Path) -> Path:
    """Save a Demucs as the package dict ``denoiser.utils.deserialize_model`` reads (written atomically)."""
    import torch
    from denoiser.utils import serialize_model

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    torch.save(serialize_model(model), partial)
    partial.replace(path)
    return path


def _read_package(path: Path) -> Demucs:
    """The denoiser's own loader (``pretrained.get_model`` with ``--model_path``) on a local package.

    Only the ``Demucs`` class is allowed besides tensors: torch's safe unpickler refuses anything else.
    """
    import argparse

    import torch
    from denoiser import pretrained
    from denoiser.demucs import Demucs

    try:
        with torch.serialization.safe_globals([Demucs]):
            return pretrained.get_model(argparse.Namespace(model_path=str(path)))
    except (pickle.UnpicklingError, KeyError, RuntimeError, EOFError) as e:
        raise ModelNotFound(
            f"cannot load denoiser model {path}: {str(e).splitlines()[0]}; it must be a package "
            "written by 'voxflow models pull' (class, args, kwargs, state)"
        ) from e


def _download(name: str, folder: Path | None = None) -> Demucs:
    """A pretrained denoiser through the library's own download (``torch.hub``, from dl.fbaipublicfiles.com).

    Not Hugging Face, so :func:`voxflow.tasks.kit.models.hub_errors` does not apply (it would call an HTTP 403 a
    gated model): a failed download is a :class:`ModelNotFound` saying what to do.
    """
    from denoiser import pretrained

    if name not in PRETRAINED:
        where = f"no {folder / LIBRARY / f'{name}.th'}" if folder else f"{MODEL_DIR_ENV} is not set"
        raise ModelNotFound(
            f"denoiser model {name!r} is not in the model folder ({where}) and is not a pretrained "
            f"name ({', '.join(PRETRAINED)})"
        )
    try:
        return getattr(pretrained, name)()
    except OSError as e:  # urllib's URLError/HTTPError: no network, or the file moved
        raise ModelNotFound(
            f"model {name!r} is not in the model folder and could not be downloaded ({e}); "
            f"run 'voxflow models pull' on a machine with internet, or set {MODEL_DIR_ENV}"
        ) from e


def load_denoise_model(
    name: str = DEFAULT_MODEL, device: str = "cpu", model_dir: str | Path | None = None, *, stage: str = STAGE
) -> Demucs:
    """The denoiser ``name`` on ``device``, loaded once per process.

    ``<model_dir>/denoiser/<name>.th`` when it exists, else the pretrained weights (dns48, dns64,
    master64) from the denoiser's own download. ``stage`` is the stage it stays resident for (on a GPU,
    loading another stage's model releases it): a stage chaining the denoiser with other models names itself.
    """
    settings = ModelSettings(model_dir=str(model_dir) if model_dir else None)
    path = settings.local(LIBRARY, f"{name}.th")

    def load() -> Demucs:
        model = _read_package(path) if path is not None else _download(name, settings.folder)
        return model.to(device).eval()

    return RESIDENT.get((LIBRARY, name, str(path or "hub")), device, load, stage=stage)


def pull_denoise_model(name: str, settings: ModelSettings) -> Path:
    """Download a pretrained denoiser and save it as ``<model dir>/denoiser/<name>.th``."""
    return write_denoise_package(_download(name), settings.library_dir(LIBRARY) / f"{name}.th")


def lookahead_samples(model: Demucs) -> int:
    """How far past a sample, at the model's rate, its output depends on the input (765 for DNS48).

    The encoder's receptive field (``valid_length(1)``) plus the sinc filters of the up- and
    down-sampling around it (``RESAMPLE_ZEROS`` at each factor-2 stage, both ways).
    """
    stages = int(math.log2(model.resample))
    resampling = 2 * RESAMPLE_ZEROS * sum(2.0**-i for i in range(stages))
    return model.valid_length(1) + math.ceil(resampling)


@dataclass(frozen=True)
class ChunkPlan:
    """Where the chunks of one channel start and how much of each one counts (samples at the model's rate).

    Chunk ``k`` starts at ``k * hop``; the last one runs to the end. After the first, a chunk's first
    ``warmup`` samples get weight 0, then its weight rises over ``crossfade`` samples while the
    previous chunk's falls; a chunk's last ``overlap - warmup - crossfade`` samples (at least the
    lookahead) get weight 0. Weights of the chunks covering a sample sum to 1.
    """

    frames: int
    chunk: int
    hop: int  # a multiple of the model's total stride
    warmup: int
    crossfade: int

    @property
    def count(self) -> int:
        return 1 if self.frames <= self.chunk else 1 + math.ceil((self.frames - self.chunk) / self.hop)

    def bounds(self, index: int) -> tuple[int, int]:
        start = index * self.hop
        return start, self.frames if index == self.count - 1 else start + self.chunk

    def length(self, index: int) -> int:
        start, end = self.bounds(index)
        return end - start

    def weights(self, index: int) -> np.ndarray:
        """The weight of each output sample of chunk ``index``."""
        w = np.ones(self.length(index), dtype=np.float32)
        rise = np.sin(0.5 * np.pi * (np.arange(self.crossfade) + 0.5) / self.crossfade).astype(np.float32) ** 2
        if index > 0:
            w[: self.warmup] = 0.0
            w[self.warmup : self.warmup + self.crossfade] = rise
        if index < self.count - 1:
            fall = self.hop + self.warmup
            w[fall : fall + self.crossfade] *= 1.0 - rise
            w[fall + self.crossfade :] = 0.0
        return w


def plan_chunks(frames: int, model: Demucs, options: DenoiseOptions) -> ChunkPlan:
    """The chunks of a channel of ``frames`` samples at the model's rate."""
    rate, grid = model.sample_rate, model.total_stride
    chunk = max(int(options.chunk_s * rate) // grid * grid, grid)
    hop = (chunk - math.ceil(options.overlap_s * rate)) // grid * grid
    if hop <= 0:
        raise ValueError(
            f"chunk_s - overlap_s must be at least {grid / rate:g} s (the model's stride), got "
            f"{options.chunk_s - options.overlap_s:g} s"
        )
    overlap = chunk - hop
    crossfade = max(round(options.crossfade_s * rate), 1)
    lookahead = lookahead_samples(model)
    # a bidirectional LSTM starts cold at both ends of a chunk: the cross-fade goes in the middle
    trailing = lookahead if model.causal else max(lookahead, (overlap - crossfade) // 2)
    warmup = overlap - crossfade - trailing
    if warmup < 0:
        raise ValueError(
            f"overlap_s must be at least {(lookahead + crossfade) / rate:.3f} s for this model (its "
            f"lookahead {lookahead / rate:.3f} s plus crossfade_s), got {options.overlap_s}"
        )
    if crossfade > hop:
        raise ValueError(
            f"crossfade_s ({options.crossfade_s}) must not exceed the hop between chunks ({hop / rate:g} s)"
        )
    return ChunkPlan(frames, chunk, hop, warmup, crossfade)


def _without_normalization(model: Demucs) -> Demucs:
    """The model with its per-call normalization off, sharing its weights (the model is not changed)."""
    if not model.normalize:
        return model
    plain = copy.copy(model)
    plain.normalize = False
    return plain


def _fit_length(samples: np.ndarray, frames: int) -> np.ndarray:
    """``samples`` cut or zero-padded to ``frames`` samples."""
    if samples.shape[1] >= frames:
        return samples[:, :frames]
    return np.pad(samples, ((0, 0), (0, frames - samples.shape[1])))


def _channel_std(samples: np.ndarray, block: int = STD_BLOCK_SAMPLES) -> np.ndarray:
    """Each channel's standard deviation (unbiased, as ``torch.std``), in float64 over blocks."""
    frames = samples.shape[1]
    mean = sum(samples[:, i : i + block].sum(axis=1, dtype=np.float64) for i in range(0, frames, block)) / frames
    squares = sum((((samples[:, i : i + block] - mean[:, None]) ** 2).sum(axis=1)) for i in range(0, frames, block))
    return np.sqrt(squares / (frames - 1))


def denoise_at_model_rate(
    noisy: np.ndarray,
    model: Demucs,
    options: DenoiseOptions = DenoiseOptions(),
    *,
    batch_size: int | None = None,
    hook: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The model's estimate of the clean speech in ``noisy`` (``(channels, samples)`` at its rate), chunked.

    Equals ``model(noisy[:, None])[:, 0]`` (one forward pass over the whole file) up to float rounding
    and the chunk edge effects described in this module. ``noisy`` and the result stay on the CPU; a
    batch of ``batch_size`` chunks (default ``options.batch_size``) goes to the model's device at a time.
    ``hook(done, total)`` counts chunks over all channels.
    """
    import torch

    if model.chin != 1 or model.chout != 1:
        raise ValueError(f"the denoiser must have one input and one output channel, has {model.chin} and {model.chout}")
    channels, frames = noisy.shape
    plan = plan_chunks(frames, model, options)
    net, device = _without_normalization(model), next(model.parameters()).device
    std = _channel_std(noisy) if model.normalize and frames > 1 else np.ones(channels)
    divisor = torch.tensor(std + model.floor if model.normalize else std, dtype=torch.float32, device=device)
    scale = torch.tensor(std, dtype=torch.float32, device=device)
    by_length: dict[int, list[tuple[int, int]]] = {}  # equal lengths batch together (the last chunks are shorter)
    for k in range(plan.count):
        by_length.setdefault(plan.length(k), []).extend((k, c) for c in range(channels))
    size = batch_size or options.batch_size
    batches = [group[i : i + size] for group in by_length.values() for i in range(0, len(group), size)]
    out = np.zeros((channels, frames), dtype=np.float32)
    done = 0
    with torch.inference_mode():
        for batch in batches:
            rows = [c for _, c in batch]
            x = torch.from_numpy(np.stack([noisy[c, slice(*plan.bounds(k))] for k, c in batch])).to(device)
            y = (net((x / divisor[rows, None])[:, None])[:, 0] * scale[rows, None]).float().cpu().numpy()
            for (k, c), estimate in zip(batch, y):
                start, end = plan.bounds(k)
                out[c, start:end] += plan.weights(k) * estimate
            done += len(batch)
            if hook is not None:
                hook(done, plan.count * channels)
    return out


def denoise(
    samples: np.ndarray,
    sample_rate_hz: int,
    model: Demucs,
    options: DenoiseOptions = DenoiseOptions(),
    *,
    hook: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Denoised ``(channels, samples)`` audio at ``sample_rate_hz``: same rate, channels and length.

    Each channel is resampled to the model's rate, denoised (:func:`denoise_at_model_rate`, its batch
    halved on out-of-memory), resampled back and mixed with the input by ``options.dry``.
    """
    if samples.ndim != 2 or samples.shape[1] == 0:
        raise ValueError(f"expected (channels, samples) audio with samples, got shape {samples.shape}")
    noisy = audio.resample(np.asarray(samples, dtype=np.float32), sample_rate_hz, model.sample_rate)
    with holding(model):
        estimate = halving_batch_on_oom(
            lambda batch_size: denoise_at_model_rate(noisy, model, options, batch_size=batch_size, hook=hook),
            options.batch_size,
        )
    wet = _fit_length(audio.resample(estimate, model.sample_rate, sample_rate_hz), samples.shape[1])
    mixed = wet * np.float32(1.0 - options.dry)
    mixed += np.float32(options.dry) * samples
    return mixed


SPEC = StageSpec(STAGE, code_version=CODE_VERSION, gpu=True)


@stage_task(SPEC)
def denoise_audio(audio: Any, options: DenoiseOptions, settings: StoreSettings, models: ModelSettings) -> DenoiseResult:
    """Remove the background noise of a stage's audio; writes ``denoised.wav`` (same rate, channels, length)."""
    ref = audio_input(audio)
    samples, rate = read_audio(ref, settings)
    device = models.torch_device()
    model = load_denoise_model(options.model, device, models.model_dir)
    clean = denoise(samples, rate, model, options)
    return DenoiseResult(write_audio(settings, AUDIO_NAME, clean, rate), source_sha256_of(audio), options.model)
