"""Transcribe: Whisper on voice-activity chunks, decoded in batches, each word given its speaker.

The method (WhisperX's chunking, on the whisper library's own decoding and timing code):

1. Silero VAD finds the speech regions of the 16 kHz mono track; a region longer than ``chunk_s``
   is cut at its least speech-like frame (lowest speech probability) in the second half of the
   allowed length, as WhisperX cuts.
2. Consecutive regions are merged into chunks of at most ``chunk_s`` (a chunk grows while its
   next region still ends within ``chunk_s`` of its start), so chunk boundaries lie in pauses (or
   at those cuts) and the silence between chunks is never decoded.
3. Each chunk is decoded as the library's ``transcribe`` decodes one recording: its log-mel, a
   window from ``seek``, greedy decoding at temperature 0 with timestamps, the window cut into
   segments at consecutive timestamp tokens, word times from the cross-attention alignment, and a
   window ending mid-segment decoded again from its last complete timestamp. The windows of all
   chunks are decoded ``batch_size`` at a time: with openai-whisper, ``whisper.decode`` on a batch
   of log-mels and ``whisper.timing.add_word_timestamps`` on each window's encoder output (no
   second encoder pass); with faster-whisper (``backend``), one CTranslate2 encode and generate per
   batch and its ``add_word_timestamps``.
4. :func:`assign_speakers` gives each segment and word the diarized speaker it overlaps most.

Memory: the whole track stays on the CPU as a NumPy array; a batch moves only its windows' audio
to the model's device, where their log-mel, encoder output and tokens live until the batch ends.

Outputs: ``transcript.json`` (the source of the others), ``transcript.srt``, ``.vtt``, ``.txt``, ``.tsv``,
one ``segments`` catalog row per segment (its words as a list column).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, Field

from voxflow.storage.catalog import Catalog
from voxflow.storage.refs import ArtifactRef
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import shared_store
from voxflow.tasks.helpers import audio as audio_io
from voxflow.tasks.helpers import subtitles
from voxflow.tasks.helpers.speakers import Turn, parse_rttm
from voxflow.tasks.helpers.subtitles import Segment, Transcript, Word
from voxflow.tasks.kit.model_sources import (
    FASTER_WHISPER_LIBRARY,
    MODEL_SOURCES,
    local_checkpoint,
    local_faster_whisper,
)
from voxflow.tasks.kit.models import (
    RESIDENT,
    ModelNotFound,
    ModelSettings,
    holding,
    hub_errors,
    seeded,
)
from voxflow.tasks.kit.options import InvalidOptions, Options
from voxflow.tasks.kit.outputs import audio_input, read_audio, read_bytes, source_sha256_of, write_artifact
from voxflow.tasks.kit.runs import current_run, halving_batch_on_oom
from voxflow.tasks.kit.stage import StageSpec, stage_task

log = logging.getLogger(__name__)

STAGE = "transcribe"
CODE_VERSION = (
    "3"  # 2: SRT/VTT by whisper's writers, TXT and TSV added; 3: fallback, segments split at speakers/sentences
)
LIBRARY, DEFAULT_MODEL = MODEL_SOURCES[STAGE].library, MODEL_SOURCES[STAGE].name  # <model dir>/whisper/<name>.pt
SAMPLE_RATE_HZ = 16_000  # whisper.audio.SAMPLE_RATE
HOP_LENGTH = 160  # samples per mel frame (10 ms), whisper.audio.HOP_LENGTH
FRAMES_PER_SECOND = SAMPLE_RATE_HZ // HOP_LENGTH
WINDOW_S = 30  # whisper's input window, whisper.audio.CHUNK_LENGTH
VAD_FRAME = 512  # samples per Silero VAD frame at 16 kHz (32 ms)
PREPEND_PUNCTUATIONS = "\"'“¿([{-"  # merged into the next word (whisper's default)
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"  # merged into the previous word (whisper's default)
TIMESTAMP_FRAMES = 2  # mel frames per timestamp token (20 ms): the encoder halves the 3000 frames
MAX_TOKENS = 224  # whisper's default tokens per window: half its 448-token text context
JSON_NAME = "transcript.json"
TEXT_FORMATS = {  # the text artifacts written from the JSON one, by their writer in voxflow.tasks.helpers.subtitles
    "transcript.srt": subtitles.to_srt,
    "transcript.vtt": subtitles.to_vtt,
    "transcript.txt": subtitles.to_txt,
    "transcript.tsv": subtitles.to_tsv,
}

Backend = Literal["whisper", "faster-whisper"]
Hook = Callable[[int, int], None]


AUTO_LANGUAGE = "auto"  # detect the language


def whisper_language(value: str) -> str:
    """A validator: ``auto`` or one of whisper's language codes."""
    if value != AUTO_LANGUAGE and value not in whisper_languages():
        raise ValueError(f"must be 'auto' or a whisper language code ({', '.join(sorted(whisper_languages()))})")
    return value


def whisper_languages() -> dict[str, str]:
    """Whisper's language codes and names (``whisper.tokenizer.LANGUAGES``)."""
    from whisper.tokenizer import LANGUAGES

    return LANGUAGES


def language_choices(schema: dict[str, Any]) -> None:
    """The UI form's language dropdown: 'auto' and whisper's codes (read when the form's schema is made; a
    plain text field where whisper is not installed)."""
    try:
        schema["enum"] = [AUTO_LANGUAGE, *sorted(whisper_languages())]
    except ImportError:
        pass


ComputeType = Literal["auto", "int8", "int8_float32", "int8_float16", "float16", "bfloat16", "float32"]
WHISPER_COMPUTE_TYPES = ("auto", "float16", "float32")  # openai-whisper runs float16 (CUDA) or float32
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # whisper's fallback schedule


