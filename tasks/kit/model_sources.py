"""Every stage's default model, declared once as plain data: its library's folder in the model dir,
its name, how to tell it is there, and which function downloads it.

Telling whether a model is in the folder needs only the file layout each library's loader reads
(:mod:`voxflow.tasks.kit.models` draws it), so this module imports neither Prefect nor torch:
``voxflow models list`` answers at once. Pulling imports the stage module, which knows the library's
own download.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from voxflow.tasks.kit.models import ModelSettings


@dataclass(frozen=True)
class ModelSource:
    """A stage's default model: where it lives in the model folder, and how to download it there."""

    stage: str
    library: str  # subfolder of the model dir
    name: str  # default name (e.g. "large-v3", "htdemucs", "pyannote/speaker-diarization-community-1")
    present: Callable[[str, ModelSettings], Path | None]  # its local path when present
    puller: str  # "module:function" that downloads ``name`` into the model folder and returns its path
    gated: bool = False
    setting: str | None = None  # the ModelSettings field that names another default (e.g. whisper_model)

    def model(self, settings: ModelSettings) -> str:
        """The model the stage uses by default under ``settings``."""
        return (getattr(settings, self.setting) if self.setting else None) or self.name

    def pull(self, name: str, settings: ModelSettings) -> Path:
        """Download ``name`` into the model folder (imports the stage module and its library)."""
        module, function = self.puller.split(":")
        return getattr(importlib.import_module(module), function)(name, settings)


# ---- where each library's loader finds a model in the folder ---------------------------------------


def hub_folder_name(name: str) -> str:
    """The folder of a hub repository under ``<model dir>/<library>/``: its repository name."""
    return name.rstrip("/").rsplit("/", 1)[-1]


def local_denoise_model(name: str, settings: ModelSettings) -> Path | None:
    """``<model dir>/denoiser/<name>.th`` when present."""
    return settings.local(DENOISE_LIBRARY, f"{name}.th")


def local_repo(name: str, settings: ModelSettings) -> Path | None:
    """``<model dir>/demucs`` when that local repo holds model ``name`` (a bag with all its models), else None.

    A demucs local repo, as ``demucs.repo.LocalRepo`` and ``BagOnlyRepo`` read it: ``<sig>[-<checksum>].th``
    models and ``<name>.yaml`` bags listing their models' signatures.
    """
    import yaml

    folder = settings.local(DEMUCS_LIBRARY)
    if folder is None or not folder.is_dir():
        return None
    files = list(folder.iterdir())
    models = {f.stem.rsplit("-", 1)[0] for f in files if f.suffix == ".th"}
    if name in models:
        return folder
    bag = next((f for f in files if f.suffix == ".yaml" and f.stem == name), None)
    if bag is None:
        return None
    signatures = (yaml.safe_load(bag.read_text()) or {}).get("models", [])
    return folder if signatures and all(sig in models for sig in signatures) else None


def local_pipeline(name: str, settings: ModelSettings) -> Path | None:
    """The local folder of pyannote pipeline ``name``, else None.

    First ``<model dir>/pyannote/<repository name>/``, then ``name`` itself if it is a pipeline folder.
    """
    config = settings.local(PYANNOTE_LIBRARY, hub_folder_name(name), "config.yaml")
    if config is not None:
        return config.parent
    folder = Path(name).expanduser()
    return folder if (folder / "config.yaml").is_file() else None


def local_tts_model(name: str, settings: ModelSettings) -> Path | None:
    """The folder of Qwen3-TTS model ``name``: ``<model dir>/qwen-tts/<repository name>/``, else ``name``
    itself when it is a model folder; None when neither holds a ``config.json``."""
    config = settings.local(QWEN_TTS_LIBRARY, hub_folder_name(name), "config.json")
    if config is not None:
        return config.parent
    folder = Path(name).expanduser()
    return folder if (folder / "config.json").is_file() else None


