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
# # Class 2 — The end-to-end architecture (trace_data)
#
# One clip, three models, one pipeline:
#
# ```
# 16 kHz audio -> log-mel (80 x 100/s) -> Whisper encoder (frozen, 384-d, 50/s)
#              -> projector (trainable: stack k=5 frames, MLP to 576-d, 10/s)
#              -> SmolLM2-135M (frozen) reads [prompt tokens + audio vectors] and writes the text
# ```
#
# `asr.trace.trace` runs a clip through every stage, prints the shapes and draws each stage; we use
# it here and then look at the **modality gap**: the projector must turn acoustic features into
# vectors that live where the LLM's word embeddings live.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

from asr.inference import default_model, load_model
from asr.projector import build_projector
from asr.trace import trace
from course import example_clip, lecture_says, save_figure

DEFAULT_MODEL = default_model(two_pass=False)  # checkpoints/offline of this repository

torch.set_num_threads(1)
torch.manual_seed(0)  # the untrained projector's random init, when no checkpoint exists

trained = (DEFAULT_MODEL / "config.json").is_file()
model = load_model(DEFAULT_MODEL)
print(
    f"model: {'trained checkpoint ' + str(DEFAULT_MODEL) if trained else 'UNTRAINED projector (no checkpoint yet)'}"
)

clip, reference, _ = example_clip(0)
print(f"reference transcript: {reference!r}")

# %% [markdown]
# ## 1. Three parts, one trainable
#
# The encoder and the LLM are frozen; the projector learns. (The shipped checkpoint also trained
# small LoRA adapters inside the LLM; `load_model` folds them into its weights for inference, so
# below they are part of the frozen decoder.) Count the parameters:


# %%
def count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


for name, part in [
    ("encoder (Whisper tiny.en)", model.encoder),
    ("projector", model.projector),
    ("decoder (SmolLM2-135M)", model.decoder),
]:
    print(f"{name:27s} {count(part):>12,d} parameters, {count(part, True):>10,d} trainable")
k, d_enc, d_llm = model.config.projector_stack, model.config.encoder_width, model.config.decoder_width
print(
    f"\nprojector by hand: Linear({k}*{d_enc}={k * d_enc} -> {d_llm}) + Linear({d_llm} -> {d_llm}) + LayerNorm "
    f"= {k * d_enc * d_llm + d_llm + d_llm * d_llm + d_llm + 2 * d_llm:,d}"
)

# %% [markdown]
# ## 2. trace_data: one clip through every stage
#
# `trace` prints the size at each step. Check the arithmetic: mel = samples // 160,
# encoder = ceil(mel / 2) (stride-2 convolution), projector = ceil(encoder / k).