@dataclass(frozen=True)
class TranscribeOptions(Options):
    """How speech becomes segments and words. Defaults: measured on real Whisper base weights (README)."""

    model: Annotated[
        str | None,
        Field(
            description="Whisper model: <model dir>/whisper/<name>.pt (faster-whisper: <model dir>/faster-whisper/<name>/) "
            "or an official name; None: VOXFLOW_WHISPER_MODEL or the models Block's, else turbo."
        ),
    ] = None
    backend: Annotated[
        Backend | None,
        Field(
            description="Decoder: openai-whisper (PyTorch) or faster-whisper (CTranslate2); "
            "None: VOXFLOW_WHISPER_BACKEND or the models Block's, else whisper."
        ),
    ] = None
    compute_type: Annotated[
        ComputeType,
        Field(
            description="Weights' precision: auto is int8 on CPU and float16 on CUDA (faster-whisper), float32/float16 (whisper)."
        ),
    ] = "auto"
    language: Annotated[
        str,
        Field(
            description="Whisper language code, or 'auto': detected on the first speech chunk (or per chunk).",
            json_schema_extra=language_choices,
        ),
        AfterValidator(whisper_language),
    ] = AUTO_LANGUAGE
    language_per_chunk: Annotated[
        bool, Field(description="With 'auto': detect the language of every chunk (code-switched recordings).")
    ] = False
    beam_size: Annotated[int, Field(ge=1, le=16, description="Beams of the decoding at temperature 0 (1: greedy).")] = 5
    best_of: Annotated[int, Field(ge=1, le=16, description="Candidates sampled at each fallback temperature.")] = 5
    temperatures: Annotated[
        tuple[float, ...],
        Field(
            min_length=1,
            description="Temperature fallback: a window failing the thresholds is decoded again at the next.",
        ),
    ] = DEFAULT_TEMPERATURES
    seed: Annotated[
        int,
        Field(
            ge=0, description="Seed of the fallback's sampling (whisper backend: same input and options, same text)."
        ),
    ] = 0
    compression_ratio_threshold: Annotated[
        float | None,
        Field(gt=0, description="A window whose text gzips better than this is repetitive: decoded again."),
    ] = 2.4
    log_prob_threshold: Annotated[
        float | None, Field(description="A window whose mean token log-probability is below this is decoded again.")
    ] = -1.0
    no_speech_threshold: Annotated[
        float | None,
        Field(gt=0, lt=1, description="A window this likely silent (and below log_prob_threshold) is skipped."),
    ] = 0.6
    timestamps: Annotated[
        bool,
        Field(
            description="Decode timestamp tokens (whisper's segments); off: one text per chunk, as faster-whisper's batched pipeline."
        ),
    ] = True
    chunk_s: Annotated[
        float,
        Field(gt=0, le=WINDOW_S, description="Longest speech chunk decoded as one window (merge length), seconds."),
    ] = 20.0
    batch_size: Annotated[int, Field(ge=1, description="Windows decoded at once (halved on GPU out-of-memory).")] = 8
    word_timestamps: Annotated[bool, Field(description="Word times from whisper's cross-attention alignment.")] = True
    max_tokens: Annotated[
        int | None,
        Field(ge=1, le=MAX_TOKENS, description="Most tokens sampled per window; None: whisper's 224 (both backends)."),
    ] = None
    vad_threshold: Annotated[
        float, Field(gt=0, lt=1, description="Silero speech probability above which a frame is speech.")
    ] = 0.5
    vad_min_silence_s: Annotated[
        float, Field(ge=0, description="Shortest pause that ends a speech region, seconds.")
    ] = 0.1
    vad_pad_s: Annotated[float, Field(ge=0, description="Padding added to each side of a speech region, seconds.")] = (
        0.4
    )
    per_channel: Annotated[
        bool, Field(description="Transcribe each channel on its own, speaker = channel (one talker per channel).")
    ] = False
    min_confidence: Annotated[
        float,
        Field(description="Segments whose mean token log-probability is below this are flagged low-confidence."),
    ] = -1.0
    drop_low_confidence: Annotated[bool, Field(description="Leave low-confidence segments out of the transcript.")] = (
        False
    )
    second_pass_model: Annotated[
        str | None,
        Field(
            description="A larger model (same backend) that decodes the low-confidence segments again; "
            "the more confident result wins, both are kept in the catalog."
        ),
    ] = None

    def resolved(self, models: ModelSettings) -> TranscribeOptions:
        """The options with ``model`` and ``backend`` filled in from the model settings (environment or Block)."""
        return replace(
            self,
            model=self.model or models.whisper_model or DEFAULT_MODEL,
            backend=self.backend or models.whisper_backend or LIBRARY,
        )

    def check(self) -> None:
        if (self.backend or LIBRARY) == LIBRARY and self.compute_type not in WHISPER_COMPUTE_TYPES:
            raise InvalidOptions(
                f"compute_type {self.compute_type!r} needs the faster-whisper backend "
                f"(openai-whisper runs {', '.join(WHISPER_COMPUTE_TYPES)})"
            )


@dataclass(frozen=True)
class Span:
    """Samples ``[start, end)`` of the 16 kHz track: a speech region or a chunk of them."""

    start: int
    end: int

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE_HZ

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE_HZ

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE_HZ


@dataclass(frozen=True)
class TranscribeResult:
    """What the transcribe task returns: the transcript artifacts and their counts.

    Its ``sha256`` is the JSON transcript's: a stage after it is keyed by what was said.
    """

    artifact: ArtifactRef  # the audio transcribed (the input, unchanged)
    json: ArtifactRef  # transcript.json: the source of the text formats and of the printed lines
    srt: ArtifactRef
    vtt: ArtifactRef
    txt: ArtifactRef
    tsv: ArtifactRef
    language: str | None  # None when no speech was found
    segments: int
    words: int
    speakers: tuple[str, ...]
    source_sha256: str
    languages: tuple[str, ...] = ()  # every segment's language (more than one: code-switched)
    low_confidence: int = 0  # segments flagged low-confidence
    suggestion: str | None = None  # e.g. per_channel for a recording with one talker per channel

    @property
    def sha256(self) -> str:
        return self.json.sha256

    def summary(self) -> dict:
        """What a summary table shows of a transcribed file."""
        return {
            "language": ",".join(self.languages) or self.language,
            "segments": self.segments,
            "words": self.words,
            "speakers": len(self.speakers),
            "sha256": self.source_sha256[:12],
        }

    def transcript(self, settings: StoreSettings) -> Transcript:
        """The stored transcript (read from ``transcript.json``)."""
        return subtitles.from_json(read_bytes(self.json, settings))

    def transcript_lines(self, settings: StoreSettings) -> list[str]:
        """``[SPEAKER_00 0:01.2] text`` lines of the stored transcript."""
        return subtitles.transcript_lines(self.transcript(settings))


# ---- models -------------------------------------------------------------------------------------


def _set_official_alignment_heads(model: Any, name: str) -> None:
    """Whisper's word-timing heads for ``name`` when the checkpoint has that model's layer x head grid.

    ``whisper.load_model(path)`` leaves the default heads (all heads of the upper half of the layers).
    """
    import base64
    import gzip

    from whisper import _ALIGNMENT_HEADS

    dump = _ALIGNMENT_HEADS.get(name)
    if (
        dump is not None
        and len(gzip.decompress(base64.b85decode(dump))) == model.dims.n_text_layer * model.dims.n_text_head
    ):
        model.set_alignment_heads(dump)


def _load_whisper(name: str, device: str, settings: ModelSettings) -> Any:
    import whisper

    path = local_checkpoint(name, settings)
    if path is not None:
        model = whisper.load_model(str(path), device=device)
        _set_official_alignment_heads(model, name)
        return model.eval()
    if name not in whisper.available_models():
        where = settings.folder / LIBRARY if settings.folder else "the model folder (none set)"
        raise ModelNotFound(
            f"whisper model {name!r} is not in {where} and is not an official name "
            f"({', '.join(whisper.available_models())})"
        )
    root = str(settings.library_dir(LIBRARY)) if settings.folder else None
    with hub_errors(name):
        try:
            return whisper.load_model(name, device=device, download_root=root).eval()
        except OSError as e:  # urllib's URLError: offline or unreachable
            where = settings.folder / LIBRARY if settings.folder else "a model folder (VOXFLOW_MODEL_DIR is not set)"
            raise ModelNotFound(
                f"whisper model {name!r} is not in {where} and could not be downloaded ({e}); "
                "run 'voxflow models pull' on a machine with internet and copy the folder"
            ) from None


def _load_faster_whisper(name: str, device: str, compute_type: str, settings: ModelSettings) -> Any:
    import torch
    from faster_whisper import WhisperModel, available_models

    folder = local_faster_whisper(name, settings)
    if folder is None and name not in available_models():
        where = settings.folder / FASTER_WHISPER_LIBRARY / name if settings.folder else "the model folder (none set)"
        raise ModelNotFound(
            f"faster-whisper model {name!r} is not in {where} and is not an official name "
            f"({', '.join(available_models())}); put its CTranslate2 folder there"
        )
    root = str(settings.library_dir(FASTER_WHISPER_LIBRARY)) if settings.folder else None
    with hub_errors(name, folder=settings.folder and settings.folder / FASTER_WHISPER_LIBRARY / name):
        return WhisperModel(
            str(folder) if folder else name,
            device=device,
            compute_type=compute_type,
            cpu_threads=torch.get_num_threads(),
            download_root=root,
        )


