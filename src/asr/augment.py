"""On-the-fly training augmentation, run in DataLoader workers before the frozen encoder.

The encoder is frozen, so the projector only ever sees what the data pipeline feeds it: without
augmentation it learns one speaking rate and one (clean) recording condition. Three cheap,
standard perturbations widen that:

* speed perturbation of the waveform (Kaldi/sox ``speed``: tempo and pitch change together),
* additive noise at a random SNR (generated white/pink/brown noise, or clips from a manifest),
* SpecAugment time and frequency masks on the log-mel features.

Every random draw comes from the ``np.random.Generator`` passed in, never from global state, so a
worker can rebuild the exact augmentation of a sample from ``sample_rng(seed, epoch, index)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "NOISE_TYPES",
    "AugmentConfig",
    "Augmenter",
    "add_noise",
    "coloured_noise",
    "read_noise_manifest",
    "sample_rng",
    "spec_augment",
    "speed_perturb",
]

NOISE_TYPES = ("white", "pink", "brown")
# power spectrum ~ 1/f**exponent: white 0, pink 1, brown (Brownian / red) 2
_NOISE_EXPONENT = {"white": 0.0, "pink": 1.0, "brown": 2.0}
_NOISE_CACHE_CLIPS = 32  # decoded noise clips each worker keeps (a noise set may be hours long)


@dataclass
class AugmentConfig:
    """The ``augment`` config group. Off by default: evaluation and old runs see clean data.

    enabled: master switch; when False :class:`Augmenter` passes everything through unchanged.
    speed_factors: speed factors to draw from (0.9 = 10% slower and longer; 1.0 = unchanged).
    speed_prob: probability of drawing a speed factor at all (1.0 in the list also means unchanged).
    noise_prob: probability of adding noise to a clip.
    snr_db: [low, high]; the SNR (dB, from RMS) is drawn uniformly in this range.
    noise_types: generated noise colours to draw from ("white", "pink", "brown").
    noise_manifest: JSONL of noise clips (``audio`` relative to the manifest's folder or
        absolute); when set, noise comes from these files instead of being generated.
    spec_time_masks / spec_time_width: number of SpecAugment time masks and their maximum width
        in frames (10 ms each).
    spec_freq_masks / spec_freq_width: number of frequency masks and their maximum width in mel bins.
    spec_prob: probability of applying SpecAugment to a clip's features.
    """

    enabled: bool = False
    speed_factors: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])
    speed_prob: float = 1.0
    noise_prob: float = 0.5
    snr_db: list[float] = field(default_factory=lambda: [10.0, 30.0])
    noise_types: list[str] = field(default_factory=lambda: list(NOISE_TYPES))
    noise_manifest: str | None = None
    spec_time_masks: int = 2
    spec_time_width: int = 40
    spec_freq_masks: int = 2
    spec_freq_width: int = 15
    spec_prob: float = 1.0

    def __post_init__(self) -> None:
        snr = list(self.snr_db)
        checks = {
            "speed_factors": len(self.speed_factors) > 0 and all(f > 0 for f in self.speed_factors),
            "speed_prob": 0.0 <= self.speed_prob <= 1.0,
            "noise_prob": 0.0 <= self.noise_prob <= 1.0,
            "snr_db": len(snr) == 2 and snr[0] <= snr[1],
            # an empty list is fine only when noise never needs generating
            "noise_types": set(self.noise_types) <= set(NOISE_TYPES)
            and (len(self.noise_types) > 0 or self.noise_manifest is not None or self.noise_prob == 0),
            "spec_time_masks": self.spec_time_masks >= 0,
            "spec_time_width": self.spec_time_width >= 0,
            "spec_freq_masks": self.spec_freq_masks >= 0,
            "spec_freq_width": self.spec_freq_width >= 0,
            "spec_prob": 0.0 <= self.spec_prob <= 1.0,
        }
        expected = {
            "speed_factors": "a non-empty list of positive factors",
            "snr_db": "[low, high] with low <= high",
            "noise_types": f"a non-empty subset of {list(NOISE_TYPES)}",
        }
        for key, ok in checks.items():
            if not ok:
                want = expected.get(key, "a probability in [0, 1]" if key.endswith("prob") else ">= 0")
                raise ValueError(f"augment.{key}: invalid value {getattr(self, key)!r} (expected {want})")


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample in one epoch: independent of worker count and load order, so
    an augmented batch can be reproduced exactly."""
    return np.random.default_rng([seed, epoch, index])


