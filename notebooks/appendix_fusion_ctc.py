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
# # Appendix — Fusion and CTC
#
# Class 4 showed one way to join audio and a language model: the audio vectors are a prefix of the
# LLM's prompt. This appendix looks at the other ways (shallow fusion, deep fusion in Gulcehre et
# al.'s sense) and at CTC, the encoder-only recogniser, which the shipped model also uses: during
# training, a CTC loss asks every audio position to name the token being spoken (`asr.ctc`). At the
# end we look at the shipped model's audio positions through that CTC head, without the LLM.

# %%
# %matplotlib inline
import math

import matplotlib.pyplot as plt
import torch

from asr.ctc import ctc_greedy
from asr.inference import default_model, load_model
from course import example_clip, save_figure

torch.set_num_threads(1)
DEFAULT_MODEL = default_model(two_pass=False)  # checkpoints/offline of this repository
model = load_model(DEFAULT_MODEL)
processor, decoder, tokenizer = model.processor, model.decoder, model.processor.tokenizer
clip, reference, origin = example_clip(1)
print(f"clip from {origin}: {reference!r}, {len(clip) / 16000:.2f} s")

# %% [markdown]
# ## 1. Three ways to bring in a language model
#
# * **Prefix conditioning** (this project, SLAM-ASR): the audio vectors are part of one LLM's input and
#   meet the text in every layer through self-attention. One model decides; it needs a trained
#   projector.
# * **Shallow fusion**: a separate acoustic model proposes hypotheses (each step's tokens, or an
#   n-best list); an external LM adds its score: `score = log p_AM(y | audio) + λ · log p_LM(y) + β · |y|`.
#   The models stay independent: swap in a domain LM without retraining; λ and β are tuned on a dev
#   set.
# * **Deep fusion** (Gulcehre et al., 2015): the hidden state of a separately trained LM is *gated*
#   into the ASR decoder's hidden state, and the gate is trained. The seed of this course used the
#   name for prefix conditioning; the literature does not.
#
# Shallow fusion in numbers: two hypotheses with made-up acoustic scores, rescored with SmolLM2.


# %%
@torch.no_grad()
def log_prob(text: str) -> float:
    """Total log-probability of ``text`` under the LLM (natural log, after the first token)."""
    ids = tokenizer(text, return_tensors="pt").input_ids
    logits = decoder(ids).logits[0, :-1]
    return float(torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None]).sum())


hypotheses = {"It is easy to wreck a nice beach.": -4.1, "It is easy to recognize speech.": -4.6}
lm = {h: log_prob(h) for h in hypotheses}
for lam in (0.0, 0.1, 0.3):
    scores = {h: am + lam * lm[h] for h, am in hypotheses.items()}
    best = max(scores, key=scores.get)
    print(f"lambda={lam:.1f}: " + ", ".join(f"{s:7.2f}" for s in scores.values()) + f"  -> {best!r}")

# %% [markdown]
# The same scores for every λ from 0 to 0.3: each hypothesis is a straight line (slope: its LM
# log-probability); the decision is the upper line, and it changes where the lines cross.

# %%
lams = torch.linspace(0, 0.3, 61)
fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
for h, am in hypotheses.items():
    ax.plot(lams, am + lams * lm[h], label=f"{h!r}: AM {am}, LM {lm[h]:.1f}")
ax.set(xlabel="LM weight λ", ylabel="fused score", title="Shallow fusion: score of each hypothesis against λ")
ax.legend(fontsize=8)
save_figure(fig, "A_fusion_sweep")
plt.show()

# %% [markdown]
# ## 2. CTC
#
# CTC (Connectionist Temporal Classification, Graves et al. 2006) needs no decoder: a linear layer on
# each frame predicts a symbol or a *blank*; the transcript is read by merging repeats and removing
# blanks. No autoregression: fast and monotonic, but each frame decides alone (conditional
# independence), so spelling and grammar need an external LM. The CTC loss sums over every alignment
# that collapses to the transcript:

# %%
alphabet = ["_", "a", "c", "e", "g", "k", "t"]  # "_" is the blank
frames_path = "kk_aa__tt_ee_"
collapsed = "".join(
    ch for i, ch in enumerate(frames_path) if ch != "_" and (i == 0 or ch != frames_path[i - 1])
)
print(f"frame-wise argmax {frames_path!r} -> {collapsed!r}")

target = torch.tensor([[alphabet.index(ch) for ch in "kate"]])
logits = torch.randn(len(frames_path), 1, len(alphabet), generator=torch.Generator().manual_seed(0))
for i, ch in enumerate(frames_path):
    logits[i, 0, alphabet.index(ch)] += 4.0  # an "acoustic model" that favours the path above
