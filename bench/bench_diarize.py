"""Benchmark: our diarize against the pyannote pipeline called directly, on the same weights and audio.

    python bench/bench_diarize.py [--minutes 1 10 60] [--device cpu|cuda] [--size tiny|full]

Builds a random-weight community-1 pipeline (``tiny`` by default: on this 2-core CPU the ``full``
ResNet34 embedding costs minutes per minute of audio, so use ``--size full --minutes 1`` to measure
it, or a GPU), makes 16 kHz mono speech of each length by looping the corpus recordings, and runs,
each in its own subprocess (so peak RSS is that run's own):

* ``ours``: :func:`voxflow.tasks.diarize.waveform_input` + :func:`voxflow.tasks.diarize.diarize` on the pipeline from
  :func:`voxflow.tasks.diarize.load_diarize_model`;
* ``upstream``: ``Pipeline.from_pretrained(folder)`` called on ``{"waveform", "sample_rate"}``
  (pyannote's own entry point; a file path needs FFmpeg's shared libraries, absent here).

Both use ``num_speakers=2`` and the config's batch sizes (32). Only the diarization is timed (not the
imports, the model load or reading the audio). Prints minutes, seconds, throughput ratio (upstream
seconds ÷ ours, ≥ 1 means ours is at least as fast), peak RSS (and peak CUDA memory on a GPU) of each,
and whether both found the same turns.
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

NUM_SPEAKERS = 2


def worker(args: argparse.Namespace) -> None:
    """One timed run in this process; prints a JSON line and saves the turns for the comparison."""
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
    from voxflow.tasks.diarize import (
        DEFAULT_MODEL,
        DiarizeOptions,
        annotation_turns,
        diarize,
        load_diarize_model,
        waveform_input,
    )

    samples = speech(args.minutes[0])
    if args.worker == "ours":
        pipeline = load_diarize_model(DEFAULT_MODEL, args.device, args.model_dir)
    else:
        from pyannote.audio import Pipeline

        pipeline = Pipeline.from_pretrained(Path(args.model_dir) / "pyannote" / "speaker-diarization-community-1")
        pipeline.to(torch.device(args.device))
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if args.worker == "ours":
        found = diarize(waveform_input(samples, RATE_HZ), pipeline, DiarizeOptions(num_speakers=NUM_SPEAKERS))
        turns, exclusive = found.turns, found.exclusive
    else:
        output = pipeline({"waveform": torch.from_numpy(samples), "sample_rate": RATE_HZ}, num_speakers=NUM_SPEAKERS)
        turns, exclusive = (
            annotation_turns(output.speaker_diarization),
            annotation_turns(output.exclusive_speaker_diarization),
        )
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cuda_mb = torch.cuda.max_memory_allocated() / MB if args.device == "cuda" else None
    Path(args.out).write_text(
        json.dumps(
            [[(t.start_s, t.end_s, t.speaker) for t in turns], [(t.start_s, t.end_s, t.speaker) for t in exclusive]]
        )
    )
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "peak_cuda_mb": cuda_mb, "turns": len(turns)}))


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
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYANNOTE_METRICS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    return run_worker(command, env)


def _same_turns(a: Path, b: Path) -> str:
    ours, theirs = json.loads(a.read_text()), json.loads(b.read_text())
    if [[t[2] for t in part] for part in ours] != [[t[2] for t in part] for part in theirs]:
        return "no (labels)"
    times = [np.array([t[:2] for t in part]).reshape(-1, 2) for part in ours + theirs]
    diff = max((float(np.abs(x - y).max()) if len(x) else 0.0) for x, y in zip(times[:2], times[2:]))
    return f"yes ({diff:.0e} s)" if diff <= 1e-6 else f"no ({diff:.1e} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--worker", choices=("ours", "upstream"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from voxflow.tasks.testing import random_models

    with tempfile.TemporaryDirectory() as tmp:
        random_models.build("pyannote", tmp, args.size)
        print(
            f"pyannote community-1 ({args.size}, random weights), {args.device}, {args.threads} thread(s), "
            f"num_speakers={NUM_SPEAKERS}",
            flush=True,
        )
        header = (
            "minutes",
            "ours s",
            "upstream s",
            "ratio",
            "ours peak RSS MB",
            "upstream peak RSS MB",
            "ours peak CUDA MB",
            "upstream peak CUDA MB",
            "turns",
            "same turns",
        )
        rows, notes = [], []
        for minutes in sorted(args.minutes):
            results = {
                name: _run(name, minutes, tmp, Path(tmp) / f"{name}.json", args) for name in ("ours", "upstream")
            }
            ours, upstream = results["ours"], results["upstream"]
            notes += [f"{minutes:g} min {name} failed: {r['error']}" for name, r in results.items() if "error" in r]
            both = "seconds" in ours and "seconds" in upstream
            same = _same_turns(Path(tmp) / "ours.json", Path(tmp) / "upstream.json") if both else "-"
            rows.append(
                (
                    f"{minutes:g}",
                    cell(ours.get("seconds")),
                    cell(upstream.get("seconds")),
                    cell(upstream["seconds"] / ours["seconds"], 2) if both else "-",
                    cell(ours.get("peak_rss_mb"), 0),
                    cell(upstream.get("peak_rss_mb"), 0),
                    cell(ours.get("peak_cuda_mb"), 0),
                    cell(upstream.get("peak_cuda_mb"), 0),
                    str(ours.get("turns", "-")),
                    same,
                )
            )
            print(" | ".join(rows[-1]), flush=True)
        print_table(header, rows, notes)


if __name__ == "__main__":
    main()
