"""Reconstruction on conversations whose truth is known: timing plan, untouched bed, loudness, true peak."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tests.conversation import SCRIPT, SCRIPT_OVERLAP_LINE, build_conversation, espeak, true_peak_dbfs
from voxflow.tasks import reconstruct as rc
from voxflow.tasks.helpers.speakers import Turn
from voxflow.tasks.script import ScriptLine

TARGET = "SPEAKER_00"
NEW_RATE_HZ = 24_000  # the rate the synthesizer speaks at


@pytest.fixture(scope="module")
def conversation():
    return build_conversation(SCRIPT, overlap_line=SCRIPT_OVERLAP_LINE)


def target_lines(conversation, speaker: str = TARGET) -> list[ScriptLine]:
    return [
        ScriptLine(x.line_id, x.speaker, x.start_s, x.end_s, x.text) for x in conversation.lines if x.speaker == speaker
    ]


def replace_voice(conversation, options=rc.ReconstructOptions(), voice="en+f3", texts=None, mix=None):
    """Plan and render the target's lines spoken by another espeak-ng voice, with the true stems."""
    rate = conversation.sample_rate_hz
    lines = target_lines(conversation)
    mix = conversation.mix if mix is None else mix
    vocals = sum(conversation.voices.values())
    accompaniment = mix - vocals
    slots = rc.line_slots(lines, conversation.turns(), TARGET, mix.shape[1] / rate, options)
    new = [espeak(text, voice, NEW_RATE_HZ) for text in (texts or [x.text for x in lines])]
    plans = rc.plan_timing(slots, [round(x.size * rate / NEW_RATE_HZ) for x in new], rate, options.timing)
    stream = ((x, NEW_RATE_HZ) for x in new)
    return slots, plans, rc.render(mix, vocals, accompaniment, rate, plans, slots, stream, options)


def outside(plans, frames: int) -> np.ndarray:
    mask = np.ones(frames, bool)
    for plan in plans:
        start, end = plan.region
        mask[start:end] = False
    return mask


def test_output_keeps_length_rate_channels_and_every_sample_outside_the_target(conversation):
    _, plans, rendered = replace_voice(conversation)
    assert rendered.mix.shape == conversation.mix.shape and rendered.mix.dtype == np.float32
    mask = outside(plans, conversation.mix.shape[1])
    assert mask.mean() > 0.5  # the other speaker, the bed and the gaps
    np.testing.assert_allclose(rendered.mix[:, mask], conversation.mix[:, mask], atol=1e-4)
    other = conversation.voices["SPEAKER_01"]
    assert np.abs(other[:, ~mask]).max() == 0 or all(
        np.abs(other[:, p.start : p.start + p.slot]).max() == 0 for p in plans
    )  # no region takes time from the other speaker's solo speech


def test_target_speech_is_gone_from_its_regions_and_the_new_line_is_there(conversation):
    rate = conversation.sample_rate_hz
    _, plans, rendered = replace_voice(conversation)
    margin = round(0.03 * rate)
    for plan in plans:
        start, end = plan.region[0] + margin, plan.region[1] - margin
        left = rendered.mix[:, start:end] - conversation.bed[:, start:end]  # what replaced the voice
        original = conversation.voices[TARGET][:, start:end]
        correlation = np.sum(left * original) / np.sqrt(np.sum(left**2) * np.sum(original**2))
        assert abs(correlation) < 0.1, (plan.line_id, correlation)
        np.testing.assert_allclose(left, rendered.voice[:, start:end], atol=1e-4)  # the bed plus the new line
        assert np.sqrt(np.mean(rendered.voice[:, start:end] ** 2)) > 0.01


def test_each_new_line_matches_the_loudness_of_the_line_it_replaces(conversation):
    rate = conversation.sample_rate_hz
    _, plans, rendered = replace_voice(conversation, voice="en-gb+m7")
    for plan in plans:
        start, end = plan.region
        new = rc.loudness_lufs(rendered.voice[:, start:end], rate)
        old = rc.loudness_lufs(conversation.voices[TARGET][:, plan.start : plan.start + plan.slot], rate)
        assert abs(new - old) <= 1.0, (plan.line_id, new, old)


def test_the_mix_stays_under_minus_one_dbtp_and_a_hot_input_is_lowered_as_a_whole(conversation):
    _, _, rendered = replace_voice(conversation)
    assert true_peak_dbfs(rendered.mix) <= -1.0 and rendered.global_gain_db == 0.0
    others = np.abs(conversation.voices["SPEAKER_01"]).max(axis=0) > 0  # where the untouched speaker talks
    hot = conversation.mix / np.abs(conversation.mix[:, others]).max() * 0.999  # peaking at 0 dBFS there
    _, _, rendered = replace_voice(conversation, mix=hot)
    assert true_peak_dbfs(rendered.mix) <= -1.0
    assert rendered.global_gain_db < -1.0
    assert rendered.true_peak_dbtp == pytest.approx(true_peak_dbfs(rendered.mix), abs=0.1)


