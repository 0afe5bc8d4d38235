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
# # Class 5 — Training the projector
#
# Only the projector (1.44 M parameters) learns; the encoder (8.2 M) and the LLM (134.5 M) stay
# frozen. The training signal is the LLM's own next-token loss on the transcript, back-propagated
# *through* the frozen LLM into the audio vectors and on into the projector.
#
# Here we build training examples by hand (labels and masking), check the loss against a computation
# from the logits, and run a real, small training loop: 20 steps on three synthetic clips, on a CPU,
# in about a minute. That is enough to watch the loss fall and the model memorise its training clips;
# it is not enough to generalise (the held-out clip shows it). The full recipe (`make train`,
# `train.py`) is the same loop over thousands of clips.
#
# Two objects share the work: the **processor** (`model.processor`) turns audio and text into tensors
# (log-mel features, prompt ids, masks, labels) and generated ids back into text; the **model** takes
# tensors and returns tensors (the loss, logits, or token ids). Training only ever touches the second.

# %%
# %matplotlib inline
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from asr import ASRConfig, ASRModel
from asr.prompt import IGNORE_INDEX
from asr.synth import synthesize
from course import lecture_says, save_figure

torch.set_num_threads(1)
torch.manual_seed(0)
model = ASRModel.from_sources(ASRConfig()).eval()  # fresh, untrained projector
processor = model.processor  # feature extractor + tokenizer + prompt builder

train_texts = ["one two three", "hello world", "open the door"]
held_out_text = "open the window"
clips = [synthesize(t) for t in [*train_texts, held_out_text]]
for text, clip in zip([*train_texts, held_out_text], clips, strict=True):
    print(f"{len(clip) / 16000:4.2f} s  {text!r}")

# %% [markdown]
# ## 1. Cache the encoder outputs
#
# The encoder is frozen, so its output for a clip never changes: compute it once and train from the
# cache (`ASRModel.forward(encoder_frames=..., encoder_lengths=...)` skips the encoder). On real data
# `asr.store` (the feature store) keeps them on disk for training runs; here a list is enough.

# %%
start = time.perf_counter()
cache = []
with torch.no_grad():
    for clip in clips:
        features = processor.features([clip])  # processor: audio -> log-mel tensors
        frames, lengths = model.encode(features["input_features"], features["mel_lengths"])
        cache.append(frames[0, : int(lengths[0])])
print(
    f"encoded {len(cache)} clips in {time.perf_counter() - start:.2f} s: frames {[tuple(f.shape) for f in cache]}"
)


def batch(indices: list[int], with_transcript: bool = True) -> dict[str, torch.Tensor]:
    """Encoder frames + prompts for some clips, exactly as the training collator
    (`asr.data.Collator`) builds them: the processor makes the prompt tensors."""
    frames = pad_sequence([cache[i] for i in indices], batch_first=True)
    lengths = torch.tensor([len(cache[i]) for i in indices])
    n_audio = processor.audio_positions(lengths)  # ceil(frames / k) slots for each clip
    texts = [*train_texts, held_out_text]
    if with_transcript:  # training: transcripts appended as labels, right-padded
        prompts = processor.prompts(n_audio, texts=[texts[i] for i in indices], padding_side="right")
    else:  # generation: each prompt ends where the answer begins, left-padded, no labels
        prompts = processor.prompts(n_audio, padding_side="left")
    return {**prompts, "encoder_frames": frames, "encoder_lengths": lengths}


# %% [markdown]
# ## 2. Labels and masking
#
# One training example is *prompt + transcript + `<|im_end|>`*. The loss must only teach the
# transcript: every prompt position (system text, audio slots, instruction) gets the label
# `IGNORE_INDEX = -100`, which `cross_entropy` skips. The end-of-turn token is a target too: the model
# must learn to *stop*. Padding (right side, in a batch) is also -100 and masked out of attention.

