"""Parallel files never change each other's results: every model stage, N files at once in threads
(as the flows' default task runner runs them) = the same files one by one, with the tiny models.

A loaded model is shared by the threads of a process (one copy per device); these tests fail when a
library's inference keeps per-call state on the shared model (whisper's kv-cache hooks, Silero's
state, a global RNG seeded before sampling) and two files use it at once.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import CORPUS
from voxflow.flows.speech import SpeechOptions
from voxflow.flows.synthesize import SpeechItem, synthesize
from voxflow.flows.transcribe import TranscribeFlowOptions, transcribe
from voxflow.storage.settings import StoreSettings
from voxflow.tasks.synthesize import SynthesizeOptions
from voxflow.tasks.transcribe import TranscribeOptions

pytestmark = pytest.mark.usefixtures("prefect_harness")

FILES = 4
# CTranslate2 seeds its sampler once per worker thread and process (ctranslate2.set_random_seed cannot
# reset it): on faster-whisper a fallback that samples is not reproducible, so those runs decode at 0 only
NO_SAMPLING = (0.0,)
MAX_TOKENS = 24  # random weights never end a window: bound each decode (the beams and the seeded fallback still run)
CLIPS = [  # (source, start s, length s): four different voices and rates, mono and stereo
    (CORPUS / "asr_en_jfk" / "jfk.flac", 0.0, 5.0),
    (CORPUS / "diar_2spk_pyannote" / "sample.wav", 4.0, 6.0),
    (CORPUS / "clone_ref_lj" / "LJ050-0131.wav", 0.0, 5.0),
    (CORPUS / "sep_2spk_mixture" / "source2_2.wav", 0.0, 5.0),
]
QUICK = SynthesizeOptions(frames_per_char=0.5, margin_frames=4, max_new_tokens_cap=16, quality_retries=1)


def clips(folder: Path) -> list[str]:
    """Four short recordings cut from the corpus."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for source, start_s, length_s in CLIPS:
        info = sf.info(source)
        samples, rate = sf.read(
            source, start=int(start_s * info.samplerate), frames=int(length_s * info.samplerate), always_2d=True
        )
        path = folder / f"{source.stem}-clip.wav"
        sf.write(path, samples, rate, subtype="PCM_16")
        paths.append(str(path))
    return paths


def artifacts(catalog) -> dict[str, str]:
    """Every artifact written, by content-addressed key: its bytes' sha256."""
    frame = catalog.frame("artifacts")
    return dict(zip(frame["key"], frame["sha256"]))


@pytest.fixture
def models_env(tiny_models, monkeypatch):
    folder = tiny_models.build("denoiser", "demucs", "pyannote", "whisper", "faster_whisper", "qwen_tts", "novasr")
    monkeypatch.setenv("VOXFLOW_MODEL_DIR", str(folder))
    monkeypatch.setenv("VOXFLOW_DEVICE", "cpu")
    return folder


CHAINS = {  # which stages run; without diarization the files reach transcription together
    "separate-denoise-whisper": dict(run_separate=True, run_denoise=True, run_diarize=False),
    "faster-whisper": dict(
        run_diarize=False,
        transcribe=TranscribeOptions(
            backend="faster-whisper", language="en", max_tokens=MAX_TOKENS, temperatures=NO_SAMPLING
        ),
    ),
    "diarize-whisper": dict(run_diarize=True),
}


@pytest.mark.parametrize("chain", list(CHAINS))
def test_analysis_stages_give_the_same_results_in_parallel_as_one_by_one(tmp_path, use_store, models_env, chain):
    paths = clips(tmp_path / "in")
    options = TranscribeFlowOptions(
        **{"transcribe": TranscribeOptions(language="en", max_tokens=MAX_TOKENS), **CHAINS[chain]}
    )
    results = {}
    for jobs in (1, FILES):
        catalog = use_store(StoreSettings(location=str(tmp_path / f"store-{jobs}")))
        report = transcribe(paths=paths, options=options, parallel_files=jobs)
        assert [o.status for o in report.outcomes] == ["done"] * FILES, [o.error for o in report.outcomes]
        results[jobs] = artifacts(catalog)
    stages = {key.split("/")[3] for key in results[1]}
    assert stages == {"ingest", "transcribe"} | {name[4:] for name, on in CHAINS[chain].items() if on is True}
    assert results[FILES] == results[1]


