# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Class 1 — Audio as numbers: solutions
#
# Worked solutions to the exercises of `notebooks/01_audio_as_numbers.py`. Try them first.
#
# Run with `notebooks/` as the working directory (like the class notebook), so that `../shared/data`
# is found; without it the clip is synthetic (espeak-ng), and the notebook says so. Offline, on a CPU,
# in well under a minute; nothing is written to disk.

# %%
# %matplotlib inline
import inspect

import librosa
import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.signal import find_peaks
from transformers import WhisperFeatureExtractor

from asr import PACKAGED_WHISPER
from asr.audio import HOP_LENGTH, SAMPLE_RATE, to_mono_16k
from asr.encoder import AudioEncoder
from asr.lengths import audio_positions, encoder_frames, mel_frames
from asr.sources import load_whisper
from asr.synth import synthesize
from course import example_clip, have_data, save_figure

torch.set_num_threads(1)

real = have_data()
clip, text, origin = example_clip(0)
print(f"clip from {origin}: {text!r}, {len(clip)} samples = {len(clip) / SAMPLE_RATE:.2f} s")

fe = WhisperFeatureExtractor(feature_size=80)  # the settings of the packaged tiny.en extractor


def log_mel(samples: np.ndarray) -> np.ndarray:
    """Whisper's log-mel of the audio frames only (no 30 s padding): (80, len // 160)."""
    return fe(samples, sampling_rate=SAMPLE_RATE, padding="longest", return_tensors="np")["input_features"][0]


def log_power(samples: np.ndarray, n_fft: int) -> np.ndarray:
    """The hand-made recipe of section 2 without the mel step: power in dB, (n_fft // 2 + 1, frames).

    Reflect padding of n_fft // 2 keeps frame i centred at i x 10 ms whatever the window length."""
    padded = np.pad(samples.astype(np.float64), n_fft // 2, mode="reflect")
    n_frames = 1 + (len(padded) - n_fft) // HOP_LENGTH
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.stack([padded[i * HOP_LENGTH : i * HOP_LENGTH + n_fft] for i in range(n_frames)])
    power = np.abs(np.fft.rfft(frames * hann, axis=1)) ** 2
    return 10 * np.log10(np.maximum(power, 1e-10)).T


features = log_mel(clip)
print(f"log-mel {features.shape}")

# %% [markdown]
# ## Exercise 1 — Nyquist
#
# A linear chirp from 100 Hz to 12 kHz over 2 s: its frequency at time *t* is
# `100 + (12000 - 100) t / 2`, and it crosses Nyquist (8 kHz) at `2 (8000 - 100) / 11900 = 1.328 s`.
# "Sampling at 16 kHz" means evaluating it every 62.5 µs with nothing in between, which is what an
# analogue-to-digital converter without an anti-aliasing filter would do. Above 8 kHz a frequency *f*
# shows up at `16000 - f`.

# %%
SECONDS, F_START, F_END = 2.0, 100.0, 12_000.0


def chirp(rate: int) -> np.ndarray:
    t = np.arange(int(SECONDS * rate)) / rate
    return np.sin(2 * np.pi * (F_START * t + (F_END - F_START) * t**2 / (2 * SECONDS))).astype(np.float32)


def true_hz(t: np.ndarray | float) -> np.ndarray | float:
    return F_START + (F_END - F_START) * np.asarray(t) / SECONDS


sampled = chirp(SAMPLE_RATE)  # straight at 16 kHz: no filter
high_rate = chirp(48_000)
resampled = to_mono_16k(high_rate, 48_000)  # 48 kHz -> 16 kHz through soxr's low-pass filter
print(
    f"every 3rd sample of the 48 kHz chirp = the 16 kHz one: max diff {np.abs(high_rate[::3] - sampled).max():.1e}"
)

freqs = np.fft.rfftfreq(400, 1 / SAMPLE_RATE)
spectra = {"sampled at 16 kHz": log_power(sampled, 400), "48 kHz -> to_mono_16k": log_power(resampled, 400)}
times = np.arange(spectra["sampled at 16 kHz"].shape[1]) * HOP_LENGTH / SAMPLE_RATE
peak = freqs[spectra["sampled at 16 kHz"].argmax(axis=0)]
level = {name: 10 * np.log10(np.mean(10 ** (s / 10), axis=0)) for name, s in spectra.items()}  # dB per frame
fold = SECONDS * (SAMPLE_RATE / 2 - F_START) / (F_END - F_START)
inner = (times > 0.05) & (times < SECONDS - 0.05)  # skip the reflect-padded edge frames
print(
    f"predicted fold at {fold:.3f} s; highest peak {peak[inner].max():.0f} Hz at {times[inner][peak[inner].argmax()]:.2f} s"
)
print("  time   true f   expected peak   peak (16 kHz)   level 16 kHz   level resampled")
for t in (0.5, 1.0, 1.3, 1.5, 1.8, 1.95):
    i = int(round(t * SAMPLE_RATE / HOP_LENGTH))
    f = float(true_hz(t))
    expected = f if f <= 8000 else SAMPLE_RATE - f
    print(
        f"{t:6.2f} s {f:7.0f} Hz {expected:9.0f} Hz {peak[i]:12.0f} Hz "
        f"{level['sampled at 16 kHz'][i]:10.1f} dB {level['48 kHz -> to_mono_16k'][i]:12.1f} dB"
    )
below, above = inner & (true_hz(times) < 7000), inner & (true_hz(times) > 8500)
for name, values in level.items():
    print(
        f"{name:22s}: mean level {values[below].mean():6.1f} dB below 7 kHz, {values[above].mean():6.1f} dB above 8.5 kHz"
    )

fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), layout="constrained", sharey=True)
for ax, (name, spec) in zip(axes, spectra.items(), strict=True):
    ax.imshow(
        spec,
        origin="lower",
        aspect="auto",
        cmap="magma",
        vmin=spec.max() - 80,
        extent=(0, times[-1], 0, SAMPLE_RATE / 2),
    )
    t = np.linspace(0, SECONDS, 200)
    ax.plot(t, np.where(true_hz(t) <= 8000, true_hz(t), np.nan), "c--", linewidth=1, label="true frequency")
    ax.plot(t, np.where(true_hz(t) > 8000, SAMPLE_RATE - true_hz(t), np.nan), "w:", label="16000 - f")
    ax.set(xlabel="time (s)", title=f"Chirp 100 Hz -> 12 kHz, {name}")
    ax.legend(loc="upper left", fontsize=8)
