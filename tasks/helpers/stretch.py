"""Pitch-preserving time-stretch to an exact length: voice_replace's timing fit. Pure functions, no I/O.

:func:`time_stretch` makes ``(channels, n)`` float32 audio exactly ``length`` samples long without
changing its pitch; the speed factor is ``n / length`` (above 1 is faster and shorter). Two backends:

* ``rubberband``: Rubber Band's R3 ("finer") engine through ``pylibrb`` (GPL-2, the ``rubberband``
  extra), offline, formants preserved, channels processed together. Told the input length in advance,
  its offline mode compensates its own latency and comes out at the exact length.
* ``wsola``: audiotsm's WSOLA (MIT, always installed), on in-memory arrays, with one shift per frame
  for all channels together (audiotsm shifts each channel on its own, which lets stereo drift apart).
  audiotsm never analyses the last frame of its input and so comes out 30-100 ms short, the missing
  part being the end of the speech; here the input gets a tail of silence, the hops are chosen so
  their ratio is the wanted speed, and the output is cut to ``length`` with a ``EDGE_FADE_S`` fade-out.

``"auto"`` is ``rubberband`` when ``pylibrb`` imports, else ``wsola``. Inputs or outputs shorter than
``MIN_STRETCH_S`` are not stretched but cut or padded with silence (no phase vocoder or WSOLA frame
fits in them); an equal length returns a copy.
"""

from __future__ import annotations

import numpy as np

BACKENDS = ("rubberband", "wsola")
INSTALL_HINT = {
    "rubberband": "pip install 'voxflow[rubberband]'",
    "wsola": "pip install audiotsm",
}
MIN_STRETCH_S = 0.05  # below this (input or output) audio is cut or padded, not stretched
EDGE_FADE_S = 0.005  # raised-cosine fade-out where an output is cut or padded
WSOLA_FRAME_S = 0.032  # WSOLA frame: over two periods of an 80 Hz voice (25 ms); 20-46 ms rate alike on DNSMOS
WSOLA_HOP_SEARCH = 16  # synthesis hops tried below half a frame, to make the hop ratio the exact speed
RUBBERBAND_BLOCK = 2**16  # samples per Rubber Band process() call (its limit is 2**19)


def available_backends() -> tuple[str, ...]:
    """The backends whose library imports here, in order of preference."""
    return tuple(name for name in BACKENDS if _importable(name))


def time_stretch(samples: np.ndarray, sample_rate_hz: int, length: int, backend: str = "auto") -> np.ndarray:
    """``samples`` ``(channels, n)`` float32 stretched to ``(channels, length)`` float32, pitch kept.

    The speed factor is ``n / length``. The input is never modified; ``length == n`` returns a copy.
    When ``n`` or ``length`` is under ``MIN_STRETCH_S``, the input is cut or padded with silence instead
    (with an ``EDGE_FADE_S`` fade-out where it changed). Raises ``ValueError`` for a bad shape, a negative
    length, or an unknown or missing backend.
    """
    name = _resolve(backend)
    if samples.ndim != 2 or length < 0:
        raise ValueError(f"time_stretch takes (channels, n) samples and length >= 0; got {samples.shape} and {length}")
    if length == samples.shape[1] or min(samples.shape[1], length) < MIN_STRETCH_S * sample_rate_hz:
        return _fit_length(samples, sample_rate_hz, length)
    stretch = _rubberband if name == "rubberband" else _wsola
    return _fit_length(stretch(samples, sample_rate_hz, length), sample_rate_hz, length)


def raw_stretch(samples: np.ndarray, sample_rate_hz: int, length: int, backend: str = "auto") -> np.ndarray:
    """The backend's own output for the speed ``n / length``, before any tail or cut (for measurements).

    Its length minus ``length`` is the error :func:`time_stretch` corrects.
    """
    if _resolve(backend) == "rubberband":
        return _rubberband(samples, sample_rate_hz, length)
    return _wsola(samples, sample_rate_hz, length, tail=False)


def _fit_length(samples: np.ndarray, sample_rate_hz: int, length: int) -> np.ndarray:
    """``samples`` cut or padded with silence to ``length`` (a new float32 array); fades out where it changed."""
    out = np.zeros((samples.shape[0], length), np.float32)
    kept = min(samples.shape[1], length)
    out[:, :kept] = samples[:, :kept]
    fade = min(round(EDGE_FADE_S * sample_rate_hz), kept)
    if samples.shape[1] != length and fade > 0:
        out[:, kept - fade : kept] *= _fade_out(fade)
    return out


def _fade_out(samples: int) -> np.ndarray:
    """A raised-cosine ramp from 1 to 0 over ``samples`` samples."""
    return (np.cos(0.5 * np.pi * (np.arange(samples) + 0.5) / samples) ** 2).astype(np.float32)


def _resolve(backend: str) -> str:
    """The backend's name ("auto" resolved); ValueError naming the install when it is unknown or missing."""
    if backend == "auto":
        return "rubberband" if _importable("rubberband") else "wsola"
    if backend not in BACKENDS:
        raise ValueError(f"unknown time-stretch backend {backend!r}; choose one of {', '.join(BACKENDS)} or 'auto'")
    if not _importable(backend):
        raise ValueError(f"time-stretch backend {backend!r} is not installed; run `{INSTALL_HINT[backend]}`")
    return backend


