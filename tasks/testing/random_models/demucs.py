"""Random-weight HTDemucs written as a demucs local repo: ``<model_dir>/demucs/htdemucs.yaml`` + a package.

The layout is the released one (``htdemucs.yaml`` is a bag naming one signature, whose package
``<sig>-<checksum>.th`` holds ``klass``, ``args``, ``kwargs`` and a half-precision ``state``), written
with demucs' own ``get_state`` and ``save_with_checksum``, so ``demucs.pretrained.get_model("htdemucs",
repo=<model_dir>/demucs)`` and :func:`voxflow.tasks.separate.load_separate_model` read it. The signature names
the random model (``random_tiny_0``), never a released one, so real packages can sit beside it.

``full`` has the architecture of the released ``htdemucs`` (955717e8: 42 M parameters, 7.8 s segments);
``tiny`` keeps its STFT and depth with 8 channels, one transformer layer and 1.95 s segments.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from voxflow.tasks.separate import DEFAULT_MODEL, LIBRARY, save_package

SOURCES = ["drums", "bass", "other", "vocals"]
# Constructor arguments of the released htdemucs that differ from HTDemucs' defaults.
FULL = {
    "channels": 48,
    "depth": 4,
    "nfft": 4096,
    "dconv_mode": 3,
    "bottom_channels": 512,
    "t_layers": 5,
    "t_heads": 8,
    "t_dropout": 0.02,
    "t_sparse_attn_window": 400,
    "multi_freqs": [],
    "segment": Fraction(39, 5),
}
TINY = {**FULL, "channels": 8, "bottom_channels": 0, "t_layers": 1, "t_heads": 2, "segment": Fraction(39, 20)}
SIZES = {"tiny": TINY, "full": FULL}


def random_htdemucs(size: str = "tiny", seed: int = 0, **overrides: Any) -> Any:
    """An HTDemucs with random weights (deterministic for a seed), in eval mode on the CPU."""
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    return HTDemucs(list(SOURCES), audio_channels=2, samplerate=44_100, **{**SIZES[size], **overrides}).eval()


def write_bag(folder: Path, name: str, signatures: list[str], weights: list[list[float]] | None = None) -> Path:
    """A demucs bag file ``<folder>/<name>.yaml`` naming packages by signature (with per-stem weights)."""
    bag: dict[str, Any] = {"models": signatures}
    if weights is not None:
        bag["weights"] = weights
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(bag))
    return path


def build(model_dir: Path, size: str, seed: int) -> list[Path]:
    """Write the random ``htdemucs`` of ``size`` into ``<model_dir>/demucs``; returns the files written."""
    folder = Path(model_dir) / LIBRARY
    signature = f"random_{size}_{seed}"
    package = save_package(random_htdemucs(size, seed), folder, signature)
    return [package, write_bag(folder, DEFAULT_MODEL, [signature])]
