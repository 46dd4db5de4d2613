"""Voiceprints: which speaker sounds like this sample, and how close a synthetic line is to a voice.

The encoder is the GE2E d-vector network that Resemblyzer 0.1.4 ships trained (Apache-2.0, its
``pretrained.pt``), defined here so that voxflow does not depend on the ``resemblyzer`` package
(whose ``webrtcvad`` dependency breaks ``pip check``)::

    audio       mono, resampled to 16 kHz, silence trimmed at both ends, raised to -30 dBFS RMS
    mel         |STFT|^2 (25 ms Hann window, 10 ms hop, centred, zero padded) -> 40 Slaney mel bands
                (power, not log: the network was trained on it)
    partials    160 mel frames (1.6 s) every 77 frames (Resemblyzer's 1.3 partials per second);
                the last one is zero padded if at least 75 % of it is audio, else dropped
    network     LSTM(40 -> 256, 3 layers) -> last layer's final hidden state -> Linear(256 -> 256)
                -> ReLU -> L2 normalised, per partial
    voiceprint  the mean of the partials' embeddings, L2 normalised: a unit vector of 256

Resemblyzer trims silences with webrtcvad (and shortens long pauses inside the audio too); here a
simple energy gate trims only the leading and trailing silence (:func:`trim_silence`), and the volume
is raised after trimming, so the level of the speech, not its share of the file, sets the gain. Given
the same preprocessed 16 kHz audio, :meth:`VoiceEncoder.embed_16k` equals Resemblyzer's
``VoiceEncoder.embed_utterance`` (``tests/test_voiceprint.py`` checks it on the real weights).

The weights are found by :func:`load_voice_encoder` at ``<model dir>/ge2e/pretrained.pt``.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from voxflow.tasks.helpers.audio import downmix, resample

if TYPE_CHECKING:
    import torch

WEIGHTS_NAME = "pretrained.pt"
WEIGHTS_FOLDER = "ge2e"  # <model dir>/ge2e/pretrained.pt
WEIGHTS_HINT = "pip download --no-deps resemblyzer==0.1.4, unzip the wheel and copy resemblyzer/pretrained.pt"

SAMPLE_RATE_HZ = 16_000
MEL_WINDOW_SAMPLES = 400  # 25 ms at 16 kHz (the FFT size too)
MEL_HOP_SAMPLES = 160  # 10 ms at 16 kHz: one mel frame
MEL_BANDS = 40
HIDDEN_SIZE = 256  # LSTM hidden units and embedding size
LSTM_LAYERS = 3
PARTIAL_FRAMES = 160  # 1.6 s of mel frames per partial utterance
PARTIAL_STEP_FRAMES = 77  # round(16000 Hz / 1.3 partials per s / 160 samples per frame)
PARTIAL_MIN_COVERAGE = 0.75  # the last partial is kept if this share of it is audio
PARTIALS_PER_BATCH = 128  # partials moved to the device at once

TARGET_RMS_DBFS = -30.0  # quieter audio is raised to this level (louder is left alone)
GATE_WINDOW_SAMPLES = 480  # 30 ms at 16 kHz: the energy gate's window
GATE_BELOW_LOUDEST_DB = 40.0  # a window this far below the loudest window is silence
GATE_FLOOR_DBFS = -60.0  # a window quieter than this is silence, however quiet the rest
GATE_MARGIN_SAMPLES = 1_440  # 90 ms kept either side of the first and last loud windows
MIN_SOUND_S = 0.5  # shortest sound (after trimming) a voiceprint is made from


@dataclass(frozen=True)
class VoiceEncoder:
    """The GE2E network and the device it runs on; :meth:`embed` turns audio into a unit vector of 256.

    The audio and its mel spectrogram stay on the CPU; batches of partials move to ``device``.
    """

    network: torch.nn.Module  # a ModuleDict of ``lstm`` and ``linear``: the checkpoint's keys
    device: str = "cpu"

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> VoiceEncoder:
        """The encoder with Resemblyzer's trained weights from ``path`` (its ``pretrained.pt``)."""
        import torch

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no GE2E speaker-encoder weights at {path}: {WEIGHTS_HINT} there")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = checkpoint.get("model_state") if isinstance(checkpoint, dict) else None
        if state is None:
            raise ValueError(f"{path} is not a Resemblyzer checkpoint: it has no 'model_state'")
        network = _network()
        try:
            network.load_state_dict({k: v for k, v in state.items() if not k.startswith("similarity_")})
        except RuntimeError as e:
            raise ValueError(f"{path} does not hold GE2E encoder weights: {str(e).splitlines()[0]}") from e
        return cls(network.eval().to(device), device)

    def embed(self, samples: np.ndarray, sample_rate_hz: int) -> np.ndarray:
        """The voiceprint of ``samples`` (mono 1-D, or ``(channels, n)`` downmixed): a unit float32 vector of 256.

        Raises ``ValueError`` when less than :data:`MIN_SOUND_S` of sound remains after trimming silence.
        """
        return self.embed_16k(prepare(samples, sample_rate_hz))

    def embed_16k(self, wav: np.ndarray) -> np.ndarray:
        """The voiceprint of already prepared mono 16 kHz audio (:func:`prepare`), as Resemblyzer computes it."""
        import torch

        starts = partial_starts(wav.size)
        padded = np.pad(wav, (0, max(0, (starts[-1] + PARTIAL_FRAMES) * MEL_HOP_SAMPLES - wav.size)))
        mel = mel_spectrogram(torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32)))
        partials = torch.stack([mel[start : start + PARTIAL_FRAMES] for start in starts])
        with torch.no_grad():
            embeds = torch.cat([self._forward(batch) for batch in partials.split(PARTIALS_PER_BATCH)])
        mean = embeds.mean(dim=0).numpy()
        return (mean / np.linalg.norm(mean)).astype(np.float32)

    def _forward(self, mels: torch.Tensor) -> torch.Tensor:
        """Unit embeddings ``(batch, 256)`` on the CPU of mel partials ``(batch, frames, 40)``."""
        _, (hidden, _) = self.network["lstm"](mels.to(self.device))
        raw = self.network["linear"](hidden[-1]).relu()
        return (raw / raw.norm(dim=1, keepdim=True)).cpu()


