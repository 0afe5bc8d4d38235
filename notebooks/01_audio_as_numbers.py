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
# # Class 1 — Audio as numbers
#
# Everything the model ever sees of a voice is a list of numbers. In this notebook we take one clip
# and follow it from **samples** (16 000 per second) to the **log-mel spectrogram** (80 numbers every
# 10 ms) that Whisper's encoder reads, computing the spectrogram once by hand and checking it against
# the library, and finally look at **Whisper's 30 s window** and what padding does to it.
#
# Runs offline: real speech from `../shared/data` when it is there, synthetic speech (espeak-ng)
# otherwise.

# %%
import matplotlib.pyplot as plt
import numpy as np
from transformers import WhisperFeatureExtractor

from asr.audio import HOP_LENGTH, SAMPLE_RATE
from asr.lengths import mel_frames
from course import example_clip, save_figure

clip, text, origin = example_clip(0)
print(f"clip from {origin}: {text!r}")
print(f"{clip.shape[0]} samples, dtype {clip.dtype}, {clip.shape[0] / SAMPLE_RATE:.3f} s at {SAMPLE_RATE} Hz")
print(f"range [{clip.min():+.3f}, {clip.max():+.3f}], RMS {np.sqrt(np.mean(clip**2)):.4f} (full scale = 1.0)")

# %% [markdown]
# ## 1. Sampling: 16 000 numbers per second
#
# A microphone gives a voltage; an analogue-to-digital converter measures it at a fixed rate. Whisper
# (and so this project) uses **16 kHz**: one sample every 62.5 µs. By the Nyquist theorem a rate of
# 16 kHz represents frequencies up to **8 kHz**, which holds nearly everything intelligible in speech
# (telephones stop at 3.4 kHz). Zoom in and the "wave" is just dots.

# %%
t = np.arange(len(clip)) / SAMPLE_RATE
loud = int(np.argmax(np.abs(clip)))
window = slice(max(0, loud - 200), loud + 200)  # 400 samples = 25 ms, one spectrogram window
fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 5), layout="constrained")
top.plot(t, clip, linewidth=0.4)
top.axvspan(t[window][0], t[window][-1], color="tab:red", alpha=0.3, label="zoomed 25 ms")
top.set(xlabel="time (s)", ylabel="amplitude", title=f"Waveform: {len(clip)} samples")
top.legend(loc="upper right")
bottom.plot(t[window] * 1000, clip[window], ".-", markersize=3, linewidth=0.5)
bottom.set(xlabel="time (ms)", ylabel="amplitude", title="25 ms = 400 samples around the loudest sample")
save_figure(fig, "01_waveform")
plt.show()

# %% [markdown]
# **Aliasing.** A frequency above Nyquist does not disappear: it folds back. A 9 kHz tone sampled at
# 16 kHz produces exactly the same samples as a 7 kHz tone (with the sign flipped). That is why audio
# is low-pass filtered before it is resampled (`asr.audio.to_mono_16k` uses soxr's filter).

# %%
n = np.arange(1600)  # 0.1 s
tone_9k = np.sin(2 * np.pi * 9000 * n / SAMPLE_RATE)
tone_7k = np.sin(2 * np.pi * 7000 * n / SAMPLE_RATE)
spectrum = np.abs(np.fft.rfft(tone_9k))
peak_hz = np.fft.rfftfreq(len(n), 1 / SAMPLE_RATE)[np.argmax(spectrum)]
print(f"9 kHz tone sampled at 16 kHz: spectral peak at {peak_hz:.0f} Hz")
print(f"max |9 kHz samples + 7 kHz samples| = {np.abs(tone_9k + tone_7k).max():.2e} (identical up to sign)")

# %% [markdown]
# **Quantisation.** Files store samples as 16-bit integers (65 536 levels); we work in float32 in
# [-1, 1]. Rounding to 16 bits adds noise about 98 dB below full scale (6.02 dB per bit + 1.76 dB):
# irrelevant for recognition.

# %%
pcm16 = np.round(clip * 32767).astype(np.int16)
noise = clip - pcm16.astype(np.float32) / 32767
snr = 10 * np.log10(np.mean(clip**2) / np.mean(noise**2))
print(f"int16 round trip: SNR {snr:.1f} dB for this clip (its RMS is well below full scale)")
print(f"bytes: int16 {pcm16.nbytes} vs float32 {clip.nbytes} for {len(clip) / SAMPLE_RATE:.2f} s")

