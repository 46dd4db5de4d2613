"""End to end: what orchestration costs, what a cached re-run costs, and how time and memory grow.

    python bench/bench_e2e.py [--size tiny|full] [--minutes 1 10 60] [--files 50] [--jobs 1 2 4]
                              [--dask-workers 2] [--max-tokens 24] [--skip folder replace]
                              [--out bench/results]

For each length (inputs built by looping the corpus recordings, 16 kHz mono WAV), two fresh
processes run the ``transcribe`` flow's chain — ingest → diarize → transcribe — on the same file with
the same random-weight models (``voxflow models build-random --size``):

* ``plain``: the stage functions themselves (each stage task's undecorated function, reading and
  writing the same store), called one after the other in plain Python;
* ``flow``: the ``transcribe`` flow (Prefect, its ephemeral API server, the stage tasks with their
  cache policy, locks and catalog rows), then the same flow again: every stage a cache hit.

Both first run a 5-second warm-up file (imports, model loads, Prefect's server start), then reset
the kernel's peak-RSS mark (``/proc/self/clear_refs``), so the clock and the peak are the measured
run's own. Printed and recorded: orchestration overhead = flow wall ÷ plain wall and the overhead
per task in ms; warm re-run ÷ cold run; each stage's share of the wall time, × real time and peak RSS;
how time and memory grow from the shortest to the longest input.

Then ``ingest-folder`` on ``--files`` distinct short files (cut from the corpus), with each
``--jobs`` value of parallel files and with a local Dask cluster (``--dask-workers`` processes): files
per second. Then ``voice_replace`` once on a generated two-speaker conversation (tests/conversation.py):
its stage shares. Whisper decodes at most ``--max-tokens`` tokens per window: a random model's
garbage would otherwise run to the 224-token limit, and the bound keeps the decoding work fixed.

Everything lands in ``<out>/e2e-<size>.json`` and two plots, ``e2e-<size>-growth.png`` and
``e2e-<size>-shares.png`` (matplotlib), with the date, the machine and the versions. On this 2-core
machine ``--size tiny`` with the defaults takes about 12 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import MB, RATE_HZ, cell, print_table, speech  # noqa: E402

CHAIN = ("ingest", "diarize", "transcribe")


def _label(entry: dict) -> str:
    return f"{entry['minutes']:g} min" + (", diarized" if entry.get("diarize") else "")


WARM_UP_S = 5.0


# ---- the measured processes ------------------------------------------------------------------------


def _reset_peak() -> None:
    """Start the kernel's peak-RSS mark (VmHWM) again from the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB


def _options(max_tokens: int, diarize: bool):
    from voxflow.flows.transcribe import TranscribeFlowOptions
    from voxflow.tasks.diarize import DiarizeOptions
    from voxflow.tasks.transcribe import TranscribeOptions

    transcribe = TranscribeOptions(language="en", beam_size=1, temperatures=(0.0,), max_tokens=max_tokens)
    return TranscribeFlowOptions(run_diarize=diarize, diarize=DiarizeOptions(num_speakers=2), transcribe=transcribe)


def run_plain(source: Path, max_tokens: int, diarize: bool) -> dict[str, float]:
    """The chain's stage functions called in plain Python; seconds per stage."""
    from voxflow.flows.settings import model_settings, store_settings
    from voxflow.storage.keys import file_uri
    from voxflow.tasks.diarize import diarize_audio
    from voxflow.tasks.ingest import ingest_file
    from voxflow.tasks.transcribe import transcribe_audio

    options, settings, models = _options(max_tokens, diarize), store_settings(None), model_settings(None)
    seconds: dict[str, float] = {}

    def timed(stage: str, task, *args):
        started = time.perf_counter()
        result = task.fn(*args)  # the stage function with its catalog row, without Prefect
        seconds[stage] = time.perf_counter() - started
        return result

    audio = timed("ingest", ingest_file, file_uri(source), options.ingest_options(), settings, source.name)
    turns = timed("diarize", diarize_audio, audio, options.diarize, settings, models) if diarize else None
    timed("transcribe", transcribe_audio, audio, turns, options.transcribe.resolved(models), settings, models)
    return seconds


