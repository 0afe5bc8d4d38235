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
# # Class 3 — Whisper's encoder inside: solutions
#
# Worked solutions to the exercises of `notebooks/03_whisper_encoder.py`. Try them first.
#
# Run with `notebooks/` as the working directory (like the class notebook), so that `../shared/data`
# is found; without it the clip is synthetic (espeak-ng). Offline, on a CPU, in well under a minute.
# The setup cell repeats what the exercises use from the class notebook: the model and clip
# (its first cell), the positional table `stored` (section 3), and `n_audio`, `short` and `variable`
# (section 5).

# %%
# %matplotlib inline
import copy
import math
import time

import matplotlib.pyplot as plt
import torch
from torch import nn

from asr import ASRConfig, ASRModel
from asr.audio import SAMPLE_RATE
from asr.encoder import AudioEncoder
from asr.lengths import encoder_frames, mel_frames
from course import example_clip

torch.set_num_threads(1)
torch.manual_seed(0)
model = ASRModel.from_sources(ASRConfig()).eval()
whisper = model.encoder.whisper  # transformers' WhisperEncoder
cfg = whisper.config

clip, text, _ = example_clip(0)
features = model.processor.features([clip])  # the processor makes the tensors the model reads
n_mel = int(features["mel_lengths"][0])
mel = features["input_features"][..., :n_mel]  # (1, 80, T): the audio frames only
stored = whisper.embed_positions.weight.detach()  # section 3
lengths = encoder_frames(features["mel_lengths"])
n_audio = int(lengths[0])  # ceil(mel / 2)
heads, head_dim = cfg.encoder_attention_heads, cfg.d_model // cfg.encoder_attention_heads


def stem(x: torch.Tensor) -> torch.Tensor:
    """conv1 -> GELU -> conv2 (stride 2) -> GELU, as (1, frames, d_model)."""
    return nn.functional.gelu(whisper.conv2(nn.functional.gelu(whisper.conv1(x)))).permute(0, 2, 1)


def residual_stream(features: torch.Tensor, n_frames: int) -> list[torch.Tensor]:
    """Stem + positions, then the output of every block (before the final LayerNorm): section 5."""
    states = [stem(features)[:, :n_frames] + stored[:n_frames]]
    for block in whisper.layers:
        states.append(block(states[-1], None))
    return states


with torch.no_grad():
    # like AudioEncoder.variable: encoder frame i reads mel frames up to 2i + 2, so keep one more
    short = residual_stream(features["input_features"][..., : 2 * n_audio + 1], n_audio)
    variable = model.encoder.variable(features["input_features"], lengths)
print(
    f"clip {text!r}: {n_mel} mel frames -> {n_audio} encoder frames; variable output {tuple(variable.shape)}"
)

# %% [markdown]
# ## Exercise 1 — Encoder frames for 1 s, 7.3 s and 30 s
#
# By hand: samples → `// 160` → mel frames → `ceil(/ 2)` → encoder frames.
#
# | audio | samples | mel frames | encoder frames |
# |---|---|---|---|
# | 1 s | 16 000 | 100 | 50 |
# | 7.3 s | 116 800 | 730 | 365 |
# | 30 s | 480 000 | 3000 | 1500 |
#
# Then through the real stem (zeros of the right length are enough: only the shape matters):

# %%
with torch.no_grad():
    for seconds in (1.0, 7.3, 30.0):
        samples = round(seconds * SAMPLE_RATE)
        t = mel_frames(samples)
        out = stem(torch.zeros(1, cfg.num_mel_bins, t))
        print(
            f"{seconds:4.1f} s = {samples:6d} samples -> {t:4d} mel frames -> stem: {out.shape[1]:4d} "
            f"encoder frames (ceil(T/2) = {math.ceil(t / 2)}, encoder_frames = {encoder_frames(t)})"
        )

# %% [markdown]
# **Answer.** 50, 365 and 1500: `floor((T + 2 - 3) / 2) + 1 = ceil(T / 2)` for conv2 (kernel 3,
# stride 2, padding 1); conv1 (stride 1, padding 1) keeps *T*. 30 s is exactly the 1500 positions of
# the positional table, which is why Whisper cannot take more than 30 s at once.
#
# ## Exercise 2 — An encoder without positions
#
# A deep copy of the encoder with the positional table zeroed, run through the same variable path
# (`AudioEncoder.variable`) as the original.