# %% [markdown]
# ## 2. From samples to a spectrogram
#
# Speech is made of resonances (formants) and a pitch that change every few tens of milliseconds, so
# we look at the signal through a short sliding window:
#
# | Whisper's setting | value | in time |
# |---|---|---|
# | window (`n_fft`) | 400 samples, Hann | 25 ms |
# | hop (`hop_length`) | 160 samples | 10 ms → 100 frames per second |
# | frequency bins | 1 + 400 / 2 = 201 | 40 Hz apart, 0 to 8 kHz |
# | mel bins (tiny.en) | 80 | (large-v3 / turbo: 128) |
#
# So a clip of *n* samples gives `n // 160` frames (`asr.lengths.mel_frames`). The power in the 201
# linear bins is pooled by 80 triangular **mel filters**: narrow at low frequencies, wide at high ones,
# roughly like the ear's resolution.

# %%
fe = WhisperFeatureExtractor(feature_size=80)  # the packaged tiny.en extractor has exactly these settings
print(
    f"sampling_rate={fe.sampling_rate}, n_fft={fe.n_fft}, hop_length={fe.hop_length}, "
    f"chunk_length={fe.chunk_length} s -> n_samples={fe.n_samples}, nb_max_frames={fe.nb_max_frames}"
)
print(f"mel filter matrix: {fe.mel_filters.shape} (frequency bins x mel bins)")
freqs = np.fft.rfftfreq(fe.n_fft, 1 / SAMPLE_RATE)
centres = freqs[np.argmax(fe.mel_filters, axis=0)]
print("centre frequencies of mel bins 0, 10, 20, ... (Hz):", centres[::10].round().astype(int).tolist())

fig, ax = plt.subplots(figsize=(11, 3.2), layout="constrained")
ax.plot(freqs, fe.mel_filters[:, ::4], linewidth=0.8)
ax.set(
    xlabel="frequency (Hz)", ylabel="filter weight", title="Every 4th of the 80 mel filters (slaney scale)"
)
save_figure(fig, "01_mel_filters")
plt.show()

# %% [markdown]
# ### Computing the log-mel spectrogram by hand
#
# 1. pad 200 samples on each side (reflection) so frames are centred on multiples of 10 ms;
# 2. cut 400-sample frames every 160 samples, multiply by a Hann window, FFT, take |X|²;
# 3. mel filters: 201 power values → 80 mel energies;
# 4. `log10` (floored at 1e-10), drop the last frame, clamp everything below *max − 8* (80 dB of
#    dynamic range), then scale: `(x + 4) / 4`, so values sit roughly in [-1, 1.5].

# %%
padded = np.pad(clip.astype(np.float64), fe.n_fft // 2, mode="reflect")
n_frames = 1 + (len(padded) - fe.n_fft) // HOP_LENGTH
hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(fe.n_fft) / fe.n_fft)  # periodic Hann
frames = np.stack([padded[i * HOP_LENGTH : i * HOP_LENGTH + fe.n_fft] for i in range(n_frames)])
power = np.abs(np.fft.rfft(frames * hann, axis=1)) ** 2  # (frames, 201)
log_mel = np.log10(np.maximum(power @ fe.mel_filters, 1e-10)).T[:, :-1]  # (80, frames)
log_mel = (np.maximum(log_mel, log_mel.max() - 8.0) + 4.0) / 4.0

library = fe(clip, sampling_rate=SAMPLE_RATE, padding="longest", return_tensors="np")["input_features"][0]
print(f"by hand: {log_mel.shape}, library: {library.shape}, mel_frames(n) = {mel_frames(len(clip))}")
print(f"max |by hand - library| = {np.abs(log_mel - library).max():.2e}")

# %%
fig, ax = plt.subplots(figsize=(11, 3.5), layout="constrained")
image = ax.imshow(library, origin="lower", aspect="auto", cmap="magma")
fig.colorbar(image, ax=ax, label="(log10 power + 4) / 4")
ax.set(xlabel="frame (10 ms)", ylabel="mel bin", title=f"Log-mel spectrogram of {text!r}")
seconds = ax.secondary_xaxis("top", functions=(lambda f: f / 100, lambda s: s * 100))
seconds.set_xlabel("time (s)")
save_figure(fig, "01_log_mel")
plt.show()

