"""Decoding, resampling, loudness and the ingest compute functions, on synthetic files."""

from __future__ import annotations

import subprocess
import tracemalloc

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from tests.synth import tone_and_noise, write_audio
from voxflow.tasks.helpers import audio
from voxflow.tasks.ingest import IngestOptions, Preprocessor, ingest_audio, measure, preprocess


@pytest.mark.parametrize(
    "name, subtype, rate, channels",
    [
        ("int16.wav", "PCM_16", 16000, 1),
        ("int24.wav", "PCM_24", 48000, 2),
        ("int32.wav", "PCM_32", 44100, 2),
        ("float.wav", "FLOAT", 22050, 1),
        ("8k.wav", "PCM_16", 8000, 1),
        ("96k.flac", "PCM_24", 96000, 2),
        ("surround.wav", "FLOAT", 48000, 6),
        ("eight.flac", "PCM_16", 32000, 8),
        ("speech.ogg", "VORBIS", 44100, 2),
        ("speech.mp3", "MPEG_LAYER_III", 44100, 2),
    ],
)
def test_decode_formats_rates_and_channels(tmp_path, name, subtype, rate, channels):
    samples = tone_and_noise(channels, rate, 1.0)
    path = write_audio(tmp_path / name, samples, rate, subtype)
    decoded = audio.decode_file(path)
    assert decoded.sample_rate_hz == rate
    assert decoded.channels == channels
    assert decoded.samples.dtype == np.float32
    if subtype in ("VORBIS", "MPEG_LAYER_III"):  # lossy: encoder delay and padding change the length slightly
        assert abs(decoded.duration_s - 1.0) < 0.06
    else:
        assert decoded.frames == samples.shape[1]
        tolerance = {"PCM_16": 1e-4, "PCM_24": 1e-6}.get(subtype, 1e-7)
        np.testing.assert_allclose(decoded.samples, samples, atol=tolerance)


@pytest.mark.parametrize(
    ("name", "rate", "container", "codec"),
    [
        ("voice.m4a", 44100, "M4A", "aac"),
        ("voice.opus", 48000, "OGG", "OPUS"),
        ("voice.webm", 48000, "MATROSKA", "opus"),
    ],
)
def test_decode_m4a_opus_and_webm(tmp_path, name, rate, container, codec):
    samples = tone_and_noise(2, rate, 1.0)
    decoded = audio.decode_file(write_audio(tmp_path / name, samples, rate))
    assert (decoded.format, decoded.subtype, decoded.sample_rate_hz, decoded.channels) == (container, codec, rate, 2)
    assert abs(decoded.duration_s - 1.0) < 0.06
    lag = np.argmax(np.correlate(decoded.samples[0, :8000], samples[0, :4000], "valid"))  # the codec's delay
    same = decoded.samples[:, lag : lag + samples.shape[1] // 2]
    assert np.corrcoef(same[0], samples[0, : same.shape[1]])[0, 1] > 0.9  # the same tone, not noise


def test_bad_inputs_give_one_line_errors_naming_the_file(tmp_path):
    good = write_audio(tmp_path / "good.wav", tone_and_noise(1, 16000, 1.0), 16000, "PCM_16").read_bytes()
    (tmp_path / "truncated.wav").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.wav").write_text("this is a text file, not audio\n" * 20)
    (tmp_path / "headeronly.wav").write_bytes(good[:44])
    expected = {
        "truncated.wav": "truncated",
        "empty.wav": "empty",
        "notes.wav": "not a recognised audio format",
        "headeronly.wav": "truncated",
    }
    for name, reason in expected.items():
        with pytest.raises(audio.AudioDecodeError) as e:
            audio.decode_file(tmp_path / name)
        message = str(e.value)
        assert message.startswith(f"cannot decode '{name}': ") and reason in message
        assert "\n" not in message


def _ffmpeg_tone(path, seconds: float = 3.0) -> bytes:
    """A stereo tone (48 kHz: Opus takes no other) encoded by ffmpeg in the format the suffix names."""
    lavfi = f"sine=f=440:d={seconds}"
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", lavfi, "-ac", "2", "-ar", "48000"]
    subprocess.run([*command, str(path)], check=True)
    return path.read_bytes()


@pytest.mark.parametrize("suffix", ["mp3", "ogg", "opus", "m4a", "aac", "flac", "webm", "wav"])
def test_a_half_copied_file_is_truncated_not_a_shorter_recording(tmp_path, suffix):
    """A copy cut at half its bytes fails in one line, for every container (before: MP3, Opus and WebM
    decoded as a shorter recording, M4A, AAC, FLAC and OGG as 'not a recognised audio format')."""
    whole = _ffmpeg_tone(tmp_path / f"whole.{suffix}")
    assert audio.decode_file(tmp_path / f"whole.{suffix}").duration_s == pytest.approx(3.0, abs=0.06)
    half = tmp_path / f"half.{suffix}"
    half.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(audio.AudioDecodeError) as e:
        audio.decode_file(half)
    message = str(e.value)
    assert message.startswith(f"cannot decode 'half.{suffix}': file is truncated") and "\n" not in message


def test_blocks_give_the_samples_of_one_read(tmp_path):
    """Reading block by block, resampling and measuring give what one whole-file pass gives."""
    samples = tone_and_noise(2, 44100, 7.3, seed=3)
    path = write_audio(tmp_path / "x.flac", samples, 44100, "PCM_24")
    with audio.open_audio(path) as source:
        blocks = list(source.blocks(frames=10_000))
    assert len(blocks) == 33 and all(b.shape[0] == 2 for b in blocks)
    whole = np.concatenate(blocks, axis=1)
    np.testing.assert_array_equal(whole, audio.decode_file(path).samples)
    meter = audio.LoudnessMeter(44100, 2)
    for block in blocks:
        meter.add(block)
    assert meter.integrated() == pytest.approx(audio.integrated_loudness(whole, 44100), abs=1e-9)
    step = Preprocessor(44100, 2, IngestOptions())
    streamed = np.concatenate([*(step(b) for b in blocks), step.flush()], axis=1)
    np.testing.assert_array_equal(streamed, preprocess(whole, 44100, IngestOptions()))


def test_ingest_memory_does_not_grow_with_duration(tmp_path):
    """Ten minutes of 44.1 kHz stereo FLAC (212 MB as float samples) is ingested holding a few MB
    (before: the whole file decoded, measured and resampled in memory, about 1 GB)."""
    source = tmp_path / "long.flac"
    synth = [
        "sox",
        "-n",
        "-r",
        "44100",
        "-c",
        "2",
        "-b",
        "16",
        str(source),
        "synth",
        "600",
        "sine",
        "220",
        "sine",
        "330",
    ]
    subprocess.run(synth, check=True)
    out = tmp_path / "working.wav"
    tracemalloc.start()
    try:
        with open(out, "wb") as f:
            stats, working = ingest_audio(source, source.name, IngestOptions(), f)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40e6, f"peak {peak / 1e6:.0f} MB of Python and numpy allocations"
    assert (stats.frames, working.frames) == (600 * 44100, 600 * 16000)
    assert stats.integrated_lufs == pytest.approx(-3.9, abs=0.1)
    decoded, rate = sf.read(out, frames=16000, dtype="float32")
    assert rate == 16000 and out.stat().st_size == 58 + 600 * 16000 * 4


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000, 96000])
def test_loudness_matches_pyloudnorm_at_any_rate(rate):
    for channels in (1, 2, 5):  # our own K-weighting design = pyloudnorm's filters, at every rate
        samples = tone_and_noise(channels, rate, 3.0, seed=channels)
        reference = pyloudnorm.Meter(rate).integrated_loudness(samples.T.astype(np.float64))
        assert audio.integrated_loudness(samples, rate) == pytest.approx(reference, abs=1e-9)