@functools.cache
def whisper_official_files() -> dict[str, str]:
    """The file name whisper's own download gives each official model (``turbo`` -> ``large-v3-turbo.pt``),
    read from whisper's ``_MODELS`` table without importing whisper (which imports torch)."""
    spec = importlib.util.find_spec("whisper")
    if spec is None or spec.origin is None:
        return {}
    for node in ast.parse(Path(spec.origin).read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_MODELS" for t in node.targets):
            return {name: url.rsplit("/", 1)[-1] for name, url in ast.literal_eval(node.value).items()}
    return {}


def local_checkpoint(name: str, settings: ModelSettings) -> Path | None:
    """``<model dir>/whisper/<name>.pt``, else the official download's file name there, else None."""
    official = whisper_official_files().get(name)
    candidates = [f"{name}.pt"] + ([official] if official else [])
    return next((p for p in (settings.local(WHISPER_LIBRARY, c) for c in candidates) if p is not None), None)


def local_faster_whisper(name: str, settings: ModelSettings) -> Path | None:
    """``<model dir>/faster-whisper/<name>/`` when it holds a CTranslate2 model."""
    folder = settings.local(FASTER_WHISPER_LIBRARY, name)
    return folder if folder is not None and (folder / "model.bin").is_file() else None


def novasr_candidates(name: str) -> list[str]:
    """The file names NoVaSR model ``name`` may have in the model folder (the official one first for the default)."""
    return [NOVASR_HUB_FILE, f"{name}.bin"] if name == NOVASR_DEFAULT else [f"{name}.bin"]


def local_upsample_model(name: str, settings: ModelSettings) -> Path | None:
    """``<model dir>/novasr/pytorch_model_v1.bin`` (the default) or ``<model dir>/novasr/<name>.bin`` when present."""
    return next(
        (p for p in (settings.local(NOVASR_LIBRARY, c) for c in novasr_candidates(name)) if p is not None), None
    )


# ---- the sources -----------------------------------------------------------------------------------

DENOISE_LIBRARY = "denoiser"  # <model dir>/denoiser/<name>.th
DEMUCS_LIBRARY = "demucs"  # a demucs local repo (<name>.yaml bags, <sig>[-<checksum>].th)
PYANNOTE_LIBRARY = "pyannote"  # <model dir>/pyannote/<repository name>/
QWEN_TTS_LIBRARY = "qwen-tts"  # <model dir>/qwen-tts/<repository name>/
WHISPER_LIBRARY = "whisper"  # <model dir>/whisper/<name>.pt
FASTER_WHISPER_LIBRARY = "faster-whisper"  # <model dir>/faster-whisper/<name>/
NOVASR_LIBRARY = "novasr"  # <model dir>/novasr/pytorch_model_v1.bin
NOVASR_DEFAULT = "novasr"
NOVASR_HUB_FILE = "pytorch_model_v1.bin"  # the official file name, also its name in the model folder
WHISPER_DEFAULT = "turbo"
TTS_DEFAULTS = {
    "clone": "Qwen/Qwen3-TTS-12Hz-0.6B-Base",
    "design": "Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign",  # the only VoiceDesign model released
    "custom": "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice",  # the 0.6B CustomVoice ignores instructions
}

_SOURCES = (
    ModelSource("denoise", DENOISE_LIBRARY, "dns48", local_denoise_model, "voxflow.tasks.denoise:pull_denoise_model"),
    ModelSource("separate", DEMUCS_LIBRARY, "htdemucs", local_repo, "voxflow.tasks.separate:pull_separate_model"),
    ModelSource(
        "diarize",
        PYANNOTE_LIBRARY,
        "pyannote/speaker-diarization-community-1",
        local_pipeline,
        "voxflow.tasks.diarize:pull_diarize_model",
        gated=True,
    ),
    ModelSource(
        "transcribe",
        WHISPER_LIBRARY,
        WHISPER_DEFAULT,
        local_checkpoint,
        "voxflow.tasks.transcribe:pull_whisper",
        setting="whisper_model",
    ),
    ModelSource(
        "transcribe-faster-whisper",
        FASTER_WHISPER_LIBRARY,
        WHISPER_DEFAULT,
        local_faster_whisper,
        "voxflow.tasks.transcribe:pull_faster_whisper",
        setting="whisper_model",
    ),
    # one source per synthesis mode, so `voxflow models pull` fetches all three
    *(
        ModelSource(
            stage, QWEN_TTS_LIBRARY, TTS_DEFAULTS[mode], local_tts_model, "voxflow.tasks.synthesize:pull_tts_model"
        )
        for mode, stage in (("clone", "synthesize"), ("design", "synthesize-design"), ("custom", "synthesize-custom"))
    ),
    ModelSource(
        "enhance", NOVASR_LIBRARY, NOVASR_DEFAULT, local_upsample_model, "voxflow.tasks.upsample:pull_upsample_model"
    ),
)
MODEL_SOURCES: dict[str, ModelSource] = {source.stage: source for source in _SOURCES}