# %% [markdown]
# Read it like a score: the bright horizontal stripes in voiced sounds are the **harmonics** of the
# pitch; the broad dark-bright bands moving up and down are the **formants** that tell vowels apart;
# fricatives (*s*, *sh*) are noise high up; silences are flat and dark.
#
# ## 3. Whisper's 30 s window and padding
#
# Whisper was trained on exactly 30 s of audio at a time: 480 000 samples → **3000 mel frames** →
# (after a stride-2 convolution) **1500 encoder frames** of 20 ms. The stock feature extractor pads
# every clip with zeros to 30 s. Digital silence has no energy, so after the clamp it sits at the
# floor: *scaled max − 2* (8 decades / 4).

# %%
window_features = fe(clip, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"][0]
audio_frames = mel_frames(len(clip))
floor = window_features.max() - 2.0
pad_region = window_features[:, audio_frames + 1 :]
print(
    f"30 s window: {window_features.shape} (mel bins x frames); audio fills {audio_frames} frames "
    f"({100 * audio_frames / window_features.shape[1]:.1f} %)"
)
print(f"padding region: min {pad_region.min():.4f}, max {pad_region.max():.4f}; scaled max - 2 = {floor:.4f}")

fig, ax = plt.subplots(figsize=(11, 3.2), layout="constrained")
image = ax.imshow(window_features, origin="lower", aspect="auto", cmap="magma")
ax.axvline(audio_frames, color="cyan", linestyle="--", label=f"end of audio (frame {audio_frames})")
fig.colorbar(image, ax=ax, label="scaled log-mel")
ax.set(
    xlabel="frame (10 ms)",
    ylabel="mel bin",
    title="The same clip padded to Whisper's 30 s window (3000 frames)",
)
ax.legend(loc="upper right")
save_figure(fig, "01_padded_window")
plt.show()

# %% [markdown]
# For a 3 s clip, 90 % of the encoder's work in the padded window is spent on silence. This project's
# default `encoder_mode="variable"` feeds only the audio frames (see Class 3 for what that changes);
# `encoder_mode="padded"` keeps the stock 30 s input and trims the output.
#
# ## Summary: the numbers for this project
#
# | stage | rate | for this clip |
# |---|---|---|
# | samples | 16 000 / s | see below |
# | mel frames | 100 / s (10 ms hop, 25 ms window) | `n // 160` |
# | encoder frames | 50 / s (20 ms) | `ceil(mel / 2)` |
# | LLM audio positions (k = 5) | 10 / s (100 ms) | `ceil(encoder / 5)` |

# %%
mel = mel_frames(len(clip))
encoder = -(-mel // 2)
positions = -(-encoder // 5)
print(f"samples {len(clip)} -> mel frames {mel} -> encoder frames {encoder} -> LLM positions {positions}")
print(
    f"30 s window: {fe.n_samples} samples -> {fe.nb_max_frames} mel -> {fe.nb_max_frames // 2} encoder "
    f"-> {fe.nb_max_frames // 2 // 5} LLM positions"
)

# %% [markdown]
# ## Exercises (about 40 minutes)
#
# Solutions: `notebooks/solutions/01_audio_as_numbers.py` (try first).
#
# 1. **Nyquist.** Generate a chirp from 100 Hz to 12 kHz at 16 kHz and plot its spectrogram. Where does
#    the line fold back? Now resample a 48 kHz chirp to 16 kHz with `asr.audio.to_mono_16k`: what
#    happens above 8 kHz, and why is that better?
# 2. **Window length.** Recompute the hand-made spectrogram with a 10 ms and a 50 ms window (keep the
#    10 ms hop). Which one resolves the pitch harmonics, which one resolves fast events like plosives?
# 3. **Frame arithmetic.** Without running code: how many mel frames, encoder frames and LLM positions
#    (k = 5) does a 7.3 s clip give? Check with `mel_frames`.
# 4. **Loudness.** Multiply the clip by 0.01 and recompute the log-mel. What changes, what does not,
#    and which step of the recipe makes Whisper (almost) insensitive to gain?
# 5. **Synthetic vs real.** Synthesize the same sentence with `synthesize(text, voice="en-us+f2",
#    rate=130)` and compare spectrograms with the real clip: pitch, formants, pauses.
# 6. **Padding.** Find, in `src/asr/encoder.py`, the value used to pad features in the variable path.
#    Why is it *max − 2* and not 0?
