"""What the commands share: options declared once (their help and defaults), printing tables and reports."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
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


def add_run_options(parser: argparse.ArgumentParser, models: bool = True, formats: Sequence[str] = ()) -> None:
    """What every per-file command takes: ``--jobs``, ``-o/--output-dir`` (with ``--output-format`` where the
    outputs come in formats), ``--device``, ``-q/--quiet``, ``--json`` and the Block options."""
    parser.add_argument("--jobs", type=int, help="files processed in parallel (default min(4, CPUs))")
    parser.add_argument(
        "-o", "--output-dir", help="copy each file's outputs into this folder (<file>.<ext>), printing where each went"
    )
    if formats:
        parser.add_argument(
            "--output-format", choices=(*formats, "all"), default="all", help="what -o copies (default all)"
        )
    if models:
        parser.add_argument(
            "--device", choices=("auto", "cpu", "cuda"), help="where the models run (default VOXFLOW_DEVICE, else auto)"
        )
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    parser.add_argument(
        "--json", action="store_true", help="print the run as JSON (each file's status, summary, outputs)"
    )
    add_store_options(parser, models)


def cell(value: Any) -> str:
    return "" if value is None else str(value)


def print_rows(rows: list[dict], columns: Sequence[str]) -> None:
    """A plain text table of ``rows``, one column per name in ``columns``."""
    widths = {c: max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(cell(row.get(c)).ljust(widths[c]) for c in columns))


def exported_name(label: str, artifact: str, formats: Sequence[str]) -> str | None:
    """Where ``-o`` puts an output of a file, relative to the folder: ``jfk.srt`` for a transcript format,
    ``jfk.vocals.wav`` for other outputs; None when ``formats`` (given) leave it out."""
    ext = artifact.rsplit(".", 1)[-1]
    if formats and ext not in formats:
        return None
    stem = str(Path(label).with_suffix(""))
    return f"{stem}.{ext}" if ext in formats else f"{stem}.{artifact}"


def export_outputs(
    report: Any, folder: str, formats: Sequence[str], storage_block: str | None
) -> dict[str, list[Path]]:
    """Copy each done or cached file's outputs out of the store into ``folder``; the paths written, by file.
    Each is written to a temporary name and renamed, so an interrupted copy leaves no half file."""
    from voxflow.flows.settings import store_settings
    from voxflow.storage.store import open_store

    store = open_store(store_settings(storage_block))
    written: dict[str, list[Path]] = {}
    for outcome in report.outcomes:
        if outcome.status not in ("done", "cached"):
            continue
        for artifact, uri in outcome.every_output.items():
            name = exported_name(outcome.name, artifact, formats)
            if name is None:
                continue
            path = Path(folder, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.partial")
            partial.write_bytes(store.get_bytes(store.key_of(uri)))
            partial.replace(path)
            written.setdefault(outcome.name, []).append(path)
    return written


def report_json(report: Any, written: dict[str, list[Path]]) -> str:
    """The run as one JSON document: its summary, then each file's row, outputs, written paths and lines."""
    files = [
        {
            **outcome.row(),
            "outputs": outcome.every_output,
            "written": [str(p) for p in written.get(outcome.name, [])],
            "lines": list(outcome.lines),
        }
        for outcome in report.outcomes
    ]
    problems = list(getattr(report, "problems", ()))
    return json.dumps({"summary": report.summary(), "files": files, "problems": problems}, indent=2, default=str)


def print_report(
    report: Any,
    columns: Sequence[str],
    quiet: bool = False,
    as_json: bool = False,
    written: dict[str, list[Path]] | None = None,
) -> int:
    """A run's table, its summary, what each file's result says, where ``-o`` wrote its outputs, and one error
    line per failed file (``quiet``: the error lines only; ``as_json``: one JSON document instead)."""
    written = written or {}
    if as_json:
        print(report_json(report, written))
    elif not quiet:
        rows = [{**o.row(), "outputs": ", ".join(o.outputs)} for o in report.outcomes]
        if rows:
            print_rows(rows, columns)
        print(report.summary())
        for outcome in report.outcomes:
            if outcome.lines:
                print(f"\n== {outcome.name}")
                print("\n".join(outcome.lines))
        for name, paths in written.items():
            print("\n".join(f"{name}: wrote {path}" for path in paths))
    for outcome in report.failed:  # one line per file: the file, the stage, the reason
        print(f"error: {outcome.message}", file=sys.stderr)
    for problem in getattr(report, "problems", ()):
        print(f"error: {problem}", file=sys.stderr)
    return 1 if report.failed or getattr(report, "problems", ()) else 0


def run_files(
    flow: Any, args: argparse.Namespace, options: Any, columns: Sequence[str], formats: Sequence[str] = ()
) -> int:
    """Run a per-file flow on ``args.paths``; print its table (or JSON), copy its outputs out with ``-o``, and
    print one error line per failed file."""
    from voxflow.flows.pipelines import DEFAULT_PARALLEL_FILES, FilesFailed

    if getattr(args, "device", None):  # read by the run's model settings (ModelSettings.from_env)
        os.environ["VOXFLOW_DEVICE"] = args.device
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
    chosen = () if getattr(args, "output_format", "all") == "all" else (args.output_format,)
    written = export_outputs(report, args.output_dir, chosen or formats, args.storage_block) if args.output_dir else {}
    return print_report(report, columns, args.quiet, args.json, written)