# %%
example = batch([1])
ids, labels, audio = example["input_ids"][0], example["labels"][0], example["audio_mask"][0]
print(f"{len(ids)} positions: {int(audio.sum())} audio, {int((labels != IGNORE_INDEX).sum())} with a label")
print(" pos  audio  label   token")
for i in range(len(ids)):
    if audio[i] and not audio[i - 1]:
        print(f"{i:4d}  AUDIO   -100   ... {int(audio.sum())} slots ...")
    elif not audio[i] and (i > len(ids) - 16 or i < 3):
        print(f"{i:4d}         {int(labels[i]):5d}   {processor.tokenizer.decode([int(ids[i])])!r}")

# from audio instead of cached frames, one call makes the whole training batch: features + the same
# prompt tensors (what `model(**batch)` needs for the loss)
full = processor(audio=[clips[1]], text=[train_texts[1]])
print("processor(audio=..., text=...):", {k: tuple(v.shape) for k, v in full.items()})
assert torch.equal(full["input_ids"], example["input_ids"]) and torch.equal(full["labels"], example["labels"])

# %% [markdown]
# The model's loss is the mean cross-entropy of *predicting token t+1 from position t*, over the
# labelled positions. Recompute it from the logits of every position (`logits_at_labels=False`;
# training skips the work: the LM head runs only where a label is predicted, and the prompt's head,
# the same in every row, runs once per batch: the same loss in ~40% less time per step):

# %%
with torch.no_grad():
    out = model(**example, logits_at_labels=False)
    lean = model(**example)  # what training runs: logits only at the labelled positions
print("lean forward: logits", tuple(lean.logits.shape), f"loss {lean.loss:.4f}")
shift_logits, shift_labels = out.logits[0, :-1], labels[1:]
keep = shift_labels != IGNORE_INDEX
by_hand = torch.nn.functional.cross_entropy(shift_logits[keep], shift_labels[keep])
print(
    f"model loss {out.loss:.4f}, by hand {by_hand:.4f}; uniform guessing would be ln(49152) = {np.log(49152):.2f}"
)
per_token_before = torch.nn.functional.cross_entropy(shift_logits[keep], shift_labels[keep], reduction="none")

# %% [markdown]
# ## 3. The training loop
#
# Plain PyTorch: AdamW on the projector's parameters only, the whole (tiny) training set as one batch,
# 20 steps. The gradient flows through the 30 frozen LLM layers (their weights get no gradient, but
# the activations do), so one step costs a forward and a backward pass of the whole LLM: about 2-3 s
# on one CPU thread for three clips.

# %%
optimizer = torch.optim.AdamW(model.projector.parameters(), lr=5e-3, weight_decay=0.0)
before = {n: p.detach().clone() for n, p in model.projector.named_parameters()}
losses, norms = [], []
model.train()  # the projector's dropout (0 here); the frozen parts stay in eval mode
start = time.perf_counter()
train_batch = batch([0, 1, 2])
for step in range(20):
    loss = model(**train_batch).loss
    loss.backward()
    norms.append(
        float(torch.nn.utils.clip_grad_norm_(model.projector.parameters(), float("inf")))
    )  # measure only
    optimizer.step()
    optimizer.zero_grad()
    losses.append(loss.item())
    if step % 5 == 4:
        print(
            f"step {step + 1:2d}  loss {loss:.3f}  grad norm {norms[-1]:.2f}  {time.perf_counter() - start:5.1f} s"
        )
_ = model.eval()
lecture_says(
    f"The loss falls from about {losses[0]:.0f} to about {losses[-1]:.0f}",
    when=True,  # the tenths vary by CPU
)  # espeak-ng speech

# %%
steps = np.arange(1, len(losses) + 1)
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8), layout="constrained")
left.plot(steps, losses, "o-", markersize=3, label="training loss (all 3 clips)")
left.axhline(np.log(49152), color="gray", linestyle=":", label="uniform over the vocabulary")
left.set(xlabel="step", ylabel="cross-entropy (nats per token)", title="Training loss", ylim=(0, None))
left.legend()
right.plot(steps, norms, "o-", markersize=3)
right.set(xlabel="step", ylabel="gradient norm", title="Gradient norm of the projector")
save_figure(fig, "05_training_loss")
plt.show()

