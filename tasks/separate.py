"""Separate: split a mix into vocals and accompaniment (the sum of every other stem) with Demucs.

The input audio (any rate, mono or with the model's channel count) is resampled to the model's rate
(soxr), given the model's channels (``demucs.audio.convert_audio_channels``) and normalised like
demucs' own entry point, ``demucs.api.Separator``: ``(wav - mean) / (std + 1e-8)`` with the statistics
of the channel mean, undone on each stem. ``vocals.wav`` and ``accompaniment.wav`` are written back at
the input's rate and channel count; the vocals are what diarization and transcription continue with.

Segments, their triangular transition weights and the overlap-add are those of
``demucs.apply.apply_model(split=True, overlap=...)``, shifts and bags of models included (a bag is
weighted per stem as ``apply_model`` weighs it). ``apply_model`` runs the segments one by one; here
``batch_size`` of them run at once on a GPU (on a CPU a batch is slower per segment than one at a
time, so the default there is 1).

Memory: the whole track at the model's rate (its normalised copy) and the two outputs stay float32
CPU tensors, ``(channels, samples)`` each; only a batch of segments ``(batch, channels, segment)``, the
model and its ``(batch, stems, channels, segment)`` output live on the device. The stems are folded
into vocals and accompaniment on the device as each batch finishes, so no copy of the track with all
stems (four times the output) is ever held, unlike ``apply_model``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import AfterValidator, Field

from voxflow.storage.refs import ArtifactRef
from voxflow.storage.settings import StoreSettings
from voxflow.tasks.helpers.audio import resample, to_dbfs
from voxflow.tasks.kit.model_sources import MODEL_SOURCES, local_repo
from voxflow.tasks.kit.models import (
    RESIDENT,
    ModelNotFound,
    ModelSettings,
    holding,
    hub_errors,
)
from voxflow.tasks.kit.options import Options, not_blank
from voxflow.tasks.kit.outputs import audio_input, read_audio, source_sha256_of, write_audio
from voxflow.tasks.kit.runs import halving_batch_on_oom
from voxflow.tasks.kit.stage import StageSpec, stage_task

if TYPE_CHECKING:
    import torch

STAGE = "separate"
CODE_VERSION = "1"
LIBRARY, DEFAULT_MODEL = (
    MODEL_SOURCES[STAGE].library,
    MODEL_SOURCES[STAGE].name,
)  # a demucs local repo (<name>.yaml bags, <sig>[-<checksum>].th)
VOCALS = "vocals"  # the stem kept apart; every other stem is summed into the accompaniment
VOCALS_NAME = "vocals.wav"
ACCOMPANIMENT_NAME = "accompaniment.wav"
MAX_SHIFT_S = 0.5  # largest random time shift of the shift trick, in seconds (as apply_model)
NORM_EPS = 1e-8  # added to the mix's standard deviation (as demucs.api.Separator)
CUDA_BATCH_SIZE = 4  # segments at once on a GPU when the options leave it open
CPU_BATCH_SIZE = 1  # on a CPU a batch is slower per segment (measured: 7.1 s at 1, 10.3 s at 4, full htdemucs)


@dataclass(frozen=True)
class SeparateOptions(Options):
    """Which Demucs model separates, how the track is cut into segments, and how many run at once."""

    model: Annotated[
        str,
        Field(
            min_length=1,
            description="Demucs model or bag name: htdemucs, htdemucs_ft (a bag of 4), htdemucs_6s, ...",
        ),
        AfterValidator(not_blank),
    ] = DEFAULT_MODEL
    segment_s: Annotated[
        float | None,
        Field(
            gt=0, description="Segment length in seconds; empty: the model's own (a transformer model takes no longer)."
        ),
    ] = None
    overlap: Annotated[
        float, Field(ge=0, lt=1, description="Fraction of a segment shared with the next (crossfaded).")
    ] = 0.25
    shifts: Annotated[
        int,
        Field(
            ge=0,
            le=32,
            description="Passes with a random time shift of up to 0.5 s, averaged; 0: one unshifted pass. Each costs a full pass.",
        ),
    ] = 0
    shift_seed: Annotated[
        int, Field(ge=0, description="Seed of the shifts' random offsets, so a rerun writes the same bytes.")
    ] = 0
    batch_size: Annotated[
        int | None,
        Field(
            ge=1,
            le=256,
            description="Segments run at once on the device (halved on CUDA out-of-memory); empty: 4 on a CUDA GPU, 1 on a CPU (where batches run slower).",
        ),
    ] = None

    def batch_size_on(self, device: str) -> int:
        """The segments run at once on ``device`` (``cuda``/``cpu``): the option, else the device's default."""
        if self.batch_size is not None:
            return self.batch_size
        return CUDA_BATCH_SIZE if device.startswith("cuda") else CPU_BATCH_SIZE


