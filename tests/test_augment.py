"""Training augmentation: speed perturbation, additive noise at a target SNR, SpecAugment masks, and
reproducible per-sample randomness. Small numpy/torch arrays only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.augment import (
    AugmentConfig,
    Augmenter,
    add_noise,
    coloured_noise,
    sample_rng,
    spec_augment,
    speed_perturb,
)
from asr.lengths import SAMPLE_RATE


def sine(freq: float, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def power_spectrum(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)))) ** 2
    return np.fft.rfftfreq(len(samples), 1 / SAMPLE_RATE), spectrum


def peak_hz(samples: np.ndarray, low: float = 0.0, high: float = SAMPLE_RATE / 2) -> float:
    freqs, power = power_spectrum(samples)
    band = (freqs >= low) & (freqs <= high)
    return float(freqs[band][power[band].argmax()])


def snr_db(clean: np.ndarray, mixed: np.ndarray) -> float:
    noise = mixed.astype(np.float64) - clean
    return float(10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2)))


# --- speed perturbation ---------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturb_scales_duration_and_pitch(factor: float) -> None:
    audio = sine(440.0, 1.0)
    out = speed_perturb(audio, factor)
    assert out.dtype == np.float32
    expected = len(audio) / factor
    assert abs(len(out) - expected) <= max(1.0, 0.001 * expected)
    assert abs(peak_hz(out) - 440.0 * factor) <= 3.0
    assert abs(peak_hz(audio) - 440.0) <= 1.0  # the input is untouched


def test_speed_perturb_factor_one_is_identity() -> None:
    audio = sine(440.0, 0.2)
    assert speed_perturb(audio, 1.0) is audio


# --- SpecAugment ----------------------------------------------------------------------------


def features_and_length(
    n_mels: int = 80, total: int = 300, mel_length: int = 217
) -> tuple[torch.Tensor, int]:
    torch.manual_seed(0)
    return torch.randn(n_mels, total), mel_length


def test_spec_augment_masks_counts_widths_and_bounds() -> None:
    cfg = AugmentConfig(spec_time_masks=3, spec_time_width=40, spec_freq_masks=2, spec_freq_width=15)
    features, mel_length = features_and_length()
    original = features.clone()
    for index in range(20):
        out, masks = spec_augment(features, mel_length, cfg, sample_rng(0, 0, index))
        time = [m for m in masks if m[0] == "time"]
        freq = [m for m in masks if m[0] == "freq"]
        assert len(time) == 3 and len(freq) == 2 and len(masks) == 5
        assert all(
            0 <= width <= 40 and start >= 0 and start + width <= mel_length for _, start, width in time
        )
        assert all(0 <= width <= 15 and start >= 0 and start + width <= 80 for _, start, width in freq)
        assert torch.equal(out[:, mel_length:], original[:, mel_length:])  # padding bit-identical
        assert torch.equal(features, original)  # input not modified
        # masked cells hold the valid region's mean; everything else is the input
        fill = original[:, :mel_length].mean()
        masked = torch.zeros_like(out, dtype=torch.bool)
        for kind, start, width in masks:
            if kind == "freq":
                masked[start : start + width, :mel_length] = True
            else:
                masked[:, start : start + width] = True
        assert torch.equal(out[~masked], original[~masked])
        assert torch.all(out[masked] == fill)
    assert out.data_ptr() != features.data_ptr()


def test_spec_augment_short_clip_time_width_capped_by_length() -> None:
    cfg = AugmentConfig(spec_time_masks=5, spec_time_width=40, spec_freq_masks=0)
    features, _ = features_and_length()
    _, masks = spec_augment(features, 7, cfg, sample_rng(0, 0, 0))
    assert len(masks) == 5
    assert all(start + width <= 7 for _, start, width in masks)


@pytest.mark.parametrize(
    "overrides",
    [
        {"spec_time_width": 0, "spec_freq_width": 0},
        {"spec_time_masks": 0, "spec_freq_masks": 0},
    ],
)
def test_spec_augment_zero_widths_or_counts_is_identity(overrides: dict) -> None:
    features, mel_length = features_and_length()
    out, masks = spec_augment(features, mel_length, AugmentConfig(**overrides), sample_rng(0, 0, 0))
    assert torch.equal(out, features)
    assert all(width == 0 for _, _, width in masks)


# --- noise ----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.0, 10.0, 25.0])
@pytest.mark.parametrize("noise_seconds", [0.3, 1.0, 2.5])  # tiled, same length, cropped
def test_add_noise_hits_requested_snr(target: float, noise_seconds: float) -> None:
    rng = np.random.default_rng(0)
    audio = sine(300.0, 1.0, amplitude=0.3)
    noise = rng.standard_normal(int(noise_seconds * SAMPLE_RATE)).astype(np.float32) * 0.05
    mixed = add_noise(audio, noise, target)
    assert mixed.dtype == np.float32 and mixed.shape == audio.shape
    assert abs(snr_db(audio, mixed) - target) < 0.1


def test_add_noise_leaves_silent_audio_unchanged() -> None:
    silent = np.zeros(1600, dtype=np.float32)
    out = add_noise(silent, coloured_noise(1600, "white", np.random.default_rng(0)), 10.0)
    assert np.array_equal(out, silent)


def band_power(samples: np.ndarray, low: float, high: float) -> float:
    freqs, power = power_spectrum(samples)
    return float(power[(freqs >= low) & (freqs < high)].mean())


@pytest.mark.parametrize("kind", ["white", "pink", "brown"])
def test_coloured_noise_unit_rms(kind: str) -> None:
    noise = coloured_noise(32_000, kind, np.random.default_rng(1))
    assert noise.dtype == np.float32 and noise.shape == (32_000,)
    assert abs(np.sqrt(np.mean(noise.astype(np.float64) ** 2)) - 1.0) < 1e-4


def test_coloured_noise_spectral_slopes() -> None:
    rng = np.random.default_rng(2)
    # per-bin power, low band (50-200 Hz) over high band (2-6 kHz): ~1 white, ~20 pink, ~400 brown
    ratio = {}
    for kind in ("white", "pink", "brown"):
        noise = coloured_noise(4 * SAMPLE_RATE, kind, rng)
        ratio[kind] = band_power(noise, 50, 200) / band_power(noise, 2000, 6000)
    assert 0.7 < ratio["white"] < 1.4
    assert ratio["pink"] > 5
    assert ratio["brown"] > 10 * ratio["pink"]


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"speed_factors": [0.9, 0.0]}, "speed_factors"),
        ({"speed_factors": [-1.1]}, "speed_factors"),
        ({"snr_db": [30.0, 10.0]}, "snr_db"),
        ({"noise_prob": 1.5}, "noise_prob"),
        ({"spec_prob": -0.1}, "spec_prob"),
        ({"noise_types": ["white", "blue"]}, "noise_types"),
        ({"spec_time_width": -1}, "spec_time_width"),
    ],
)
def test_config_validation_names_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ValueError, match=f"augment.{key}"):
        AugmentConfig(**overrides)


def test_config_defaults_are_valid_and_off() -> None:
    cfg = AugmentConfig()
    assert cfg.enabled is False and cfg.speed_factors == [0.9, 1.0, 1.1] and cfg.snr_db == [10.0, 30.0]
    assert AugmentConfig().speed_factors is not cfg.speed_factors  # no shared mutable default


# --- Augmenter ------------------------------------------------------------------------------


def full_config(**overrides) -> AugmentConfig:
    return AugmentConfig(
        **{"enabled": True, "speed_prob": 1.0, "noise_prob": 1.0, "snr_db": [5.0, 15.0], **overrides}
    )


def test_augmenter_is_deterministic_per_sample() -> None:
    augment = Augmenter(full_config(), seed=7)
    audio = sine(440.0, 0.5)
    first = augment(audio, sample_rng(7, 3, 11))
    again = augment(audio, augment.rng(3, 11))
    other = augment(audio, sample_rng(7, 3, 12))
    assert np.array_equal(first, again)
    assert first.shape != other.shape or not np.allclose(first, other)
    features, mel_length = features_and_length()
    assert torch.equal(
        augment.features(features, mel_length, sample_rng(7, 3, 11)),
        augment.features(features, mel_length, sample_rng(7, 3, 11)),
    )


def test_augmenter_disabled_is_identity() -> None:
    augment = Augmenter(full_config(enabled=False))
    audio = sine(440.0, 0.5)
    features, mel_length = features_and_length()
    assert augment(audio, sample_rng(0, 0, 0)) is audio
    assert augment.features(features, mel_length, sample_rng(0, 0, 0)) is features


def test_augmenter_applies_speed_and_noise() -> None:
    augment = Augmenter(full_config(speed_factors=[1.1], snr_db=[10.0, 10.0]))
    audio = sine(440.0, 1.0)
    out = augment(audio, sample_rng(0, 0, 0))
    assert abs(len(out) - len(audio) / 1.1) <= 1
    assert abs(peak_hz(out) - 484.0) <= 3.0
    assert abs(snr_db(speed_perturb(audio, 1.1), out) - 10.0) < 0.1


def test_augmenter_noise_manifest(tmp_path: Path) -> None:
    # two clips, 1 kHz and 3 kHz sines with a whole number of cycles, so tiling them is seamless
    (tmp_path / "noise").mkdir()
    sf.write(tmp_path / "noise" / "a.wav", sine(1000.0, 0.5, 0.2), SAMPLE_RATE)
    sf.write(tmp_path / "b.wav", sine(3000.0, 0.25, 0.2), SAMPLE_RATE)
    manifest = tmp_path / "noise.jsonl"
    rows = [{"audio": "noise/a.wav"}, {"audio": str(tmp_path / "b.wav")}]  # relative and absolute
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    augment = Augmenter(full_config(speed_factors=[1.0], snr_db=[0.0, 0.0], noise_manifest=str(manifest)))
    audio = sine(200.0, 1.0, 0.3)
    peaks = set()
    for index in range(20):
        out = augment(audio, sample_rng(0, 0, index))
        assert abs(snr_db(audio, out)) < 0.1
        noise_peak = peak_hz(out, low=500.0)  # the strongest component above the speech sine
        assert min(abs(noise_peak - 1000.0), abs(noise_peak - 3000.0)) <= 2.0
        peaks.add(round(noise_peak, -3))
    assert peaks == {1000.0, 3000.0}  # both clips get drawn


def test_augmenter_missing_noise_manifest_fails_early(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="augment.noise_manifest"):
        Augmenter(full_config(noise_manifest=str(tmp_path / "missing.jsonl")))
