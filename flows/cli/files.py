"""``voxflow ingest`` and ``voxflow ingest-folder``: store audio files, and run a flow on a folder's new files."""

from __future__ import annotations

import argparse
import json
import sys

from voxflow.flows.cli.common import add_run_options, add_store_options, given, option, print_report, run_files
from voxflow.flows.registry import INGEST, PER_FILE
from voxflow.tasks.ingest import IngestOptions

INGEST_COLUMNS = ("file", "status", "duration_s", "sample_rate_hz", "channels", "lufs", "sha256")
FOLDER_COLUMNS = ("file", "status", "computed", "duration_s", "sample_rate_hz", "channels", "lufs")


def add_ingest(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", help="files, folders or s3:// URIs")
    option(parser, "--sample-rate-hz", IngestOptions, "sample_rate_hz")
    parser.add_argument("--keep-channels", action="store_true", help="do not downmix to mono")
    option(parser, "--resample-quality", IngestOptions, "resample_quality")
    add_run_options(parser, models=False)
    parser.set_defaults(func=ingest)


def ingest(args: argparse.Namespace) -> int:
    from voxflow.flows.ingest import ingest as ingest_flow

    mono = False if args.keep_channels else None
    options = IngestOptions(
        **given(sample_rate_hz=args.sample_rate_hz, resample_quality=args.resample_quality, mono=mono)
    )
    return run_files(ingest_flow, args, options, INGEST_COLUMNS)


def _param(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--param {text!r}: expected NAME=VALUE")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def add_ingest_folder(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="local folder or s3://bucket/prefix")
    parser.add_argument("--pattern", default="*", help="fnmatch pattern on paths below the source (default *)")
    parser.add_argument(
        "--flow",
        default=INGEST.name,
        type=lambda name: name.replace("_", "-"),
        choices=PER_FILE,
        help=f"the flow to run on each new file (default {INGEST.name})",
    )
    parser.add_argument(
        "--param",
        action="append",
        type=_param,
        default=[],
        metavar="NAME=VALUE",
        help="an option of that flow, e.g. --param sample_rate_hz=22050 (repeatable)",
    )
    parser.add_argument("--jobs", type=int, help="files processed in parallel (default min(4, CPUs))")
    parser.add_argument("--dask-workers", type=int, help="run the stages on a local Dask cluster of N processes")
    parser.add_argument("--dask-address", help="run the stages on an existing Dask scheduler (tcp://host:8786)")
    add_store_options(parser)
    parser.set_defaults(func=ingest_folder)


def ingest_folder(args: argparse.Namespace) -> int:
    from voxflow.flows.ingest_folder import ingest_folder as folder_flow
    from voxflow.flows.pipelines import DEFAULT_PARALLEL_FILES

    flow = folder_flow
    if args.dask_workers or args.dask_address:
        from prefect_dask import DaskTaskRunner

        cluster = (
            {"address": args.dask_address}
            if args.dask_address
            else {"cluster_kwargs": {"n_workers": args.dask_workers, "threads_per_worker": 1, "processes": True}}
        )
        flow = folder_flow.with_options(task_runner=DaskTaskRunner(**cluster))
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
        return 2 if isinstance(outcome, FileNotFoundError | ValueError) else 1
    return print_report(report, FOLDER_COLUMNS)


COMMANDS = {"ingest": add_ingest, "ingest-folder": add_ingest_folder}