# %%
result = trace(clip, model)
s = result.shapes
assert s.mel_frames == s.samples // 160
assert s.encoder_frames == -(-s.mel_frames // 2)
assert s.projector_positions == -(-s.encoder_frames // s.stack)
print(
    f"\n{s.seconds:.2f} s of audio = {s.projector_positions} LLM positions "
    f"({20 * s.stack} ms each), {s.prompt_tokens - s.projector_positions} text tokens "
    "of prompt around them"
)

# %% [markdown]
# The same numbers as a diagram: each box is a stage with the shape this clip has there (time ×
# width), and below it the flagship's widths (whisper-large-v3-turbo 1280-d into SmolLM3-3B 2048-d).

# %%
stages = [
    ("16 kHz audio", f"{s.samples:,} samples", "same"),
    ("log-mel features", f"{s.mel_frames} × 80 (100/s)", "× 128 mel bins"),
    ("Whisper encoder\n(frozen)", f"{s.encoder_frames} × {d_enc} (50/s)", "× 1280"),
    (f"projector (trainable)\nstack k={s.stack}, MLP", f"{s.projector_positions} × {d_llm} (10/s)", "× 2048"),
    ("SmolLM2-135M\n(frozen, LoRA folded)", f"prompt: {s.prompt_tokens} positions", "SmolLM3-3B"),
    ("transcript", "token by token", ""),
]
fig, ax = plt.subplots(figsize=(13, 2.6))
ax.set(xlim=(0, len(stages)), ylim=(0, 1))
ax.axis("off")
for i, (name, shape, flagship) in enumerate(stages):
    colour = "#cde5c8" if "trainable" in name else "#dde3ee"
    ax.text(
        i + 0.45,
        0.62,
        name,
        ha="center",
        va="center",
        fontsize=10,
        bbox={"boxstyle": "round,pad=0.5", "facecolor": colour, "edgecolor": "0.4"},
    )
    ax.text(i + 0.45, 0.25, shape, ha="center", fontsize=9)
    ax.text(i + 0.45, 0.08, flagship, ha="center", fontsize=8, color="0.45")
    if i:
        ax.annotate("", (i + 0.02, 0.62), (i - 0.12, 0.62), arrowprops={"arrowstyle": "->", "color": "0.3"})
ax.set_title(
    f"One {s.seconds:.2f} s clip through the offline model (grey: the flagship's widths)", fontsize=10
)
save_figure(fig, "02_pipeline")
plt.show()

# %%
save_figure(result.figures["waveform"], "02_trace_waveform")
save_figure(result.figures["log_mel"], "02_trace_log_mel")
display(result.figures["waveform"], result.figures["log_mel"])

# %% [markdown]
# The encoder output is 50 frames per second, 384 numbers each. Some channels are almost constant over
# time (horizontal stripes): Whisper's hidden states have a few "massive" dimensions, which is one
# reason the projector ends with a LayerNorm.

# %%
save_figure(result.figures["encoder"], "02_trace_encoder")
save_figure(result.figures["projector"], "02_trace_projector")
display(result.figures["encoder"], result.figures["projector"])

# %% [markdown]
# ## 3. The prompt the LLM reads
#
# The prompt is the LLM's own chat template. The text side belongs to the **processor**
# (`model.processor`, an `asr.processing.ASRProcessor`: feature extractor, tokenizer and prompt
# builder): it expands the audio placeholder to exactly `projector_positions` slots
# (`processor.prompt_builder.build`). The **model** only sees tensors: it *replaces* those slots'
# embeddings by the projector's vectors (`ASRModel.merge`). No new token is added to the vocabulary.

# %%
processor = model.processor
prompt = processor.prompt_builder.build(s.projector_positions)
pieces, run = [], 0
for token_id, is_audio in zip(prompt.input_ids, prompt.audio_mask, strict=True):
    if is_audio:
        run += 1
        continue
    if run:
        pieces.append(f"[{run} audio vectors]")
        run = 0
    pieces.append(processor.tokenizer.decode([token_id]))
print("".join(pieces))
print(
    f"{len(prompt.input_ids)} positions: {sum(prompt.audio_mask)} audio + {len(prompt.input_ids) - sum(prompt.audio_mask)} text"
)
print(f"\nmodel output: {result.text!r}")

# %% [markdown]
# ## 4. The modality gap
#
# The LLM only ever saw its own 49 152 token embeddings. Where do the audio vectors land relative to
# them? Three measurements:
#
# * **scale**: RMS of a vector;
# * **nearest token**: cosine similarity of each audio vector with its nearest token embedding;
# * **a 2-D picture**: PCA of token embeddings and audio vectors together.

# %% [markdown]
# We measure the audio vectors of two projectors on the same encoder frames: a freshly initialised
# one (what `ASRModel.from_sources` builds before any training) and the shipped checkpoint's, when
# there is one.

# %%
embeddings = model.decoder.get_input_embeddings().weight.detach()
frames = torch.from_numpy(result.encoder)[None]
torch.manual_seed(0)
with torch.no_grad():
    projected = {"untrained projector": build_projector(model.config)(frames)[0]}
if trained:
    projected["shipped projector"] = torch.from_numpy(result.projected)
rms = lambda x: x.pow(2).mean(-1).sqrt()  # noqa: E731
unit = torch.nn.functional.normalize
sample = embeddings[torch.randperm(len(embeddings), generator=torch.Generator().manual_seed(0))[:2000]]
token_token = (unit(sample, dim=-1) @ unit(embeddings, dim=-1).T).topk(2, dim=-1).values[:, 1]
print(
    f"token embeddings: median RMS {rms(embeddings).median():.3f}, cosine to their nearest other token {token_token.mean():.3f}"
)
lecture_says(
    f"(median {rms(embeddings).median():.3f})", f"(tokens have about {token_token.mean():.2f} with theirs)"
)
for name, audio in projected.items():
    best, nearest = (unit(audio, dim=-1) @ unit(embeddings, dim=-1).T).max(dim=-1)  # (positions,)
    print(
        f"\n{name}: median RMS {rms(audio).median():.3f}, cosine to the nearest token {best.mean():.3f} (mean)"
    )
    print(
        "  nearest token of the first 12 positions:",
        [processor.tokenizer.decode([i]) for i in nearest[:12].tolist()],
    )
    if name == "untrained projector":
        lecture_says(
            f"an RMS of exactly {rms(audio).median():.3f}",
            f"a cosine similarity of about {best.mean():.2f} with their nearest token",
        )
    else:
        lecture_says(f"(median {rms(audio).median():.2f}), a cosine of only about {best.mean():.2f}")

# %%
both = torch.cat([sample, *projected.values()]).numpy()
centred = both - both.mean(axis=0)
_, _, components = np.linalg.svd(centred, full_matrices=False)
xy = centred @ components[:2].T
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
left.scatter(*xy[: len(sample)].T, s=3, alpha=0.4, label="2000 token embeddings")
start = len(sample)
for (name, audio), colour in zip(projected.items(), ["tab:gray", "tab:red"], strict=False):
    left.scatter(*xy[start : start + len(audio)].T, s=14, color=colour, label=f"{len(audio)} vectors, {name}")
    start += len(audio)
left.set(
    xlabel="principal component 1",
    ylabel="principal component 2",
    title="Token embeddings vs audio vectors (PCA)",
)
left.legend(fontsize=8)
right.hist(rms(embeddings).numpy(), bins=80, color="tab:blue", alpha=0.7, label="49 152 token embeddings")
for (name, audio), colour in zip(projected.items(), ["tab:gray", "tab:red"], strict=False):
    for value in rms(audio).tolist():  # one line per audio vector
        right.axvline(value, color=colour, alpha=0.3, linewidth=1)
    right.axvline(rms(audio)[0].item(), color=colour, linewidth=1, label=f"{len(audio)} vectors, {name}")
right.set(xlabel="RMS of the vector", ylabel="number of token embeddings", title="Scale of the LLM's inputs")
right.legend(fontsize=8)
save_figure(fig, "02_modality_gap")
plt.show()

# %% [markdown]
# Before training, the audio vectors have the right *scale* (the projector's LayerNorm gain starts at
# the embeddings' median RMS, so every vector has exactly that RMS) but point in directions no token
# uses: the LLM answers with something generic ("The audio is ..."). Training does **not** close the
# gap by turning them into word embeddings: the shipped projector's vectors have about twice the
# tokens' RMS, are hardly closer to their nearest token in cosine, and in the PCA picture they move
# *away* from the token cloud, spread out along a direction the tokens do not use. What training
# finds is vectors the frozen layers can *use*: Class 4 shows the transcript tokens attending to
# them, and the appendix reads words off them with the CTC head.
#
# ## 5. Where the decoder listens
#
# For every generated token, the attention (averaged over 9 heads and 30 layers) from the position that
# predicts it to each audio position. Left: normalised per row; right: the share of that token's whole
# attention that goes to audio at all.

# %%
display(result.figures["attention"])
share = result.audio_share
print(
    f"attention mass on audio per generated token: mean {share.mean():.3f}, min {share.min():.3f}, "
    f"max {share.max():.3f} ({s.projector_positions} of {s.prompt_tokens + s.generated_tokens} positions)"
)

# %% [markdown]
# A trained model shows a rough diagonal: early tokens attend to early audio, later ones later.
# An untrained one spreads attention or fixes it on the first positions (an "attention sink").
#
# ## Exercises (about 40 minutes)
#
# Solutions: `notebooks/solutions/02_end_to_end.py` (try first).
#
# 0. **Write your own `trace_data.py`** (about 30 lines, public API only). Input: an audio path and
#    an `--out` folder. Load the clip (`asr.audio.load_audio`) and the model
#    (`asr.inference.load_model(default_model(two_pass=False))`), compute the features with the
#    processor (`model.processor.features([clip])`, or `model.processor(audio=clip)`), run the encoder
#    (`model.encode`) and the projector (`model.project`), print the shape at every stage, and save
#    `encoder_output.png` and `projector_output.png` (`imshow` of the frames, time on the x axis).
#    Print the shapes of both models: this offline one (80 mel bins, encoder frames of 384,
#    projector positions of 576) and the flagship whisper-large-v3-turbo → SmolLM3-3B (128 mel bins,
#    encoder frames of 1280, projector positions of 2048), with the same frame counts. The original
#    seed course's 1280 → 1536 is wrong for SmolLM3-3B, whose hidden size is 2048. `asr.trace` is the
#    full model answer; `notebooks/solutions/trace_data.py` is a short one.
# 1. Run `python -m asr.trace YOUR.wav --out trace_out` from a terminal (record yourself, or write a
#    synthetic clip with `soundfile.write`). Open the PNGs. Which figure changes most between
#    speakers?
# 2. Trace the same clip with `trace(clip, model, layer=0)` and `layer=29`. Which layers look at the
#    audio most? Plot `result.audio_share.mean()` for every layer.
# 3. Build a model with `projector_stack=10` (`ASRModel.from_sources(ASRConfig(projector_stack=10))`)
#    and predict the shapes before tracing. What do you gain and lose with larger *k*?
# 4. Compute the *audio share* a trained model would need: if 34 of 68 prompt positions are audio,
#    what share would uniform attention give? Compare with the figure.
# 5. Modality gap: after Class 5's training loop, come back and re-run section 4 with the trained
#    projector. Does the nearest-token cosine change? Does the PCA picture?