log_probs = logits.log_softmax(-1)
loss = torch.nn.functional.ctc_loss(
    log_probs, target, torch.tensor([len(frames_path)]), torch.tensor([4]), reduction="sum"
)
best_path = float(sum(log_probs[i, 0, alphabet.index(ch)] for i, ch in enumerate(frames_path)))
print(f"-log p('kate') over all alignments = {float(loss):.3f}; the best single path alone: {-best_path:.3f}")
print(
    f"alignments of 4 labels in 13 frames contribute: p_all / p_best = {math.exp(-float(loss) - best_path):.2f}"
)
print(
    f"at 50 encoder frames per second there is ample room: {len(clip) // 320} frames for {len(reference)} characters"
)

# %% [markdown]
# ## 3. The CTC head of the shipped model
#
# The shipped checkpoint was trained with an auxiliary CTC loss on the projector output
# (`ASRConfig.ctc_weight`). Its classes are the LLM's own tokens, scored by the dot product of an audio
# vector with each token's (frozen) output embedding, plus one learned blank: an audio position that
# scores high for a token lies near that token's embedding, which is what the LLM reads. In training
# the softmax ran over the tokens of the batch's own transcripts only (a sampled softmax), so the head
# learned to tell *those* tokens apart and to place them in time. Two read-outs show what that means.
# First, over the whole 49 152-token vocabulary:

# %%
assert model.ctc_head is not None, "section 3 needs the shipped checkpoint (trained with ctc_weight > 0)"
with torch.no_grad():
    features = processor.features([clip])
    audio, n_positions = model.audio_embeddings(features["input_features"], features["mel_lengths"])
    vocabulary = decoder.get_output_embeddings().weight
    full = model.ctc_head(audio, vocabulary)
print(f"reference:                        {reference.lower()!r}")
print(f"LLM transcript:                   {model.transcribe([clip])[0]!r}")
print(f"CTC read-out, whole vocabulary:   {tokenizer.decode(ctc_greedy(full, n_positions)[0]).strip()!r}")

# %% [markdown]
# The whole-vocabulary read-out puts its spikes in the right places but picks tokens no transcript
# ever contained: tokens it never had to reject in training, some with long embeddings that win any
# dot product. It is not a recogniser. Restricted to the classes training used, the transcript's own
# tokens, it is a **forced alignment**: where in the audio each token of the transcript is spoken.

# %%
targets = tokenizer(reference.lower(), add_special_tokens=False)["input_ids"]
classes = sorted(set(targets))
with torch.no_grad():
    aligned = model.ctc_head(audio, vocabulary[classes])  # (1, positions, len(classes) + 1)
print(
    f"CTC read-out, transcript tokens:  {tokenizer.decode([classes[c] for c in ctc_greedy(aligned, n_positions)[0]])!r}"
)

probs = aligned[0, : int(n_positions[0])].exp().T  # (classes + blank, positions)
fig, ax = plt.subplots(figsize=(9, 3))
image = ax.imshow(
    probs.numpy(),
    aspect="auto",
    cmap="magma",
    vmin=0,
    vmax=1,
    extent=(0, probs.shape[1] * 0.1, probs.shape[0] - 0.5, -0.5),
)
ax.set_yticks(range(len(classes) + 1), [repr(tokenizer.decode([c])) for c in classes] + ["blank"])
ax.set(
    xlabel="time (s)",
    title=f"CTC head of the shipped model on {reference.lower()!r}: P(class) per audio position",
)
fig.colorbar(image, ax=ax, label="probability")
save_figure(fig, "A_ctc_posteriors")
plt.show()

# %% [markdown]
# Most positions are blank; each token lights up for one or two positions, in the order it is
# spoken. The loss asks every audio position to carry what is said at that moment: a frozen LLM
# reading such positions has less room to write fluent words that are not in the audio.
#
# ## Exercises (about 20 minutes)
#
# Solutions: `notebooks/solutions/appendix_fusion_ctc.py` (try first).
#
# 1. Shallow fusion: find λ where the decision flips in section 1. What does β (a length bonus) do?
# 2. CTC: change `frames_path` to `"kkaaatteee____"`. What does greedy collapsing give? Why does CTC
#    need the blank to spell "letter"?
# 3. Align five clips of `example_clip(i)` with the CTC head over the five transcripts' tokens (the
#    classes a training batch would use) and compare the read-out with the LLM's transcript. What
#    does the read-out get right, and why is it not a fair recogniser?