# %%
no_positions = copy.deepcopy(whisper)
with torch.no_grad():
    no_positions.embed_positions.weight.zero_()
    without = AudioEncoder(no_positions).variable(features["input_features"], lengths)
    stem_rms = stem(features["input_features"][..., : 2 * n_audio + 1])[:, :n_audio].pow(2).mean().sqrt()
cosine = nn.functional.cosine_similarity(variable[0], without[0], dim=-1)
relative = (variable - without).norm() / variable.norm()
print(
    f"RMS of the stem output {stem_rms:.3f}, of the positional table {stored[:n_audio].pow(2).mean().sqrt():.3f}"
)
print(
    f"with vs without positions: cosine per frame mean {cosine.mean():.3f}, min {cosine.min():.3f}; "
    f"relative difference |a - b| / |a| = {relative:.3f}"
)
fig, ax = plt.subplots(figsize=(10, 3), layout="constrained")
ax.plot(torch.arange(n_audio).numpy() * 0.02, cosine.numpy())
ax.set(xlabel="time (s)", ylabel="cosine", title="Encoder output with vs without the positional table")
plt.show()

# %% [markdown]
# **Answer.** The table is not a small correction: its RMS is √½ ≈ 0.71 (each sin/cos pair has
# sin² + cos² = 1), to be compared with the stem output's RMS printed above, so zeroing it changes
# the input of the first block everywhere, and with it every block after. Compare the printed cosine
# with the ≈ 0.97 between the padded and the variable path in section 5, where only the context
# changed: here *where* each frame is has gone, and the encoder never saw an input like this in
# training, so nothing guarantees that its layers still compute anything sensible. What survives
# comes from the stem: its 3-frame kernels encode local order, so a frame still "knows" its
# neighbours, but not its distance from anything further away, and attention without positions
# cannot tell two identical sounds at different times apart. The encoder relies on its positions;
# a projector trained on the real encoder's output would be fed vectors it never learned to read.
#
# ## Exercise 3 — The whole encoder by hand
#
# Section 4 computed block 0 by hand. Here every block, with the LayerNorms by hand too, then the
# final LayerNorm, checked against the library on the way (`short[i]` is the state after block *i*)
# and at the end against `variable`, the output of `AudioEncoder.variable`. The input is the same as
# `short`'s: `2 * n_audio + 1` mel frames (encoder frame *i* reads mel frames up to 2*i* + 2).


