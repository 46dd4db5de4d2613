"""``voxflow transcribe``, ``separate`` and ``lipsync``: the analysis flows on files, folders or s3:// URIs."""

from __future__ import annotations

import argparse

from voxflow.flows.cli.common import add_run_options, given, option, run_files
from voxflow.tasks.diarize import DiarizeOptions
from voxflow.tasks.lipsync import LipsyncOptions
from voxflow.tasks.separate import SeparateOptions
from voxflow.tasks.transcribe import TranscribeOptions


def add_transcribe(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", help="files, folders or s3:// URIs")
    parser.add_argument("--separate", action="store_true", help="isolate the voices from music and effects first")
    parser.add_argument("--denoise", action="store_true", help="remove background noise first")
    parser.add_argument("--no-diarize", action="store_true", help="do not label speakers")
    option(parser, "--num-speakers", DiarizeOptions, "num_speakers")
    option(parser, "--min-speakers", DiarizeOptions, "min_speakers")
    option(parser, "--max-speakers", DiarizeOptions, "max_speakers")
    option(parser, "--model", TranscribeOptions, "model")
    option(parser, "--language", TranscribeOptions, "language")
    option(parser, "--backend", TranscribeOptions, "backend")
    add_run_options(parser)
    parser.set_defaults(func=transcribe)


def transcribe(args: argparse.Namespace) -> int:
    from voxflow.flows.transcribe import PIPELINE, transcribe

    speakers = given(num_speakers=args.num_speakers, min_speakers=args.min_speakers, max_speakers=args.max_speakers)
    options = PIPELINE.options(
        given(
            run_separate=args.separate or None,
            run_denoise=args.denoise or None,
            run_diarize=False if args.no_diarize else None,
            diarize=speakers,
            transcribe=given(model=args.model, language=args.language, backend=args.backend),
        )
    )
    return run_files(transcribe, args, options, ("file", "status", "computed", "language", "speakers", "segments"))


def add_separate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", help="files, folders or s3:// URIs")
    option(parser, "--model", SeparateOptions, "model")
    add_run_options(parser)
    parser.set_defaults(func=separate)


def separate(args: argparse.Namespace) -> int:
    from voxflow.flows.separate import PIPELINE, separate

    options = PIPELINE.options(given(separate=given(model=args.model)))
    return run_files(separate, args, options, ("file", "status", "computed", "outputs"))


def add_lipsync(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", help="files, folders or s3:// URIs")
    option(parser, "--fps", LipsyncOptions, "fps")
    add_run_options(parser, models=False)
    parser.set_defaults(func=lipsync)


def lipsync(args: argparse.Namespace) -> int:
    from voxflow.flows.lipsync_features import PIPELINE, lipsync_features

    options = PIPELINE.options(given(features=given(fps=args.fps)))
    return run_files(lipsync_features, args, options, ("file", "status", "computed", "frames", "outputs"))


COMMANDS = {"transcribe": add_transcribe, "separate": add_separate, "lipsync": add_lipsync}
