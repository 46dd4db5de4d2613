"""Every model stack the pipeline builds on installs and imports together on a CPU-only machine."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "torch",
        "torchaudio",
        "demucs.apply",  # Demucs separation
        "demucs.htdemucs",
        "whisper",  # OpenAI Whisper
        "pyannote.audio",  # diarization
        "denoiser.demucs",  # Facebook denoiser (installed from denoiser-compat)
        "qwen_tts",  # Qwen3-TTS
        "prefect_dask",
        "av",  # PyAV: M4A/AAC, Opus, WebM
    ],
)
def test_stack_imports(module):
    importlib.import_module(module)


def test_torch_and_torchaudio_are_the_pinned_pair():
    import torch
    import torchaudio

    assert torch.__version__.split("+")[0] == "2.11.0"
    assert torchaudio.__version__.split("+")[0] == "2.11.0"
    x = torch.randn(1, 16000)
    y = torchaudio.functional.resample(x, 16000, 8000)  # compiled torchaudio ops load against this torch
    assert y.shape == (1, 8000)


def test_pyannote_pipeline_class_and_denoiser_model_build():
    from denoiser.demucs import Demucs
    from pyannote.audio import Pipeline

    assert hasattr(Pipeline, "from_pretrained")
    model = Demucs(hidden=8, depth=3)
    assert sum(p.numel() for p in model.parameters()) > 0
