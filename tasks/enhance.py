"""Enhance: the post-processing chain of synthesized speech, denoise → 16 → 48 kHz, in device memory.

Each switch of the synthesis flows is one step of the chain, and turning one off changes that step
only (:func:`plan_steps`)::

    denoise  (run_post_processing)  the line at 16 kHz through the DNS48 denoiser (tasks/denoise.py)
    upsample (run_upsampling)       16 kHz → 48 kHz with NoVaSR (tasks/upsample.py)
    resample                        plain high-quality resampling to ``output_rate_hz`` where the
                                    steps before did not end there: instead of ``upsample`` when it
                                    is off (from 16 kHz after denoising, else from the input's own
                                    rate so that no band is lost), or after it for a rate other than 48 kHz

The line goes to the device once, runs the learned steps there with no copy back in between (the
resampling to 16 kHz before them runs on the device too, with ``torchaudio``), and comes back to the
CPU once; the plain ``resample`` step then runs on the CPU with soxr (VHQ), as everywhere else.

A line up to ``denoiser.chunk_s`` long goes through the denoiser in one forward pass with the model's
own normalization, which is what :func:`voxflow.tasks.denoise.denoise` computes for it (one chunk); a longer
one takes :func:`voxflow.tasks.denoise.denoise`'s chunked path (through the CPU, in bounded memory).

Writes ``artifacts/<sha[:2]>/<sha>/enhance/<params>/enhanced.wav`` at ``output_rate_hz``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import Field

from voxflow.storage.refs import ArtifactRef
from voxflow.storage.settings import StoreSettings
from voxflow.tasks.denoise import DenoiseOptions, denoise, load_denoise_model
from voxflow.tasks.helpers import audio
from voxflow.tasks.kit.models import ModelSettings, holding
from voxflow.tasks.kit.options import Options
from voxflow.tasks.kit.outputs import audio_input, read_audio, source_sha256_of, write_audio
from voxflow.tasks.kit.stage import StageSpec, stage_task
from voxflow.tasks.upsample import INPUT_RATE_HZ, OUTPUT_RATE_HZ, UpsampleOptions, load_upsample_model, upsample

if TYPE_CHECKING:
    import torch
    from denoiser.demucs import Demucs

    from voxflow.tasks.upsample import NovaSR

STAGE = "enhance"
CODE_VERSION = "1"
AUDIO_NAME = "enhanced.wav"
DENOISE, UPSAMPLE, RESAMPLE = "denoise", "upsample", "resample"
DENOISER_RATE_HZ = 16_000  # DNS48, DNS64 and master64 all run at 16 kHz
MIN_RATE_HZ, MAX_RATE_HZ = 8_000, 192_000
# torchaudio's Kaiser-windowed sinc with librosa's "kaiser_best" settings: a steep, clean low-pass
RESAMPLE_FILTER = {
    "lowpass_filter_width": 64,
    "rolloff": 0.9475937167399596,
    "resampling_method": "sinc_interp_kaiser",
    "beta": 14.769656459379492,
}


@dataclass(frozen=True)
class EnhanceOptions(Options):
    """Which steps of the post-chain run, the rate written, and each step's own options."""

    denoise: Annotated[bool, Field(description="Denoise the generated speech (DNS48 at 16 kHz).")] = True
    upsample: Annotated[
        bool, Field(description="Learned 16 → 48 kHz super-resolution (NoVaSR); off: plain high-quality resampling.")
    ] = True
    output_rate_hz: Annotated[int, Field(ge=MIN_RATE_HZ, le=MAX_RATE_HZ, description="Rate of the enhanced WAV.")] = (
        OUTPUT_RATE_HZ
    )
    denoiser: DenoiseOptions = field(default_factory=DenoiseOptions)
    sr: UpsampleOptions = field(default_factory=UpsampleOptions)


