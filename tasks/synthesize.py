"""Synthesize: lines of text to 24 kHz speech with Qwen3-TTS (12 Hz codec), batched.

Three modes, each with its own model kind (``tts_model_type`` in the model's ``config.json``):

* ``clone``: a Base model speaks in the voice of a reference recording. The reference is encoded
  once into a :class:`VoicePrompt` (its codec codes, its transcript and a speaker embedding; only
  the embedding in ``x_vector_only`` mode) by the ``voice_prompt`` stage, stored, and reused by
  every later synthesis with that voice;
* ``design``: a VoiceDesign model speaks in a voice described in words (``voice_description``);
* ``custom``: a CustomVoice model speaks as one of its built-in speakers, optionally following a
  style ``instruction`` (the 1.7B models only: the 0.6B ones ignore instructions).

How :func:`synthesize` runs a list of lines:

1. **split**: a text longer than ``max_chars`` is cut at sentence ends (``.!?…`` and ``。！？``),
   a sentence that is still too long at clause marks, then between words, then (text without
   spaces) every ``max_chars`` characters (:func:`split_text`);
2. **batch**: all pieces of all lines are sorted by length, longest first, and cut into buckets of
   ``batch_size``; each bucket is **one** call of the model's own list API (``generate_voice_clone``,
   ``generate_voice_design``, ``generate_custom_voice``) with ``torch.manual_seed(seed)`` right before
   it and ``max_new_tokens`` from the bucket's longest text (:func:`max_new_tokens_for`). Sorting
   keeps a bucket's texts alike in length, so little is spent on padding and on rows that finished
   early; longest first means a CUDA out-of-memory error comes on the first call, which is then
   retried with half the batch (:func:`voxflow.tasks.kit.runs.halving_batch_on_oom`), as are the later buckets;
3. **join**: the pieces of a line are joined in order with raised-cosine crossfades of ``crossfade_s``;
4. **check**: every piece is checked by :func:`voxflow.tasks.helpers.quality.check_speech` (empty, silent, clipped,
   truncated: among others the model ran to ``max_new_tokens`` without its end token). Lines with
   an issue are generated again, batched together, with the seed ``seed + 1000 * attempt``, up to
   ``quality_retries`` times; a line still failing is returned with its ``issues`` (flagged, never
   dropped).

The model returns CPU numpy arrays; the reference prompt's tensors live on the CPU and the model
moves them to its device itself. Models load through :data:`voxflow.tasks.kit.models.RESIDENT`: on CUDA only one
Qwen3-TTS model stays resident (loading another releases it), in bfloat16; on the CPU in float32.

Writes ``voice_prompt.safetensors`` (stage ``voice_prompt``) and ``line-000.wav``, ... (stage
``synthesize``, float WAV at 24 kHz).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import re
import struct
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import numpy as np
from pydantic import AfterValidator, Field

from voxflow.storage.refs import ArtifactRef
from voxflow.storage.settings import StoreSettings
from voxflow.tasks.helpers import quality
from voxflow.tasks.kit.caching import TextInput
from voxflow.tasks.kit.model_sources import MODEL_SOURCES, TTS_DEFAULTS, local_tts_model
from voxflow.tasks.kit.model_sources import hub_folder_name as local_folder_name
from voxflow.tasks.kit.models import (
    RESIDENT,
    ModelNotFound,
    ModelSettings,
    holding,
    hub_errors,
    seeded,
)
from voxflow.tasks.kit.options import InvalidOptions, Options
from voxflow.tasks.kit.outputs import audio_input, read_audio, read_bytes, source_sha256_of, write_artifact, write_audio
from voxflow.tasks.kit.runs import halving_batch_on_oom
from voxflow.tasks.kit.stage import StageSpec, stage_task

if TYPE_CHECKING:
    from qwen_tts import Qwen3TTSModel, VoiceClonePromptItem

log = logging.getLogger(__name__)

Mode = Literal["clone", "design", "custom"]
STAGE = "synthesize"
PROMPT_STAGE = "voice_prompt"
CODE_VERSION = "1"
LIBRARY = MODEL_SOURCES[STAGE].library  # <model dir>/qwen-tts/<repository name>/
DEFAULT_MODELS: dict[Mode, str] = TTS_DEFAULTS  # type: ignore[assignment]
MODEL_TYPES: dict[Mode, str] = {"clone": "base", "design": "voice_design", "custom": "custom_voice"}
SAMPLE_RATE_HZ = 24_000  # what the 12 Hz speech tokenizer decodes to
AUTO_LANGUAGE = "auto"  # let the model tell the language from the text
CODEC_FRAME_RATE_HZ = 12.5  # codec frames (generated tokens) per second of speech
SEED_STRIDE = 1000  # attempt k of a line runs with seed + SEED_STRIDE * k
MIN_REFERENCE_S = 1.0  # a shorter reference recording cannot carry a voice
PROMPT_NAME = "voice_prompt.safetensors"
PROMPT_FORMAT = "voxflow-voice-prompt/1"
HUB_URL = "https://huggingface.co/{name}"
# Sentence ends (Latin ones only before a space or the end, so 3.5 and e.g. stay whole), then
# clause marks, then spaces: each pattern matches one unit with the separator that ends it.
SENTENCE_UNIT = re.compile(r".+?(?:[.!?…]+[\"'”’)\]]*(?:\s+|\Z)|[。！？!?]+[」』”’）]*\s*|\n+|\Z)", re.S)
CLAUSE_UNIT = re.compile(r".+?(?:[,;:]+\s+|\s+[—–-]+\s+|[，；：、]+\s*|\Z)", re.S)
WORD_UNIT = re.compile(r".+?(?:\s+|\Z)", re.S)


@dataclass(frozen=True)
class SynthesisItem:
    """One line to speak, with what its mode needs (checked by :func:`validate_items`)."""

    text: str
    language: str = AUTO_LANGUAGE  # one of the model's languages (see supported_languages), or auto
    speaker: str | None = None  # custom mode: a built-in speaker (see supported_speakers)
    instruction: str | None = None  # custom mode, optional: how to speak (tone, emotion, pace)
    voice_description: str | None = None  # design mode, required: the voice in words


def repo_or_folder(value: str | None) -> str | None:
    """A validator: a Hugging Face repo id or a folder name (None: the mode's default model)."""
    if value is not None and (not value.strip() or value.startswith(".")):
        raise ValueError(f"must be a repo id such as {DEFAULT_MODELS['clone']!r} or a folder name")
    return value


@dataclass(frozen=True)
class SynthesizeOptions(Options):
    """Which model speaks, how lines are cut and batched, how tokens are sampled, and how often a failing line is retried."""

    model: Annotated[
        str | None,
        Field(
            description="Hugging Face repo id or a folder name under <model dir>/qwen-tts; None: the mode's default."
        ),
        AfterValidator(repo_or_folder),
    ] = None
    batch_size: Annotated[
        int, Field(ge=1, le=256, description="Pieces of text per model call (halved on out-of-memory).")
    ] = 8
    seed: Annotated[
        int,
        Field(ge=0, lt=2**32 - 2**20, description="torch.manual_seed before each model call; attempt k adds 1000 * k."),
    ] = 0
    max_chars: Annotated[
        int,
        Field(
            ge=10,
            le=2000,
            description="Longer texts are split at sentence, clause, then word boundaries into pieces of at most this many characters.",
        ),
    ] = 200
    crossfade_s: Annotated[
        float, Field(ge=0, le=1, description="Raised-cosine crossfade joining the pieces of one line, seconds.")
    ] = 0.02
    frames_per_char: Annotated[
        float,
        Field(
            gt=0,
            le=50,
            description="Codec frames (12.5 a second) allowed per character of a batch's longest text; 3.75 = 0.3 s a character.",
        ),
    ] = 3.75
    margin_frames: Annotated[
        int,
        Field(
            ge=2, le=4096, description="Frames added to the per-character budget (also the smallest max_new_tokens)."
        ),
    ] = 25
    max_new_tokens_cap: Annotated[
        int, Field(ge=2, le=8192, description="The largest max_new_tokens of any call (2048 frames = 164 s).")
    ] = 2048
    do_sample: Annotated[
        bool | None,
        Field(description="Sample tokens (True) or take the most likely (False); None: the model's generation_config."),
    ] = None
    temperature: Annotated[
        float | None, Field(gt=0, description="Sampling temperature; None: the model's generation_config.")
    ] = None
    top_k: Annotated[
        int | None,
        Field(ge=1, description="Sample among the k most likely tokens; None: the model's generation_config."),
    ] = None
    top_p: Annotated[
        float | None, Field(gt=0, le=1, description="Nucleus sampling mass; None: the model's generation_config.")
    ] = None
    x_vector_only: Annotated[
        bool, Field(description="Clone: the speaker embedding only, without the reference transcript and codes (ICL).")
    ] = False
    quality_retries: Annotated[
        int,
        Field(
            ge=0,
            le=10,
            description="Regenerations (new seed) of a line that fails the quality check before it is flagged.",
        ),
    ] = 2

    def check(self) -> None:
        if self.margin_frames > self.max_new_tokens_cap:
            raise InvalidOptions(
                f"SynthesizeOptions: margin_frames ({self.margin_frames}) must not exceed max_new_tokens_cap "
                f"({self.max_new_tokens_cap})"
            )

    def model_name(self, mode: Mode) -> str:
        """The model this mode runs: ``model``, else the mode's default."""
        return self.model or DEFAULT_MODELS[mode]

    def voice_prompt_options(self) -> VoicePromptOptions:
        """The options of the ``voice_prompt`` stage these options synthesize with (clone mode)."""
        return VoicePromptOptions(model=self.model_name("clone"), x_vector_only=self.x_vector_only)

    def generate_kwargs(self) -> dict[str, Any]:
        """Sampling arguments of the ``generate_*`` calls (None: the model's generation_config)."""
        return {"do_sample": self.do_sample, "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}


@dataclass(frozen=True)
class VoicePromptOptions(Options):
    """What a voice-clone prompt depends on besides the reference and its transcript."""

    model: Annotated[
        str,
        Field(min_length=1, description="The Base model (repo id or folder name) the prompt is for."),
        AfterValidator(repo_or_folder),
    ] = DEFAULT_MODELS["clone"]
    x_vector_only: Annotated[
        bool, Field(description="The speaker embedding only (no transcript, no reference codes).")
    ] = False


# ----------------------------------------------------------------------------------------------------------------
# Models


def pull_tts_model(name: str, settings: ModelSettings) -> Path:
    """Download model ``name`` (all its files) into ``<model dir>/qwen-tts/<repository name>/``."""
    from huggingface_hub import snapshot_download

    target = settings.library_dir(LIBRARY) / local_folder_name(name)
    with hub_errors(name, gated_url=HUB_URL.format(name=name), folder=target):
        snapshot_download(name, token=settings.token(), local_dir=target)
    return target


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' per-step notices (``Setting pad_token_id to eos_token_id`` at every talker step,
    the unused-temperature warning of greedy decoding) silenced for the block, then restored."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="transformers")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)


def import_qwen_tts() -> Any:
    """``qwen_tts``, whose import prints banners (flash-attn missing, SoX missing) to stdout: logged at debug."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        import qwen_tts
    if printed.getvalue().strip():
        log.debug("qwen_tts import: %s", " ".join(printed.getvalue().split()))
    return qwen_tts


def _read_model(folder: Path, device: str) -> Qwen3TTSModel:
    import importlib.util

    import torch

    qwen_tts = import_qwen_tts()
    kwargs: dict[str, Any] = {
        "device_map": device,
        "dtype": torch.bfloat16 if device.startswith("cuda") else torch.float32,
    }
    if device.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        kwargs["attn_implementation"] = "flash_attention_2"
    try:
        return qwen_tts.Qwen3TTSModel.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ModelNotFound(
            f"cannot load Qwen3-TTS model folder {folder}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
            "it must hold config.json, model.safetensors, generation_config.json, the tokenizer files "
            "and speech_tokenizer/ as the Hugging Face repos do"
        ) from e


def _download(name: str, settings: ModelSettings) -> Path:
    """Model ``name`` from the hub: into the model dir when one is set (it is then local next time), else
    into the Hugging Face cache."""
    if settings.folder is not None:
        return pull_tts_model(name, settings)
    from huggingface_hub import snapshot_download

    with hub_errors(name, gated_url=HUB_URL.format(name=name)):
        return Path(snapshot_download(name, token=settings.token()))


def load_tts_model(
    name: str, device: str = "cpu", model_dir: str | Path | None = None, token: str | None = None
) -> Qwen3TTSModel:
    """The Qwen3-TTS model ``name`` (a ``qwen_tts.Qwen3TTSModel``) on ``device``, loaded once per process.

    ``<model_dir>/qwen-tts/<repository name>/`` first, then ``name`` as a folder, else a hub download
    (into the model dir when set). bfloat16 on CUDA, float32 on the CPU. On CUDA only one Qwen3-TTS
    model stays resident: its residency key names the model, so loading another one (another mode)
    releases it, as loading another stage's model does.
    """
    from pydantic import SecretStr

    settings = ModelSettings(
        model_dir=str(model_dir) if model_dir else None, hf_token=SecretStr(token) if token else None
    )
    folder = local_tts_model(name, settings)

    def load() -> Qwen3TTSModel:
        return _read_model(folder or _download(name, settings), device)

    resident_as = f"{STAGE}:{name}" if device.startswith("cuda") else STAGE
    return RESIDENT.get((LIBRARY, name, str(folder or "hub")), device, load, stage=resident_as)


@functools.lru_cache(maxsize=32)
def _folder_revision(folder: str, weights_size: int, weights_mtime_ns: int) -> str:
    path = Path(folder)
    downloaded = path / ".cache" / "huggingface" / "download" / "config.json.metadata"
    if downloaded.is_file():  # snapshot_download(local_dir=...) records the commit it fetched
        commit = downloaded.read_text().split("\n", 1)[0].strip()
        if commit:
            return commit
    if path.parent.name == "snapshots":  # a Hugging Face cache snapshot is named by its commit
        return path.name
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        with open(path / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    return f"local-{digest.hexdigest()[:16]}"


def model_revision(name: str, model_dir: str | Path | None = None) -> str:
    """The revision of model ``name`` as it would load: the hub commit of a downloaded folder, else
    ``local-`` + a hash of its config and weights, else ``local`` when no folder is found."""
    folder = local_tts_model(name, ModelSettings(model_dir=str(model_dir) if model_dir else None))
    if folder is None:
        if model_dir is None:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
            if isinstance(cached, str):
                return Path(cached).parent.name
        return "local"
    weights = folder / "model.safetensors"
    stat = weights.stat() if weights.exists() else None
    if stat is None:
        return "local"
    return _folder_revision(str(folder.resolve()), stat.st_size, stat.st_mtime_ns)


def supported_languages(model: Qwen3TTSModel) -> list[str]:
    """The languages ``model`` speaks (lower case, with ``auto``), sorted."""
    return sorted(model.get_supported_languages() or [AUTO_LANGUAGE])


def supported_speakers(model: Qwen3TTSModel) -> list[str]:
    """The built-in speakers of a CustomVoice model (lower case, sorted); empty for the other kinds."""
    return sorted(model.get_supported_speakers() or [])


def model_type(model: Qwen3TTSModel) -> str:
    """``base``, ``voice_design`` or ``custom_voice``."""
    return str(model.model.tts_model_type)


def validate_items(model: Qwen3TTSModel, mode: Mode, items: Sequence[SynthesisItem]) -> None:
    """Raise a one-line :class:`ValueError` for the first line ``model`` cannot speak in ``mode``.

    The model must be of the mode's kind; every text must have words; the language must be one the
    model knows; custom mode needs a known ``speaker`` (and a 1.7B model for an ``instruction``),
    design mode a ``voice_description``; fields another mode uses are refused rather than ignored.
    """
    if mode not in MODEL_TYPES:
        raise ValueError(f"mode must be one of {', '.join(MODEL_TYPES)}, got {mode!r}")
    kind = model_type(model)
    if kind != MODEL_TYPES[mode]:
        raise ValueError(
            f"mode {mode!r} needs a {MODEL_TYPES[mode]} model (such as {DEFAULT_MODELS[mode]}), "
            f"but the model is a {kind} model"
        )
    languages, speakers = supported_languages(model), supported_speakers(model)
    for i, item in enumerate(items):
        if not isinstance(item.text, str) or not item.text.strip():
            raise ValueError(f"line {i}: text is empty")
        if not isinstance(item.language, str) or item.language.lower() not in languages:
            raise ValueError(
                f"line {i}: language {item.language!r} is not supported; supported: {', '.join(languages)}"
            )
        if mode == "custom":
            if not item.speaker:
                raise ValueError(f"line {i}: custom mode needs a speaker; speakers: {', '.join(speakers)}")
            if item.speaker.lower() not in speakers:
                raise ValueError(
                    f"line {i}: speaker {item.speaker!r} is not supported; speakers: {', '.join(speakers)}"
                )
            if item.instruction and str(model.model.tts_model_size) in "0b6":
                raise ValueError(
                    f"line {i}: this 0.6B CustomVoice model ignores instructions; use "
                    f"{DEFAULT_MODELS['custom']} or leave instruction empty"
                )
        elif item.speaker or item.instruction:
            raise ValueError(f"line {i}: speaker and instruction are for custom mode, not {mode}")
        if mode == "design" and not (item.voice_description or "").strip():
            raise ValueError(f"line {i}: design mode needs a voice_description (the voice in words)")
        if mode != "design" and item.voice_description:
            raise ValueError(f"line {i}: voice_description is for design mode, not {mode}")


# ----------------------------------------------------------------------------------------------------------------
# Text and audio


def _units(text: str, pattern: re.Pattern[str]) -> list[str]:
    return [m.group(0) for m in pattern.finditer(text) if m.group(0)]


def _pack(text: str, max_chars: int, level: int) -> list[str]:
    levels = (SENTENCE_UNIT, CLAUSE_UNIT, WORD_UNIT)
    if len(text) <= max_chars:
        return [text]
    if level == len(levels):  # no boundary left (e.g. a long run of CJK without punctuation)
        return [text[i : i + max_chars] for i in range(0, len(text), max_chars)]
    pieces: list[str] = []
    current = ""
    for unit in _units(text, levels[level]):
        if len(unit.strip()) > max_chars:
            pieces.append(current)
            pieces.extend(_pack(unit.strip(), max_chars, level + 1))
            current = ""
        elif len((current + unit).strip()) > max_chars:
            pieces.append(current)
            current = unit
        else:
            current += unit
    pieces.append(current)
    return [piece.strip() for piece in pieces if piece.strip()]


def split_text(text: str, max_chars: int) -> list[str]:
    """``text`` in pieces of at most ``max_chars`` characters, in order, cut where speech pauses.

    Whole sentences are packed into a piece while they fit; a sentence longer than ``max_chars`` is
    cut at clause marks (``,;:`` and ``，；：、``, dashes), a clause at spaces, and text without
    spaces every ``max_chars`` characters. Runs of whitespace become one space.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    text = " ".join(text.split())
    return _pack(text, max_chars, 0) if text else []


def crossfade_join(pieces: Sequence[np.ndarray], crossfade_samples: int) -> np.ndarray:
    """Mono pieces joined in order, each join a raised-cosine crossfade of ``crossfade_samples`` (at most
    the shorter neighbour): the result is ``sum(lengths) - joins * crossfade`` samples long."""
    if not pieces:
        return np.zeros(0, np.float32)
    out = np.asarray(pieces[0], np.float32)
    for piece in pieces[1:]:
        piece = np.asarray(piece, np.float32)
        n = min(crossfade_samples, out.size, piece.size)
        if n <= 0:
            out = np.concatenate([out, piece])
            continue
        rise = (np.sin(0.5 * np.pi * (np.arange(n) + 0.5) / n) ** 2).astype(np.float32)
        out = np.concatenate([out[:-n], out[-n:] * (1.0 - rise) + piece[:n] * rise, piece[n:]])
    return out


def max_new_tokens_for(texts: Sequence[str], options: SynthesizeOptions) -> int:
    """The ``max_new_tokens`` of one model call: ``frames_per_char`` frames per character of its longest
    text plus ``margin_frames``, at most ``max_new_tokens_cap``."""
    longest = max((len(t) for t in texts), default=0)
    return min(math.ceil(longest * options.frames_per_char) + options.margin_frames, options.max_new_tokens_cap)


def _mono(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        return samples.mean(axis=0) if samples.shape[0] > 1 else samples[0]
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples or (channels, samples) audio, got shape {samples.shape}")
    return samples


# ----------------------------------------------------------------------------------------------------------------
# Voice prompts


@dataclass(frozen=True, eq=False)
class VoicePrompt:
    """A computed voice-clone prompt (the fields of ``qwen_tts.VoiceClonePromptItem``), on the CPU.

    Serialised by :meth:`to_bytes` as safetensors (``ref_code``, ``ref_spk_embedding``) with the
    flags and the transcript in its JSON metadata.
    """

    ref_code: np.ndarray | None  # (frames, 16) int64 codec codes of the reference; None in x-vector-only mode
    ref_spk_embedding: np.ndarray  # (D,) float32 speaker embedding (D = the talker's width)
    x_vector_only_mode: bool
    icl_mode: bool  # the reference's transcript and codes condition the speech (in-context learning)
    ref_text: str | None = None

    @classmethod
    def from_item(cls, item: VoiceClonePromptItem) -> VoicePrompt:
        """The CPU copy of a package prompt item (float32 embedding, int64 codes)."""
        code = None if item.ref_code is None else item.ref_code.detach().cpu().to(dtype=_torch().int64).numpy()
        embedding = item.ref_spk_embedding.detach().float().cpu().numpy()
        return cls(code, embedding, bool(item.x_vector_only_mode), bool(item.icl_mode), item.ref_text)

    def to_item(self) -> VoiceClonePromptItem:
        """The package's prompt item (CPU tensors; the model moves them to its device)."""
        torch = _torch()
        from qwen_tts import VoiceClonePromptItem

        code = None if self.ref_code is None else torch.from_numpy(np.ascontiguousarray(self.ref_code))
        return VoiceClonePromptItem(
            code,
            torch.from_numpy(np.ascontiguousarray(self.ref_spk_embedding)),
            self.x_vector_only_mode,
            self.icl_mode,
            self.ref_text,
        )

    def to_bytes(self) -> bytes:
        """safetensors bytes: the arrays, and the flags and transcript as metadata (deterministic)."""
        from safetensors.numpy import save

        tensors = {"ref_spk_embedding": np.ascontiguousarray(self.ref_spk_embedding, dtype=np.float32)}
        if self.ref_code is not None:
            tensors["ref_code"] = np.ascontiguousarray(self.ref_code, dtype=np.int64)
        fields = {
            "format": PROMPT_FORMAT,
            "x_vector_only_mode": self.x_vector_only_mode,
            "icl_mode": self.icl_mode,
            "ref_text": self.ref_text,
        }
        # one metadata key: safetensors writes several in no fixed order
        return save(tensors, metadata={"voice_prompt": json.dumps(fields, sort_keys=True, ensure_ascii=False)})

    @classmethod
    def from_bytes(cls, data: bytes) -> VoicePrompt:
        """The prompt :meth:`to_bytes` wrote; :class:`ValueError` for anything else."""
        from safetensors.numpy import load

        try:
            (header_size,) = struct.unpack("<Q", data[:8])
            metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
            flags = json.loads(metadata.get("voice_prompt", "{}"))
            if flags.get("format") != PROMPT_FORMAT:
                raise ValueError(f"format {flags.get('format')!r}")
            tensors = load(data)
        except (struct.error, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"not a voice prompt ({PROMPT_FORMAT}): {e}") from e
        return cls(
            tensors.get("ref_code"),
            tensors["ref_spk_embedding"],
            bool(flags["x_vector_only_mode"]),
            bool(flags["icl_mode"]),
            flags["ref_text"],
        )


def _torch() -> Any:
    import torch

    return torch


def voice_prompt(
    model: Qwen3TTSModel, samples: np.ndarray, sample_rate_hz: int, transcript: str | None, x_vector_only: bool = False
) -> VoicePrompt:
    """The voice-clone prompt of a reference recording (``model.create_voice_clone_prompt``, once).

    ``samples`` is mono or ``(channels, samples)`` (downmixed) at ``sample_rate_hz``, passed in memory
    as ``(audio, rate)``; ``transcript`` is what the reference says, required unless
    ``x_vector_only`` (then only the speaker embedding is used).
    """
    if model_type(model) != "base":
        raise ValueError(
            f"a voice prompt needs a base model (such as {DEFAULT_MODELS['clone']}), not a {model_type(model)} model"
        )
    mono = _mono(samples)
    if mono.size < MIN_REFERENCE_S * sample_rate_hz:
        raise ValueError(
            f"the reference recording is {mono.size / sample_rate_hz:.2f} s long; a voice needs at least "
            f"{MIN_REFERENCE_S:g} s (3 s or more is best)"
        )
    if not x_vector_only and not (transcript or "").strip():
        raise ValueError("cloning with the reference's words (x_vector_only False) needs its transcript")
    with quiet_transformers(), holding(model):
        items = model.create_voice_clone_prompt(
            ref_audio=(mono, int(sample_rate_hz)),
            ref_text=None if x_vector_only else transcript.strip(),  # type: ignore[union-attr]
            x_vector_only_mode=x_vector_only,
        )
    return VoicePrompt.from_item(items[0])


# ----------------------------------------------------------------------------------------------------------------
# Synthesis


@dataclass(frozen=True, eq=False)
class Speech:
    """One synthesized line."""

    samples: np.ndarray  # float32 1-D at sample_rate_hz
    sample_rate_hz: int
    seed: int  # the seed of the model call that produced it (its last attempt)
    attempts: int  # 1 + regenerations
    issues: tuple[str, ...]  # quality issues left after the last attempt (empty: passed)
    compute_s: float  # its share of the model calls' wall time, over all attempts

    @property
    def duration_s(self) -> float:
        return self.samples.size / self.sample_rate_hz


@dataclass(frozen=True)
class _Piece:
    line: int  # index of the line (item) it belongs to
    index: int  # its position in the line
    text: str


@dataclass
class _Generated:
    samples: np.ndarray
    sample_rate_hz: int
    compute_s: float
    hit_token_limit: bool


def _call_model(
    model: Qwen3TTSModel,
    mode: Mode,
    pieces: Sequence[_Piece],
    items: Sequence[SynthesisItem],
    prompt: VoiceClonePromptItem | None,
    options: SynthesizeOptions,
    seed: int,
) -> list[_Generated]:
    """One call of the model's list API for ``pieces``, seeded right before it (:func:`~voxflow.tasks.kit.models.seeded`)."""
    texts = [p.text for p in pieces]
    lines = [items[p.line] for p in pieces]
    max_new_tokens = max_new_tokens_for(texts, options)
    kwargs = {
        "text": texts,
        "language": [item.language for item in lines],
        "max_new_tokens": max_new_tokens,
        **options.generate_kwargs(),
    }
    with quiet_transformers(), holding(model), seeded(seed):
        started = time.perf_counter()  # after the wait for the model: compute time only
        if mode == "clone":
            wavs, rate = model.generate_voice_clone(voice_clone_prompt=[prompt], **kwargs)
        elif mode == "design":
            wavs, rate = model.generate_voice_design(instruct=[item.voice_description for item in lines], **kwargs)
        else:
            wavs, rate = model.generate_custom_voice(
                speaker=[item.speaker for item in lines], instruct=[item.instruction or "" for item in lines], **kwargs
            )
    wall_s = time.perf_counter() - started
    wavs = [np.asarray(w, dtype=np.float32).reshape(-1) for w in wavs]
    total = sum(w.size for w in wavs)
    hop = rate / CODEC_FRAME_RATE_HZ
    # generate() yields max_new_tokens - 1 frames when no end token came
    return [
        _Generated(
            w,
            int(rate),
            wall_s * (w.size / total if total else 1 / len(wavs)),
            round(w.size / hop) >= max_new_tokens - 1,
        )
        for w in wavs
    ]


def _generate(
    model: Qwen3TTSModel,
    mode: Mode,
    pieces: Sequence[_Piece],
    items: Sequence[SynthesisItem],
    prompt: VoiceClonePromptItem | None,
    options: SynthesizeOptions,
    seed: int,
    progress: Callable[[int], None],
) -> dict[_Piece, _Generated]:
    """Every piece, longest first, in buckets of ``batch_size`` (halved for good after an out-of-memory)."""
    order = sorted(pieces, key=lambda p: (-len(p.text), p.line, p.index))
    batch = [options.batch_size]
    out: dict[_Piece, _Generated] = {}

    def call(bucket: Sequence[_Piece], size: int) -> list[_Generated]:
        batch[0] = size
        return [
            g
            for i in range(0, len(bucket), size)
            for g in _call_model(model, mode, bucket[i : i + size], items, prompt, options, seed)
        ]

    start = 0
    while start < len(order):
        bucket = order[start : start + batch[0]]
        generated = halving_batch_on_oom(functools.partial(call, bucket), batch[0])
        out.update(zip(bucket, generated, strict=True))  # one output per text, in order
        start += len(bucket)
        progress(len(bucket))
    return out


def synthesize(
    model: Qwen3TTSModel,
    mode: Mode,
    items: Sequence[SynthesisItem],
    options: SynthesizeOptions = SynthesizeOptions(),
    prompt: VoicePrompt | None = None,
    hook: Callable[[int, int], None] | None = None,
    *,
    check: Callable[..., tuple[str, ...]] = quality.check_speech,
) -> list[Speech]:
    """Speak every item with ``model`` in ``mode``; one :class:`Speech` per item, in the items' order.

    Clone mode needs ``prompt`` (:func:`voice_prompt`). Splitting, batching, joining and the quality
    retries are described in this module. ``hook(done, total)`` counts generated pieces (retries add
    to the total); ``check(samples, rate, text, hit_token_limit=...)`` returns a piece's issues.
    """
    validate_items(model, mode, items)
    if (mode == "clone") != (prompt is not None):
        raise ValueError("clone mode needs a voice prompt" if mode == "clone" else f"{mode} mode takes no voice prompt")
    prompt_item = prompt.to_item() if prompt is not None else None
    pieces = {
        line: [_Piece(line, k, t) for k, t in enumerate(split_text(item.text, options.max_chars))]
        for line, item in enumerate(items)
    }
    done, total = 0, 0

    def progress(count: int) -> None:
        nonlocal done
        done += count
        if hook is not None:
            hook(done, total)

    results: dict[int, Speech] = {}
    pending = list(range(len(items)))
    for attempt in range(options.quality_retries + 1):
        if not pending:
            break
        seed = options.seed + SEED_STRIDE * attempt
        todo = [p for line in pending for p in pieces[line]]
        total += len(todo)
        generated = _generate(model, mode, todo, items, prompt_item, options, seed, progress)
        failing = []
        for line in pending:
            outs = [generated[p] for p in pieces[line]]
            rate = outs[0].sample_rate_hz
            issues = {
                issue
                for p, g in zip(pieces[line], outs)
                for issue in check(g.samples, rate, p.text, hit_token_limit=g.hit_token_limit)
            }
            compute_s = sum(g.compute_s for g in outs) + (results[line].compute_s if line in results else 0.0)
            samples = crossfade_join([g.samples for g in outs], round(options.crossfade_s * rate))
            ordered = tuple(issue for issue in quality.ISSUES if issue in issues) + tuple(
                sorted(issues - set(quality.ISSUES))
            )
            results[line] = Speech(samples, rate, seed, attempt + 1, ordered, compute_s)
            if issues:
                failing.append(line)
        pending = failing
    return [results[line] for line in range(len(items))]


# ----------------------------------------------------------------------------------------------------------------
# Stage tasks


ReferenceText = TextInput  # the words of a reference recording, as a stage input


def reference_words(transcript: Any, settings: StoreSettings, name: str) -> str:
    """The words of a reference: a :class:`ReferenceText`, or the stored transcript of a transcribe stage result."""
    if isinstance(transcript, ReferenceText):
        return transcript.text
    said = transcript.transcript(settings)  # voxflow.tasks.transcribe.TranscribeResult
    words = " ".join(segment.text.strip() for segment in said.segments if segment.text.strip())
    if not words:
        raise ValueError(
            f"voice reference {name!r}: no speech was transcribed from it; give its transcript "
            "(--transcript, or the transcript parameter)"
        )
    return words


@dataclass(frozen=True)
class VoicePromptResult:
    """What the voice_prompt stage returns: the stored prompt of one reference for one Base model."""

    artifact: ArtifactRef  # voice_prompt.safetensors (VoicePrompt.to_bytes)
    reference_sha256: str  # the source recording of the reference (its sha256 in the files table)
    model: str  # the Base model (repo id or folder name) it is for
    transcript: str | None  # the reference's words (None in x-vector-only mode)

    @property
    def sha256(self) -> str:
        return self.artifact.sha256


@dataclass(frozen=True)
class SynthesisRequest:
    """The lines one synthesize stage speaks: a mode and its items; ``sha256`` over their canonical JSON
    (so the stage's cache keys on the text content)."""

    mode: Mode
    items: tuple[SynthesisItem, ...]

    def __post_init__(self) -> None:
        if self.mode not in get_args(Mode):
            raise ValueError(f"mode must be one of {', '.join(get_args(Mode))}, got {self.mode!r}")
        object.__setattr__(self, "items", tuple(self.items))
        if not self.items:
            raise ValueError("a synthesis request needs at least one line")
        if not all(isinstance(item, SynthesisItem) for item in self.items):
            raise TypeError("the items of a synthesis request must be SynthesisItem")

    @property
    def sha256(self) -> str:
        canonical = {"mode": self.mode, "items": [dataclasses.asdict(item) for item in self.items]}
        return hashlib.sha256(json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SynthesizedLine:
    """One spoken line: its audio and everything that decided it (for the ``syntheses`` table)."""

    text: str
    artifact: ArtifactRef  # line-<i>.wav, float WAV at 24 kHz
    seed: int
    attempts: int
    issues: tuple[str, ...]  # empty: passed the quality check
    duration_s: float
    compute_s: float
    real_time_factor: float  # compute_s / duration_s
    model: str  # repo id or folder name
    model_revision: str  # hub commit, local-<hash> of a local folder, or local
    mode: Mode
    language: str
    speaker: str | None
    instruction: str | None
    voice_description: str | None
    voice_source_sha256: str | None  # the reference recording (clone mode)


@dataclass(frozen=True)
class SynthesisResult:
    """What the synthesize stage returns: one line per item, in order."""

    lines: tuple[SynthesizedLine, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256("\n".join(line.artifact.sha256 for line in self.lines).encode()).hexdigest()

    def summary(self) -> dict:
        """What a summary table shows of a synthesis."""
        flagged = sum(1 for line in self.lines if line.issues)
        duration_s = sum(line.duration_s for line in self.lines)
        return {
            "lines": len(self.lines),
            "flagged": flagged,
            "duration_s": round(duration_s, 3),
            "model": self.lines[0].model if self.lines else None,
        }


def _line_record(
    item: SynthesisItem,
    speech: Speech,
    artifact: ArtifactRef,
    mode: Mode,
    model: str,
    revision: str,
    prompt: VoicePromptResult | None,
) -> SynthesizedLine:
    duration_s = speech.duration_s
    return SynthesizedLine(
        item.text,
        artifact,
        speech.seed,
        speech.attempts,
        speech.issues,
        duration_s,
        speech.compute_s,
        speech.compute_s / duration_s if duration_s else math.inf,
        model,
        revision,
        mode,
        item.language,
        item.speaker,
        item.instruction,
        item.voice_description,
        prompt.reference_sha256 if prompt else None,
    )


@stage_task(StageSpec(PROMPT_STAGE, code_version=CODE_VERSION, gpu=True, inputs=("reference", "transcript")))
def clone_prompt(
    reference: Any, transcript: Any, options: VoicePromptOptions, settings: StoreSettings, models: ModelSettings
) -> VoicePromptResult:
    """The voice-clone prompt of a reference recording (audio, or a stage result with ``.artifact``) for one Base model.

    Cached on the reference's bytes, the transcript's text and the options (model, x-vector-only),
    so it is computed once per voice and model whatever the synthesis options: the transcript comes
    wrapped in :class:`ReferenceText` (a plain ``str`` input would be read as a source URI), or as the
    result of the transcribe stage on the reference (keyed by its transcript's sha256), and the
    options are :class:`VoicePromptOptions` (``SynthesizeOptions.voice_prompt_options()``), not the
    synthesis options, whose seed or batch size do not change a prompt.
    """
    ref = audio_input(reference)
    samples, rate = read_audio(ref, settings)
    model = load_tts_model(options.model, models.torch_device(), models.model_dir, models.token())
    words = (
        reference_words(transcript, settings, ref.uri) if transcript is not None and not options.x_vector_only else None
    )
    prompt = voice_prompt(model, samples, rate, words, options.x_vector_only)
    artifact = write_artifact(settings, PROMPT_NAME, prompt.to_bytes())
    return VoicePromptResult(
        artifact, source_sha256_of(reference), options.model, None if options.x_vector_only else words
    )


@stage_task(StageSpec(STAGE, code_version=CODE_VERSION, gpu=True, inputs=("lines", "prompt")))
def synthesize_lines(
    lines: SynthesisRequest,
    prompt: VoicePromptResult | None,
    options: SynthesizeOptions,
    settings: StoreSettings,
    models: ModelSettings,
) -> SynthesisResult:
    """Speak a request's lines (clone mode: in the prompt's voice); writes line-000.wav, ... at 24 kHz."""
    name = options.model_name(lines.mode)
    if prompt is not None and prompt.model != name:
        raise ValueError(f"the voice prompt was made for {prompt.model}, but the lines would be spoken by {name}")
    model = load_tts_model(name, models.torch_device(), models.model_dir, models.token())
    voice = VoicePrompt.from_bytes(read_bytes(prompt.artifact, settings)) if prompt is not None else None
    speeches = synthesize(model, lines.mode, lines.items, options, voice)
    revision = model_revision(name, models.model_dir)
    records = tuple(
        _line_record(
            item,
            speech,
            write_audio(settings, f"line-{i:03d}.wav", speech.samples, speech.sample_rate_hz),
            lines.mode,
            name,
            revision,
            prompt,
        )
        for i, (item, speech) in enumerate(zip(lines.items, speeches))
    )
    return SynthesisResult(records)
