"""``voxflow transcribe``, ``separate`` and ``lipsync``: the analysis flows on files, folders or s3:// URIs."""

from __future__ import annotations

import argparse

from voxflow.flows.cli.common import add_run_options, given, option, run_files
from voxflow.tasks.diarize import DiarizeOptions
from voxflow.tasks.lipsync import LipsyncOptions
from voxflow.tasks.separate import SeparateOptions
from voxflow.tasks.transcribe import TranscribeOptions

TRANSCRIPT_FORMATS = ("txt", "srt", "vtt", "tsv", "json", "rttm")  # what -o copies of a transcribed file


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
    option(parser, "--compute-type", TranscribeOptions, "compute_type")
    option(parser, "--beam-size", TranscribeOptions, "beam_size")
    option(parser, "--vad-threshold", TranscribeOptions, "vad_threshold")
    option(parser, "--vad-pad", TranscribeOptions, "vad_pad_s")
    option(parser, "--vad-min-silence", TranscribeOptions, "vad_min_silence_s")
    option(parser, "--chunk", TranscribeOptions, "chunk_s")
    option(parser, "--min-confidence", TranscribeOptions, "min_confidence")
    option(parser, "--second-pass-model", TranscribeOptions, "second_pass_model")
    parser.add_argument("--no-fallback", action="store_true", help="decode at temperature 0 only (no fallback)")
    parser.add_argument(
        "--no-timestamps", action="store_true", help="one text per chunk, as faster-whisper's batched pipeline"
    )
    parser.add_argument("--per-channel", action="store_true", help="each channel on its own, speaker = channel")
    parser.add_argument(
        "--language-per-chunk", action="store_true", help="detect the language of every chunk (code-switching)"
    )
    parser.add_argument("--drop-low-confidence", action="store_true", help="leave segments below --min-confidence out")
    add_run_options(parser, formats=TRANSCRIPT_FORMATS)
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
            transcribe=given(
                model=args.model,
                language=args.language,
                backend=args.backend,
                compute_type=args.compute_type,
                beam_size=args.beam_size,
                vad_threshold=args.vad_threshold,
                vad_pad_s=args.vad_pad,
                vad_min_silence_s=args.vad_min_silence,
                chunk_s=args.chunk,
                min_confidence=args.min_confidence,
                second_pass_model=args.second_pass_model,
                temperatures=(0.0,) if args.no_fallback else None,
                timestamps=False if args.no_timestamps else None,
                per_channel=args.per_channel or None,
                language_per_chunk=args.language_per_chunk or None,
                drop_low_confidence=args.drop_low_confidence or None,
            ),
        )
    )
    columns = ("file", "status", "computed", "language", "speakers", "segments")
    return run_files(transcribe, args, options, columns, TRANSCRIPT_FORMATS)


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
