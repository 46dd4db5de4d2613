"""Word error rates on real Whisper base weights: voxflow's transcribe stage against faster-whisper.

The weights are the real Whisper base model in CTranslate2 form, assembled from two packages on the
index (``tests/real_models.py``; cached). Each corpus file with a reference transcript is decoded by

* faster-whisper's ``WhisperModel.transcribe`` without VAD, with its VAD, and its
  ``BatchedInferencePipeline`` (the three upstream modes), with the same beam size, temperature
  fallback (seeded) and compute type as voxflow;
* voxflow's stage (``transcribe_speech`` on the same model object) in each configuration of ``CONFIGS``.

WER is after whisper's English normalizer. Run: ``python bench/bench_transcribe_real.py [--compute-type int8]``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table  # noqa: E402
from tests.real_models import CORPUS, REFERENCES, whisper_base_model_dir, word_error_rate  # noqa: E402

CONFIGS = {  # name -> TranscribeOptions fields (on top of --beam-size and --compute-type)
    "default": {},
    "before (30 s chunks, pad 0.03 s, greedy, no fallback)": {
        "chunk_s": 30.0,
        "vad_pad_s": 0.03,
        "beam_size": 1,
        "temperatures": (0.0,),
    },
    "30 s chunks": {"chunk_s": 30.0},
    "pad 0.03 s": {"vad_pad_s": 0.03},
    "greedy, no fallback": {"beam_size": 1, "temperatures": (0.0,)},
    "no timestamps": {"timestamps": False},
}
LONG = ("diar_2spk_pyannote/sample.wav", "asr_en_jfk/jfk.flac", "clone_ref_lj/LJ050-0131.wav", "asr_en_jfk/jfk.flac")


UPSTREAM_MODES = {  # column -> faster-whisper call
    "fw no VAD (run 1)": "plain",
    "fw no VAD (run 2)": "plain",  # conditioned on earlier text, its fallback is not reproducible
    "fw no VAD, unconditioned": "unconditioned",
    "fw VAD": "vad",
    "fw batched": "batched",
}


def upstream(model, audio, mode: str, beam_size: int) -> str:
    """faster-whisper's own call: its defaults (temperature fallback included), the same beam size."""
    import ctranslate2
    from faster_whisper import BatchedInferencePipeline

    ctranslate2.set_random_seed(0)
    if mode == "batched":
        segments, _ = BatchedInferencePipeline(model).transcribe(audio, beam_size=beam_size, batch_size=8)
    else:
        segments, _ = model.transcribe(
            audio, beam_size=beam_size, vad_filter=mode == "vad", condition_on_previous_text=mode != "unconditioned"
        )
    return " ".join(s.text.strip() for s in segments)


def ours(model, vad, audio, options) -> str:
    from voxflow.tasks.transcribe import split_segments, transcribe_speech

    transcript = split_segments(transcribe_speech(model, vad, audio, options))
    return " ".join(s.text.strip() for s in transcript.segments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--files", nargs="*", help="corpus files (default: all with a reference, and the long file)")
    args = parser.parse_args()

    from faster_whisper import decode_audio

    from voxflow.tasks.transcribe import TranscribeOptions, load_transcribe_model, load_vad_model

    model_dir = whisper_base_model_dir()
    model = load_transcribe_model("base", "cpu", model_dir, "faster-whisper", args.compute_type)
    vad = load_vad_model()
    base = TranscribeOptions(
        model="base", backend="faster-whisper", compute_type=args.compute_type, beam_size=args.beam_size
    )
    recordings = {name: decode_audio(str(CORPUS / name), sampling_rate=16_000) for name in REFERENCES}
    references = dict(REFERENCES)
    pause = np.zeros(16_000, np.float32)  # the long file: four recordings, 1 s apart (68 s, several chunks)
    recordings["long (4 files)"] = np.concatenate([part for name in LONG for part in (recordings[name], pause)])
    references["long (4 files)"] = " ".join(REFERENCES[name] for name in LONG)
    rows = []
    for name in args.files or list(recordings):
        audio, reference = recordings[name], references[name]
        row = {"file": name.rsplit("/", 1)[-1]}
        for column, mode in UPSTREAM_MODES.items():
            row[column] = f"{word_error_rate(reference, upstream(model, audio, mode, args.beam_size)):.3f}"
        for config, fields in CONFIGS.items():
            row[config] = f"{word_error_rate(reference, ours(model, vad, audio, replace(base, **fields))):.3f}"
        rows.append(row)
        print(row, flush=True)
    print(f"\nWhisper base (real weights), compute type {args.compute_type}, beam {args.beam_size}:")
    print_table(list(rows[0]), [list(row.values()) for row in rows])


if __name__ == "__main__":
    main()