def speed_perturb(audio: np.ndarray, factor: float) -> np.ndarray:
    """Resample so the clip plays ``factor`` times faster (duration ``len / factor``, pitch times
    ``factor``), as Kaldi's and sox's ``speed`` do.

    The factor is approximated by a fraction with denominator <= 100 (exact for 0.9, 1.1, ...) so
    polyphase resampling stays cheap. A factor that rounds to 1 returns ``audio`` itself (the
    same object, not a copy); otherwise a new float32 array.
    """
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    ratio = Fraction(factor).limit_denominator(100)
    if ratio == 1:
        return audio
    from scipy.signal import resample_poly

    # n samples at the new speed last n / factor: upsample by the denominator, down by the numerator
    out = resample_poly(np.asarray(audio, dtype=np.float32), ratio.denominator, ratio.numerator)
    return out.astype(np.float32, copy=False)


def coloured_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of white, pink (1/f power) or brown (1/f^2 power) noise at unit RMS, float32.

    White Gaussian noise is shaped in the frequency domain, which needs no filter design and has
    the exact slope at every frequency. The DC bin is dropped so coloured noise has no offset.
    """
    if kind not in _NOISE_EXPONENT:
        raise ValueError(f"noise kind {kind!r}: expected one of {list(NOISE_TYPES)}")
    if n < 0:
        raise ValueError(f"noise length must be >= 0, got {n}")
    noise = rng.standard_normal(n)
    if kind != "white" and n >= 2:  # one sample has no spectrum to shape
        spectrum = np.fft.rfft(noise)
        freqs = np.fft.rfftfreq(n)
        scale = np.zeros_like(freqs)
        scale[1:] = freqs[1:] ** (-_NOISE_EXPONENT[kind] / 2)  # amplitude ~ power ** 0.5
        noise = np.fft.irfft(spectrum * scale, n=n)
    rms = np.sqrt(np.mean(noise**2)) if n else 0.0
    return (noise / rms if rms > 0 else noise).astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``audio`` plus ``noise`` (tiled or cropped to its length) scaled to ``snr_db`` dB below it
    (by RMS). Silent audio, or silent noise, comes back unchanged: no SNR is defined. The mix is
    not clipped: the log-mel front end does not need [-1, 1], and clipping would skew the SNR.
    """
    if noise.size == 0:
        raise ValueError("add_noise: empty noise")
    audio_rms = _rms(audio)
    noise = np.resize(noise, audio.shape)  # repeats the clip cyclically, or crops it
    noise_rms = _rms(noise)
    if audio_rms == 0 or noise_rms == 0:
        return audio.astype(np.float32, copy=False)
    gain = audio_rms / (noise_rms * 10 ** (snr_db / 20))
    return (audio.astype(np.float64) + gain * noise).astype(np.float32)


def spec_augment(
    features: torch.Tensor, mel_length: int, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, list[tuple[str, int, int]]]:
    """SpecAugment (Park et al., 2019) frequency and time masks on (n_mels, T) log-mel features.

    Only the valid frames ``[:, :mel_length]`` are touched; padding stays bit-identical, so the
    encoder's view of padding does not depend on augmentation. Masked values become the mean of
    the valid region, the clip's own typical level, rather than a constant that would stand out
    as a signal of its own. Returns a new tensor (the input is not modified) and the masks drawn, as ``(kind, start, width)`` with
    kind "freq" (mel bins) or "time" (frames); widths may be 0.
    """
    n_mels, total = features.shape
    if not 0 <= mel_length <= total:
        raise ValueError(f"mel_length {mel_length} outside [0, {total}]")
    out = features.clone()
    if mel_length == 0:  # nothing valid to mask
        return out, []
    fill = features[:, :mel_length].mean()
    masks: list[tuple[str, int, int]] = []
    for _ in range(cfg.spec_freq_masks):
        width = int(rng.integers(0, min(cfg.spec_freq_width, n_mels) + 1))
        start = int(rng.integers(0, n_mels - width + 1))
        out[start : start + width, :mel_length] = fill
        masks.append(("freq", start, width))
    for _ in range(cfg.spec_time_masks):
        width = int(rng.integers(0, min(cfg.spec_time_width, mel_length) + 1))
        start = int(rng.integers(0, mel_length - width + 1))
        out[:, start : start + width] = fill
        masks.append(("time", start, width))
    return out, masks


