"""Benchmark: lip-sync features (ours, numpy) against Wav2Lip's recipe written with librosa, on one CPU core.

    python bench/bench_lipsync.py [--minutes 1 10 60] [--repeats 500]

1. Per 640 ms chunk (10 240 samples of corpus speech): ``log_mel`` against the librosa reference
   (``scipy.signal.lfilter`` + ``librosa.stft`` + a cached ``librosa.filters.mel`` + the same dB and
   normalisation), many repetitions in this process: median and p95 milliseconds.
2. Whole files of 1, 10, 60 minutes built by concatenating the corpus recordings (16 kHz mono): ours
   (``lipsync_windows``: log-mel in blocks, then the windows) against the reference (librosa log-mel of
   the whole track, then Wav2Lip's inference loop of ``mel[:, int(i * 80 / fps):][:, :16]`` slices,
   stacked). Each side runs in its own subprocess, so its peak RSS (ru_maxrss, including the
   interpreter, the imports and the loaded audio) is its own.

There is no model, so there is no ``--device`` or ``--size``: this stage is numpy on the CPU.
The ratio is ours throughput ÷ reference throughput (above 1: ours is faster).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core, before numpy starts its thread pools

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CORPUS = ROOT / "tests" / "data" / "corpus"
SPEECH_FILES = (
    "asr_en_jfk/jfk.flac",
    "diar_2spk_pyannote/sample.wav",
    "clone_ref_lj/LJ050-0131.wav",
    "denoise_babble/speech.wav",
    "sep_2spk_mixture/mixture_2.wav",
)
CHUNK_SAMPLES = 10_240  # 640 ms at 16 kHz


def _one_thread() -> None:
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


class Reference:
    """Wav2Lip's ``audio.melspectrogram`` and inference windows, with librosa 0.11 and scipy."""

    def __init__(self, options) -> None:
        import librosa

        self.options = options
        self.filters = librosa.filters.mel(
            sr=options.sample_rate_hz,
            n_fft=options.n_fft,
            n_mels=options.n_mels,
            fmin=options.fmin_hz,
            fmax=options.fmax_hz,
        )

    def log_mel(self, x: np.ndarray) -> np.ndarray:
        import librosa
        import scipy.signal

        o = self.options
        emphasised = scipy.signal.lfilter([1, -o.preemphasis], [1], x)
        spectrum = librosa.stft(
            emphasised, n_fft=o.n_fft, hop_length=o.hop_samples, win_length=o.win_samples, pad_mode=o.pad_mode
        )
        db = 20 * np.log10(np.maximum(10 ** (o.min_level_db / 20), self.filters @ np.abs(spectrum))) - o.ref_level_db
        m = o.max_abs_value
        return np.clip(2 * m * ((db - o.min_level_db) / -o.min_level_db) - m, -m, m)

    def windows(self, x: np.ndarray, count: int) -> np.ndarray:
        mel = self.log_mel(x)
        multiplier, w = self.options.mel_frames_per_s / self.options.fps, self.options.window_frames
        chunks = []
        for i in range(count):
            start = int(i * multiplier)
            chunks.append(mel[:, start : start + w] if start + w <= mel.shape[1] else mel[:, mel.shape[1] - w :])
        return np.stack(chunks).astype(np.float32)


def corpus_speech() -> np.ndarray:
    """All corpus speech recordings, 16 kHz mono, one after the other."""
    from voxflow.tasks.helpers import audio
    from voxflow.tasks.lipsync import LipsyncOptions, prepare

    parts = []
    for name in SPEECH_FILES:
        decoded = audio.decode_file(CORPUS / name)
        parts.append(prepare(decoded.samples, decoded.sample_rate_hz, LipsyncOptions()))
    return np.concatenate(parts)


