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
# # Appendix — Fusion and CTC: solutions to the exercises
#
# Worked solutions for the exercises at the end of `notebooks/appendix_fusion_ctc.py`. Run it like the
# notebook, with `notebooks/` as the working directory. About a minute on one CPU thread.

# %%
import math

import torch

from asr.ctc import ctc_greedy
from asr.evaluate import corpus_wer
from asr.inference import default_model, load_model
from course import example_clip, lecture_says

torch.set_num_threads(1)
model = load_model(default_model(two_pass=False))
processor, decoder, tokenizer = model.processor, model.decoder, model.processor.tokenizer


# %% [markdown]
# ## Exercise 1 — Shallow fusion: where the decision flips, and what β does

# %%
hypotheses = {"It is easy to wreck a nice beach.": -4.1, "It is easy to recognize speech.": -4.6}
beach, speech = hypotheses


@torch.no_grad()
def log_prob(text: str) -> float:
    """Total log-probability of ``text`` under the LLM (natural log, after the first token)."""
    ids = tokenizer(text, return_tensors="pt").input_ids
    logits = decoder(ids).logits[0, :-1]
    return float(torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None]).sum())


lm = {h: log_prob(h) for h in hypotheses}
n_tokens = {h: len(tokenizer(h).input_ids) for h in hypotheses}
for h in hypotheses:
    print(f"AM {hypotheses[h]:5.2f}  LM {lm[h]:7.2f}  {n_tokens[h]:2d} tokens  {h!r}")


def flip(beta: float) -> float:
    """lambda at which both hypotheses score the same: am + lambda * lm + beta * tokens."""
    gap = hypotheses[beach] - hypotheses[speech] + beta * (n_tokens[beach] - n_tokens[speech])
    return gap / (lm[speech] - lm[beach])


lam = flip(0.0)
print(f"\nbeta = 0: the decision flips at lambda = {lam:.4f}")
lecture_says(f"at λ ≈ {lam:.2f}", when=True)  # the LM alone: no speech involved
for trial in (lam - 0.005, lam + 0.005):
    scores = {h: hypotheses[h] + trial * lm[h] for h in hypotheses}
    print(f"  lambda = {trial:.4f}: best {max(scores, key=scores.get)!r}")
for beta in (0.5, 1.0, 2.0):
    print(f"beta = {beta}: flips at lambda = {flip(beta):.4f}")

# %% [markdown]
# **Answer.** The scores are equal where am_b + λ·lm_b = am_s + λ·lm_s, i.e.
# λ* = (am_b − am_s) / (lm_s − lm_b) = 0.5 / (LM gap). With the LM scores above (about −30 against −46)
# that is λ* ≈ 0.03. Below it the acoustic model's favourite ("wreck a nice beach") wins, and above it
# the LM's does. The flip point is the ratio of the acoustic margin to the LM margin.
#
# β·|y| adds a bonus per token. Every token adds a negative term log p_LM to the LM score, so with λ > 0
# fusion prefers short hypotheses and tends to *delete* words. β (the word insertion bonus) offsets
# this. Here the "beach" hypothesis has more tokens (printed above), so a positive β favours it and
# moves the flip to a larger λ. Too large a β favours insertions instead. λ and β are therefore tuned
# together on a dev set, against the word error rate.

# %% [markdown]
# ## Exercise 2 — CTC and the blank


# %%
def collapse(path: str) -> str:
    """CTC's greedy read-out: merge repeats, then drop blanks ("_")."""
    return "".join(ch for i, ch in enumerate(path) if ch != "_" and (i == 0 or ch != path[i - 1]))


for path in ("kkaaatteee____", "kk_aa__tt_ee_", "lleetttteerr", "lleett_tteerr"):
    print(f"{path!r:17s} -> {collapse(path)!r}")

# how many frame-level paths spell "letter" in T frames? With uniform per-frame probabilities
# (1/5 each), p("letter") = (number of alignments) / 5^T, so the CTC loss counts them.
letters = ["_", "e", "l", "r", "t"]
target = torch.tensor([[letters.index(ch) for ch in "letter"]])
for n_frames in range(5, 10):
    uniform = torch.full((n_frames, 1, len(letters)), -math.log(len(letters)))
    loss = float(
        torch.nn.functional.ctc_loss(
            uniform, target, torch.tensor([n_frames]), torch.tensor([6]), reduction="sum"
        )
    )
    count = round(math.exp(-loss) * len(letters) ** n_frames) if math.isfinite(loss) else 0
    print(f"T = {n_frames}: -log p = {loss:7.3f}, alignments of 'letter': {count}")

# %% [markdown]
# **Answer.** `"kkaaatteee____"` collapses to `"kate"`: repeats merge (`kk` → `k`, `aaa` → `a`, `eee` → `e`)
# and trailing blanks vanish. It is another valid alignment of the same transcript; the CTC loss sums
# over all of them. Because repeats merge, a frame path can only spell a double letter if something
# separates the two: `lleetttteerr` reads `leter`, and `lleett_tteerr` reads `letter`. The blank is that
# separator, and also what the model emits on frames that carry no new character. Hence a CTC alignment
# needs at least as many frames as labels plus one per repeated pair: "letter" has 6 labels and one
# repeat (`tt`), so it is impossible in 6 frames (infinite loss), has exactly one alignment in 7
# (`letter` with a blank between the t's), and more and more as T grows. At 50 encoder frames per
# second against roughly 15 characters per second of speech, there is room to spare.


# %% [markdown]
# ## Exercise 3 — The CTC read-out against the LLM's transcript

# %%
clips, references = zip(*[example_clip(i)[:2] for i in range(5)], strict=True)
targets = [tokenizer(r.lower(), add_special_tokens=False)["input_ids"] for r in references]
classes = sorted({t for ids in targets for t in ids})  # the batch's tokens, as in training
with torch.no_grad():
    features = processor.features(list(clips))
    audio, n_positions = model.audio_embeddings(features["input_features"], features["mel_lengths"])
    log_probs = model.ctc_head(audio, decoder.get_output_embeddings().weight[classes])
readouts = [tokenizer.decode([classes[c] for c in row]).strip() for row in ctc_greedy(log_probs, n_positions)]
transcripts = model.transcribe(list(clips))
for ref, ctc, llm in zip(references, readouts, transcripts, strict=True):
    print(f"reference {ref.lower()!r}\n  CTC     {ctc!r}\n  LLM     {llm!r}")
print(
    f"\nWER over the 5 clips: CTC read-out over the batch's tokens {corpus_wer(references, readouts):.1%}, "
    f"LLM {corpus_wer(references, transcripts):.1%}"
)

# %% [markdown]
# **Answer.** Over the batch's own tokens the CTC read-out usually finds the right words in the right
# order, with slips where two similar tokens compete or a short word falls between two spikes. It is
# not a fair recogniser: its classes came from the references, so it can only choose among words that
# were said somewhere in the batch (over the whole vocabulary it writes nonsense, section 3). The
# LLM's transcript is produced without that help. What the read-out shows is that the audio
# positions carry the words in order: the job the auxiliary loss gives the projector, so that the
# frozen LLM has the words to read instead of inventing them.
