"""Benchmark: our VAD-chunked batched transcription against ``whisper.transcribe``, same weights and audio.

    python bench/bench_transcribe.py [--minutes 1 10 60] [--device cpu|cuda] [--size tiny|full]
                                     [--max-tokens 48] [--batch-size 8]

Builds a random-weight ``turbo`` checkpoint (``tiny`` by default: on this 2-core CPU the ``full``
809 M-parameter turbo needs about a minute per 30 s window, so measure ``full`` on a GPU), makes
16 kHz mono speech of each length by looping the corpus recordings (with their pauses), and runs,
each in its own subprocess (so peak RSS is that run's own):

* ``ours``: :func:`voxflow.tasks.transcribe.transcribe_speech` (Silero VAD, chunks of at most 30 s, windows
  decoded ``--batch-size`` at a time, word alignment on the decode's encoder output);
* ``upstream``: ``whisper.transcribe`` (openai-whisper's own entry point: sequential 30 s windows
  over the whole track, each window's encoder run again for the word alignment).

Both decode greedily at temperature 0 with word timestamps, without conditioning on earlier text and
without fallback or silence skipping (``*_threshold=None``), and both stop each window after
``--max-tokens`` tokens: a random model's garbage can run to the 224-token limit, so this bounds
the decoding work equally on both sides. Only the transcription is timed (not imports, model
loading or building the audio; numba's one-time DTW compile is done before the clock starts).
Prints minutes, seconds, throughput ratio (upstream seconds ÷ ours: ≥ 1 means ours is at least as
fast), peak RSS (and peak CUDA memory on a GPU) of each, and how many 30 s windows each encoded
(upstream encodes each window twice: to decode it, then again to align its words).
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

from bench.common import MB, speech  # noqa: E402

SPEECH = (
    "diar_2spk_pyannote/sample.wav",
    "asr_en_jfk/jfk.flac",
    "sep_2spk_mixture/mixture_2.wav",
    "clone_ref_lj/LJ050-0131.wav",
    "denoise_babble/speech.wav",
)  # speech only


def _count_windows(model) -> list[int]:
    """Counts the 30 s windows ``model``'s encoder encodes (a batch encodes several at once)."""
    windows = [0]
    model.encoder.register_forward_hook(lambda _, inputs, __: windows.__setitem__(0, windows[0] + inputs[0].shape[0]))
    return windows


def worker(args: argparse.Namespace) -> None:
    """One timed run in this process; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    import whisper
    from whisper.timing import dtw_cpu

    from voxflow.tasks.transcribe import TranscribeOptions, load_transcribe_model, load_vad_model, transcribe_speech

    dtw_cpu(np.ones((2, 2)))  # numba compiles whisper's DTW once per process (and resets torch's threads)
    torch.set_num_threads(args.threads)
    samples = speech(args.minutes[0], SPEECH)[0]
    model = load_transcribe_model("turbo", args.device, args.model_dir)
    vad = load_vad_model()
    encoded = _count_windows(model)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if args.worker == "ours":
        options = TranscribeOptions(  # upstream's call below: greedy, temperature 0, thresholds off
            language="en",
            max_tokens=args.max_tokens,
            batch_size=args.batch_size,
            chunk_s=30.0,
            vad_pad_s=0.03,  # the settings of the figures in BENCHMARKS.md
            beam_size=1,
            temperatures=(0.0,),
            compression_ratio_threshold=None,
            log_prob_threshold=None,
            no_speech_threshold=None,
        )
        result = transcribe_speech(model, vad, samples, options)
        segments, words = len(result.segments), len(result.words)
    else:
        result = whisper.transcribe(
            model,
            samples,
            temperature=0.0,
            condition_on_previous_text=False,
            word_timestamps=True,
            language="en",
            compression_ratio_threshold=None,
            logprob_threshold=None,
            no_speech_threshold=None,
            fp16=args.device == "cuda",
            sample_len=args.max_tokens,
        )
        kept = [s for s in result["segments"] if s["text"].strip()]
        segments, words = len(kept), sum(len(s["words"]) for s in kept)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak_cuda = torch.cuda.max_memory_allocated() / MB if args.device == "cuda" else None
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_cuda_mb": peak_cuda,
                "encoded_windows": encoded[0],
                "segments": segments,
                "words": words,
            }
        )
    )


def run_worker(kind: str, minutes: float, model_dir: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--minutes",
        str(minutes),
        "--model-dir",
        model_dir,
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--max-tokens",
        str(args.max_tokens),
        "--batch-size",
        str(args.batch_size),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens sampled per window, both sides")
    parser.add_argument("--batch-size", type=int, default=8, help="our windows per batch")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads in each run")
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["ours", "upstream"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from voxflow.tasks.testing.random_models import build

    with tempfile.TemporaryDirectory() as model_dir:
        build("whisper", model_dir, args.size)
        print(
            f"whisper turbo ({args.size}, random weights) on {args.device}, {args.threads} thread(s), "
            f"{args.max_tokens} tokens per window, our batch {args.batch_size}"
        )
        header = [
            "minutes",
            "ours s",
            "upstream s",
            "ratio",
            "ours RSS MB",
            "upstream RSS MB",
            "ours windows encoded",
            "upstream windows encoded",
        ]
        if args.device == "cuda":
            header += ["ours CUDA MB", "upstream CUDA MB"]
        print(" | ".join(header))
        for minutes in args.minutes:
            ours = run_worker("ours", minutes, model_dir, args)
            upstream = run_worker("upstream", minutes, model_dir, args)
            row = [
                f"{minutes:g}",
                f"{ours['seconds']:.1f}",
                f"{upstream['seconds']:.1f}",
                f"{upstream['seconds'] / ours['seconds']:.2f}",
                f"{ours['peak_rss_mb']:.0f}",
                f"{upstream['peak_rss_mb']:.0f}",
                str(ours["encoded_windows"]),
                str(upstream["encoded_windows"]),
            ]
            if args.device == "cuda":
                row += [f"{ours['peak_cuda_mb']:.0f}", f"{upstream['peak_cuda_mb']:.0f}"]
            print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
