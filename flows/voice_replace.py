"""The ``voice_replace`` flow: one speaker of a recording speaks in a new voice; every other sound stays.

Per file::

    1. ingest (the source's rate and channels) → 2. separate (vocals / accompaniment) → 3. diarize →
    4. transcribe → 5. script (line ids, an edited script applied) → 6. target (label, likeness or most talk) →
    7. the new voice (clone: reference → prompt, as the synthesis flows) → for each of the target's lines:
    8. synthesize → 9. enhance → 10. check (re-transcribe, voice, DNSMOS; a failing line again with a new seed) →
    11. reconstruct (fit the timing, mix over the accompaniment) → 12. ``syntheses`` rows

A lines file (``lines``) replaces steps 3–4 with known turns and words. Every step is a cached stage:
a second run with an edited script synthesizes, enhances and checks only the lines whose words
changed (each line is its own synthesis, keyed by its text, the voice and the options), then mixes again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated, Any

from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from pydantic import Field

from voxflow.flows import registry
from voxflow.flows.environment import Environment, ModelsBlock, StorageBlock
from voxflow.flows.pipelines import (
    DEFAULT_PARALLEL_FILES,
    FilePipeline,
    ParallelFiles,
    RunReport,
    run_pipeline,
    threaded_flow,
)
from voxflow.flows.reporting import StageBars, publish_markdown
from voxflow.flows.speech import SpeechOptions, Voice, record_syntheses, synthesis_rows
from voxflow.storage.keys import source_name
from voxflow.storage.settings import StoreSettings
from voxflow.tasks import diarize, ingest, line_check, reconstruct, script, separate, target
from voxflow.tasks import synthesize as synthesis
from voxflow.tasks import transcribe as transcription
from voxflow.tasks.diarize import DiarizeOptions, diarize_audio
from voxflow.tasks.enhance import enhance_audio
from voxflow.tasks.ingest import ingest_file
from voxflow.tasks.kit.caching import TextInput, params_hash
from voxflow.tasks.kit.options import InvalidOptions, Options
from voxflow.tasks.kit.outputs import read_bytes
from voxflow.tasks.line_check import CheckOptions, LineCheck, check_new_line
from voxflow.tasks.reconstruct import (
    NewLine,
    ReconstructOptions,
    ReconstructRequest,
    ReconstructResult,
    reconstruct_audio,
)
from voxflow.tasks.script import Script, ScriptLine, ScriptOptions, make_script
from voxflow.tasks.separate import SeparateOptions, separate_audio
from voxflow.tasks.synthesize import AUTO_LANGUAGE, SynthesisItem, SynthesisRequest, synthesize_lines
from voxflow.tasks.target import TargetChoice, TargetOptions, choose_target_speaker
from voxflow.tasks.transcribe import TranscribeOptions, transcribe_audio

RETRY_SEED_STRIDE = 100_000  # a regenerated line's seed step (the synthesize stage's own retries step by 1000)


@dataclass(frozen=True)
class VoiceReplaceOptions(Options):
    """Who is replaced, by which voice, with which words, and every step's options."""

    target: TargetOptions = field(default_factory=TargetOptions)
    like: Annotated[
        str | None,
        Field(description="A recording of the speaker to replace: the most similar speaker is the target."),
    ] = None
    voice: Annotated[str | None, Field(description="The new voice: a recording to clone (3–30 s of one speaker).")] = (
        None
    )
    voice_transcript: Annotated[
        str | None, Field(description="What the voice recording says; empty: transcribed with Whisper.")
    ] = None
    design: Annotated[
        str, Field(description="The new voice described in words, used when no voice recording is given.")
    ] = "a calm, clear voice"
    language: Annotated[str, Field(description="Language of the lines (e.g. English) or auto.")] = AUTO_LANGUAGE
    script: Annotated[
        str | None,
        Field(description="An edited script (CSV, JSON or Parquet with line_id and text, e.g. a run's lines.csv)."),
    ] = None
    lines: Annotated[
        str | None,
        Field(
            description="Known lines (line_id, speaker, start_s, end_s, text) instead of diarizing and transcribing."
        ),
    ] = None
    run_separate: Annotated[
        bool,
        Field(
            description="Separate voices from music and effects first (off: a recording of voices alone; "
            "the replaced lines then have nothing under them)."
        ),
    ] = True
    separate: SeparateOptions = field(default_factory=SeparateOptions)
    diarize: DiarizeOptions = field(default_factory=DiarizeOptions)
    transcribe: TranscribeOptions = field(default_factory=TranscribeOptions)
    speech: SpeechOptions = field(default_factory=SpeechOptions)
    quality: CheckOptions = field(default_factory=CheckOptions)
    reconstruct: ReconstructOptions = field(default_factory=ReconstructOptions)

    def check(self) -> None:
        if self.like is not None and self.target.speaker is not None:
            raise InvalidOptions("VoiceReplaceOptions: name the target by target.speaker or by like, not both")

    @property
    def mode(self) -> str:
        return "clone" if self.voice else "design"

    def item(self, text: str) -> SynthesisItem:
        return SynthesisItem(text=text, language=self.language, voice_description=None if self.voice else self.design)