@dataclass(frozen=True)
class Separation:
    """Vocals and accompaniment, float32 ``(channels, samples)`` at the input's rate and channel count."""

    vocals: np.ndarray
    accompaniment: np.ndarray  # the sum of every stem but the vocals
    sample_rate_hz: int
    sources: tuple[str, ...]  # the model's stems


@dataclass(frozen=True)
class SeparateResult:
    """What the separate task returns: the vocals (what the next stages read) and the accompaniment."""

    artifact: ArtifactRef  # vocals.wav
    accompaniment: ArtifactRef  # accompaniment.wav
    source_sha256: str
    model: str
    sources: tuple[str, ...]  # the model's stems
    vocals_rms_dbfs: float
    accompaniment_rms_dbfs: float

    @property
    def sha256(self) -> str:
        return self.artifact.sha256

    def summary(self) -> dict:
        """What a summary table shows of a separated file."""
        return {
            "model": self.model,
            "duration_s": round(self.artifact.duration_s or 0.0, 3),
            "vocals_dbfs": round(self.vocals_rms_dbfs, 2),
            "accompaniment_dbfs": round(self.accompaniment_rms_dbfs, 2),
            "vocals": self.artifact.sha256[:12],
        }


def load_separate_model(name: str = DEFAULT_MODEL, device: str = "cpu", model_dir: str | Path | None = None) -> Any:
    """The Demucs model or bag ``name`` on ``device`` in eval mode, loaded once per process.

    The local repo ``<model_dir>/demucs`` is read with ``demucs.pretrained.get_model(name, repo=...)``
    when it holds the model; otherwise ``get_model(name)`` downloads it (Hugging Face, then demucs'
    legacy repository).
    """
    folder = local_repo(name, ModelSettings(model_dir=str(model_dir) if model_dir else None))
    key = (LIBRARY, name, str(folder) if folder else None)
    return RESIDENT.get(key, device, lambda: _load_model(name, folder, device), stage=STAGE)


def _load_model(name: str, folder: Path | None, device: str) -> Any:
    from urllib.error import URLError

    from demucs.pretrained import get_model
    from demucs.repo import ModelLoadingError

    if folder is not None:
        try:
            return get_model(name, repo=folder).to(device).eval()
        except ModelLoadingError as e:
            raise ModelNotFound(f"demucs could not load {name!r} from {folder}: {e}") from e
    try:
        with hub_errors(name):
            model = get_model(name)
    except (ModelLoadingError, URLError) as e:
        raise ModelNotFound(
            f"demucs model {name!r} is not in the model folder's demucs/ repo and could not be downloaded ({e}); "
            "run 'voxflow models pull' on a machine with internet, or set VOXFLOW_MODEL_DIR"
        ) from e
    return model.to(device).eval()


def save_package(model: Any, folder: Path, signature: str) -> Path:
    """Write ``model`` as demucs package ``<folder>/<signature>-<checksum>.th`` (demucs' own serialization).

    The state is half precision, like the released checkpoints; an older package of the signature is
    replaced (a local repo refuses two).
    """
    from demucs.states import get_state, save_with_checksum

    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob(f"{signature}-*.th"), *folder.glob(f"{signature}.th")]:
        old.unlink()
    args, kwargs = model._init_args_kwargs  # recorded by demucs' capture_init
    package = {"klass": type(model), "args": args, "kwargs": kwargs, "state": get_state(model, None, half=True)}
    save_with_checksum(package, folder / f"{signature}.th")
    (written,) = folder.glob(f"{signature}-*.th")
    return written


def pull_separate_model(name: str, settings: ModelSettings) -> Path:
    """Download ``name`` from the Hugging Face hub into the local repo ``<model dir>/demucs``.

    Writes the bag file ``<name>.yaml`` as published and each of its models as a demucs package, the
    layout ``get_model(name, repo=...)`` reads offline.
    """
    import yaml
    from demucs.hf import DEFAULT_NAMESPACE, hf_repo_name, load_safetensors_model
    from huggingface_hub import hf_hub_download

    if "/" in name or name.startswith("hf:"):
        raise ValueError(f"pull takes a plain demucs model name (e.g. htdemucs), got {name!r}")
    folder = settings.library_dir(LIBRARY)
    repo_id = f"{DEFAULT_NAMESPACE}/{hf_repo_name(name)}"
    with hub_errors(name):
        bag_file = Path(hf_hub_download(repo_id, f"{name}.yaml", token=settings.token()))
        for signature in yaml.safe_load(bag_file.read_text())["models"]:
            weights = hf_hub_download(repo_id, f"{signature}.safetensors", token=settings.token())
            save_package(load_safetensors_model(weights), folder, signature)
    (folder / f"{name}.yaml").write_text(bag_file.read_text())
    return folder


