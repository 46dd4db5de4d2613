"""Benchmark: NoVaSR 16 → 48 kHz against plain resampling, and the enhance chain around it.

    python bench/bench_enhance.py [--seconds 60] [--device cpu|cuda] [--threads 1] [--methods ...]

Builds full-size random-weight models (NoVaSR at the official sizes, DNS48) into a temporary model
folder, makes speech of ``--seconds`` by looping the corpus recordings, and times, each in its own
subprocess (so peak RSS is that run's own):

* ``novasr``: :func:`voxflow.tasks.upsample.upsample` on the 16 kHz speech (chunks of ``--chunk-s``,
  batches of ``--batch-size``);
* ``novasr-whole``: one forward pass of the model over the whole file (what upstream's ``infer``
  does), for the cost of chunking; its memory grows with the file;
* ``soxr``: :func:`voxflow.tasks.helpers.audio.resample` 16 → 48 kHz (soxr VHQ), the plain resampling of the chain
  with upsampling off;
* ``chain``: :func:`voxflow.tasks.enhance.enhance` with both switches on, on the speech at 24 kHz (the
  synthesis stage's rate): resample to 16 kHz, DNS48, NoVaSR;
* ``chain-plain``: the same with upsampling off (DNS48, then soxr to 48 kHz).

Prints, per method, the seconds, the real-time factor (seconds of audio per second of compute; higher
is faster) and the peak RSS. The output is noise (random weights): only the cost is measured.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RATE_HZ, cell, print_table, run_worker, speech  # noqa: E402

METHODS = ("novasr", "novasr-whole", "soxr", "chain", "chain-plain")
TTS_RATE_HZ = 24_000


def worker(args: argparse.Namespace) -> None:
    """One timed run in this process; prints a JSON line."""
    import torch

    from voxflow.tasks.enhance import EnhanceOptions, enhance, load_enhance_denoiser
    from voxflow.tasks.helpers import audio
    from voxflow.tasks.upsample import UpsampleOptions, load_upsample_model, upsample

    torch.set_num_threads(args.threads)
    line = speech(args.seconds / 60)
    sr_options = UpsampleOptions(chunk_s=args.chunk_s, batch_size=args.batch_size)
    model = load_upsample_model("novasr", args.device, args.model_dir)
    if args.worker.startswith("chain"):
        line = audio.resample(line, RATE_HZ, TTS_RATE_HZ)
        denoiser = load_enhance_denoiser("dns48", args.device, args.model_dir)
        options = EnhanceOptions(upsample=args.worker == "chain", sr=sr_options)
        run = lambda: enhance(line, TTS_RATE_HZ, options, denoiser, model)  # noqa: E731
    elif args.worker == "novasr":
        x = torch.from_numpy(line).to(args.device)
        run = lambda: upsample(x, model, sr_options)  # noqa: E731
    elif args.worker == "novasr-whole":
        x = torch.from_numpy(line).to(args.device)[:, None]
        run = lambda: model(x)  # noqa: E731
    else:
        run = lambda: audio.resample(line, RATE_HZ, 48_000)  # noqa: E731
    with torch.no_grad():
        run()  # one untimed run first: allocations and one-time set-up (oneDNN kernels, filters)
        if args.device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(args.repeats):
            run()
        if args.device == "cuda":
            torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / args.repeats
    print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _run(method: str, model_dir: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--seconds",
        str(args.seconds),
        "--model-dir",
        model_dir,
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--chunk-s",
        str(args.chunk_s),
        "--batch-size",
        str(args.batch_size),
        "--repeats",
        str(args.repeats),
    ]
    return run_worker(command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the speech")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--chunk-s", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs after one warm-up run (the mean is shown)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from voxflow.tasks.testing import random_models

    with tempfile.TemporaryDirectory() as tmp:
        random_models.build("novasr", tmp, "full")
        random_models.build("denoiser", tmp, "full")
        print(
            f"NoVaSR and DNS48 (full size, random weights), {args.device}, {args.threads} thread(s), "
            f"{args.seconds:g} s of speech, chunk {args.chunk_s} s, batch {args.batch_size}",
            flush=True,
        )
        header = ("method", "seconds", "real-time factor", "peak RSS MB")
        rows, notes = [], []
        for method in args.methods:
            result = _run(method, tmp, args)
            if "error" in result:
                notes.append(f"{method} failed: {result['error']}")
            rtf = args.seconds / result["seconds"] if "seconds" in result else None
            rows.append((method, cell(result.get("seconds"), 2), cell(rtf, 1), cell(result.get("peak_rss_mb"), 0)))
            print(" | ".join(rows[-1]), flush=True)
        print_table(header, rows, notes)


if __name__ == "__main__":
    main()
