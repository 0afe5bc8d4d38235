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
# # Class 3 — Whisper's encoder inside
#
# The frozen encoder of this project is Whisper tiny.en's: a convolution stem, fixed sinusoidal
# positions, 4 pre-norm Transformer blocks (384 wide, 6 heads of 64, MLP 1536) and a final LayerNorm.
# We open it up: check the stem's arithmetic, rebuild the positions from their formula, recompute one
# block by hand, and look at the hidden states and attention maps layer by layer, including what
# 27 s of padding does to a 3 s clip.

# %%
# %matplotlib inline
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from asr import ASRConfig, ASRModel
from asr.audio import SAMPLE_RATE
from asr.lengths import encoder_frames
from course import example_clip, lecture_says, save_figure

torch.set_num_threads(1)
torch.manual_seed(0)
model = ASRModel.from_sources(ASRConfig()).eval()
whisper = model.encoder.whisper  # transformers' WhisperEncoder
cfg = whisper.config
print(
    f"d_model={cfg.d_model}, layers={cfg.encoder_layers}, heads={cfg.encoder_attention_heads} "
    f"(head dim {cfg.d_model // cfg.encoder_attention_heads}), ffn={cfg.encoder_ffn_dim}, "
    f"mel bins={cfg.num_mel_bins}, positions={cfg.max_source_positions}"
)

clip, text, _ = example_clip(0)
features = model.processor.features([clip])  # the processor makes the tensors the model reads
n_mel = int(features["mel_lengths"][0])
mel = features["input_features"][..., :n_mel]  # (1, 80, T): the audio frames only
print(f"clip {text!r}: features {tuple(mel.shape)}")

# %% [markdown]
# ## 1. Where the parameters are


# %%
def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


parts = {
    "conv stem (conv1 + conv2)": n_params(whisper.conv1) + n_params(whisper.conv2),
    "positions (fixed sinusoids)": whisper.embed_positions.weight.numel(),
    "4 x self-attention": sum(
        n_params(layer.self_attn) + n_params(layer.self_attn_layer_norm) for layer in whisper.layers
    ),
    "4 x MLP": sum(
        n_params(layer.fc1) + n_params(layer.fc2) + n_params(layer.final_layer_norm)
        for layer in whisper.layers
    ),
    "final LayerNorm": n_params(whisper.layer_norm),
}
for name, value in parts.items():
    print(f"{name:30s} {value:>10,d}")
print(f"{'total':30s} {sum(parts.values()):>10,d} (= {n_params(whisper):,d})")
print(whisper.conv1, whisper.conv2, sep="\n")

# %% [markdown]
# ## 2. The convolution stem: 10 ms frames in, 20 ms frames out
#
# `conv1` (kernel 3, stride 1, padding 1) mixes each frame with its neighbours and lifts 80 mel bins to
# 384 channels; `conv2` (kernel 3, **stride 2**, padding 1) halves the frame rate. Output length:
# `floor((T + 2 - 3) / 2) + 1 = ceil(T / 2)`: 3000 mel frames become the 1500 positions Whisper has.

# %%
with torch.no_grad():
    for t in (335, 336, 3000):
        x = torch.zeros(1, cfg.num_mel_bins, t)
        y = whisper.conv2(nn.functional.gelu(whisper.conv1(x)))
        print(f"T = {t:4d} mel frames -> {y.shape[-1]:4d} encoder frames (ceil(T/2) = {math.ceil(t / 2)})")

# %% [markdown]
# ## 3. Sinusoidal positions
#
# Whisper's encoder positions are not learned: channel pair *i* holds `sin(p / 10000^(i/191))` and
# `cos(...)` of the position *p*, 192 frequencies from one cycle per 2π positions down to one per
# 62 832. Rebuild them and compare with the stored table (stored in float16 by CTranslate2).

