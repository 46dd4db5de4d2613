"""Upsample: learned 16 → 48 kHz speech super-resolution with NoVaSR (about 23 K parameters).

NoVaSR (``YatharthS/NovaSR`` on Hugging Face, file ``pytorch_model_v1.bin``, MIT) restores the band
above 8 kHz that 16 kHz speech lacks. It is one small BigVGAN-style generator, defined in
:mod:`voxflow.tasks.networks.novasr` (NoVaSR has no installable package); its state dict has exactly the
official checkpoint's keys (weight norm folded into the convolutions), so the official file loads
strictly. The channel count and kernel size are read from the checkpoint's shapes, so smaller test
models load through the same code.

Why NoVaSR: it is tiny (52 KB) and local, so it runs about 9 times faster than real time on one CPU
core (``bench/bench_enhance.py``) and adds almost nothing on a GPU, where the learned alternatives
(AudioSR, FlashSR, FlowHigh: 0.5 to 2 GB) are diffusion or flow models far slower than that. It is
not on PyPI (a git-only package), so its architecture is implemented here and only its weights are
downloaded.

The network follows BigVGAN's alias-free activation, which the checkpoint's filters come from. Copies of
the NovaSR package's later inference code replace its upsampler with a fused one that zero-pads the
edges and returns 4 samples fewer, and interpolate ×3 in float32; voxflow keeps BigVGAN's definition and
interpolates exactly, so ``n`` samples at 16 kHz give exactly ``3 n`` at 48 kHz.

Long files run in bounded memory with the same result as one forward pass over the whole file: the
model is local (every output sample depends on at most :meth:`NovaSR.context_samples` input samples
on each side, 12 at full size), so the file is cut into chunks of ``chunk_s`` that each carry that
much real context on both sides, and only the chunk's own span of the output is kept.

Memory: the input stays where it is (a numpy array on the CPU, or a tensor on its device); a batch
of ``batch_size`` chunks at a time goes to the model's device, and a CUDA out-of-memory error halves
the batch (:func:`voxflow.tasks.kit.runs.halving_batch_on_oom`).
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import numpy as np
from pydantic import AfterValidator, Field

from voxflow.tasks.kit.model_sources import MODEL_SOURCES, NOVASR_HUB_FILE, local_upsample_model
from voxflow.tasks.kit.models import (
    MODEL_DIR_ENV,
    RESIDENT,
    ModelNotFound,
    ModelSettings,
    hub_errors,
)
from voxflow.tasks.kit.options import Options, model_name
from voxflow.tasks.kit.runs import halving_batch_on_oom

if TYPE_CHECKING:
    import torch

    from voxflow.tasks.networks.novasr import NovaSR

STAGE = "enhance"  # NoVaSR runs inside the enhance stage's chain (tasks/enhance.py)
LIBRARY, DEFAULT_MODEL = MODEL_SOURCES[STAGE].library, MODEL_SOURCES[STAGE].name  # <model dir>/novasr/
HUB_REPO = "YatharthS/NovaSR"
HUB_FILE = NOVASR_HUB_FILE  # the official file name, also its name in the model folder
INPUT_RATE_HZ = 16_000
OUTPUT_RATE_HZ = 48_000
RATIO = OUTPUT_RATE_HZ // INPUT_RATE_HZ

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


# ---- the architecture (voxflow.tasks.networks.novasr, imported on first use: it imports torch) -----


def __getattr__(name: str) -> Any:
    """``NovaSR`` (the network class), imported with torch on first access."""
    if name == "NovaSR":
        from voxflow.tasks.networks.novasr import NovaSR

        return NovaSR
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

    from voxflow.tasks.networks.novasr import NovaSR

    expected = f"it must be the state dict of {HUB_REPO}/{HUB_FILE} (weight norm removed)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise ModelNotFound(f"cannot load NovaSR checkpoint {path}: {str(e).splitlines()[0]}; {expected}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelNotFound(f"cannot load NovaSR checkpoint {path}: not a state dict of tensors; {expected}")
    try:
        model = NovaSR.from_state_dict(state)
    except KeyError as e:
        raise ModelNotFound(f"cannot load NovaSR checkpoint {path}: missing key {e.args[0]}; {expected}") from e
    except RuntimeError as e:
        reference = set(
            NovaSR(
                int(state["dec.conv_pre.weight"].shape[0]), int(state["dec.resblocks.0.convs1.0.weight"].shape[-1])
            ).state_dict()
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