def chunk_timings(repeats: int) -> dict:
    """Median and p95 ms of one 640 ms chunk's log-mel, ours and the reference, interleaved."""
    from voxflow.tasks.lipsync import LipsyncOptions, log_mel

    speech = corpus_speech()
    options = LipsyncOptions()
    reference = Reference(options)
    starts = np.random.default_rng(4).integers(0, speech.size - CHUNK_SAMPLES, repeats)
    np.testing.assert_allclose(log_mel(speech[:CHUNK_SAMPLES]), reference.log_mel(speech[:CHUNK_SAMPLES]), atol=1e-4)
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for start in starts:
        chunk = speech[start : start + CHUNK_SAMPLES]
        for name, fn in (
            ("ours", lambda chunk=chunk: log_mel(chunk, options)),
            ("reference", lambda chunk=chunk: reference.log_mel(chunk)),
        ):
            began = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - began)
    return {name: (1e3 * np.median(t), 1e3 * np.percentile(t, 95)) for name, t in times.items()}


def worker(side: str, path: str) -> None:
    """Compute one side's features of the audio in ``path`` and print seconds and peak RSS as JSON."""
    _one_thread()
    from voxflow.tasks.lipsync import LipsyncOptions, lipsync_windows, video_frame_count

    options = LipsyncOptions()
    x = np.load(path)
    if side == "reference":
        reference = Reference(options)
        reference.log_mel(x[:CHUNK_SAMPLES])  # warm the imports
        count = video_frame_count(x.size, options.sample_rate_hz, options.fps)
        began = time.perf_counter()
        features = reference.windows(x, count)
    else:
        lipsync_windows(x[:CHUNK_SAMPLES], options)
        began = time.perf_counter()
        features = lipsync_windows(x, options).features
    seconds = time.perf_counter() - began
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": peak_mb,
                "shape": list(features.shape),
                "checksum": float(features[:: max(len(features) // 97, 1)].sum()),
            }
        )
    )


def run_side(side: str, path: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", side, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--repeats", type=int, default=500, help="640 ms chunks timed per side")
    parser.add_argument("--worker", nargs=2, metavar=("SIDE", "AUDIO_NPY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    _one_thread()
    chunk = chunk_timings(args.repeats)
    (ours_med, ours_p95), (ref_med, ref_p95) = chunk["ours"], chunk["reference"]
    print(f"log-mel of one 640 ms chunk, one core, {args.repeats} chunks each")
    print(f"  ours      median {ours_med:.3f} ms  p95 {ours_p95:.3f} ms")
    print(f"  librosa   median {ref_med:.3f} ms  p95 {ref_p95:.3f} ms")
    print(f"  ratio (reference median / ours median) {ref_med / ours_med:.2f}")
    print()
    speech = corpus_speech()
    print("whole file: windows of every 25 fps video frame (features (frames, 80, 16) float32)")
    print(
        f"{'minutes':>7} {'ours s':>8} {'librosa s':>10} {'ratio':>6} {'ours RSS MB':>12} {'librosa RSS MB':>15}  match"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            samples = int(minutes * 60 * 16_000)
            path = Path(tmp) / f"{minutes:g}min.npy"
            np.save(path, np.tile(speech, -(-samples // speech.size))[:samples])
            ours, ref = run_side("ours", path), run_side("reference", path)
            if "error" in ours or "error" in ref:
                print(f"{minutes:>7g} ours: {ours.get('error', 'ok')}; reference: {ref.get('error', 'ok')}")
                continue
            match = ours["shape"] == ref["shape"] and abs(ours["checksum"] - ref["checksum"]) < 1e-2
            print(
                f"{minutes:>7g} {ours['seconds']:>8.2f} {ref['seconds']:>10.2f} {ref['seconds'] / ours['seconds']:>6.2f} "
                f"{ours['peak_rss_mb']:>12.0f} {ref['peak_rss_mb']:>15.0f}  {'yes' if match else 'NO'}"
            )
            path.unlink()


if __name__ == "__main__":
    main()