def test_synthesis_stages_give_the_same_results_in_parallel_as_one_by_one(tmp_path, use_store, models_env):
    references = clips(tmp_path / "voices")
    items = [
        SpeechItem(
            text=f"Line number {i}.", reference=ref, reference_transcript="Words of a voice.", language="English"
        )
        for i, ref in enumerate(references)
    ]
    options = SpeechOptions(synthesize=QUICK)
    catalog = use_store(StoreSettings(location=str(tmp_path / "store-1")))
    one_by_one = [synthesize(mode="clone", items=[item], options=options).lines[0] for item in items]
    sequential = artifacts(catalog)
    catalog = use_store(StoreSettings(location=str(tmp_path / f"store-{FILES}")))
    together = synthesize(mode="clone", items=items, options=options).lines
    stages = {key.split("/")[3] for key in sequential}
    assert stages >= {"ingest", "reference", "voice_prompt", "synthesize", "enhance"}
    assert [key_of(line.uri) for line in together] == [key_of(line.uri) for line in one_by_one]
    assert artifacts(catalog) == sequential


def key_of(uri: str) -> str:
    return "artifacts/" + uri.split("/artifacts/", 1)[1]


def in_threads(compute, count: int) -> list:
    """``compute(i)`` for i < count, all started at once in threads; results (or errors) by i."""
    results: list = [None] * count
    start = threading.Barrier(count)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = compute(i)
        except Exception as e:  # kept to be compared: a race shows up as an error or another result
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _speech(path: str) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    return np.ascontiguousarray(samples.T), rate


def _stage_computes(folder: str, paths: list[str]) -> dict:
    """Each model stage's compute function on one shared model, as ``compute(i)`` on file i."""
    from voxflow.tasks import denoise, diarize, enhance, separate, transcribe, upsample
    from voxflow.tasks import synthesize as tts

    audio = [_speech(p) for p in paths]
    speech16k = [transcribe.whisper_audio(*a) for a in audio]
    dns = denoise.load_denoise_model("dns48", "cpu", folder)
    demucs = separate.load_separate_model("htdemucs", "cpu", folder)
    pipeline = diarize.load_diarize_model(diarize.DEFAULT_MODEL, "cpu", folder)
    vad = transcribe.load_vad_model()
    whisper = transcribe.load_transcribe_model("turbo", "cpu", folder)
    faster = transcribe.load_transcribe_model("turbo", "cpu", folder, "faster-whisper")
    base = tts.load_tts_model(tts.DEFAULT_MODELS["clone"], "cpu", folder)
    prompts = [tts.voice_prompt(base, *a, "Words of a voice.") for a in audio]
    novasr = upsample.load_upsample_model(upsample.DEFAULT_MODEL, "cpu", folder)
    english = transcribe.TranscribeOptions(language="en", max_tokens=MAX_TOKENS)

    def stems(i: int) -> np.ndarray:
        found = separate.separate(*audio[i], demucs, separate.SeparateOptions())
        return np.concatenate([found.vocals, found.accompaniment])

    return {
        "denoise": lambda i: denoise.denoise(*audio[i], dns),
        "separate": stems,
        "diarize": lambda i: diarize.diarize(
            diarize.waveform_input(speech16k[i][None], 16000), pipeline, diarize.DiarizeOptions()
        ),
        "transcribe": lambda i: transcribe.transcribe_speech(whisper, vad, speech16k[i], english),
        "transcribe-faster-whisper": lambda i: transcribe.transcribe_speech(
            faster, vad, speech16k[i], replace(english, backend="faster-whisper", temperatures=NO_SAMPLING)
        ),
        "voice_prompt": lambda i: tts.voice_prompt(base, *audio[i], "Words of a voice.").to_bytes(),
        "synthesize": lambda i: (
            tts.synthesize(base, "clone", [tts.SynthesisItem(f"Line {i}.", "English")], QUICK, prompts[i])[0].samples
        ),
        "enhance": lambda i: enhance.enhance(audio[i][0][:1], audio[i][1], enhance.EnhanceOptions(), dns, novasr),
    }


def _same(a, b) -> bool:
    return np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b


STAGES = [
    "denoise",
    "separate",
    "diarize",
    "transcribe",
    "transcribe-faster-whisper",
    "voice_prompt",
    "synthesize",
    "enhance",
]


@pytest.fixture(scope="module")
def stage_computes(tiny_models, tmp_path_factory):
    folder = tiny_models.build("denoiser", "demucs", "pyannote", "whisper", "faster_whisper", "qwen_tts", "novasr")
    return _stage_computes(str(folder), clips(tmp_path_factory.mktemp("clips")))


@pytest.mark.parametrize("stage", STAGES)
def test_a_shared_model_gives_each_thread_its_own_result(stage_computes, stage):
    compute = stage_computes[stage]
    alone = [compute(i) for i in range(FILES)]
    for _ in range(2):  # all threads start together on the one model
        together = in_threads(compute, FILES)
        errors = [r for r in together if isinstance(r, Exception)]
        assert not errors, errors[0]
        assert all(_same(a, b) for a, b in zip(together, alone))
