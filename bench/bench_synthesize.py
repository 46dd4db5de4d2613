"""Benchmark: our batched synthesis against the package's generate call one line at a time.

    python bench/bench_synthesize.py [--lines 16] [--mode design|custom|clone] [--size tiny|full]
                                     [--device cpu|cuda] [--batch-size 8] [--model-dir DIR]

Builds random-weight Qwen3-TTS folders (``tiny`` by default; ``full`` has the released sizes and
takes several GB and minutes to build, so ``--model-dir`` can point at folders built before) and
speaks ``--lines`` lines of varied length (about 20 to 180 characters) twice:

* ``ours``: :func:`voxflow.tasks.synthesize.synthesize`, pieces sorted by length, ``--batch-size`` lines per
  model call, quality retries off (the one-by-one path has none);
* ``one-by-one``: the package's ``generate_voice_design`` / ``generate_custom_voice`` /
  ``generate_voice_clone`` for each line alone, seeded the same way, with the same
  ``max_new_tokens`` rule (:func:`voxflow.tasks.synthesize.max_new_tokens_for` of that line).

Prints wall seconds, lines per second, seconds of audio per second, and the throughput ratio
(ours ÷ one-by-one, > 1 means batching is faster). Random models never emit their end token, so
every line runs to its ``max_new_tokens``; in a batch that is the budget of the bucket's longest
line, so batched lines come out a little longer (more audio for the same lines): compare lines per
second. ``--frames-per-char``, ``--margin-frames`` and ``--max-new-tokens-cap`` bound the work on the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import CORPUS, cell  # noqa: E402

WORDS = (
    "the voice reads each line clearly and slowly while the quiet room listens to every word it says "
    "about rivers mountains cities music and the long history of small things"
).split()
REFERENCE = CORPUS / "clone_ref_lj" / "LJ050-0131.wav"
REFERENCE_TEXT = (
    "unless a system is established for the frequent formal review of activities thereunder. in this regard"
)


def lines_of_varied_length(count: int, seed: int = 0) -> list[str]:
    """``count`` sentences of about 20 to 180 characters, deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    lines = []
    for target in np.linspace(20, 180, count)[rng.permutation(count)]:
        words: list[str] = []
        while len(" ".join(words)) < target:
            words.append(str(rng.choice(WORDS)))
        lines.append(" ".join(words).capitalize() + ".")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=16)
    parser.add_argument("--mode", choices=("design", "custom", "clone"), default="design")
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--frames-per-char", type=float, default=0.5, help="codec frames allowed per character")
    parser.add_argument("--margin-frames", type=int, default=25, help="frames added to the per-character budget")
    parser.add_argument("--max-new-tokens-cap", type=int, default=2048)
    parser.add_argument(
        "--model-dir", help="a model folder with <dir>/qwen-tts/<repo>/ already built (skips the build)"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from voxflow.tasks.helpers import audio
    from voxflow.tasks.synthesize import (
        DEFAULT_MODELS,
        SynthesisItem,
        SynthesizeOptions,
        load_tts_model,
        max_new_tokens_for,
        quiet_transformers,
        synthesize,
        voice_prompt,
    )
    from voxflow.tasks.testing import random_models

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or tmp
        if not args.model_dir:
            started = time.perf_counter()
            random_models.build("qwen_tts", tmp, args.size)
            print(f"built {args.size} random Qwen3-TTS folders in {time.perf_counter() - started:.1f} s", flush=True)
        model = load_tts_model(DEFAULT_MODELS[args.mode], args.device, model_dir)
        texts = lines_of_varied_length(args.lines)
        extra = {"design": {"voice_description": "a calm, low voice"}, "custom": {"speaker": "ryan"}, "clone": {}}[
            args.mode
        ]
        items = [SynthesisItem(text, "english", **extra) for text in texts]
        options = SynthesizeOptions(
            batch_size=args.batch_size,
            quality_retries=0,
            frames_per_char=args.frames_per_char,
            margin_frames=args.margin_frames,
            max_new_tokens_cap=args.max_new_tokens_cap,
        )
        prompt = None
        if args.mode == "clone":
            reference = audio.decode_file(REFERENCE)
            prompt = voice_prompt(model, reference.samples, reference.sample_rate_hz, REFERENCE_TEXT)

        def one_by_one() -> list[np.ndarray]:
            out = []
            for item in items:
                kwargs = {
                    "text": [item.text],
                    "language": [item.language],
                    "max_new_tokens": max_new_tokens_for([item.text], options),
                }
                with quiet_transformers():
                    torch.manual_seed(options.seed)
                    if args.mode == "design":
                        wavs, _ = model.generate_voice_design(instruct=[item.voice_description], **kwargs)
                    elif args.mode == "custom":
                        wavs, _ = model.generate_custom_voice(speaker=[item.speaker], **kwargs)
                    else:
                        wavs, _ = model.generate_voice_clone(voice_clone_prompt=[prompt.to_item()], **kwargs)
                out.extend(wavs)
            return out

        def timed(run):
            if args.device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            result = run()
            if args.device == "cuda":
                torch.cuda.synchronize()
            return result, time.perf_counter() - started

        synthesize(model, args.mode, items[:1], options, prompt)  # warm-up: lazy initialisation, caches
        ours, ours_s = timed(lambda: [s.samples for s in synthesize(model, args.mode, items, options, prompt)])
        single, single_s = timed(one_by_one)

    rate = 24_000
    rows = []
    for name, wavs, seconds in (("ours", ours, ours_s), ("one-by-one", single, single_s)):
        audio_s = sum(w.size for w in wavs) / rate
        rows.append(
            (name, cell(seconds, 2), cell(len(wavs) / seconds, 2), cell(audio_s / seconds, 2), cell(audio_s, 1))
        )
    print(
        f"\nQwen3-TTS {args.mode} ({args.size}, random weights), {args.device}, {args.threads} thread(s), "
        f"{args.lines} lines of {min(map(len, texts))}-{max(map(len, texts))} characters, batch {args.batch_size}, "
        f"{args.frames_per_char} frames per character"
    )
    header = ("method", "wall s", "lines/s", "audio s/s", "audio s")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"throughput ratio (ours / one-by-one, lines per second): {single_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
