"""``voxflow replace``: one speaker of a recording speaks in a new voice; every other sound stays."""

from __future__ import annotations

import argparse
from pathlib import Path

from voxflow.flows.cli.common import add_store_options, given, option, print_report
from voxflow.tasks.line_check import CheckOptions
from voxflow.tasks.reconstruct import ReconstructOptions, TimingOptions
from voxflow.tasks.synthesize import AUTO_LANGUAGE, SynthesizeOptions

OUTPUT_SUFFIXES = {  # artifact name -> what is written next to -o OUT.wav
    "vocals.wav": ".vocals.wav",
    "accompaniment.wav": ".accompaniment.wav",
    "new_voice.wav": ".new_voice.wav",
    "lines.parquet": ".lines.parquet",
    "lines.csv": ".lines.csv",
    "report.md": ".report.md",
}


def add_replace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="the recording: an audio file or s3:// URI")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--speaker", help="the diarization label of the speaker to replace, e.g. SPEAKER_01")
    target.add_argument("--like", metavar="SAMPLE", help="replace the speaker whose voice is closest to this recording")
    target.add_argument("--most-talk", action="store_true", help="replace the speaker who talks most (the default)")
    voice = parser.add_mutually_exclusive_group()
    voice.add_argument("--voice", metavar="REF", help="the new voice: a recording to clone (3-30 s of one speaker)")
    voice.add_argument("--design", metavar="DESCRIPTION", help="the new voice in words (default 'a calm, clear voice')")
    parser.add_argument("--voice-transcript", help="with --voice: what the recording says (default: transcribed)")
    parser.add_argument(
        "--script", help="an edited script: a lines.csv (or JSON, Parquet) of a first run, texts changed"
    )
    parser.add_argument("--lines", help="known lines (line_id, speaker, start_s, end_s, text) instead of diarizing")
    parser.add_argument(
        "--no-separate", action="store_true", help="a recording of voices alone: do not separate music and effects"
    )
    parser.add_argument(
        "--language", default=AUTO_LANGUAGE, help=f"language of the lines, e.g. English (default {AUTO_LANGUAGE})"
    )
    parser.add_argument(
        "-o", "--output", required=True, help="the final WAV; stems, line table and report go beside it"
    )
    option(parser, "--max-rate", TimingOptions, "max_rate")
    option(parser, "--overlap", ReconstructOptions, "overlap")
    option(parser, "--stretch", ReconstructOptions, "stretch_backend")
    option(parser, "--retries", CheckOptions, "retries")
    parser.add_argument("--no-check", action="store_true", help="use every line as synthesized (no quality loop)")
    parser.add_argument("--no-post-processing", action="store_true", help="do not denoise the generated speech")
    parser.add_argument(
        "--no-upsampling", action="store_true", help="plain resampling instead of learned 48 kHz upsampling"
    )
    option(parser, "--seed", SynthesizeOptions, "seed")
    option(parser, "--max-new-tokens-cap", SynthesizeOptions, "max_new_tokens_cap")
    parser.add_argument("--consent-note", help="consent of the new voice's owner, recorded with every line")
    add_store_options(parser)
    parser.set_defaults(func=replace)


def replace_options(args: argparse.Namespace):
    """The flow's options from the command line (unset flags keep the declared defaults)."""
    from voxflow.flows.voice_replace import PIPELINE

    speech = given(
        run_post_processing=False if args.no_post_processing else None,
        run_upsampling=False if args.no_upsampling else None,
        consent_note=args.consent_note,
        synthesize=given(seed=args.seed, max_new_tokens_cap=args.max_new_tokens_cap),
    )
    return PIPELINE.options(
        given(
            target=given(speaker=args.speaker),
            like=args.like,
            voice=args.voice,
            voice_transcript=args.voice_transcript,
            design=args.design,
            language=args.language,
            script=args.script,
            lines=args.lines,
            run_separate=False if args.no_separate else None,
            speech=speech,
            quality=given(enabled=False if args.no_check else None, retries=args.retries),
            reconstruct=given(overlap=args.overlap, stretch_backend=args.stretch, timing=given(max_rate=args.max_rate)),
        )
    )


def write_outputs(outcome, output: Path, settings) -> list[Path]:
    """The final WAV at ``output`` and the stems, line table and report beside it."""
    from voxflow.storage.store import shared_store

    store = shared_store(settings)
    output.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for name, uri in outcome.outputs.items():
        path = (
            output if name == "replaced.wav" else output.with_name(output.stem + OUTPUT_SUFFIXES.get(name, "." + name))
        )
        path.write_bytes(store.get_bytes(store.key_of(uri)))
        written.append(path)
    return written


def replace(args: argparse.Namespace) -> int:
    from voxflow.flows.environment import store_settings
    from voxflow.flows.pipelines import FilesFailed
    from voxflow.flows.voice_replace import voice_replace

    options = replace_options(args)
    try:
        report = voice_replace(
            paths=[args.input],
            options=options,
            parallel_files=1,
            storage_block=args.storage_block,
            models_block=args.models_block,
        )
    except FilesFailed as e:
        report = e.report
    code = print_report(report, ("file", "status", "computed", "target", "replaced", "flagged", "true_peak_dbtp"))
    for outcome in report.outcomes:
        if outcome.status in ("done", "cached"):
            for path in write_outputs(outcome, Path(args.output), store_settings(args.storage_block)):
                print(f"wrote {path}")
    return code


COMMANDS = {"replace": add_replace}
