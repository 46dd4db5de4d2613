"""``voxflow models list | pull | build-random``: the model folder."""

from __future__ import annotations

import argparse
from dataclasses import replace

from voxflow.flows.cli.common import print_rows


def _settings(args: argparse.Namespace):
    from voxflow.flows.settings import model_settings

    settings = model_settings(args.models_block)
    return replace(settings, model_dir=args.model_dir) if args.model_dir else settings


def _sources() -> dict:
    from voxflow.tasks.kit.model_sources import MODEL_SOURCES  # plain data: neither Prefect nor torch

    return MODEL_SOURCES


def list_models(args: argparse.Namespace) -> int:
    settings = _settings(args)
    rows = []
    for source in _sources().values():
        name = source.model(settings)
        path = source.present(name, settings) if settings.model_dir else None
        rows.append(
            {
                "stage": source.stage,
                "library": source.library,
                "model": name,
                "present": str(path) if path else "no (hub download on first use)",
                "gated": "yes (needs HF_TOKEN)" if source.gated else "",
            }
        )
    print_rows(rows, ("stage", "library", "model", "present", "gated"))
    print(f"model folder: {settings.model_dir or '(none: set VOXFLOW_MODEL_DIR or --model-dir)'}")
    return 0


def pull(args: argparse.Namespace) -> int:
    settings = _settings(args)
    sources = _sources()
    unknown = sorted(set(args.stage or []) - set(sources))
    if unknown:
        raise ValueError(f"unknown stage {', '.join(unknown)}; stages with models are {', '.join(sources)}")
    settings.library_dir("")  # fails early, naming the setting, when there is no model folder
    for stage in args.stage or list(sources):
        source = sources[stage]
        print(f"pulling {stage}: {source.model(settings)} ...", flush=True)
        print(f"  -> {source.pull(source.model(settings), settings)}")
    return 0


def build_random(args: argparse.Namespace) -> int:
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


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", help="the model folder (default: the Block's, else VOXFLOW_MODEL_DIR)")
    parser.add_argument("--models-block", help="name of a saved voxflow-models Block")


def add_models(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="models_command", required=True)
    p = commands.add_parser("list", help="the default model of each stage and whether it is in the folder")
    _model_options(p)
    p.set_defaults(func=list_models)
    p = commands.add_parser("pull", help="download the default models into the model folder (for offline use)")
    p.add_argument("--stage", action="append", help="only this stage's model (repeatable)")
    _model_options(p)
    p.set_defaults(func=pull)
    p = commands.add_parser(
        "build-random", help="write random-weight models of the real architectures (output is noise: a plumbing check)"
    )
    p.add_argument("dir", help="the model folder to write")
    p.add_argument("--size", choices=("tiny", "full"), default="tiny", help="tiny (tests) or the real sizes")
    p.add_argument("--library", action="append", help="only this library (repeatable)")
    p.set_defaults(func=build_random)


COMMANDS = {"models": add_models}
