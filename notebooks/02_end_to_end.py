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
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

from asr.audio import load_audio
from asr.inference import default_model, load_model
from asr.synth import synthesize
from asr.trace import trace

DEFAULT_MODEL = default_model(two_pass=False)  # checkpoints/offline of this repository

torch.set_num_threads(1)
torch.manual_seed(0)  # the untrained projector's random init, when no checkpoint exists

trained = (DEFAULT_MODEL / "config.json").is_file()
model = load_model(DEFAULT_MODEL)
print(
    f"model: {'trained checkpoint ' + str(DEFAULT_MODEL) if trained else 'UNTRAINED projector (no checkpoint yet)'}"
)

DATA = Path.cwd().resolve().parent.parent / "shared" / "data"
MANIFEST = DATA / "speechocean762.dev.jsonl"
if MANIFEST.is_file():
    row = json.loads(MANIFEST.read_text().splitlines()[0])
    clip, reference = load_audio(DATA / row["audio"]), row["text"]
else:
    reference = "mark is going to see elephant"
    clip = synthesize(reference)
print(f"reference transcript: {reference!r}")

# %% [markdown]
# ## 1. Three parts, one trainable
#
# The encoder and the LLM are frozen; only the projector learns. Count the parameters:


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

# %%
display(result.figures["waveform"], result.figures["log_mel"])

# %% [markdown]
# The encoder output is 50 frames per second, 384 numbers each. Some channels are almost constant over
# time (horizontal stripes): Whisper's hidden states have a few "massive" dimensions, which is one
# reason the projector ends with a LayerNorm.

# %%
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
# * **scale**: RMS of a vector. The projector's LayerNorm gain starts at the embeddings' median RMS
#   with zero bias, so before training *every* audio vector has exactly that RMS;
# * **nearest token**: cosine similarity of each audio vector with its nearest token embedding;
# * **a 2-D picture**: PCA of token embeddings and audio vectors together.

# %%
embeddings = model.decoder.get_input_embeddings().weight.detach()
audio = torch.from_numpy(result.projected)
rms = lambda x: x.pow(2).mean(-1).sqrt()  # noqa: E731
unit = torch.nn.functional.normalize
similarity = unit(audio, dim=-1) @ unit(embeddings, dim=-1).T  # (positions, vocab)
best, nearest = similarity.max(dim=-1)
sample = embeddings[torch.randperm(len(embeddings), generator=torch.Generator().manual_seed(0))[:2000]]
token_token = (unit(sample, dim=-1) @ unit(embeddings, dim=-1).T).topk(2, dim=-1).values[:, 1]
print(
    f"RMS: token embeddings median {rms(embeddings).median():.3f}, audio vectors median {rms(audio).median():.3f}"
)
print(
    f"cosine to nearest token: audio vectors {best.mean():.3f} (mean), tokens to their nearest other token "
    f"{token_token.mean():.3f}"
)
print(
    "nearest token of the first 12 audio positions:",
    [processor.tokenizer.decode([i]) for i in nearest[:12].tolist()],
)

# %%
both = torch.cat([sample, audio]).numpy()
centred = both - both.mean(axis=0)
_, _, components = np.linalg.svd(centred, full_matrices=False)
xy = centred @ components[:2].T
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
left.scatter(*xy[: len(sample)].T, s=3, alpha=0.4, label="2000 token embeddings")
left.scatter(*xy[len(sample) :].T, s=14, color="tab:red", label=f"{len(audio)} audio vectors")
left.set(
    xlabel="principal component 1",
    ylabel="principal component 2",
    title="Token embeddings vs audio vectors (PCA)",
)
left.legend()
right.hist(rms(embeddings).numpy(), bins=80, color="tab:blue", alpha=0.7, label="49 152 token embeddings")
for value in rms(audio).numpy():
    right.axvline(value, color="tab:red", alpha=0.3, linewidth=1)
right.axvline(rms(audio)[0].item(), color="tab:red", linewidth=1, label=f"{len(audio)} audio vectors")
right.set(xlabel="RMS of the vector", ylabel="number of token embeddings", title="Scale of the LLM's inputs")
right.legend()
plt.show()

# %% [markdown]
# With an untrained projector the audio vectors have the right *scale* (the LayerNorm sees to that)
# but point in directions no token uses, and the LLM answers with something generic ("The audio
# is ..."). Training (Class 5) moves them to where the LLM can read them; they never need to coincide
# with word embeddings, only to be *useful* to the frozen layers.
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
