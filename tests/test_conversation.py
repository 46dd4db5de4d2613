"""The test conversations' ground truth holds: parts add up to the mix, lines are where the speech is."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from tests.conversation import (
    LEAD_S,
    SCRIPT,
    SCRIPT_3SPK,
    SCRIPT_3SPK_OVERLAP_LINE,
    SCRIPT_OVERLAP_LINE,
    TRAIL_S,
    TRUE_PEAK_DBFS,
    Conversation,
    build_conversation,
    true_peak_dbfs,
)

LINE_RMS_MIN_DBFS = -35.0  # a voice within its line, per channel, after panning and any peak scaling


@pytest.fixture(scope="module", params=["2spk", "3spk"])
def conversation(request) -> Conversation:
    if request.param == "2spk":
        return build_conversation(SCRIPT, overlap_line=SCRIPT_OVERLAP_LINE)
    return build_conversation(SCRIPT_3SPK, overlap_line=SCRIPT_3SPK_OVERLAP_LINE, seed=1)


def rms_dbfs(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def test_shapes_rate_and_timeline(conversation):
    c = conversation
    channels, n = c.mix.shape
    assert (channels, c.sample_rate_hz, c.mix.dtype) == (2, 44_100, np.float32)
    assert c.bed.shape == c.mix.shape and all(v.shape == c.mix.shape for v in c.voices.values())
    assert c.lines[0].start_s == pytest.approx(LEAD_S)
    assert n / c.sample_rate_hz == pytest.approx(max(line.end_s for line in c.lines) + TRAIL_S, abs=1e-4)
    assert [line.start_s for line in c.lines] == sorted(line.start_s for line in c.lines)
    assert [(t.start_s, t.end_s, t.speaker) for t in c.turns()] == [(x.start_s, x.end_s, x.speaker) for x in c.lines]


def test_mix_is_bed_plus_voices(conversation):
    c = conversation
    np.testing.assert_allclose(c.mix, c.bed + sum(c.voices.values()), atol=1e-6)
    assert not np.allclose(c.bed[0], c.bed[1])  # a different content per channel


def test_each_line_holds_its_voice_and_nothing_else_does(conversation):
    c = conversation
    for speaker, voice in c.voices.items():
        inside = np.zeros(voice.shape[1], bool)
        for line in (x for x in c.lines if x.speaker == speaker):
            a, b = round(line.start_s * c.sample_rate_hz), round(line.end_s * c.sample_rate_hz)
            inside[a:b] = True
            assert rms_dbfs(voice[:, a:b]) > LINE_RMS_MIN_DBFS, line
            assert np.abs(voice[:, a]).max() > 0 and np.abs(voice[:, b - 1]).max() > 0, line  # speech edges
        assert not np.any(voice[:, ~inside]), speaker


def test_voices_are_panned_apart(conversation):
    balance = [rms_dbfs(v[0]) - rms_dbfs(v[1]) for v in conversation.voices.values()]
    assert balance[0] > 3 and balance[-1] < -3  # first speaker left, last right


def test_exactly_one_overlap(conversation):
    lines = conversation.lines
    overlaps = [(a, b) for a, b in zip(lines, lines[1:]) if b.start_s < a.end_s]
    assert len(overlaps) == 1
    (a, b) = overlaps[0]
    assert a.speaker != b.speaker and a.end_s - b.start_s == pytest.approx(0.5, abs=1e-4)
    gaps = [b.start_s - a.end_s for a, b in zip(lines, lines[1:]) if b.start_s >= a.end_s]
    assert min(gaps) > 0.4 and max(gaps) < 0.8


def test_peak_stays_below_minus_3_dbfs(conversation):
    assert true_peak_dbfs(conversation.mix) <= TRUE_PEAK_DBFS
    assert 20 * np.log10(np.abs(conversation.mix).max()) < -3.0


def test_write_keeps_float_samples(conversation, tmp_path):
    path = conversation.write(tmp_path / "mix.wav")
    samples, rate_hz = sf.read(path, dtype="float32", always_2d=True)
    assert sf.info(path).subtype == "FLOAT" and rate_hz == conversation.sample_rate_hz
    np.testing.assert_array_equal(samples.T, conversation.mix)


def test_bad_overlap_line_is_refused():
    with pytest.raises(ValueError, match="overlap_line 0"):
        build_conversation(SCRIPT[:2], overlap_line=0, voices={s: lambda text: np.ones(100) for s, _ in SCRIPT})