@dataclass(frozen=True)
class _Segment:
    """One segment of a pass, in samples of the pass's frame (as ``apply_model`` cuts it)."""

    offset: int  # first sample of the segment in the frame
    length: int  # samples kept (the last segment may be shorter)
    padded: int  # samples the model reads: centred on the segment, neighbours or zeros around it


@dataclass(frozen=True)
class _Pass:
    """One run of one model over the track: a frame starting at ``start`` (<= 0 when shifted)."""

    model: Any
    start: int  # track sample where the frame starts; the frame ends with the track
    coefficients: torch.Tensor  # (groups, stems): group = sum of coefficient * stem


def _padded_length(model: Any, length: int, segment_s: float | None) -> int:
    """Samples the model reads for a segment of ``length`` (``apply_model``'s valid length)."""
    from demucs.htdemucs import HTDemucs

    if isinstance(model, HTDemucs) and segment_s is not None:
        return int(segment_s * model.samplerate)
    if hasattr(model, "valid_length"):
        return model.valid_length(length)
    return length


def _segments(model: Any, frame_length: int, overlap: float, segment_s: float | None) -> tuple[list[_Segment], int]:
    """The segments of a frame and the segment length, as ``apply_model(split=True)`` places them."""
    segment = model.segment if segment_s is None else segment_s
    segment_length = int(model.samplerate * segment)
    stride = int((1 - overlap) * segment_length)
    if stride < 1:
        raise ValueError(f"segment of {segment_length} samples with overlap {overlap} leaves no stride")
    segments = []
    for offset in range(0, frame_length, stride):
        length = min(frame_length - offset, segment_length)
        segments.append(_Segment(offset, length, _padded_length(model, length, segment_s)))
    return segments, segment_length


