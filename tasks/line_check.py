"""Line check: does a new line say what it should, in the new voice, cleanly? voice_replace's closed loop.

Each finished line (after enhancement) is measured against what it was meant to say and the voice
it was meant to have:

* **words**: the line re-transcribed by the transcribe stage's own recognizer (:func:`voxflow.tasks.transcribe.recognize`),
  its word and character error rates against the intended text (lower case, punctuation removed);
* **voice**: cosine similarity of its GE2E speaker embedding (:mod:`voxflow.tasks.helpers.voiceprint`) to the
  new voice's reference recording (clone mode; a designed voice has no reference: not measured);
* **quality**: DNSMOS P.835 overall score (the ``speechmos`` package's ONNX models) at 16 kHz;
* **signal**: clipping and silence (:func:`voxflow.tasks.helpers.quality.check_speech`).

A line fails when one measure crosses its bound in :class:`CheckOptions`; voice_replace regenerates
a failing line with a new seed up to ``retries`` times, then flags it. The duration is checked by
the timing planner (:mod:`voxflow.tasks.reconstruct`), which knows the slot.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from voxflow.storage.settings import StoreSettings
from voxflow.tasks.helpers import audio, quality
from voxflow.tasks.helpers.quality import QualityThresholds
from voxflow.tasks.kit.caching import TextInput
from voxflow.tasks.kit.models import ModelSettings
from voxflow.tasks.kit.options import Options
from voxflow.tasks.kit.outputs import audio_input, read_audio
from voxflow.tasks.kit.stage import StageSpec, stage_task
from voxflow.tasks.transcribe import TranscribeOptions, load_transcribe_model, load_vad_model, recognize

log = logging.getLogger(__name__)

STAGE = "line_check"
CODE_VERSION = "1"
CHECK_RATE_HZ = 16_000  # what the recognizer, the speaker encoder and DNSMOS take
PUNCTUATION = re.compile(r"[^\w\s']|_")


@dataclass(frozen=True)
class CheckOptions(Options):
    """The bounds a new line must meet, and how often a failing line is generated again."""

    enabled: Annotated[bool, Field(description="Check every new line (off: lines are used as synthesized).")] = True
    retries: Annotated[
        int, Field(ge=0, le=10, description="New seeds tried for a failing line before it is flagged.")
    ] = 2
    max_wer: Annotated[float, Field(ge=0.0, description="Largest word error rate of the re-transcribed line.")] = 0.25
    max_cer: Annotated[float, Field(ge=0.0, description="Largest character error rate of the re-transcribed line.")] = (
        0.15
    )
    min_similarity: Annotated[
        float,
        Field(ge=-1.0, le=1.0, description="Least speaker similarity (GE2E cosine) to the new voice's reference."),
    ] = 0.7
    min_dnsmos: Annotated[float, Field(ge=0.0, le=5.0, description="Least DNSMOS overall score (1–5).")] = 2.0
    signal: QualityThresholds = field(default_factory=QualityThresholds)
    transcribe: TranscribeOptions = field(default_factory=TranscribeOptions)  # the recognizer that hears the line

    def resolved(self, models: ModelSettings) -> CheckOptions:
        """The options with the recognizer's model and backend filled in from the model settings."""
        return replace(self, transcribe=self.transcribe.resolved(models))


@dataclass(frozen=True)
class LineCheck:
    """What the check measured of one line, and why it failed (empty: it passed)."""

    heard: str  # the line re-transcribed
    wer: float
    cer: float
    similarity: float | None  # None: no reference voice, or no speaker encoder
    dnsmos: float | None  # DNSMOS P.835 overall (None: not measured)
    issues: tuple[str, ...]  # e.g. ("wer 0.60 > 0.25", "clipped")

    @property
    def passed(self) -> bool:
        return not self.issues

    @property
    def score(self) -> tuple[int, float]:
        """Lower is better: fewer issues, then a lower word error rate (to keep the best of several tries)."""
        return len(self.issues), self.wer