# %% [markdown]
# ## 4. What did it learn?
#
# Transcribe the three training clips and the held-out one. With three clips and 20 steps the
# projector can only memorise: expect most training sentences back and a guess for the held-out one.
# The same split as in training: the processor makes the (left-padded) prompts, the model returns
# token ids, the processor turns them into text.

# %%
with torch.no_grad():
    b = batch(list(range(4)), with_transcript=False)
    ids = model.generate(**b, max_new_tokens=12)  # (4, <= 12) token ids
outputs = processor.batch_decode(ids)
for i, (text, output) in enumerate(zip([*train_texts, held_out_text], outputs, strict=True)):
    print(f"{'train' if i < 3 else 'HELD-OUT':8s} reference {text!r:22s} -> {output!r}")

# %% [markdown]
# Which tokens got easier? The loss per target token of the example from section 2, before and after:

# %%
with torch.no_grad():
    logits = model(**example, logits_at_labels=False).logits[0, :-1]
per_token_after = torch.nn.functional.cross_entropy(logits[keep], shift_labels[keep], reduction="none")
names = [processor.tokenizer.decode([int(t)]) for t in shift_labels[keep]]
x = np.arange(len(names))
fig, ax = plt.subplots(figsize=(8, 3.2), layout="constrained")
ax.bar(x - 0.2, per_token_before.numpy(), width=0.4, label="before training")
ax.bar(x + 0.2, per_token_after.numpy(), width=0.4, label="after 20 steps")
ax.set_xticks(x, [repr(n) for n in names])
ax.set(xlabel="target token", ylabel="cross-entropy (nats)", title=f"Per-token loss for {train_texts[1]!r}")
ax.legend()
save_figure(fig, "05_per_token_loss")
plt.show()

# %% [markdown]
# And the parameters: how far did each tensor move, relative to its size? The output LayerNorm's gain
# and bias set the scale and offset of every audio vector the LLM sees.

# %%
for name, p in model.projector.named_parameters():
    moved, size = (p.detach() - before[name]).norm(), before[name].norm()
    relative = f"relative change {moved / size:.3f}" if size > 0 else "(started at zero)"
    print(f"{name:16s} {tuple(p.shape)!s:12s} moved by {moved:7.3f}  {relative}")
audio_vectors, _ = model.project(b["encoder_frames"][:1], b["encoder_lengths"][:1])
rms = audio_vectors[0].pow(2).mean(-1).sqrt()
print(
    f"audio vector RMS now {rms.min():.3f} to {rms.max():.3f} (token embeddings: median {model.config.projector_output_rms:.3f})"
)

# %% [markdown]
# ## Exercises (about 40 minutes)
#
# Solutions: `notebooks/solutions/05_training_projector.py` (try first).
#
# 1. **Generalisation.** Synthesize 20 sentences with `asr.synth.sentences(20, seed=1)` and several
#    voices, cache them, and train 60 steps in batches of 4. Does the held-out clip improve? Plot train vs held-out
#    loss (compute the held-out loss without `backward`).
# 2. **Learning rate.** Repeat with lr 3e-4 and 3e-2. Which curve is too slow, which unstable?
#    Add a linear warm-up over the first 5 steps.
# 3. **Masking bug hunt.** Set every label to the input id (no masking) and train 10 steps. What does
#    the loss measure now, and why is it misleading?
# 4. **Stopping.** Remove the `<|im_end|>` target (set its label to -100). What happens to generation?
# 5. **k.** Train the same loop with `ASRConfig(projector_stack=10)`. Speed per step? Loss after 20 steps?
# 6. **Real speech.** If `../shared/data` is present, take 8 clips from `an4.train.jsonl` (short
#    utterances) instead of synthetic ones.