axes[0].set_ylabel("frequency (Hz)")
save_figure(fig, "01_aliasing")
plt.show()

# %% [markdown]
# **Answer.** Sampled straight at 16 kHz, the line rises to 8 kHz at 1.33 s and then *folds back*:
# the printed peaks follow `16000 - f`, down to 4 kHz at the end, at the same level as the real
# part. Nothing in the samples says that the second half was above Nyquist: a listener (or Whisper)
# hears a falling tone that was never there. Taking every third sample of the 48 kHz chirp gives
# exactly these samples: decimating without a filter *is* aliasing.
#
# `to_mono_16k` (soxr, high quality) low-pass filters at 8 kHz before keeping one sample in three:
# below 7 kHz the two versions have the same level, above 8 kHz the resampled chirp is many tens of
# dB down (printed), i.e. practically silent. Losing what is above 8 kHz is harmless for speech
# recognition; inventing a phantom tone or hiss between 0 and 8 kHz is not, because it lands on top
# of real speech energy. (A real filter needs a transition band between what it keeps and what it
# removes: the row at 1.30 s, 7.8 kHz, shows whether this one already attenuates there.)
#
# ## Exercise 2 — Window length
#
# The same recipe with a 160-sample (10 ms), 400-sample (25 ms, Whisper) and 800-sample (50 ms) window,
# hop fixed at 10 ms. We skip the mel step here: its 80 filters would blur harmonics above about
# 1 kHz in all three versions alike (and with a 10 ms window, 100 Hz bins, several of the narrow
# low-frequency mel filters would get no bin at all). Two numbers per window: how many separate
# harmonic peaks the loudest (voiced) frame shows below 2 kHz, and the steepest energy rise between
# two consecutive frames (an onset, such as a plosive burst).

