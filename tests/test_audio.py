"""Audio loading: decode, mix to mono, resample to 16 kHz, and reject unusable input with an
AudioError that names the input and the problem."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import manifest_rows

from asr.audio import SAMPLE_RATE, AudioError, AudioWarning, has_speech, load_audio, to_mono_16k
from asr.lengths import mel_frames


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


@pytest.mark.shared
def test_real_opus_clip(shared_data: Path) -> None:
    row = manifest_rows(shared_data / "speechocean762.dev.jsonl", 1)[0]
    audio = load_audio(shared_data / row["audio"])
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == round(row["duration"] * SAMPLE_RATE)
    assert 0.01 < np.sqrt(np.mean(audio**2)) < 0.5 and np.abs(audio).max() <= 1.0
    # raw bytes of the same file decode to the same samples
    np.testing.assert_array_equal(load_audio((shared_data / row["audio"]).read_bytes()), audio)


def test_stereo_wav_is_mixed_to_the_mean(tmp_path: Path) -> None:
    left, right = sine(300, 1.0, SAMPLE_RATE, 0.4), sine(700, 1.0, SAMPLE_RATE, 0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    audio = load_audio(path)
    assert audio.shape == (SAMPLE_RATE,)
    np.testing.assert_allclose(audio, (left + right) / 2, atol=1e-6)


def test_arrays_in_either_layout_are_mixed_the_same() -> None:
    left, right = sine(300, 0.5, SAMPLE_RATE), sine(500, 0.5, SAMPLE_RATE)
    channels_first = load_audio(np.stack([left, right]), SAMPLE_RATE)
    channels_last = load_audio(np.stack([left, right], axis=1), SAMPLE_RATE)
    np.testing.assert_array_equal(channels_first, channels_last)
    np.testing.assert_allclose(channels_first, (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("rate", [44_100, 8_000, 22_050])
def test_other_rates_are_resampled(tmp_path: Path, rate: int) -> None:
    seconds, freq = 2.0, 440.0
    path = tmp_path / f"tone_{rate}.wav"
    sf.write(path, sine(freq, seconds, rate), rate, subtype="PCM_16")
    audio = load_audio(path)
    assert audio.dtype == np.float32
    assert abs(len(audio) - seconds * SAMPLE_RATE) <= 1
    assert abs(peak_hz(audio) - freq) <= 1.0  # FFT bin width is 0.5 Hz over 2 s
    assert abs(np.sqrt(np.mean(audio**2)) - 0.5 / np.sqrt(2)) < 0.01  # amplitude preserved


def test_integer_pcm_arrays_are_scaled() -> None:
    pcm = (sine(440, 0.5, SAMPLE_RATE) * 32767).astype(np.int16)
    audio = load_audio(pcm, SAMPLE_RATE)
    assert audio.dtype == np.float32
    np.testing.assert_allclose(audio, pcm / 32768.0, atol=1e-7)


def test_array_needs_a_sampling_rate() -> None:
    with pytest.raises(AudioError, match="sampling_rate is required"):
        load_audio(np.zeros(16000, np.float32))


def test_mel_frames() -> None:
    assert mel_frames(16000) == 100 and mel_frames(53760) == 336 and mel_frames(159) == 0


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"nope\.wav: file not found"):
        load_audio(tmp_path / "nope.wav")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.touch()
    with pytest.raises(AudioError, match=r"empty\.wav: empty file \(0 bytes\)"):
        load_audio(path)


def test_empty_bytes() -> None:
    with pytest.raises(AudioError, match="<bytes>: empty input"):
        load_audio(b"")


def test_text_file_named_wav(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioError, match=r"notes\.wav: cannot decode audio"):
        load_audio(path)


def test_non_audio_bytes() -> None:
    with pytest.raises(AudioError, match="<bytes>: cannot decode audio"):
        load_audio(b"this is not audio" * 10)


def test_zero_length_array() -> None:
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(np.zeros(0, np.float32), SAMPLE_RATE)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_array(bad: float) -> None:
    audio = sine(440, 1.0, SAMPLE_RATE)
    audio[100] = bad
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(audio, SAMPLE_RATE)


def test_too_short_clip(tmp_path: Path) -> None:
    path = tmp_path / "blip.flac"
    sf.write(path, sine(440, 0.05, SAMPLE_RATE), SAMPLE_RATE)
    with pytest.raises(AudioError, match=r"blip\.flac: clip is 0\.050 s long, shorter than 0\.1 s"):
        load_audio(path)


def test_too_long_clip(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    sf.write(path, sine(440, 3.0, SAMPLE_RATE), SAMPLE_RATE)
    with pytest.raises(AudioError, match=r"long\.wav: clip is 3\.0 s long, over the 2\.5 s limit"):
        load_audio(path, max_seconds=2.5)
    assert len(load_audio(path, max_seconds=3.0)) == 3 * SAMPLE_RATE


def test_bad_shape_and_rate() -> None:
    with pytest.raises(AudioError, match=r"clip\.npy: expected 1-D or 2-D audio"):
        to_mono_16k(np.zeros((2, 2, 100), np.float32), SAMPLE_RATE, "clip.npy")
    with pytest.raises(AudioError, match="invalid sample rate 0"):
        load_audio(np.zeros(1000, np.float32), 0)


# --------------------------------------------------------------------------- one validation path


def test_directory_is_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="is a directory, not an audio file"):
        load_audio(tmp_path)


def test_zero_frame_wav_is_empty_not_nan(tmp_path: Path) -> None:
    path = tmp_path / "none.wav"
    sf.write(path, np.zeros((0, 2), np.float32), SAMPLE_RATE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy "mean of empty slice" on the way
        with pytest.raises(AudioError, match=r"none\.wav: no audio samples"):
            load_audio(path)


def test_undecodable_file_gives_one_error_and_no_library_warnings(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp3"
    path.write_text("this is not audio\n" * 20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(AudioError, match=r"notes\.mp3: cannot decode audio"):
            load_audio(path)
    assert not caught, [str(w.message) for w in caught]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros(0, np.float32), "no audio samples"),
        (np.full(16000, np.nan, np.float32), "NaN or infinite"),
        (np.full(16000, np.inf, np.float32), "NaN or infinite"),
        (np.zeros((2, 2, 100), np.float32), "expected 1-D or 2-D audio"),
        (np.zeros(16000, bool), "expected float or integer PCM samples"),
        ([0.0] * 16000, "expected a path, file bytes or a numpy array, got list"),
    ],
)
def test_bad_arrays_are_rejected_by_name(bad, message: str) -> None:
    with pytest.raises(AudioError, match=rf"<array>: .*{message}"):
        load_audio(bad, SAMPLE_RATE)


def test_stereo_arrays_either_layout_and_torch() -> None:
    import torch

    left = sine(440, 0.5, SAMPLE_RATE)
    stereo = np.stack([left, left])
    np.testing.assert_allclose(load_audio(stereo, SAMPLE_RATE), left, atol=1e-7)
    np.testing.assert_allclose(load_audio(stereo.T, SAMPLE_RATE), left, atol=1e-7)
    np.testing.assert_allclose(load_audio(torch.from_numpy(left), SAMPLE_RATE), left)


def test_unsigned_pcm_is_centred() -> None:
    pcm = np.full(8000, 128, np.uint8)
    assert np.abs(load_audio(pcm, SAMPLE_RATE)).max() == 0.0


def test_out_of_range_samples_warn() -> None:
    loud = sine(440, 0.5, SAMPLE_RATE) * 1e6
    with pytest.warns(AudioWarning, match="far outside"):
        load_audio(loud, SAMPLE_RATE)


# --------------------------------------------------------------------------- no-speech gate


def _non_speech() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    return {
        "tone": 0.3 * np.sin(2 * np.pi * 440 * t),
        "chirp": 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t),
        "hum": 0.2 * np.sin(2 * np.pi * 50 * t) + 0.1 * np.sin(2 * np.pi * 100 * t),
        "chord": sum(0.1 * np.sin(2 * np.pi * f * t) for f in (262, 330, 392)),
        "white noise": 0.1 * rng.standard_normal(len(t)),
        "silence": np.zeros(len(t)),
        "95 s tone": 0.3 * np.sin(2 * np.pi * 440 * np.arange(95 * SAMPLE_RATE) / SAMPLE_RATE),
    }


@pytest.mark.parametrize("kind", list(_non_speech()))
def test_stationary_sound_has_no_speech(kind: str) -> None:
    assert not has_speech(_non_speech()[kind].astype(np.float32))


def test_synthetic_speech_has_speech() -> None:
    from asr.synth import synthesize

    assert has_speech(synthesize("the quick brown fox jumps over the lazy dog"))


@pytest.mark.shared
def test_no_dev_clip_is_gated(shared_data: Path) -> None:
    """Every 7th clip of both dev sets passes (all 1,899 did when the bound was chosen)."""
    import json

    for name in ("speechocean762.dev.jsonl", "librispeech.dev.jsonl"):
        rows = [json.loads(line) for line in (shared_data / name).read_text().splitlines()][::7]
        assert all(has_speech(load_audio(shared_data / r["audio"])) for r in rows), name
