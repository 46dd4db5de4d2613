"""Decoding input files block by block, and telling a whole file from a truncated or damaged one.

:func:`open_audio` opens any supported file without reading its samples; its :meth:`AudioSource.blocks`
yields ``(channels, n)`` float32 blocks, so a two-hour recording is read with the memory of one block.
soundfile (libsndfile) reads WAV, FLAC, MP3, OGG and friends; other containers (M4A/AAC, Opus in WebM,
MP4) go through PyAV (FFmpeg's libraries, no ffmpeg binary).

A file cut short (a half-finished copy or download) must fail, not be ingested as a shorter
recording. Three checks catch it:

* the container's own structure: a WAV's data chunk, an Ogg stream's pages (the last one carries
  the end-of-stream flag), an MP4's top-level boxes, all read from their headers without decoding;
* the duration the file declares (libsndfile's frame count, FFmpeg's container duration) against
  the samples that decode;
* a decoder error after some audio decoded.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from voxflow.storage.keys import printable

SOUNDFILE_FORMATS = ("wav", "flac", "mp3", "ogg", "oga", "aiff", "aif", "w64", "rf64", "caf")
AV_FORMATS = ("m4a", "mp4", "aac", "opus", "webm", "wma", "mka")  # decoded with PyAV (FFmpeg's libraries)
SUPPORTED_FORMATS = SOUNDFILE_FORMATS + AV_FORMATS
MAX_CHANNELS = 8
MIN_RATE_HZ, MAX_RATE_HZ = 1_000, 768_000
BLOCK_FRAMES = 1 << 16  # frames per block read (about 1.4 s at 48 kHz)
SHORT_BY_S, SHORT_BY_FRACTION = 0.1, 0.02  # decoded audio this much shorter than declared is a truncated file


class AudioDecodeError(ValueError):
    """An input file is not decodable audio; the message names the file and the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"cannot decode '{name}': {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class DecodedAudio:
    """Samples ``(channels, samples)`` float32 in [-1, 1] and how the file stored them."""

    samples: np.ndarray
    sample_rate_hz: int
    format: str  # container, upper case: WAV, FLAC, MP3, OGG, M4A, ...
    subtype: str  # sample encoding: PCM_16, PCM_24, FLOAT, MPEG_LAYER_III, aac, ...

    @property
    def channels(self) -> int:
        return self.samples.shape[0]

    @property
    def frames(self) -> int:
        return self.samples.shape[1]

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate_hz


# ---------------------------------------------------------------------------------------------------
# Structure checks: read headers only


def _wav_truncation(f: BinaryIO, size: int) -> str | None:
    """Why a RIFF/WAVE file is truncated, or None when its data chunk is complete (or it is no WAV).

    libsndfile silently reads what is there when a WAV's data chunk is cut short, so the declared
    chunk size is checked against the bytes actually present.
    """
    f.seek(0)
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset = 12
    while offset + 8 <= size:
        f.seek(offset)
        chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
        body = offset + 8
        if chunk_id == b"data":
            present = size - body
            if chunk_size != 0xFFFFFFFF and chunk_size > present:
                return f"file is truncated: the header declares {chunk_size} bytes of audio, only {present} are present"
            return None
        offset = body + chunk_size + (chunk_size & 1)
    return "file is truncated: no audio data chunk"


OGG_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, sequence, crc, segments
OGG_END_OF_STREAM = 0x04


def _ogg_truncation(f: BinaryIO, size: int) -> str | None:
    """Why an Ogg file (Vorbis, Opus, FLAC in Ogg) is truncated, or None when whole (or no Ogg).

    Pages are walked by their headers: every page must be whole, and each logical stream must end
    with a page carrying the end-of-stream flag. A copy cut short fails one or the other.
    """
    f.seek(0)
    if f.read(4) != b"OggS":
        return None
    offset, open_streams = 0, set()
    while offset < size:
        f.seek(offset)
        header = f.read(OGG_HEADER.size)
        if len(header) < OGG_HEADER.size:
            return f"file is truncated: its last page header is cut at byte {offset}"
        capture, _, flags, _, serial, _, _, segments = OGG_HEADER.unpack(header)
        if capture != b"OggS":
            return f"file is damaged: no Ogg page at byte {offset}"
        lacing = f.read(segments)
        end = offset + OGG_HEADER.size + segments + sum(lacing)
        if len(lacing) < segments or end > size:
            return f"file is truncated: its last page ends at byte {end}, the file at byte {size}"
        open_streams.add(serial)
        if flags & OGG_END_OF_STREAM:
            open_streams.discard(serial)
        offset = end
    if open_streams:
        return "file is truncated: its Ogg stream has no end-of-stream page"
    return None