def read_noise_manifest(path: str | Path) -> list[str]:
    """Noise clip paths from a JSONL manifest: one ``{"audio": ...}`` per line, relative to the
    manifest's folder or absolute. Errors name ``augment.noise_manifest`` and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"augment.noise_manifest: {path} not found")
    clips = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            audio = json.loads(line).get("audio")
        except (json.JSONDecodeError, AttributeError) as err:
            raise ValueError(f"augment.noise_manifest: {path}:{n}: not a JSON object ({err})") from err
        if not audio:
            raise ValueError(f"augment.noise_manifest: {path}:{n}: missing 'audio' field")
        clip = Path(audio)
        clips.append(str(clip if clip.is_absolute() else path.parent / clip))
    if not clips:
        raise ValueError(f"augment.noise_manifest: {path} lists no clips")
    return clips


@lru_cache(maxsize=_NOISE_CACHE_CLIPS)
def _load_noise(path: str) -> np.ndarray:
    from asr.audio import load_audio

    return load_audio(path)


class Augmenter:
    """Applies an :class:`AugmentConfig` to waveforms (speed, noise) and log-mel features
    (SpecAugment). With ``enabled`` False both calls return their input, so the data pipeline can
    always call it. Holds no random state: each call draws from the generator it is given
    (``self.rng(epoch, index)`` for the per-sample one).

    Speed perturbation changes the clip's length: compute mel lengths after augmenting, and mind
    that a slowed-down clip may no longer fit the 30 s Whisper window.
    """

    def __init__(self, cfg: AugmentConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed
        # read the manifest now so a bad path fails before training, not in a worker
        self.noise_clips = read_noise_manifest(cfg.noise_manifest) if cfg.noise_manifest else None

    def rng(self, epoch: int, index: int) -> np.random.Generator:
        """The generator for sample ``index`` in ``epoch`` under this augmenter's seed."""
        return sample_rng(self.seed, epoch, index)

    def __call__(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Speed perturbation (with ``speed_prob``), then noise (with ``noise_prob``)."""
        cfg = self.cfg
        if not cfg.enabled:
            return audio
        if rng.random() < cfg.speed_prob:
            audio = speed_perturb(audio, float(cfg.speed_factors[rng.integers(len(cfg.speed_factors))]))
        if rng.random() < cfg.noise_prob:
            snr_db = float(rng.uniform(cfg.snr_db[0], cfg.snr_db[1]))
            audio = add_noise(audio, self.noise(len(audio), rng), snr_db)
        return audio

    def noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """About ``n`` samples of noise: a random manifest clip from a random offset (``add_noise``
        tiles or crops it), or generated noise of a random colour."""
        if self.noise_clips is None:
            return coloured_noise(n, self.cfg.noise_types[rng.integers(len(self.cfg.noise_types))], rng)
        clip = _load_noise(self.noise_clips[rng.integers(len(self.noise_clips))])
        return np.roll(clip, -int(rng.integers(len(clip))))

    def features(self, features: torch.Tensor, mel_length: int, rng: np.random.Generator) -> torch.Tensor:
        """SpecAugment with probability ``spec_prob``; padding beyond ``mel_length`` is untouched."""
        if not self.cfg.enabled or rng.random() >= self.cfg.spec_prob:
            return features
        return spec_augment(features, mel_length, self.cfg, rng)[0]
