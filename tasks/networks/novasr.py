"""The NoVaSR network (``YatharthS/NovaSR``): a BigVGAN-style 16 → 48 kHz speech super-resolution model.

voxflow defines the architecture itself because NoVaSR has no installable package (it installs from
git only); its state dict has exactly the official checkpoint's keys, so ``pytorch_model_v1.bin``
loads strictly. Loading, chunking and the stage's options are in :mod:`voxflow.tasks.upsample`::

    conv_pre    Conv1d(1 → 32, kernel 7)                                  16 kHz
    ×3          linear interpolation in time                              48 kHz
    AMP block   x + conv2(act2(conv1(act1(x))))                           48 kHz
                conv1, conv2: Conv1d(32 → 32, kernel 11)
                act: SnakeBeta, alias-free: ×2 up, snake, ×2 down (12-tap Kaiser sinc filters)
    conv_post   Conv1d(32 → 1, kernel 7, no bias), then tanh

The alias-free activation follows BigVGAN's (replicate padding at the edges, the ×2 filters as stored
in the checkpoint), so ``n`` samples at 16 kHz give exactly ``3 n`` at 48 kHz; ``tests/test_enhance.py``
checks it against ``alias_free_torch``'s ``Activation1d`` on the same weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS = 32  # upsample_initial_channel of the official model
KERNEL_SIZE = 11  # the AMP block's convolutions
EDGE_KERNEL_SIZE = 7  # conv_pre and conv_post
RATIO = 3  # 16 kHz in, 48 kHz out (voxflow.tasks.upsample's OUTPUT_RATE_HZ // INPUT_RATE_HZ)
FILTER_TAPS = 12  # the alias-free activation's low-pass filters
FILTER_CUTOFF = 0.25  # of the doubled rate: the original Nyquist frequency
FILTER_HALF_WIDTH = 0.3  # transition band, of the doubled rate
SNAKE_EPSILON = 1e-9  # keeps 1 / beta finite


def kaiser_sinc_lowpass(cutoff: float, half_width: float, taps: int) -> torch.Tensor:
    """A Kaiser-windowed sinc low-pass filter of ``taps`` taps with unit gain at DC, shaped ``(1, 1, taps)``.

    ``cutoff`` and ``half_width`` (the transition band) are fractions of the sample rate. The window's
    beta comes from Kaiser's formulas for the stop-band attenuation that ``taps`` allow over that
    transition band; the taps are centred on the filter's middle (between two samples for an even
    count). This is the filter BigVGAN's alias-free resampling designs (StyleGAN3's recipe).
    """
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
            (p, d): t for p in (0, 1) for d in range(-taps, taps + 1) if 0 <= (t := taps // 2 - 1 + p - 2 * d) < taps
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
