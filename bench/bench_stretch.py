"""Benchmark: the time-stretch backends (Rubber Band R3, WSOLA) on real speech, with real Whisper base.

    python bench/bench_stretch.py [--rate-hz 24000] [--rates 0.85 1.2 1.5] [--repeats 3]

Stretches three corpus recordings (jfk.flac, LJ050-0131.wav, and ``DIAR_SPAN_S`` of the two-speaker
sample.wav, cut in pauses so the reference words are whole), downmixed to mono and resampled to
``--rate-hz`` (24 kHz, what the synthesis stage makes), with :func:`voxflow.tasks.helpers.stretch.time_stretch`
at each speed in ``--rates`` (above 1 is faster), and measures per backend:

* ``x RT``: seconds of input audio per second of compute, one thread (the median of ``--repeats``);
* ``raw error ms``: the backend's own output length minus the wanted one, before the exact-length fit
  (:func:`voxflow.tasks.helpers.stretch.raw_stretch`);
* ``timbre dB``: the RMS of the difference between the long-term average log-mel spectra (power
  averaged over all frames, ``MEL_BANDS`` bands to 8 kHz) of the original and of the stretched speech,
  over the bands within ``SPEECH_BANDS_DB`` of the original's loudest (the empty bands above a
  band-limited recording's cut-off would otherwise dominate); ``level dB`` is the mean difference;
* ``f0 cents``: the f0 (librosa's pyin) of the stretched speech against the original's: the median,
  over the frames voiced in both, of the ratio of the stretched frame at ``t`` to the original's at
  ``t * speed``, in cents. (The two medians of each file's own voiced frames differ by up to 140 cents
  on LJ050-0131, whose f0 has two modes, as pyin's voicing decisions move, while the paired frames
  agree.) pyin's grid is 10 cents; the summary shows the mean of the absolute values;
* ``drift ms``: how far the stretched speech's timing strays from the ideal (the original's at
  ``t * speed``): the level envelope (``ENVELOPE_HOP_S`` frames) of each ``DRIFT_WINDOW_S`` window with
  speech is matched against the ideal's, shifted by up to ``DRIFT_MAX_S``; the 95th percentile of the
  best shifts' size (0 is exact; the envelope's grid is 5 ms);
* ``WER %``: the real Whisper base model (faster-whisper, int8, beam 5, English) on the stretched speech
  at 16 kHz, after whisper's English normalizer, against the reference transcript; the ``original``
  row is the unstretched speech;
* ``DNSMOS``: the DNSMOS P.835 overall score (1-5) of the stretched speech at 16 kHz, what voice_replace's
  line check rates (:func:`voxflow.tasks.line_check.dnsmos_overall`); a proxy for audible artifacts.

Prints a summary table (the three files pooled: total audio over total time, mean of the rest), then
one row per file.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy starts its thread pools: one core

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import CORPUS, cell, print_table  # noqa: E402
from tests.real_models import JFK_TEXT, LJ_TEXT, whisper_base_model_dir, word_error_rate  # noqa: E402

ASR_RATE_HZ = 16_000  # what Whisper and the measures take
ENVELOPE_HOP_S = 0.005  # level envelope frames of the drift measure
DRIFT_WINDOW_S, DRIFT_MAX_S = 0.4, 0.04  # windows matched (half-overlapping), and the largest shift tried
MEL_BANDS = 40
SPEECH_BANDS_DB = 40.0  # mel bands this far below the original's loudest carry no speech
F0_MIN_HZ, F0_MAX_HZ = 60.0, 400.0  # pyin's search range: adult speech
DIAR_FILE = "diar_2spk_pyannote/sample.wav"
DIAR_SPAN_S = (14.2, 24.02)  # 9.8 s whose edges fall in pauses between the STM's turns
TEXTS = {"asr_en_jfk/jfk.flac": JFK_TEXT, "clone_ref_lj/LJ050-0131.wav": LJ_TEXT}
FILES = (*TEXTS, DIAR_FILE)
HEADER = (
    "backend",
    "speed",
    "x RT",
    "raw error ms",
    "drift ms",
    "timbre dB",
    "level dB",
    "f0 cents",
    "WER %",
    "DNSMOS",
)


def excerpt_text(stm: Path, start_s: float, end_s: float) -> str:
    """The words of the STM turns lying inside ``[start_s, end_s]``, in time order."""
    rows = [line.split(maxsplit=5) for line in stm.read_text().splitlines() if line.strip()]
    inside = [row for row in rows if float(row[3]) >= start_s and float(row[4]) <= end_s]
    return " ".join(row[5] for row in sorted(inside, key=lambda row: float(row[3])))


def load_speech(name: str, rate_hz: int) -> tuple[np.ndarray, str]:
    """A corpus file as mono at ``rate_hz`` (the excerpt, for the two-speaker file) and its words."""
    from voxflow.tasks.helpers import audio

    decoded = audio.decode_file(CORPUS / name)
    samples = audio.resample(audio.downmix(decoded.samples), decoded.sample_rate_hz, rate_hz)
    if name != DIAR_FILE:
        return samples, TEXTS[name]
    start, end = (round(s * rate_hz) for s in DIAR_SPAN_S)
    words = excerpt_text(CORPUS / "diar_2spk_pyannote" / "sample.stm", *DIAR_SPAN_S)
    return np.ascontiguousarray(samples[:, start:end]), words


def mel_profile_db(samples: np.ndarray) -> np.ndarray:
    """Long-term average mel spectrum (``MEL_BANDS`` bands, power averaged over frames) of 16 kHz audio, in dB."""
    import librosa

    mel = librosa.feature.melspectrogram(y=samples[0], sr=ASR_RATE_HZ, n_fft=512, hop_length=160, n_mels=MEL_BANDS)
    return 10 * np.log10(mel.mean(axis=1) + 1e-10)


def spectrum_change_db(original_db: np.ndarray, stretched_db: np.ndarray) -> tuple[float, float]:
    """RMS and mean of the long-term mel spectrum's change over the speech bands, in dB."""
    change = (stretched_db - original_db)[original_db > original_db.max() - SPEECH_BANDS_DB]
    return float(np.sqrt(np.mean(change**2))), float(np.mean(change))


