"""Target: which speaker of a recording voice_replace replaces.

Three ways to name the target (:class:`TargetOptions`):

* **a label** of the diarization (``SPEAKER_01``): checked against the speakers found;
* **like a sample**: the speaker whose voice is closest to a recording of them. Each speaker's solo
  speech (up to ``embed_s`` of their longest turns, taken from the vocals stem) and the sample are
  embedded with the GE2E speaker encoder (:mod:`voxflow.tasks.helpers.voiceprint`); the highest cosine
  similarity wins, and every speaker's similarity is reported;
* **most talk** (neither given): the speaker with the most speaking time.

Every choice reports each speaker's talk time, so a user can see why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from voxflow.storage.settings import StoreSettings
from voxflow.tasks.helpers import audio
from voxflow.tasks.helpers.speakers import Turn
from voxflow.tasks.kit.models import ModelSettings, holding
from voxflow.tasks.kit.options import Options
from voxflow.tasks.kit.outputs import audio_input, read_audio
from voxflow.tasks.kit.stage import StageSpec, stage_task
from voxflow.tasks.script import Script

STAGE = "target"
CODE_VERSION = "1"
EMBED_RATE_HZ = 16_000  # what the speaker encoder takes


class UnknownTarget(ValueError):
    """The named target is not among the speakers found (a bad input: never retried)."""


@dataclass(frozen=True)
class TargetOptions(Options):
    """Who is replaced: a speaker label, else the speaker most like the sample given, else the one who talks most."""

    speaker: Annotated[
        str | None, Field(description="Diarization label of the speaker to replace, e.g. SPEAKER_01.")
    ] = None
    embed_s: Annotated[
        float, Field(gt=0.0, le=600.0, description="Longest solo speech per speaker compared with a sample.")
    ] = 30.0


@dataclass(frozen=True)
class TargetChoice:
    """The chosen speaker, how it was chosen, and what was measured of every speaker."""

    speaker: str
    method: str  # label, like or most-talk
    talk_s: dict[str, float]  # speaking time per speaker
    similarity: dict[str, float]  # cosine similarity to the sample per speaker (like only)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(f"{self.speaker}:{self.method}".encode()).hexdigest()

    def describe(self) -> str:
        """One line: who, how, and the numbers behind it."""
        talk = ", ".join(f"{s} {t:.1f} s" for s, t in sorted(self.talk_s.items()))
        if self.method == "like":
            similar = ", ".join(f"{s} {v:.2f}" for s, v in sorted(self.similarity.items()))
            return f"{self.speaker} (closest to the sample; similarity {similar}; talk {talk})"
        how = "named" if self.method == "label" else "talks most"
        return f"{self.speaker} ({how}; talk {talk})"


def talk_time(turns: Sequence[Turn]) -> dict[str, float]:
    """Seconds of speech per speaker (a speaker's own overlapping turns counted once)."""
    spoken: dict[str, float] = {}
    for speaker in sorted({t.speaker for t in turns}):
        end = -np.inf
        total = 0.0
        for t in sorted((t for t in turns if t.speaker == speaker), key=lambda t: t.start_s):
            total += max(0.0, t.end_s - max(t.start_s, end))
            end = max(end, t.end_s)
        spoken[speaker] = total
    return spoken


def solo_speech(samples: np.ndarray, rate_hz: int, turns: Sequence[Turn], speaker: str, limit_s: float) -> np.ndarray:
    """Up to ``limit_s`` of ``speaker``'s turns that no one else overlaps, longest first, joined (mono)."""
    others = [t for t in turns if t.speaker != speaker]
    own = sorted((t for t in turns if t.speaker == speaker), key=lambda t: t.duration_s, reverse=True)
    pieces, total = [], 0
    for turn in own:
        if any(o.start_s < turn.end_s and o.end_s > turn.start_s for o in others):
            continue
        piece = samples[..., round(turn.start_s * rate_hz) : round(turn.end_s * rate_hz)]
        pieces.append(piece[: max(0, round(limit_s * rate_hz) - total)])
        total += pieces[-1].shape[-1]
        if total >= limit_s * rate_hz:
            break
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


def choose_target(
    turns: Sequence[Turn],
    options: TargetOptions,
    speech: np.ndarray | None = None,
    sample: np.ndarray | None = None,
    embed: Callable[[np.ndarray], np.ndarray] | None = None,
) -> TargetChoice:
    """The target among the speakers of ``turns`` (see the module).

    ``speech`` is the recording's voices (mono, 16 kHz) and ``sample`` a recording of the wanted
    speaker (mono, 16 kHz); with ``embed`` (16 kHz speech → unit embedding) they choose by likeness.
    """
    talk = talk_time(turns)
    if not talk:
        raise UnknownTarget("no speaker was found in the recording, so there is nobody to replace")
    if options.speaker is not None:
        if options.speaker not in talk:
            raise UnknownTarget(f"no speaker {options.speaker!r} in the recording; its speakers are {', '.join(talk)}")
        return TargetChoice(options.speaker, "label", talk, {})
    if sample is not None:
        if embed is None or speech is None:
            raise TypeError("choosing by likeness needs the recording's speech and a speaker encoder")
        wanted = embed(sample)
        similarity = {}
        for speaker in talk:
            solo = solo_speech(speech, EMBED_RATE_HZ, turns, speaker, options.embed_s)
            try:
                similarity[speaker] = float(np.dot(embed(solo), wanted))
            except ValueError:  # too little solo speech to embed: not a candidate
                continue
        if not similarity:
            raise UnknownTarget("no speaker has enough solo speech to compare with the sample")
        return TargetChoice(max(similarity, key=similarity.get), "like", talk, similarity)
    return TargetChoice(max(talk, key=lambda s: (talk[s], s)), "most-talk", talk, {})


@stage_task(StageSpec(STAGE, code_version=CODE_VERSION, inputs=("vocals", "script", "sample")))
def choose_target_speaker(
    vocals: Any,
    script: Script,
    sample: Any | None,
    options: TargetOptions,
    settings: StoreSettings,
    models: ModelSettings,
) -> TargetChoice:
    """The target speaker of a recording: its vocals, its script's turns, and (optional) a sample of the wanted voice."""
    turns = list(script.turns)
    if sample is None or options.speaker is not None:
        return choose_target(turns, options)
    from voxflow.tasks.helpers.voiceprint import load_voice_encoder

    encoder = load_voice_encoder(models.model_dir)

    def embed(samples: np.ndarray) -> np.ndarray:
        with holding(encoder):
            return encoder.embed(samples, EMBED_RATE_HZ)

    speech = audio.mono_at(*read_audio(audio_input(vocals), settings), EMBED_RATE_HZ)
    return choose_target(
        turns, options, speech, audio.mono_at(*read_audio(audio_input(sample), settings), EMBED_RATE_HZ), embed
    )
