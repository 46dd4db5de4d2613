"""The ``synthesize`` flow: batch text-to-speech in one mode — designed voices, built-in speakers or clones.

Items carry their own text, language and voice (a description for ``design``, a speaker and an
optional instruction for ``custom``, a reference recording for ``clone``). Clone items are grouped by
reference, so each reference goes through steps 1–4 of :mod:`voxflow.flows.speech` once; then every group's
lines are 5. synthesized in batches, 6. enhanced, and 7. recorded as ``syntheses`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from prefect.futures import PrefectFuture
from pydantic import Field

from voxflow.flows import registry
from voxflow.flows.environment import ModelsBlock, StorageBlock, environment
from voxflow.flows.pipelines import threaded_flow
from voxflow.flows.speech import SpeechOptions, SynthesisReport, Voice, enhance_lines, finish, speak
from voxflow.tasks.synthesize import AUTO_LANGUAGE, Mode, SynthesisItem, SynthesisRequest


@dataclass(frozen=True)
class SpeechItem:
    """One line to speak, and whose voice speaks it."""

    text: Annotated[str, Field(min_length=1, description="What to say.")]
    language: Annotated[
        str | None, Field(description="Its language (e.g. English) or auto; empty: the flow's language.")
    ] = None
    speaker: Annotated[str | None, Field(description="custom: a built-in speaker, e.g. Vivian or Ryan.")] = None
    instruction: Annotated[str | None, Field(description="custom: how to say it, e.g. 'whisper, slowly'.")] = None
    voice_description: Annotated[str | None, Field(description="design: the voice, e.g. 'a warm low male voice'.")] = (
        None
    )
    reference: Annotated[str | None, Field(description="clone: the voice's recording (file or s3:// URI).")] = None
    reference_transcript: Annotated[
        str | None, Field(description="clone: what the recording says; empty: transcribed.")
    ] = None

    def item(self, language: str) -> SynthesisItem:
        return SynthesisItem(
            text=self.text,
            language=self.language or language,
            speaker=self.speaker,
            instruction=self.instruction,
            voice_description=self.voice_description,
        )


def check_items(mode: Mode, items: list[SpeechItem]) -> None:
    """One-line errors for items that cannot be spoken in ``mode`` (before any model loads)."""
    needs = {"clone": "reference", "design": "voice_description", "custom": "speaker"}[mode]
    missing = [i for i, item in enumerate(items) if not getattr(item, needs)]
    if missing:
        raise ValueError(f"{mode} mode needs a {needs} on every item; item(s) {', '.join(map(str, missing))} have none")


@threaded_flow(registry.SYNTHESIZE.name)
def synthesize(
    mode: Mode,
    items: Annotated[list[SpeechItem], Field(min_length=1)],
    language: str = AUTO_LANGUAGE,
    options: SpeechOptions = SpeechOptions(),
    output_dir: str | None = None,
    storage_block: StorageBlock = None,
    models_block: ModelsBlock = None,
) -> SynthesisReport:
    """Batch text-to-speech with Qwen3-TTS: one WAV and one ``syntheses`` row per item, in item order.

    Args:
        mode: design (a described voice), custom (a built-in speaker) or clone (a reference recording).
        items: The lines, each with its voice for the mode.
        language: Language of items that name none (e.g. English, Chinese) or auto.
        options: The switches (pre-processing of references, post-processing, upsampling), consent note, step options.
        output_dir: Also copy the finished WAVs into this folder (line-000.wav, ...) on the machine running the flow.
        storage_block: A saved voxflow-storage Block (picked, or its name); empty to use the environment.
        models_block: A saved voxflow-models Block (picked, or its name); empty to use VOXFLOW_MODEL_DIR and HF_TOKEN.
    """
    check_items(mode, items)
    env = environment(storage_block, models_block)
    futures: dict[str, PrefectFuture] = {}
    groups: dict[tuple[str | None, str | None], list[int]] = {}  # clone: one voice per reference
    for i, item in enumerate(items):
        key = (item.reference, item.reference_transcript) if mode == "clone" else (None, None)
        groups.setdefault(key, []).append(i)
    voices = {key: Voice(*key, options, env) if mode == "clone" else None for key in groups}  # 1–4, all at once
    for key, voice in voices.items():
        futures.update({f"{stage}:{key[0]}": f for stage, f in (voice.futures if voice else {}).items()})
    speeches = {  # 5. each group's lines as soon as its voice is ready (groups run side by side)
        key: speak(
            SynthesisRequest(mode, tuple(items[i].item(language) for i in indices)), voices[key], options, env, futures
        )
        for key, indices in groups.items()
    }
    finished: dict[int, tuple] = {}
    for key, indices in groups.items():  # 6. finish each line
        finished.update(zip(indices, enhance_lines(speeches[key], options, env, futures)))
    sources = [items[i].reference if mode == "clone" else None for i in range(len(items))]
    return finish(
        [finished[i] for i in range(len(items))], sources, options, env, futures, registry.SYNTHESIZE.name, output_dir
    )  # 7