def compute_type_for(backend: Backend, compute_type: str, device: str) -> str:
    """The precision a model runs in: ``auto`` is float16 on CUDA, and int8 (faster-whisper) or float32
    (openai-whisper, which has no int8) on a CPU."""
    if compute_type != "auto":
        return compute_type
    if device == "cuda":
        return "float16"
    return "int8" if backend == FASTER_WHISPER_LIBRARY else "float32"


def load_transcribe_model(
    name: str,
    device: str,
    model_dir: str | Path | None = None,
    backend: Backend = "whisper",
    compute_type: str = "auto",
) -> Any:
    """Whisper ``name`` on ``device``, loaded once per process: openai-whisper's ``Whisper``, or for
    the ``faster-whisper`` backend a ``faster_whisper.WhisperModel`` (CTranslate2) in ``compute_type``
    (see :func:`compute_type_for`).

    whisper: ``<model dir>/whisper/<name>.pt`` is loaded by path (whisper's own download would replace
    a file whose sha256 differs from the official one); an official name without one is downloaded
    by whisper into ``<model dir>/whisper``. faster-whisper: the CTranslate2 folder
    ``<model dir>/faster-whisper/<name>/``, else faster-whisper's download of ``name`` from the hub.
    """
    settings = ModelSettings(model_dir=str(model_dir) if model_dir else None)
    if backend == FASTER_WHISPER_LIBRARY:
        precision = compute_type_for(backend, compute_type, device)
        key = (backend, name, str(settings.folder), precision)
        return RESIDENT.get(key, device, lambda: _load_faster_whisper(name, device, precision, settings), stage=STAGE)
    return RESIDENT.get(
        (backend, name, str(settings.folder)), device, lambda: _load_whisper(name, device, settings), stage=STAGE
    )


def load_vad_model() -> Any:
    """Silero VAD's sequence model (ONNX, bundled with the package: no download), on the CPU."""

    def load() -> Any:
        from silero_vad import load_silero_vad

        return load_silero_vad(sequence=True)

    return RESIDENT.get(("silero-vad", "sequence"), "cpu", load, stage=STAGE)


def pull_whisper(name: str, settings: ModelSettings) -> Path:
    """Download official whisper ``name`` into ``<model dir>/whisper/`` with whisper's own downloader."""
    import whisper

    if name not in whisper.available_models():
        raise ModelNotFound(f"{name!r} is not an official whisper model ({', '.join(whisper.available_models())})")
    return Path(whisper._download(whisper._MODELS[name], str(settings.library_dir(LIBRARY)), in_memory=False))


def pull_faster_whisper(name: str, settings: ModelSettings) -> Path:
    """Download faster-whisper's conversion of ``name`` into ``<model dir>/faster-whisper/<name>/``."""
    from faster_whisper import download_model

    target = settings.library_dir(FASTER_WHISPER_LIBRARY) / name
    with hub_errors(name, folder=target):
        return Path(download_model(name, output_dir=str(target)))


# ---- voice activity and chunks ------------------------------------------------------------------


