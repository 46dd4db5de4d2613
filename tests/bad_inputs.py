"""A generated corpus of odd and broken inputs, each with what ``ingest`` is expected to do with it.

Nothing here is committed as a binary: every input is written on the fly (numpy, soundfile, struct, the
ffmpeg command). ``KINDS`` lists them; each :class:`Kind` writes its input(s) into an empty folder of its
own, and says what happens when that folder is ingested:

* ``done``: ingested (status ``done``, or ``cached`` when the same bytes were ingested under another name
  in the same run), one ``files`` row per file;
* ``failed``: the file fails alone (stage ``ingest``) with the one-line error
  ``cannot decode '<file name>': <reason>...`` (``reason`` None: a library's own words, not pinned);
* ``ignored``: walking the folder does not list it (not an audio extension, not a regular file).

``count`` is how many files the kind's folder yields when walked (0 for ``ignored``).
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.synth import tone_and_noise, write_audio

TRUNCATED = "file is truncated"
NOT_AUDIO = "not a recognised audio format"
NON_FINITE = "samples contain NaN or infinity"


@dataclass(frozen=True)
class Kind:
    """One kind of odd input: ``make(folder)`` writes it, ``expect`` is the outcome (see the module)."""

    name: str
    make: Callable[[Path], None]
    expect: str  # "done", "failed" or "ignored"
    reason: str | None = None  # for "failed": how the reason after "cannot decode '<name>': " starts
    what: str = ""  # one line for the README's table
    count: int = 1  # files the folder yields when walked

    @property
    def folder(self) -> str:
        """The kind's own subfolder name (its name, safe on any file system)."""
        return self.name


# --- writers ---------------------------------------------------------------------------------------------


def _seed(name: str) -> int:
    return zlib.crc32(name.encode("utf-8", "surrogateescape"))


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def audio_file(
    file_name: str, channels: int = 1, rate: int = 16000, seconds: float = 1.0, subtype: str | None = None
) -> Callable[[Path], None]:
    """A tone-and-noise file (the suffix picks the format); different names give different bytes."""

    def make(folder: Path) -> None:
        write_audio(folder / file_name, tone_and_noise(channels, rate, seconds, seed=_seed(file_name)), rate, subtype)

    return make


def samples_file(
    file_name: str, samples: Callable[[], np.ndarray], rate: int = 16000, subtype: str = "PCM_16"
) -> Callable[[Path], None]:
    """A soundfile-written file of given ``(channels, samples)`` samples."""

    def make(folder: Path) -> None:
        sf.write(folder / file_name, np.atleast_2d(samples()).T, rate, subtype=subtype)

    return make


def renamed(file_name: str, make_as: str, make: Callable[[Path], None]) -> Callable[[Path], None]:
    """``make`` writes ``make_as``, then it is renamed (for names soundfile cannot write or guess a format from)."""

    def make_renamed(folder: Path) -> None:
        make(folder)
        os.rename(os.fsencode(folder / make_as), os.fsencode(folder / file_name))

    return make_renamed


def bytes_file(file_name: str, data: Callable[[], bytes]) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        (folder / file_name).write_bytes(data())

    return make


def riff(
    data: bytes,
    *,
    channels: int = 1,
    rate: int = 16000,
    bits: int = 16,
    tag: int = 1,
    data_size: int | None = None,
    riff_size: int | None = None,
    before_fmt: bytes = b"",
    after_fmt: bytes = b"",
    fmt: bool = True,
) -> bytes:
    """A RIFF/WAVE file built by hand, with any of its header fields set to lie."""
    block = channels * bits // 8
    chunk = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    body = before_fmt + (b"fmt " + struct.pack("<I", len(chunk)) + chunk if fmt else b"") + after_fmt
    body += b"data" + struct.pack("<I", len(data) if data_size is None else data_size) + data
    return b"RIFF" + struct.pack("<I", 4 + len(body) if riff_size is None else riff_size) + b"WAVE" + body


def pcm16(seconds: float = 1.0, rate: int = 16000, channels: int = 1, seed: int = 0) -> bytes:
    samples = tone_and_noise(channels, rate, seconds, seed=seed)
    return (np.clip(samples.T, -1, 1) * 32767).astype("<i2").tobytes()


def chunk(chunk_id: bytes, payload: bytes) -> bytes:
    return chunk_id + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) & 1)