def run_flow(source: Path, max_tokens: int, diarize: bool) -> tuple[int, dict[str, float]]:
    """The transcribe flow on one file; its task count and its stages' seconds (from the catalog)."""
    from voxflow.flows.settings import store_settings
    from voxflow.flows.transcribe import transcribe
    from voxflow.storage.catalog import Catalog
    from voxflow.storage.store import shared_store

    started = datetime.now(UTC)
    report = transcribe(paths=[str(source)], options=_options(max_tokens, diarize))
    if report.failed:
        raise RuntimeError(report.failed[0].message)
    runs = Catalog(shared_store(store_settings(None))).frame("stage_runs")
    runs = runs[(runs["started_at"] >= started) & (runs["status"] == "completed") & ~runs["cache_hit"]]
    return len(report.outcomes) * (3 if diarize else 2), {row.stage: row.duration_s for row in runs.itertuples()}


def worker(args: argparse.Namespace) -> None:
    """One measurement in this process: a JSON line."""
    source, warm_up = Path(args.input), Path(args.warm_up)
    if args.worker == "plain":
        run_plain(warm_up, args.max_tokens, args.diarize)
        _reset_peak()
        started, cpu = time.perf_counter(), time.process_time()
        stages = run_plain(source, args.max_tokens, args.diarize)
        wall = time.perf_counter() - started
        result = {"wall_s": wall, "cpu_s": time.process_time() - cpu, "stages": stages, "peak_mb": _peak_mb()}
    elif args.worker == "flow":
        run_flow(warm_up, args.max_tokens, args.diarize)
        _reset_peak()
        started, cpu = time.perf_counter(), time.process_time()
        tasks, stages = run_flow(source, args.max_tokens, args.diarize)
        wall = time.perf_counter() - started
        result = {"wall_s": wall, "cpu_s": time.process_time() - cpu, "stages": stages, "peak_mb": _peak_mb()}
        started = time.perf_counter()
        _, again = run_flow(source, args.max_tokens, args.diarize)
        result |= {"tasks": tasks, "warm_s": time.perf_counter() - started, "recomputed": sorted(again)}
    elif args.worker == "folder":
        result = run_folder(source, Path(args.warm_up), args.jobs[0], args.dask_workers)
    else:
        result = run_replace(Path(args.input), Path(args.warm_up), args.max_tokens)
    print(json.dumps(result))


def run_folder(folder: Path, warm_up: Path, jobs: int, dask_workers: int) -> dict:
    """``ingest-folder`` on every file of ``folder``: wall seconds, files done."""
    from voxflow.flows import ingest_folder as folder_flow
    from voxflow.flows.ingest import ingest

    ingest(paths=[str(warm_up)])  # the API server and the imports, before the clock
    flow = folder_flow.ingest_folder
    if dask_workers:
        from prefect_dask import DaskTaskRunner

        cluster = {"n_workers": dask_workers, "threads_per_worker": 1, "processes": True}
        flow = flow.with_options(task_runner=DaskTaskRunner(cluster_kwargs=cluster))
    started = time.perf_counter()
    state = flow(source=str(folder), parallel_files=max(jobs, 1), return_state=True)
    wall = time.perf_counter() - started
    outcome = state.result(raise_on_failure=False)
    report = getattr(outcome, "report", outcome)
    return {"wall_s": wall, "done": report.count("done"), "failed": len(report.failed), "files": len(report.outcomes)}


