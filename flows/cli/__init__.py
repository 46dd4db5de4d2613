"""The ``voxflow`` command line: runs flows in-process on the embedded defaults or a chosen store.

One module per command group, each command's parser beside its handler. Only the chosen command's
module is imported (and its parser built), so ``voxflow --help`` lists the commands without loading
any flow.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

from voxflow import __version__
from voxflow.flows import registry

COMMANDS = {  # command: (its module under voxflow.flows.cli, one line of help)
    "ingest": ("files", "decode, measure and store audio files as 16 kHz mono WAV"),
    "ingest-folder": ("files", "run a flow on every file of a folder or bucket not yet processed"),
    "transcribe": ("analysis", "speaker-labelled transcripts: ingest, [separate], [denoise], diarize, transcribe"),
    "separate": ("analysis", "vocals and accompaniment of each file (Demucs)"),
    "lipsync": ("analysis", "lip-sync features: 80-bin log-mel windows per video frame"),
    "clone": ("speech", "speak lines in the voice of a reference recording, enhanced to 48 kHz"),
    "synth": ("speech", "text to speech with a designed voice, a built-in speaker or a clone"),
    "replace": ("replace", "replace one speaker's voice, keep every other sound, fit the original timing"),
    "models": ("models", "the model folder: list, pull, build random test models"),
    "catalog": ("catalog", "print the rows of a catalog table"),
    "status": ("runs", "progress per file and stage of a flow run (or the latest runs)"),
    "report": ("runs", "an HTML report of past runs: stage times, cache hits, retries, failures, throughput"),
    "doctor": ("doctor", "check this machine: packages, ffmpeg, GPU, store, models, HF token, Prefect API"),
    "blocks": ("blocks", "Prefect Block types for storage and models"),
    "serve": ("serve", "serve every flow as a deployment on this machine (flow.serve)"),
}

RUNS_FLOWS = {  # command: the flow it runs
    "ingest": registry.INGEST,
    "ingest-folder": registry.INGEST_FOLDER,
    "transcribe": registry.TRANSCRIBE,
    "separate": registry.SEPARATE,
    "lipsync": registry.LIPSYNC_FEATURES,
    "clone": registry.CLONE_ENHANCED,
    "synth": registry.SYNTHESIZE,
    "replace": registry.VOICE_REPLACE,
}

RUN_IMPORTS = (  # what a flow run imports on its way (Prefect's engines, its parameter encoder, the catalog)
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.utilities.visualization",
    "fastapi.encoders",
    "deltalake",
    "tqdm",
)


def asks_api(command: str | None, argv: Sequence[str]) -> bool:
    """Whether a command that runs no flow still asks the Prefect API (status; report --artifact)."""
    return command == "status" or (command == "report" and "--artifact" in argv)


def quiet_prefect(verbose: bool) -> None:
    """Keep Prefect's console logs (and their tracebacks) off the terminal unless -v; the API keeps them."""
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # pyannote's pooling warns on every short probe of its embedding model; it is harmless and not the user's
    warnings.filterwarnings("ignore", message=r"std\(\): degrees of freedom", category=UserWarning)
    # the ephemeral API's 20 s start-up limit is too short on a busy machine (model stages load torch first)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the arguments of ``command`` only (``"*"``: of every command)."""
    parser = argparse.ArgumentParser(prog="voxflow", description="Prefect-orchestrated speech audio pipeline.")
    parser.add_argument("--version", action="version", version=f"voxflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Prefect's logs on the terminal")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if command in ("*", name):
            importlib.import_module(f"voxflow.flows.cli.{module}").COMMANDS[name](sub)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    return next((arg for arg in argv if arg in COMMANDS), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command(argv)
    quiet_prefect(verbose=bool({"-v", "--verbose"} & set(argv[: argv.index(command) if command else None])))
    server = None
    if command in RUNS_FLOWS and not {"-h", "--help"} & set(argv):
        from voxflow.flows.ephemeral import start_early

        server = start_early()  # its start-up overlaps the imports below
    try:
        args = build_parser(command).parse_args(argv)  # after quiet_prefect: Prefect reads its logging settings once
        if server is not None:  # import what the run needs meanwhile, then wait for the server
            for module in (f"voxflow.flows.{RUNS_FLOWS[command].module}", *RUN_IMPORTS):
                importlib.import_module(module)
            server.wait_ready(float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
        elif command in RUNS_FLOWS or asks_api(command, argv):  # Prefect may start its ephemeral server: tie it
            from voxflow.flows.ephemeral import tie_ephemeral_server

            tie_ephemeral_server()
        return args.func(args)
    except ModuleNotFoundError as e:
        from voxflow.tasks.kit.runs import missing_model_stack

        if not missing_model_stack(e):
            raise
        print(
            f"error: voxflow {command} needs the model stacks: pip install 'voxflow[models]' ({missing_model_stack(e)})",
            file=sys.stderr,
        )
        return 2
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from voxflow.flows.ephemeral import ServerNotStarted
        from voxflow.storage.errors import StorageError

        if not isinstance(e, StorageError | ServerNotStarted):
            raise
        print(f"error: {e}", file=sys.stderr)  # names the store or object and the cause, in one line
        return 1


if __name__ == "__main__":
    sys.exit(main())
