"""Upsample: learned 16 → 48 kHz speech super-resolution with NoVaSR (about 23 K parameters).

NoVaSR (``YatharthS/NovaSR`` on Hugging Face, file ``pytorch_model_v1.bin``, MIT) restores the band
above 8 kHz that 16 kHz speech lacks. It is one small BigVGAN-style generator, at 32 channels::

    conv_pre    Conv1d(1 → 32, kernel 7)                                  16 kHz
    ×3          linear interpolation in time                              48 kHz
    AMP block   x + conv2(act2(conv1(act1(x))))                           48 kHz
                conv1, conv2: Conv1d(32 → 32, kernel 11)
                act: SnakeBeta, alias-free: ×2 up, snake, ×2 down (12-tap Kaiser sinc filters)
    conv_post   Conv1d(32 → 1, kernel 7, no bias), then tanh

The checkpoint is the model's state dict with weight norm already folded into the convolutions
(``dec.conv_pre.*``, ``dec.resblocks.0.convs1.0.*``, ``dec.resblocks.0.activations.N.act.alpha``,
``...upsample.filter``, ``...downsample.lowpass.filter``, ``dec.conv_post.weight``); :class:`NovaSR`
is our own implementation of that architecture whose state dict has exactly those keys, so the
official file loads strictly. The channel count and kernel size are read from the checkpoint's
shapes, so smaller test models load through the same code.

Why NoVaSR: it is tiny (52 KB) and local, so it runs about 9 times faster than real time on one CPU
core (``bench/bench_enhance.py``) and adds almost nothing on a GPU, where the learned alternatives
(AudioSR, FlashSR, FlowHigh: 0.5 to 2 GB) are diffusion or flow models far slower than that. It is
not on PyPI (a git-only package), so its architecture is implemented here and only its weights are
downloaded.

The alias-free activation follows BigVGAN's (replicate padding at the edges, the ×2 filters as
stored in the checkpoint), so ``n`` samples at 16 kHz give exactly ``3 n`` at 48 kHz.
``tests/test_enhance.py`` checks it against ``alias_free_torch``'s ``Activation1d`` (the code
BigVGAN's is adapted from) on the same weights. Copies of the NovaSR package's later inference code
replace that upsampler with a fused one that zero-pads the edges and returns 4 samples fewer, and
interpolate ×3 in float32 (see :class:`LinearInterpolation`); this module keeps BigVGAN's
definition, which the checkpoint's filters come from, and interpolates exactly.

Long files run in bounded memory with the same result as one forward pass over the whole file: the
model is local (every output sample depends on at most :meth:`NovaSR.context_samples` input samples
on each side, 12 at full size), so the file is cut into chunks of ``chunk_s`` that each carry that
much real context on both sides, and only the chunk's own span of the output is kept.

Memory: the input stays where it is (a numpy array on the CPU, or a tensor on its device); a batch
of ``batch_size`` chunks at a time goes to the model's device, and a CUDA out-of-memory error halves
the batch (:func:`voxflow.tasks.kit.runs.halving_batch_on_oom`).
"""

from __future__ import annotations

import functools
import math
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import numpy as np
from pydantic import AfterValidator, Field

from voxflow.tasks.kit.models import (
    MODEL_DIR_ENV,
    RESIDENT,
    ModelNotFound,
    ModelSettings,
    ModelSource,
    hub_errors,
    register_model_source,
)
from voxflow.tasks.kit.options import Options, model_name
from voxflow.tasks.kit.runs import halving_batch_on_oom

if TYPE_CHECKING:
    import torch

    NovaSR = torch.nn.Module  # the class is defined on first use, by _architecture()

STAGE = "enhance"  # NoVaSR runs inside the enhance stage's chain (tasks/enhance.py)
LIBRARY = "novasr"  # subfolder of the model dir: <model dir>/novasr/pytorch_model_v1.bin
DEFAULT_MODEL = "novasr"
HUB_REPO = "YatharthS/NovaSR"
HUB_FILE = "pytorch_model_v1.bin"  # the official file name, also its name in the model folder
INPUT_RATE_HZ = 16_000
OUTPUT_RATE_HZ = 48_000
RATIO = OUTPUT_RATE_HZ // INPUT_RATE_HZ
CHANNELS = 32  # upsample_initial_channel of the official model
KERNEL_SIZE = 11  # the AMP block's convolutions
EDGE_KERNEL_SIZE = 7  # conv_pre and conv_post
FILTER_TAPS = 12  # the alias-free activation's low-pass filters
FILTER_CUTOFF = 0.25  # of the doubled rate: the original Nyquist frequency
FILTER_HALF_WIDTH = 0.3  # transition band, of the doubled rate
SNAKE_EPSILON = 1e-9  # keeps 1 / beta finite

