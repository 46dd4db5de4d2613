"""Where models come from and where they run: the model folder, the hub, the device, residency.

A model name resolves to a local folder first, ``<model dir>/<library>/...`` in the layout that
library's own loader reads, and only then to the library's own hub download::

    <model dir>/
      whisper/<name>.pt                         openai-whisper checkpoint (dims + model_state_dict)
      faster-whisper/<name>/model.bin, ...      a CTranslate2 Whisper folder (``WhisperModel(folder)``)
      demucs/<name>.yaml, <sig>.th              a demucs local repo (``get_model(name, repo=...)``)
      denoiser/<name>.th                        denoiser package (klass, args, kwargs, state)
      pyannote/<repo name>/config.yaml, ...     a pyannote pipeline folder (``Pipeline.from_pretrained``)

The model dir is the ``voxflow-models`` Block's ``model_dir``, else ``VOXFLOW_MODEL_DIR``. The Hugging
Face token (gated pyannote models) is the Block's ``hf_token``, else ``HF_TOKEN``. The default Whisper
model and backend are the Block's ``whisper_model`` / ``whisper_backend``, else ``VOXFLOW_WHISPER_MODEL``
/ ``VOXFLOW_WHISPER_BACKEND`` (a stage's own option wins). Models are loaded
lazily, once per process and device, through :data:`RESIDENT`; on a GPU only the models of the stage
running now stay resident, so the next stage finds the memory free.

A loaded model is shared by every thread of the process, but the libraries' inference is not
thread-safe: openai-whisper installs its kv-cache hooks on the shared decoder for each decode (two
decodes at once read each other's caches and fail), and Qwen3-TTS samples from torch's global random
generator right after seeding it. Every compute function therefore uses its models inside
:func:`holding` (one thread at a time per model), and seeded sampling inside :func:`seeded`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

MODEL_DIR_ENV = "VOXFLOW_MODEL_DIR"
WHISPER_MODEL_ENV = "VOXFLOW_WHISPER_MODEL"
WHISPER_BACKEND_ENV = "VOXFLOW_WHISPER_BACKEND"
RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS.txt"  # in a library's folder: which of its models have random weights
Device = Literal["auto", "cpu", "cuda"]
WhisperBackend = Literal["whisper", "faster-whisper"]


class ModelNotFound(RuntimeError):
    """A model is neither in the model folder nor downloadable."""


class GatedModelError(ModelNotFound):
    """A gated Hugging Face model needs a token (and its conditions accepted)."""


@dataclass(frozen=True)
class ModelSettings:
    """Where a process finds its models and on which device it runs them (chosen once per flow run)."""

    model_dir: str | None = None  # folder in each library's layout; None: hub downloads only
    device: Device = "auto"  # auto: CUDA when present, else CPU
    hf_token: SecretStr | None = field(default=None, compare=False)  # for gated models; never logged
    whisper_model: str | None = None  # the transcribe stage's default model (None: its own default)
    whisper_backend: WhisperBackend | None = None  # the transcribe stage's default backend

    @classmethod
    def from_env(cls) -> ModelSettings:
        """``VOXFLOW_MODEL_DIR``, ``VOXFLOW_DEVICE``, ``HF_TOKEN``, ``VOXFLOW_WHISPER_MODEL`` and
        ``VOXFLOW_WHISPER_BACKEND`` from the environment."""
        token = os.environ.get("HF_TOKEN")
        device = os.environ.get("VOXFLOW_DEVICE", "auto")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"VOXFLOW_DEVICE must be auto, cpu or cuda, got {device!r}")
        backend = os.environ.get(WHISPER_BACKEND_ENV) or None
        if backend not in (None, "whisper", "faster-whisper"):
            raise ValueError(f"{WHISPER_BACKEND_ENV} must be whisper or faster-whisper, got {backend!r}")
        return cls(
            os.environ.get(MODEL_DIR_ENV) or None,
            device,  # type: ignore[arg-type]
            SecretStr(token) if token else None,
            os.environ.get(WHISPER_MODEL_ENV) or None,
            backend,  # type: ignore[arg-type]
        )

    @property
    def folder(self) -> Path | None:
        return Path(self.model_dir).expanduser() if self.model_dir else None

    def token(self) -> str | None:
        """The Hugging Face token: this setting's, else ``HF_TOKEN``."""
        if self.hf_token is not None:
            return self.hf_token.get_secret_value()
        return os.environ.get("HF_TOKEN") or None

    def torch_device(self) -> str:
        return resolve_device(self.device)

    def local(self, library: str, *parts: str) -> Path | None:
        """``<model dir>/<library>/<parts...>`` when it exists, else None."""
        if self.folder is None:
            return None
        path = self.folder.joinpath(library, *parts)
        return path if path.exists() else None

    def library_dir(self, library: str) -> Path:
        """The library's subfolder of the model dir (for downloads into it)."""
        if self.folder is None:
            raise ModelNotFound(f"no model folder: set {MODEL_DIR_ENV} or the voxflow-models Block's model_dir")
        return self.folder / library