def test_loudness_edge_cases():
    assert audio.integrated_loudness(np.zeros((1, 16000), np.float32), 16000) is None  # silence
    assert audio.integrated_loudness(tone_and_noise(1, 16000, 0.2), 16000) is None  # shorter than a block
    eight = audio.integrated_loudness(tone_and_noise(8, 16000, 2.0), 16000)
    assert eight is not None and -30 < eight < 0
    # BS.1770's reference: a full-scale 997 Hz sine in one channel reads -3.01 LUFS
    t = np.arange(48000 * 5) / 48000
    sine = np.sin(2 * np.pi * 997 * t).astype(np.float32)[None]
    assert audio.integrated_loudness(sine, 48000) == pytest.approx(-3.01, abs=0.1)


def test_measure_and_preprocess_to_16k_mono():
    samples = tone_and_noise(2, 44100, 2.0)
    decoded = audio.DecodedAudio(samples, 44100, "WAV", "FLOAT")
    stats = measure(decoded)
    assert (stats.sample_rate_hz, stats.channels, stats.frames) == (44100, 2, 88200)
    assert stats.duration_s == pytest.approx(2.0)
    assert stats.peak == pytest.approx(np.abs(samples).max())
    assert stats.peak_dbfs == pytest.approx(20 * np.log10(stats.peak))
    working = preprocess(samples, 44100, IngestOptions())
    assert working.shape == (1, 32000) and working.dtype == np.float32
    # the downmix of two different tones keeps both (resampling preserves band-limited content)
    spectrum = np.abs(np.fft.rfft(working[0]))
    freqs = np.fft.rfftfreq(working.shape[1], 1 / 16000)
    for tone in (220.0, 440.0):
        assert spectrum[np.argmin(np.abs(freqs - tone))] > 50 * np.median(spectrum)
    kept = preprocess(samples, 44100, IngestOptions(sample_rate_hz=22050, mono=False))
    assert kept.shape == (2, 44100)


def test_options_are_validated():
    with pytest.raises(ValueError, match="sample_rate_hz"):
        IngestOptions(sample_rate_hz=100)
    with pytest.raises(ValueError, match="resample_quality"):
        IngestOptions(resample_quality="best")


def test_wav_encoding_is_float32_and_lossless():
    samples = tone_and_noise(1, 16000, 0.5)
    data = audio.encode_wav(samples, 16000)
    info = sf.info(__import__("io").BytesIO(data))
    assert (info.subtype, info.samplerate, info.channels) == ("FLOAT", 16000, 1)
    decoded, rate = audio.decode_wav_bytes(data)
    np.testing.assert_array_equal(decoded, samples)


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_wav_encoding_is_deterministic_and_readable_by_libsndfile_and_ffmpeg(tmp_path, channels):
    """Same samples, same bytes, whenever they are written: artifact checksums depend on audio only."""
    import subprocess
    import time

    samples = tone_and_noise(channels, 22050, 0.3, seed=channels)
    first = audio.encode_wav(samples, 22050)
    time.sleep(1.1)  # libsndfile's own float WAVs differ after a second (their PEAK chunk has a timestamp)
    assert audio.encode_wav(samples, 22050) == first
    decoded, rate = audio.decode_wav_bytes(first)
    assert rate == 22050
    np.testing.assert_array_equal(decoded, samples)
    path = tmp_path / "x.wav"
    path.write_bytes(first)
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=channels,sample_rate,codec_name",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == f"pcm_f32le,22050,{channels}"
