"""The diarize stage on a tiny random pyannote pipeline (community-1 layout): equivalence, loading, real audio, flow."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import CORPUS
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import open_store
from voxflow.tasks.diarize import (
    DEFAULT_MODEL,
    EXCLUSIVE_RTTM_NAME,
    LIBRARY,
    PROGRESS_TOTAL,
    RTTM_NAME,
    SAMPLE_RATE_HZ,
    DiarizeOptions,
    annotation_turns,
    diarize,
    diarize_audio,
    load_diarize_model,
    waveform_input,
)
from voxflow.tasks.helpers import audio
from voxflow.tasks.helpers.speakers import parse_rttm, to_rttm
from voxflow.tasks.kit.model_sources import MODEL_SOURCES
from voxflow.tasks.kit.model_sources import hub_folder_name as local_folder_name
from voxflow.tasks.kit.models import GatedModelError, ModelNotFound, ModelSettings

SAMPLE = CORPUS / "diar_2spk_pyannote" / "sample.wav"  # 30 s, 16 kHz mono, two speakers
TIME_ATOL_S = 1e-6  # our turns vs the pipeline's own: the same floats, checked to a microsecond
RTTM_ATOL_S = 1e-3 + 1e-9  # RTTM writes milliseconds (an end is start + duration, each rounded to 0.5 ms)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on the shared 2-core machine more threads are much slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tiny_models):
    return tiny_models.build(LIBRARY)


@pytest.fixture(scope="module")
def pipeline(model_dir):
    """The tiny pipeline in the default folder, with the published community-1 config."""
    return load_diarize_model(DEFAULT_MODEL, "cpu", model_dir)


@pytest.fixture(scope="module")
def fast_pipeline(model_dir, tmp_path_factory):
    """The same weights with a window step of 5 s instead of 1 s (5x fewer windows), loaded from its folder path."""
    folder = tmp_path_factory.mktemp("fast") / "community-1-fast"
    shutil.copytree(model_dir / LIBRARY / local_folder_name(DEFAULT_MODEL), folder)
    config = (folder / "config.yaml").read_text()
    (folder / "config.yaml").write_text(
        config.replace("    plda: $model/plda\n", "    plda: $model/plda\n    segmentation_step: 0.5\n")
    )
    return load_diarize_model(str(folder), "cpu")


@pytest.fixture(scope="module")
def sample() -> dict:
    samples, rate = sf.read(SAMPLE, dtype="float32", always_2d=True)
    return waveform_input(samples.T, rate)


def _labelled(annotation) -> list[tuple[float, float, str]]:
    return [(segment.start, segment.end, label) for segment, _, label in annotation.itertracks(yield_label=True)]


def _assert_same_turns(ours, theirs) -> None:
    assert [t.speaker for t in ours] == [label for _, _, label in theirs]
    np.testing.assert_allclose(
        [(t.start_s, t.end_s) for t in ours], [(s, e) for s, e, _ in theirs], rtol=0, atol=TIME_ATOL_S
    )


def test_turns_equal_the_pipeline_called_directly(pipeline, sample):
    progress: list[tuple[int, int]] = []
    ours = diarize(
        sample, pipeline, DiarizeOptions(num_speakers=2), hook=lambda done, total: progress.append((done, total))
    )
    theirs = pipeline({"waveform": sample["waveform"], "sample_rate": SAMPLE_RATE_HZ}, num_speakers=2)

    _assert_same_turns(ours.turns, _labelled(theirs.speaker_diarization))
    _assert_same_turns(ours.exclusive, _labelled(theirs.exclusive_speaker_diarization))
    assert ours.speakers == ("SPEAKER_00", "SPEAKER_01") == tuple(theirs.speaker_diarization.labels())
    assert {t.speaker for t in ours.exclusive} == {"SPEAKER_00", "SPEAKER_01"}
    # our speech and overlap time against pyannote.core's own timeline operations
    assert ours.speech_s == pytest.approx(theirs.speaker_diarization.get_timeline().support().duration(), abs=1e-9)
    assert ours.overlap_s == pytest.approx(theirs.speaker_diarization.get_overlap().duration(), abs=1e-9)
    assert 0 < ours.overlap_s < ours.speech_s <= 30.0
    # progress in percent: segmentation, then embeddings, never backwards, ending at 100
    assert all(total == PROGRESS_TOTAL for _, total in progress)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assert progress[-1] == (PROGRESS_TOTAL, PROGRESS_TOTAL) and len({done for done, _ in progress}) > 3


def test_rttm_round_trip_keeps_turns_to_the_millisecond(fast_pipeline, sample):
    found = diarize(sample, fast_pipeline, DiarizeOptions(num_speakers=2))
    for turns in (found.turns, found.exclusive):
        parsed = parse_rttm(to_rttm(turns, "sample"))
        assert [t.speaker for t in parsed] == [t.speaker for t in turns] and len(parsed) > 10
        np.testing.assert_allclose(
            [(t.start_s, t.end_s) for t in parsed], [(t.start_s, t.end_s) for t in turns], rtol=0, atol=RTTM_ATOL_S
        )
    assert (
        annotation_turns(fast_pipeline(dict(sample), num_speakers=2).exclusive_speaker_diarization) == found.exclusive
    )


def test_loader_finds_the_tiny_pipeline_through_model_settings(tiny_models, pipeline):
    settings = tiny_models.settings(LIBRARY)
    folder = settings.folder / LIBRARY / "speaker-diarization-community-1"
    layout = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert layout == [
        "config.yaml",
        "embedding/pytorch_model.bin",
        "plda/plda.npz",
        "plda/xvec_transform.npz",
        "segmentation/pytorch_model.bin",
    ]
    loaded = load_diarize_model(DEFAULT_MODEL, settings.torch_device(), settings.model_dir, token=settings.token())
    assert loaded is pipeline  # resident: loaded once per process and device
    assert type(loaded).__name__ == "SpeakerDiarization" and loaded.klustering == "VBxClustering"
    assert loaded.embedding_exclude_overlap and loaded.segmentation_step == 0.1  # the published config
    source = MODEL_SOURCES["diarize"]
    assert (source.library, source.name, source.gated) == (LIBRARY, DEFAULT_MODEL, True)
    assert source.present(DEFAULT_MODEL, settings) == folder
    assert source.present(DEFAULT_MODEL, ModelSettings(model_dir=str(settings.folder / "elsewhere"))) is None


def test_a_missing_gated_model_fails_at_once_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound) as caught:
        load_diarize_model(DEFAULT_MODEL, "cpu", tmp_path / "no-models")
    message = str(caught.value)
    assert "\n" not in message and DEFAULT_MODEL in message
    assert str(tmp_path / "no-models" / "pyannote") in message and "voxflow models pull" in message
    assert "HF_TOKEN" in message


def test_a_pipeline_that_pyannote_cannot_load_is_a_model_not_found(tmp_path, monkeypatch):
    from pyannote.audio import Pipeline

    monkeypatch.setattr(Pipeline, "from_pretrained", classmethod(lambda cls, *args, **kwargs: None))
    with pytest.raises(ModelNotFound, match="could not load pipeline 'someone/private-pipeline'") as caught:
        load_diarize_model("someone/private-pipeline", "cpu", tmp_path)
    assert not isinstance(caught.value, GatedModelError)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_speakers": 3, "max_speakers": 2}, "must not exceed max_speakers"),
        ({"num_speakers": 2, "max_speakers": 3}, "not both"),
        ({"num_speakers": 0}, "DiarizeOptions.num_speakers: Input should be greater than or equal to 1"),
        ({"max_speakers": -1}, "DiarizeOptions.max_speakers: Input should be greater than or equal to 1"),
        ({"num_speakers": 2.5}, "DiarizeOptions.num_speakers: Input should be a valid integer"),
        (
            {"embedding_batch_size": 0},
            "DiarizeOptions.embedding_batch_size: Input should be greater than or equal to 1",
        ),
        ({"model": " "}, "DiarizeOptions.model: must not be blank"),
    ],
)
def test_invalid_options_fail_with_one_line(fields, message):
    with pytest.raises(ValueError, match=message):
        DiarizeOptions(**fields)


def test_a_resampled_stereo_recording_is_diarized_within_its_duration(fast_pipeline):
    decoded = audio.decode_file(CORPUS / "asr_en_jfk" / "jfk.flac")  # 11 s, 44.1 kHz stereo FLAC
    waveform = waveform_input(decoded.samples, decoded.sample_rate_hz)
    expected = audio.resample(audio.downmix(decoded.samples), decoded.sample_rate_hz, SAMPLE_RATE_HZ)
    assert waveform["sample_rate"] == SAMPLE_RATE_HZ and waveform["waveform"].dtype == torch.float32
    np.testing.assert_array_equal(waveform["waveform"].numpy(), expected)
    found = diarize(waveform, fast_pipeline, DiarizeOptions(min_speakers=1, max_speakers=2))
    end_s = expected.shape[1] / SAMPLE_RATE_HZ
    assert found.turns and all(0 <= t.start_s < t.end_s <= end_s for t in found.turns + found.exclusive)
    assert set(found.speakers) <= {"SPEAKER_00", "SPEAKER_01"}
    # the pipeline's own turns, cut where the audio ends (its last window is zero-padded to 10 s)
    theirs = fast_pipeline(dict(waveform), min_speakers=1, max_speakers=2)
    clipped = [(s, min(e, end_s), label) for s, e, label in _labelled(theirs.speaker_diarization) if s < end_s]
    _assert_same_turns(found.turns, clipped)
    with pytest.raises(ValueError, match="expected a \\(1, samples\\) waveform at 16000 Hz"):
        diarize({"waveform": torch.from_numpy(decoded.samples), "sample_rate": 44100}, fast_pipeline, DiarizeOptions())


def test_batches_of_one_window_give_the_same_turns_as_batches_of_32(fast_pipeline, sample):
    """The track is cut into 10 s windows and (window, speaker) pairs; the batch size must not matter."""
    batched = diarize(sample, fast_pipeline, DiarizeOptions(num_speakers=2))
    one_at_a_time = diarize(
        sample, fast_pipeline, DiarizeOptions(num_speakers=2, segmentation_batch_size=1, embedding_batch_size=1)
    )
    assert one_at_a_time == batched


class OutOfMemoryAbove:
    """A pipeline that runs out of CUDA memory (wrapped as pyannote's segmentation wraps it) above a batch size."""

    def __init__(self, pipeline, limit: int) -> None:
        self.pipeline, self.limit, self.tried = pipeline, limit, []
        self.segmentation_batch_size = self.embedding_batch_size = 1

    def __call__(self, file, **kwargs):
        self.tried.append((self.segmentation_batch_size, self.embedding_batch_size))
        if max(self.tried[-1]) > self.limit:
            try:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            except torch.cuda.OutOfMemoryError:
                raise MemoryError("batch_size is probably too large")  # noqa: B904 (pyannote's own wrapping)
        self.pipeline.segmentation_batch_size = self.segmentation_batch_size
        self.pipeline.embedding_batch_size = self.embedding_batch_size
        return self.pipeline(file, **kwargs)


def test_out_of_memory_halves_both_batches_until_they_fit(fast_pipeline, sample):
    short = {"waveform": sample["waveform"][:, : 12 * SAMPLE_RATE_HZ], "sample_rate": SAMPLE_RATE_HZ}
    flaky = OutOfMemoryAbove(fast_pipeline, limit=8)
    found = diarize(short, flaky, DiarizeOptions(num_speakers=2, segmentation_batch_size=32, embedding_batch_size=16))
    assert flaky.tried == [(32, 16), (16, 16), (8, 8)]
    assert found == diarize(short, fast_pipeline, DiarizeOptions(num_speakers=2))


@pytest.mark.usefixtures("prefect_harness")
def test_diarize_task_in_a_flow_writes_rttms_and_segment_rows(tmp_path, use_store, tiny_models):
    from prefect import flow

    from voxflow.flows.environment import environment
    from voxflow.tasks.ingest import IngestOptions, ingest_file

    catalog = use_store(StoreSettings(location=str(tmp_path / "store")))
    models = tiny_models.settings(LIBRARY)
    options = DiarizeOptions(num_speakers=2)

    @flow(name="test-diarize")
    def ingest_and_diarize(path: str):
        env = environment(None)
        ingested = env.stage(ingest_file)(path, IngestOptions(), env.settings)
        return ingested, env.stage(diarize_audio)(ingested, options, env.settings, models)

    mixture = str(CORPUS / "sep_2spk_mixture" / "mixture_2.wav")  # 7.2 s, two overlapping talkers
    ingested, result = ingest_and_diarize(mixture)
    assert result.audio == ingested.artifact and result.artifact == ingested.artifact
    assert result.source_sha256 == ingested.source_sha256 and result.sha256 == result.rttm.sha256
    assert result.speakers == ("SPEAKER_00", "SPEAKER_01") and result.summary()["speakers"] == 2

    store = open_store(StoreSettings.from_env())
    turns = parse_rttm(store.get_bytes(store.key_of(result.rttm.uri), result.rttm.sha256).decode())
    exclusive = parse_rttm(
        store.get_bytes(store.key_of(result.exclusive_rttm.uri), result.exclusive_rttm.sha256).decode()
    )
    assert len(turns) == result.turns > 0 and exclusive
    assert {t.speaker for t in turns} == set(result.speakers)

    artifacts = catalog.frame("artifacts").set_index("name")
    for name, ref in ((RTTM_NAME, result.rttm), (EXCLUSIVE_RTTM_NAME, result.exclusive_rttm)):
        row = artifacts.loc[name]
        assert (row["uri"], row["sha256"], row["stage"], row["media_type"]) == (
            ref.uri,
            ref.sha256,
            "diarize",
            "text/plain",
        )
        assert row["input_sha256"] == ingested.sha256
    segments = catalog.frame("segments").sort_values(["exclusive", "index"])
    assert set(segments["stage"]) == {"diarize"} and set(segments["file_sha256"]) == {ingested.source_sha256}
    assert segments["segment_id"].is_unique and segments["text"].isna().all() and segments["words"].isna().all()
    for flag, expected, ref in ((False, turns, result.rttm), (True, exclusive, result.exclusive_rttm)):
        rows = segments[segments["exclusive"] == flag]
        assert list(rows["index"]) == list(range(len(expected))) and set(rows["artifact_uri"]) == {ref.uri}
        assert list(rows["speaker"]) == [t.speaker for t in expected]
        np.testing.assert_allclose(
            rows[["start_s", "end_s"]].to_numpy(), [(t.start_s, t.end_s) for t in expected], rtol=0, atol=RTTM_ATOL_S
        )

    again = ingest_and_diarize(mixture)[1]
    assert again == result
    runs = catalog.frame("stage_runs")
    assert sorted(runs[runs["stage"] == "diarize"]["cache_hit"]) == [False, True]
    assert len(catalog.frame("segments")) == len(segments)  # a cache hit writes no rows again
