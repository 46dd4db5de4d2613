"""What the commands share: options declared once (their help and defaults), printing tables and reports."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from voxflow.tasks.kit.options import describe


def option(parser: argparse.ArgumentParser, flag: str, options_type: type, name: str, **kwargs: Any) -> None:
    """An argument for option ``name`` of ``options_type``: its type, choices, help and default from the
    option's declaration. An argument left out is None, so the option keeps its declared default."""
    info = describe(options_type, name)
    if info.type is bool:
        raise TypeError(f"{options_type.__name__}.{name} is a switch: add it with a store_true/false flag")
    settings: dict[str, Any] = {"type": info.type, "help": info.help()}
    if info.choices:
        settings["choices"] = info.choices
    parser.add_argument(flag, **{**settings, **kwargs})


def given(**values: Any) -> dict:
    """The options given on the command line (None means: the option's declared default)."""
    return {k: v for k, v in values.items() if v is not None}


def add_store_options(parser: argparse.ArgumentParser, models: bool = True) -> None:
    """``--storage-block`` (and ``--models-block``): the Blocks a run uses instead of the environment."""
    parser.add_argument("--storage-block", help="name of a saved voxflow-storage Block (default: environment)")
    if models:
        parser.add_argument(
            "--models-block", help="name of a saved voxflow-models Block (default: VOXFLOW_MODEL_DIR, HF_TOKEN)"
        )


def add_run_options(parser: argparse.ArgumentParser, models: bool = True) -> None:
    """``--jobs`` and the Block options of a per-file flow."""
    parser.add_argument("--jobs", type=int, help="files processed in parallel (default min(4, CPUs))")
    add_store_options(parser, models)


def cell(value: Any) -> str:
    return "" if value is None else str(value)


def print_rows(rows: list[dict], columns: Sequence[str]) -> None:
    """A plain text table of ``rows``, one column per name in ``columns``."""
    widths = {c: max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(cell(row.get(c)).ljust(widths[c]) for c in columns))


def print_report(report: Any, columns: Sequence[str]) -> int:
    """A run's table, its summary, what each file's result says, and one error line per failed file."""
    rows = [o.row() for o in report.outcomes]
    if rows:
        print_rows(rows, columns)
    print(report.summary())
    for outcome in report.outcomes:
        if outcome.lines:
            print(f"\n== {outcome.name}")
            print("\n".join(outcome.lines))
    for outcome in report.failed:  # one line per file: the file, the stage, the reason
        print(f"error: {outcome.message}", file=sys.stderr)
    for problem in getattr(report, "problems", ()):
        print(f"error: {problem}", file=sys.stderr)
    return 1 if report.failed or getattr(report, "problems", ()) else 0


def run_files(flow: Any, args: argparse.Namespace, options: Any, columns: Sequence[str]) -> int:
    """Run a per-file flow on ``args.paths``; print its table and one error line per failed file."""
    from voxflow.flows.pipelines import DEFAULT_PARALLEL_FILES, FilesFailed

    blocks = {"storage_block": args.storage_block}
    if "models_block" in flow.parameters.properties:
        blocks["models_block"] = args.models_block
    try:
        report = flow(paths=args.paths, options=options, parallel_files=args.jobs or DEFAULT_PARALLEL_FILES, **blocks)
    except FilesFailed as e:
        report = e.report
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return print_report(report, columns)