@dataclass(frozen=True)
class EnhanceResult:
    """What the enhance task returns: the enhanced line and the steps that made it."""

    artifact: ArtifactRef
    source_sha256: str
    steps: tuple[str, ...]  # in order, e.g. ("denoise", "upsample") or ("resample",)

    @property
    def sha256(self) -> str:
        return self.artifact.sha256

    def summary(self) -> dict:
        """What a summary table shows of an enhanced line."""
        duration_s = round(self.artifact.duration_s or 0.0, 3)
        return {
            "steps": " → ".join(self.steps) or "none",
            "rate_hz": self.artifact.sample_rate_hz,
            "duration_s": duration_s,
            "sha256": self.source_sha256[:12],
        }


def plan_steps(rate_hz: int, options: EnhanceOptions) -> tuple[str, ...]:
    """The steps that run on a line at ``rate_hz``: each switch adds its own step, ``resample`` ends where needed."""
    steps = [DENOISE] if options.denoise else []
    if options.upsample:
        steps.append(UPSAMPLE)
        rate_hz = OUTPUT_RATE_HZ
    elif options.denoise:
        rate_hz = DENOISER_RATE_HZ
    return (*steps, RESAMPLE) if rate_hz != options.output_rate_hz else tuple(steps)


def output_frames(frames: int, rate_hz: int, output_rate_hz: int) -> int:
    """The length of ``frames`` samples at ``rate_hz`` once at ``output_rate_hz`` (rounded, as soxr does)."""
    return (frames * output_rate_hz + rate_hz // 2) // rate_hz


def load_enhance_denoiser(name: str, device: str, model_dir: str | Path | None = None) -> Demucs:
    """The denoiser for the chain, resident under the enhance stage, so that on a GPU loading NoVaSR
    (an enhance model) does not release it and both models of the chain stay while the stage runs."""
    return load_denoise_model(name, device, model_dir, stage=STAGE)


# ---- the steps (tensors on the device) ----------------------------------------------------------


def resample_tensor(line: torch.Tensor, from_hz: int, to_hz: int) -> torch.Tensor:
    """``(channels, n)`` resampled on its own device (Kaiser-windowed sinc); itself when the rates match."""
    if from_hz == to_hz:
        return line
    import torchaudio.functional as AF

    return AF.resample(line, from_hz, to_hz, **RESAMPLE_FILTER)


def denoise_step(line: torch.Tensor, rate_hz: int, model: Demucs, options: DenoiseOptions) -> tuple[torch.Tensor, int]:
    """The line denoised at the model's rate (16 kHz), on the line's device; ``options.dry`` mixed back in."""
    import torch

    if model.sample_rate != DENOISER_RATE_HZ:
        raise ValueError(
            f"the chain's denoiser must run at {DENOISER_RATE_HZ} Hz (as DNS48 does), this one runs at {model.sample_rate} Hz"
        )
    noisy = resample_tensor(line, rate_hz, model.sample_rate)
    frames = noisy.shape[1]
    if 2 <= frames <= options.chunk_s * model.sample_rate:  # one forward pass, the model's own normalization
        with torch.no_grad():
            wet = model(noisy[:, None].to(next(model.parameters()).device))[:, 0].to(noisy.device)
        return wet * (1.0 - options.dry) + options.dry * noisy, model.sample_rate
    clean = denoise(noisy.cpu().numpy(), model.sample_rate, model, options)  # long: chunked, bounded memory
    return torch.from_numpy(clean).to(noisy.device), model.sample_rate


def upsample_step(
    line: torch.Tensor, rate_hz: int, model: NovaSR, options: UpsampleOptions
) -> tuple[torch.Tensor, int]:
    """The line at 48 kHz by NoVaSR (after resampling to 16 kHz where it is not there yet)."""
    return upsample(resample_tensor(line, rate_hz, INPUT_RATE_HZ), model, options), OUTPUT_RATE_HZ


def resample_step(samples: np.ndarray, rate_hz: int, output_rate_hz: int) -> tuple[np.ndarray, int]:
    """Plain high-quality resampling (soxr VHQ, on the CPU) to the output rate."""
    return audio.resample(samples, rate_hz, output_rate_hz), output_rate_hz


def _fit_length(samples: np.ndarray, frames: int) -> np.ndarray:
    if samples.shape[1] >= frames:
        return samples[:, :frames]
    return np.pad(samples, ((0, 0), (0, frames - samples.shape[1])))


def load_enhance_models(
    options: EnhanceOptions, device: str, model_dir: str | Path | None = None, token: str | None = None
) -> tuple[Demucs | None, NovaSR | None]:
    """The models of the steps ``options`` switch on (None for a step that is off): denoiser, NoVaSR."""
    denoiser = load_enhance_denoiser(options.denoiser.model, device, model_dir) if options.denoise else None
    sr_model = (
        load_upsample_model(options.sr.model, device, model_dir, token, half=options.sr.half)
        if options.upsample
        else None
    )
    return denoiser, sr_model


def _device_of(model: Any) -> Any:
    return next(model.parameters()).device if model is not None else "cpu"


def enhance(
    samples: np.ndarray,
    rate_hz: int,
    options: EnhanceOptions = EnhanceOptions(),
    denoiser: Demucs | None = None,
    sr_model: NovaSR | None = None,
) -> np.ndarray:
    """``(channels, n)`` audio at ``rate_hz`` through the steps of :func:`plan_steps`, at ``options.output_rate_hz``.

    ``denoiser`` and ``sr_model`` are the loaded models of the steps that run (:func:`load_enhance_models`);
    a step that does not run needs none and never calls one. The line moves once to the device of the
    first model that runs and comes back once. The output has ``output_frames(n, rate_hz,
    options.output_rate_hz)`` samples (the input's duration).
    """
    import torch

    if samples.ndim != 2 or samples.shape[1] == 0:
        raise ValueError(f"expected (channels, samples) audio with samples, got shape {samples.shape}")
    if rate_hz <= 0:
        raise ValueError(f"rate_hz must be positive, got {rate_hz}")
    steps = plan_steps(rate_hz, options)
    models = {DENOISE: denoiser, UPSAMPLE: sr_model}
    missing = [step for step in steps if step in models and models[step] is None]
    if missing:
        raise TypeError(f"the {' and '.join(missing)} step needs its model (see load_enhance_models)")
    device = _device_of(denoiser if DENOISE in steps else sr_model if UPSAMPLE in steps else None)
    with torch.no_grad():
        line, rate = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).to(device), rate_hz
        if DENOISE in steps:
            with holding(denoiser):
                line, rate = denoise_step(line, rate, denoiser, options.denoiser)
        if UPSAMPLE in steps:
            with holding(sr_model):
                line, rate = upsample_step(line, rate, sr_model, options.sr)
        result = line.cpu().numpy()
    if RESAMPLE in steps:
        result, rate = resample_step(result, rate, options.output_rate_hz)
    return _fit_length(np.ascontiguousarray(result, dtype=np.float32), output_frames(samples.shape[1], rate_hz, rate))


SPEC = StageSpec(STAGE, code_version=CODE_VERSION, gpu=True)


@stage_task(SPEC)
def enhance_audio(audio: Any, options: EnhanceOptions, settings: StoreSettings, models: ModelSettings) -> EnhanceResult:
    """Denoise and upsample a line (as ``options`` switch them); writes ``enhanced.wav`` at ``options.output_rate_hz``."""
    ref = audio_input(audio)
    samples, rate = read_audio(ref, settings)
    denoiser, sr_model = load_enhance_models(options, models.torch_device(), models.model_dir, models.token())
    enhanced = enhance(samples, rate, options, denoiser, sr_model)
    return EnhanceResult(
        write_audio(settings, AUDIO_NAME, enhanced, options.output_rate_hz),
        source_sha256_of(audio),
        plan_steps(rate, options),
    )