# %%
def layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(-1, keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight + norm.bias


def split(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, heads, head_dim).transpose(1, 2)  # (1, heads, T, 64)


def block_by_hand(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One pre-norm block: x + attention(LN1(x)), then + MLP(LN2(x)); also the attention weights."""
    attention = layer.self_attn
    h = layer_norm(layer.self_attn_layer_norm, x)
    q, k, v = split(attention.q_proj(h)), split(attention.k_proj(h)), split(attention.v_proj(h))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)  # (1, heads, T, T)
    x = x + attention.out_proj((weights @ v).transpose(1, 2).reshape(1, -1, cfg.d_model))
    x = x + layer.fc2(nn.functional.gelu(layer.fc1(layer_norm(layer.final_layer_norm, x))))
    return x, weights


with torch.no_grad():
    x = stem(features["input_features"][..., : 2 * n_audio + 1])[:, :n_audio] + stored[:n_audio]
    print(f"stem + positions: max |by hand - short[0]| = {(x - short[0]).abs().max():.1e}")
    layer_weights = []
    for i, layer in enumerate(whisper.layers):
        x, weights = block_by_hand(layer, x)
        layer_weights.append(weights)
        print(f"block {i}:          max |by hand - short[{i + 1}]| = {(x - short[i + 1]).abs().max():.1e}")
    by_hand = layer_norm(whisper.layer_norm, x)
    from_mel_only = stem(mel)  # section 4's input: the n_mel audio frames, conv padding with zeros
    reference_stem = stem(features["input_features"][..., : 2 * n_audio + 1])[:, :n_audio]
print(
    f"final LayerNorm: {tuple(by_hand.shape)}; max |by hand - AudioEncoder.variable| = "
    f"{(by_hand - variable).abs().max():.1e}"
)
differs = ((from_mel_only - reference_stem).abs().amax(-1)[0] > 1e-5).nonzero().squeeze(-1).tolist()
print(f"stem on the {n_mel} audio frames only (section 4's input) differs at encoder frames {differs}")

# %% [markdown]
# **Answer.** The hand computation matches every block and the final output of
# `AudioEncoder.variable` to float32 rounding (the printed maxima are tiny next to values of order 1):
# the encoder is nothing but conv stem + positions, 4 × (pre-norm attention, pre-norm MLP) and a
# LayerNorm. One detail decides whether it matches: section 4 fed only the `n_mel` audio frames, so
# the stem's zero padding stood in for the mel frame after the clip, and the **last encoder frame**
# came out different (the printed frame list). `AudioEncoder.variable` feeds one real frame more
# (`2 * n_audio + 1`), as the 30 s path does, so a clip's last frame does not depend on what follows
# it in a batch.
#
# ## Exercise 4 — The most local head of layer 0
#
# For each head: the mean over query frames of the attention weight within ±2 frames (±40 ms) of the
# diagonal, and the mean distance between a query and what it attends to. We use the layer-0 weights
# from the hand computation above (the variable path: audio frames only); the class notebook's maps
# come from the 30 s path, where every row also spends some attention on the padding.

# %%
weights0 = layer_weights[0][0]  # (heads, T, T)
index = torch.arange(n_audio)
distance = (index[:, None] - index[None, :]).abs().float()
local = (weights0 * (distance <= 2)).sum(-1).mean(-1)  # (heads,)
reach = (weights0 * distance).sum(-1).mean(-1)  # mean |i - j| in frames
for h in range(heads):
    print(
        f"head {h}: weight within ±2 frames {local[h]:.3f}, mean distance {reach[h]:5.1f} frames ({20 * reach[h]:4.0f} ms)"
    )
best = int(local.argmax())
print(f"most local head of layer 0: head {best}")

fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
image = left.imshow(weights0[best].sqrt().numpy(), cmap="viridis", origin="lower")
fig.colorbar(image, ax=left, label="sqrt(attention weight)")
left.set(xlabel="key frame (20 ms)", ylabel="query frame (20 ms)", title=f"Layer 0, head {best} (most local)")
middle = n_audio // 2
for h in range(heads):
    right.plot(range(-10, 11), weights0[h, middle, middle - 10 : middle + 11].numpy(), label=f"head {h}")
right.set(xlabel="key offset from the query (frames)", ylabel="weight", title=f"Row of query frame {middle}")
right.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Answer.** The winning head (printed) concentrates its weight near the diagonal: the largest
# share within ±2 frames and a short mean distance, a bright, thin diagonal in the map, i.e. a learned
# smoothing over some ±40 ms, the scale of a phoneme transition. The other heads of layer 0 reach
# further (their mean distances are printed; the row plot shows how each spreads around the query),
# and the average of all 6 heads in the class notebook's map blurs these patterns together. A head
# can learn "look at my neighbours" because sinusoidal positions make offsets easy to read (the dot
# product of two position vectors depends only on their distance, section 3): the attention version
# of a convolution.
#
# ## Exercise 5 — Timing the padded and the variable path
#
# `%timeit model.encoder.padded(...)` in Jupyter; here plain `time.perf_counter`, best of 3, so the
# notebook also runs as a script. Both calls are the project's own `AudioEncoder` paths.


# %%
def best_of(function, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


with torch.no_grad():
    padded_s = best_of(lambda: model.encoder.padded(features["input_features"]))
    variable_s = best_of(lambda: model.encoder.variable(features["input_features"], lengths))


def multiply_adds(t: int) -> int:
    """Multiply-adds of the encoder on t encoder frames (2t mel frames)."""
    d, ffn = cfg.d_model, cfg.encoder_ffn_dim
    stem_cost = 2 * t * cfg.num_mel_bins * d * 3 + t * d * d * 3
    linear = t * (4 * d * d + 2 * d * ffn)  # q, k, v, out and the MLP, per layer
    attention = 2 * t * t * d  # q kᵀ and weights @ v, per layer
    return stem_cost + cfg.encoder_layers * (linear + attention)


print(
    f"padded (1500 frames): {1000 * padded_s:6.1f} ms; variable ({n_audio} frames): {1000 * variable_s:6.1f} ms"
)
print(
    f"speed-up {padded_s / variable_s:.1f}x; frame ratio 1500 / {n_audio} = {1500 / n_audio:.1f}; "
    f"multiply-add ratio {multiply_adds(1500) / multiply_adds(n_audio):.1f}"
)

# %% [markdown]
# **Answer.** Every linear part of the encoder (stem, q/k/v/out projections, MLP) costs the same per
# frame, so its work scales with the number of frames: 1500 / `n_audio` times less in the variable
# path. Attention scales with the *square* of the frames (every frame against every other), so that
# part shrinks by (1500 / `n_audio`)²: the total work ratio (printed: multiply-adds) is therefore
# above the frame ratio, and the more so the larger the share of attention (at 1500 frames,
# `2 × 1500 × 384` multiply-adds of attention per frame and layer against `4 × 384² + 2 × 384 × 1536`
# of linear work: comparable). The measured speed-up usually falls short of the multiply-add ratio:
# fixed costs (Python, kernel launches, memory allocation) do not shrink, and small matrices use the
# CPU less efficiently than large ones. For a short clip the variable path is still many times
# faster, and that is the main reason it is this project's default.
#
# ## Exercise 6 — The stem and positions of whisper-large-v3-turbo
#
# Parameter counts from the layer shapes: a Conv1d has `in × out × kernel` weights and `out` biases.
# We check the formula on tiny.en's real modules, then apply it to turbo (128 mel bins, d_model 1280;
# the 1500 positions are the same) and count two freshly built turbo-sized convolutions as well.


# %%
def stem_and_positions(n_mels: int, d: int, positions: int = 1500) -> dict[str, int]:
    return {
        "conv1": n_mels * d * 3 + d,
        "conv2": d * d * 3 + d,
        "positions": positions * d,
    }


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


tiny = stem_and_positions(cfg.num_mel_bins, cfg.d_model)
assert tiny == {
    "conv1": n_params(whisper.conv1),
    "conv2": n_params(whisper.conv2),
    "positions": whisper.embed_positions.weight.numel(),
}
turbo = stem_and_positions(128, 1280)
built = {
    "conv1": n_params(nn.Conv1d(128, 1280, kernel_size=3, padding=1)),
    "conv2": n_params(nn.Conv1d(1280, 1280, kernel_size=3, stride=2, padding=1)),
}
for name in tiny:
    print(
        f"{name:10s} tiny.en {tiny[name]:>10,d}   turbo {turbo[name]:>10,d}   ({turbo[name] / tiny[name]:.1f}x)"
    )
print(f"{'total':10s} tiny.en {sum(tiny.values()):>10,d}   turbo {sum(turbo.values()):>10,d}")
print(f"turbo convolutions built with torch: {built}")
assert built == {"conv1": turbo["conv1"], "conv2": turbo["conv2"]}

# %% [markdown]
# **Answer.** Turbo's stem has 128 × 1280 × 3 + 1280 = **492 800** (conv1) + 1280 × 1280 × 3 + 1280
# = **4 916 480** (conv2) = **5 409 280** parameters, and its positional table 1500 × 1280 =
# **1 920 000** numbers (fixed sinusoids, stored as a table, not trained). Together 7.3 M, against
# about 1.1 M in tiny.en: conv2 grows with d² (11×), conv1 with mel bins × d (5.3×), the table with
# d (3.3×). Yet it is a small part of turbo's encoder: its 32 blocks hold about 20 M parameters each
# (4 × 1280² for attention, 2 × 1280 × 5120 for the MLP), some 630 M in all.