def whisper_audio(samples: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """``(channels, samples)`` audio as whisper hears it: mono, 16 kHz, float32, one dimension."""
    mono = audio_io.downmix(samples) if samples.shape[0] > 1 else samples
    return np.ascontiguousarray(audio_io.resample(mono, sample_rate_hz, SAMPLE_RATE_HZ)[0], dtype=np.float32)


def speech_probabilities(samples: np.ndarray, vad: Any) -> np.ndarray:
    """Silero's speech probability of each 32 ms frame (``VAD_FRAME`` samples) of 16 kHz ``samples``."""
    return np.asarray(vad.audio_forward(samples, sampling_rate=SAMPLE_RATE_HZ), dtype=np.float32)


def _split_long(region: Span, probabilities: np.ndarray, limit: int) -> list[Span]:
    """``region`` cut into parts of at most ``limit`` samples, each cut at the least speech-like frame
    of the second half of the part it ends (WhisperX's cut)."""
    parts, start = [], region.start
    while region.end - start > limit:
        first, last = -(-(start + limit // 2) // VAD_FRAME), (start + limit) // VAD_FRAME
        cut = (
            max((first + int(np.argmin(probabilities[first:last]))) * VAD_FRAME, start + 1)
            if last > first
            else start + limit
        )
        parts.append(Span(start, cut))
        start = cut
    return parts + [Span(start, region.end)]


def detect_speech(samples: np.ndarray, vad: Any, options: TranscribeOptions) -> list[Span]:
    """Silero's speech regions of 16 kHz mono ``samples``, those longer than ``options.chunk_s`` cut
    where speech is least likely (:func:`_split_long`)."""
    from silero_vad import get_speech_timestamps_from_probs

    probabilities = speech_probabilities(samples, vad)
    regions = get_speech_timestamps_from_probs(
        probabilities.tolist(),
        sampling_rate=SAMPLE_RATE_HZ,
        threshold=options.vad_threshold,
        min_silence_duration_ms=round(options.vad_min_silence_s * 1000),
        speech_pad_ms=round(options.vad_pad_s * 1000),
        audio_length_samples=len(samples),
    )
    limit = round(options.chunk_s * SAMPLE_RATE_HZ)
    return [part for r in regions for part in _split_long(Span(r["start"], r["end"]), probabilities, limit)]


def merge_spans(regions: Sequence[Span], chunk_s: float) -> list[Span]:
    """Consecutive speech regions merged into chunks of at most ``chunk_s`` (WhisperX's merge).

    A chunk starts at a region's start and takes the following regions while they end within
    ``chunk_s`` of it; a region longer than ``chunk_s`` on its own (never from :func:`detect_speech`)
    is cut into equal parts.
    """
    limit = round(chunk_s * SAMPLE_RATE_HZ)
    pieces: list[Span] = []
    for region in regions:
        parts = -(-(region.end - region.start) // limit)
        bounds = np.linspace(region.start, region.end, parts + 1).round().astype(int)
        pieces.extend(Span(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]))
    chunks: list[Span] = []
    for piece in pieces:
        if chunks and piece.end - chunks[-1].start <= limit:
            chunks[-1] = Span(chunks[-1].start, piece.end)
        else:
            chunks.append(piece)
    return chunks


# ---- decoding -----------------------------------------------------------------------------------


class _EncodedWhisper:
    """A whisper model as ``whisper.timing`` uses it, whose ``model(features, tokens)`` runs only the
    decoder: the word alignment reuses a window's encoder output instead of encoding it again."""

    def __init__(self, model: Any) -> None:
        self.dims, self.decoder, self.device = model.dims, model.decoder, model.device
        self.alignment_heads = model.alignment_heads

    def __call__(self, audio_features: Any, tokens: Any) -> Any:
        return self.decoder(tokens, audio_features)


@functools.cache
def _alignment_compiled_once_per_machine() -> None:
    """whisper's word alignment (its numba DTW and backtrace) is compiled at its first call in every
    process: 1.8-2.9 s of each ``voxflow transcribe`` here. numba's on-disk cache keeps the compiled
    code for the next processes (beside whisper's module, else in the user's cache folder): 0.4 s."""
    from whisper import timing

    for function in (timing.dtw_cpu, timing.backtrace):
        function.enable_caching()


@contextlib.contextmanager
def _keeping_torch_threads() -> Iterator[None]:
    """Restore torch's CPU thread count after the block: numba's first compile of whisper's DTW
    resets it to the number of cores (10x slower on a busy machine pinned to one thread)."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


@dataclass
class _Chunk:
    """One chunk's decoding state: where its next window starts and the segments found so far."""

    span: Span
    frames: int  # mel frames of its audio
    seek: int = 0  # first mel frame of the next window
    last_speech_s: float = 0.0  # end of the last word so far (whisper's long-pause heuristics)
    language: str | None = None  # the language it was decoded in
    segments: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, span: Span, language: str | None = None) -> _Chunk:
        return cls(span, (span.end - span.start) // HOP_LENGTH, language=language)

    @property
    def size(self) -> int:
        """Mel frames of its next window."""
        return min(WINDOW_S * FRAMES_PER_SECOND, self.frames - self.seek)


@dataclass(frozen=True)
class _Decoded:
    """One decoded window: its tokens (timestamps included), whisper's confidences, its encoding."""

    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    encoded: Any  # the encoder output, on the model's device (for the word alignment)
    temperature: float = 0.0
    compression_ratio: float = 0.0


def compression_ratio(text: str) -> float:
    """How well ``text`` compresses (whisper's repetition measure): above 2.4 it is usually a loop."""
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


class _WhisperSteps:
    """openai-whisper's steps on windows: log-mel on the device, batched ``whisper.decode``, and
    ``whisper.timing``'s word alignment on the decode's encoder output."""

    def __init__(self, model: Any, compute_type: str) -> None:
        import torch

        cuda = model.device.type == "cuda"
        if compute_type == "float16" and not cuda:
            raise InvalidOptions(
                "TranscribeOptions.compute_type: float16 needs CUDA with the whisper backend "
                "(on a CPU: float32, or int8 with the faster-whisper backend)"
            )
        _alignment_compiled_once_per_machine()
        self.model = model
        self.fp16 = cuda if compute_type == "auto" else compute_type == "float16"
        self.dtype = torch.float16 if self.fp16 else torch.float32

    def mel(self, samples: np.ndarray, chunk: _Chunk) -> Any:
        """The log-mel of a chunk's next window, as ``whisper.transcribe`` makes it (30 s padded)."""
        import torch
        from whisper.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram, pad_or_trim

        audio = torch.from_numpy(samples[chunk.span.start : chunk.span.end]).to(self.model.device)
        mel = log_mel_spectrogram(audio, self.model.dims.n_mels, padding=N_SAMPLES)
        return pad_or_trim(mel[:, chunk.seek : chunk.seek + chunk.size], N_FRAMES)

    def detect_language(self, samples: np.ndarray, chunk: _Chunk) -> str:
        if not self.model.is_multilingual:
            return "en"
        _, probs = self.model.detect_language(self.mel(samples, chunk).to(self.dtype))
        return max(probs, key=probs.get)

    def start(self, language: str, options: TranscribeOptions) -> Any:
        """Set up decoding in ``language``; returns the tokenizer."""
        from whisper.tokenizer import get_tokenizer

        model = self.model
        self.language, self.options = language, options
        self.tokenizer = get_tokenizer(
            model.is_multilingual, num_languages=model.num_languages, language=language, task="transcribe"
        )
        return self.tokenizer

    def decode(self, samples: np.ndarray, batch: list[_Chunk], temperature: float) -> list[_Decoded]:
        import torch
        import whisper

        options, sampled = self.options, temperature > 0
        decoding = whisper.DecodingOptions(
            language=self.language,
            temperature=temperature,
            sample_len=options.max_tokens,
            beam_size=None if sampled or options.beam_size == 1 else options.beam_size,
            best_of=options.best_of if sampled else None,
            without_timestamps=not options.timestamps,
            fp16=self.fp16,
        )
        mels = torch.stack([self.mel(samples, chunk) for chunk in batch])
        if (decoding.beam_size or decoding.best_of or 1) > 1:  # whisper's beams and samples fail in a batch
            results = [r for mel in mels for r in whisper.decode(self.model, mel[None], decoding)]
        else:
            results = whisper.decode(self.model, mels, decoding)
        return [_Decoded(r.tokens, r.avg_logprob, r.no_speech_prob, r.audio_features) for r in results]

    def align(self, segments: list[dict], decoded: _Decoded, chunk: _Chunk) -> None:
        """Add ``words`` to a window's segments (whisper's ``add_word_timestamps``)."""
        from whisper.timing import add_word_timestamps

        with _keeping_torch_threads():
            add_word_timestamps(
                segments=segments,
                model=_EncodedWhisper(self.model),
                tokenizer=self.tokenizer,
                mel=decoded.encoded,
                num_frames=chunk.size,
                prepend_punctuations=PREPEND_PUNCTUATIONS,
                append_punctuations=APPEND_PUNCTUATIONS,
                last_speech_timestamp=chunk.last_speech_s,
            )


class _FasterWhisperSteps:
    """faster-whisper's steps on windows: its log-mel (CPU), one CTranslate2 encode and generate per
    batch, and its word alignment, as ``WhisperModel.transcribe`` runs them on one window."""

    MAX_INITIAL_TIMESTAMP_S = 1.0  # faster-whisper's (and whisper's) default

    def __init__(self, model: Any) -> None:
        self.model = model

    def mel(self, samples: np.ndarray, chunk: _Chunk) -> np.ndarray:
        from faster_whisper.audio import pad_or_trim

        features = self.model.feature_extractor(samples[chunk.span.start : chunk.span.end])
        return pad_or_trim(features[:, chunk.seek : chunk.seek + chunk.size])

    def detect_language(self, samples: np.ndarray, chunk: _Chunk) -> str:
        if not self.model.model.is_multilingual:
            return "en"
        return self.model.detect_language(features=self.mel(samples, chunk))[0]

    def start(self, language: str, options: TranscribeOptions) -> Any:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        model = self.model
        self.options = options
        self.tokenizer = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
        )
        self.prompt = model.get_prompt(self.tokenizer, [], without_timestamps=not options.timestamps)
        self.generate = dict(
            patience=1,
            length_penalty=1,
            repetition_penalty=1,
            no_repeat_ngram_size=0,
            max_length=len(self.prompt) + (options.max_tokens or MAX_TOKENS),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(self.tokenizer, [-1]),
            max_initial_timestamp_index=round(self.MAX_INITIAL_TIMESTAMP_S / model.time_precision),
        )
        return self.tokenizer

    def decode(self, samples: np.ndarray, batch: list[_Chunk], temperature: float) -> list[_Decoded]:
        """One window per chunk: beam search at temperature 0, else ``best_of`` samples (faster-whisper's choice)."""
        if temperature > 0:
            search = dict(
                beam_size=1, num_hypotheses=self.options.best_of, sampling_topk=0, sampling_temperature=temperature
            )
        else:
            search = dict(beam_size=self.options.beam_size)
        encoded = self.model.encode(np.stack([self.mel(samples, chunk) for chunk in batch]))
        results = self.model.model.generate(encoded, [self.prompt] * len(batch), **self.generate, **search)
        rows = _storage_rows(encoded, len(batch))
        return [
            _Decoded(
                r.sequences_ids[0],
                r.scores[0] * len(r.sequences_ids[0]) / (len(r.sequences_ids[0]) + 1),
                r.no_speech_prob,
                row,
            )
            for r, row in zip(results, rows)
        ]

    def align(self, segments: list[dict], decoded: _Decoded, chunk: _Chunk) -> None:
        """Add ``words`` to a window's segments (faster-whisper's ``add_word_timestamps``)."""
        self.model.add_word_timestamps(
            [segments],
            self.tokenizer,
            decoded.encoded,
            chunk.size,
            PREPEND_PUNCTUATIONS,
            APPEND_PUNCTUATIONS,
            chunk.last_speech_s,
        )


def _storage_rows(encoded: Any, count: int) -> list[Any]:
    """Each row of a CTranslate2 batch as its own one-row ``StorageView`` (on the same device)."""
    import ctranslate2

    if encoded.device == "cuda":
        import torch

        batch = torch.as_tensor(encoded, device="cuda")
    else:
        batch = np.asarray(encoded)
    return [ctranslate2.StorageView.from_array(batch[i : i + 1]) for i in range(count)]


def _steps(model: Any, compute_type: str) -> _WhisperSteps | _FasterWhisperSteps:
    if type(model).__module__.startswith("faster_whisper"):
        return _FasterWhisperSteps(model)
    return _WhisperSteps(model, compute_type)


def _split_window(tokens: list[int], tokenizer: Any, seek: int, size: int) -> tuple[list[dict], int, bool]:
    """A window's tokens as segments (times in seconds of the chunk), the next seek, and whether the
    window ended on a single timestamp (its last segment is complete).

    Each pair of consecutive timestamp tokens closes a segment; a window whose last segment is
    unfinished continues from its last complete timestamp. Without such a pair the whole window is
    one segment, ending at its last timestamp. (Each timestamp token is 20 ms, 2 mel frames.)
    """
    begin, precision = tokenizer.timestamp_begin, TIMESTAMP_FRAMES * HOP_LENGTH / SAMPLE_RATE_HZ
    offset_s = seek * HOP_LENGTH / SAMPLE_RATE_HZ
    stamp = [t >= begin for t in tokens]
    single_ending = stamp[-2:] == [False, True]
    cuts = [k for k in range(1, len(tokens)) if stamp[k - 1] and stamp[k]]

    def segment(start_s: float, end_s: float, piece: list[int]) -> dict:
        text = tokenizer.decode([t for t in piece if t < tokenizer.eot])
        return {"seek": seek, "start": start_s, "end": end_s, "text": text, "tokens": piece}

    if not cuts:
        stamps = [t for t in tokens if t >= begin]
        duration_s = (
            (stamps[-1] - begin) * precision if stamps and stamps[-1] != begin else size * HOP_LENGTH / SAMPLE_RATE_HZ
        )
        return [segment(offset_s, offset_s + duration_s, tokens)], seek + size, single_ending
    ends = cuts + [len(tokens)] if single_ending else cuts
    segments, last = [], 0
    for end in ends:
        piece = tokens[last:end]
        segments.append(
            segment(offset_s + (piece[0] - begin) * precision, offset_s + (piece[-1] - begin) * precision, piece)
        )
        last = end
    next_seek = seek + size if single_ending else seek + (tokens[last - 1] - begin) * TIMESTAMP_FRAMES
    return segments, next_seek, single_ending


def _end_of(segments: list[dict]) -> float | None:
    """The end of the last word of the segments, else of the last segment (whisper's ``get_end``)."""
    return next(
        (w["end"] for s in reversed(segments) for w in reversed(s.get("words", ()))),
        segments[-1]["end"] if segments else None,
    )


def decode_chunks(
    model: Any,
    samples: np.ndarray,
    chunks: Sequence[Span],
    options: TranscribeOptions,
    *,
    languages: Sequence[str] | None = None,
    batch_size: int | None = None,
    hook: Hook | None = None,
) -> Transcript:
    """Transcribe the ``chunks`` of 16 kHz mono ``samples`` (on the CPU) with a whisper ``model``
    (openai-whisper's ``Whisper`` or faster-whisper's ``WhisperModel``).

    Each chunk is decoded like the library's own ``transcribe`` on its audio alone, with no prompt
    from earlier text: beam search at temperature 0, and whisper's temperature fallback (seeded) for
    a window failing the quality thresholds; a window judged silent is skipped. The windows of all
    chunks are batched ``batch_size`` at a time (default ``options.batch_size``). The language is
    ``options.language``, else each chunk's of ``languages``, else detected on the first chunk. Times
    are seconds from the start of ``samples``. ``hook(done, total)`` reports progress in mel frames (10 ms).
    """
    import torch

    steps = _steps(model, options.compute_type)
    states = [_Chunk.of(span, language) for span, language in zip(chunks, languages or [None] * len(chunks))]
    states = [s for s in states if s.frames > 0]
    if not states:
        return Transcript(None if options.language == AUTO_LANGUAGE else options.language, ())
    progress = _Progress(sum(s.frames for s in states), hook)
    with torch.no_grad():
        for language, group in _by_language(steps, samples, states, options):
            tokenizer = steps.start(language, options)
            _decode_windows(steps, tokenizer, samples, group, options, batch_size or options.batch_size, progress)
            for state in group:
                state.language = language
    segments = tuple(seg for s in states for seg in _segments(s))
    return Transcript(_main_language(states), segments)


@dataclass
class _Progress:
    """Mel frames decoded so far, reported to a hook."""

    total: int
    hook: Hook | None
    done: int = 0

    def advance(self, frames: int) -> None:
        self.done += frames

    def report(self) -> None:
        if self.hook is not None:
            self.hook(self.done, self.total)


def _by_language(
    steps: _WhisperSteps | _FasterWhisperSteps, samples: np.ndarray, states: list[_Chunk], options: TranscribeOptions
) -> list[tuple[str, list[_Chunk]]]:
    """The chunks grouped by the language they are decoded in."""
    if options.language != AUTO_LANGUAGE:
        return [(options.language, states)]
    if any(s.language is None for s in states):
        return [(steps.detect_language(samples, states[0]), states)]
    ordered = sorted(states, key=lambda s: s.language)
    return [(language, list(group)) for language, group in itertools.groupby(ordered, key=lambda s: s.language)]


def _main_language(states: list[_Chunk]) -> str | None:
    """The language of the most speech (in mel frames)."""
    frames: dict[str, int] = {}
    for state in states:
        frames[state.language] = frames.get(state.language, 0) + state.frames
    return max(frames, key=frames.get) if frames else None


def _decode_windows(
    steps: _WhisperSteps | _FasterWhisperSteps,
    tokenizer: Any,
    samples: np.ndarray,
    states: list[_Chunk],
    options: TranscribeOptions,
    batch_size: int,
    progress: _Progress,
) -> None:
    """Decode every window of ``states`` (one language), ``batch_size`` windows at a time."""
    pending = states
    while pending:  # one round per window position: most chunks need one window
        unfinished = []
        for first in range(0, len(pending), batch_size):
            batch = pending[first : first + batch_size]
            for chunk, decoded in zip(batch, _decode_with_fallback(steps, tokenizer, samples, batch, options)):
                seek = _add_window(steps, tokenizer, chunk, decoded, options)
                progress.advance(min(seek, chunk.frames) - chunk.seek)
                chunk.seek = seek
                if seek < chunk.frames:
                    unfinished.append(chunk)
            progress.report()
        pending = unfinished


def _add_window(steps: Any, tokenizer: Any, chunk: _Chunk, decoded: _Decoded, options: TranscribeOptions) -> int:
    """Add a decoded window's segments (and words) to its chunk; returns the chunk's next seek."""
    if _is_silence(decoded, options):
        return chunk.seek + chunk.size
    segments, seek, single_ending = _split_window(decoded.tokens, tokenizer, chunk.seek, chunk.size)
    if options.word_timestamps:
        steps.align(segments, decoded, chunk)
        end_s = _end_of(segments)
        if not single_ending and end_s is not None and end_s > chunk.seek / FRAMES_PER_SECOND:
            seek = round(end_s * FRAMES_PER_SECOND)
        chunk.last_speech_s = end_s if end_s is not None else chunk.last_speech_s
    for segment in segments:
        segment.update(avg_logprob=decoded.avg_logprob, no_speech_prob=decoded.no_speech_prob)
    chunk.segments.extend(segments)
    return seek if seek > chunk.seek else chunk.seek + chunk.size  # never decode a window twice


def _decode_with_fallback(
    steps: Any, tokenizer: Any, samples: np.ndarray, batch: list[_Chunk], options: TranscribeOptions
) -> list[_Decoded]:
    """Each window of ``batch`` decoded at the first of ``options.temperatures`` whose result passes
    whisper's quality checks; those no temperature passes keep their best try (faster-whisper's pick:
    the highest mean log-probability, preferring texts under the compression threshold).

    Sampling is seeded (``options.seed`` plus the attempt): on openai-whisper the same input and
    options give the same text. CTranslate2 (faster-whisper) seeds its sampler once per worker thread
    and process, so there a window that falls back can differ between runs.
    """
    tries: list[list[_Decoded]] = [[] for _ in batch]
    todo = list(range(len(batch)))
    for attempt, temperature in enumerate(options.temperatures):
        with seeded(options.seed + attempt) if temperature > 0 else contextlib.nullcontext():
            results = steps.decode(samples, [batch[i] for i in todo], temperature)
        failed = []
        for index, result in zip(todo, results):
            text = tokenizer.decode([t for t in result.tokens if t < tokenizer.eot])
            result = replace(result, temperature=temperature, compression_ratio=compression_ratio(text))
            tries[index].append(result)
            if _needs_fallback(result, options):
                failed.append(index)
        todo = failed
        if not todo:
            break
    return [attempts[-1] if index not in todo else _best_try(attempts, options) for index, attempts in enumerate(tries)]


def _needs_fallback(decoded: _Decoded, options: TranscribeOptions) -> bool:
    """Whisper's rule: too repetitive, or too unlikely unless the window is judged silent."""
    if _is_silence(decoded, options):
        return False
    repetitive = (
        options.compression_ratio_threshold is not None
        and decoded.compression_ratio > options.compression_ratio_threshold
    )
    unlikely = options.log_prob_threshold is not None and decoded.avg_logprob < options.log_prob_threshold
    return repetitive or unlikely


def _is_silence(decoded: _Decoded, options: TranscribeOptions) -> bool:
    """Whisper's no-speech rule: likely silent, and not confidently decoded."""
    return (
        options.no_speech_threshold is not None
        and decoded.no_speech_prob > options.no_speech_threshold
        and (options.log_prob_threshold is None or decoded.avg_logprob < options.log_prob_threshold)
    )


def _best_try(attempts: list[_Decoded], options: TranscribeOptions) -> _Decoded:
    threshold = options.compression_ratio_threshold
    readable = [a for a in attempts if threshold is None or a.compression_ratio <= threshold]
    return max(readable or attempts, key=lambda a: a.avg_logprob)


def _segments(chunk: _Chunk) -> list[Segment]:
    """A chunk's non-empty segments with times from the start of the track."""
    offset = chunk.span.start_s
    return [
        Segment(
            offset + s["start"],
            offset + s["end"],
            s["text"],
            float(s["avg_logprob"]),
            float(s["no_speech_prob"]),
            tuple(
                Word(w["word"], offset + w["start"], offset + w["end"], float(w["probability"]))
                for w in s.get("words", ())
            ),
            tokens=tuple(s["tokens"]),
            language=chunk.language,
        )
        for s in chunk.segments
        if s["start"] != s["end"] and s["text"].strip()
    ]


def transcribe_speech(
    model: Any,
    vad: Any,
    samples: np.ndarray,
    options: TranscribeOptions,
    *,
    batch_size: int | None = None,
    hook: Hook | None = None,
) -> Transcript:
    """Voice activity, chunks and batched decoding of 16 kHz mono ``samples`` (steps 1 to 3).

    With ``language_per_chunk`` (and language ``auto``), each speech region's language is detected
    first and only regions of one language are merged into a chunk, so a code-switched recording is
    decoded in each of its languages. Holds ``model`` and ``vad``
    (:func:`~voxflow.tasks.kit.models.holding`): whisper hooks its kv-cache onto the shared decoder
    for every decode.
    """
    with holding(model, vad):
        regions = detect_speech(samples, vad, options)
        if options.language_per_chunk and options.language == AUTO_LANGUAGE:
            chunks, languages = merge_by_language(regions, region_languages(model, samples, regions, options), options)
        else:
            chunks, languages = merge_spans(regions, options.chunk_s), None
        return decode_chunks(model, samples, chunks, options, languages=languages, batch_size=batch_size, hook=hook)


MIN_LANGUAGE_S = 1.0  # a shorter region takes the language of the region before it (or after it)


def region_languages(model: Any, samples: np.ndarray, regions: Sequence[Span], options: TranscribeOptions) -> list[str]:
    """The detected language of each speech region; a region under ``MIN_LANGUAGE_S`` takes the
    language of the region before it (the first long one's when it starts the recording)."""
    import torch

    if not regions:
        return []
    steps = _steps(model, options.compute_type)
    with torch.no_grad():
        detected = [
            steps.detect_language(samples, _Chunk.of(r)) if r.duration_s >= MIN_LANGUAGE_S else None for r in regions
        ]
        first = next((language for language in detected if language), None)
        last = first or steps.detect_language(samples, _Chunk.of(regions[0]))
    filled = []
    for language in detected:
        last = language or last
        filled.append(last)
    return filled


def merge_by_language(
    regions: Sequence[Span], languages: Sequence[str], options: TranscribeOptions
) -> tuple[list[Span], list[str]]:
    """Consecutive regions of one language merged into chunks (:func:`merge_spans`); each chunk's language."""
    chunks: list[Span] = []
    chunk_languages: list[str] = []
    for language, group in itertools.groupby(zip(regions, languages), key=lambda pair: pair[1]):
        merged = merge_spans([region for region, _ in group], options.chunk_s)
        chunks.extend(merged)
        chunk_languages.extend([language] * len(merged))
    return chunks, chunk_languages


# ---- second pass --------------------------------------------------------------------------------

SECOND_PASS_PAD_S = 0.2  # audio kept around a weak segment when it is decoded again


@dataclass(frozen=True)
class Recognized:
    """A transcript and the segments a second pass decoded but did not keep (the losers)."""

    transcript: Transcript
    alternatives: tuple[Segment, ...] = ()


def labelled(transcript: Transcript, model: str | None) -> Transcript:
    return transcript.with_segments(replace(s, model=model) for s in transcript.segments)


def second_pass(
    first: Transcript, model: Any, samples: np.ndarray, options: TranscribeOptions, *, batch_size: int
) -> Recognized:
    """Each segment of ``first`` whose mean log-probability is below ``options.min_confidence`` decoded
    again by ``model`` (the second-pass model), on its own span (padded ``SECOND_PASS_PAD_S``), in
    the segment's language. The result with the higher mean log-probability (duration-weighted over
    the second pass's segments) wins; the other is returned as an alternative."""
    kept: list[Segment] = []
    alternatives: list[Segment] = []
    pad = round(SECOND_PASS_PAD_S * SAMPLE_RATE_HZ)
    for segment in first.segments:
        if not _weak(segment, options.min_confidence):
            kept.append(segment)
            continue
        span = Span(
            max(0, round(segment.start_s * SAMPLE_RATE_HZ) - pad),
            min(len(samples), round(segment.end_s * SAMPLE_RATE_HZ) + pad),
        )
        language = segment.language or first.language or options.language
        redone = decode_chunks(model, samples, [span], replace(options, language=language), batch_size=batch_size)
        redone = labelled(redone, options.second_pass_model).segments
        if redone and _confidence(redone) > segment.avg_logprob:
            kept.extend(replace(s, language=s.language or language) for s in redone)
            alternatives.append(segment)
        else:
            kept.append(segment)
            alternatives.extend(redone)
    return Recognized(first.with_segments(kept), tuple(alternatives))


def _confidence(segments: Sequence[Segment]) -> float:
    """Mean log-probability of segments, weighted by their durations."""
    weights = np.array([max(s.end_s - s.start_s, 1e-3) for s in segments])
    return float(np.average([s.avg_logprob for s in segments], weights=weights))


def recognize(
    models: tuple[Any, Any | None], vad: Any, samples: np.ndarray, options: TranscribeOptions, *, batch_size: int
) -> Recognized:
    """:func:`transcribe_speech` with ``models[0]``, then the :func:`second_pass` with ``models[1]`` when given."""
    first_model, second_model = models
    first = labelled(transcribe_speech(first_model, vad, samples, options, batch_size=batch_size), options.model)
    if second_model is None:
        return Recognized(first)
    with holding(second_model):
        return second_pass(first, second_model, samples, options, batch_size=batch_size)


# ---- speakers -----------------------------------------------------------------------------------


class _Turns:
    """Diarization turns as arrays, for finding the speakers of a time span."""

    def __init__(self, turns: Sequence[Turn]) -> None:
        ordered = sorted(turns, key=lambda t: (t.start_s, t.end_s))
        self.starts = np.array([t.start_s for t in ordered], dtype=np.float64)
        self.ends = np.array([t.end_s for t in ordered], dtype=np.float64)
        self.speakers = [t.speaker for t in ordered]

    def speaker_of(self, start_s: float, end_s: float) -> tuple[str | None, bool]:
        """The speaker a span overlaps most and whether turns of two or more speakers overlap it.

        Overlap is summed per speaker; a span of zero length overlaps the turns containing it (with
        zero overlap each). A span overlapping no turn takes the nearest turn's speaker (smallest gap;
        ties: the earlier turn). Ties in overlap go to the speaker of the earlier turn.
        """
        if not self.speakers:
            return None, False
        overlap = np.minimum(self.ends, end_s) - np.maximum(self.starts, start_s)
        touching = overlap > 0 if end_s > start_s else (self.starts <= start_s) & (self.ends >= start_s)
        if not touching.any():
            gaps = np.maximum(self.starts - end_s, start_s - self.ends)
            return self.speakers[int(np.argmin(gaps))], False
        totals: dict[str, float] = {}
        for index in np.flatnonzero(touching):
            totals[self.speakers[index]] = totals.get(self.speakers[index], 0.0) + max(float(overlap[index]), 0.0)
        return max(totals, key=lambda speaker: totals[speaker]), len(totals) > 1


def assign_speakers(transcript: Transcript, turns: Sequence[Turn]) -> Transcript:
    """Each segment and word labelled with the diarized speaker it overlaps most (see ``_Turns``).

    A word overlapped by turns of two or more speakers is flagged ``overlapped``. Without turns the
    transcript is returned unchanged (no speakers).
    """
    if not turns:
        return transcript
    index = _Turns(turns)

    def labelled_word(word: Word) -> Word:
        speaker, overlapped = index.speaker_of(word.start_s, word.end_s)
        return replace(word, speaker=speaker, overlapped=overlapped)

    return transcript.with_segments(
        replace(s, speaker=index.speaker_of(s.start_s, s.end_s)[0], words=tuple(labelled_word(w) for w in s.words))
        for s in transcript.segments
    )


SENTENCE_ENDS = (".", "?", "!", "…", "。", "？", "！")


def split_segments(transcript: Transcript) -> Transcript:
    """Segments cut between their words at every speaker change and sentence end.

    A sentence ends at a word ending in ``.``, ``?`` or ``!`` (or their CJK forms) when the next word
    does not start in lower case (``e.g. this`` stays whole). Each piece keeps its words and their
    times unchanged; its text is its words' text, its speaker theirs, its start the first word's (the
    first piece: the segment's) and its end the last word's (the last piece: the segment's). The
    confidences are the segment's window's.
    """
    return transcript.with_segments(piece for segment in transcript.segments for piece in _pieces(segment))


def _cuts_before(words: Sequence[Word]) -> list[int]:
    """Indices of the words that start a new segment (speaker change or new sentence)."""
    cuts = []
    for i in range(1, len(words)):
        before, word = words[i - 1], words[i]
        new_sentence = before.word.rstrip().endswith(SENTENCE_ENDS) and not word.word.lstrip()[:1].islower()
        if word.speaker != before.speaker or new_sentence:
            cuts.append(i)
    return cuts


def _pieces(segment: Segment) -> list[Segment]:
    cuts = _cuts_before(segment.words)
    if not cuts:
        return [segment]
    bounds = [0, *cuts, len(segment.words)]
    last = len(bounds) - 2
    pieces = []
    for k, (first, end) in enumerate(itertools.pairwise(bounds)):
        words = segment.words[first:end]
        start_s = min(segment.start_s, words[0].start_s) if k == 0 else words[0].start_s
        end_s = max(segment.end_s, words[-1].end_s) if k == last else words[-1].end_s
        speaker = words[0].speaker if words[0].speaker is not None else segment.speaker
        pieces.append(
            replace(
                segment,
                start_s=start_s,
                end_s=end_s,
                text="".join(w.word for w in words),
                words=words,
                speaker=speaker,
                tokens=(),
            )
        )
    return pieces


# ---- channels -----------------------------------------------------------------------------------

UNCORRELATED = 0.3  # |Pearson r| below which two channels are taken to carry different talkers
CORRELATION_BLOCK = 1 << 20  # samples per block of the correlation's sums


def channel_correlation(samples: np.ndarray) -> float | None:
    """The smallest |Pearson correlation| between any two channels of ``(channels, samples)`` audio
    (None for mono or a silent channel)."""
    if samples.shape[0] < 2:
        return None
    channels = samples.shape[0]
    sums, products = np.zeros(channels), np.zeros((channels, channels))
    for start in range(0, samples.shape[1], CORRELATION_BLOCK):  # float64 sums, one block at a time:
        block = samples[:, start : start + CORRELATION_BLOCK].astype(np.float64)  # no copy of a long file
        sums += block.sum(axis=1)
        products += block @ block.T
    count = samples.shape[1]
    covariance = products / count - np.outer(sums, sums) / count**2
    variance = np.diag(covariance)
    if np.any(variance <= 0):
        return None
    return float(np.abs(covariance / np.sqrt(np.outer(variance, variance))).min())


def channel_suggestion(samples: np.ndarray, options: TranscribeOptions) -> str | None:
    """A hint to use ``per_channel`` when the channels look like one talker each (nearly uncorrelated)."""
    if options.per_channel:
        return None
    r = channel_correlation(samples)
    if r is None or r >= UNCORRELATED:
        return None
    return (
        f"the {samples.shape[0]} channels are nearly uncorrelated (|r| = {r:.2f}): if each holds one talker, "
        "transcribe them with per_channel (voxflow transcribe --per-channel)"
    )


def channel_speaker(channel: int) -> str:
    return f"CHANNEL_{channel}"


def transcribe_channels(
    models: tuple[Any, Any | None],
    vad: Any,
    samples: np.ndarray,
    rate: int,
    options: TranscribeOptions,
    *,
    batch_size: int,
) -> Recognized:
    """Each channel of ``(channels, samples)`` audio transcribed on its own (:func:`recognize`), its
    segments and words labelled ``CHANNEL_<n>``, all merged in time order; the language is the one
    of the most speech."""
    kept: list[Segment] = []
    alternatives: list[Segment] = []
    for channel in range(samples.shape[0]):
        heard = recognize(
            models, vad, whisper_audio(samples[channel : channel + 1], rate), options, batch_size=batch_size
        )
        speaker = channel_speaker(channel)
        kept.extend(_as_speaker(s, speaker) for s in heard.transcript.segments)
        alternatives.extend(_as_speaker(s, speaker) for s in heard.alternatives)
    kept.sort(key=lambda s: (s.start_s, s.end_s))
    durations: dict[str, float] = {}
    for s in kept:
        durations[s.language or ""] = durations.get(s.language or "", 0.0) + s.end_s - s.start_s
    language = max(durations, key=durations.get) if durations else None
    return Recognized(Transcript(language or None, tuple(kept)), tuple(alternatives))


def _as_speaker(segment: Segment, speaker: str) -> Segment:
    return replace(segment, speaker=speaker, words=tuple(replace(w, speaker=speaker) for w in segment.words))


# ---- the task -----------------------------------------------------------------------------------


def read_turns(diarization: Any, settings: StoreSettings) -> list[Turn]:
    """The (overlapping) turns of a diarize result's ``rttm`` artifact; none without diarization."""
    if diarization is None:
        return []
    rttm = getattr(diarization, "rttm", None)
    if not isinstance(rttm, ArtifactRef):
        raise TypeError(
            f"diarization must be a diarize result with an 'rttm' artifact, got {type(diarization).__name__}"
        )
    return parse_rttm(read_bytes(rttm, settings).decode())


def segment_id(input_sha256: str, params_hash: str, index: int | str) -> str:
    """The ``segments`` key of a transcript segment: same inputs and options, same id."""
    return hashlib.sha256(f"{input_sha256}/{STAGE}/{params_hash}/{index}".encode()).hexdigest()[:32]


def segment_rows(
    transcript: Transcript, file_sha256: str, json_uri: str, min_confidence: float | None = None
) -> list[dict]:
    """The ``segments`` catalog rows of a transcript written by the current stage run; a segment whose
    mean token log-probability is below ``min_confidence`` is flagged ``low_confidence``."""
    run = current_run()
    return [
        _segment_row(s, segment_id(run.input_sha256 or "", run.params_hash, index), index, transcript.language)
        | {"file_sha256": file_sha256, "artifact_uri": json_uri, "low_confidence": _weak(s, min_confidence)}
        for index, s in enumerate(transcript.segments)
    ]


def alternative_rows(
    segments: Sequence[Segment], language: str | None, file_sha256: str, json_uri: str, min_confidence: float | None
) -> list[dict]:
    """Rows of the segments a second pass decoded but did not keep: ``chosen`` false, no ``index``."""
    run = current_run()
    return [
        _segment_row(s, segment_id(run.input_sha256 or "", run.params_hash, f"alternative-{k}"), None, language)
        | {
            "file_sha256": file_sha256,
            "artifact_uri": json_uri,
            "low_confidence": _weak(s, min_confidence),
            "chosen": False,
        }
        for k, s in enumerate(segments)
    ]


def _weak(segment: Segment, min_confidence: float | None) -> bool:
    return min_confidence is not None and segment.avg_logprob < min_confidence


def _segment_row(s: Segment, key: str, index: int | None, language: str | None) -> dict:
    run = current_run()
    return {
        "segment_id": key,
        "stage": STAGE,
        "params_hash": run.params_hash,
        "index": index,
        "speaker": s.speaker,
        "start_s": s.start_s,
        "end_s": s.end_s,
        "text": s.text.strip(),
        "language": s.language or language,
        "avg_logprob": s.avg_logprob,
        "no_speech_prob": s.no_speech_prob,
        "model": s.model,
        "chosen": True,
        "words": [
            {
                "word": w.word,
                "start_s": w.start_s,
                "end_s": w.end_s,
                "probability": w.probability,
                "speaker": w.speaker,
                "overlapped": w.overlapped,
            }
            for w in s.words
        ],
        "flow_run_id": run.flow_run_id,
    }


def write_transcript(
    settings: StoreSettings,
    audio: ArtifactRef,
    transcript: Transcript,
    source_sha256: str,
    min_confidence: float | None = None,
    alternatives: Sequence[Segment] = (),
    suggestion: str | None = None,
) -> TranscribeResult:
    """Store the JSON artifact, its SRT, VTT, TXT and TSV forms and the ``segments`` rows of a transcript
    (and of the second pass's ``alternatives``, not chosen)."""
    json_ref = write_artifact(settings, JSON_NAME, subtitles.to_json(transcript))
    texts = [write_artifact(settings, name, write(transcript).encode()) for name, write in TEXT_FORMATS.items()]
    rows = segment_rows(transcript, source_sha256, json_ref.uri, min_confidence)
    others = alternative_rows(alternatives, transcript.language, source_sha256, json_ref.uri, min_confidence)
    Catalog(shared_store(settings)).append("segments", rows + others)
    return TranscribeResult(
        audio,
        json_ref,
        *texts,
        transcript.language,
        len(transcript.segments),
        len(transcript.words),
        transcript.speakers,
        source_sha256,
        languages=tuple(sorted({s.language for s in transcript.segments if s.language})),
        low_confidence=sum(row["low_confidence"] for row in rows),
        suggestion=suggestion,
    )


SPEC = StageSpec(STAGE, code_version=CODE_VERSION, gpu=True, inputs=("audio", "diarization"))


@stage_task(SPEC)
def transcribe_audio(
    audio: Any, diarization: Any | None, options: TranscribeOptions, settings: StoreSettings, models: ModelSettings
) -> TranscribeResult:
    """Transcribe one file's speech; with a diarization, each segment and word gets its speaker.

    Segments are cut at speaker changes and sentence ends. ``per_channel``: each channel on its own,
    speaker = channel (the diarization is not used).
    """
    options = options.resolved(models)
    ref = audio_input(audio)
    samples, rate = read_audio(ref, settings)
    turns = read_turns(diarization, settings)
    device = models.torch_device()
    model = load_transcribe_model(options.model, device, models.model_dir, options.backend, options.compute_type)
    second = (
        load_transcribe_model(
            options.second_pass_model, device, models.model_dir, options.backend, options.compute_type
        )
        if options.second_pass_model
        else None
    )
    vad = load_vad_model()
    if options.per_channel and samples.shape[0] > 1:
        heard = halving_batch_on_oom(
            lambda size: transcribe_channels((model, second), vad, samples, rate, options, batch_size=size),
            options.batch_size,
        )
    else:
        speech = whisper_audio(samples, rate)
        heard = halving_batch_on_oom(
            lambda size: recognize((model, second), vad, speech, options, batch_size=size), options.batch_size
        )
        heard = Recognized(
            assign_speakers(heard.transcript, turns),
            assign_speakers(Transcript(None, heard.alternatives), turns).segments,
        )
    transcript = split_segments(heard.transcript)
    if options.drop_low_confidence:
        transcript = transcript.with_segments(s for s in transcript.segments if not _weak(s, options.min_confidence))
    suggestion = channel_suggestion(samples, options)
    if suggestion:
        log.warning("%s: %s", ref.uri.rsplit("/", 1)[-1], suggestion)
    return write_transcript(
        settings,
        ref,
        transcript,
        source_sha256_of(audio),
        options.min_confidence,
        alternatives=heard.alternatives,
        suggestion=suggestion,
    )
