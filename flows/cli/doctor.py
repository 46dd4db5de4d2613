"""``voxflow doctor``: check what a run needs on this machine, and say how to fix each problem.

Each check returns :class:`Finding` s: ``ok``, ``warn`` (runs, but something a user should know) or
``fail`` (a run that needs it will fail). The command prints one line per finding and the fix under
each problem, and exits 1 when anything failed. No check prints a secret: the HF token and the store's
keys are named, never shown.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from voxflow.flows.cli.common import add_store_options

BASE_PACKAGES = ("prefect", "deltalake", "pyarrow", "pandas", "boto3", "numpy", "soundfile", "av", "soxr")
MODEL_PACKAGES = (  # the `models` extra, by import name
    "torch",
    "torchaudio",
    "whisper",
    "faster_whisper",
    "demucs",
    "denoiser",
    "pyannote.audio",
    "qwen_tts",
    "silero_vad",
    "jiwer",
    "speechmos",
)
TORCH_PAIR = "torch==2.11.0 torchaudio==2.11.0"
PROBE_PREFIX = "doctor"  # where the store check writes (and deletes) its probe object
API_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Finding:
    check: str
    status: str  # ok, warn or fail
    detail: str
    fix: str | None = None


Check = Callable[[argparse.Namespace], Iterator[Finding]]


def _imports(name: str) -> str | None:
    """None when ``name`` imports, else the first line of why not (the libraries' banners kept quiet)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            importlib.import_module(name)
        except Exception as e:  # an installed package that fails to load is what this check is for
            return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}".rstrip(": ")
    return None


def check_packages(args: argparse.Namespace) -> Iterator[Finding]:
    broken = {name: why for name in BASE_PACKAGES if (why := _imports(name))}
    if broken:
        yield Finding(
            "packages",
            "fail",
            "; ".join(f"{n}: {why}" for n, why in broken.items()),
            "pip install --force-reinstall voxflow",
        )
    else:
        yield Finding("packages", "ok", f"the base install imports ({', '.join(BASE_PACKAGES)})")
    models = {name: _imports(name) for name in MODEL_PACKAGES}
    missing = [n for n, why in models.items() if why and why.startswith("ModuleNotFoundError")]
    failing = {n: why for n, why in models.items() if why and n not in missing}
    if len(missing) == len(MODEL_PACKAGES):
        yield Finding(
            "model packages",
            "warn",
            "the model stacks are not installed: ingest, catalog and folder runs work; model stages do not",
            "pip install 'voxflow[models]'",
        )
        return
    if missing:
        yield Finding("model packages", "fail", f"not installed: {', '.join(missing)}", "pip install 'voxflow[models]'")
    if failing:
        yield Finding(
            "model packages",
            "fail",
            "; ".join(f"{n}: {why}" for n, why in failing.items()),
            f"pip install --force-reinstall {TORCH_PAIR} 'voxflow[models]' (torchaudio loads only with its own torch)",
        )
    if not missing and not failing:
        yield Finding("model packages", "ok", f"the model stacks import ({len(MODEL_PACKAGES)} packages)")


PROGRAMS = {  # program: why a user wants it, how to install it
    "ffmpeg": (
        "voxflow decodes through PyAV and does not need it, but pyannote's torchcodec and the model libraries'"
        " own file loaders (whisper, demucs) do",
        "sudo apt-get install ffmpeg (Debian/Ubuntu), brew install ffmpeg (macOS), conda install ffmpeg",
    ),
    "sox": (
        "qwen-tts warns about it on every start",
        "sudo apt-get install sox (Debian/Ubuntu), brew install sox (macOS)",
    ),
}


def check_programs(args: argparse.Namespace) -> Iterator[Finding]:
    for program, (why, fix) in PROGRAMS.items():
        path = shutil.which(program)
        yield Finding(program, "ok", path) if path else Finding(program, "warn", f"not on PATH: {why}", fix)


def _model_settings(args: argparse.Namespace):
    from voxflow.flows.settings import model_settings

    return model_settings(args.models_block)


def check_device(args: argparse.Namespace) -> Iterator[Finding]:
    if _imports("torch"):
        return
    import torch

    wanted = _model_settings(args).device
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        yield Finding("gpu", "ok", f"CUDA {torch.version.cuda}: {names} (device setting: {wanted})")
    elif wanted == "cuda":
        yield Finding(
            "gpu",
            "fail",
            f"VOXFLOW_DEVICE (or the models Block) asks for cuda, but torch {torch.__version__} sees no CUDA GPU"
            f" (built for CUDA {torch.version.cuda or 'none: a CPU-only wheel'})",
            "check nvidia-smi and the driver; install a CUDA wheel of torch; or set VOXFLOW_DEVICE=auto",
        )
    else:
        yield Finding(
            "gpu",
            "warn",
            f"no CUDA GPU visible to torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}):"
            " the model stages run on the CPU, many times slower than real time at full size",
            "on a GPU machine: a CUDA wheel of torch and a working driver (nvidia-smi)",
        )


def check_store(args: argparse.Namespace) -> Iterator[Finding]:
    from voxflow.flows.settings import store_settings
    from voxflow.storage.errors import StorageError
    from voxflow.storage.store import open_store

    try:
        settings = store_settings(args.storage_block)
        store = open_store(settings)
        key = f"{PROBE_PREFIX}/{uuid.uuid4().hex}.probe"
        data = uuid.uuid4().bytes
        store.put_bytes(key, data)
        try:
            if store.get_bytes(key) != data:
                raise StorageError(f"{store.uri(key)}: read back other bytes than were written")
        finally:
            store.delete(key)
    except (StorageError, OSError, ValueError, KeyError) as e:
        yield Finding(
            "store",
            "fail",
            f"cannot write and read back: {str(e).splitlines()[0]}",
            "check VOXFLOW_STORAGE (or the storage Block): the folder must be writable; for s3:// the endpoint,"
            " bucket and keys (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the Block's)",
        )
        return
    yield Finding("store", "ok", f"{settings.location}: writes, reads back and deletes")


