"""Benchmark: our chunked denoise against the denoiser's own whole-file forward and its streamer.

    python bench/bench_denoise.py [--minutes 1 10 60] [--device cpu|cuda] [--size tiny|full]

Builds a random-weight DNS48 (``full``: the real sizes, the default; ``tiny`` for a quick look) into
a temporary model folder, makes 16 kHz mono speech of each length by looping the corpus recordings,
and runs, each in its own subprocess (so peak RSS is that run's own):

* ``ours``: :func:`voxflow.tasks.denoise.denoise` (chunks of ``--chunk-s``, batches of ``--batch-size``);
* ``upstream``: ``denoiser.enhance.get_estimate`` with ``streaming=False``: one forward pass over
  the whole file, what ``python -m denoiser.enhance`` does per file. Its memory grows with the
  file, so a length whose predicted peak (linear in the length, from the shortest run) exceeds
  ``--max-memory-fraction`` of the available memory is skipped and the prediction printed;
* ``stream``: ``get_estimate`` with ``streaming=True`` (``DemucsStreamer``, real-time frames of
  16 ms), only up to ``--stream-minutes`` because it is slow.

Prints minutes, seconds, throughput ratio (ours ÷ upstream, ≥ 1 means ours is faster), peak RSS (and
peak CUDA memory on a GPU) of each, and the largest difference between ours and upstream relative
to upstream's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import MB, RATE_HZ, cell, print_table, run_worker, speech  # noqa: E402


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def worker(args: argparse.Namespace) -> None:
    """One timed run in this process; prints a JSON line and saves the output for the comparison."""
    import torch

    from voxflow.tasks.denoise import DenoiseOptions, denoise, load_denoise_model

    torch.set_num_threads(args.threads)
    model = load_denoise_model("dns48", args.device, args.model_dir)
    noisy = speech(args.minutes[0])
    base_mb = _rss_mb()
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if args.worker == "ours":
        options = DenoiseOptions(chunk_s=args.chunk_s, overlap_s=args.overlap_s, batch_size=args.batch_size)
        out = denoise(noisy, RATE_HZ, model, options)
    else:
        from denoiser.enhance import get_estimate

        flags = argparse.Namespace(streaming=args.worker == "stream", dry=0.0)
        out = get_estimate(model, torch.from_numpy(noisy)[None].to(args.device), flags)[0].cpu().numpy()
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cuda_mb = torch.cuda.max_memory_allocated() / MB if args.device == "cuda" else None
    np.save(args.out, out[:, : noisy.shape[1]])
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "base_rss_mb": base_mb, "peak_cuda_mb": cuda_mb}))


def _available_mb() -> float:
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) / 1024


def _run(method: str, minutes: float, model_dir: str, out: Path, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--minutes",
        str(minutes),
        "--model-dir",
        model_dir,
        "--out",
        str(out),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--chunk-s",
        str(args.chunk_s),
        "--overlap-s",
        str(args.overlap_s),
        "--batch-size",
        str(args.batch_size),
    ]
    return run_worker(command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--size", choices=("tiny", "full"), default="full")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--chunk-s", type=float, default=10.0)
    parser.add_argument("--overlap-s", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--methods", nargs="+", choices=("ours", "upstream", "stream"), default=["ours", "upstream", "stream"]
    )
    parser.add_argument("--stream-minutes", type=float, default=1.0, help="run the streamer up to this length")
    parser.add_argument("--max-memory-fraction", type=float, default=0.6, help="of MemAvailable, for upstream")
    parser.add_argument("--worker", choices=("ours", "upstream", "stream"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from voxflow.tasks.testing import random_models

    with tempfile.TemporaryDirectory() as tmp:
        random_models.build("denoiser", tmp, args.size)
        print(
            f"denoiser dns48 ({args.size}, random weights), {args.device}, {args.threads} thread(s), "
            f"chunk {args.chunk_s} s, overlap {args.overlap_s} s, batch {args.batch_size}",
            flush=True,
        )
        header = (
            "minutes",
            "ours s",
            "upstream s",
            "ratio",
            "stream s",
            "ours peak RSS MB",
            "upstream peak RSS MB",
            "stream peak RSS MB",
            "ours peak CUDA MB",
            "upstream peak CUDA MB",
            "max diff",
        )
        rows, notes, growth = [], [], None
        for minutes in sorted(args.minutes):
            ours = _run("ours", minutes, tmp, Path(tmp) / "ours.npy", args) if "ours" in args.methods else {}
            upstream: dict = {}
            predicted = None if growth is None else growth[0] + growth[1] * minutes
            if predicted is not None and predicted > args.max_memory_fraction * _available_mb():
                notes.append(
                    f"{minutes:g} min upstream skipped: predicted peak RSS {predicted / 1024:.1f} GB "
                    f"> {args.max_memory_fraction:.0%} of {_available_mb() / 1024:.1f} GB available"
                )
            elif "upstream" in args.methods:
                upstream = _run("upstream", minutes, tmp, Path(tmp) / "upstream.npy", args)
                if "seconds" in upstream:
                    base = upstream["base_rss_mb"]
                    growth = (base, (upstream["peak_rss_mb"] - base) / minutes)
            stream = {}
            if "stream" in args.methods and minutes <= args.stream_minutes:
                stream = _run("stream", minutes, tmp, Path(tmp) / "stream.npy", args)
            for name, result in (("ours", ours), ("upstream", upstream), ("stream", stream)):
                if "error" in result:
                    notes.append(f"{minutes:g} min {name} failed: {result['error']}")
            diff = None
            if "seconds" in ours and "seconds" in upstream:
                a, b = np.load(Path(tmp) / "ours.npy"), np.load(Path(tmp) / "upstream.npy")
                diff = float(np.abs(a - b).max() / np.abs(b).max())
            ratio = upstream["seconds"] / ours["seconds"] if "seconds" in ours and "seconds" in upstream else None
            rows.append(
                (
                    f"{minutes:g}",
                    cell(ours.get("seconds")),
                    cell(upstream.get("seconds")),
                    cell(ratio, 2),
                    cell(stream.get("seconds")),
                    cell(ours.get("peak_rss_mb"), 0),
                    cell(upstream.get("peak_rss_mb"), 0),
                    cell(stream.get("peak_rss_mb"), 0),
                    cell(ours.get("peak_cuda_mb"), 0),
                    cell(upstream.get("peak_cuda_mb"), 0),
                    "-" if diff is None else f"{diff:.1e}",
                )
            )
            print(" | ".join(rows[-1]), flush=True)
        print_table(header, rows, notes)


if __name__ == "__main__":
    main()