def _network() -> torch.nn.ModuleDict:
    """GE2E's layers under the names of Resemblyzer's checkpoint (``lstm.*``, ``linear.*``), random weights."""
    from torch import nn

    return nn.ModuleDict(
        {
            "lstm": nn.LSTM(MEL_BANDS, HIDDEN_SIZE, LSTM_LAYERS, batch_first=True),
            "linear": nn.Linear(HIDDEN_SIZE, HIDDEN_SIZE),
        }
    )


def prepare(samples: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """Mono 16 kHz float32 with the silence at both ends trimmed and quiet audio raised to -30 dBFS RMS.

    Raises ``ValueError`` when less than :data:`MIN_SOUND_S` of sound remains.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim not in (1, 2) or samples.size == 0:
        raise ValueError(f"expected mono samples or (channels, samples), got shape {samples.shape}")
    mono = downmix(samples.reshape(-1, samples.shape[-1]))
    wav = resample(mono, sample_rate_hz, SAMPLE_RATE_HZ)[0]
    sound = trim_silence(wav)
    if sound.size < MIN_SOUND_S * SAMPLE_RATE_HZ:
        raise ValueError(
            f"too little sound to make a voiceprint: {sound.size / SAMPLE_RATE_HZ:.2f} s of "
            f"{wav.size / SAMPLE_RATE_HZ:.2f} s after trimming silence; give at least {MIN_SOUND_S} s of speech"
        )
    return raise_volume(sound)


def trim_silence(wav: np.ndarray) -> np.ndarray:
    """``wav`` (mono 16 kHz) from its first to its last loud 30 ms window, with 90 ms to spare each side.

    A window is loud when its RMS is above both -60 dBFS and 40 dB below the loudest window: an energy
    gate standing in for Resemblyzer's webrtcvad. Silence only gives an empty array.
    """
    windows = -(-wav.size // GATE_WINDOW_SAMPLES)
    framed = np.pad(wav, (0, windows * GATE_WINDOW_SAMPLES - wav.size)).reshape(windows, GATE_WINDOW_SAMPLES)
    level_db = 10 * np.log10(np.mean(framed.astype(np.float64) ** 2, axis=1) + 1e-20)
    loud = np.flatnonzero(level_db > max(GATE_FLOOR_DBFS, level_db.max() - GATE_BELOW_LOUDEST_DB))
    if loud.size == 0:
        return wav[:0]
    start = max(0, loud[0] * GATE_WINDOW_SAMPLES - GATE_MARGIN_SAMPLES)
    end = min(wav.size, (loud[-1] + 1) * GATE_WINDOW_SAMPLES + GATE_MARGIN_SAMPLES)
    return wav[start:end]


def raise_volume(wav: np.ndarray) -> np.ndarray:
    """``wav`` scaled up to :data:`TARGET_RMS_DBFS` RMS when quieter; louder audio is returned as is."""
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))
    gain = 10 ** (TARGET_RMS_DBFS / 20) / rms if rms > 0 else 1.0
    return (wav * gain).astype(np.float32) if gain > 1 else wav


def partial_starts(n_samples: int) -> list[int]:
    """The first mel frame of each 160-frame partial covering ``n_samples`` (Resemblyzer's slicing)."""
    n_frames = -(-(n_samples + 1) // MEL_HOP_SAMPLES)
    last = max(1, n_frames - PARTIAL_FRAMES + PARTIAL_STEP_FRAMES + 1)
    starts = list(range(0, last, PARTIAL_STEP_FRAMES))
    coverage = (n_samples - starts[-1] * MEL_HOP_SAMPLES) / (PARTIAL_FRAMES * MEL_HOP_SAMPLES)
    return starts[:-1] if coverage < PARTIAL_MIN_COVERAGE and len(starts) > 1 else starts


def mel_spectrogram(wav: torch.Tensor) -> torch.Tensor:
    """Power mel spectrogram ``(frames, 40)`` of mono 16 kHz ``wav``: librosa's ``melspectrogram`` defaults."""
    import torch
    from torchaudio.functional import melscale_fbanks

    window = torch.hann_window(MEL_WINDOW_SAMPLES, device=wav.device)
    spectrum = torch.stft(
        wav, MEL_WINDOW_SAMPLES, MEL_HOP_SAMPLES, window=window, center=True, pad_mode="constant", return_complex=True
    )
    bank = melscale_fbanks(
        MEL_WINDOW_SAMPLES // 2 + 1,
        0.0,
        SAMPLE_RATE_HZ / 2,
        MEL_BANDS,
        SAMPLE_RATE_HZ,
        norm="slaney",
        mel_scale="slaney",
    )
    return spectrum.abs().square().T @ bank.to(wav.device)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The cosine similarity of two voiceprints (their dot product when both are unit vectors)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def load_voice_encoder(model_dir: str | Path | None, device: str = "cpu") -> VoiceEncoder:
    """The encoder from ``<model_dir>/ge2e/pretrained.pt``, else from an installed ``resemblyzer`` package.

    Loaded once per weights file and device. Raises ``FileNotFoundError`` saying how to get the weights.
    """
    return _cached_encoder(weights_path(model_dir), device)


def weights_path(model_dir: str | Path | None) -> Path:
    """Where the GE2E weights are: the model folder first, then the ``resemblyzer`` package if installed."""
    expected = Path(model_dir) / WEIGHTS_FOLDER / WEIGHTS_NAME if model_dir else None
    if expected is not None and expected.is_file():
        return expected
    packaged = packaged_weights()
    if packaged is not None:
        return packaged
    where = expected or f"<model dir>/{WEIGHTS_FOLDER}/{WEIGHTS_NAME}"
    raise FileNotFoundError(f"no GE2E speaker-encoder weights at {where}: {WEIGHTS_HINT} there")


def packaged_weights() -> Path | None:
    """``pretrained.pt`` of an installed ``resemblyzer`` package, found without importing it; None if absent."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / WEIGHTS_NAME
    return path if path.is_file() else None


@functools.lru_cache(maxsize=4)
def _cached_encoder(path: Path, device: str) -> VoiceEncoder:
    return VoiceEncoder.load(path, device)
