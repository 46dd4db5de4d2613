"""A random-weight NoVaSR saved as ``<model_dir>/novasr/pytorch_model_v1.bin``, the file the stage loads.

The file is what the official ``YatharthS/NovaSR`` checkpoint is: a ``torch.save`` of the model's state
dict with weight norm folded into the convolutions, read by :func:`voxflow.tasks.upsample.load_upsample_model`
(which takes the channel count and kernel size from its shapes). ``full`` has the official sizes (32
channels, kernel 11: 23,200 parameters); ``tiny`` keeps the kernel, the filters and the receptive field
with 8 channels. The snake parameters are drawn around their initial value instead of left at it, so
that tests see them used; the low-pass filters are the designed ones, as in the official file.
"""

from __future__ import annotations

from pathlib import Path

from voxflow.tasks.upsample import HUB_FILE, LIBRARY, write_checkpoint

SIZES = {"tiny": {"channels": 8}, "full": {"channels": 32}}
SNAKE_LOG_STD = 0.5  # spread of log alpha and log beta around 0 (alpha = beta = 1)


def build(model_dir: Path, size: str, seed: int) -> list[Path]:
    """Write a random ``size`` NoVaSR (deterministic for ``seed``); returns the file."""
    import torch

    from voxflow.tasks.upsample import NovaSR

    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = NovaSR(**SIZES[size])
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith((".act.alpha", ".act.beta")):
                    parameter.normal_(0.0, SNAKE_LOG_STD)
    return [write_checkpoint(model, Path(model_dir) / LIBRARY / HUB_FILE)]