# %%
windows = {"10 ms": 160, "25 ms": 400, "50 ms": 800}
spectrograms = {name: log_power(clip, n_fft) for name, n_fft in windows.items()}
loudest = int(spectrograms["25 ms"].max(axis=0).argmax())  # same frame index = same centre time
print(f"loudest frame: {loudest} (centred at {loudest * HOP_LENGTH / SAMPLE_RATE:.2f} s)")
fig, (slices, *maps) = plt.subplots(1, 4, figsize=(16, 3.6), layout="constrained")
for (name, n_fft), ax in zip(windows.items(), maps, strict=True):
    spec = spectrograms[name]
    bin_hz = SAMPLE_RATE / n_fft
    f = np.fft.rfftfreq(n_fft, 1 / SAMPLE_RATE)
    band = (f >= 60) & (f <= 2000)
    peaks, _ = find_peaks(spec[band, loudest], prominence=6.0)
    energy = 10 * np.log10(np.sum(10 ** (spec / 10), axis=0))
    print(
        f"{name} window: bins {bin_hz:5.1f} Hz apart (Hann main lobe {4 * bin_hz:4.0f} Hz wide); "
        f"{len(peaks):2d} harmonic peaks below 2 kHz in the loudest frame; "
        f"steepest onset {np.diff(energy).max():5.1f} dB per 10 ms"
    )
    slices.plot(f[f <= 3000], spec[f <= 3000, loudest], linewidth=0.9, label=name)
    top = f <= 4000
    ax.imshow(
        spec[top],
        origin="lower",
        aspect="auto",
        cmap="magma",
        vmin=spec.max() - 80,
        extent=(0, spec.shape[1] * HOP_LENGTH / SAMPLE_RATE, 0, f[top][-1]),
    )
    ax.set(xlabel="time (s)", ylabel="frequency (Hz)", title=f"{name} window, 0-4 kHz")
slices.set(xlabel="frequency (Hz)", ylabel="power (dB)", title="Loudest frame, three windows")
slices.legend()
plt.show()

# %% [markdown]
# **Answer.** The **50 ms** window resolves the pitch harmonics: its bins are 20 Hz apart and a Hann
# window's main lobe is 4 bins wide (80 Hz), far narrower than the spacing of the harmonics (the pitch,
# 100-300 Hz, and more for a child), so the loudest frame shows a comb of separate peaks. The
# **10 ms** window cannot: its main lobe is 400 Hz wide, wider than the harmonic spacing, so the comb
# merges into a smooth envelope (which still shows the formants). The price is in time: a 50 ms
# window smears every sudden event over 50 ms, so onsets and plosive bursts (*p*, *t*, *k*: a few
# milliseconds of noise) are sharpest with the **10 ms** window (the steepest onset printed is largest
# there). Whisper's 25 ms is the usual compromise for speech: enough frequency resolution for
# formants, enough time resolution for consonants.
#
# ## Exercise 3 — Frame arithmetic
#
# By hand: 7.3 s × 16 000 = **116 800 samples**; mel frames 116 800 // 160 = **730**; encoder frames
# ceil(730 / 2) = **365**; LLM positions ceil(365 / 5) = **73**. Check with `asr.lengths` and with the
# feature extractor itself:

# %%
n = round(7.3 * SAMPLE_RATE)
mel, enc = mel_frames(n), encoder_frames(mel_frames(n))
print(f"{n} samples -> {mel} mel frames -> {enc} encoder frames -> {audio_positions(enc, 5)} LLM positions")
shape = log_mel(np.zeros(n, dtype=np.float32)).shape
print(f"WhisperFeatureExtractor on 7.3 s of silence: {shape} (mel bins x frames)")

