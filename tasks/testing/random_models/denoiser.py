"""A random-weight denoiser Demucs saved as ``<model_dir>/denoiser/dns48.th``, the package the stage loads.

The file is what ``voxflow models pull`` writes for the real DNS48: ``denoiser.utils.serialize_model``
of a ``Demucs`` (class, args, kwargs, state), read back by the denoiser's own ``pretrained.get_model``.
``full`` has DNS48's exact arguments (``hidden=48``, the other defaults, 16 kHz); ``tiny`` keeps its
depth, strides and resampling (so chunks fall on the same 256-sample grid) with 4 hidden channels.
"""

from __future__ import annotations

from pathlib import Path

from voxflow.tasks.denoise import DEFAULT_MODEL, LIBRARY, write_denoise_package

SAMPLE_RATE_HZ = 16_000
SIZES = {
    "tiny": {"hidden": 4},  # LSTM width 64, ~80 k parameters
    "full": {"hidden": 48},  # denoiser.pretrained.dns48: ~19 M parameters
}


def build(model_dir: Path, size: str, seed: int) -> list[Path]:
    """Write a random ``size`` DNS48-shaped denoiser (deterministic for ``seed``); returns the file."""
    import torch
    from denoiser.demucs import Demucs

    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Demucs(**SIZES[size], sample_rate=SAMPLE_RATE_HZ)
    return [write_denoise_package(model, Path(model_dir) / LIBRARY / f"{DEFAULT_MODEL}.th")]