def _mp4_truncation(f: BinaryIO, size: int) -> str | None:
    """Why an ISO media file (MP4, M4A, MOV) is truncated, or None when its top-level boxes are whole."""
    f.seek(4)
    if f.read(4) != b"ftyp":
        return None
    offset, boxes = 0, set()
    while offset + 8 <= size:
        f.seek(offset)
        box_size, box_type = struct.unpack(">I4s", f.read(8))
        if box_size == 1:
            (box_size,) = struct.unpack(">Q", f.read(8))
        elif box_size == 0:
            box_size = size - offset
        if box_size < 8:
            return f"file is damaged: a box at byte {offset} declares {box_size} bytes"
        if offset + box_size > size:
            kind = box_type.decode("latin-1")
            return f"file is truncated: its {kind!r} box declares {box_size} bytes, only {size - offset} are present"
        boxes.add(box_type)
        offset += box_size
    if b"moov" not in boxes:
        return "file is truncated: it has no 'moov' box (the index written when a recording is finished)"
    return None


STRUCTURE_CHECKS: tuple[Callable[[BinaryIO, int], str | None], ...] = (
    _wav_truncation,
    _ogg_truncation,
    _mp4_truncation,
)


def structure_problem(path: Path) -> str | None:
    """Why the file's container structure shows it truncated or damaged, or None (from headers only)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        for check in STRUCTURE_CHECKS:
            reason = check(f, size)
            if reason:
                return reason
    return None


# ---------------------------------------------------------------------------------------------------
# Reading blocks


@dataclass
class AudioSource:
    """An open input file: what it holds, and its samples block by block (see :meth:`blocks`)."""

    name: str
    sample_rate_hz: int
    channels: int
    format: str
    subtype: str
    declared_s: float | None  # the duration the file declares, when it does
    _read: Callable[[int], Iterator[np.ndarray]]
    frames: int = 0  # decoded so far

    def blocks(self, frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
        """``(channels, n)`` float32 blocks of about ``frames`` frames; raises :class:`AudioDecodeError` for
        non-finite samples, a decoder error, no audio at all, or less audio than the file declares."""
        try:
            for block in self._read(frames):
                if not np.isfinite(block).all():
                    raise AudioDecodeError(self.name, "samples contain NaN or infinity")
                self.frames += block.shape[1]
                yield block
        except AudioDecodeError:
            raise
        except Exception as e:  # a decoder error part-way: the file ends early or is damaged
            raise AudioDecodeError(self.name, f"file is truncated or damaged: {self._progress()} ({_reason(e)})") from e
        if self.frames == 0:
            raise AudioDecodeError(self.name, "file holds no audio samples")
        declared = self.declared_s or 0.0
        if self.duration_s < declared - max(SHORT_BY_S, SHORT_BY_FRACTION * declared):
            raise AudioDecodeError(self.name, f"file is truncated: {self._progress()}")

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate_hz

    def _progress(self) -> str:
        declared = f" of the {self.declared_s:.2f} s it declares" if self.declared_s else ""
        return f"only {self.duration_s:.2f} s{declared} could be decoded"

    def read_all(self) -> DecodedAudio:
        """Every sample, as one array (for short files and tests; long ones are read with :meth:`blocks`)."""
        blocks = list(self.blocks())
        samples = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
        return DecodedAudio(
            np.ascontiguousarray(samples, dtype=np.float32), self.sample_rate_hz, self.format, self.subtype
        )


def _reason(e: Exception) -> str:
    return (getattr(e, "strerror", None) or str(e).split(": ", 1)[-1] or type(e).__name__).strip()


def _soundfile_source(f, name: str) -> AudioSource:
    def read(frames: int) -> Iterator[np.ndarray]:
        while len(block := f.read(frames, dtype="float32", always_2d=True)):
            yield np.ascontiguousarray(block.T)

    declared = f.frames / f.samplerate if f.frames > 0 else None
    return AudioSource(name, f.samplerate, f.channels, f.format, f.subtype, declared, read)


def _av_source(container, name: str, path: Path) -> AudioSource:
    """The first audio stream of any container FFmpeg reads (M4A/AAC, Opus, WebM, MP4 with video, ...)."""
    import av

    stream = next((s for s in container.streams if s.type == "audio"), None)
    if stream is None:
        raise AudioDecodeError(name, "not a recognised audio format (no audio stream found)")
    if stream.codec_context is None:
        raise AudioDecodeError(name, "not a recognised audio format (no decoder for its audio codec)")
    channels = stream.codec_context.channels or len(stream.layout.channels)
    planar = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.rate)  # (channels, n)

    def read(frames: int) -> Iterator[np.ndarray]:
        pending, count = [], 0
        for out in (out for frame in container.decode(stream) for out in planar.resample(frame)):
            pending.append(out.to_ndarray())
            count += pending[-1].shape[1]
            if count >= frames:
                yield np.concatenate(pending, axis=1).astype(np.float32, copy=False)
                pending, count = [], 0
        pending += [out.to_ndarray() for out in planar.resample(None)]
        if pending and sum(p.shape[1] for p in pending):
            yield np.concatenate(pending, axis=1).astype(np.float32, copy=False)

    container_name = container.format.name.split(",")[0].upper()
    container_name = "M4A" if path.suffix.lower() in (".m4a", ".mp4") else container_name
    declared = container.duration / 1e6 if container.duration else None  # microseconds
    return AudioSource(name, stream.rate, channels, container_name, stream.codec_context.name, declared, read)


@contextlib.contextmanager
def open_audio(path: str | Path, name: str | None = None) -> Iterator[AudioSource]:
    """Open a supported file (1 to 8 channels, any rate, any sample encoding) for reading block by block.

    Raises :class:`AudioDecodeError` naming the file and the reason: unreadable, empty, truncated
    (see the module's doc), not audio, or too many channels.
    """
    import soundfile as sf

    path = Path(path)
    name = name or printable(path.name)
    with contextlib.ExitStack() as stack:
        try:
            if path.stat().st_size == 0:
                raise AudioDecodeError(name, "file is empty")
            problem = structure_problem(path)
        except OSError as e:
            raise AudioDecodeError(name, e.strerror or str(e)) from e
        if problem:
            raise AudioDecodeError(name, problem)
        try:
            source = _soundfile_source(stack.enter_context(sf.SoundFile(os.fsencode(path))), name)
        except (sf.LibsndfileError, RuntimeError, ValueError) as e:
            source = _open_av(stack, path, name, _libsndfile_reason(path, e))
        if source.channels < 1:
            raise AudioDecodeError(name, "not a recognised audio format (no audio channels)")
        if source.channels > MAX_CHANNELS:
            raise AudioDecodeError(name, f"{source.channels} channels; 1 to {MAX_CHANNELS} are supported")
        if not MIN_RATE_HZ <= source.sample_rate_hz <= MAX_RATE_HZ:
            raise AudioDecodeError(
                name, f"sample rate {source.sample_rate_hz} Hz; {MIN_RATE_HZ} to {MAX_RATE_HZ} Hz are supported"
            )
        yield source


def _libsndfile_reason(path: Path, error: Exception) -> str | None:
    """libsndfile's reason for not opening a file of a format it reads (None: not its format, or a message
    that misleads, such as 'does not exist' for a file it cannot parse)."""
    reason = str(error).split(": ", 1)[-1]
    if path.suffix.lower().lstrip(".") not in SOUNDFILE_FORMATS:
        return None
    if any(vague in reason for vague in ("not recognised", "does not exist", "SF_INFO struct incomplete")):
        return None
    return reason


def _open_av(stack: contextlib.ExitStack, path: Path, name: str, libsndfile_reason: str | None) -> AudioSource:
    """The file through FFmpeg; when FFmpeg cannot read it either, libsndfile's reason wins if it gave one."""
    import av

    try:
        container = stack.enter_context(av.open(str(path)))
    except av.FFmpegError as e:
        if libsndfile_reason:
            raise AudioDecodeError(name, libsndfile_reason) from e
        raise AudioDecodeError(name, f"not a recognised audio format ({e.strerror or type(e).__name__})") from e
    return _av_source(container, name, path)


def decode_file(path: str | Path, name: str | None = None) -> DecodedAudio:
    """Every sample of a supported file as one array (see :func:`open_audio`)."""
    with open_audio(path, name) as source:
        return source.read_all()
