"""What the synthesis flows share: a reference becomes a voice, lines become finished speech and rows.

``clone_enhanced`` and ``synthesize`` both run these steps; each step is a cached stage task, so a
reference is ingested, cleaned, transcribed and turned into a voice-clone prompt once, and every later
run with the same reference and model reuses that prompt::

    voice:  reference → 1. ingest (content-addressed) → 2. pre-process / check → 3. [transcribe] → 4. voice prompt
    lines:  5. synthesize (batched) → 6. enhance each line (denoise → 48 kHz) → 7. syntheses rows
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

from prefect import task
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from pydantic import Field

from voxflow.flows.environment import Environment
from voxflow.flows.reporting import publish_table
from voxflow.storage.catalog import Catalog
from voxflow.storage.store import shared_store
from voxflow.tasks.enhance import EnhanceOptions, enhance_audio
from voxflow.tasks.ingest import IngestOptions, ingest_file
from voxflow.tasks.kit.options import Options
from voxflow.tasks.reference import ReferenceOptions, prepare_reference_audio
from voxflow.tasks.synthesize import SAMPLE_RATE_HZ as NATIVE_RATE_HZ
from voxflow.tasks.synthesize import (
    ReferenceText,
    SynthesisItem,
    SynthesisRequest,
    SynthesizedLine,
    SynthesizeOptions,
    clone_prompt,
    synthesize_lines,
)
from voxflow.tasks.transcribe import TranscribeOptions, transcribe_audio

REFERENCE_INGEST = IngestOptions(sample_rate_hz=None)  # the reference at its own rate, mono


@dataclass(frozen=True)
class SpeechOptions(Options):
    """The three switches of the synthesis flows, and the options of every step they run."""

    run_pre_processing: Annotated[
        bool, Field(description="Clean the reference first: denoise, 16 kHz, loudness, trim silence.")
    ] = True
    run_post_processing: Annotated[bool, Field(description="Denoise the generated speech.")] = True
    run_upsampling: Annotated[
        bool, Field(description="Learned 16 → 48 kHz super-resolution (off: plain resampling).")
    ] = True
    output_rate_hz: Annotated[
        int,
        Field(
            ge=8000,
            le=192000,
            description="Rate of the WAVs written (the model's own rate, 24000, skips enhancement when both switches above are off).",
        ),
    ] = 48000
    consent_note: Annotated[
        str | None, Field(description="Consent of the voice's owner, recorded with every line.")
    ] = None
    synthesize: SynthesizeOptions = field(default_factory=SynthesizeOptions)
    reference: ReferenceOptions = field(default_factory=ReferenceOptions)
    transcribe: TranscribeOptions = field(default_factory=TranscribeOptions)
    enhance: EnhanceOptions = field(default_factory=EnhanceOptions)

    def reference_options(self) -> ReferenceOptions:
        """The reference step: ``run_pre_processing`` decides whether it cleans or only checks."""
        return replace(self.reference, process=self.run_pre_processing)

    def enhance_options(self) -> EnhanceOptions | None:
        """The post-chain of each line (None: the line is written at the model's rate as it is)."""
        options = replace(
            self.enhance,
            denoise=self.run_post_processing,
            upsample=self.run_upsampling,
            output_rate_hz=self.output_rate_hz,
        )
        return None if not (options.denoise or options.upsample) and self.output_rate_hz == NATIVE_RATE_HZ else options


@dataclass(frozen=True)
class LineOutcome:
    """One finished line: its text, the WAV written and what the quality guard said."""

    index: int
    text: str
    uri: str
    duration_s: float
    sample_rate_hz: int
    seed: int
    attempts: int
    issues: tuple[str, ...]
    synthesis_id: str
    path: str | None = None  # its copy in the flow's output_dir, when one was given

    def row(self) -> dict:
        return {
            "line": self.index,
            "text": self.text if len(self.text) <= 48 else self.text[:45] + "...",
            "duration_s": round(self.duration_s, 2),
            "rate_hz": self.sample_rate_hz,
            "seed": self.seed,
            "attempts": self.attempts,
            "quality": ", ".join(self.issues) or "ok",
            "wav": self.uri,
        }


@dataclass(frozen=True)
class SynthesisReport:
    """What a synthesis flow returns: the lines in the order given, and how many needed a flag."""

    lines: list[LineOutcome]
    computed: tuple[str, ...] = ()  # the stages that computed (not cache hits)

    @property
    def flagged(self) -> list[LineOutcome]:
        return [line for line in self.lines if line.issues]

    def summary(self) -> str:
        cached = "" if self.computed else " (all cached)"
        flagged = f", {len(self.flagged)} flagged by the quality guard" if self.flagged else ""
        return f"{len(self.lines)} line(s) written{cached}{flagged}"


class Voice:
    """The futures of one reference's steps (1–4): what a clone synthesis needs, once per reference."""

    def __init__(self, reference: str, transcript: str | None, options: SpeechOptions, env: Environment) -> None:
        self.reference = reference
        self.futures: dict[str, PrefectFuture] = {}
        f = self.futures
        f["ingest"] = env.stage(ingest_file).submit(reference, REFERENCE_INGEST, env.settings)  # 1. content-addressed
        f["reference"] = env.stage(prepare_reference_audio).submit(  # 2. cleaned (or only checked)
            f["ingest"], options.reference_options(), env.settings, env.models
        )
        said = ReferenceText(transcript) if transcript else None
        if said is None:  # 3. what the reference says, when not given
            said = f["transcribe"] = env.stage(transcribe_audio).submit(
                f["reference"], None, options.transcribe.resolved(env.models), env.settings, env.models
            )
        f["voice_prompt"] = env.stage(clone_prompt).submit(  # 4. computed once per (reference, model)
            f["reference"], said, options.synthesize.voice_prompt_options(), env.settings, env.models
        )

    @property
    def prompt(self) -> PrefectFuture:
        return self.futures["voice_prompt"]

    def wait(self) -> None:
        """Wait for steps 1–4; re-raise the first failure itself (e.g. "voice reference 'x.wav' is too short")."""
        for future in self.futures.values():
            future.result()


def speak(
    request: SynthesisRequest,
    voice: Voice | None,
    options: SpeechOptions,
    env: Environment,
    futures: dict[str, PrefectFuture],
) -> PrefectFuture:
    """Step 5: submit the request's lines for synthesis in batches, once its voice is ready."""
    prompt = None
    if voice is not None:
        voice.wait()
        prompt = voice.prompt
    speech = env.stage(synthesize_lines).submit(request, prompt, options.synthesize, env.settings, env.models)
    futures[f"synthesize:{len(futures)}"] = speech
    return speech


def enhance_lines(
    speech: PrefectFuture, options: SpeechOptions, env: Environment, futures: dict[str, PrefectFuture]
) -> list[tuple[SynthesizedLine, Any]]:
    """Step 6: finish each synthesized line; (line, final) pairs.

    ``final`` is the enhanced line's result, or the line's own 24 kHz artifact when nothing is enhanced.
    """
    lines = speech.result().lines
    enhance = options.enhance_options()
    if enhance is None:
        return [(line, line.artifact) for line in lines]
    finals = [env.stage(enhance_audio).submit(line.artifact, enhance, env.settings, env.models) for line in lines]
    for i, future in enumerate(finals):
        futures[f"enhance:{len(futures)}:{i}"] = future
    return [(line, future.result()) for line, future in zip(lines, finals)]


def synthesis_id(line: SynthesizedLine, final_sha256: str) -> str:
    """A line's row id: the same line finished the same way is one row, however often it is re-run."""
    return hashlib.sha256(f"{line.artifact.sha256}:{final_sha256}".encode()).hexdigest()


def synthesis_rows(
    finished: Sequence[tuple[SynthesizedLine, Any]],
    voice_sources: Sequence[str | None],
    options: SpeechOptions,
    flow_run_id: str | None,
) -> list[dict]:
    """The ``syntheses`` rows of finished lines (provenance: synthetic, each voice's source, consent)."""
    rows = []
    for (line, final), voice_source in zip(finished, voice_sources, strict=True):
        ref = getattr(final, "artifact", final)
        steps = getattr(final, "steps", ())
        rows.append(
            {
                "synthesis_id": synthesis_id(line, ref.sha256),
                "text": line.text,
                "mode": line.mode,
                "language": line.language,
                "speaker": line.speaker,
                "voice_description": line.voice_description,
                "instruction": line.instruction,
                "voice_source_sha256": line.voice_source_sha256,
                "voice_source": voice_source if line.mode == "clone" else None,
                "model_id": line.model,
                "model_revision": line.model_revision,
                "seed": line.seed,
                "duration_s": ref.duration_s,
                "sample_rate_hz": ref.sample_rate_hz,
                "real_time_factor": line.real_time_factor,
                "artifact_uri": ref.uri,
                "artifact_sha256": ref.sha256,
                "native_artifact_uri": line.artifact.uri,
                "enhancement": ",".join(steps) or None,
                "attempts": line.attempts,
                "quality_ok": not line.issues,
                "quality_issues": ",".join(line.issues) or None,
                "synthetic": True,
                "consent_note": options.consent_note,
                "flow_run_id": flow_run_id,
            }
        )
    return rows


@task(name="record-syntheses", retries=3, retry_delay_seconds=1)
def record_syntheses(rows: list[dict], settings: Any) -> int:
    """Append the ``syntheses`` rows of one run (readers keep one row per synthesis id)."""
    Catalog(shared_store(settings)).append("syntheses", rows)
    return len(rows)


def finish(
    finished: list[tuple[SynthesizedLine, Any]],
    voice_sources: Sequence[str | None],
    options: SpeechOptions,
    env: Environment,
    futures: dict[str, PrefectFuture],
    name: str,
    output_dir: str | None = None,
) -> SynthesisReport:
    """Step 7: record the rows, copy the WAVs to ``output_dir`` (when given), publish the table, return the report."""
    context = FlowRunContext.get()
    flow_run_id = str(context.flow_run.id) if context and context.flow_run else None
    rows = synthesis_rows(finished, voice_sources, options, flow_run_id)
    record_syntheses(rows, env.settings)
    outcomes = [
        LineOutcome(
            i,
            line.text,
            row["artifact_uri"],
            row["duration_s"] or 0.0,
            row["sample_rate_hz"],
            line.seed,
            line.attempts,
            tuple(line.issues),
            row["synthesis_id"],
            export_line(row["artifact_uri"], i, env.settings, output_dir) if output_dir else None,
        )
        for i, ((line, _), row) in enumerate(zip(finished, rows))
    ]
    computed = tuple(dict.fromkeys(stage.split(":")[0] for stage, f in futures.items() if f.state.name != "Cached"))
    report = SynthesisReport(outcomes, computed)
    publish_table(f"{name}-lines", [o.row() for o in outcomes], report.summary())
    return report


def export_line(uri: str, index: int, settings: Any, folder: str) -> str:
    """Copy a finished line to ``<folder>/line-NNN.wav`` (on the machine running the flow); its path."""
    store = shared_store(settings)
    path = Path(folder).expanduser() / f"line-{index:03d}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(store.get_bytes(store.key_of(uri)))
    return str(path)


def items_of(lines: Sequence[str], language: str) -> tuple[SynthesisItem, ...]:
    """Plain lines of text as synthesis items in one language."""
    return tuple(SynthesisItem(text=text, language=language) for text in lines)