def _importable(backend: str) -> bool:
    """Whether the backend's library imports (imported here, on first use only)."""
    try:
        if backend == "rubberband":
            import pylibrb  # noqa: F401
        else:
            import audiotsm  # noqa: F401
    except ImportError:
        return False
    return True


def _rubberband(samples: np.ndarray, sample_rate_hz: int, length: int) -> np.ndarray:
    """Rubber Band R3, offline: studies the whole input, then stretches it block by block."""
    import pylibrb

    option = pylibrb.Option
    options = (
        option.PROCESS_OFFLINE
        | option.ENGINE_FINER
        | option.FORMANT_PRESERVED
        | option.CHANNELS_TOGETHER
        | option.THREADING_NEVER
    )
    source = np.ascontiguousarray(samples, dtype=np.float32)
    stretcher = pylibrb.RubberBandStretcher(sample_rate_hz, source.shape[0], options, length / source.shape[1])
    stretcher.set_expected_input_duration(source.shape[1])
    stretcher.set_max_process_size(RUBBERBAND_BLOCK)
    stretcher.study(source, final=True)
    parts = []
    for start in range(0, source.shape[1], RUBBERBAND_BLOCK):
        block = np.ascontiguousarray(source[:, start : start + RUBBERBAND_BLOCK])
        stretcher.process(block, final=start + RUBBERBAND_BLOCK >= source.shape[1])
        parts.append(stretcher.retrieve_available())
    while stretcher.available() > 0:  # single-threaded, all is out already; a threaded build may lag
        parts.append(stretcher.retrieve_available())
    return np.concatenate(parts, axis=1)


def _wsola_frame(sample_rate_hz: int) -> int:
    """WSOLA's frame in samples (even, so half a frame is a whole number)."""
    return 2 * round(WSOLA_FRAME_S * sample_rate_hz / 2)


def _wsola_tail(sample_rate_hz: int, speed: float) -> int:
    """Silence appended before WSOLA so that its unanalysed last frame holds no speech."""
    frame = _wsola_frame(sample_rate_hz)
    return 2 * frame + round(frame * speed) + round(EDGE_FADE_S * sample_rate_hz * speed)


def _wsola_hops(frame: int, speed: float) -> tuple[int, int]:
    """Analysis and synthesis hops whose ratio is closest to ``speed``, the synthesis hop near half a frame."""
    candidates = range(frame // 2 - WSOLA_HOP_SEARCH, frame // 2 + 1)
    synthesis = min(candidates, key=lambda hop: abs(max(1, round(hop * speed)) / hop - speed))
    return max(1, round(synthesis * speed)), synthesis


def _wsola(samples: np.ndarray, sample_rate_hz: int, length: int, tail: bool = True) -> np.ndarray:
    """audiotsm's WSOLA at the speed ``n / length``, one shift per frame for all channels, in memory.

    With ``tail``, silence is appended first so that the whole input comes out (the output is longer
    than ``length`` by the stretched silence).
    """
    from audiotsm.base import AnalysisSynthesisTSM
    from audiotsm.io.array import ArrayReader, ArrayWriter
    from audiotsm.utils.windows import hanning

    speed = samples.shape[1] / length
    if tail:
        silence = np.zeros((samples.shape[0], _wsola_tail(sample_rate_hz, speed)), np.float32)
        samples = np.concatenate([samples, silence], axis=1)
    frame = _wsola_frame(sample_rate_hz)
    analysis_hop, synthesis_hop = _wsola_hops(frame, speed)
    tolerance = frame // 2
    converter = _LinkedWSOLAConverter(frame, synthesis_hop)
    channels = samples.shape[0]
    tsm = AnalysisSynthesisTSM(
        converter,
        channels,
        frame,
        analysis_hop,
        synthesis_hop,
        None,
        hanning(frame),
        tolerance,
        tolerance + synthesis_hop,
    )
    writer = ArrayWriter(channels)
    tsm.run(ArrayReader(np.asarray(samples, dtype=np.float32)), writer)
    return writer.data.astype(np.float32, copy=False)


class _LinkedWSOLAConverter:
    """audiotsm's WSOLA frame converter, with one shift for all channels (found on their sum).

    audiotsm's own ``WSOLAConverter`` searches each channel separately, so the channels of a stereo
    input may be shifted by different amounts and drift apart; here they stay sample-aligned.
    """

    def __init__(self, frame: int, synthesis_hop: int) -> None:
        self._frame = frame
        self._synthesis_hop = synthesis_hop
        self._natural = np.zeros(frame)
        self._first = True

    def clear(self) -> None:
        self._first = True

    def set_analysis_hop(self, analysis_hop: int) -> None:
        return

    def convert_frame(self, analysis_frame: np.ndarray) -> np.ndarray:
        """The frame shifted to best continue the previous one (what it would be at normal speed)."""
        mono = analysis_frame.sum(axis=0)
        shift = 0 if self._first else int(np.argmax(np.correlate(mono[: -self._synthesis_hop], self._natural)))
        self._first = False
        following = shift + self._synthesis_hop
        self._natural = mono[following : following + self._frame].copy()
        return analysis_frame[:, shift : shift + self._frame].copy()