def run_replace(source: Path, lines: Path, max_tokens: int) -> dict:
    """``voice_replace`` once on a conversation, its known lines given (random-weight diarization and
    transcription would give nothing to replace): wall seconds and its stages' seconds (from the catalog)."""
    import pandas as pd

    from voxflow.flows.settings import store_settings
    from voxflow.flows.speech import SpeechOptions
    from voxflow.flows.voice_replace import VoiceReplaceOptions, voice_replace
    from voxflow.storage.catalog import Catalog
    from voxflow.storage.store import shared_store
    from voxflow.tasks.diarize import DiarizeOptions
    from voxflow.tasks.synthesize import SynthesizeOptions
    from voxflow.tasks.target import TargetOptions
    from voxflow.tasks.transcribe import TranscribeOptions

    synthesize = SynthesizeOptions(frames_per_char=0.5, margin_frames=4, max_new_tokens_cap=24, quality_retries=0)
    options = VoiceReplaceOptions(
        target=TargetOptions(speaker="SPEAKER_00"),
        design="a calm, low voice",
        language="English",
        diarize=DiarizeOptions(num_speakers=2),
        transcribe=TranscribeOptions(language="en", beam_size=1, temperatures=(0.0,), max_tokens=max_tokens),
        speech=SpeechOptions(synthesize=synthesize, consent_note="benchmark: random-weight voice"),
        lines=str(lines.with_suffix(".csv")),
    )
    pd.DataFrame(json.loads(lines.read_text())).to_csv(lines.with_suffix(".csv"), index=False)
    started = time.perf_counter()
    report = voice_replace(paths=[str(source)], options=options)
    wall = time.perf_counter() - started
    if report.failed:
        raise RuntimeError(report.failed[0].message)
    runs = Catalog(shared_store(store_settings(None))).frame("stage_runs")
    runs = runs[(runs["status"] == "completed") & ~runs["cache_hit"]]
    stages: dict[str, float] = {}
    for row in runs.itertuples():
        stages[row.stage] = stages.get(row.stage, 0.0) + row.duration_s
    return {"wall_s": wall, "stages": stages, "tasks": len(runs), "peak_mb": _peak_mb()}


# ---- the driver ------------------------------------------------------------------------------------


def _write_wav(path: Path, samples) -> Path:
    import soundfile

    soundfile.write(path, samples.T, RATE_HZ, subtype="FLOAT")
    return path


