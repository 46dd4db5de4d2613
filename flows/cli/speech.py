"""``voxflow clone`` and ``voxflow synth``: text to speech in a cloned, designed or built-in voice."""

from __future__ import annotations

import argparse
import sys

from voxflow.flows.cli.common import add_store_options, given, option, print_rows
from voxflow.flows.speech import SpeechOptions
from voxflow.tasks.synthesize import AUTO_LANGUAGE, SynthesizeOptions


def add_speech_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--language", default=AUTO_LANGUAGE, help=f"language of the lines, e.g. English (default {AUTO_LANGUAGE})"
    )
    parser.add_argument(
        "--no-pre-processing", action="store_true", help="use the reference as it is (it is still checked)"
    )
    parser.add_argument("--no-post-processing", action="store_true", help="do not denoise the generated speech")
    parser.add_argument(
        "--no-upsampling", action="store_true", help="plain resampling instead of learned 48 kHz upsampling"
    )
    option(parser, "--output-rate-hz", SpeechOptions, "output_rate_hz")
    option(parser, "--model", SynthesizeOptions, "model")
    option(parser, "--seed", SynthesizeOptions, "seed")
    option(parser, "--batch-size", SynthesizeOptions, "batch_size")
    option(parser, "--consent-note", SpeechOptions, "consent_note")
    parser.add_argument("--out", help="also copy the WAVs into this folder (line-000.wav, ...)")
    add_store_options(parser)


def speech_options(args: argparse.Namespace) -> SpeechOptions:
    """The synthesis flows' options from the command line (unset flags keep the declared defaults)."""
    from pydantic import TypeAdapter

    switches = given(
        run_pre_processing=False if args.no_pre_processing else None,
        run_post_processing=False if args.no_post_processing else None,
        run_upsampling=False if args.no_upsampling else None,
    )
    synthesize = given(model=args.model, seed=args.seed, batch_size=args.batch_size)
    chosen = given(output_rate_hz=args.output_rate_hz, consent_note=args.consent_note, synthesize=synthesize)
    return TypeAdapter(SpeechOptions).validate_python({**switches, **chosen})


def _run(args: argparse.Namespace) -> dict:
    """What both synthesis flows take from the command line besides their lines and voice."""
    return {
        "language": args.language,
        "options": speech_options(args),
        "output_dir": args.out,
        "storage_block": args.storage_block,
        "models_block": args.models_block,
        "return_state": True,
    }


def print_speech(state) -> int:
    """The lines table, a warning per flagged line, and where each copied WAV went."""
    from voxflow.tasks.kit.runs import failed_stage, failure_reason

    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BaseException):
        print(f"error: {': '.join(p for p in (failed_stage(outcome), failure_reason(outcome)) if p)}", file=sys.stderr)
        return 2 if isinstance(outcome, ValueError) else 1
    columns = ("line", "text", "duration_s", "rate_hz", "seed", "attempts", "quality", "wav")
    print_rows([line.row() for line in outcome.lines], columns)
    print(outcome.summary())
    for line in outcome.flagged:
        print(
            f"warning: line {line.index} ({line.text[:40]!r}) failed the quality guard after {line.attempts} "
            f"attempt(s): {', '.join(line.issues)}",
            file=sys.stderr,
        )
    for line in outcome.lines:
        if line.path:
            print(f"wrote {line.path}")
    return 0


def add_clone(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference", help="the voice to clone: an audio file or s3:// URI (3-30 s of one speaker)")
    parser.add_argument("lines", nargs="+", help="the texts to speak, one WAV each")
    parser.add_argument("--transcript", help="what the reference says (default: transcribed with Whisper)")
    add_speech_options(parser)
    parser.set_defaults(func=clone)


def clone(args: argparse.Namespace) -> int:
    from voxflow.flows.clone_enhanced import clone_enhanced

    state = clone_enhanced(reference=args.reference, lines=args.lines, transcript=args.transcript, **_run(args))
    return print_speech(state)


def add_synth(parser: argparse.ArgumentParser) -> None:
    voice = parser.add_mutually_exclusive_group(required=True)
    voice.add_argument("--design", metavar="DESCRIPTION", help="describe the voice, e.g. 'a calm low female voice'")
    voice.add_argument("--speaker", help="a built-in speaker of the CustomVoice model, e.g. Vivian or Ryan")
    voice.add_argument("--clone", metavar="REFERENCE", help="a recording of the voice to clone")
    parser.add_argument("texts", nargs="+", help="the texts to speak, one WAV each")
    parser.add_argument("--instruct", help="with --speaker: how to say it, e.g. 'cheerful'")
    parser.add_argument("--transcript", help="with --clone: what the recording says (default: transcribed)")
    add_speech_options(parser)
    parser.set_defaults(func=synth)


def synth(args: argparse.Namespace) -> int:
    from voxflow.flows.synthesize import SpeechItem, synthesize

    if args.design:
        mode, voice = "design", {"voice_description": args.design}
    elif args.speaker:
        mode, voice = "custom", {"speaker": args.speaker, "instruction": args.instruct}
    else:
        mode, voice = "clone", {"reference": args.clone, "reference_transcript": args.transcript}
    state = synthesize(mode=mode, items=[SpeechItem(text=text, **voice) for text in args.texts], **_run(args))
    return print_speech(state)


COMMANDS = {"clone": add_clone, "synth": add_synth}