T = TypeVar("T")


@dataclass(frozen=True)
class UpsampleOptions(Options):
    """Which NoVaSR runs and how a long file is cut into chunks."""

    model: Annotated[
        str,
        Field(min_length=1, description="novasr (the official weights), or <name> of a <model dir>/novasr/<name>.bin."),
        AfterValidator(model_name),
    ] = DEFAULT_MODEL
    chunk_s: Annotated[
        float,
        Field(
            gt=0,
            le=600,
            description="Audio the model sees at once (plus 12 samples of context each side); bounds memory.",
        ),
    ] = 1.0
    batch_size: Annotated[
        int,
        Field(
            ge=1,
            le=256,
            description="Chunks per forward pass (halved on out-of-memory); 1 is fastest on a CPU, where small chunks stay in cache.",
        ),
    ] = 1
    half: Annotated[
        bool, Field(description="float16 on CUDA (faster, about 1e-3 from float32); the CPU always runs float32.")
    ] = False


# ---- the architecture ----------------------------------------------------------------------------


def kaiser_sinc_lowpass(cutoff: float, half_width: float, taps: int) -> torch.Tensor:
    """A Kaiser-windowed sinc low-pass filter of ``taps`` taps with unit gain at DC, shaped ``(1, 1, taps)``.

    ``cutoff`` and ``half_width`` (the transition band) are fractions of the sample rate. The window's
    beta comes from Kaiser's formulas for the stop-band attenuation that ``taps`` allow over that
    transition band; the taps are centred on the filter's middle (between two samples for an even
    count). This is the filter BigVGAN's alias-free resampling designs (StyleGAN3's recipe).
    """
    import torch

    attenuation_db = 2.285 * (taps // 2 - 1) * math.pi * 4 * half_width + 7.95
    if attenuation_db > 50.0:
        beta = 0.1102 * (attenuation_db - 8.7)
    elif attenuation_db >= 21.0:
        beta = 0.5842 * (attenuation_db - 21.0) ** 0.4 + 0.07886 * (attenuation_db - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(taps, periodic=False, beta=beta)
    time = torch.arange(taps, dtype=torch.float32) - (taps - 1) / 2
    response = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
    return (response / response.sum()).view(1, 1, taps)


@functools.lru_cache(maxsize=1)
def _architecture() -> SimpleNamespace:
    """The model's classes, defined on first use so that importing this module does not import torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SnakeBeta(nn.Module):
        """``x + sin²(a x) / b`` per channel, with ``a = exp(alpha)`` and ``b = exp(beta)`` learned."""

        def __init__(self, channels: int) -> None:
            super().__init__()
            self.alpha = nn.Parameter(torch.zeros(channels))  # log scale: a = 1 at initialisation
            self.beta = nn.Parameter(torch.zeros(channels))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            frequency = self.alpha.exp()[:, None].to(x.dtype)
            gain = (1.0 / (self.beta.exp()[:, None] + SNAKE_EPSILON)).to(x.dtype)
            # in place on one new tensor: 3x faster on a CPU than five separate passes (inference only)
            y = x * frequency
            return y.sin_().square_().mul_(gain).add_(x)

    def extend_edges(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
        """``x`` with its first sample repeated ``left`` times before it and its last ``right`` times after.

        ``F.pad(mode="replicate")`` computes the same, four times slower on a CPU.
        """
        padded = F.pad(x, (left, right))
        padded[..., :left] = x[..., :1]
        padded[..., padded.shape[-1] - right :] = x[..., -1:]
        return padded

    class LowPass(nn.Module):
        """The ``filter`` (from the checkpoint) applied per channel, keeping every ``stride``-th output.

        The input is extended by repeating its edge samples, so the output has ``ceil(T / stride)``
        samples, each centred on its input sample.
        """

        def __init__(self, stride: int, taps: int = FILTER_TAPS) -> None:
            super().__init__()
            self.stride = stride
            self.register_buffer("filter", kaiser_sinc_lowpass(FILTER_CUTOFF, FILTER_HALF_WIDTH, taps))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            taps = self.filter.shape[-1]
            padded = extend_edges(x, taps // 2 - 1 + taps % 2, taps // 2)
            kernel = self.filter.to(x.dtype).expand(x.shape[1], 1, taps)
            return F.conv1d(padded, kernel, stride=self.stride, groups=x.shape[1])

    class Downsample2(nn.Module):
        """Halve the rate: low-pass below the new Nyquist frequency, keep every other sample."""

        def __init__(self, taps: int = FILTER_TAPS) -> None:
            super().__init__()
            self.lowpass = LowPass(2, taps)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lowpass(x)

    class Upsample2(nn.Module):
        """Double the rate: zero-stuffing then the ``filter`` with gain 2, as two polyphase convolutions.

        Output sample ``n`` is ``2 Σ_i h[n + K/2 - 1 - 2i] x[i]`` for the ``K``-tap filter ``h`` centred
        on the input samples, with the edge samples repeated. For output ``2m + p`` (phase ``p``) and
        input ``i = m + d`` the tap is ``K/2 - 1 + p - 2d``: each phase is one depthwise convolution at
        the input rate (the odd taps for even outputs, the even taps for odd ones), written interleaved.
        """

        def __init__(self, taps: int = FILTER_TAPS) -> None:
            super().__init__()
            if taps % 2:
                raise ValueError(f"the ×2 upsampling filter must have an even number of taps, got {taps}")
            self.register_buffer("filter", kaiser_sinc_lowpass(FILTER_CUTOFF, FILTER_HALF_WIDTH, taps))
            tap = {
                (p, d): t
                for p in (0, 1)
                for d in range(-taps, taps + 1)
                if 0 <= (t := taps // 2 - 1 + p - 2 * d) < taps
            }
            self.reach = max(abs(d) for _, d in tap)  # input samples on each side an output uses (3 for 12 taps)
            # the taps of phase p at offsets -reach..reach (-1: none), so both phases read one padded input
            self.taps = [[tap.get((p, d), -1) for d in range(-self.reach, self.reach + 1)] for p in (0, 1)]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batch, channels, frames = x.shape
            h = F.pad(2.0 * self.filter.to(x.dtype).view(-1), (0, 1))  # h[-1] = 0 for the missing taps
            padded = extend_edges(x, self.reach, self.reach)
            out = x.new_empty(batch, channels, frames, 2)
            for p, index in enumerate(self.taps):
                kernel = h[index].view(1, 1, -1).expand(channels, 1, len(index))
                out[..., p] = F.conv1d(padded, kernel, groups=channels)
            return out.view(batch, channels, 2 * frames)

    class LinearInterpolation(nn.Module):
        """``×ratio`` in time by linear interpolation, as ``F.interpolate(mode="linear")`` defines it.

        Output ``R m + r`` sits at input position ``m + (r + 1/2) / R - 1/2`` (edges clamped), so it is
        a fixed mix of ``x[m]`` and one neighbour: ``(1/3, 2/3)``, ``x[m]``, ``(2/3, 1/3)`` for ×3.
        ``F.interpolate`` computes those positions in float32 from the start of the tensor, so they
        lose precision along the file (off by up to 3/100 of a sample after a minute at 16 kHz); here
        the weights are the same at every position, and a chunk gives what the whole file gives.
        """

        def __init__(self, ratio: int) -> None:
            super().__init__()
            self.fractions = [(r + 0.5) / ratio - 0.5 for r in range(ratio)]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batch, channels, frames = x.shape
            padded = extend_edges(x, 1, 1)
            before, here, after = padded[..., :-2], padded[..., 1:-1], padded[..., 2:]
            out = x.new_empty(batch, channels, frames, len(self.fractions))
            for r, fraction in enumerate(self.fractions):
                out[..., r] = torch.lerp(here, after if fraction > 0 else before, abs(fraction))
            return out.view(batch, channels, len(self.fractions) * frames)

    class AntiAliasedActivation(nn.Module):
        """A snake at twice the rate, so the harmonics it creates above the Nyquist frequency are filtered out."""

        def __init__(self, channels: int, taps: int = FILTER_TAPS) -> None:
            super().__init__()
            self.act = SnakeBeta(channels)
            self.upsample = Upsample2(taps)
            self.downsample = Downsample2(taps)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.downsample(self.act(self.upsample(x)))

        @property
        def reach(self) -> int:
            """Samples on each side an output depends on (``K/2 - 1`` for ``K``-tap filters)."""
            return self.upsample.filter.shape[-1] // 2 - 1

    class AmpBlock(nn.Module):
        """One residual block: activation, convolution, activation, convolution, plus the input."""

        def __init__(self, channels: int, kernel_size: int) -> None:
            super().__init__()
            self.convs1 = nn.ModuleList([nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)])
            self.convs2 = nn.ModuleList([nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)])
            self.activations = nn.ModuleList([AntiAliasedActivation(channels), AntiAliasedActivation(channels)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            first, second = self.activations
            return x + self.convs2[0](second(self.convs1[0](first(x))))

        @property
        def reach(self) -> int:
            convs = sum(conv.kernel_size[0] // 2 for conv in (*self.convs1, *self.convs2))
            return convs + sum(act.reach for act in self.activations)

    class Decoder(nn.Module):
        """16 kHz in, 48 kHz out: ``conv_pre``, ×3 interpolation, the AMP block, ``conv_post``, tanh."""

        def __init__(self, channels: int, kernel_size: int) -> None:
            super().__init__()
            self.conv_pre = nn.Conv1d(1, channels, EDGE_KERNEL_SIZE, padding=EDGE_KERNEL_SIZE // 2)
            self.interpolate = LinearInterpolation(RATIO)
            self.resblocks = nn.ModuleList([AmpBlock(channels, kernel_size)])
            self.conv_post = nn.Conv1d(channels, 1, EDGE_KERNEL_SIZE, padding=EDGE_KERNEL_SIZE // 2, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = self.interpolate(self.conv_pre(x))
            for block in self.resblocks:
                hidden = block(hidden)
            return torch.tanh(self.conv_post(hidden))

    class NovaSR(nn.Module):
        """NoVaSR: ``(batch, 1, n)`` audio at 16 kHz → ``(batch, 1, 3 n)`` at 48 kHz, in ``[-1, 1]``.

        ``NovaSR()`` has the official sizes; :meth:`from_state_dict` builds the sizes a checkpoint has.
        """

        def __init__(self, channels: int = CHANNELS, kernel_size: int = KERNEL_SIZE) -> None:
            super().__init__()
            self.dec = Decoder(channels, kernel_size)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dim() != 3 or x.shape[1] != 1:
                raise ValueError(f"NovaSR takes (batch, 1, samples) audio, got shape {tuple(x.shape)}")
            return self.dec(x)

        @property
        def channels(self) -> int:
            return self.dec.conv_pre.out_channels

        def context_samples(self) -> int:
            """Input samples on each side that an output sample depends on (12 at the official sizes).

            At 48 kHz the AMP block and ``conv_post`` reach ``r`` samples (23); the linear interpolation
            turns that into ``ceil(r / 3) + 1`` samples at 16 kHz, and ``conv_pre`` adds its own half width.
            """
            reach_48k = sum(block.reach for block in self.dec.resblocks) + self.dec.conv_post.kernel_size[0] // 2
            return math.ceil(reach_48k / RATIO) + 1 + self.dec.conv_pre.kernel_size[0] // 2

        @classmethod
        def from_state_dict(cls, state: dict[str, Any]) -> NovaSR:
            """A model with the sizes of ``state`` (channels, kernel), its weights loaded strictly."""
            pre, conv = state.get("dec.conv_pre.weight"), state.get("dec.resblocks.0.convs1.0.weight")
            if pre is None or conv is None:
                raise KeyError("dec.conv_pre.weight" if pre is None else "dec.resblocks.0.convs1.0.weight")
            model = cls(channels=int(pre.shape[0]), kernel_size=int(conv.shape[-1]))
            model.load_state_dict(state, strict=True)
            return model

    return SimpleNamespace(NovaSR=NovaSR, SnakeBeta=SnakeBeta, AntiAliasedActivation=AntiAliasedActivation)


def __getattr__(name: str) -> Any:
    """``NovaSR`` and its parts, built (and torch imported) on first access."""
    if name in ("NovaSR", "SnakeBeta", "AntiAliasedActivation"):
        return getattr(_architecture(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- files and loading --------------------------------------------------------------------------


def _describe_keys(names: set[str]) -> str:
    shown = sorted(names)[:3]
    return ", ".join(shown) + (f" and {len(names) - len(shown)} more" if len(names) > len(shown) else "")


def read_checkpoint(path: Path) -> NovaSR:
    """The NoVaSR in a state-dict checkpoint (float32, on the CPU, eval mode); a clear error otherwise.

    Reads with ``torch.load(weights_only=True)`` (tensors only). float16 checkpoints load as float32.
    """
    import torch

    expected = f"it must be the state dict of {HUB_REPO}/{HUB_FILE} (weight norm removed)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise ModelNotFound(f"cannot load NovaSR checkpoint {path}: {str(e).splitlines()[0]}; {expected}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelNotFound(f"cannot load NovaSR checkpoint {path}: not a state dict of tensors; {expected}")
    try:
        model = _architecture().NovaSR.from_state_dict(state)
    except KeyError as e:
        raise ModelNotFound(f"cannot load NovaSR checkpoint {path}: missing key {e.args[0]}; {expected}") from e
    except RuntimeError as e:
        reference = set(
            _architecture()
            .NovaSR(int(state["dec.conv_pre.weight"].shape[0]), int(state["dec.resblocks.0.convs1.0.weight"].shape[-1]))
            .state_dict()
        )
        missing, unexpected = reference - set(state), set(state) - reference
        details = "; ".join(
            part
            for part in (
                f"missing keys {_describe_keys(missing)}" if missing else "",
                f"unexpected keys {_describe_keys(unexpected)}" if unexpected else "",
            )
            if part
        )
        reason = details or str(e).strip().splitlines()[-1].strip()  # e.g. a size mismatch
        raise ModelNotFound(f"cannot load NovaSR checkpoint {path}: {reason}; {expected}") from e
    return model.float().eval()


def write_checkpoint(model: NovaSR, path: Path) -> Path:
    """Save ``model``'s state dict as the official checkpoint is saved (written atomically)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    torch.save(model.state_dict(), partial)
    partial.replace(path)
    return path


def _candidates(name: str) -> list[str]:
    """The file names ``name`` may have in the model folder (the official file name first for the default)."""
    return [HUB_FILE, f"{name}.bin"] if name == DEFAULT_MODEL else [f"{name}.bin"]


def local_upsample_model(name: str, settings: ModelSettings) -> Path | None:
    """``<model dir>/novasr/pytorch_model_v1.bin`` (the default) or ``<model dir>/novasr/<name>.bin`` when present."""
    return next((p for p in (settings.local(LIBRARY, c) for c in _candidates(name)) if p is not None), None)


def _download(name: str, settings: ModelSettings, token: str | None) -> Path:
    """The official checkpoint from the Hugging Face hub (into its cache); only the default name downloads."""
    if name != DEFAULT_MODEL:
        where = f"no {settings.folder / LIBRARY / f'{name}.bin'}" if settings.folder else f"{MODEL_DIR_ENV} is not set"
        raise ModelNotFound(
            f"NovaSR model {name!r} is not in the model folder ({where}); only {DEFAULT_MODEL!r} "
            f"downloads ({HUB_REPO}/{HUB_FILE})"
        )
    from huggingface_hub import hf_hub_download

    with hub_errors(name):
        return Path(hf_hub_download(HUB_REPO, HUB_FILE, token=token))


def load_upsample_model(
    name: str = DEFAULT_MODEL,
    device: str = "cpu",
    model_dir: str | Path | None = None,
    token: str | None = None,
    *,
    half: bool = False,
) -> NovaSR:
    """NoVaSR ``name`` on ``device``, loaded once per process (resident under the enhance stage).

    ``<model_dir>/novasr/pytorch_model_v1.bin`` (or ``<name>.bin``) when it exists, else the official
    file from the hub. float32; float16 with ``half`` on CUDA only.
    """
    settings = ModelSettings(model_dir=str(model_dir) if model_dir else None)
    path = local_upsample_model(name, settings)
    half = half and device.startswith("cuda")

    def load() -> NovaSR:
        model = read_checkpoint(path if path is not None else _download(name, settings, token)).to(device)
        return (model.half() if half else model).eval()

    return RESIDENT.get(
        (LIBRARY, name, str(path or "hub"), "float16" if half else "float32"), device, load, stage=STAGE
    )


def pull_upsample_model(name: str, settings: ModelSettings) -> Path:
    """Download the official checkpoint and save it as ``<model dir>/novasr/pytorch_model_v1.bin``."""
    if name != DEFAULT_MODEL:
        raise ModelNotFound(f"only {DEFAULT_MODEL!r} can be pulled ({HUB_REPO}/{HUB_FILE}), got {name!r}")
    downloaded = _download(name, settings, settings.token())
    read_checkpoint(downloaded)  # refuse a file the loader could not read
    target = settings.library_dir(LIBRARY) / HUB_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    shutil.copyfile(downloaded, partial)
    partial.replace(target)
    return target


register_model_source(ModelSource(STAGE, LIBRARY, DEFAULT_MODEL, pull_upsample_model, local_upsample_model))


# ---- compute ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """One piece of one channel: its own span ``[start, end)`` and the window ``[lo, hi)`` the model sees."""

    channel: int
    start: int
    end: int
    lo: int
    hi: int


def plan_chunks(channels: int, frames: int, chunk_frames: int, context: int) -> list[Chunk]:
    """Chunks of ``chunk_frames`` (the last shorter) per channel, each window ``context`` wider on both sides.

    Windows stop at the file's edges, where the model sees what it sees on the whole file.
    """
    spans = [(s, min(s + chunk_frames, frames)) for s in range(0, frames, chunk_frames)]
    return [Chunk(c, s, e, max(s - context, 0), min(e + context, frames)) for s, e in spans for c in range(channels)]


def _batches(chunks: list[Chunk], size: int) -> list[list[Chunk]]:
    """Chunks with equal windows batched together, ``size`` at most per batch, in file order."""
    by_length: dict[int, list[Chunk]] = {}
    for chunk in chunks:
        by_length.setdefault(chunk.hi - chunk.lo, []).append(chunk)
    return [group[i : i + size] for group in by_length.values() for i in range(0, len(group), size)]


def _upsample_tensor(
    x: torch.Tensor,
    model: NovaSR,
    options: UpsampleOptions,
    batch_size: int,
    hook: Callable[[int, int], None] | None,
) -> torch.Tensor:
    """``(channels, n)`` → ``(channels, 3 n)`` float32 on ``x``'s device, chunk batches on the model's device."""
    import torch

    channels, frames = x.shape
    parameter = next(model.parameters())
    chunks = plan_chunks(channels, frames, max(round(options.chunk_s * INPUT_RATE_HZ), 1), model.context_samples())
    out = torch.empty((channels, RATIO * frames), dtype=torch.float32, device=x.device)
    done = 0
    with torch.no_grad():
        for batch in _batches(chunks, batch_size):
            windows = torch.stack([x[c.channel, c.lo : c.hi] for c in batch]).to(parameter.device, parameter.dtype)
            y = model(windows[:, None])[:, 0].to(x.device, torch.float32)
            for chunk, row in zip(batch, y):
                out[chunk.channel, RATIO * chunk.start : RATIO * chunk.end] = row[
                    RATIO * (chunk.start - chunk.lo) : RATIO * (chunk.end - chunk.lo)
                ]
            done += len(batch)
            if hook is not None:
                hook(done, len(chunks))
    return out


def upsample(
    samples: T,
    model: NovaSR,
    options: UpsampleOptions = UpsampleOptions(),
    *,
    hook: Callable[[int, int], None] | None = None,
) -> T:
    """``(channels, n)`` audio at 16 kHz → ``(channels, 3 n)`` at 48 kHz, in chunks (see the module docstring).

    A numpy array gives a numpy array; a tensor gives a float32 tensor on the tensor's device (so a
    chain on the GPU stays there). Equals one forward pass of ``model`` over each whole channel up to
    float rounding. ``hook(done, total)`` counts chunks over all channels.
    """
    import torch

    as_numpy = isinstance(samples, np.ndarray)
    x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)) if as_numpy else samples
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] == 0:
        raise ValueError(
            f"expected (channels, samples) audio with samples, got {getattr(x, 'shape', type(x).__name__)}"
        )
    out = halving_batch_on_oom(lambda size: _upsample_tensor(x.float(), model, options, size, hook), options.batch_size)
    return out.numpy() if as_numpy else out  # type: ignore[return-value]