# %%
channels, length = cfg.d_model, cfg.max_source_positions
inv_timescales = torch.exp(-math.log(10000) / (channels // 2 - 1) * torch.arange(channels // 2))
angles = torch.arange(length)[:, None] * inv_timescales[None, :]
formula = torch.cat([angles.sin(), angles.cos()], dim=1)
stored = whisper.embed_positions.weight.detach()
print(f"table {tuple(stored.shape)}; max |formula - stored| = {(formula - stored).abs().max():.1e}")

similarity = stored[:300] @ stored[:300].T / channels
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
image = left.imshow(stored.T, aspect="auto", origin="lower", cmap="RdBu", interpolation="nearest")
fig.colorbar(image, ax=left, label="value")
left.set(
    xlabel="position (20 ms frame)",
    ylabel="channel (sin: 0-191, cos: 192-383)",
    title="Positional table (1500 x 384)",
)
image = right.imshow(similarity, cmap="viridis", origin="lower")
fig.colorbar(image, ax=right, label="dot product / 384")
right.set(xlabel="position j", ylabel="position i", title="Similarity of positions: depends on |i - j| only")
save_figure(fig, "03_positions")
plt.show()

# %% [markdown]
# ## 4. One pre-norm residual block, by hand
#
# Each block is `x = x + Attention(LN1(x))` then `x = x + MLP(LN2(x))`: the residual stream is never
# normalised itself, only the input of each branch (pre-norm), which is what makes deep stacks train
# stably. Attention: per head, `softmax(q kᵀ / √64) v`; the key projection has no bias.

# %%
with torch.no_grad():
    x = nn.functional.gelu(whisper.conv2(nn.functional.gelu(whisper.conv1(mel)))).permute(0, 2, 1)
    x = x + stored[: x.shape[1]]
    layer = whisper.layers[0]
    heads, head_dim = cfg.encoder_attention_heads, cfg.d_model // cfg.encoder_attention_heads

    h = layer.self_attn_layer_norm(x)
    split = lambda t: t.view(1, -1, heads, head_dim).transpose(1, 2)  # noqa: E731 - (1, heads, T, 64)
    q, k, v = (
        split(layer.self_attn.q_proj(h)),
        split(layer.self_attn.k_proj(h)),
        split(layer.self_attn.v_proj(h)),
    )
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
    attended = (weights @ v).transpose(1, 2).reshape(1, -1, cfg.d_model)
    by_hand = x + layer.self_attn.out_proj(attended)
    by_hand = by_hand + layer.fc2(nn.functional.gelu(layer.fc1(layer.final_layer_norm(by_hand))))
    library = layer(x, None)
print(f"block input {tuple(x.shape)}; max |by hand - library| = {(by_hand - library).abs().max():.1e}")
print(f"RMS of the residual stream: in {x.pow(2).mean().sqrt():.2f}, out {library.pow(2).mean().sqrt():.2f}")

# %% [markdown]
# ## 5. Hidden states per layer, and what padding changes
#
# Whisper was trained on 30 s windows. This project's default (`encoder_mode="variable"`) runs the
# encoder on the audio frames only; `padded` runs the stock 3000-frame input. Same weights, different
# context: the audio frames can attend to 27 s of padding in the padded path. How much does the output
# on the audio frames differ?

# %%
n_audio = int(encoder_frames(features["mel_lengths"])[0])  # ceil(mel / 2)
# the stock input: the feature extractor pads the audio with zeros to 30 s (3000 frames)
feature_extractor = model.processor.feature_extractor  # Whisper's own WhisperFeatureExtractor
mel_30s = feature_extractor(clip, sampling_rate=SAMPLE_RATE, return_tensors="pt")["input_features"]


def residual_stream(features: torch.Tensor, n_frames: int) -> list[torch.Tensor]:
    """Stem + positions, then the output of every block (before the final LayerNorm)."""
    x = nn.functional.gelu(whisper.conv2(nn.functional.gelu(whisper.conv1(features)))).permute(0, 2, 1)
    states = [x[:, :n_frames] + stored[:n_frames]]
    for block in whisper.layers:
        states.append(block(states[-1], None))
    return states


with torch.no_grad():
    full = residual_stream(mel_30s, cfg.max_source_positions)
    # like AudioEncoder.variable: encoder frame i reads mel frames up to 2i + 2, so keep one more
    short = residual_stream(features["input_features"][..., : 2 * n_audio + 1], n_audio)
    variable = model.encoder.variable(features["input_features"], encoder_frames(features["mel_lengths"]))
    stock = whisper(mel_30s).last_hidden_state
print(f"padded: {len(full)} states of {tuple(full[0].shape)}; variable: {tuple(short[0].shape)}")
print(
    f"checks: final LayerNorm of our loop vs AudioEncoder.variable: "
    f"{(whisper.layer_norm(short[-1]) - variable).abs().max():.1e}; "
    f"vs the stock 30 s WhisperEncoder: {(whisper.layer_norm(full[-1]) - stock).abs().max():.1e}"
)

cosine = lambda a, b: nn.functional.cosine_similarity(a, b, dim=-1)  # noqa: E731
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
for i, (a, b) in enumerate(zip(full, short, strict=True)):
    agreement = cosine(a[0, :n_audio], b[0]).numpy()
    name = "positions + stem" if i == 0 else f"after layer {i}"
    print(
        f"{name:17s}: cosine(padded, variable) on audio frames: mean {agreement.mean():.3f}, min {agreement.min():.3f}"
    )
    right.plot(np.arange(n_audio) * 0.02, agreement, label=name)
    left.plot(np.arange(1500) * 0.02, a[0].pow(2).mean(-1).sqrt().numpy(), label=name, linewidth=0.8)
left.axvline(n_audio * 0.02, color="k", linestyle="--", label="end of audio")
left.set(
    xlabel="time (s)",
    ylabel="RMS of the hidden state",
    yscale="log",
    title="Padded path: hidden-state size over 30 s",
)
left.legend(fontsize=7)
right.set(xlabel="time (s)", ylabel="cosine similarity", title="Padded vs variable path, audio frames only")
right.legend(fontsize=7)
save_figure(fig, "03_padded_vs_variable")
plt.show()
last = full[-1][0].pow(2).mean(-1).sqrt()
massive = (last > 10 * last.median()).nonzero().squeeze(-1).tolist()
print(
    f"after the last block: median RMS {last.median():.2f}; {len(massive)} frames above 10x the median "
    f"(max {last.max():.1f}), at {[round(f * 0.02, 2) for f in massive[:3]]} ... {massive[-1] * 0.02:.2f} s"
)
final = cosine(stock[0, :n_audio], variable[0])
print(f"final output (after the last LayerNorm): mean cosine {final.mean():.3f}")
near_end = [f for f in massive if f * 0.02 >= 28]  # the last 2 s of the window
lecture_says(
    f"{len(near_end)} frames near the end of the 30 s window",
    f"up to {last.max() / last.median():.0f} times the median",
    f"agree with a mean cosine of about {final.mean():.2f}",
)

# %% [markdown]
# Three things to read off these curves:
#
# * the residual stream's RMS stays around 1 through the layers, except after the last block on about
#   25 frames near the **end of the 30 s window** (around 29.5 s, printed above): an order of magnitude
#   larger, in every clip, speech or silence. These "massive activations" are tied to *positions*
#   that Whisper saw in every training window; a few isolated frames of some clips do the same;
# * on the audio frames the two paths agree closely (cosine ≈ 0.97-1.0) but not exactly, and least
#   near the end of the clip, where the padded path sees silence and the variable path sees the edge;
# * whatever the projector learns, it learns on one of the two: train and serve with the same
#   `encoder_mode`.
#
# ## 6. Attention maps
#
# Averaged over the 6 heads, each layer's attention (stock padded path) from every audio frame to
# every frame. SDPA never materialises the weights, so we switch the encoder to eager attention for
# this one call. Early layers are local (a bright diagonal: neighbouring 20 ms frames); later ones mix over
# longer ranges. The right panel measures how much of the audio frames' attention is spent on the
# padding.

# %%
whisper.set_attn_implementation("eager")
with torch.no_grad():
    attentions = whisper(mel_30s, output_attentions=True).attentions  # 4 x (1, 6, 1500, 1500)
whisper.set_attn_implementation("sdpa")
show = min(1500, n_audio + 60)
fig, axes = plt.subplots(1, len(attentions) + 1, figsize=(16, 3.6), layout="constrained")
padding_share = []
for i, (ax, att) in enumerate(zip(axes, attentions, strict=False)):
    mean = att[0].mean(0)  # (1500, 1500)
    padding_share.append(float(mean[:n_audio, n_audio:].sum(-1).mean()))
    ax.imshow(mean[:show, :show].sqrt().numpy(), cmap="viridis", origin="lower")
    ax.axhline(n_audio, color="w", linewidth=0.6)
    ax.axvline(n_audio, color="w", linewidth=0.6)
    ax.set(xlabel="key frame (20 ms)", ylabel="query frame (20 ms)", title=f"layer {i} (sqrt scale)")
axes[-1].bar(range(len(padding_share)), padding_share)
axes[-1].set(xlabel="layer", ylabel="share of attention", ylim=(0, 1), title="Audio -> padding")
save_figure(fig, "03_attention_maps")
plt.show()
print(
    "share of the audio frames' attention that goes to padding, per layer:",
    np.round(padding_share, 3).tolist(),
)
most = int(np.argmax(padding_share))
lecture_says(
    f"spend {100 * padding_share[0]:.0f} % (layer 0) to {100 * padding_share[most]:.0f} % (layer {most})"
)

# %% [markdown]
# ## Exercises (about 40 minutes)
#
# Solutions: `notebooks/solutions/03_whisper_encoder.py` (try first).
#
# 1. Compute by hand the encoder frames for 1 s, 7.3 s and 30 s of audio, then verify with the stem.
# 2. Replace the positional table by zeros in a copy of the encoder (`whisper.embed_positions.weight`)
#    and compare outputs on the clip: how much does the encoder rely on positions?
# 3. Extend section 4 to the whole encoder (the 4 blocks by hand, then the final LayerNorm) and match
#    `variable`, the output of `AudioEncoder.variable` in section 5 (`short[i]`, the library's state
#    after block *i*, checks each step on the way). Feed the stem the same mel frames as `short`.
# 4. Pick the head with the most local attention in layer 0 (largest mean weight within ±2 frames of
#    the diagonal). Plot it alone.
# 5. Time the padded and the variable path for this clip (`%timeit`). What speed-up do you get, and why
#    is it roughly `1500 / n_audio` or more?
# 6. Whisper large-v3-turbo has 128 mel bins, 32 encoder layers and d_model 1280. How many parameters
#    do its conv stem and its positional table have?
