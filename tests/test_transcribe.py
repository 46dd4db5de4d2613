"""The transcribe stage: our batched VAD-chunk decoding against whisper's own ``transcribe`` (and the
faster-whisper backend against faster-whisper's) on the same tiny random weights, VAD chunking of real
recordings, speaker attribution on real turns, the text formats, the loader, and the task in a flow."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from tests.conftest import CORPUS
from voxflow.storage.refs import ArtifactRef
from voxflow.storage.settings import StoreSettings
from voxflow.storage.store import open_store
from voxflow.tasks.helpers import audio, subtitles
from voxflow.tasks.helpers.speakers import Turn, parse_rttm
from voxflow.tasks.helpers.subtitles import Segment, Transcript, Word
from voxflow.tasks.transcribe import (
    SAMPLE_RATE_HZ,
    Span,
    TranscribeOptions,
    assign_speakers,
    decode_chunks,
    detect_speech,
    load_transcribe_model,
    load_vad_model,
    merge_spans,
    speech_probabilities,
    transcribe_speech,
    whisper_audio,
)

torch.set_num_threads(1)

JFK = CORPUS / "asr_en_jfk" / "jfk.flac"
SAMPLE = CORPUS / "diar_2spk_pyannote" / "sample.wav"
RTTM = CORPUS / "diar_2spk_pyannote" / "sample.rttm"
MAX_TOKENS = 48  # bounds each window's decode of the random model (both ours and whisper's)
TIME_TOL_S = 1e-6  # segment and word times: both sides compute the same float expressions
PROB_RTOL = 1e-4  # word probabilities: the same softmax, encoder run in a batch vs alone
# the upstream calls below decode greedily at temperature 0 with the skip rules off: the same options here
GREEDY = dict(beam_size=1, temperatures=(0.0,), compression_ratio_threshold=None, log_prob_threshold=None)
GREEDY_NO_SKIP = dict(GREEDY, no_speech_threshold=None)


def _recording(path) -> np.ndarray:
    decoded = audio.decode_file(path)
    return whisper_audio(decoded.samples, decoded.sample_rate_hz)


@pytest.fixture(scope="module")
def model(tiny_models):
    from whisper.timing import dtw_cpu

    dtw_cpu(np.ones((2, 2)))  # numba's first compile resets torch's thread count: get it over with
    torch.set_num_threads(1)
    return load_transcribe_model("turbo", "cpu", tiny_models.build("whisper"))


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    return _recording(SAMPLE)


def _upstream(model, samples: np.ndarray, language: str | None = "en", **changed) -> dict:
    """whisper's own long-form transcription with its fallback and skip heuristics off (unless ``changed``)."""
    import whisper

    return whisper.transcribe(
        model,
        samples,
        **{
            "temperature": 0.0,
            "condition_on_previous_text": False,
            "word_timestamps": True,
            "language": language,
            "compression_ratio_threshold": None,
            "logprob_threshold": None,
            "no_speech_threshold": None,
            "fp16": False,
            "sample_len": MAX_TOKENS,
            **changed,
        },
    )


def _assert_same_as_upstream(ours: Transcript, upstream: dict, offset_s: float) -> None:
    expected = [s for s in upstream["segments"] if s["text"].strip() and s["start"] != s["end"]]
    assert len(ours.segments) == len(expected) > 0
    for mine, theirs in zip(ours.segments, expected):
        assert list(mine.tokens) == theirs["tokens"] and mine.text == theirs["text"]
        assert mine.start_s - offset_s == pytest.approx(theirs["start"], abs=TIME_TOL_S)
        assert mine.end_s - offset_s == pytest.approx(theirs["end"], abs=TIME_TOL_S)
        assert (mine.avg_logprob, mine.no_speech_prob) == pytest.approx(
            (theirs["avg_logprob"], theirs["no_speech_prob"]), rel=PROB_RTOL
        )
        assert [w.word for w in mine.words] == [w["word"] for w in theirs["words"]]
        np.testing.assert_allclose(
            [w.start_s - offset_s for w in mine.words], [w["start"] for w in theirs["words"]], atol=TIME_TOL_S
        )
        np.testing.assert_allclose(
            [w.end_s - offset_s for w in mine.words], [w["end"] for w in theirs["words"]], atol=TIME_TOL_S
        )
        np.testing.assert_allclose(
            [w.probability for w in mine.words], [w["probability"] for w in theirs["words"]], rtol=PROB_RTOL
        )


