"""The ``voxflow`` command line: runs flows in-process on the embedded defaults or a chosen store."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence


def _quiet_prefect(verbose: bool) -> None:
    """Keep Prefect's console logs (and their tracebacks) off the terminal unless -v; the API keeps them."""
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # pyannote's pooling warns on every short probe of its embedding model; it is harmless and not the user's
    warnings.filterwarnings("ignore", message=r"std\(\): degrees of freedom", category=UserWarning)
    # the ephemeral API's 20 s start-up limit is too short on a busy machine (model stages load torch first)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _print_rows(rows: list[dict], columns: Sequence[str]) -> None:
    widths = {c: max(len(c), *(len(_cell(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_cell(row.get(c)).ljust(widths[c]) for c in columns))


def _cell(value) -> str:
    return "" if value is None else str(value)


def _print_report(report, columns: Sequence[str]) -> int:
    rows = [o.row() for o in report.outcomes]
    if rows:
        _print_rows(rows, columns)
    print(report.summary())
    for outcome in report.failed:  # one line per file: the file, the stage, the reason
        print(f"error: {outcome.message}", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from voxflow.flows.ingest import DEFAULT_PARALLEL_FILES, ingest
    from voxflow.flows.pipelines import FilesFailed
    from voxflow.tasks.ingest import IngestOptions

    given = {"sample_rate_hz": args.sample_rate_hz, "resample_quality": args.resample_quality}
    if args.keep_channels:
        given["mono"] = False
    options = IngestOptions(**{k: v for k, v in given.items() if v is not None})
    try:
        report = ingest(
            paths=args.paths,
            options=options,
            parallel_files=args.jobs or DEFAULT_PARALLEL_FILES,
            storage_block=args.storage_block,
        )
    except FilesFailed as e:
        report = e.report
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _print_report(report, ("file", "status", "duration_s", "sample_rate_hz", "channels", "lufs", "sha256"))


def _param(text: str) -> tuple[str, object]:
    import json

    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--param {text!r}: expected NAME=VALUE")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def cmd_ingest_folder(args: argparse.Namespace) -> int:
    from voxflow.flows.ingest import DEFAULT_PARALLEL_FILES
    from voxflow.flows.ingest_folder import ingest_folder

    flow = ingest_folder
    if args.dask_workers or args.dask_address:
        from prefect_dask import DaskTaskRunner

        cluster = (
            {"address": args.dask_address}
            if args.dask_address
            else {"cluster_kwargs": {"n_workers": args.dask_workers, "threads_per_worker": 1, "processes": True}}
        )
        flow = ingest_folder.with_options(task_runner=DaskTaskRunner(**cluster))
    state = flow(
        source=args.source,
        pattern=args.pattern,
        pipeline=args.flow,
        params=dict(args.param),
        parallel_files=args.jobs or DEFAULT_PARALLEL_FILES,
        storage_block=args.storage_block,
        models_block=args.models_block,
        return_state=True,
    )
    outcome = state.result(raise_on_failure=False)
    report = getattr(outcome, "report", outcome)
    if not hasattr(report, "outcomes"):  # the run failed before processing files
        print(f"error: {outcome}", file=sys.stderr)
        return 2 if isinstance(outcome, (FileNotFoundError, ValueError)) else 1
    return _print_report(report, ("file", "status", "computed", "duration_s", "sample_rate_hz", "channels", "lufs"))


def _run_files(flow, args: argparse.Namespace, options, columns: Sequence[str]) -> tuple[int, object]:
    """Run a per-file flow; print its table and one error line per failed file. Returns (code, report)."""
    from voxflow.flows.ingest import DEFAULT_PARALLEL_FILES
    from voxflow.flows.pipelines import FilesFailed

    try:
        report = flow(
            paths=args.paths,
            options=options,
            parallel_files=args.jobs or DEFAULT_PARALLEL_FILES,
            storage_block=args.storage_block,
            **_models_block(flow, args),
        )
    except FilesFailed as e:
        report = e.report
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2, None
    return _print_report(report, columns), report


def _models_block(flow, args: argparse.Namespace) -> dict:
    return {"models_block": args.models_block} if "models_block" in flow.parameters.properties else {}


def _given(**values) -> dict:
    """The options given on the command line (None means: the option's default)."""
    return {k: v for k, v in values.items() if v is not None}


def cmd_transcribe(args: argparse.Namespace) -> int:
    from voxflow.flows.environment import store_settings
    from voxflow.flows.transcribe import TRANSCRIBE, transcribe

    options = TRANSCRIBE.options(
        _given(
            run_separate=args.separate or None,
            run_denoise=args.denoise or None,
            run_diarize=False if args.no_diarize else None,
            diarize=_given(
                num_speakers=args.num_speakers, min_speakers=args.min_speakers, max_speakers=args.max_speakers
            ),
            transcribe=_given(model=args.model, language=args.language, backend=args.backend),
        )
    )
    code, report = _run_files(
        transcribe, args, options, ("file", "status", "computed", "language", "speakers", "segments")
    )
    settings = store_settings(args.storage_block)
    for outcome in getattr(report, "outcomes", []):
        if outcome.status in ("done", "cached"):
            print(f"\n== {outcome.source_uri.rsplit('/', 1)[-1]}")
            print("\n".join(outcome.result.transcript_lines(settings)))
    return code


def cmd_separate(args: argparse.Namespace) -> int:
    from voxflow.flows.separate import SEPARATE, separate

    options = SEPARATE.options(_given(separate=_given(model=args.model)))
    return _run_files(separate, args, options, ("file", "status", "computed", "outputs"))[0]


def cmd_lipsync(args: argparse.Namespace) -> int:
    from voxflow.flows.lipsync_features import LIPSYNC, lipsync_features

    options = LIPSYNC.options(_given(features=_given(fps=args.fps)))
    return _run_files(lipsync_features, args, options, ("file", "status", "computed", "frames", "outputs"))[0]


def _speech_options(args: argparse.Namespace):
    """The synthesis flows' options from the command line (unset flags keep the defaults)."""
    from pydantic import TypeAdapter

    from voxflow.flows.speech import SpeechOptions

    given = _given(
        run_pre_processing=False if args.no_pre_processing else None,
        run_post_processing=False if args.no_post_processing else None,
        run_upsampling=False if args.no_upsampling else None,
        output_rate_hz=args.output_rate_hz,
        consent_note=args.consent_note,
        synthesize=_given(model=args.model, seed=args.seed, batch_size=args.batch_size),
    )
    return TypeAdapter(SpeechOptions).validate_python(given)


def _print_speech(state, args: argparse.Namespace) -> int:
    """The lines table, a warning per flagged line, and the WAVs copied to ``--out``."""
    from voxflow.flows.environment import store_settings
    from voxflow.tasks.kit.runs import failed_stage, failure_reason

    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BaseException):
        print(f"error: {': '.join(p for p in (failed_stage(outcome), failure_reason(outcome)) if p)}", file=sys.stderr)
        return 2 if isinstance(outcome, ValueError) else 1
    _print_rows(
        [line.row() for line in outcome.lines],
        ("line", "text", "duration_s", "rate_hz", "seed", "attempts", "quality", "wav"),
    )
    print(outcome.summary())
    for line in outcome.flagged:
        print(
            f"warning: line {line.index} ({line.text[:40]!r}) failed the quality guard after {line.attempts} "
            f"attempt(s): {', '.join(line.issues)}",
            file=sys.stderr,
        )
    if args.out:
        from pathlib import Path

        from voxflow.storage.store import open_store

        store, folder = open_store(store_settings(args.storage_block)), Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        for line in outcome.lines:
            path = folder / f"line-{line.index:03d}.wav"
            path.write_bytes(store.get_bytes(store.key_of(line.uri)))
            print(f"wrote {path}")
    return 0


def cmd_clone(args: argparse.Namespace) -> int:
    from voxflow.flows.clone_enhanced import clone_enhanced

    state = clone_enhanced(
        reference=args.reference,
        lines=args.lines,
        language=args.language,
        transcript=args.transcript,
        options=_speech_options(args),
        storage_block=args.storage_block,
        models_block=args.models_block,
        return_state=True,
    )
    return _print_speech(state, args)


def cmd_synth(args: argparse.Namespace) -> int:
    from voxflow.flows.synthesize import SpeechItem, synthesize

    if args.design:
        mode, voice = "design", {"voice_description": args.design}
    elif args.speaker:
        mode, voice = "custom", {"speaker": args.speaker, "instruction": args.instruct}
    else:
        mode, voice = "clone", {"reference": args.clone, "reference_transcript": args.transcript}
    items = [SpeechItem(text=text, **voice) for text in args.texts]
    state = synthesize(
        mode=mode,
        items=items,
        language=args.language,
        options=_speech_options(args),
        storage_block=args.storage_block,
        models_block=args.models_block,
        return_state=True,
    )
    return _print_speech(state, args)


def _add_speech_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--language", default="auto", help="language of the lines, e.g. English or Chinese (default auto)")
    p.add_argument("--no-pre-processing", action="store_true", help="use the reference as it is (it is still checked)")
    p.add_argument("--no-post-processing", action="store_true", help="do not denoise the generated speech")
    p.add_argument("--no-upsampling", action="store_true", help="plain resampling instead of learned 48 kHz upsampling")
    p.add_argument(
        "--output-rate-hz",
        type=int,
        help="rate of the WAVs (default 48000; 24000 with both --no-... switches writes the model's own output)",
    )
    p.add_argument("--model", help="Qwen3-TTS model: a Hugging Face id or a folder name under <model dir>/qwen-tts")
    p.add_argument("--seed", type=int, help="sampling seed (default 0)")
    p.add_argument("--batch-size", type=int, help="lines per model call (default 8)")
    p.add_argument("--consent-note", help="the voice owner's consent, recorded with every line")
    p.add_argument("--out", help="also copy the WAVs into this folder (line-000.wav, ...)")
    p.add_argument("--storage-block", help="name of a saved voxflow-storage Block (default: environment)")
    p.add_argument("--models-block", help="name of a saved voxflow-models Block (default: VOXFLOW_MODEL_DIR, HF_TOKEN)")


def _model_settings(args: argparse.Namespace):
    from voxflow.flows.environment import model_settings

    settings = model_settings(args.models_block)
    if args.model_dir:
        from dataclasses import replace

        settings = replace(settings, model_dir=args.model_dir)
    return settings


def _model_sources():
    import voxflow.tasks.denoise  # noqa: F401  (each registers its model source)
    import voxflow.tasks.diarize  # noqa: F401
    import voxflow.tasks.separate  # noqa: F401
    import voxflow.tasks.synthesize  # noqa: F401
    import voxflow.tasks.transcribe  # noqa: F401
    import voxflow.tasks.upsample  # noqa: F401
    from voxflow.tasks.kit.models import MODEL_SOURCES

    return MODEL_SOURCES


def cmd_models_list(args: argparse.Namespace) -> int:
    settings = _model_settings(args)
    rows = []
    for source in _model_sources().values():
        path = source.present(source.name, settings) if settings.model_dir else None
        rows.append(
            {
                "stage": source.stage,
                "library": source.library,
                "model": source.name,
                "present": str(path) if path else "no (hub download on first use)",
                "gated": "yes (needs HF_TOKEN)" if source.gated else "",
            }
        )
    _print_rows(rows, ("stage", "library", "model", "present", "gated"))
    print(f"model folder: {settings.model_dir or '(none: set VOXFLOW_MODEL_DIR or --model-dir)'}")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    settings = _model_settings(args)
    sources = _model_sources()
    unknown = sorted(set(args.stage or []) - set(sources))
    if unknown:
        raise ValueError(f"unknown stage {', '.join(unknown)}; stages with models are {', '.join(sources)}")
    settings.library_dir("")  # fails early, naming the setting, when there is no model folder
    for stage in args.stage or list(sources):
        source = sources[stage]
        print(f"pulling {stage}: {source.name} ...", flush=True)
        print(f"  -> {source.pull(source.name, settings)}")
    return 0


def cmd_models_build_random(args: argparse.Namespace) -> int:
    from voxflow.tasks.testing import random_models

    files = random_models.build_all(args.dir, args.size, tuple(args.library or random_models.LIBRARIES))
    for path in files:
        print(path)
    print(
        f"wrote {len(files)} file(s) of {args.size} random-weight models into {args.dir}.\n"
        "Their output is noise: use them to check that every flow runs offline "
        f"(VOXFLOW_MODEL_DIR={args.dir}), never for results."
    )
    return 0


def cmd_catalog(args: argparse.Namespace) -> int:
    import pandas as pd

    from voxflow.flows.environment import store_settings
    from voxflow.storage.catalog import Catalog
    from voxflow.storage.store import open_store

    frame = Catalog(open_store(store_settings(args.storage_block))).frame(args.table)
    if args.columns:
        frame = frame[args.columns.split(",")]
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 60):
        print(frame.tail(args.limit).to_string(index=False) if len(frame) else f"(no rows in {args.table})")
    return 0


def cmd_blocks_register(args: argparse.Namespace) -> int:
    from voxflow.blocks import register_block_types

    for slug in register_block_types():
        print(f"registered block type {slug}")
    return 0


def cmd_blocks_save_storage(args: argparse.Namespace) -> int:
    from pydantic import SecretStr

    from voxflow.blocks.storage import VoxflowStorage

    def secret(name: str) -> SecretStr | None:
        return SecretStr(os.environ[name]) if os.environ.get(name) else None

    block = VoxflowStorage(
        location=args.location,
        endpoint_url=args.endpoint_url,
        region=args.region,
        access_key_id=secret("AWS_ACCESS_KEY_ID"),
        secret_access_key=secret("AWS_SECRET_ACCESS_KEY"),
        session_token=secret("AWS_SESSION_TOKEN"),
    )
    block.save(args.name, overwrite=True)
    print(f"saved voxflow-storage/{args.name} ({args.location})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from voxflow.flows.deployments import serve_all

    serve_all(args.inbox, args.cron, args.interval)
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=int, help="files processed in parallel (default min(4, CPUs))")
    p.add_argument("--storage-block", help="name of a saved voxflow-storage Block (default: environment)")
    p.add_argument("--models-block", help="name of a saved voxflow-models Block (default: VOXFLOW_MODEL_DIR, HF_TOKEN)")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", help="the model folder (default: the Block's, else VOXFLOW_MODEL_DIR)")
    p.add_argument("--models-block", help="name of a saved voxflow-models Block")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxflow", description="Prefect-orchestrated speech audio pipeline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Prefect's logs on the terminal")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("ingest", help="decode, measure and store audio files as 16 kHz mono WAV")
    p.add_argument("paths", nargs="+", help="files, folders or s3:// URIs")
    p.add_argument("--sample-rate-hz", type=int, help="rate of the stored working audio (default 16000)")
    p.add_argument("--keep-channels", action="store_true", help="do not downmix to mono")
    p.add_argument("--resample-quality", choices=("QQ", "LQ", "MQ", "HQ", "VHQ"))
    p.add_argument("--jobs", type=int, help="files processed in parallel")
    p.add_argument("--storage-block", help="name of a saved voxflow-storage Block (default: environment)")
    p.set_defaults(func=cmd_ingest)

    p = commands.add_parser("ingest-folder", help="run a flow on every file of a folder or bucket not yet processed")
    p.add_argument("source", help="local folder or s3://bucket/prefix")
    p.add_argument("--pattern", default="*", help="fnmatch pattern on paths below the source (default *)")
    p.add_argument(
        "--flow",
        default="ingest",
        choices=("ingest", "transcribe", "separate", "lipsync_features"),
        help="the flow to run on each new file (default ingest)",
    )
    p.add_argument(
        "--param",
        action="append",
        type=_param,
        default=[],
        metavar="NAME=VALUE",
        help="an option of that flow, e.g. --param sample_rate_hz=22050 (repeatable)",
    )
    p.add_argument("--jobs", type=int, help="files processed in parallel (default min(4, CPUs))")
    p.add_argument("--dask-workers", type=int, help="run the stages on a local Dask cluster of N processes")
    p.add_argument("--dask-address", help="run the stages on an existing Dask scheduler (tcp://host:8786)")
    p.add_argument("--storage-block", help="name of a saved voxflow-storage Block (default: environment)")
    p.add_argument("--models-block", help="name of a saved voxflow-models Block (default: VOXFLOW_MODEL_DIR, HF_TOKEN)")
    p.set_defaults(func=cmd_ingest_folder)

    p = commands.add_parser(
        "transcribe", help="speaker-labelled transcripts: ingest, [separate], [denoise], diarize, transcribe"
    )
    p.add_argument("paths", nargs="+", help="files, folders or s3:// URIs")
    p.add_argument("--separate", action="store_true", help="isolate the voices from music and effects first")
    p.add_argument("--denoise", action="store_true", help="remove background noise first")
    p.add_argument("--no-diarize", action="store_true", help="do not label speakers")
    p.add_argument("--num-speakers", type=int, help="the number of speakers, when known")
    p.add_argument("--min-speakers", type=int)
    p.add_argument("--max-speakers", type=int)
    p.add_argument("--model", help="Whisper model name (default turbo)")
    p.add_argument("--language", help="language code, or auto (default)")
    p.add_argument("--backend", choices=("whisper", "faster-whisper"))
    _add_run_options(p)
    p.set_defaults(func=cmd_transcribe)

    p = commands.add_parser("separate", help="vocals and accompaniment of each file (Demucs)")
    p.add_argument("paths", nargs="+", help="files, folders or s3:// URIs")
    p.add_argument("--model", help="Demucs model name (default htdemucs; e.g. htdemucs_ft)")
    _add_run_options(p)
    p.set_defaults(func=cmd_separate)

    p = commands.add_parser("lipsync", help="lip-sync features: 80-bin log-mel windows per video frame")
    p.add_argument("paths", nargs="+", help="files, folders or s3:// URIs")
    p.add_argument("--fps", type=float, help="video frame rate (default 25)")
    _add_run_options(p)
    p.set_defaults(func=cmd_lipsync)

    p = commands.add_parser("clone", help="speak lines in the voice of a reference recording, enhanced to 48 kHz")
    p.add_argument("reference", help="the voice to clone: an audio file or s3:// URI (3-30 s of one speaker)")
    p.add_argument("lines", nargs="+", help="the texts to speak, one WAV each")
    p.add_argument("--transcript", help="what the reference says (default: transcribed with Whisper)")
    _add_speech_options(p)
    p.set_defaults(func=cmd_clone)

    p = commands.add_parser("synth", help="text to speech with a designed voice, a built-in speaker or a clone")
    voice = p.add_mutually_exclusive_group(required=True)
    voice.add_argument("--design", metavar="DESCRIPTION", help="describe the voice, e.g. 'a calm low female voice'")
    voice.add_argument("--speaker", help="a built-in speaker of the CustomVoice model, e.g. Vivian or Ryan")
    voice.add_argument("--clone", metavar="REFERENCE", help="a recording of the voice to clone")
    p.add_argument("texts", nargs="+", help="the texts to speak, one WAV each")
    p.add_argument("--instruct", help="with --speaker: how to say it, e.g. 'cheerful'")
    p.add_argument("--transcript", help="with --clone: what the recording says (default: transcribed)")
    _add_speech_options(p)
    p.set_defaults(func=cmd_synth)

    models = commands.add_parser("models", help="the model folder: list, pull, build random test models")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    p = model_commands.add_parser("list", help="the default model of each stage and whether it is in the folder")
    _add_model_options(p)
    p.set_defaults(func=cmd_models_list)
    p = model_commands.add_parser("pull", help="download the default models into the model folder (for offline use)")
    p.add_argument("--stage", action="append", help="only this stage's model (repeatable)")
    _add_model_options(p)
    p.set_defaults(func=cmd_models_pull)
    p = model_commands.add_parser(
        "build-random", help="write random-weight models of the real architectures (output is noise: a plumbing check)"
    )
    p.add_argument("dir", help="the model folder to write")
    p.add_argument("--size", choices=("tiny", "full"), default="tiny", help="tiny (tests) or the real sizes")
    p.add_argument("--library", action="append", help="only this library (repeatable)")
    p.set_defaults(func=cmd_models_build_random)

    p = commands.add_parser("catalog", help="print the rows of a catalog table")
    p.add_argument("table", choices=("files", "artifacts", "segments", "syntheses", "stage_runs", "processed"))
    p.add_argument("--columns", help="comma-separated columns to show")
    p.add_argument("--limit", type=int, default=50, help="last N rows (default 50)")
    p.add_argument("--storage-block", help="name of a saved voxflow-storage Block (default: environment)")
    p.set_defaults(func=cmd_catalog)

    blocks = commands.add_parser("blocks", help="Prefect Block types for storage and models")
    block_commands = blocks.add_subparsers(dest="block_command", required=True)
    p = block_commands.add_parser("register", help="register the voxflow Block types with the Prefect API")
    p.set_defaults(func=cmd_blocks_register)
    p = block_commands.add_parser(
        "save-storage", help="save a voxflow-storage Block (credentials from AWS_ACCESS_KEY_ID etc.)"
    )
    p.add_argument("name")
    p.add_argument("--location", required=True, help="local folder or s3://bucket/prefix")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, Ceph, R2...)")
    p.add_argument("--region")
    p.set_defaults(func=cmd_blocks_save_storage)

    p = commands.add_parser("serve", help="serve every flow as a deployment on this machine (flow.serve)")
    p.add_argument(
        "--inbox", help="folder or s3:// prefix the scheduled ingest-folder watches (default $VOXFLOW_INBOX or ./inbox)"
    )
    schedule = p.add_mutually_exclusive_group()
    schedule.add_argument("--cron", help="ingest-folder cron schedule (default every 10 minutes)")
    schedule.add_argument("--interval", type=float, metavar="SECONDS", help="run ingest-folder every N seconds instead")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_prefect(args.verbose)
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
