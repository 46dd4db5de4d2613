"""Peak memory (RSS) of each stage at 1 minute and at 2 hours of audio: what a stage holds around its compute.

    python bench/bench_memory.py [--seconds 60 600 1800 7200] [--stages ingest ingest-cli denoise ...]
                                 [--max-run-s 600] [--max-memory-fraction 0.5] [--cache DIR]
                                 [--table /tmp/memory_table.md] [--reuse]
    python bench/bench_memory.py --one STAGE --seconds N      # one measurement in this process: a JSON line

``--seconds``: the audio lengths measured, in seconds, ascending (the summary table's columns are the
shortest and the longest; the default 60 600 1800 7200 gives 1 min and 2 h, and the 10 and 30 min runs
in between show the growth). ``--stages``: some of ingest, ingest-cli, denoise, separate, diarize,
transcribe, lipsync. ``--cache``: where the inputs and the models are built once (default
``~/.cache/voxflow-bench/memory``); every measured run is also kept there in ``results.json``, and
``--reuse`` takes the runs found there instead of measuring them again (to finish an interrupted run
or redo one stage). ``--table``: the Markdown file both tables are written to.

Before each length, its run's time and peak are predicted from the lengths already measured (linearly
through the two longest; proportionally from a single one). A length whose prediction exceeds
``--max-run-s`` seconds or ``--max-memory-fraction`` of the memory available now is not run but
EXTRAPOLATED (marked ``~`` in the tables) linearly from the two longest measured lengths, so the
machine neither swaps nor runs for hours. One term is not linear: diarize's clustering (pyannote's AHC,
scipy ``linkage(method="centroid")``) holds two condensed distance matrices of its n training
embeddings, 8 n^2 bytes, for a moment; when diarize is extrapolated, n is extrapolated linearly from
the counts its runs report and that term is printed beside the peak (not added to it: it is a transient
whose overlap with the peak the runs cannot show).

Inputs, built from the corpus recordings by repeating them (written block by block with soundfile,
float32 WAV, the format of ingest's artifacts): ``speech`` = ``diar_2spk_pyannote/sample.wav`` (30 s,
16 kHz mono: what ingest writes for the speech stages) and ``music`` = ``asr_en_jfk/jfk.flac`` (11 s,
44.1 kHz stereo: what ingest with ``NATIVE`` options writes for separate, and the source ingest decodes).
Models: the tiny random-weight models of :mod:`voxflow.tasks.testing.random_models` (their output is
noise; what a stage holds around its compute, whole-file arrays and outputs, is the same as with real
weights; the model itself, a few MB here, is in the baseline). Where the output's size depends on what
the model finds, random weights set it: the transcript's words (whisper with beam_size=1 and no
temperature fallback), the diarization's turns and the embeddings pyannote clusters (the diarize run
reports their counts, and the peaks of pyannote's steps, its AHC and its VBx as parts of its compute phase).

Every measurement is a fresh subprocess (``--one``) on one torch/BLAS thread that imports the stage,
loads its model and then runs, as the stage task does, three phases:

* ``read``: the task's ``read_audio`` on a local store (the WAV's bytes read whole, then
  ``audio.decode_wav_bytes``);
* ``compute``: the stage's pure function (``denoise``, ``separate``, ``diarize(waveform_input(..))``,
  ``whisper_audio`` + ``recognize`` + ``split_segments``, ``lipsync_windows(prepare(..))``,
  ``ingest_audio`` into a staged file);
* ``write``: the task's outputs encoded and put into a temporary ``LocalStore`` (``encode_wav``, the
  RTTMs, the transcript's JSON/SRT/VTT/TXT/TSV, ``features.npy`` and ``windows.parquet``; separate's
  ``rms_dbfs`` of both stems too). Catalog rows are not written.

The peak of each phase is the kernel's high-water mark (``ru_maxrss``, VmHWM), reset before the phase
(``/proc/self/clear_refs`` 5), so it is that phase's own peak; the stage's peak is the largest of them,
which is what ``ru_maxrss`` at the end of an unreset run reports. The baseline is the RSS after the
imports and the model load. ``ingest-cli`` runs the whole ``voxflow ingest FILE`` command in the worker
(``voxflow.flows.cli.main``, a fresh Prefect home and store, Prefect's ephemeral server): its peak is
the CLI process's (the ingest task runs in a thread of it); the ephemeral server, a child process, is
sampled every 0.2 s and reported beside it. Times are wall seconds of the phases (on a shared machine:
a rough guide). Run it under ``nice``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core per run, before numpy or torch start their thread pools
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random-weight models only: nothing is downloaded

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import CORPUS, MB, print_table  # noqa: E402

CACHE = Path.home() / ".cache" / "voxflow-bench" / "memory"
INPUTS = {  # kind -> corpus recording repeated to the length measured
    "speech": "diar_2spk_pyannote/sample.wav",  # 30 s, 16 kHz mono
    "music": "asr_en_jfk/jfk.flac",  # 11 s, 44.1 kHz stereo
}
LIBRARIES = ("denoiser", "demucs", "pyannote", "whisper")
STAGES = ("ingest", "ingest-cli", "denoise", "separate", "diarize", "transcribe", "lipsync")
STAGE_INPUT = {"ingest": "music", "ingest-cli": "music", "separate": "music"}  # the others read speech
HOLDS = {  # what each stage holds (N: the input as float32), from reading its code and the phases' peaks
    "ingest": "a few decode/resample blocks (the output is streamed into a staged file); a loudness edge per 100 ms",
    "ingest-cli": "the ingest task's blocks plus Prefect's flow and task state; the server (another process) "
    "holds ~280 MB whatever the length",
    "denoise": "4 N: input, estimate, output and a dry x input temporary (float32); writing: the output's WAV bytes twice",
    "separate": "4 N: input, its normalised copy and both stems (model rate = input rate here); writing: a stem's WAV "
    "bytes twice, or its float64 square (rms_dbfs)",
    "diarize": "the input and pyannote's arrays of the whole track (10 s windows every 1 s: segmentation, masks, "
    "embeddings, frame activations); AHC distances, 8 n^2 bytes for n embeddings",
    "transcribe": "the input (mono 16 kHz, no copy), Silero's frame probabilities, the transcript",
    "lipsync": "the input, the (80, frames) mel and the windows (5x the mel = 2 N); writing: features.npy bytes (2 N)",
}


# ---- inputs and models ----------------------------------------------------------------------------


def build_input(kind: str, seconds: float, cache: Path) -> Path:
    """``seconds`` of the ``kind`` recording repeated, float32 WAV in the cache (built once, block by block)."""
    import soundfile as sf

    path = cache / "inputs" / f"{kind}-{seconds:g}s.wav"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    samples, rate = sf.read(CORPUS / INPUTS[kind], dtype="float32", always_2d=True)
    frames, written = round(seconds * rate), 0
    partial = path.with_name(path.name + ".part")
    with sf.SoundFile(partial, "w", rate, samples.shape[1], subtype="FLOAT", format="WAV") as f:
        while written < frames:
            block = samples[: frames - written]
            f.write(block)
            written += len(block)
    partial.replace(path)
    return path


def build_models(cache: Path) -> Path:
    """The tiny random-weight models of every library measured, in ``<cache>/models`` (built once)."""
    folder = cache / "models"
    for library in LIBRARIES:
        done = folder / f".built-{library}"
        if not done.exists():  # imported only when building: the builders import every model library
            from voxflow.tasks.testing.random_models import build

            build(library, folder, "tiny")
            done.touch()
    return folder


# ---- the worker: one stage on one input, in this process ------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_mb() -> float:
    """This process's resident memory now."""
    return _status_kb("VmRSS") / 1024


