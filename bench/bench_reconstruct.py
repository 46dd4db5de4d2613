"""Benchmark: reconstruction (timing plan + time-stretch + mix, no models) on a long recording with many lines.

    python bench/bench_reconstruct.py [--minutes 10] [--lines 150] [--rate-hz 44100]

Builds a ``--minutes`` stereo recording at ``--rate-hz``: a bed of tones and noise, and two speakers
taking turns, ``--lines`` lines in all (the target speaks every other line; each line is corpus speech).
The new lines are the target's lines spoken 10–40 % longer or shorter (resampled speech at 24 kHz, as
a synthesizer would give them), so the planner has to slow some, use gaps and speed others up. Then
:func:`voxflow.tasks.reconstruct.line_slots`, :func:`plan_timing` and :func:`render` run on one core, per
stretch backend, each in its own process:

* ``x RT``: seconds of recording per second of reconstruction (plan + stretch + mix + true peak);
* ``peak MB``: the largest memory reconstruction allocated (tracemalloc, a second run), at ``--lines``
  and at four times as many lines on the same recording (it must not grow with the lines). The
  output and the new voice's stem take 2 × 4 bytes × channels × samples of it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy starts its thread pools: one core

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import MB, cell, print_table, run_worker, speech  # noqa: E402

NEW_RATE_HZ = 24_000  # what the synthesis stage writes
TARGET = "SPEAKER_00"


def recording(minutes: float, lines: int, rate_hz: int, seed: int = 0):
    """The mix, its vocals and accompaniment ``(2, n)``, the turns, the target's lines and their new speech."""
    from voxflow.tasks.helpers import audio
    from voxflow.tasks.helpers.speakers import Turn
    from voxflow.tasks.script import ScriptLine

    rng = np.random.default_rng(seed)
    n = int(minutes * 60 * rate_hz)
    voice = audio.resample(speech(minutes * 1.1), 16_000, rate_hz)[0] * 0.3
    slot = n // lines
    vocals = np.zeros((2, n), np.float32)
    turns, target_lines, new_lines = [], [], []
    for i in range(lines):
        start = i * slot + round(0.1 * slot)
        length = round(rng.uniform(0.55, 0.8) * slot)
        speaker = TARGET if i % 2 == 0 else "SPEAKER_01"
        pan = (0.8, 0.5) if speaker == TARGET else (0.5, 0.8)
        piece = voice[start : start + length]
        vocals[:, start : start + length] = np.outer(pan, piece)
        turns.append(Turn(start / rate_hz, (start + length) / rate_hz, speaker))
        if speaker == TARGET:
            target_lines.append(ScriptLine(f"line-{i:03d}", speaker, start / rate_hz, (start + length) / rate_hz, "x"))
            spoken = round(length * rng.uniform(0.6, 1.4) * NEW_RATE_HZ / rate_hz)
            new_lines.append(audio.resample(piece[None], rate_hz, NEW_RATE_HZ)[0, :spoken])
    t = np.arange(n) / rate_hz
    accompaniment = np.stack([0.05 * np.sin(2 * np.pi * 220 * t), 0.05 * np.sin(2 * np.pi * 330 * t)]).astype(
        np.float32
    )
    accompaniment += (0.01 * rng.standard_normal((2, n))).astype(np.float32)
    return vocals + accompaniment, vocals, accompaniment, turns, target_lines, new_lines


def worker(minutes: float, lines: int, rate_hz: int, backend: str) -> dict:
    import scipy.signal  # noqa: F401  (imported once by a warm worker, not timed)

    from voxflow.tasks import reconstruct as rc

    mix, vocals, accompaniment, turns, target_lines, new_lines = recording(minutes, lines, rate_hz)
    options = rc.ReconstructOptions(stretch_backend=backend)

    def reconstruct():
        slots = rc.line_slots(target_lines, turns, TARGET, mix.shape[1] / rate_hz, options)
        naturals = [round(x.size * rate_hz / NEW_RATE_HZ) for x in new_lines]
        plans = rc.plan_timing(slots, naturals, rate_hz, options.timing)
        stream = ((x, NEW_RATE_HZ) for x in new_lines)
        return plans, rc.render(mix, vocals, accompaniment, rate_hz, plans, slots, stream, options)

    started = time.perf_counter()
    plans, rendered = reconstruct()
    seconds = time.perf_counter() - started
    del rendered
    tracemalloc.start()  # a second run, traced: numpy reports its buffers to tracemalloc
    _, rendered = reconstruct()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "x_rt": minutes * 60 / seconds,
        "seconds": seconds,
        "peak_mb": peak / MB,
        "placed": len(rendered.placed),
        "overflow": sum(p.overflow > 0 for p in plans),
        "fast": sum(p.applied_rate > options.timing.free_rate for p in plans),
        "padded": sum(p.padding > 0 for p in plans),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--lines", type=int, default=150)
    parser.add_argument("--rate-hz", type=int, default=44_100)
    parser.add_argument("--worker", nargs=2, metavar=("LINES", "BACKEND"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.minutes, int(args.worker[0]), args.rate_hz, args.worker[1])))
        return
    from voxflow.tasks.helpers.stretch import available_backends

    rows = []
    for backend in available_backends():
        results = {}
        for lines in (args.lines, 4 * args.lines):
            command = [sys.executable, __file__, "--minutes", str(args.minutes), "--rate-hz", str(args.rate_hz)]
            results[lines] = run_worker(command + ["--worker", str(lines), backend])
        one, many = results[args.lines], results[4 * args.lines]
        if "error" in one or "error" in many:
            rows.append([backend, one.get("error", "") or many.get("error", ""), "", "", "", ""])
            continue
        rows.append(
            [
                backend,
                cell(one["x_rt"]),
                cell(one["seconds"], 2),
                cell(one["peak_mb"], 0),
                cell(many["peak_mb"], 0),
                f"{one['placed']} placed, {one['fast']} fast, {one['padded']} padded, {one['overflow']} overflow",
            ]
        )
    print_table(
        [
            "backend",
            "x RT (one core)",
            f"seconds for {args.minutes:g} min",
            f"peak MB, {args.lines} lines",
            f"peak MB, {4 * args.lines} lines",
            "plan",
        ],
        rows,
        [f"{args.minutes:g} min stereo at {args.rate_hz} Hz; the target speaks every other line"],
    )


if __name__ == "__main__":
    main()