def test_the_overlapped_part_is_kept_by_default_and_attenuated_on_request(conversation):
    rate = conversation.sample_rate_hz
    overlapped = conversation.lines[SCRIPT_OVERLAP_LINE - 1]  # the target line the other speaker cuts into
    slots, plans, rendered = replace_voice(conversation)
    slot = next(s for s in slots if s.line_id == overlapped.line_id)
    assert slot.overlap_s == pytest.approx(0.5, abs=0.01)
    assert slot.end_s <= conversation.lines[SCRIPT_OVERLAP_LINE].start_s + 1e-9  # the slot stops where they start
    joint = slice(round(conversation.lines[SCRIPT_OVERLAP_LINE].start_s * rate), round(overlapped.end_s * rate))
    np.testing.assert_array_equal(rendered.mix[:, joint], conversation.mix[:, joint])
    slots, plans, rendered = replace_voice(conversation, replace(rc.ReconstructOptions(), overlap="attenuate"))
    slot = next(s for s in slots if s.line_id == overlapped.line_id)
    assert slot.end_s == pytest.approx(overlapped.end_s) and slot.attenuate
    kept = rendered.mix[:, joint] - conversation.bed[:, joint] - rendered.voice[:, joint]
    original = sum(conversation.voices.values())[:, joint]
    ratio_db = 20 * np.log10(np.sqrt(np.mean(kept**2)) / np.sqrt(np.mean(original**2)))
    assert ratio_db == pytest.approx(-12.0, abs=1.5)


@pytest.mark.parametrize("backend", ["rubberband", "wsola"])
def test_lines_are_placed_at_exactly_their_planned_length(conversation, backend):
    rate = conversation.sample_rate_hz
    _, plans, rendered = replace_voice(conversation, replace(rc.ReconstructOptions(), stretch_backend=backend))
    for plan in plans:
        assert plan.length + plan.overflow == round(plan.natural / plan.applied_rate)
        start, end = plan.region
        voiced = np.flatnonzero(np.abs(rendered.voice[:, start:end]).max(axis=0) > 0)
        assert voiced[-1] < plan.length  # nothing of the line after its planned end (padding is silence)
        assert voiced[-1] > plan.length - round(0.25 * rate)


def test_a_line_too_long_for_its_room_runs_at_the_cap_and_reports_its_overflow(conversation):
    long_texts = [
        x.text + " And then we talked about it for a very long time after that." for x in target_lines(conversation)
    ]
    _, plans, rendered = replace_voice(conversation, texts=long_texts)
    mask = outside(plans, conversation.mix.shape[1])
    np.testing.assert_allclose(rendered.mix[:, mask], conversation.mix[:, mask], atol=1e-4)
    assert any(p.overflow > 0 for p in plans)
    for plan in plans:
        if plan.overflow:
            assert plan.applied_rate == pytest.approx(1.5) and plan.length == plan.slot + plan.gap


# ---- the timing plan --------------------------------------------------------------------------


def slot(start, end, gap, line_id="x"):
    return rc.Slot(line_id, start, end, gap, 0.0)


def test_required_rate_fills_uses_the_gap_then_speeds_up():
    assert rc.required_rate(80, 100, 50) == pytest.approx(0.8)  # shorter: slowed to fill
    assert rc.required_rate(130, 100, 50) == 1.0  # into the gap, as it is
    assert rc.required_rate(300, 100, 50) == pytest.approx(2.0)  # sped up to end with the gap


def test_plan_clamps_pads_short_lines_and_smooths_neighbours():
    options = rc.TimingOptions()
    slots = [slot(0, 1, 0), slot(2, 3, 0.5), slot(4, 5, 0), slot(6, 7, 0)]
    naturals = [500, 1000, 1400, 1000]  # at 1000 Hz: very short, into the gap, too long, exact
    plans = rc.plan_timing(slots, naturals, 1000, options)
    assert plans[0].applied_rate >= options.min_rate and plans[0].length < plans[0].slot  # slowed, then padded
    assert plans[0].padding == plans[0].slot - plans[0].length
    assert plans[2].planned_rate == pytest.approx(1.4) and plans[2].applied_rate == pytest.approx(1.4)
    rates = [p.applied_rate for p in plans]
    assert all(abs(a - b) <= options.smoothing_step + 1e-9 for a, b in zip(rates, rates[1:]) if a > 1 or b > 1)
    assert plans[1].applied_rate == pytest.approx(1.3) and plans[1].gap_used == 0
    assert all(p.overflow == 0 for p in plans)


def test_slots_stop_at_the_next_onset_minus_the_guard():
    turns = [Turn(0.0, 2.0, "A"), Turn(3.0, 4.0, "B"), Turn(3.5, 6.0, "A")]
    lines = [ScriptLine("l0", "A", 0.0, 2.0, "x"), ScriptLine("l1", "A", 3.5, 6.0, "y")]
    slots = rc.line_slots(lines, turns, "A", 8.0, rc.ReconstructOptions())
    assert slots[0].gap_s == pytest.approx(0.9)  # B starts at 3.0, guard 0.1
    assert (slots[1].start_s, slots[1].end_s) == (4.0, 6.0)  # the part B speaks over is not the slot
    assert slots[1].overlap_s == pytest.approx(0.5) and slots[1].gap_s == pytest.approx(1.9)


def test_true_peak_sees_the_peak_between_samples():
    rate = 48_000
    t = np.arange(rate) / rate
    tone = np.sin(2 * np.pi * rate / 4 * t + np.pi / 4)[None].astype(np.float32)  # samples at ±0.707
    assert np.abs(tone).max() == pytest.approx(0.7071, abs=1e-3)
    assert rc.true_peak(tone, rate) == pytest.approx(1.0, abs=0.02)


def test_options_reject_a_cap_below_the_free_rate():
    with pytest.raises(ValueError, match="max_rate"):
        rc.TimingOptions(free_rate=1.3, max_rate=1.2)
