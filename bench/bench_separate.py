"""Benchmark the separate stage against demucs' own entry point, on the same weights and audio.

    python bench/bench_separate.py [--minutes 1 10 60] [--device cpu|cuda] [--size tiny|full]
                                   [--batch-size N] [--threads 1]

Builds a random-weight ``htdemucs`` (``full``: the released architecture, 42 M parameters, so the
compute cost is the real one; the output is noise) into a temporary model folder, and audio of each
length by looping the corpus recordings (44.1 kHz stereo). Each length is separated by OUR
:func:`voxflow.tasks.separate.separate` (segments batched on the device) and by UPSTREAM
``demucs.api.Separator(shifts=0, overlap=0.25).separate_tensor`` (``apply_model``, one segment at a
time), both producing vocals and accompaniment. Every run is its own subprocess with the same imports,
so its peak RSS is its own (model, audio and outputs included); the time is the separation call alone.

ratio = ours throughput / upstream throughput, from wall time (above 1: ours is faster); the CPU
seconds of each run are printed too, steadier than wall time on a shared machine. ``max |diff|``
compares the two vocals tracks.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CORPUS = ROOT / "tests" / "data" / "corpus"
RECORDINGS = (
    "music_vocals_mp3/audio_example.mp3",
    "asr_en_jfk/jfk.flac",
    "diar_2spk_pyannote/sample.wav",
    "sep_2spk_mixture/mixture_2.wav",
    "clone_ref_lj/LJ050-0131.wav",
)
SAMPLE_RATE_HZ = 44_100  # htdemucs' rate: no resampling inside the timed calls
MODEL = "htdemucs"


def build_audio(minutes: float, path: Path) -> Path:
    """``minutes`` of the corpus recordings looped, 44.1 kHz stereo float32, saved as ``.npy``."""
    from voxflow.tasks.helpers import audio

    parts = []
    for name in RECORDINGS:
        decoded = audio.decode_file(CORPUS / name)
        stereo = np.repeat(decoded.samples, 2, axis=0) if decoded.channels == 1 else decoded.samples[:2]
        parts.append(audio.resample(stereo, decoded.sample_rate_hz, SAMPLE_RATE_HZ))
    one_pass = np.concatenate(parts, axis=1)
    frames = int(minutes * 60 * SAMPLE_RATE_HZ)
    np.save(path, np.tile(one_pass, (1, -(-frames // one_pass.shape[1])))[:, :frames].astype(np.float32))
    return path


def worker(args: argparse.Namespace) -> None:
    """One timed separation in this process; prints its seconds and peak memory as JSON."""
    import torch

    from voxflow.tasks.separate import (
        SeparateOptions,
        load_separate_model,
        separate,
    )  # both runs import the same modules

    torch.set_num_threads(args.threads)
    samples = np.load(args.audio)
    if args.worker == "ours":
        model = load_separate_model(MODEL, args.device, args.model_dir)

        def run():
            return separate(samples, SAMPLE_RATE_HZ, model, SeparateOptions(batch_size=args.batch_size or None)).vocals  # noqa: E731
    else:
        from demucs.api import Separator

        separator = Separator(MODEL, repo=Path(args.model_dir) / "demucs", device=args.device, shifts=0, overlap=0.25)

        def run() -> np.ndarray:
            _, stems = separator.separate_tensor(torch.from_numpy(samples))
            accompaniment = sum(stem for name, stem in stems.items() if name != "vocals")
            del accompaniment  # produced, as ours produces it
            return stems["vocals"].numpy()

    started, cpu_started = time.perf_counter(), time.process_time()
    vocals = run()
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    np.save(args.output, vocals)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None,
            }
        )
    )


def measure(which: str, audio: Path, model_dir: Path, args: argparse.Namespace, output: Path) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        which,
        "--audio",
        str(audio),
        "--model-dir",
        str(model_dir),
        "--device",
        args.device,
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
        "--output",
        str(output),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{which} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def max_difference(a: Path, b: Path, block: int = 1 << 22) -> float:
    x, y = np.load(a, mmap_mode="r"), np.load(b, mmap_mode="r")
    return max(float(np.abs(x[:, i : i + block] - y[:, i : i + block]).max()) for i in range(0, x.shape[1], block))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--size", choices=("tiny", "full"), default="full")
    parser.add_argument("--batch-size", type=int, default=0, help="ours: segments run at once (0: the stage's default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument("--worker", choices=("ours", "upstream"), help=argparse.SUPPRESS)
    parser.add_argument("--audio", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from voxflow.tasks.testing.random_models import build

    with tempfile.TemporaryDirectory(prefix="bench-separate-") as tmp:
        folder = Path(tmp)
        build("demucs", folder / "models", args.size)
        print(
            f"htdemucs ({args.size}, random weights) on {args.device}, {args.threads} thread(s), "
            f"ours batch_size={args.batch_size or 'default'}",
            flush=True,
        )
        header = (
            f"{'minutes':>7} {'ours s':>9} {'upstream s':>10} {'ratio':>6} {'ours peak RSS MB':>16} "
            f"{'upstream peak RSS MB':>20} {'max |diff|':>10} {'ours CPU s':>10} {'upstream CPU s':>14}"
        )
        if args.device == "cuda":
            header += f" {'ours CUDA MB':>12} {'upstream CUDA MB':>16}"
        print(header, flush=True)
        for minutes in args.minutes:
            audio = build_audio(minutes, folder / f"audio-{minutes}.npy")
            ours = measure("ours", audio, folder / "models", args, folder / "ours.npy")
            upstream = measure("upstream", audio, folder / "models", args, folder / "upstream.npy")
            line = (
                f"{minutes:>7g} {ours['seconds']:>9.1f} {upstream['seconds']:>10.1f} "
                f"{upstream['seconds'] / ours['seconds']:>6.2f} {ours['peak_rss_mb']:>16.0f} "
                f"{upstream['peak_rss_mb']:>20.0f} {max_difference(folder / 'ours.npy', folder / 'upstream.npy'):>10.1e} "
                f"{ours['cpu_seconds']:>10.1f} {upstream['cpu_seconds']:>14.1f}"
            )
            if args.device == "cuda":
                line += f" {ours['peak_cuda_mb']:>12.0f} {upstream['peak_cuda_mb']:>16.0f}"
            print(line, flush=True)
            audio.unlink()


if __name__ == "__main__":
    main()