def normalize_text(text: str) -> str:
    """Lower case, punctuation removed, spaces collapsed: what error rates compare."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(PUNCTUATION.sub(" ", text).split())


def error_rates(reference: str, hypothesis: str) -> tuple[float, float]:
    """Word and character error rates of ``hypothesis`` against ``reference`` (after :func:`normalize_text`)."""
    import jiwer

    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref:
        return (0.0, 0.0) if not hyp else (1.0, 1.0)
    if not hyp:
        return 1.0, 1.0
    return float(jiwer.wer(ref, hyp)), float(jiwer.cer(ref, hyp))


def dnsmos_overall(samples: np.ndarray) -> float | None:
    """DNSMOS P.835 overall score of mono 16 kHz speech (None for less than a second: DNSMOS needs one)."""
    from speechmos import dnsmos

    if samples.size < CHECK_RATE_HZ:
        return None
    return float(dnsmos.run(np.asarray(samples, dtype=np.float32), sr=CHECK_RATE_HZ)["ovrl_mos"])


def check_line(
    samples: np.ndarray,
    text: str,
    options: CheckOptions,
    hear: Callable[[np.ndarray], str],
    embed: Callable[[np.ndarray], np.ndarray] | None = None,
    voice: np.ndarray | None = None,
    rate_mos: Callable[[np.ndarray], float | None] = dnsmos_overall,
) -> LineCheck:
    """Measure one line (mono float32 at 16 kHz) meant to say ``text`` (see the module).

    ``hear`` turns 16 kHz speech into text; ``embed`` gives a unit speaker embedding and ``voice`` is
    the new voice's (both or neither); ``rate_mos`` gives a DNSMOS score.
    """
    issues = list(quality.check_speech(samples, CHECK_RATE_HZ, text, thresholds=options.signal))
    heard = hear(samples) if samples.size else ""
    wer, cer = error_rates(text, heard)
    if wer > options.max_wer:
        issues.append(f"wer {wer:.2f} > {options.max_wer:.2f}")
    if cer > options.max_cer:
        issues.append(f"cer {cer:.2f} > {options.max_cer:.2f}")
    similarity = None
    if embed is not None and voice is not None and samples.size:
        try:
            similarity = float(np.dot(embed(samples), voice))
        except ValueError as e:  # too little sound to embed
            issues.append(f"voice not measurable: {e}")
    if similarity is not None and similarity < options.min_similarity:
        issues.append(f"similarity {similarity:.2f} < {options.min_similarity:.2f}")
    mos = rate_mos(samples) if samples.size else None
    if mos is not None and mos < options.min_dnsmos:
        issues.append(f"dnsmos {mos:.2f} < {options.min_dnsmos:.2f}")
    return LineCheck(heard, wer, cer, similarity, mos, tuple(issues))


# ----------------------------------------------------------------------------------------------------------------
# Stage task


def hearing(options: TranscribeOptions, models: ModelSettings) -> Callable[[np.ndarray], str]:
    """The recognizer of the transcribe stage, as text-from-16-kHz-speech."""
    options = replace(options.resolved(models), language_per_chunk=False)
    model = load_transcribe_model(
        options.model, models.torch_device(), models.model_dir, options.backend, options.compute_type
    )
    vad = load_vad_model()

    def hear(samples: np.ndarray) -> str:
        said = recognize((model, None), vad, samples, options, batch_size=options.batch_size).transcript
        return " ".join(s.text.strip() for s in said.segments if s.text.strip())

    return hear


@functools.lru_cache(maxsize=4)
def _encoder(model_dir: str | None) -> Any:
    from voxflow.tasks.helpers.voiceprint import load_voice_encoder

    try:
        return load_voice_encoder(model_dir)
    except FileNotFoundError as e:
        log.warning("speaker similarity is not measured: %s", e)
        return None


@stage_task(StageSpec(STAGE, code_version=CODE_VERSION, inputs=("line", "text", "voice")))
def check_new_line(
    line: Any,
    text: TextInput,
    voice: Any | None,
    options: CheckOptions,
    settings: StoreSettings,
    models: ModelSettings,
) -> LineCheck:
    """Check one finished line (audio or a stage result with ``.artifact``) against its text and the voice's reference."""
    samples = audio.mono_at(*read_audio(audio_input(line), settings), CHECK_RATE_HZ)
    encoder = _encoder(str(models.model_dir) if models.model_dir else None)
    reference = None
    if encoder is not None and voice is not None:
        reference = encoder.embed(
            audio.mono_at(*read_audio(audio_input(voice), settings), CHECK_RATE_HZ), CHECK_RATE_HZ
        )
    embed = (lambda s: encoder.embed(s, CHECK_RATE_HZ)) if encoder is not None else None
    return check_line(samples, text.text, options, hearing(options.transcribe, models), embed, reference)