# %% [markdown]
# **Answer.** 730, 365 and 73: 100 mel frames, 50 encoder frames and 10 LLM positions per second, each
# rounded (down for the mel frames, which drop the last centred frame; up for the other two, whose
# last frame or position may be partly filled).
#
# ## Exercise 4 — Loudness
#
# Scale the clip by 0.01 (-40 dB) and recompute the log-mel. Then check what the encoder makes of it.

# %%
quiet = log_mel(clip * 0.01)
diff = quiet - features
print(
    f"max: loud {features.max():.3f}, quiet {quiet.max():.3f} (difference {quiet.max() - features.max():+.3f})"
)
print(
    f"difference quiet - loud: median {np.median(diff):+.4f}, "
    f"{np.mean(np.abs(diff + 1.0) < 1e-3):.1%} of the values within 1e-3 of -1.000"
)

whisper_model, _ = load_whisper(PACKAGED_WHISPER)
encoder = AudioEncoder(whisper_model.model.encoder).eval()  # the variable path, as the project uses
with torch.no_grad():
    outputs = [
        encoder(torch.from_numpy(x)[None], torch.tensor([x.shape[-1]]))[0][0] for x in (features, quiet)
    ]
cosine = torch.nn.functional.cosine_similarity(outputs[0], outputs[1], dim=-1)
print(f"encoder output, loud vs quiet: cosine per frame mean {cosine.mean():.3f}, min {cosine.min():.3f}")

# %% [markdown]
# **Answer.** A gain *g* multiplies the power by *g²* = 10⁻⁴, and the **log** turns that product into
# a sum: log10 power drops by 4 in every bin, so after `(x + 4) / 4` every value drops by exactly
# **1.0** (the printed maxima differ by exactly that). The clamp at *max − 8* is relative to the
# clip's own maximum, so it moves with the signal and clips the same bins, as long as *max − 8* stays
# above the absolute floor (see below). What does not change is everything the speech is made of: the
# differences between bins and between frames, so the pattern of harmonics and formants is the same.
#
# So the log (with the max-relative clamp) makes the features *almost* gain invariant: a gain becomes
# a constant offset, not a change of shape. *Almost*, for two reasons: (1) Whisper does not subtract
# that offset (no per-clip mean normalisation), so the encoder does see a shifted input, and copes
# because it was trained on recordings at all levels (the printed cosine between the two encoder
# outputs shows how close it stays); (2) the absolute floor `log10(max(power, 1e-10))` does not move:
# where the quiet clip's weakest bins fall below 1e-10 they are floored there instead of shifting by
# -1 (the values not within 1e-3 of -1.000 above). In a real recording a quiet microphone also loses
# resolution (fewer of the 16 bits used) and raises the relative noise floor, which no feature recipe
# can undo.
#
# ## Exercise 5 — Synthetic vs real
#
# espeak-ng speaks the same sentence with a female variant of the US voice, slowly (130 words per
# minute). Without `../shared/data` the "real" clip is itself synthetic (default voice, 160 wpm), and
# the comparison is between two espeak voices. The pitch is estimated with YIN (`librosa.yin`) on the
# voiced frames (energy within 20 dB of the loudest frame).

# %%
synthetic = synthesize(text.lower(), voice="en-us+f2", rate=130)
pair = {"real" if real else "espeak en-us": clip, "espeak en-us+f2, 130 wpm": synthetic}
fig, axes = plt.subplots(1, 2, figsize=(14, 3.6), layout="constrained")
for ax, (name, samples) in zip(axes, pair.items(), strict=True):
    energy = 10 * np.log10(np.sum(10 ** (log_power(samples, 400) / 10), axis=0))
    f0 = librosa.yin(samples, fmin=60, fmax=500, sr=SAMPLE_RATE, frame_length=1024, hop_length=HOP_LENGTH)
    count = min(len(f0), len(energy))  # both 1 + len // 160 frames, centred at i x 10 ms
    f0, voiced = f0[:count], energy[:count] > energy.max() - 20
    semitones = 12 * np.log2(f0[voiced] / np.median(f0[voiced]))
    features_i = log_mel(samples)
    print(
        f"{name:26s}: {len(samples) / SAMPLE_RATE:.2f} s; median pitch {np.median(f0[voiced]):5.0f} Hz, "
        f"spread {semitones.std():4.1f} semitones; {np.mean(energy < energy.max() - 40):.0%} of frames "
        f"more than 40 dB below the loudest (pauses); {np.mean(features_i <= features_i.max() - 2 + 1e-6):.1%} "
        "of log-mel values at the floor"
    )
    image = ax.imshow(features_i, origin="lower", aspect="auto", cmap="magma")
    fig.colorbar(image, ax=ax)
    ax.set(xlabel="frame (10 ms)", ylabel="mel bin", title=f"{name}: {text.lower()!r}")
