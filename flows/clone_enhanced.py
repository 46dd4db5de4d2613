"""The ``clone_enhanced`` flow: one reference voice speaks a batch of lines, enhanced to 48 kHz.

1. ingest the reference (content-addressed) → 2. pre-process it (denoise, 16 kHz, loudness, trim; or
only check it) → 3. transcribe it when no transcript is given → 4. its voice-clone prompt (once per
reference and model) → 5. synthesize the lines in batches → 6. denoise and upsample each line →
7. ``syntheses`` rows.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from voxflow.flows import registry
from voxflow.flows.environment import ModelsBlock, StorageBlock, environment
from voxflow.flows.pipelines import threaded_flow
from voxflow.flows.speech import SpeechOptions, SynthesisReport, Voice, enhance_lines, finish, items_of, speak
from voxflow.tasks.synthesize import AUTO_LANGUAGE, SynthesisRequest


@threaded_flow(registry.CLONE_ENHANCED.name)
def clone_enhanced(
    reference: str,
    lines: Annotated[list[str], Field(min_length=1)],
    language: str = AUTO_LANGUAGE,
    transcript: str | None = None,
    options: SpeechOptions = SpeechOptions(),
    output_dir: str | None = None,
    storage_block: StorageBlock = None,
    models_block: ModelsBlock = None,
) -> SynthesisReport:
    """Speak ``lines`` in the voice of ``reference`` (Qwen3-TTS voice clone), enhanced to 48 kHz.

    Args:
        reference: The voice to clone: an audio file or s3:// URI, 3–30 s of one speaker.
        lines: The texts to speak, one WAV each.
        language: Language of the lines (e.g. English, Chinese) or auto.
        transcript: What the reference says; empty: transcribed with Whisper.
        options: The switches (pre-processing, post-processing, upsampling), consent note and each step's options.
        output_dir: Also copy the finished WAVs into this folder (line-000.wav, ...) on the machine running the flow.
        storage_block: A saved voxflow-storage Block (picked, or its name); empty to use the environment.
        models_block: A saved voxflow-models Block (picked, or its name); empty to use VOXFLOW_MODEL_DIR and HF_TOKEN.
    """
    env = environment(storage_block, models_block)
    voice = Voice(reference, transcript, options, env)  # 1–4
    request = SynthesisRequest("clone", items_of(lines, language))
    speech = speak(request, voice, options, env, voice.futures)  # 5
    finished = enhance_lines(speech, options, env, voice.futures)  # 6
    return finish(
        finished, [reference] * len(finished), options, env, voice.futures, registry.CLONE_ENHANCED.name, output_dir
    )  # 7