@dataclass
class Attempt:
    """One try at one line: its synthesis, its enhancement and its check (futures, then results)."""

    index: int
    seed: int
    speech: PrefectFuture
    final: PrefectFuture | None = None
    check: PrefectFuture | None = None


def fingerprint(line: ScriptLine, voice_sha256: str | None, options: VoiceReplaceOptions) -> str:
    """What decides a line's new audio: its words, the voice and the synthesis options (not the seed's retries)."""
    decided = {
        "text": line.text,
        "voice": voice_sha256 or options.design,  # the recording's prompt, else the description
        "language": options.language,
        "speech": options.speech,
        "quality": options.quality,
    }
    return params_hash(decided, code_version=synthesis.CODE_VERSION)


class LineRun:
    """The synthesis of a target's lines with the closed quality loop: synthesize → enhance → check, retried."""

    def __init__(
        self, lines: tuple[ScriptLine, ...], voice: Voice | None, options: VoiceReplaceOptions, env: Environment
    ):
        self.lines, self.voice, self.options, self.env = lines, voice, options, env
        self.futures: dict[str, PrefectFuture] = {}
        self.best: dict[int, Attempt] = {}
        self.tries: dict[int, int] = {}

    def _submit(self, indexes: list[int], attempt: int, bars: StageBars) -> list[Attempt]:
        env, options = self.env, self.options
        seed = options.speech.synthesize.seed + RETRY_SEED_STRIDE * attempt
        synthesize_options = replace(options.speech.synthesize, seed=seed)
        prompt = self.voice.prompt if self.voice else None
        tries = [
            Attempt(
                i,
                seed,
                env.stage(synthesize_lines).submit(
                    SynthesisRequest(options.mode, (options.item(self.lines[i].text),)),
                    prompt,
                    synthesize_options,
                    env.settings,
                    env.models,
                ),
            )
            for i in indexes
        ]
        enhance = options.speech.enhance_options()
        for t in tries:
            line = t.speech.result().lines[0]
            bars.advance("synthesize")
            t.final = (
                env.stage(enhance_audio).submit(line.artifact, enhance, env.settings, env.models) if enhance else None
            )
        if options.quality.enabled:
            voice = self.voice.futures["ingest"] if self.voice else None  # the recording as the user gave it
            quality = options.quality.resolved(env.models)
            for t in tries:
                audio = t.final if t.final is not None else t.speech.result().lines[0].artifact
                text = TextInput(self.lines[t.index].text)
                t.check = env.stage(check_new_line).submit(audio, text, voice, quality, env.settings, env.models)
        for t in tries:
            for stage, future in (("synthesize", t.speech), ("enhance", t.final), ("line_check", t.check)):
                if future is not None:
                    self.futures[f"{stage}:{t.index}:{attempt}"] = future
        return tries

    def run(self, bars: StageBars) -> None:
        """Every line once, then the failing ones again with new seeds (up to ``quality.retries`` times)."""
        pending = list(range(len(self.lines)))
        rounds = self.options.quality.retries + 1 if self.options.quality.enabled else 1
        bars.start("synthesize", len(pending))
        for attempt in range(rounds):
            if not pending:
                break
            if attempt:
                bars.grow("synthesize", len(pending))
            failing = []
            for t in self._submit(pending, attempt, bars):
                self.tries[t.index] = attempt + 1
                check = t.check.result() if t.check is not None else None
                kept = self.best.get(t.index)
                if kept is None or (check is not None and check.score < kept.check.result().score):
                    self.best[t.index] = t
                if check is not None and not check.passed:
                    failing.append(t.index)
            pending = failing

    def new_lines(self) -> tuple[NewLine, ...]:
        voice_sha = self.voice.prompt.result().sha256 if self.voice else None
        out = []
        for i, line in enumerate(self.lines):
            best = self.best[i]
            final = best.final.result() if best.final is not None else None
            audio = final.artifact if final is not None else best.speech.result().lines[0].artifact
            check: LineCheck | None = best.check.result() if best.check is not None else None
            out.append(
                NewLine(line, audio, fingerprint(line, voice_sha, self.options), best.seed, self.tries[i], check)
            )
        return tuple(out)

    def finished(self) -> list[tuple[Any, Any]]:
        """(synthesized line, final) of each kept attempt, for the ``syntheses`` rows."""
        return [
            (
                self.best[i].speech.result().lines[0],
                self.best[i].final.result() if self.best[i].final else self.best[i].speech.result().lines[0].artifact,
            )
            for i in range(len(self.lines))
        ]