plt.show()

# %% [markdown]
# **Answer.** Read the printed numbers and the two images side by side:
#
# * **pitch**: the espeak voice has its own pitch (its median) and a contour drawn by a simple
#   intonation rule, the same for every sentence of this shape; a real speaker's pitch moves with
#   stress, hesitation and emotion (and a child's sits much higher than an adult's). Compare the
#   spreads in semitones (YIN can jump an octave on a few frames, which inflates a spread). In the
#   log-mel, pitch is the spacing of the horizontal stripes in the lowest bins;
# * **formants**: espeak is a formant synthesiser with a handful of target formants per phoneme and
#   smooth, regular transitions between them: crisp, identical bands every time a phoneme recurs.
#   Real formants vary with the speaker's vocal tract (a child's are higher), with context and from
#   one repetition to the next, and real consonants are noisier;
# * **pauses and silence**: espeak's output holds no noise: wherever it is silent (gaps inside the
#   sentence, if any) the samples are digital zeros, at the floor of the log-mel, and `synthesize`
#   adds no silence around the sentence; the real recording has room noise everywhere, so its
#   "silences" are not at the floor (compare the share of values at the floor), and its pauses come
#   where the speaker paused, not where a rule put them;
# * **duration**: at 130 wpm the synthetic sentence has its own length, so the same words fill a
#   different number of frames.
#
# Same words, visibly different pictures: this gap is why a model trained on synthetic speech alone
# should not be expected to do well on real speech.
#
# ## Exercise 6 — Padding
#
# The value is in `AudioEncoder._pad_features` (`src/asr/encoder.py`), used by both paths whenever
# features must be longer than the audio (the 30 s window in `padded`, a batch's longer clips and the
# one extra mel frame in `variable`):

# %%
print(inspect.getsource(AudioEncoder._pad_features))
padded = AudioEncoder._pad_features(torch.from_numpy(features)[None], 20)[0]
window = fe(clip, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"][0]
print(f"scaled max {features.max():.4f}; pad value {float(padded[0, -1]):.4f} = max - 2")
print(
    f"Whisper's own 30 s padding (zeros through the recipe): {window[:, mel_frames(len(clip)) + 1 :].max():.4f}"
)
print(
    f"a pad of 0 would be {40 * features.max():.0f} dB below the clip's loudest bin, "
    f"{40 * (0 - (features.max() - 2)):.0f} dB above the floor where silence sits"
)

# %% [markdown]
# **Answer.** `floor = features.amax(dim=(1, 2), keepdim=True) - 2.0`: the clip's own scaled maximum
# minus 2. Whisper pads its 30 s window with zero *samples*. Zero samples have zero power,
# `log10(max(0, 1e-10)) = -10`, far below the clamp at *max − 8*, so they end up at *max − 8* in
# log10 units; after `(x + 4) / 4` that is `(max + 4) / 4 - 8 / 4 = scaled max - 2`. Padding with
# *max − 2* therefore gives the encoder exactly what digital silence looks like in its training data
# (the printed values agree with the stock extractor's own padding).
#
# A 0 would not be silence: in scaled units 0 means log10 power −4, a constant sound in every mel bin
# only some tens of dB below this clip's peak (printed), like a steady hiss after the speech. Its
# level relative to the speech would also change from clip to clip, because the features are
# relative to each clip's maximum while 0 is absolute.