def truncated(file_name: str, encode: Callable[[Path], None], keep: float = 0.5) -> Callable[[Path], None]:
    """A valid ~3 s file cut to ``keep`` of its bytes."""

    def make(folder: Path) -> None:
        path = folder / file_name
        encode(path)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    return make


def encoded(seconds: float = 3.0, rate: int = 44100, channels: int = 2, subtype: str | None = None):
    """An encoder for :func:`truncated`: tone and noise in the format the path's suffix names."""

    def encode(path: Path) -> None:
        write_audio(path, tone_and_noise(channels, rate, seconds, seed=_seed(path.name)), rate, subtype)

    return encode


def m4a_faststart(path: Path) -> None:
    """An AAC M4A with its index (moov) before the audio, as streaming-friendly encoders write it."""
    wav = path.with_suffix(".src.wav")
    sf.write(wav, tone_and_noise(2, 44100, 3.0, seed=_seed(path.name)).T, 44100, subtype="FLOAT")
    _ffmpeg("-i", str(wav), "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", str(path))
    wav.unlink()


def lavfi(file_name: str, *args: str) -> Callable[[Path], None]:
    """A file made by the ffmpeg command from its built-in test sources."""

    def make(folder: Path) -> None:
        _ffmpeg(*args, str(folder / file_name))

    return make


def sine(seconds: float = 2.0, rate: int = 44100, frequency: int = 440) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency={frequency}:sample_rate={rate}:duration={seconds}"]


def duplicates(folder: Path) -> None:
    audio_file("original.wav")(folder)
    (folder / "copy of original.wav").write_bytes((folder / "original.wav").read_bytes())


def deep(folder: Path) -> None:
    nested = folder.joinpath(*(f"level{i}" for i in range(1, 11)))
    nested.mkdir(parents=True)
    audio_file("deep.wav")(nested)


def hidden_folder(folder: Path) -> None:
    (folder / ".cache").mkdir()
    audio_file("in-hidden-folder.wav")(folder / ".cache")


def fifo(folder: Path) -> None:
    os.mkfifo(folder / "pipe.wav")


def empty_folder_named_wav(folder: Path) -> None:
    (folder / "album.wav").mkdir()


