"""Random-weight models of the real architectures, written in each library's real on-disk format.

``build(library, model_dir, size)`` writes one library's default model into ``<model_dir>/<library>/``
exactly where :mod:`voxflow.tasks.kit.models` and the stage loaders look, so the production loading and
inference code runs on them. ``tiny`` models are small enough for tests on a CPU; ``full`` models have
the real sizes (for benchmarks of the real compute cost). Their output is noise: they check the
plumbing, never the quality.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Literal

from voxflow.tasks.kit.models import RANDOM_WEIGHTS_MARKER

Size = Literal["tiny", "full"]
# library -> module under voxflow.tasks.testing.random_models with ``build(model_dir, size, seed) -> list[Path]``
LIBRARIES = ("denoiser", "demucs", "pyannote", "whisper", "faster_whisper", "qwen_tts", "novasr")


def build(library: str, model_dir: str | Path, size: Size = "tiny", seed: int = 0) -> list[Path]:
    """Write a random ``size`` model of ``library`` into ``model_dir``; returns the files written."""
    if library not in LIBRARIES:
        raise ValueError(f"no random-model builder for {library!r}; libraries are {', '.join(LIBRARIES)}")
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    module = importlib.import_module(f"voxflow.tasks.testing.random_models.{library}")
    files = module.build(Path(model_dir), size, seed)
    for folder in {Path(model_dir, path.relative_to(model_dir).parts[0]) for path in files}:
        mark_random_weights(folder, [p for p in files if folder in p.parents], size)
    return files


def mark_random_weights(folder: Path, files: list[Path], size: Size) -> None:
    """Note in the library's folder which models are random (``voxflow doctor`` and the stages warn of them)."""
    marker = folder / RANDOM_WEIGHTS_MARKER
    listed = set(marker.read_text().splitlines()[1:]) if marker.exists() else set()
    listed |= {str(p.relative_to(folder)) for p in files}
    note = f"random-weight {size} test models (voxflow models build-random): their output is noise"
    marker.write_text("\n".join([note, *sorted(listed)]) + "\n")


def build_all(model_dir: str | Path, size: Size = "tiny", libraries: tuple[str, ...] = LIBRARIES) -> list[Path]:
    """Every library's random model in one folder."""
    return [path for library in libraries for path in build(library, model_dir, size)]