def reset_peak() -> None:
    """Set the high-water mark (``ru_maxrss``, VmHWM) to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Meter:
    """Phases of one run: each one's wall seconds, its own peak RSS and the RSS after it.

    The ``load`` phase runs from :meth:`start` to :meth:`loaded` (imports and model load); the RSS
    after it is the baseline.
    """

    def __init__(self) -> None:
        self.phases: dict[str, dict] = {}
        self.parts: dict[str, dict] = {}  # parts of a phase measured on their own (see :meth:`part`)
        self.baseline_mb: float | None = None
        self.started = time.perf_counter()
        self._carried = 0.0  # the phase's peak before a part reset the high-water mark

    def start(self) -> None:
        reset_peak()
        self.started = time.perf_counter()

    def loaded(self) -> None:
        """Imports and models are loaded: the end of ``load``, the baseline."""
        seconds = time.perf_counter() - self.started
        gc.collect()
        self.baseline_mb = rss_mb()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.phases["load"] = {"seconds": seconds, "peak_mb": peak, "after_mb": self.baseline_mb}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        gc.collect()
        reset_peak()
        self._carried = 0.0
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        peak = max(self._carried, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        self.phases[name] = {"seconds": seconds, "peak_mb": peak, "after_mb": rss_mb()}

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        """A part of the current phase with its own peak (the phase's peak still counts it); repeated parts
        keep their largest peak and add their seconds."""
        self._carried = max(self._carried, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        before = rss_mb()
        reset_peak()
        started = time.perf_counter()
        yield
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self._carried = max(self._carried, peak)
        seen = self.parts.setdefault(name, {"seconds": 0.0, "peak_mb": 0.0, "before_mb": before})
        seen["seconds"] += time.perf_counter() - started
        seen["peak_mb"] = max(seen["peak_mb"], peak)

    def result(self, **extra) -> dict:
        peak = max(p["peak_mb"] for p in self.phases.values())
        work = sum(p["seconds"] for name, p in self.phases.items() if name != "load")
        out = {"baseline_mb": self.baseline_mb, "peak_mb": peak, "seconds": work, "phases": self.phases, **extra}
        return out | ({"parts": self.parts} if self.parts else {})


def read_input(path: Path):
    """What ``read_audio`` does on a local store: the bytes read whole, then decoded."""
    from voxflow.tasks.helpers import audio

    return audio.decode_wav_bytes(path.read_bytes())


def _store(scratch: Path):
    from voxflow.storage.store import LocalStore

    return LocalStore(scratch / "store")


def _put_audio(store, name: str, samples, rate: int) -> None:
    """``write_audio``: float WAV bytes of the samples, put into the store."""
    import numpy as np

    from voxflow.tasks.helpers import audio

    store.put_bytes(f"out/{name}", audio.encode_wav(np.asarray(samples, dtype=np.float32), rate))


def run_ingest(path: Path, models: Path, scratch: Path, meter: Meter) -> dict:
    from voxflow.tasks.ingest import IngestOptions, ingest_audio

    store = _store(scratch)
    meter.loaded()
    with meter.phase("compute"), store.staged("out/audio.wav") as staged:
        stats, working = ingest_audio(path, path.name, IngestOptions(), staged)
        staged.flush()
        store.put_file("out/audio.wav", staged.name)
    return {"frames_out": working.frames, "lufs": stats.integrated_lufs}


def run_ingest_cli(path: Path, models: Path, scratch: Path, meter: Meter) -> dict:
    """The whole ``voxflow ingest FILE`` command in this process; its Prefect server child sampled."""
    import psutil

    from voxflow.flows import cli
    from voxflow.flows import ingest as _ingest_flow  # noqa: F401  (imported before the baseline)

    me, server_peak, stop = psutil.Process(), [0.0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    server_peak[0] = max(server_peak[0], child.memory_info().rss / MB)

    sampler = threading.Thread(target=sample, daemon=True)
    meter.loaded()
    sampler.start()
    with meter.phase("compute"), contextlib.redirect_stdout(sys.stderr):
        code = cli.main(["ingest", str(path), "--jobs", "1"])
    stop.set()
    sampler.join()
    if code != 0:
        raise RuntimeError(f"voxflow ingest exited {code}")
    return {"server_peak_mb": server_peak[0]}


def run_denoise(path: Path, models: Path, scratch: Path, meter: Meter) -> dict:
    from voxflow.tasks.denoise import DenoiseOptions, denoise, load_denoise_model

    model = load_denoise_model("dns48", "cpu", models)
    store = _store(scratch)
    meter.loaded()
    with meter.phase("read"):
        samples, rate = read_input(path)
    with meter.phase("compute"):
        clean = denoise(samples, rate, model, DenoiseOptions())
    with meter.phase("write"):
        _put_audio(store, "denoised.wav", clean, rate)
    return {}


def run_separate(path: Path, models: Path, scratch: Path, meter: Meter) -> dict:
    from voxflow.tasks.separate import SeparateOptions, load_separate_model, rms_dbfs, separate

    model = load_separate_model("htdemucs", "cpu", models)
    store = _store(scratch)
    meter.loaded()
    with meter.phase("read"):
        samples, rate = read_input(path)
    with meter.phase("compute"):
        found = separate(samples, rate, model, SeparateOptions())
    with meter.phase("write"):  # separate_audio's order: both WAVs, then both levels
        _put_audio(store, "vocals.wav", found.vocals, rate)
        _put_audio(store, "accompaniment.wav", found.accompaniment, rate)
        rms_dbfs(found.vocals), rms_dbfs(found.accompaniment)
    return {}


def run_diarize(path: Path, models: Path, scratch: Path, meter: Meter) -> dict:
    from voxflow.tasks.diarize import DEFAULT_MODEL, DiarizeOptions, diarize, load_diarize_model, waveform_input
    from voxflow.tasks.helpers.speakers import to_rttm

    pipeline = load_diarize_model(DEFAULT_MODEL, "cpu", models)
    counts = _count_clustering(pipeline, meter)
    store = _store(scratch)
    meter.loaded()
    with meter.phase("read"):
        samples, rate = read_input(path)
    with meter.phase("compute"):
        found = diarize(waveform_input(samples, rate), pipeline, DiarizeOptions())
    with meter.phase("write"):
        store.put_bytes("out/diarization.rttm", to_rttm(found.turns, "bench").encode())
        store.put_bytes("out/exclusive.rttm", to_rttm(found.exclusive, "bench").encode())
    return {"turns": len(found.turns), "speakers": len(found.speakers), **counts}


def _count_clustering(pipeline, meter: Meter) -> dict[str, int]:
    """How many embeddings pyannote's clustering sees and how many AHC clusters VBx starts from; the peaks of
    the pipeline's steps, of its AHC (``linkage``: a condensed distance matrix, n^2 / 2 float64) and of VBx
    (n x clusters) as parts of the compute phase."""
    from pyannote.audio.pipelines import clustering as module

    counts: dict[str, int] = {}
    filter_embeddings, linkage, cluster_vbx = pipeline.clustering.filter_embeddings, module.linkage, module.cluster_vbx

    def counting(embeddings, *args, **kwargs):
        kept = filter_embeddings(embeddings, *args, **kwargs)
        counts.update(embeddings=embeddings.shape[0] * embeddings.shape[1], train_embeddings=kept[0].shape[0])
        return kept

    def ahc(*args, **kwargs):
        with meter.part("ahc"):
            return linkage(*args, **kwargs)

    def vbx(ahc_init, *args, **kwargs):
        counts["ahc_clusters"] = int(ahc_init.max()) + 1
        with meter.part("vbx"):
            return cluster_vbx(ahc_init, *args, **kwargs)

    pipeline.clustering.filter_embeddings = counting  # an instance attribute: the pipeline's self.filter_embeddings
    module.linkage, module.cluster_vbx = ahc, vbx  # module globals, looked up at each call
    for step in ("get_segmentations", "speaker_count", "get_embeddings", "reconstruct", "to_annotation"):
        setattr(pipeline, step, _as_part(meter, step, getattr(pipeline, step)))  # self.<step>(...) finds these
    return counts


def _as_part(meter: Meter, name: str, function):
    def measured(*args, **kwargs):
        with meter.part(name):
            return function(*args, **kwargs)

    return measured


def run_transcribe(path: Path, models: Path, scratch: Path, meter: Meter) -> dict:
    import numpy as np
    import torch
    from whisper.timing import dtw_cpu

    from voxflow.tasks import transcribe as t
    from voxflow.tasks.helpers import subtitles

    model = t.load_transcribe_model("turbo", "cpu", models, "whisper")
    vad = t.load_vad_model()
    dtw_cpu(np.ones((2, 2)))  # numba's first compile (word timing) here, not in the compute phase, ...
    torch.set_num_threads(1)  # ... and it resets torch's thread count (as tests/test_transcribe.py does)
    options = t.TranscribeOptions(model="turbo", backend="whisper", beam_size=1, temperatures=(0.0,))
    store = _store(scratch)
    meter.loaded()
    with meter.phase("read"):
        samples, rate = read_input(path)
    with meter.phase("compute"):  # transcribe_audio without a diarization, its batch as the options say
        speech = t.whisper_audio(samples, rate)
        heard = t.recognize((model, None), vad, speech, options, batch_size=options.batch_size)
        transcript = t.split_segments(t.assign_speakers(heard.transcript, []))
        t.channel_suggestion(samples, options)
    with meter.phase("write"):
        store.put_bytes(f"out/{t.JSON_NAME}", subtitles.to_json(transcript))
        for name, write in t.TEXT_FORMATS.items():
            store.put_bytes(f"out/{name}", write(transcript).encode())
    return {"segments": len(transcript.segments), "words": len(transcript.words)}


def run_lipsync(path: Path, models: Path, scratch: Path, meter: Meter) -> dict:
    from voxflow.tasks.lipsync import LipsyncOptions, index_parquet, lipsync_windows, npy_bytes, prepare

    options = LipsyncOptions()
    store = _store(scratch)
    meter.loaded()
    with meter.phase("read"):
        samples, rate = read_input(path)
    with meter.phase("compute"):
        windows = lipsync_windows(prepare(samples, rate, options), options)
    with meter.phase("write"):
        store.put_bytes("out/features.npy", npy_bytes(windows.features))
        store.put_bytes("out/windows.parquet", index_parquet(windows))
    return {"video_frames": windows.count}


RUNS: dict[str, Callable[[Path, Path, Path, Meter], dict]] = {
    "ingest": run_ingest,
    "ingest-cli": run_ingest_cli,
    "denoise": run_denoise,
    "separate": run_separate,
    "diarize": run_diarize,
    "transcribe": run_transcribe,
    "lipsync": run_lipsync,
}


def _exit_on_sigterm() -> None:
    """SIGTERM ends this process through ``sys.exit`` (its scratch folder is removed), saying so on stderr."""
    import signal

    def stop(signum, frame) -> None:
        import traceback

        where = "".join(traceback.format_stack(frame, limit=6))
        print(
            f"{time.strftime('%H:%M:%S')} {Path(__file__).name} (pid {os.getpid()}): got SIGTERM in\n{where}",
            file=sys.stderr,
        )
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def worker(stage: str, seconds: float, cache: Path) -> None:
    """One measurement in this process; prints its JSON as the last line."""
    _exit_on_sigterm()
    path = build_input(STAGE_INPUT.get(stage, "speech"), seconds, cache)
    models = cache / "models"
    if not all((models / f".built-{library}").exists() for library in LIBRARIES):  # built apart: its imports
        subprocess.run([sys.executable, __file__, "--build-models", "--cache", str(cache)], check=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-memory-{stage}-", dir=cache))
    os.environ["VOXFLOW_HOME"] = str(scratch / "home")  # staging files, stage locks
    os.environ["VOXFLOW_STORAGE"] = str(scratch / "cli-store")  # voxflow ingest's store
    os.environ["VOXFLOW_MODEL_DIR"] = str(models)
    os.environ["VOXFLOW_DEVICE"] = "cpu"
    os.environ["PREFECT_HOME"] = str(scratch / "prefect")  # a fresh ephemeral server database
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"  # a busy 2-core machine
    os.environ.pop("PREFECT_API_URL", None)
    try:
        meter = Meter()
        meter.start()
        extra = RUNS[stage](path, models, scratch, meter)  # imports and loads, calls meter.loaded(), then its phases
        print(json.dumps(meter.result(stage=stage, audio_s=seconds, input_mb=path.stat().st_size / MB, **extra)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---- the parent: every stage and length, predictions, the table ------------------------------------


def available_mb() -> float:
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) / 1024


def linear(points: list[tuple[float, float]], x: float) -> float:
    """The line through the two longest points at ``x`` (for a single point: proportional to ``x``)."""
    if len(points) == 1:
        ((x0, y0),) = points
        return y0 * x / x0
    (x0, y0), (x1, y1) = sorted(points)[-2:]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def measure(stage: str, seconds: float, cache: Path) -> dict:
    command = [sys.executable, __file__, "--one", stage, "--seconds", f"{seconds:g}", "--cache", str(cache)]
    started = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        return {"error": f"exit {done.returncode}: {tail}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def mb(value: float) -> str:
    return f"{value:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[60, 600, 1800, 7200])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--max-run-s", type=float, default=600, help="longest predicted run that is measured")
    parser.add_argument("--max-memory-fraction", type=float, default=0.5, help="of MemAvailable, for one run")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--table", type=Path, default=Path("/tmp/memory_table.md"))
    parser.add_argument(
        "--reuse", action="store_true", help="take the runs measured before from <cache>/results.json (not rerun)"
    )
    parser.add_argument("--one", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--build-models", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    lengths = sorted(set(args.seconds))
    if args.build_models:
        build_models(args.cache)
        return None
    if args.one:
        return worker(args.one, lengths[0], args.cache)

    _exit_on_sigterm()
    args.cache.mkdir(parents=True, exist_ok=True)
    build_models(args.cache)
    saved_path = args.cache / "results.json"  # every measured run, kept across invocations (--reuse)
    saved = json.loads(saved_path.read_text()) if saved_path.exists() else {}
    results: dict[str, dict[float, dict]] = {}
    for stage in args.stages:
        results[stage] = {}
        for seconds in lengths:
            build_input(STAGE_INPUT.get(stage, "speech"), seconds, args.cache)
            measured = [(s, r) for s, r in results[stage].items() if "error" not in r and not r.get("extrapolated")]
            if measured:
                time_s = linear([(s, r["seconds"]) for s, r in measured], seconds)
                peak = linear([(s, r["peak_mb"] - r["baseline_mb"]) for s, r in measured], seconds)
                peak += measured[-1][1]["baseline_mb"]
                budget = args.max_memory_fraction * available_mb()
                if (time_s > args.max_run_s or peak > budget) and len(measured) >= 2:
                    why = f"predicted {time_s:.0f} s, {peak:,.0f} MB (limits {args.max_run_s:.0f} s, {budget:,.0f} MB)"
                    results[stage][seconds] = extrapolate(measured, seconds, why)
                    print(f"{stage:>10} {seconds:>6g} s  EXTRAPOLATED: {why}", flush=True)
                    continue
            key = f"{stage}@{seconds:g}"
            if args.reuse and key in saved:
                results[stage][seconds] = saved[key]
                print(f"{stage:>10} {seconds:>6g} s  (reused) {summary_line(saved[key])}", flush=True)
                continue
            result = measure(stage, seconds, args.cache)
            results[stage][seconds] = result
            print(f"{time.strftime('%H:%M:%S')} {stage:>10} {seconds:>6g} s  {summary_line(result)}", flush=True)
            if "error" not in result:
                saved[key] = result
                saved_path.write_text(json.dumps(saved, indent=1))
    write_tables(results, lengths, args)


def extrapolate(measured: list[tuple[float, dict]], seconds: float, why: str) -> dict:
    """Peak, baseline and seconds at ``seconds``, linearly from the two longest measured lengths; for diarize,
    also the training embeddings and the transient of their AHC (8 n^2 bytes, see the module's docstring)."""
    points = sorted(measured, key=lambda item: item[0])[-2:]
    out = {"extrapolated": True, "why": why, "from": [s for s, _ in points]}
    for key in ("peak_mb", "baseline_mb", "seconds"):
        out[key] = linear([(s, r[key]) for s, r in points], seconds)
    if all("train_embeddings" in r for _, r in points):
        n = linear([(s, r["train_embeddings"]) for s, r in points], seconds)
        out["train_embeddings"], out["ahc_mb"] = round(n), 8 * n**2 / MB
        out["why"] += f"; AHC of ~{n:,.0f} embeddings: ~{8 * n**2 / MB:,.0f} MB more for a moment (not in the peak)"
    return out


def summary_line(result: dict) -> str:
    if "error" in result:
        return f"FAILED {result['error']}"
    phases = "  ".join(f"{name} {p['peak_mb']:,.0f} MB/{p['seconds']:.1f} s" for name, p in result["phases"].items())
    extra = {k: v for k, v in result.items() if k not in ("phases", "stage", "audio_s")}
    return (
        f"peak {result['peak_mb']:,.0f} MB, baseline {result['baseline_mb']:,.0f} MB | {phases} | {json.dumps(extra)}"
    )


def write_tables(results: dict[str, dict[float, dict]], lengths: list[float], args: argparse.Namespace) -> None:
    short, long = lengths[0], lengths[-1]

    def cell(r: dict) -> str:
        if "error" in r:
            return "failed"
        mark = "~" if r.get("extrapolated") else ""
        ahc = f"; AHC +~{mb(r['ahc_mb'])} for a moment" if "ahc_mb" in r else ""
        return f"{mark}{mb(r['peak_mb'])} (+{mb(r['peak_mb'] - r['baseline_mb'])}{ahc})"

    def label(seconds: float) -> str:
        return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds / 60:g} min"

    header = ["stage", f"{label(short)} peak RSS MB (+ over baseline)", f"{label(long)} peak RSS MB (+ over baseline)"]
    header += ["growth", "what it holds"]
    rows = []
    for stage, by_length in results.items():
        a, b = by_length[short], by_length[long]
        if "error" in a or "error" in b:
            growth = "-"
        else:
            per_hour = (b["peak_mb"] - a["peak_mb"]) / ((long - short) / 3600)
            growth = f"+{mb(b['peak_mb'] - a['peak_mb'])} MB ({mb(per_hour)} MB/h)"
        rows.append([stage, cell(a), cell(b), growth, HOLDS[stage]])
    notes = [
        "~: extrapolated linearly from the two longest measured lengths (see the detail table); others measured",
        "peak: the stage's largest per-phase high-water mark (ru_maxrss); baseline: RSS after imports and model load; MB: 2^20 bytes",
        "tiny random-weight models, CPU, one thread; inputs: corpus speech (16 kHz mono) / jfk (44.1 kHz stereo)",
        "every stage but ingest reads its input as read_audio does: the WAV's bytes and the decoded array, 2 N "
        "(3 N for stereo) at once, N being the input as float32 (2 h: 439 MB of speech, 2,422 MB of stereo music)",
    ]
    detail_header = ["stage", "audio", "how", "baseline", "load peak", "read peak", "compute peak", "write peak"]
    detail_header += ["peak", "read s", "compute s", "write s", "notes"]
    detail = []
    for stage, by_length in results.items():
        for seconds, r in by_length.items():
            if "error" in r:
                detail.append([stage, label(seconds), "failed", *["-"] * 9, r["error"].splitlines()[-1][:120]])
                continue
            if r.get("extrapolated"):
                cells = ["-"] * 4 + [f"~{mb(r['peak_mb'])}", "-", f"~{r['seconds']:.0f} (all)", "-"]
                how = f"extrapolated from {', '.join(label(s) for s in r['from'])}"
                detail.append([stage, label(seconds), how, f"~{mb(r['baseline_mb'])}", *cells, r["why"]])
                continue
            p = r["phases"]
            skip = ("phases", "parts", "stage", "audio_s", "peak_mb", "baseline_mb", "seconds", "source")
            others = {k: round(v, 1) if isinstance(v, float) else v for k, v in r.items() if k not in skip}
            others |= {f"{k} peak MB": round(v["peak_mb"]) for k, v in r.get("parts", {}).items()}
            detail.append(
                [
                    stage,
                    label(seconds),
                    "measured",
                    mb(r["baseline_mb"]),
                    *(mb(p[name]["peak_mb"]) if name in p else "-" for name in ("load", "read", "compute", "write")),
                    mb(r["peak_mb"]),
                    *(f"{p[name]['seconds']:.1f}" if name in p else "-" for name in ("read", "compute", "write")),
                    json.dumps(others),
                ]
            )
    print_table(header, rows, notes)
    print_table(detail_header, detail)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", *(f"- {note}" for note in notes), ""]
    lines += ["| " + " | ".join(detail_header) + " |", "|" + "---|" * len(detail_header)]
    lines += ["| " + " | ".join(row) + " |" for row in detail]
    args.table.write_text("\n".join(lines) + "\n")
    print(f"\nwritten: {args.table}")


if __name__ == "__main__":
    main()