def submit_voice_replace(source_uri: str, options: VoiceReplaceOptions, env: Environment) -> dict[str, PrefectFuture]:
    """The per-file chain (see the module); waits where a later step needs an earlier one's answer."""
    name = source_name(source_uri)
    bars = StageBars(name)
    f: dict[str, PrefectFuture] = {}
    f["ingest"] = env.stage(ingest_file).submit(source_uri, ingest.NATIVE, env.settings, env.name_of(source_uri))  # 1
    voices = f["ingest"]
    if options.run_separate:  # 2
        voices = f["separate"] = env.stage(separate_audio).submit(voices, options.separate, env.settings, env.models)
    words, turns = options.lines, None
    if options.lines is None:
        turns = f["diarize"] = env.stage(diarize_audio).submit(voices, options.diarize, env.settings, env.models)  # 3
        words = f["transcribe"] = env.stage(transcribe_audio).submit(  # 4
            voices, turns, options.transcribe.resolved(env.models), env.settings, env.models
        )
    f["script"] = env.stage(make_script).submit(words, turns, options.script, ScriptOptions(), env.settings)  # 5
    f["target"] = env.stage(choose_target_speaker).submit(  # 6
        voices, f["script"], options.like, options.target, env.settings, env.models
    )
    voice = Voice(options.voice, options.voice_transcript, options.speech, env) if options.voice else None  # 7
    for stage in ("ingest", "separate", "diarize", "transcribe", "script", "target"):
        if stage in f:
            f[stage].result()
            bars.done(stage)
    if voice is not None:
        voice.wait()
        f.update({f"voice:{k}": v for k, v in voice.futures.items()})
    said: Script = f["script"].result()
    chosen: TargetChoice = f["target"].result()
    lines = LineRun(said.of(chosen.speaker), voice, options, env)
    lines.run(bars)  # 8–10
    f.update(lines.futures)
    mix, stems = f["ingest"].result().artifact, f["separate"].result() if options.run_separate else None
    request = ReconstructRequest(
        mix,
        stems.artifact if stems else mix,
        stems.accompaniment if stems else None,
        said.turns,
        chosen.speaker,
        lines.new_lines(),
        chosen.describe(),
        name,
    )
    f["reconstruct"] = env.stage(reconstruct_audio).submit(request, options.reconstruct, env.settings)  # 11
    done: ReconstructResult = f["reconstruct"].result()
    bars.done("reconstruct")
    bars.close()
    record_syntheses(  # 12
        synthesis_rows(lines.finished(), [options.voice] * len(lines.lines), options.speech, _flow_run_id()),
        env.settings,
    )
    publish_markdown(f"voice-replace-{name}", read_bytes(done.report, env.settings).decode())
    return f


def _flow_run_id() -> str | None:
    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else None


def replaced_lines(result: ReconstructResult, settings: StoreSettings) -> tuple[str, ...]:
    """What the command line prints of a file: the target, then one line per replaced line and the flags."""
    import io

    import pyarrow.parquet as pq

    rows = pq.read_table(io.BytesIO(read_bytes(result.table, settings))).to_pylist()
    head = f"target {result.target}: {result.replaced} of {result.lines} line(s) replaced, {result.flagged} flagged"
    if not result.lines:
        head += f" (nothing was transcribed for {result.target}: the output is the input)"
    chosen = (f"chosen: {result.target_note}",) if result.target_note else ()
    return (head, *chosen) + tuple(_described(row) for row in rows)


def _described(row: dict) -> str:
    """``line-003   12.40s slot 2.10s rate 1.05 wer 0.00  the words  [notes]``"""
    wer = "" if row["wer"] is None else f" wer {row['wer']:.2f}"
    notes = f"  [{row['notes']}]" if row["notes"] else ""
    return f"{row['line_id']} {row['start_s']:7.2f}s slot {row['slot_s']:.2f}s rate {row['applied_rate']:.2f}{wer}  {row['text']}{notes}"


PIPELINE = FilePipeline.of_stages(
    registry.VOICE_REPLACE.name,
    VoiceReplaceOptions,
    submit_voice_replace,
    ingest,
    separate,
    diarize,
    transcription,
    script,
    target,
    synthesis,
    line_check,
    reconstruct,
    describe=replaced_lines,
    waits=True,
)


@threaded_flow(registry.VOICE_REPLACE.name)
def voice_replace(
    paths: list[str],
    options: VoiceReplaceOptions,
    parallel_files: ParallelFiles = DEFAULT_PARALLEL_FILES,
    storage_block: StorageBlock = None,
    models_block: ModelsBlock = None,
) -> RunReport:
    """Replace one speaker's voice in each recording, keep every other sound, fit the original timing.

    Writes per file: replaced.wav (the input's rate and channels), vocals.wav and accompaniment.wav
    (separate), new_voice.wav (the fitted lines alone), lines.parquet and lines.csv (one row per
    target line: timing plan, levels, quality check) and report.md (also a Markdown artifact).

    Args:
        paths: Audio files, folders or s3:// URIs.
        options: The target (options.target.speaker or options.like; default: who talks most), the new voice
            (options.voice or options.design), an edited script, and every step's options.
        parallel_files: How many files are processed at once (GPU stages still take turns).
        storage_block: A saved voxflow-storage Block (picked, or its name); empty to use the environment.
        models_block: A saved voxflow-models Block (picked, or its name); empty to use VOXFLOW_MODEL_DIR and HF_TOKEN.
    """
    return run_pipeline(PIPELINE, paths, options, parallel_files, storage_block, models_block)