def f0_track_hz(samples: np.ndarray) -> np.ndarray:
    """The f0 of each frame of 16 kHz audio (librosa's pyin), NaN where unvoiced."""
    import librosa

    f0, voiced, _ = librosa.pyin(samples[0], fmin=F0_MIN_HZ, fmax=F0_MAX_HZ, sr=ASR_RATE_HZ, frame_length=1024)
    return np.where(voiced, f0, np.nan)


def f0_shift_cents(original_hz: np.ndarray, stretched_hz: np.ndarray, speed: float) -> float:
    """The median f0 ratio, in cents, of each stretched frame at ``t`` to the original's at ``t * speed``.

    Only frames voiced in both count.
    """
    paired = original_hz[np.minimum(np.round(np.arange(stretched_hz.size) * speed).astype(int), original_hz.size - 1)]
    both = np.isfinite(paired) & np.isfinite(stretched_hz)
    return float(np.median(1200 * np.log2(stretched_hz[both] / paired[both])))


def envelope(samples: np.ndarray) -> np.ndarray:
    """The RMS level of each ``ENVELOPE_HOP_S`` frame of 16 kHz audio."""
    size = round(ENVELOPE_HOP_S * ASR_RATE_HZ)
    return np.sqrt(np.mean(samples[0, : samples.shape[1] // size * size].reshape(-1, size) ** 2, axis=1))


def drift_ms(original: np.ndarray, stretched: np.ndarray, speed: float) -> float:
    """95th percentile of the timing error of the windows with speech (see the module's docstring)."""
    got, base = envelope(stretched), envelope(original)
    ideal = np.interp(np.arange(got.size) * speed, np.arange(base.size), base)
    window, most = round(DRIFT_WINDOW_S / ENVELOPE_HOP_S), round(DRIFT_MAX_S / ENVELOPE_HOP_S)
    shifts = []
    for start in range(most, got.size - window - most, window // 2):
        part = got[start : start + window]
        if part.max() > 0.1 * got.max():  # within 20 dB of the loudest frame: speech
            fits = [np.corrcoef(part, ideal[start + s : start + s + window])[0, 1] for s in range(-most, most + 1)]
            shifts.append(abs(int(np.argmax(fits)) - most) * ENVELOPE_HOP_S * 1000)
    return float(np.percentile(shifts, 95))


def transcribe(model, samples: np.ndarray) -> str:
    """Whisper base's text for 16 kHz audio (beam 5, English)."""
    segments, _ = model.transcribe(samples[0], beam_size=5, language="en")
    return " ".join(segment.text.strip() for segment in segments)


def timed_stretch(samples: np.ndarray, rate_hz: int, length: int, backend: str, repeats: int):
    """The stretched audio and the median seconds of ``repeats`` runs (after one untimed run)."""
    from voxflow.tasks.helpers.stretch import time_stretch

    out = time_stretch(samples, rate_hz, length, backend)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        time_stretch(samples, rate_hz, length, backend)
        seconds.append(time.perf_counter() - started)
    return out, statistics.median(seconds)


def original_measures(model, name: str, rate_hz: int) -> dict:
    """One file's speech, words, and the measures of it the stretched versions are compared with."""
    from voxflow.tasks.helpers import audio
    from voxflow.tasks.line_check import dnsmos_overall

    samples, text = load_speech(name, rate_hz)
    at_16k = audio.resample(samples, rate_hz, ASR_RATE_HZ)
    return {
        "samples": samples,
        "text": text,
        "mel_db": mel_profile_db(at_16k),
        "at_16k": at_16k,
        "f0_hz": f0_track_hz(at_16k),
        "wer": word_error_rate(text, transcribe(model, at_16k)),
        "dnsmos": dnsmos_overall(at_16k[0]),
    }


def measure(model, original: dict, backend: str, rate: float, args: argparse.Namespace) -> dict:
    """Every measure of one backend at one speed on one file."""
    from voxflow.tasks.helpers import audio
    from voxflow.tasks.helpers.stretch import raw_stretch
    from voxflow.tasks.line_check import dnsmos_overall

    samples = original["samples"]
    length = round(samples.shape[1] / rate)
    out, seconds = timed_stretch(samples, args.rate_hz, length, backend, args.repeats)
    raw = raw_stretch(samples, args.rate_hz, length, backend)
    at_16k = audio.resample(out, args.rate_hz, ASR_RATE_HZ)
    timbre_db, level_db = spectrum_change_db(original["mel_db"], mel_profile_db(at_16k))
    return {
        "audio_s": samples.shape[1] / args.rate_hz,
        "seconds": seconds,
        "raw_error_ms": 1000 * (raw.shape[1] - length) / args.rate_hz,
        "timbre_db": timbre_db,
        "level_db": level_db,
        "drift_ms": drift_ms(original["at_16k"], at_16k, rate),
        "f0_cents": f0_shift_cents(original["f0_hz"], f0_track_hz(at_16k), rate),
        "wer": word_error_rate(original["text"], transcribe(model, at_16k)),
        "dnsmos": dnsmos_overall(at_16k[0]),
    }


def _row(records: list[dict], absolute_f0: bool = False) -> tuple[str, ...]:
    """The measure cells of one or more records (pooled: total audio over total time, mean of the rest)."""
    mean = lambda key: float(np.mean([r[key] for r in records]))  # noqa: E731
    rt = sum(r["audio_s"] for r in records) / sum(r["seconds"] for r in records)
    f0_cents = float(np.mean([abs(r["f0_cents"]) for r in records])) if absolute_f0 else mean("f0_cents")
    return (
        cell(rt, 0),
        cell(mean("raw_error_ms"), 1),
        cell(mean("drift_ms"), 0),
        cell(mean("timbre_db"), 2),
        cell(mean("level_db"), 2),
        cell(f0_cents, 1),
        cell(100 * mean("wer"), 1),
        cell(mean("dnsmos"), 2),
    )


def tables(originals: list[dict], results: dict) -> None:
    """The summary table (files pooled, |f0 cents| averaged), then one row per file."""
    pooled = (
        cell(100 * float(np.mean([o["wer"] for o in originals])), 1),
        cell(np.mean([o["dnsmos"] for o in originals]), 2),
    )
    baseline = ("original", "1.0", *["-"] * 6, *pooled)
    summary = [baseline] + [(b, f"{rate:g}", *_row(got, absolute_f0=True)) for (b, rate), got in results.items()]
    print_table(HEADER, summary)
    per_file = [
        (name, "original", "1.0", *["-"] * 6, cell(100 * o["wer"], 1), cell(o["dnsmos"], 2))
        for name, o in zip(FILES, originals)
    ]
    for (backend, rate), got in results.items():
        per_file += [(name, backend, f"{rate:g}", *_row([r])) for name, r in zip(FILES, got)]
    print_table(("file", *HEADER), per_file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate-hz", type=int, default=24_000, help="sample rate the stretch runs at")
    parser.add_argument("--rates", nargs="+", type=float, default=[0.85, 1.2, 1.5], help="speeds (above 1: faster)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per stretch (the median is shown)")
    parser.add_argument("--asr-threads", type=int, default=2, help="CTranslate2 threads (Whisper is not timed)")
    args = parser.parse_args()

    from faster_whisper import WhisperModel

    from voxflow.tasks.helpers.stretch import available_backends

    folder = whisper_base_model_dir() / "faster-whisper" / "base"
    model = WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=args.asr_threads)
    backends = available_backends()
    print(f"backends {', '.join(backends)}; stretch at {args.rate_hz} Hz, one thread; Whisper base int8", flush=True)
    originals = [original_measures(model, name, args.rate_hz) for name in FILES]
    results = {}
    for backend in backends:
        for rate in args.rates:
            results[backend, rate] = [measure(model, original, backend, rate, args) for original in originals]
            print(f"{backend} x{rate:g} done", flush=True)
    tables(originals, results)


if __name__ == "__main__":
    main()
