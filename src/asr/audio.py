"""Audio in: decode a file (or take an array), mix to mono, resample to 16 kHz, validate.

The one validation path for files, bytes, arrays, the processor, the pipeline and training: every
failure raises :class:`AudioError` naming the input and what is wrong, so a data loader can count
and skip it and a user sees at once which input is broken. Decoders' own warnings are not passed
on: their reason becomes part of that one-line error.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.lengths import HOP_LENGTH, SAMPLE_RATE, WHISPER_WINDOW_SECONDS

__all__ = [
    "HOP_LENGTH",
    "SAMPLE_RATE",
    "WHISPER_WINDOW_SECONDS",
    "AudioError",
    "AudioWarning",
    "has_speech",
    "is_silent",
    "load_audio",
]

MIN_SECONDS = 0.1
SILENCE_RMS = 1e-3  # -60 dBFS: below this a clip holds no speech worth decoding or training on
# Stationary sound (a tone, hum, a chord, steady noise) keeps its loudness from one 20 ms frame to
# the next; speech does not. Over the 14,635 clips in ../shared/data the loud (95th percentile) and
# quiet (10th) frames of a clip differ by at least 3.95 dB (a 0.2 s FSDD digit; 12.9 dB but for
# FSDD); tones, hum, chords, chirps and white noise stay under 2 dB.
MIN_SPEECH_RANGE_DB = 3.0
MAX_PEAK = 4.0  # float samples beyond this are not audio in [-1, 1] (int16 PCM passed as float, say)


class AudioError(ValueError):
    """Unusable audio; the message names the source and the problem."""


class AudioWarning(UserWarning):
    """Usable but suspicious audio (e.g. samples far outside [-1, 1])."""


def _decode(path: Path) -> tuple[np.ndarray, int]:
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return data.T, rate
    except (sf.LibsndfileError, RuntimeError, TypeError) as sf_err:
        try:  # formats libsndfile lacks (mp3 on old builds, m4a): librosa's audioread fallback
            import librosa

            with warnings.catch_warnings():  # its deprecation notices and "trying audioread"
                warnings.simplefilter("ignore")
                data, rate = librosa.load(str(path), sr=None, mono=False)
            return np.atleast_2d(data).astype(np.float32), int(rate)
        except Exception as err:  # noqa: BLE001 - report both decoders' reasons
            reason = str(err) or type(err).__name__
            raise AudioError(f"{path}: cannot decode audio ({sf_err}; fallback: {reason})") from err


def _as_float32(samples: np.ndarray, name: str) -> np.ndarray:
    """float32 samples in [-1, 1] from a numpy array or torch tensor of float or PCM samples."""
    if hasattr(samples, "detach"):  # a torch tensor
        samples = samples.detach().cpu().numpy()
    if not isinstance(samples, np.ndarray):
        raise AudioError(f"{name}: expected a numpy array of samples, got {type(samples).__name__}")
    if np.issubdtype(samples.dtype, np.signedinteger):
        samples = samples / float(-np.iinfo(samples.dtype).min)
    elif np.issubdtype(samples.dtype, np.unsignedinteger):  # offset PCM (8-bit WAV)
        half = float(np.iinfo(samples.dtype).max // 2 + 1)
        samples = samples / half - 1.0
    elif not np.issubdtype(samples.dtype, np.floating):
        raise AudioError(f"{name}: expected float or integer PCM samples, got dtype {samples.dtype}")
    return samples.astype(np.float32, copy=False)


def to_mono_16k(samples: np.ndarray, rate: int, name: str = "<array>") -> np.ndarray:
    """Mix channels down and resample to 16 kHz; ``samples`` is (n,) or (channels, n), float in
    [-1, 1] or integer PCM (scaled to [-1, 1), as soundfile does)."""
    samples = _as_float32(samples, name)
    if samples.size == 0:
        raise AudioError(f"{name}: no audio samples")
    if samples.ndim == 2:
        # accept (n, channels) as well as (channels, n): channels is the short axis
        if samples.shape[0] > samples.shape[1]:
            samples = samples.T
        samples = samples.mean(axis=0)
    elif samples.ndim != 1:
        raise AudioError(f"{name}: expected 1-D or 2-D audio, got shape {samples.shape}")
    if rate <= 0:
        raise AudioError(f"{name}: invalid sample rate {rate}")
    if rate != SAMPLE_RATE and samples.size:
        import librosa

        samples = librosa.resample(samples, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    return np.ascontiguousarray(samples, dtype=np.float32)


def validate(samples: np.ndarray, name: str = "<array>", max_seconds: float | None = None) -> np.ndarray:
    """Reject audio that cannot be transcribed meaningfully: empty, NaN/inf, too short or too long;
    warn (:class:`AudioWarning`) when samples lie far outside [-1, 1]."""
    if samples.size == 0:
        raise AudioError(f"{name}: no audio samples")
    if not np.isfinite(samples).all():
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    peak = float(np.abs(samples).max())
    if peak > MAX_PEAK:
        warnings.warn(
            f"{name}: samples reach {peak:.3g}, far outside [-1, 1] (float audio is expected in [-1, 1]; "
            "integer PCM is scaled for you); transcribing it as given",
            AudioWarning,
            stacklevel=3,
        )
    seconds = samples.size / SAMPLE_RATE
    if seconds < MIN_SECONDS:
        raise AudioError(f"{name}: clip is {seconds:.3f} s long, shorter than {MIN_SECONDS} s")
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError(f"{name}: clip is {seconds:.1f} s long, over the {max_seconds:g} s limit")
    return samples


def load_audio(
    source: str | Path | bytes | np.ndarray,
    sampling_rate: int | None = None,
    max_seconds: float | None = None,
    name: str = "<array>",
) -> np.ndarray:
    """Load a path, raw file bytes or an array as validated 16 kHz mono float32.

    Arrays (numpy or torch; float in [-1, 1] or integer PCM, (n,) or (channels, n)) need
    ``sampling_rate`` and are called ``name`` in errors; files carry their own rate and name.
    Stereo is averaged, other rates are resampled, and anything unusable raises :class:`AudioError`.
    """
    if isinstance(source, np.ndarray) or hasattr(source, "detach"):
        if sampling_rate is None:
            raise AudioError(f"{name}: sampling_rate is required for raw arrays")
        return validate(to_mono_16k(source, sampling_rate, name), name, max_seconds)
    if not isinstance(source, str | Path | bytes):
        raise AudioError(f"{name}: expected a path, file bytes or a numpy array, got {type(source).__name__}")
    if isinstance(source, bytes):
        name = "<bytes>"
        if not source:
            raise AudioError(f"{name}: empty input")
        try:
            data, rate = sf.read(io.BytesIO(source), dtype="float32", always_2d=True)
        except Exception as err:  # noqa: BLE001
            raise AudioError(f"{name}: cannot decode audio ({err})") from err
        return validate(to_mono_16k(data.T, rate, name), name, max_seconds)
    path = Path(source)
    data, rate = _decode(path)
    return validate(to_mono_16k(data, rate, str(path)), str(path), max_seconds)


def is_silent(samples: np.ndarray) -> bool:
    """Digital silence or near it (RMS below -60 dBFS): nothing to transcribe or learn from."""
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) < SILENCE_RMS


def frame_energy_db(samples: np.ndarray, frame: int = 320) -> np.ndarray:
    """Mean energy of each whole ``frame``-sample frame (20 ms by default), in dB; a clip shorter
    than one frame is one frame (its samples repeated)."""
    n = max(len(samples) // frame, 1)
    frames = np.resize(np.asarray(samples, dtype=np.float64), n * frame).reshape(n, frame)
    return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-10)


def loudness_range_db(samples: np.ndarray, frame: int = 320) -> float:
    """How much louder a clip's loud 20 ms frames are than its quiet ones (95th - 10th
    percentile of frame energy, in dB)."""
    energy = frame_energy_db(samples, frame)
    return float(np.percentile(energy, 95) - np.percentile(energy, 10))


def has_speech(samples: np.ndarray) -> bool:
    """A cheap no-speech gate: False for silence and for stationary sound (tones, hum, steady
    noise), whose loudness barely changes from frame to frame. Modulated non-speech (melodies,
    beeps) passes: this is an energy test, not a learned voice detector."""
    return not is_silent(samples) and loudness_range_db(samples) >= MIN_SPEECH_RANGE_DB