def png() -> bytes:
    """A valid 1x1 PNG image."""
    raw = b"\0\xff\0\0"
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)

    def png_chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def flac_bytes(name: str) -> bytes:
    import io

    buffer = io.BytesIO()
    sf.write(buffer, tone_and_noise(1, 16000, 1.0, seed=_seed(name)).T, 16000, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def _with(index: int, value: float, seconds: float = 1.0, seed: int = 0) -> Callable[[], np.ndarray]:
    def samples() -> np.ndarray:
        x = tone_and_noise(1, 16000, seconds, seed=seed)
        x[0, index] = value
        return x

    return samples


def _silence() -> np.ndarray:
    return np.zeros((1, 16000), np.float32)


def _clipped() -> np.ndarray:
    return np.clip(8 * tone_and_noise(1, 16000, 1.0, seed=11), -1, 1)


def _dc_offset() -> np.ndarray:
    return 0.7 + 0.1 * tone_and_noise(1, 16000, 1.0, seed=12)


def _white_noise() -> np.ndarray:
    return np.random.default_rng(13).uniform(-1, 1, (1, 3 * 16000)).astype(np.float32)


def _over_full_scale() -> np.ndarray:
    return 8 * tone_and_noise(1, 16000, 1.0, seed=14)


def _one_sample() -> np.ndarray:
    return np.full((1, 1), 0.5, np.float32)


def _twelve_channels() -> np.ndarray:
    return tone_and_noise(12, 16000, 0.5, seed=15)


# --- the corpus --------------------------------------------------------------------------------------------

KINDS: list[Kind] = [
    # broken or not audio at all
    Kind("empty", bytes_file("empty.wav", lambda: b""), "failed", "file is empty", "An empty file (0 bytes)"),
    Kind("one-byte", bytes_file("one-byte.wav", lambda: b"R"), "failed", NOT_AUDIO, "A 1-byte file"),
    Kind(
        "header-only",
        bytes_file("header-only.wav", lambda: riff(b"", data_size=32000)),
        "failed",
        TRUNCATED,
        "A 44-byte WAV header that declares 1 s of audio and holds none",
    ),
    Kind(
        "truncated-wav",
        truncated("truncated.wav", encoded(subtype="PCM_16")),
        "failed",
        TRUNCATED,
        "A 3 s WAV cut to half its bytes",
    ),
    Kind(
        "truncated-flac",
        truncated("truncated.flac", encoded()),
        "failed",
        TRUNCATED,
        "A 3 s FLAC cut to half its bytes",
    ),
    Kind(
        "truncated-mp3", truncated("truncated.mp3", encoded()), "failed", TRUNCATED, "A 3 s MP3 cut to half its bytes"
    ),
    Kind(
        "truncated-ogg",
        truncated("truncated.ogg", encoded()),
        "failed",
        TRUNCATED,
        "A 3 s Ogg Vorbis file cut to half its bytes",
    ),
    Kind(
        "truncated-opus",
        truncated("truncated.opus", encoded()),
        "failed",
        TRUNCATED,
        "A 3 s Opus file cut to half its bytes",
    ),
    Kind(
        "truncated-m4a",
        truncated("truncated.m4a", encoded()),
        "failed",
        TRUNCATED,
        "A 3 s AAC M4A (index at the end, ffmpeg's default) cut to half its bytes",
    ),
    Kind(
        "truncated-m4a-faststart",
        truncated("truncated-faststart.m4a", m4a_faststart),
        "failed",
        TRUNCATED,
        "A 3 s AAC M4A with its index first (`-movflags +faststart`) cut to half its bytes",
    ),
    Kind(
        "text-as-wav",
        bytes_file("notes.wav", lambda: b"plain text, not audio\n" * 40),
        "failed",
        NOT_AUDIO,
        "A text file named `.wav`",
    ),
    Kind(
        "text-as-m4a",
        bytes_file("notes.m4a", lambda: b"plain text, not audio\n" * 40),
        "failed",
        NOT_AUDIO,
        "A text file named `.m4a` (read by FFmpeg's libraries)",
    ),
    Kind("png-as-wav", bytes_file("picture.wav", png), "failed", NOT_AUDIO, "A PNG image named `.wav`"),
    Kind(
        "html-as-mp3",
        bytes_file("download.mp3", lambda: b"<!DOCTYPE html><html><body><h1>403 Forbidden</h1></body></html>\n"),
        "failed",
        NOT_AUDIO,
        "An HTML error page saved as `.mp3` (a failed download)",
    ),
    Kind(
        "gzip-as-flac",
        bytes_file("archive.flac", lambda: gzip.compress(pcm16(seed=21), mtime=0)),
        "failed",
        NOT_AUDIO,
        "A gzip archive named `.flac`",
    ),
    Kind(
        "headerless-pcm-as-wav",
        bytes_file("raw.wav", lambda: pcm16(seed=22)),
        "failed",
        NOT_AUDIO,
        "Raw 16-bit PCM without any header, named `.wav`",
    ),
    Kind(
        "wav-without-fmt",
        bytes_file("no-fmt.wav", lambda: riff(pcm16(seed=23), fmt=False)),
        "failed",
        None,
        "A RIFF/WAVE file with a data chunk but no `fmt ` chunk",
    ),
    Kind(
        "wav-zero-channels",
        bytes_file("zero-channels.wav", lambda: riff(pcm16(seed=24), channels=0)),
        "failed",
        None,
        "A WAV whose header declares 0 channels",
    ),
    Kind(
        "wav-zero-rate",
        bytes_file("zero-rate.wav", lambda: riff(pcm16(seed=25), rate=0)),
        "failed",
        None,
        "A WAV whose header declares a sample rate of 0 Hz",
    ),
    Kind(
        "wav-unknown-codec",
        bytes_file("unknown-codec.wav", lambda: riff(pcm16(seed=26), tag=0x1234)),
        "failed",
        None,
        "A WAV whose format tag names an unknown codec (0x1234)",
    ),
    Kind(
        "wav-data-size-lies",
        bytes_file("oversized-data.wav", lambda: riff(pcm16(seed=27), data_size=10 * len(pcm16(seed=27)))),
        "failed",
        TRUNCATED,
        "A complete WAV whose data chunk declares 10 times the bytes the file holds",
    ),
    Kind(
        "zero-length-data",
        bytes_file("no-samples.wav", lambda: riff(b"")),
        "failed",
        "file holds no audio samples",
        "A valid WAV header with a zero-length data chunk",
    ),
    Kind(
        "nan-samples",
        samples_file("nan.wav", _with(100, float("nan"), seed=31), subtype="FLOAT"),
        "failed",
        NON_FINITE,
        "A float WAV with a NaN sample",
    ),
    Kind(
        "inf-samples",
        samples_file("inf.wav", _with(100, float("inf"), seed=32), subtype="FLOAT"),
        "failed",
        NON_FINITE,
        "A float WAV with an infinite sample",
    ),
    Kind(
        "twelve-channels",
        samples_file("twelve-channels.wav", _twelve_channels),
        "failed",
        "12 channels; 1 to 8 are supported",
        "A 12-channel WAV",
    ),
    Kind(
        "video-only-mp4",
        lavfi("video-only.mp4", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=5:duration=1", "-pix_fmt", "yuv420p"),
        "failed",
        "not a recognised audio format (no audio stream found)",
        "An MP4 with a video stream and no audio stream",
    ),
    Kind(
        "newline-in-failing-name",
        bytes_file("two\nlines.wav", lambda: b"not audio\n" * 40),
        "failed",
        NOT_AUDIO,
        "A broken file whose name holds a newline",
    ),
    Kind(
        "escape-codes-in-failing-name",
        bytes_file("\x1b[31mred\x1b[0m.wav", lambda: b"not audio\n" * 40),
        "failed",
        NOT_AUDIO,
        "A broken file whose name holds terminal escape codes",
    ),
    # odd signals
    Kind(
        "digital-silence",
        samples_file("silence.wav", _silence),
        "done",
        what="1 s of digital silence (loudness is recorded as empty)",
    ),
    Kind("heavy-clipping", samples_file("clipped.wav", _clipped), "done", what="A tone amplified 8x and hard-clipped"),
    Kind("dc-offset", samples_file("dc-offset.wav", _dc_offset), "done", what="A tone riding on a +0.7 DC offset"),
    Kind(
        "full-scale-noise",
        samples_file("white-noise.wav", _white_noise),
        "done",
        what="3 s of full-scale white noise",
    ),
    Kind(
        "float-over-full-scale",
        samples_file("loud-float.wav", _over_full_scale, subtype="FLOAT"),
        "done",
        what="A float WAV peaking at about 4x full scale (kept as is, not clipped)",
    ),
    Kind(
        "one-sample",
        samples_file("one-sample.wav", _one_sample, rate=48000),
        "failed",
        "too short: 1 sample(s) at 48000 Hz leave no audio at 16000 Hz",
        what="A 48 kHz WAV holding a single sample",
    ),
    Kind("tenth-second", audio_file("tenth-second.wav", seconds=0.1), "done", what="0.1 s of audio"),
    Kind("rate-8k", audio_file("8k.wav", rate=8000), "done", what="8 kHz"),
    Kind("rate-192k", audio_file("192k.wav", rate=192000, seconds=0.5), "done", what="192 kHz"),
    Kind(
        "rate-lies",
        bytes_file("rate-lies.wav", lambda: riff(pcm16(seconds=0.5, seed=41), rate=1000)),
        "done",
        what="A WAV of 16 kHz samples whose header says 1 kHz (read as 8 s: a rate cannot be checked)",
    ),
    Kind(
        "channels-lie",
        bytes_file("channels-lie.wav", lambda: riff(pcm16(seconds=0.8, seed=42), channels=8)),
        "done",
        what="A mono WAV whose header says 8 channels (read as 8 channels of a eighth of the length)",
    ),
    # channel counts
    Kind("mono", audio_file("mono.wav", channels=1), "done", what="1 channel"),
    Kind("stereo", audio_file("stereo.wav", channels=2), "done", what="2 channels"),
    Kind("surround-6ch", audio_file("surround.flac", channels=6, subtype="PCM_24"), "done", what="6 channels (FLAC)"),
    Kind("eight-channels", audio_file("octo.wav", channels=8), "done", what="8 channels (the most supported)"),
    # sample encodings in WAV
    Kind("wav-u8", audio_file("u8.wav", subtype="PCM_U8"), "done", what="WAV, unsigned 8-bit"),
    Kind("wav-int16", audio_file("int16.wav", subtype="PCM_16"), "done", what="WAV, 16-bit"),
    Kind("wav-int24", audio_file("int24.wav", subtype="PCM_24"), "done", what="WAV, 24-bit"),
    Kind("wav-int32", audio_file("int32.wav", subtype="PCM_32"), "done", what="WAV, 32-bit integer"),
    Kind("wav-float32", audio_file("float32.wav", subtype="FLOAT"), "done", what="WAV, 32-bit float"),
    Kind("wav-float64", audio_file("float64.wav", subtype="DOUBLE"), "done", what="WAV, 64-bit float"),
    Kind("wav-ulaw", audio_file("ulaw.wav", rate=8000, subtype="ULAW"), "done", what="WAV, µ-law"),
    Kind("wav-alaw", audio_file("alaw.wav", rate=8000, subtype="ALAW"), "done", what="WAV, A-law"),
    Kind("wav-ima-adpcm", audio_file("ima-adpcm.wav", subtype="IMA_ADPCM"), "done", what="WAV, IMA ADPCM"),
    Kind("wav-ms-adpcm", audio_file("ms-adpcm.wav", subtype="MS_ADPCM"), "done", what="WAV, Microsoft ADPCM"),
    Kind("wav-gsm610", audio_file("gsm.wav", rate=8000, subtype="GSM610"), "done", what="WAV, GSM 6.10"),
    Kind(
        "wavex",
        lambda folder: sf.write(
            folder / "extensible.wav", tone_and_noise(2, 16000, 1.0, seed=43).T, 16000, format="WAVEX", subtype="PCM_16"
        ),
        "done",
        what="WAVE_FORMAT_EXTENSIBLE",
    ),
    Kind(
        "wav-riff-size-lies",
        bytes_file("riff-size.wav", lambda: riff(pcm16(seed=44), riff_size=123)),
        "done",
        what="A WAV whose RIFF size field is wrong (the data chunk is right)",
    ),
    Kind(
        "wav-streaming-size",
        bytes_file("streaming.wav", lambda: riff(pcm16(seed=45), data_size=0xFFFFFFFF, riff_size=0xFFFFFFFF)),
        "done",
        what="A WAV from a streaming recorder (sizes left at 0xFFFFFFFF)",
    ),
    Kind(
        "wav-extra-chunks",
        bytes_file(
            "chunks.wav",
            lambda: riff(
                pcm16(seed=46),
                before_fmt=chunk(b"JUNK", b"\0" * 28),
                after_fmt=chunk(b"LIST", b"INFO" + chunk(b"INAM", b"a title\0")),
            ),
        ),
        "done",
        what="A WAV with JUNK and LIST/INFO chunks around its format chunk",
    ),
    Kind(
        "wav-half-frame",
        bytes_file("half-frame.wav", lambda: riff(pcm16(channels=2, seed=47) + b"\x01", channels=2)),
        "done",
        what="A stereo WAV whose data ends one byte into a frame",
    ),
    # containers and codecs
    Kind("flac", audio_file("plain.flac"), "done", what="FLAC"),
    Kind("mp3", audio_file("plain.mp3", rate=44100), "done", what="MP3"),
    Kind("ogg-vorbis", audio_file("plain.ogg", rate=44100), "done", what="Ogg Vorbis"),
    Kind("opus", audio_file("plain.opus", rate=48000), "done", what="Opus"),
    Kind("m4a-aac", audio_file("plain.m4a", rate=44100), "done", what="M4A (AAC)"),
    Kind("webm", audio_file("plain.webm", rate=48000), "done", what="WebM (Opus)"),
    Kind("adts-aac", lavfi("plain.aac", *sine(frequency=523), "-c:a", "aac"), "done", what="Raw AAC (ADTS) `.aac`"),
    Kind("mka", lavfi("plain.mka", *sine(frequency=587), "-c:a", "flac"), "done", what="Matroska audio `.mka` (FLAC)"),
    Kind("wma", lavfi("plain.wma", *sine(frequency=659), "-c:a", "wmav2"), "done", what="WMA"),
    Kind(
        "mp4-audio-and-video",
        lavfi(
            "movie.mp4",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x48:rate=5:duration=2",
            *sine(frequency=698),
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
        ),
        "done",
        what="An MP4 with a video stream and an AAC audio stream",
    ),
    Kind("aiff", audio_file("plain.aiff"), "done", what="AIFF"),
    Kind("caf", audio_file("plain.caf"), "done", what="CAF (Apple Core Audio)"),
    Kind("w64", audio_file("plain.w64"), "done", what="Sony Wave64"),
    Kind("rf64", audio_file("plain.rf64"), "done", what="RF64"),
    Kind(
        "flac-named-wav",
        bytes_file("really-flac.wav", lambda: flac_bytes("really-flac.wav")),
        "done",
        what="FLAC bytes named `.wav` (the content decides, not the extension)",
    ),
    Kind("uppercase-extension", audio_file("LOUD.WAV"), "done", what="An upper-case extension `.WAV`"),
    Kind("mixed-case-extension", audio_file("Mixed.Flac"), "done", what="A mixed-case extension `.Flac`"),
    # names and folders
    Kind("unicode-name", audio_file("café – naïve 日本.wav"), "done", what="A name with accents, a dash and CJK"),
    Kind("quotes-in-name", audio_file('it\'s "quoted".wav'), "done", what="Single and double quotes in the name"),
    Kind(
        "shell-in-name",
        audio_file("$(touch pwned).wav"),
        "done",
        what="`$(touch pwned).wav` (no shell ever runs it)",
    ),
    Kind("backticks-and-semicolon", audio_file("`id`; rm -rf x.wav"), "done", what="Backticks and `;` in the name"),
    Kind("leading-dash", audio_file("-rf.wav"), "done", what="A name starting with `-`"),
    Kind("spaces-in-name", audio_file("  two  spaces .wav"), "done", what="Leading, doubled and trailing spaces"),
    Kind("newline-in-name", audio_file("first\nsecond.wav"), "done", what="A newline in the name"),
    Kind(
        "percent-in-name", audio_file("100%25 a%20b.wav"), "done", what="Percent escapes in the name (kept literally)"
    ),
    Kind("uri-chars-in-name", audio_file("take #1?.wav"), "done", what="`#` and `?` in the name"),
    Kind("long-name", audio_file("n" * 245 + ".wav"), "done", what="A 249-byte name (near the 255-byte limit)"),
    Kind(
        "non-utf8-name",
        renamed(os.fsdecode(b"caf\xe9-latin1.wav"), "latin1.wav", audio_file("latin1.wav")),
        "done",
        what="A name that is not valid UTF-8 (Latin-1 bytes)",
    ),
    Kind(
        "dotfile",
        audio_file(".hidden.wav"),
        "ignored",
        what="A dotfile `.hidden.wav` (like macOS's `._x.wav` resource forks: skipped when walking)",
        count=0,
    ),
    Kind("hidden-folder", hidden_folder, "ignored", what="A file in a hidden folder `.cache/`", count=0),
    Kind("deep-folder", deep, "done", what="A file 10 folders deep"),
    Kind(
        "duplicates",
        duplicates,
        "done",
        what="The same bytes under two names (two `files` rows, one artifact)",
        count=2,
    ),
    # not listed when walking a folder
    Kind(
        "text-file",
        bytes_file("notes.txt", lambda: b"notes\n"),
        "ignored",
        what="`notes.txt` (not an audio extension)",
        count=0,
    ),
    Kind(
        "no-extension",
        renamed("README", "readme.wav", audio_file("readme.wav")),
        "ignored",
        what="Audio with no extension",
        count=0,
    ),
    Kind(
        "partial-download",
        bytes_file("download.wav.part", lambda: riff(pcm16(seed=51))),
        "ignored",
        what="`download.wav.part` (a browser's partial download)",
        count=0,
    ),
    Kind(
        "sun-au",
        audio_file("plain.au"),
        "ignored",
        what="Sun `.au` audio (decodable, but not a listed extension)",
        count=0,
    ),
    Kind("fifo", fifo, "ignored", what="A named pipe `pipe.wav` (never opened)", count=0),
    Kind("folder-named-wav", empty_folder_named_wav, "ignored", what="An empty folder named `album.wav`", count=0),
]

KIND_COUNT = len(KINDS)
assert len({k.name for k in KINDS}) == KIND_COUNT, "kind names must be unique"
assert {k.expect for k in KINDS} <= {"done", "failed", "ignored"}
assert all((k.count == 0) == (k.expect == "ignored") for k in KINDS)


def write_all(root: Path) -> dict[str, Path]:
    """Write every kind into ``root/<kind.folder>``; the folders by kind name."""
    folders = {}
    for kind in KINDS:
        folder = root / kind.folder
        folder.mkdir(parents=True)
        kind.make(folder)
        folders[kind.name] = folder
    return folders