def _transition_weight(segment_length: int) -> torch.Tensor:
    """The triangle ``apply_model`` weighs a segment's output with (transition power 1)."""
    import torch

    weight = torch.cat(
        [torch.arange(1, segment_length // 2 + 1), torch.arange(segment_length - segment_length // 2, 0, -1)]
    )
    return weight / weight.max()


def _weight_sum(segments: list[_Segment], weight: torch.Tensor, stride: int, start: int, stop: int) -> torch.Tensor:
    """Sum of the transition weights over frame samples ``[start, stop)`` (added in segment order)."""
    import torch

    total = torch.zeros(stop - start)
    first = max((start - len(weight)) // stride, 0)
    for segment in segments[first : stop // stride + 1]:
        lo, hi = max(segment.offset, start), min(segment.offset + segment.length, stop)
        if lo < hi:
            total[lo - start : hi - start] += weight[lo - segment.offset : hi - segment.offset]
    return total


def _window(track: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """``track[:, start:start + length]``, zeros where that runs past either end."""
    import torch.nn.functional as F

    lo, hi = max(start, 0), min(start + length, track.shape[-1])
    if lo >= hi:
        return track.new_zeros(track.shape[0], length)
    return F.pad(track[:, lo:hi], (lo - start, start + length - hi))


def _batches(segments: list[_Segment], batch_size: int) -> list[list[_Segment]]:
    """Consecutive segments of the same padded length, ``batch_size`` at most per batch."""
    batches: list[list[_Segment]] = []
    for segment in segments:
        if batches and len(batches[-1]) < batch_size and batches[-1][0].padded == segment.padded:
            batches[-1].append(segment)
        else:
            batches.append([segment])
    return batches


def _passes(model: Any, groups: torch.Tensor, shifts: int, shift_seed: int) -> list[_Pass]:
    """One pass per (model of the bag, shift); shift offsets drawn in ``apply_model``'s order from ``Random(shift_seed)``.

    ``apply_model`` draws them from the global ``random``, which HTDemucs' transformer also consumes on
    every forward call, so its offsets depend on the number of calls; a generator of our own keeps them
    independent of the batching and reproducible.
    """
    import torch
    from demucs.apply import BagOfModels

    members = list(model.models) if isinstance(model, BagOfModels) else [model]
    weights = model.weights if isinstance(model, BagOfModels) else [[1.0] * len(model.sources)]
    totals = [sum(w[k] for w in weights) for k in range(len(model.sources))]
    draw = random.Random(shift_seed)
    passes = []
    for member, member_weights in zip(members, weights):
        share = torch.tensor([w / t if t else 0.0 for w, t in zip(member_weights, totals)]) / max(shifts, 1)
        max_shift = int(MAX_SHIFT_S * member.samplerate)
        starts = [draw.randint(0, max_shift) - max_shift for _ in range(shifts)] if shifts else [0]
        passes.extend(_Pass(member, start, groups * share) for start in starts)
    return passes


def separate_stems(
    model: Any,
    mix: torch.Tensor,
    groups: torch.Tensor,
    *,
    segment_s: float | None = None,
    overlap: float = 0.25,
    shifts: int = 0,
    shift_seed: int = 0,
    batch_size: int = 1,
    hook: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Weighted sums of the stems of ``mix``: ``(groups, channels, samples)`` float32 on the CPU.

    ``mix`` is ``(channels, samples)`` float32 on the CPU, at the model's rate and channel count, already
    normalised; ``groups`` is ``(groups, stems)``. With the identity for ``groups`` this equals
    ``apply_model(model, mix[None], shifts=shifts, split=True, overlap=overlap, segment=segment_s)[0]``
    (when ``shifts`` > 0: with its offsets drawn from ``random.Random(shift_seed)``), while only
    ``batch_size`` segments at a time move to the model's device. ``hook(completed, total)`` counts segments.
    """
    import torch

    device = next(model.parameters()).device
    frames = mix.shape[-1]
    out = torch.zeros(groups.shape[0], mix.shape[0], frames)
    plans = []
    for run in _passes(model, groups.float(), shifts, shift_seed):
        segments, segment_length = _segments(run.model, frames - run.start, overlap, segment_s)
        plans.append((run, segments, segment_length))
    total, completed = sum(len(segments) for _, segments, _ in plans), 0
    with torch.inference_mode():
        for run, segments, segment_length in plans:
            weight = _transition_weight(segment_length)
            stride = int((1 - overlap) * segment_length)
            coefficients = run.coefficients.to(device)
            for batch in _batches(segments, batch_size):
                x = torch.stack(
                    [_window(mix, run.start + s.offset - (s.padded - s.length) // 2, s.padded) for s in batch]
                )
                y = torch.einsum("gs,bscl->bgcl", coefficients, run.model(x.to(device)))
                for segment, stems in zip(batch, y):
                    trim = (segment.padded - segment.length) // 2
                    lo, hi = segment.offset, segment.offset + segment.length
                    scale = weight[: segment.length] / _weight_sum(segments, weight, stride, lo, hi)
                    skip = max(-(run.start + lo), 0)  # frame samples before the track (shifted passes)
                    if skip < segment.length:
                        kept = stems[..., trim + skip : trim + segment.length] * scale[skip:].to(device)
                        out[..., run.start + lo + skip : run.start + hi] += kept.cpu()
                completed += len(batch)
                if hook is not None:
                    hook(completed, total)
    return out


def _check(model: Any, channels: int, frames: int, segment_s: float | None) -> None:
    """Reject what the model cannot separate, with the reason."""
    from demucs.apply import BagOfModels
    from demucs.htdemucs import HTDemucs

    if frames == 0:
        raise ValueError("cannot separate empty audio (0 samples)")
    if channels not in (1, model.audio_channels) and model.audio_channels != 1:
        raise ValueError(
            f"cannot separate {channels}-channel audio with a {model.audio_channels}-channel model; "
            "give it mono or stereo audio (ingest with mono=True, or downmix)"
        )
    if VOCALS not in model.sources:
        raise ValueError(f"the model separates {', '.join(model.sources)}: it has no {VOCALS!r} stem")
    members = model.models if isinstance(model, BagOfModels) else [model]
    longest = min((float(m.segment) for m in members if isinstance(m, HTDemucs)), default=float("inf"))
    if segment_s is not None and segment_s > longest:
        raise ValueError(f"segment_s {segment_s} is longer than the transformer model was trained for ({longest} s)")


def to_model_input(samples: np.ndarray, sample_rate_hz: int, model: Any) -> torch.Tensor:
    """``(channels, samples)`` audio as the model reads it: its rate (soxr) and channel count, a CPU tensor."""
    import torch
    from demucs.audio import convert_audio_channels

    resampled = np.ascontiguousarray(resample(samples, sample_rate_hz, model.samplerate), dtype=np.float32)
    return convert_audio_channels(torch.from_numpy(resampled), model.audio_channels)


def to_input_layout(
    stem: np.ndarray, model_rate_hz: int, sample_rate_hz: int, channels: int, frames: int
) -> np.ndarray:
    """A model-rate stem back at the input's rate, channel count (mean or copies) and exact length."""
    if stem.shape[0] != channels:
        stem = stem.mean(axis=0, keepdims=True) if channels == 1 else np.repeat(stem, channels, axis=0)
    back = resample(np.ascontiguousarray(stem, dtype=np.float32), model_rate_hz, sample_rate_hz)
    if back.shape[1] < frames:
        back = np.pad(back, ((0, 0), (0, frames - back.shape[1])))
    return np.ascontiguousarray(back[:, :frames], dtype=np.float32)


def separate(
    samples: np.ndarray,
    sample_rate_hz: int,
    model: Any,
    options: SeparateOptions,
    hook: Callable[[int, int], None] | None = None,
) -> Separation:
    """Vocals and accompaniment of ``(channels, samples)`` float32 audio, at its rate and channel count.

    ``model`` is a loaded Demucs model or bag (:func:`load_separate_model`). At the model's rate the
    stems equal ``demucs.api.Separator(shifts=options.shifts, overlap=options.overlap,
    segment=options.segment_s).separate_tensor``'s; CUDA out-of-memory halves the batch and runs again.
    """
    channels, frames = samples.shape
    _check(model, channels, frames, options.segment_s)
    with holding(model):
        out = _vocals_and_accompaniment(to_model_input(samples, sample_rate_hz, model), model, options, hook)
    back = [to_input_layout(part.numpy(), model.samplerate, sample_rate_hz, channels, frames) for part in out]
    return Separation(back[0], back[1], sample_rate_hz, tuple(model.sources))


def _vocals_and_accompaniment(
    mix: torch.Tensor, model: Any, options: SeparateOptions, hook: Callable[[int, int], None] | None
) -> torch.Tensor:
    """``(2, channels, samples)`` vocals and accompaniment of a model-rate ``mix``, normalised as the
    Separator does and restored (each stem gets the mean back, so the accompaniment gets it once per stem).
    """
    import torch

    reference = mix.mean(0)
    mean, std = reference.mean(), reference.std() + NORM_EPS
    normalised = mix - mean
    normalised /= std
    del mix, reference
    vocals = torch.zeros(len(model.sources))
    vocals[model.sources.index(VOCALS)] = 1.0

    def run(batch_size: int) -> torch.Tensor:
        return separate_stems(
            model,
            normalised,
            torch.stack([vocals, 1.0 - vocals]),
            segment_s=options.segment_s,
            overlap=options.overlap,
            shifts=options.shifts,
            shift_seed=options.shift_seed,
            batch_size=batch_size,
            hook=hook,
        )

    out = halving_batch_on_oom(run, options.batch_size_on(str(next(model.parameters()).device)))
    out *= std
    out[0] += mean
    out[1] += mean * (len(model.sources) - 1)
    return out


def rms_dbfs(samples: np.ndarray) -> float:
    """Root-mean-square level of all samples in dBFS (-inf for silence)."""
    return to_dbfs(float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))) if samples.size else float("-inf")


SPEC = StageSpec(STAGE, code_version=CODE_VERSION, gpu=True)


@stage_task(SPEC)
def separate_audio(
    audio: Any, options: SeparateOptions, settings: StoreSettings, models: ModelSettings
) -> SeparateResult:
    """Split a stage's audio into ``vocals.wav`` (what the next stages read) and ``accompaniment.wav``."""
    ref = audio_input(audio)
    samples, rate = read_audio(ref, settings)
    device = models.torch_device()
    model = load_separate_model(options.model, device, models.model_dir)
    found = separate(samples, rate, model, options)
    return SeparateResult(
        artifact=write_audio(settings, VOCALS_NAME, found.vocals, rate),
        accompaniment=write_audio(settings, ACCOMPANIMENT_NAME, found.accompaniment, rate),
        source_sha256=source_sha256_of(audio),
        model=options.model,
        sources=found.sources,
        vocals_rms_dbfs=rms_dbfs(found.vocals),
        accompaniment_rms_dbfs=rms_dbfs(found.accompaniment),
    )