def random_weight_libraries(settings: ModelSettings) -> list[str]:
    """The model folder's library folders that hold random-weight test models (``voxflow models build-random``)."""
    if settings.folder is None or not settings.folder.is_dir():
        return []
    return sorted(marker.parent.name for marker in settings.folder.glob(f"*/{RANDOM_WEIGHTS_MARKER}"))


def resolve_device(device: str) -> str:
    """``cuda`` or ``cpu`` from ``auto``/``cpu``/``cuda``, with a clear error for CUDA without a GPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA GPU (use 'auto' or 'cpu')")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    return device


NOT_FOUND_ERRORS = frozenset(  # the hub's (huggingface_hub's) names for "not there"
    {
        "RepositoryNotFoundError",
        "LocalEntryNotFoundError",
        "EntryNotFoundError",
        "HFValidationError",
        "RevisionNotFoundError",
        "OfflineModeIsEnabled",
    }
)
UNREACHABLE_ERRORS = frozenset(  # no connection to the hub (requests, httpx, urllib3)
    {
        "ConnectionError",
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "Timeout",
        "MaxRetryError",
        "NameResolutionError",
    }
)


def _unreachable(error: BaseException) -> bool:
    return isinstance(error, (ConnectionError, TimeoutError)) or any(
        cls.__name__ in UNREACHABLE_ERRORS for cls in type(error).__mro__
    )


HUB_PROBE_TIMEOUT_S = 3.0


def hub_unreachable() -> bool:
    """Whether the Hugging Face hub cannot be reached now: offline mode, or one plain request (no
    retries, at most ``HUB_PROBE_TIMEOUT_S``) fails to connect."""
    import requests
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    try:
        requests.head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
    except requests.RequestException:
        return True
    return False


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """The hub client in offline mode for the block: only its local cache is read (no retried requests)."""
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = offline


@contextlib.contextmanager
def hub_errors(name: str, *, gated_url: str | None = None, folder: Path | None = None) -> Iterator[None]:
    """Turn Hugging Face hub failures into one-line errors that say what to do (never the token).

    A missing, gated or unreachable model is a :class:`ModelNotFound`: no retry can fix it, so the
    stage fails on its first attempt. When the hub cannot be reached the block runs with the hub
    client offline (its cache still serves), so a missing model fails at once instead of after the
    client's own retries. ``folder`` is where the model was looked for locally.
    """
    unreachable = hub_unreachable()
    try:
        with _hub_offline() if unreachable else contextlib.nullcontext():
            yield
    except Exception as e:
        kind = type(e).__name__
        unauthorized = kind in ("HfHubHTTPError", "RepositoryNotFoundError") and any(
            c in str(e) for c in ("401", "403")
        )
        if kind == "GatedRepoError" or unauthorized:
            where = f" accept its conditions at {gated_url} and" if gated_url else ""
            raise GatedModelError(
                f"model {name!r} is gated on Hugging Face:{where} set HF_TOKEN or the voxflow-models Block's hf_token"
            ) from None
        if kind in NOT_FOUND_ERRORS or _unreachable(e):
            reason = "no connection to Hugging Face" if unreachable or _unreachable(e) else kind
            local = f"not in {folder}" if folder else "not in the model folder"
            raise ModelNotFound(
                f"model {name!r} is {local} and could not be downloaded ({reason}); run 'voxflow models pull' "
                "on a machine with internet (gated models need HF_TOKEN) and copy the folder"
            ) from None
        raise


_MODEL_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_UNREFERENCEABLE_LOCKS: dict[int, threading.RLock] = {}  # models that take no weak reference, by id
_LOCKS_LOCK = threading.Lock()
_RNG_LOCK = threading.RLock()


def model_lock(model: Any) -> threading.RLock:
    """The lock of one loaded model object (created on first use, dropped with the model)."""
    with _LOCKS_LOCK:
        try:
            return _MODEL_LOCKS.setdefault(model, threading.RLock())
        except TypeError:  # no weak reference to it (or unhashable): keep its lock by identity
            return _UNREFERENCEABLE_LOCKS.setdefault(id(model), threading.RLock())


@contextlib.contextmanager
def holding(*models: Any) -> Iterator[None]:
    """Use ``models`` (None ones skipped) from this thread only, until the block ends.

    Parallel files share one copy of each model per device and take turns on it. The locks are
    re-entrant (a compute function may call another on the same model) and always taken in the same
    order, so two threads asking for overlapping sets never deadlock.
    """
    locks = {id(lock): lock for lock in (model_lock(m) for m in models if m is not None)}
    with contextlib.ExitStack() as stack:
        for _, lock in sorted(locks.items()):
            stack.enter_context(lock)
        yield


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """``torch.manual_seed(seed)``, with no other seeded sampling in this process until the block ends.

    torch's default generator is one per process: a thread seeding it while another samples would
    change both results.
    """
    import torch

    with _RNG_LOCK:
        torch.manual_seed(seed)
        yield


class ResidentModels:
    """Loaded models, keyed by (library, name, device, folder): each is loaded once per process.

    CPU models stay (up to ``cpu_capacity``, least recently used dropped). On a GPU only the models
    of one stage stay resident: loading another stage's model first releases the others, so the GPU
    memory goes to the stage running now.
    """

    def __init__(self, cpu_capacity: int = 8) -> None:
        self._models: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.RLock()
        self._cpu_capacity = cpu_capacity

    def get(self, key: tuple, device: str, load: Callable[[], Any], *, stage: str) -> Any:
        """The model under ``key`` on ``device``, loading it with ``load()`` on first use."""
        full = (stage, device, *key)
        with self._lock:
            if full in self._models:
                self._models.move_to_end(full)
                return self._models[full]
            if device.startswith("cuda"):
                self._release(lambda k: k[1] == device and k[0] != stage)
            model = load()
            self._models[full] = model
            cpu = [k for k in self._models if not k[1].startswith("cuda")]
            for k in cpu[: max(len(cpu) - self._cpu_capacity, 0)]:
                del self._models[k]
            return model

    def release(self, stage: str | None = None) -> None:
        """Drop the models of one stage (all when None) and free their accelerator memory."""
        with self._lock:
            self._release(lambda k: stage is None or k[0] == stage)

    def _release(self, matches: Callable[[tuple], bool]) -> None:
        doomed = [k for k in self._models if matches(k)]
        for k in doomed:
            del self._models[k]
        if doomed:
            from voxflow.tasks.kit.runs import free_accelerator_memory

            free_accelerator_memory()

    def __len__(self) -> int:
        return len(self._models)


RESIDENT = ResidentModels()
