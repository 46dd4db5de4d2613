"""What every benchmark shares: test audio built from the corpus, and table cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "data" / "corpus"
SPEECH = (
    "diar_2spk_pyannote/sample.wav",
    "asr_en_jfk/jfk.flac",
    "sep_2spk_mixture/mixture_2.wav",
    "clone_ref_lj/LJ050-0131.wav",
    "denoise_babble/speech_bab_0dB.wav",
    "music_vocals_mp3/audio_example.mp3",
)
RATE_HZ = 16_000
MB = 2**20


def speech(minutes: float, files: tuple[str, ...] = SPEECH) -> np.ndarray:
    """``(1, samples)`` float32 at 16 kHz: the corpus recordings, downmixed, resampled and looped."""
    from voxflow.tasks.helpers import audio

    parts = []
    for name in files:
        decoded = audio.decode_file(CORPUS / name)
        parts.append(audio.resample(audio.downmix(decoded.samples), decoded.sample_rate_hz, RATE_HZ))
    one_pass = np.concatenate(parts, axis=1)
    frames = int(minutes * 60 * RATE_HZ)
    return np.ascontiguousarray(np.tile(one_pass, (1, -(-frames // one_pass.shape[1])))[:, :frames])


def cell(value: float | None, digits: int = 1) -> str:
    """A table cell: the value rounded, or '-' when it was not measured."""
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(header: list[str] | tuple[str, ...], rows: list, notes: list[str] = ()) -> None:
    """The results as a Markdown table (for BENCHMARKS.md), then one line per note."""
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for note in notes:
        print(f"note: {note}")


def run_worker(command: list[str], env: dict[str, str] | None = None) -> dict:
    """Run one benchmark side in its own process (so its peak RSS is its own); the JSON of its last line.

    A failed run gives ``{"error": <its last stderr line>}`` so the table still prints the others.
    """
    import json
    import subprocess

    done = subprocess.run(command, check=False, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])