# ---- equivalence with whisper.transcribe ----------------------------------------------------------


def test_one_chunk_equals_whisper_transcribe_on_jfk(model):
    jfk = _recording(JFK)
    ours = decode_chunks(
        model, jfk, [Span(0, len(jfk))], TranscribeOptions(language="en", max_tokens=MAX_TOKENS, **GREEDY_NO_SKIP)
    )
    upstream = _upstream(model, jfk)
    _assert_same_as_upstream(ours, upstream, 0.0)
    assert ours.language == upstream["language"] == "en"
    assert sum(len(s.words) for s in ours.segments) > 1


def test_a_vad_chunk_of_a_conversation_equals_whisper_transcribe_on_that_chunk(model, sample):
    options = TranscribeOptions(language="en", chunk_s=10, max_tokens=MAX_TOKENS, vad_pad_s=0.03, **GREEDY_NO_SKIP)
    chunks = merge_spans(detect_speech(sample, load_vad_model(), options), options.chunk_s)
    chunk = chunks[1]  # starts mid-recording: times must come back offset by its start
    assert chunk.start > 0
    ours = decode_chunks(model, sample, [chunk], options)
    upstream = _upstream(model, sample[chunk.start : chunk.end])
    _assert_same_as_upstream(ours, upstream, chunk.start_s)
    assert all(chunk.start_s <= w.start_s <= w.end_s <= chunk.end_s + 0.02 for w in ours.words)


def test_auto_language_is_whispers_detection_on_the_chunk(model):
    jfk = _recording(JFK)
    ours = decode_chunks(
        model, jfk, [Span(0, len(jfk))], TranscribeOptions(max_tokens=8, word_timestamps=False, **GREEDY_NO_SKIP)
    )
    assert ours.language == _upstream(model, jfk, language=None)["language"]


