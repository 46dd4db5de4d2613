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
import hashlib
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
from voxflow.tasks.kit.models import (
    RESIDENT,
    ModelNotFound,
    ModelSettings,
    ModelSource,
    holding,
    hub_errors,
    register_model_source,
)
from voxflow.tasks.kit.options import Options
from voxflow.tasks.kit.outputs import audio_input, read_audio, read_bytes, source_sha256_of, write_artifact
from voxflow.tasks.kit.runs import current_run, halving_batch_on_oom
from voxflow.tasks.kit.stage import StageSpec, stage_task

STAGE = "transcribe"
CODE_VERSION = "2"  # 2: SRT/VTT by whisper's writers, TXT and TSV added
LIBRARY = "whisper"
FASTER_WHISPER_LIBRARY = "faster-whisper"
DEFAULT_MODEL = "turbo"
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


@dataclass(frozen=True)
class TranscribeOptions(Options):
    """How speech becomes segments and words."""

    model: Annotated[
        str,
        Field(
            description="Whisper model: <model dir>/whisper/<name>.pt (faster-whisper: <model dir>/faster-whisper/<name>/) or an official name."
        ),
    ] = DEFAULT_MODEL
    backend: Annotated[
        Backend, Field(description="Decoder: openai-whisper (PyTorch) or faster-whisper (CTranslate2).")
    ] = "whisper"
    language: Annotated[
        str,
        Field(description="Whisper language code, or 'auto': detected once on the first speech chunk."),
        AfterValidator(whisper_language),
    ] = AUTO_LANGUAGE
    chunk_s: Annotated[
        float, Field(gt=0, le=WINDOW_S, description="Longest speech chunk decoded as one window, seconds.")
    ] = 30.0
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
        0.03
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

    @property
    def sha256(self) -> str:
        return self.json.sha256

    def summary(self) -> dict:
        """What a summary table shows of a transcribed file."""
        return {
            "language": self.language,
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


def _official_file(name: str) -> str | None:
    """The file name whisper's own download gives an official model (``turbo`` -> ``large-v3-turbo.pt``)."""
    from whisper import _MODELS

    return _MODELS[name].rsplit("/", 1)[-1] if name in _MODELS else None


def local_checkpoint(name: str, settings: ModelSettings) -> Path | None:
    """``<model dir>/whisper/<name>.pt``, else the official download's file name there, else None."""
    official = _official_file(name)
    candidates = [f"{name}.pt"] + ([official] if official else [])
    return next((p for p in (settings.local(LIBRARY, c) for c in candidates) if p is not None), None)


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
            raise ModelNotFound(
                f"whisper model {name!r} is not in the model folder and could not be downloaded "
                f"({e}); run 'voxflow models pull' where there is internet"
            ) from e


def _load_faster_whisper(name: str, device: str, settings: ModelSettings) -> Any:
    import torch
    from faster_whisper import WhisperModel

    folder = settings.local(FASTER_WHISPER_LIBRARY, name)
    root = str(settings.library_dir(FASTER_WHISPER_LIBRARY)) if settings.folder else None
    with hub_errors(name):  # a name without a local folder: faster-whisper's Hugging Face download
        return WhisperModel(
            str(folder) if folder else name, device=device, cpu_threads=torch.get_num_threads(), download_root=root
        )


def load_transcribe_model(
    name: str, device: str, model_dir: str | Path | None = None, backend: Backend = "whisper"
) -> Any:
    """Whisper ``name`` on ``device``, loaded once per process: openai-whisper's ``Whisper``, or for
    the ``faster-whisper`` backend a ``faster_whisper.WhisperModel`` (CTranslate2).

    whisper: ``<model dir>/whisper/<name>.pt`` is loaded by path (whisper's own download would replace
    a file whose sha256 differs from the official one); an official name without one is downloaded
    by whisper into ``<model dir>/whisper``. faster-whisper: the CTranslate2 folder
    ``<model dir>/faster-whisper/<name>/``, else faster-whisper's download of ``name`` from the hub.
    """
    settings = ModelSettings(model_dir=str(model_dir) if model_dir else None)
    load = _load_faster_whisper if backend == "faster-whisper" else _load_whisper
    return RESIDENT.get(
        (backend, name, str(settings.folder)), device, lambda: load(name, device, settings), stage=STAGE
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


register_model_source(ModelSource(STAGE, LIBRARY, DEFAULT_MODEL, pull_whisper, local_checkpoint))


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
    segments: list[dict] = field(default_factory=list)

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


class _WhisperSteps:
    """openai-whisper's steps on windows: log-mel on the device, batched ``whisper.decode``, and
    ``whisper.timing``'s word alignment on the decode's encoder output."""

    def __init__(self, model: Any) -> None:
        import torch

        self.model = model
        self.dtype = torch.float16 if model.device.type == "cuda" else torch.float32

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
        import whisper
        from whisper.tokenizer import get_tokenizer

        model = self.model
        self.decoding = whisper.DecodingOptions(
            language=language, temperature=0.0, sample_len=options.max_tokens, fp16=model.device.type == "cuda"
        )
        self.tokenizer = get_tokenizer(
            model.is_multilingual, num_languages=model.num_languages, language=language, task="transcribe"
        )
        return self.tokenizer

    def decode(self, samples: np.ndarray, batch: list[_Chunk]) -> list[_Decoded]:
        import torch
        import whisper

        mels = torch.stack([self.mel(samples, chunk) for chunk in batch])
        return [
            _Decoded(r.tokens, r.avg_logprob, r.no_speech_prob, r.audio_features)
            for r in whisper.decode(self.model, mels, self.decoding)
        ]

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
        self.tokenizer = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
        )
        self.prompt = model.get_prompt(self.tokenizer, [], without_timestamps=False)
        self.generate = dict(
            beam_size=1,
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

    def decode(self, samples: np.ndarray, batch: list[_Chunk]) -> list[_Decoded]:
        encoded = self.model.encode(np.stack([self.mel(samples, chunk) for chunk in batch]))
        results = self.model.model.generate(encoded, [self.prompt] * len(batch), **self.generate)
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


def _steps(model: Any) -> _WhisperSteps | _FasterWhisperSteps:
    return _FasterWhisperSteps(model) if type(model).__module__.startswith("faster_whisper") else _WhisperSteps(model)


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
    batch_size: int | None = None,
    hook: Hook | None = None,
) -> Transcript:
    """Transcribe the ``chunks`` of 16 kHz mono ``samples`` (on the CPU) with a whisper ``model``
    (openai-whisper's ``Whisper`` or faster-whisper's ``WhisperModel``).

    Each chunk is decoded like the library's own ``transcribe`` on its audio alone, with temperature
    0, no prompt from earlier text and no fallback or silence skipping; the windows of all chunks are
    batched ``batch_size`` at a time (default ``options.batch_size``). Times are seconds from the
    start of ``samples``. ``hook(done, total)`` reports progress in mel frames (10 ms).
    """
    import torch

    steps = _steps(model)
    batch_size = batch_size or options.batch_size
    states = [_Chunk(span, (span.end - span.start) // HOP_LENGTH) for span in chunks]
    states = [s for s in states if s.frames > 0]
    if not states:
        return Transcript(None if options.language == AUTO_LANGUAGE else options.language, ())
    with torch.no_grad():
        language = steps.detect_language(samples, states[0]) if options.language == AUTO_LANGUAGE else options.language
        tokenizer = steps.start(language, options)
        total, done, pending = sum(s.frames for s in states), 0, states
        while pending:  # one round per window position: most chunks need one window
            unfinished = []
            for first in range(0, len(pending), batch_size):
                batch = pending[first : first + batch_size]
                for chunk, decoded in zip(batch, steps.decode(samples, batch)):
                    segments, seek, single_ending = _split_window(decoded.tokens, tokenizer, chunk.seek, chunk.size)
                    if options.word_timestamps:
                        steps.align(segments, decoded, chunk)
                        end_s = _end_of(segments)
                        if not single_ending and end_s is not None and end_s > chunk.seek / FRAMES_PER_SECOND:
                            seek = round(end_s * FRAMES_PER_SECOND)
                        chunk.last_speech_s = end_s if end_s is not None else chunk.last_speech_s
                    seek = seek if seek > chunk.seek else chunk.seek + chunk.size  # never decode a window twice
                    for segment in segments:
                        segment.update(avg_logprob=decoded.avg_logprob, no_speech_prob=decoded.no_speech_prob)
                    chunk.segments.extend(segments)
                    done += min(seek, chunk.frames) - chunk.seek
                    chunk.seek = seek
                    if seek < chunk.frames:
                        unfinished.append(chunk)
                if hook is not None:
                    hook(done, total)
            pending = unfinished
    return Transcript(language, tuple(seg for s in states for seg in _segments(s)))


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

    Holds ``model`` and ``vad`` (:func:`~voxflow.tasks.kit.models.holding`): whisper hooks its kv-cache onto the
    shared decoder for every decode.
    """
    with holding(model, vad):
        chunks = merge_spans(detect_speech(samples, vad, options), options.chunk_s)
        return decode_chunks(model, samples, chunks, options, batch_size=batch_size, hook=hook)


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


def segment_id(input_sha256: str, params_hash: str, index: int) -> str:
    """The ``segments`` key of a transcript segment: same inputs and options, same id."""
    return hashlib.sha256(f"{input_sha256}/{STAGE}/{params_hash}/{index}".encode()).hexdigest()[:32]


def segment_rows(transcript: Transcript, file_sha256: str, json_uri: str) -> list[dict]:
    """The ``segments`` catalog rows of a transcript written by the current stage run."""
    run = current_run()
    return [
        {
            "segment_id": segment_id(run.input_sha256 or "", run.params_hash, index),
            "file_sha256": file_sha256,
            "stage": STAGE,
            "params_hash": run.params_hash,
            "index": index,
            "speaker": s.speaker,
            "start_s": s.start_s,
            "end_s": s.end_s,
            "text": s.text.strip(),
            "language": transcript.language,
            "avg_logprob": s.avg_logprob,
            "no_speech_prob": s.no_speech_prob,
            "artifact_uri": json_uri,
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
        for index, s in enumerate(transcript.segments)
    ]


def write_transcript(
    settings: StoreSettings, audio: ArtifactRef, transcript: Transcript, source_sha256: str
) -> TranscribeResult:
    """Store the JSON artifact, its SRT, VTT, TXT and TSV forms and the ``segments`` rows of a transcript."""
    json_ref = write_artifact(settings, JSON_NAME, subtitles.to_json(transcript))
    texts = [write_artifact(settings, name, write(transcript).encode()) for name, write in TEXT_FORMATS.items()]
    Catalog(shared_store(settings)).append("segments", segment_rows(transcript, source_sha256, json_ref.uri))
    return TranscribeResult(
        audio,
        json_ref,
        *texts,
        transcript.language,
        len(transcript.segments),
        len(transcript.words),
        transcript.speakers,
        source_sha256,
    )


SPEC = StageSpec(STAGE, code_version=CODE_VERSION, gpu=True, inputs=("audio", "diarization"))


@stage_task(SPEC)
def transcribe_audio(
    audio: Any, diarization: Any | None, options: TranscribeOptions, settings: StoreSettings, models: ModelSettings
) -> TranscribeResult:
    """Transcribe one file's speech; with a diarization, each segment and word gets its speaker."""
    ref = audio_input(audio)
    samples, rate = read_audio(ref, settings)
    speech = whisper_audio(samples, rate)
    turns = read_turns(diarization, settings)
    device = models.torch_device()
    model = load_transcribe_model(options.model, device, models.model_dir, options.backend)
    vad = load_vad_model()
    transcript = halving_batch_on_oom(
        lambda size: transcribe_speech(model, vad, speech, options, batch_size=size), options.batch_size
    )
    return write_transcript(settings, ref, assign_speakers(transcript, turns), source_sha256_of(audio))