def _environment(work: Path, name: str, models: Path) -> dict[str, str]:
    """A fresh store and Prefect home for one measured process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VOXFLOW_"))}
    (work / name / "prefect").mkdir(parents=True)  # Prefect's server does not create its home's parents
    return env | {
        "VOXFLOW_HOME": str(work / name / "store"),
        "PREFECT_HOME": str(work / name / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "VOXFLOW_MODEL_DIR": str(models),
        "VOXFLOW_DEVICE": "cpu",
    }


def _measure(kind: str, work: Path, name: str, models: Path, *args: str) -> dict:
    from bench.common import run_worker

    command = [sys.executable, __file__, "--worker", kind, *args]
    result = run_worker(command, _environment(work, name, models))
    if "error" in result:
        print(f"{name}: {result['error']}", file=sys.stderr)
    return result


def _short_files(folder: Path, count: int) -> Path:
    """``count`` distinct 4-8 s files cut from the corpus speech (16 kHz mono WAV)."""
    folder.mkdir(parents=True, exist_ok=True)
    track = speech(count * 8 / 60)
    at = 0
    for i in range(count):
        frames = (4 + i % 5) * RATE_HZ
        _write_wav(folder / f"clip-{i:03d}.wav", track[:, at : at + frames])
        at += frames
    return folder


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("voxflow", "prefect", "torch", "pyannote.audio", "openai-whisper", "deltalake")
    return {"python": platform.python_version(), **{n: version(n) for n in names}}


def _machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?"
    )
    return f"{os.cpu_count()} CPU cores ({model}), {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB RAM"


def drive(args: argparse.Namespace) -> None:
    from voxflow.tasks.testing import random_models

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="voxflow-e2e-") as tmp:
        work = Path(tmp)
        models = work / "models"
        libraries = ("pyannote", "whisper") + (
            ("demucs", "qwen_tts", "denoiser", "novasr") if "replace" not in args.skip else ()
        )
        random_models.build_all(models, args.size, libraries)
        warm_up = _write_wav(work / "warm-up.wav", speech(WARM_UP_S / 60))  # speech: every stage's first call
        results: dict = {"lengths": [], "folder": [], "replace": None}
        for minutes, diarize in [(m, False) for m in args.minutes] + [(m, True) for m in args.diarize_minutes]:
            chain = "diarize" if diarize else "transcribe"
            source = _write_wav(work / f"speech-{minutes:g}min.wav", speech(minutes))
            common = ["--input", str(source), "--warm-up", str(warm_up), "--max-tokens", str(args.max_tokens)]
            common += ["--diarize"] if diarize else []
            plain = _measure("plain", work, f"plain-{chain}-{minutes:g}", models, *common)
            flow = _measure("flow", work, f"flow-{chain}-{minutes:g}", models, *common)
            results["lengths"].append({"minutes": minutes, "diarize": diarize, "plain": plain, "flow": flow})
            done = f"plain {plain.get('wall_s', 0):.1f} s, flow {flow.get('wall_s', 0):.1f} s"
            print(f"{minutes:g} min with{'' if diarize else 'out'} diarize: {done}", flush=True)
        if "folder" not in args.skip:
            clips = _short_files(work / "clips", args.files)
            setups = [(jobs, 0) for jobs in args.jobs] + (
                [(args.dask_workers, args.dask_workers)] if args.dask_workers else []
            )
            for jobs, dask in setups:
                name = f"folder-{'dask' if dask else 'jobs'}-{jobs}"
                extra = ["--jobs", str(jobs), "--dask-workers", str(dask)]
                measured = _measure(
                    "folder", work, name, models, "--input", str(clips), "--warm-up", str(warm_up), *extra
                )
                results["folder"].append({"jobs": jobs, "dask_workers": dask, **measured})
        if "replace" not in args.skip:
            from tests.conversation import SCRIPT, SCRIPT_OVERLAP_LINE, build_conversation

            conversation = build_conversation(SCRIPT, overlap_line=SCRIPT_OVERLAP_LINE)
            talk = conversation.write(work / "talk.wav")
            lines = [
                {"line_id": x.line_id, "speaker": x.speaker, "start_s": x.start_s, "end_s": x.end_s, "text": x.text}
                for x in conversation.lines
            ]
            (work / "talk-lines.json").write_text(json.dumps(lines))
            replace_args = ["--input", str(talk), "--warm-up", str(work / "talk-lines.json")]
            replace_args += ["--max-tokens", str(args.max_tokens)]
            results["replace"] = _measure("replace", work, "replace", models, *replace_args)
    results |= {
        "size": args.size,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(),
        "versions": _versions(),
        "bench_s": time.monotonic() - started,
    }
    path = out / f"e2e-{args.size}.json"
    path.write_text(json.dumps(results, indent=1))
    report(results)
    plot(results, out)
    print(f"\nrecorded in {path}; plots beside it; the bench took {results['bench_s'] / 60:.1f} min")


# ---- what it prints and draws ----------------------------------------------------------------------


def report(results: dict) -> None:
    rows = []
    for entry in results["lengths"]:
        plain, flow, minutes = entry["plain"], entry["flow"], entry["minutes"]
        if "wall_s" not in plain or "wall_s" not in flow:
            rows.append([_label(entry), *["-"] * 9])
            continue
        overhead_ms = (flow["wall_s"] - plain["wall_s"]) / flow["tasks"] * 1000
        rows.append(
            [
                _label(entry),
                cell(plain["wall_s"]),
                cell(flow["wall_s"]),
                cell(flow["wall_s"] / plain["wall_s"], 3),
                cell(overhead_ms, 0),
                cell(flow["warm_s"]),
                cell(flow["warm_s"] / flow["wall_s"], 3),
                cell(minutes * 60 / flow["wall_s"]),
                cell(plain["peak_mb"], 0),
                cell(flow["peak_mb"], 0),
            ]
        )
    header = ["input", "plain s", "flow s", "flow ÷ plain", "ms per task", "warm s", "warm ÷ cold", "× real time"]
    print_table([*header, "plain peak MB", "flow peak MB"], rows)

    share_rows = []
    for entry in results["lengths"]:
        for side in ("plain", "flow"):
            stages = entry[side].get("stages", {})
            total = sum(stages.values()) or 1.0
            share_rows.append(
                [
                    _label(entry),
                    side,
                    *(f"{cell(stages.get(s))} s ({100 * stages.get(s, 0) / total:.0f} %)" for s in CHAIN),
                ]
            )
    print_table(["input", "side", *CHAIN], share_rows)

    if results["folder"]:
        files = [r for r in results["folder"] if "wall_s" in r]
        print_table(
            ["runner", "files", "done", "wall s", "files/s"],
            [
                [
                    f"Dask, {r['dask_workers']} processes" if r["dask_workers"] else f"{r['jobs']} parallel file(s)",
                    str(r["files"]),
                    str(r["done"]),
                    cell(r["wall_s"]),
                    cell(r["files"] / r["wall_s"], 2),
                ]
                for r in files
            ],
        )
    replaced = results.get("replace") or {}
    if "stages" in replaced:
        total = sum(replaced["stages"].values()) or 1.0
        ordered = sorted(replaced["stages"].items(), key=lambda kv: -kv[1])
        print_table(
            ["voice_replace stage", "s", "share"],
            [[stage, cell(s), f"{100 * s / total:.0f} %"] for stage, s in ordered],
            [
                f"voice_replace wall {replaced['wall_s']:.1f} s for {replaced['tasks']} stage runs, peak {replaced['peak_mb']:.0f} MB"
            ],
        )


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    caption = f"{results['date']} · {results['machine']} · " + ", ".join(
        f"{k} {v}" for k, v in results["versions"].items() if k in ("voxflow", "prefect", "torch")
    )
    measured = [e for e in results["lengths"] if "wall_s" in e["plain"] and "wall_s" in e["flow"]]
    figure, (times, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    for diarize, chain in ((False, "ingest → transcribe"), (True, "+ diarize")):
        entries = [e for e in measured if bool(e.get("diarize")) == diarize]
        minutes = [e["minutes"] for e in entries]
        for side, style in (("plain", "o-"), ("flow", "s-")):
            line = style if not diarize else style[0] + ":"
            times.plot(minutes, [e[side]["wall_s"] for e in entries], line, label=f"{chain}: {side}")
            memory.plot(minutes, [e[side]["peak_mb"] for e in entries], line, label=f"{chain}: {side}")
        times.plot(minutes, [e["flow"]["warm_s"] for e in entries], "^--", label=f"{chain}: flow, all cached")
    times.set(xlabel="input, minutes", ylabel="wall seconds", title="time", xscale="log", yscale="log")
    memory.set(xlabel="input, minutes", ylabel="peak RSS, MB", title="peak memory", xscale="log")
    memory.set_ylim(bottom=0)
    for axes in (times, memory):
        axes.legend()
        axes.grid(alpha=0.3)
    figure.suptitle(f"voxflow end to end ({results['size']} random-weight models)")
    figure.text(0.5, 0.005, caption, ha="center", fontsize=7)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(out / f"e2e-{results['size']}-growth.png", dpi=110)
    plt.close(figure)

    bars = [(f"{_label(e)}, {side}", e[side]["stages"]) for e in measured for side in ("plain", "flow")]
    replaced = results.get("replace") or {}
    if "stages" in replaced:
        bars.append(("voice_replace", replaced["stages"]))
    stages = list(dict.fromkeys(s for _, shares in bars for s in shares))
    figure, axes = plt.subplots(figsize=(11, 0.5 * len(bars) + 1.8))
    colours = plt.get_cmap("tab20").colors
    for row, (_, shares) in enumerate(bars):
        total, left = sum(shares.values()) or 1.0, 0.0
        for i, stage in enumerate(stages):
            share = 100 * shares.get(stage, 0.0) / total
            axes.barh(
                row,
                share,
                left=left,
                color=colours[i % len(colours)],
                label=stage if row == 0 or stage not in shares else None,
            )
            left += share
    axes.set_yticks(range(len(bars)), [label for label, _ in bars])
    axes.invert_yaxis()
    axes.set(xlabel="share of the stages' wall time, %", title="where the time goes, by stage")
    handles, labels = axes.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    axes.legend(unique.values(), unique.keys(), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.text(0.5, 0.005, caption, ha="center", fontsize=7)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(out / f"e2e-{results['size']}-shares.png", dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--diarize-minutes", type=float, nargs="*", default=[1, 10])
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--dask-workers", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--skip", nargs="*", default=[], choices=("folder", "replace"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--worker", choices=("plain", "flow", "folder", "replace"), help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--warm-up", help=argparse.SUPPRESS)
    parser.add_argument("--diarize", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