def test_batch_size_does_not_change_the_transcript(model, sample):
    options = TranscribeOptions(language="en", chunk_s=5, max_tokens=MAX_TOKENS, **GREEDY_NO_SKIP)
    chunks = merge_spans(detect_speech(sample, load_vad_model(), options), options.chunk_s)[:5]
    assert len(chunks) == 5 and all(c.end - c.start <= 5 * SAMPLE_RATE_HZ for c in chunks)
    progress: list[tuple[int, int]] = []
    four = decode_chunks(
        model, sample, chunks, options, batch_size=4, hook=lambda done, total: progress.append((done, total))
    )
    alone = [s for c in chunks for s in decode_chunks(model, sample, [c], options, batch_size=1).segments]
    assert [s.tokens for s in alone] == [s.tokens for s in four.segments]
    for a, b in zip(alone, four.segments):
        assert (a.start_s, a.end_s) == pytest.approx((b.start_s, b.end_s), abs=TIME_TOL_S)
        np.testing.assert_allclose(
            [(w.start_s, w.end_s) for w in a.words], [(w.start_s, w.end_s) for w in b.words], atol=TIME_TOL_S
        )
    assert len({s.tokens for s in four.segments}) > 1  # the random model's output depends on the audio
    total = sum((c.end - c.start) // 160 for c in chunks)
    assert progress[-1] == (total, total) and [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_beam_search_and_the_silence_rule_equal_whisper_transcribe(model):
    """Our defaults at temperature 0: beam search of 5 and whisper's no-speech skip, as whisper runs them."""

    jfk = _recording(JFK)
    options = TranscribeOptions(language="en", max_tokens=MAX_TOKENS, temperatures=(0.0,), log_prob_threshold=None)
    ours = decode_chunks(model, jfk, [Span(0, len(jfk))], options)
    upstream = _upstream(model, jfk, beam_size=5, no_speech_threshold=0.6)  # whisper's default silence rule
    _assert_same_as_upstream(ours, upstream, 0.0)
    greedy = decode_chunks(
        model, jfk, [Span(0, len(jfk))], TranscribeOptions(language="en", max_tokens=MAX_TOKENS, **GREEDY_NO_SKIP)
    )
    assert [s.tokens for s in ours.segments] != [s.tokens for s in greedy.segments]  # the beams made a difference


def test_the_temperature_fallback_samples_reproducibly(model, monkeypatch):
    """Random weights fail every quality check: each window walks the whole fallback schedule, sampled
    from a seed, so two runs (with other sampling in between) give the same text; another seed differs."""
    from voxflow.tasks import transcribe

    temperatures: list[float] = []
    decode = transcribe._WhisperSteps.decode

    def spying(self, samples, batch, temperature):
        temperatures.append(temperature)
        return decode(self, samples, batch, temperature)

    monkeypatch.setattr(transcribe._WhisperSteps, "decode", spying)
    jfk = _recording(JFK)[: 8 * SAMPLE_RATE_HZ]
    options = TranscribeOptions(language="en", max_tokens=8, word_timestamps=False, no_speech_threshold=None)
    decode_chunks(model, jfk, [Span(0, len(jfk))], options)
    assert temperatures == list(options.temperatures)  # the whole schedule was tried
    sampled = TranscribeOptions(**{**options.__dict__, "temperatures": (1.0,)})  # only a sample to keep
    first = decode_chunks(model, jfk, [Span(0, len(jfk))], sampled)
    torch.rand(1000)  # other use of torch's generator between the runs
    again = decode_chunks(model, jfk, [Span(0, len(jfk))], sampled)
    other_seed = decode_chunks(model, jfk, [Span(0, len(jfk))], TranscribeOptions(**{**sampled.__dict__, "seed": 7}))
    assert [s.tokens for s in first.segments] == [s.tokens for s in again.segments]
    assert [s.tokens for s in first.segments] != [s.tokens for s in other_seed.segments]


def _faster_upstream(model, samples: np.ndarray) -> dict:
    """faster-whisper's own ``WhisperModel.transcribe`` with its fallback and skip heuristics off."""
    segments, info = model.transcribe(
        samples,
        language="en",
        beam_size=1,
        temperature=0.0,
        condition_on_previous_text=False,
        word_timestamps=True,
        without_timestamps=False,
        vad_filter=False,
        compression_ratio_threshold=None,
        log_prob_threshold=None,
        no_speech_threshold=None,
        max_new_tokens=MAX_TOKENS,
    )
    return {
        "language": info.language,
        "segments": [
            {
                "tokens": s.tokens,
                "text": s.text,
                "start": s.start,
                "end": s.end,
                "avg_logprob": s.avg_logprob,
                "no_speech_prob": s.no_speech_prob,
                "words": [w._asdict() for w in s.words],
            }
            for s in segments
        ],
    }


def test_faster_whisper_backend_equals_faster_whispers_own_transcribe_chunk_by_chunk(tiny_models, sample):
    from faster_whisper import WhisperModel

    from voxflow.tasks.testing.random_models.whisper import build_faster_whisper

    root = tiny_models.build("whisper")
    build_faster_whisper(root, "tiny", 0)  # converts the session's tiny turbo.pt (same weights)
    model = load_transcribe_model("turbo", "cpu", root, backend="faster-whisper")
    assert isinstance(model, WhisperModel)
    options = TranscribeOptions(
        language="en", chunk_s=10, max_tokens=MAX_TOKENS, backend="faster-whisper", **GREEDY_NO_SKIP
    )
    chunks = merge_spans(detect_speech(sample, load_vad_model(), options), options.chunk_s)
    ours = decode_chunks(model, sample, chunks, options, batch_size=2)  # batched: chunks 1+2 together, then 3
    assert len(chunks) == 3 and ours.language == "en"
    expected = []  # faster-whisper on each chunk alone, its times moved to the chunk's place
    for chunk in chunks:
        for segment in _faster_upstream(model, sample[chunk.start : chunk.end])["segments"]:
            words = [
                {**w, "start": chunk.start_s + w["start"], "end": chunk.start_s + w["end"]} for w in segment["words"]
            ]
            expected.append(
                {
                    **segment,
                    "start": chunk.start_s + segment["start"],
                    "end": chunk.start_s + segment["end"],
                    "words": words,
                }
            )
    _assert_same_as_upstream(ours, {"segments": expected}, 0.0)


# ---- voice activity and chunks on real recordings -------------------------------------------------


@pytest.mark.parametrize("chunk_s", [30.0, 10.0])
def test_vad_chunks_are_short_enough_cut_in_non_speech_and_cover_the_reference_speech(sample, chunk_s):
    options = TranscribeOptions(chunk_s=chunk_s)
    vad = load_vad_model()
    chunks = merge_spans(detect_speech(sample, vad, options), chunk_s)
    probabilities = speech_probabilities(sample, vad)
    assert all(0 < c.end - c.start <= chunk_s * SAMPLE_RATE_HZ for c in chunks)
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:]))
    inner = [b for c in chunks for b in (c.start, c.end) if 0 < b < len(sample)]
    assert inner and all(probabilities[b // 512] < options.vad_threshold for b in inner)
    # the reference speech (RTTM turns) is inside the chunks
    turns = parse_rttm(RTTM.read_text())
    speech = np.zeros(len(sample), bool)
    for t in turns:
        speech[round(t.start_s * SAMPLE_RATE_HZ) : round(t.end_s * SAMPLE_RATE_HZ)] = True
    covered = np.zeros(len(sample), bool)
    for c in chunks:
        covered[c.start : c.end] = True
    assert (speech & covered).sum() / speech.sum() > 0.98
    if chunk_s < 20:
        assert len(chunks) > 1


def test_merge_spans_is_whisperx_greedy_merge():
    s = SAMPLE_RATE_HZ
    regions = [Span(0, 2 * s), Span(3 * s, 5 * s), Span(9 * s, 11 * s), Span(12 * s, 25 * s)]
    # 13 s region cut in two halves; a chunk grows while the next region ends within 10 s of its start
    assert merge_spans(regions, 10) == [Span(0, 5 * s), Span(9 * s, 18 * s + s // 2), Span(18 * s + s // 2, 25 * s)]
    assert merge_spans([Span(0, 25 * s)], 10) == [Span(0, 133_333), Span(133_333, 266_667), Span(266_667, 400_000)]
    assert merge_spans([], 30) == []


def test_a_long_recording_is_chunked_around_its_pauses_and_decoded_chunk_by_chunk(model, sample):
    jfk = _recording(JFK)
    pause = np.zeros(3 * SAMPLE_RATE_HZ, np.float32)
    long = np.concatenate([sample, pause, jfk, pause, sample])  # 77 s: three speech stretches, two pauses
    options = TranscribeOptions(language="en", max_tokens=16, word_timestamps=False, batch_size=4, **GREEDY_NO_SKIP)
    regions = detect_speech(long, load_vad_model(), options)
    for middle_s in (31.5, 31.5 + 3 + len(jfk) / SAMPLE_RATE_HZ):  # the middles of the pauses
        assert not any(r.start_s < middle_s < r.end_s for r in regions)
    chunks = merge_spans(regions, options.chunk_s)
    assert len(chunks) >= 3 and all(c.end - c.start <= 30 * SAMPLE_RATE_HZ for c in chunks)
    probabilities = speech_probabilities(long, load_vad_model())
    assert all(
        probabilities[b // 512] < options.vad_threshold for c in chunks for b in (c.start, c.end) if 0 < b < len(long)
    )
    progress: list[tuple[int, int]] = []
    transcript = transcribe_speech(model, load_vad_model(), long, options, hook=lambda *p: progress.append(p))
    assert transcript.segments and progress[-1][0] == progress[-1][1] == sum((c.end - c.start) // 160 for c in chunks)
    assert all(any(c.start_s <= s.start_s <= c.start_s + 30 for c in chunks) for s in transcript.segments)


# ---- speakers --------------------------------------------------------------------------------------


def _words(*spans: tuple[float, float]) -> Transcript:
    words = tuple(Word(f" w{i}", a, b, 0.9) for i, (a, b) in enumerate(spans))
    return Transcript("en", (Segment(spans[0][0], spans[-1][1], "text", -0.5, 0.1, words),))


def test_assign_speakers_on_hand_made_turns():
    turns = [Turn(0.0, 2.0, "A"), Turn(1.5, 4.0, "B"), Turn(6.0, 8.0, "A")]
    labelled = assign_speakers(
        _words((0.2, 0.8), (1.4, 1.9), (1.8, 2.6), (4.5, 5.0), (5.4, 5.8), (7.0, 7.0), (1.6, 1.6)), turns
    )
    got = [(w.speaker, w.overlapped) for w in labelled.words]
    assert got == [
        ("A", False),  # inside A only
        ("A", True),  # 0.5 s with A, 0.4 s with B
        ("B", True),  # 0.2 s with A, 0.8 s with B
        ("B", False),  # in no turn: B's turn ends 0.5 s before, A's starts 1.5 s after
        ("A", False),  # in no turn, nearer to A's turn at 6.0
        ("A", False),  # zero length inside A
        ("A", True),  # zero length where A and B overlap: tie goes to the earlier turn
    ]
    assert labelled.segments[0].speaker == "A"  # 0.2-1.6: 1.4 s of A, 0.1 s of B
    assert labelled.speakers == ("A", "B")
    assert assign_speakers(labelled, []) is labelled


def test_segment_speaker_is_the_speaker_with_most_overlap_summed_over_turns():
    turns = [Turn(0.0, 1.0, "A"), Turn(1.0, 2.5, "B"), Turn(2.5, 3.5, "A")]
    transcript = Transcript("en", (Segment(0.0, 3.5, "x", -0.1, 0.0, ()),))
    assert assign_speakers(transcript, turns).segments[0].speaker == "A"  # 2.0 s of A against 1.5 s of B


def test_assign_speakers_on_the_real_turns_of_a_conversation():
    turns = parse_rttm(RTTM.read_text())
    assert len(turns) == 10
    words = _words(
        (7.0, 7.1),  # speaker90 alone (6.69-7.12)
        (7.7, 8.2),  # speaker91 alone (7.55-8.35)
        (8.33, 8.9),  # mostly speaker90 (8.32-10.02), touches speaker91's end at 8.35
        (10.0, 10.9),  # speaker91 (9.92-11.03) and speaker90 (10.57-14.70) overlap
        (18.1, 18.5),  # speaker91's 18.15-18.59 turn inside speaker90's 18.05-21.49
        (15.0, 17.5),  # speaker91 alone (14.49-17.92)
        (21.6, 21.75),  # in the gap 21.49-21.78: nearest is speaker91 at 21.78
        (0.5, 1.0),  # before any turn: nearest is speaker90 at 6.69
        (28.0, 28.4),  # speaker91 (21.78-28.50) and speaker90 (27.85-30.00) overlap
    )
    got = [(w.speaker, w.overlapped) for w in assign_speakers(words, turns).words]
    assert got == [
        ("speaker90", False),
        ("speaker91", False),
        ("speaker90", True),
        ("speaker91", True),  # 0.9 s of speaker91, 0.02 + 0.33 s of speaker90
        ("speaker90", True),  # 0.4 s of speaker90, 0.35 s of speaker91
        ("speaker91", False),
        ("speaker91", False),
        ("speaker90", False),
        ("speaker91", True),  # inside both turns: a tie, won by the earlier turn (speaker91 from 21.78)
    ]


# ---- text formats ----------------------------------------------------------------------------------


def _two_segments() -> Transcript:
    first = Segment(
        1.23, 3.5, " Ask not <what>", -0.2, 0.05, (Word(" Ask", 1.23, 1.6, 0.9, "SPEAKER_00"),), "SPEAKER_00"
    )
    second = Segment(3661.0, 3662.25, " & your country.", -0.3, 0.01, (), None)
    return Transcript("en", (first, second))


def test_srt_vtt_txt_tsv_json_and_printed_lines():
    transcript = _two_segments()  # whisper's own writers, the speaker in each cue
    assert subtitles.to_srt(transcript) == (
        "1\n00:00:01,230 --> 00:00:03,500\n[SPEAKER_00] Ask not <what>\n\n"
        "2\n01:01:01,000 --> 01:01:02,250\n& your country.\n\n"
    )
    assert subtitles.to_vtt(transcript) == (
        "WEBVTT\n\n00:01.230 --> 00:03.500\n<v SPEAKER_00>Ask not &lt;what&gt;\n\n"
        "01:01:01.000 --> 01:01:02.250\n&amp; your country.\n\n"
    )
    assert subtitles.to_txt(transcript) == "[SPEAKER_00] Ask not <what>\n& your country.\n"
    assert subtitles.to_tsv(transcript) == (
        "start\tend\ttext\n1230\t3500\t[SPEAKER_00] Ask not <what>\n3661000\t3662250\t& your country.\n"
    )
    assert subtitles.transcript_lines(transcript) == [
        "[SPEAKER_00 0:01.2] Ask not <what>",
        "[SPEAKER 1:01:01.0] & your country.",
    ]
    back = subtitles.from_json(subtitles.to_json(transcript))
    assert back.language == "en" and [s.text for s in back.segments] == ["Ask not <what>", "& your country."]
    assert back.segments[0].words == transcript.segments[0].words and back.speakers == ("SPEAKER_00",)


def test_options_are_validated_with_clear_errors():
    with pytest.raises(ValueError, match="language: must be 'auto' or a whisper language code .*en, .*got 'english'"):
        TranscribeOptions(language="english")
    with pytest.raises(ValueError, match="TranscribeOptions.chunk_s: Input should be less than or equal to 30"):
        TranscribeOptions(chunk_s=31)
    with pytest.raises(ValueError, match="batch_size"):
        TranscribeOptions(batch_size=0)
    with pytest.raises(ValueError, match="max_tokens"):
        TranscribeOptions(max_tokens=500)
    with pytest.raises(ValueError, match="backend"):
        TranscribeOptions(backend="whisperx")  # type: ignore[arg-type]
    assert TranscribeOptions(language="yue").language == "yue"


# ---- loader ----------------------------------------------------------------------------------------


def test_loader_finds_the_tiny_turbo_in_the_model_folder(tiny_models):
    import whisper

    from voxflow.tasks.kit.model_sources import MODEL_SOURCES
    from voxflow.tasks.kit.models import ModelNotFound
    from voxflow.tasks.testing.random_models.whisper import TINY_DIMS

    settings = tiny_models.settings("whisper")
    model = load_transcribe_model("turbo", settings.torch_device(), settings.model_dir)
    assert isinstance(model, whisper.model.Whisper) and vars(model.dims) == TINY_DIMS
    assert model is load_transcribe_model("turbo", "cpu", settings.model_dir)  # resident: loaded once
    source = MODEL_SOURCES["transcribe"]
    assert (source.library, source.name) == ("whisper", "turbo")
    assert source.present("turbo", settings) == settings.folder / "whisper" / "turbo.pt"
    assert source.present("large-v3", settings) is None
    with pytest.raises(ModelNotFound, match="'no-such-model' is not in .* and is not an official name"):
        load_transcribe_model("no-such-model", "cpu", settings.model_dir)


# ---- the task in a flow ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Diarization:
    """What transcribe reads of a diarize result (duck-typed: the real one is voxflow.tasks.diarize's)."""

    rttm: ArtifactRef
    exclusive_rttm: ArtifactRef
    speakers: tuple[str, ...]

    @property
    def sha256(self) -> str:
        return self.rttm.sha256


@pytest.mark.usefixtures("prefect_harness")
def test_transcribe_task_in_a_flow_writes_artifacts_and_segment_rows(tmp_path, use_store, tiny_models):
    from prefect import flow

    from voxflow.flows.environment import environment
    from voxflow.storage.catalog import Catalog
    from voxflow.tasks.ingest import IngestOptions, ingest_file
    from voxflow.tasks.transcribe import TranscribeResult, transcribe_audio

    settings = StoreSettings(location=str(tmp_path / "store"))
    catalog = use_store(settings)
    store = open_store(settings)
    info = store.put_bytes("inputs/sample.rttm", RTTM.read_bytes())
    rttm = ArtifactRef(info.uri, info.sha256, info.size_bytes)
    diarization = Diarization(rttm, rttm, ("speaker90", "speaker91"))
    models = tiny_models.settings("whisper")
    options = TranscribeOptions(language="en", max_tokens=MAX_TOKENS, chunk_s=10)

    @flow
    def transcribe_flow(path: str) -> TranscribeResult:
        env = environment(None)  # the store from the environment, cache records on it
        ingested = env.stage(ingest_file)(path, IngestOptions(), env.settings)
        return env.stage(transcribe_audio)(ingested, diarization, options, env.settings, models)

    result = transcribe_flow(str(SAMPLE))
    assert isinstance(result, TranscribeResult) and result.language == "en"
    assert result.segments > 0 and result.words > 0 and set(result.speakers) <= {"speaker90", "speaker91"}
    body = json.loads(store.get_bytes(store.key_of(result.json.uri), result.json.sha256))
    assert len(body["segments"]) == result.segments and result.sha256 == result.json.sha256
    assert all(s["speaker"] in ("speaker90", "speaker91") for s in body["segments"])
    srt = store.get_bytes(store.key_of(result.srt.uri)).decode()
    assert srt.startswith("1\n00:00:") and "[speaker9" in srt
    assert store.get_bytes(store.key_of(result.vtt.uri)).decode().startswith("WEBVTT\n")
    lines = result.transcript_lines(settings)
    assert len(lines) == result.segments and lines[0].startswith("[speaker9")

    segments = Catalog(store).frame("segments").sort_values("index")
    source_sha = result.source_sha256
    assert len(segments) == result.segments and set(segments["stage"]) == {"transcribe"}
    assert set(segments["file_sha256"]) == {source_sha} and set(segments["language"]) == {"en"}
    assert list(segments["text"]) == [s["text"] for s in body["segments"]]
    assert sum(len(w) for w in segments["words"]) == result.words
    assert {w["speaker"] for ws in segments["words"] for w in ws} <= {"speaker90", "speaker91"}
    assert set(segments["artifact_uri"]) == {result.json.uri}
    assert set(segments["model"]) == {"turbo"} and segments["chosen"].all()  # no second pass configured
    artifacts = catalog.frame("artifacts")
    assert set(artifacts[artifacts["stage"] == "transcribe"]["name"]) == {
        "transcript.json",
        "transcript.srt",
        "transcript.vtt",
        "transcript.txt",
        "transcript.tsv",
    }

    again = transcribe_flow(str(SAMPLE))  # same audio, turns and options: a cache hit
    assert again == result
    runs = catalog.frame("stage_runs")
    assert list(runs[runs["stage"] == "transcribe"]["cache_hit"]) == [False, True]
    assert len(Catalog(store).frame("segments")) == result.segments  # same segment ids


@pytest.fixture(scope="module")
def second_model(tiny_models, tmp_path_factory):
    """A second random Whisper (another seed, sharper token logits: a more confident model) in the
    session's model folder, as ``large-v3``."""
    from voxflow.tasks.testing.random_models.whisper import build

    root = tiny_models.build("whisper")
    other = tmp_path_factory.mktemp("other-whisper")
    (path,) = build(other, "tiny", 1)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["model_state_dict"]["decoder.token_embedding.weight"] *= 8
    torch.save(checkpoint, root / "whisper" / "large-v3.pt")
    return load_transcribe_model("large-v3", "cpu", root)


def test_a_second_pass_keeps_the_more_confident_decoding_and_returns_the_other(model, second_model, sample):
    from voxflow.tasks.transcribe import labelled, second_pass

    options = TranscribeOptions(
        language="en", max_tokens=16, chunk_s=10, second_pass_model="large-v3", **GREEDY_NO_SKIP
    )
    chunks = merge_spans(detect_speech(sample, load_vad_model(), options), options.chunk_s)
    first = labelled(decode_chunks(model, sample, chunks, options), "turbo")
    median = float(np.median([s.avg_logprob for s in first.segments]))  # half of the segments are weak
    options = TranscribeOptions(**{**options.__dict__, "min_confidence": median})
    weak = [s for s in first.segments if s.avg_logprob < options.min_confidence]
    assert weak and len(weak) < len(first.segments)  # random weights: some segments weak, some not
    heard = second_pass(first, second_model, sample, options, batch_size=4)
    kept = heard.transcript.segments
    assert all(s in kept for s in first.segments if s not in weak)  # confident segments untouched
    for segment in weak:  # each weak segment: kept (the redo lost) or replaced (and kept as an alternative)
        assert (segment in kept) != (segment in heard.alternatives)
    winners = [s for s in kept if s.model == "large-v3"]
    losers = [s for s in heard.alternatives if s.model == "turbo"]
    assert len(losers) == sum(1 for s in weak if s not in kept)
    assert all(s.model == "large-v3" for s in heard.alternatives if s not in weak)
    print(f"weak {len(weak)}, replaced {len(losers)}, redone segments kept {len(winners)}")
    assert losers and winners  # on these weights the second model wins some segments


@pytest.mark.usefixtures("prefect_harness")
def test_the_second_pass_in_a_flow_keeps_both_decodings_in_the_catalog(tmp_path, use_store, tiny_models, second_model):
    from prefect import flow

    from voxflow.flows.environment import environment
    from voxflow.storage.catalog import Catalog
    from voxflow.tasks.ingest import IngestOptions, ingest_file
    from voxflow.tasks.transcribe import transcribe_audio

    settings = StoreSettings(location=str(tmp_path / "store"))
    use_store(settings)
    models = tiny_models.settings("whisper")
    options = TranscribeOptions(
        language="en", max_tokens=16, chunk_s=10, min_confidence=0.0, second_pass_model="large-v3", **GREEDY_NO_SKIP
    )  # every segment is weak: each is decoded again

    @flow
    def transcribe_flow(path: str):
        env = environment(None)
        ingested = env.stage(ingest_file)(path, IngestOptions(), env.settings)
        return env.stage(transcribe_audio)(ingested, None, options, env.settings, models)

    result = transcribe_flow(str(JFK))
    rows = Catalog(open_store(settings)).frame("segments")
    chosen, others = rows[rows["chosen"]], rows[~rows["chosen"]]
    assert len(chosen) == result.segments and sorted(chosen["index"]) == list(range(result.segments))
    assert len(others) > 0 and others["index"].isna().all()
    assert set(rows["model"]) <= {"turbo", "large-v3"} and "large-v3" in set(chosen["model"])
    assert rows["low_confidence"].all()  # below 0.0, every one
    body = json.loads(open_store(settings).get_bytes(open_store(settings).key_of(result.json.uri)))
    assert [s["text"] for s in body["segments"]] == list(chosen.sort_values("index")["text"])


def test_word_alignment_is_compiled_once_per_machine_not_per_process(tmp_path):
    """Each ``voxflow transcribe`` process compiled whisper's numba DTW again (1.8-2.9 s); the second process
    now loads it from numba's cache."""
    import subprocess
    import sys

    probe = (
        "import numpy as np\n"
        "from whisper import timing\n"
        "from voxflow.tasks.transcribe import _alignment_compiled_once_per_machine\n"
        "_alignment_compiled_once_per_machine()\n"
        "timing.dtw_cpu(np.random.default_rng(0).random((8, 40)))\n"
        "print(sum(timing.dtw_cpu.stats.cache_hits.values()), sum(timing.dtw_cpu.stats.cache_misses.values()))\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [
        subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True) for _ in "12"
    ]
    assert [run.stdout.split() for run in runs] == [["0", "1"], ["1", "0"]]