def check_models(args: argparse.Namespace) -> Iterator[Finding]:
    from voxflow.tasks.kit.model_sources import MODEL_SOURCES
    from voxflow.tasks.kit.models import random_weight_libraries

    settings = _model_settings(args)
    if settings.folder is None:
        yield Finding(
            "model folder",
            "warn",
            "none set: each model downloads from its hub on first use (needs internet there)",
            "set VOXFLOW_MODEL_DIR (or the models Block's model_dir), then voxflow models pull",
        )
    else:
        absent = [s for s in MODEL_SOURCES.values() if not s.present(s.model(settings), settings)]
        if absent:
            yield Finding(
                "model folder",
                "warn",
                f"{settings.folder}: no {', '.join(f'{s.stage} ({s.model(settings)})' for s in absent)};"
                " those download from their hub on first use",
                f"voxflow models pull {' '.join(s.stage for s in absent)} (on a machine with internet; copy the folder)",
            )
        else:
            yield Finding("model folder", "ok", f"{settings.folder}: every stage's default model is there")
        randoms = random_weight_libraries(settings)
        if randoms:
            yield Finding(
                "model folder",
                "warn",
                f"random-weight test models in {', '.join(randoms)} (voxflow models build-random): their output is noise",
                "voxflow models pull, into a folder of real models",
            )
    gated = [s for s in MODEL_SOURCES.values() if s.gated and not s.present(s.model(settings), settings)]
    token = settings.token()
    if gated and not token:
        names = ", ".join(s.model(settings) for s in gated)
        yield Finding(
            "hf token",
            "fail",
            f"none set, and {names} is gated on Hugging Face and not in the model folder: diarization cannot load",
            f"accept the conditions at https://hf.co/{gated[0].model(settings)}, create a read token at"
            " https://hf.co/settings/tokens, then export HF_TOKEN=... (or the models Block's hf_token)",
        )
    elif token:
        source = "HF_TOKEN" if os.environ.get("HF_TOKEN") == token else "the models Block"
        yield Finding("hf token", "ok", f"set (from {source}; not shown)")
    else:
        yield Finding("hf token", "ok", "not needed: the gated models are in the model folder")


def check_prefect(args: argparse.Namespace) -> Iterator[Finding]:
    import httpx
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    database = settings.server.database.connection_url
    kind = (database.get_secret_value() if database else "sqlite").split(":", 1)[0].split("+")[0]
    url = settings.api.url
    if not url:
        yield Finding(
            "prefect api",
            "warn",
            "PREFECT_API_URL is not set: each command starts a temporary server (~3.5 s); schedules, the UI and"
            " served deployments need a lasting one",
            "prefect server start, then prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api",
        )
        return
    try:
        with httpx.Client(base_url=url.rstrip("/"), timeout=API_TIMEOUT_S, trust_env=False) as client:
            client.get("/health").raise_for_status()
            version = client.get("/admin/version").json()
            services = client.get("/admin/settings").json()["server"]["services"]
    except (httpx.HTTPError, ValueError, KeyError) as e:
        yield Finding(
            "prefect api",
            "fail",
            f"{url}: not reachable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no answer'})",
            "start it (prefect server start) or set PREFECT_API_URL to a running server",
        )
        return
    yield Finding("prefect api", "ok", f"{url}: Prefect {version}, this machine's database setting: {kind}")
    if not services.get("scheduler", {}).get("enabled", True):
        yield Finding(
            "scheduler",
            "fail",
            "the server's scheduler service is off: scheduled deployments never get runs",
            "restart it with PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED=true (and without --no-services)",
        )
    else:
        yield Finding("scheduler", "ok", "the server's scheduler service is on")
    if kind == "sqlite":
        yield Finding(
            "database",
            "warn",
            "SQLite: one writer at a time; many parallel files or several workers queue on it",
            "PostgreSQL: PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://user:pass@host/prefect",
        )


CHECKS: tuple[Check, ...] = (check_packages, check_programs, check_device, check_store, check_models, check_prefect)
MARKS = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}


def findings(args: argparse.Namespace) -> list[Finding]:
    """Every check's findings, in order; a check that crashes is a failure of its own, not of the doctor."""
    found: list[Finding] = []
    for check in CHECKS:
        try:
            found.extend(check(args))
        except Exception as e:
            name = check.__name__.removeprefix("check_")
            found.append(Finding(name, "fail", f"the check itself failed: {type(e).__name__}: {e}", None))
    return found


def doctor(args: argparse.Namespace) -> int:
    found = findings(args)
    if args.json:
        print(json.dumps([asdict(f) for f in found], indent=2))
    else:
        width = max(len(f.check) for f in found)
        for f in found:
            print(f"{MARKS[f.status]}  {f.check.ljust(width)}  {f.detail}")
            if f.fix and f.status != "ok":
                print(f"      {' ' * width}  fix: {f.fix}")
        failed, warned = (sum(f.status == s for f in found) for s in ("fail", "warn"))
        print(f"\n{failed} failed, {warned} warning(s), {len(found) - failed - warned} ok")
    return 1 if any(f.status == "fail" for f in found) else 0


def add_doctor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="the findings as JSON (check, status, detail, fix)")
    add_store_options(parser)
    parser.set_defaults(func=doctor)


COMMANDS = {"doctor": add_doctor}
