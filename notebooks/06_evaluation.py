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
# # Class 6 — Evaluation
#
# Word error rate, computed by hand and with `jiwer`; why text must be normalised before it is
# compared; error analysis (substitutions, deletions, insertions, alignments); and a comparison of
# our model with the system it is built from: Whisper tiny.en (run by faster-whisper on the same
# packaged weights).
#
# Data: 8 real clips from `../shared/data` (speechocean762 dev) when present, otherwise 8 synthetic
# sentences. Our model is the trained `checkpoints/offline` when it exists; otherwise the untrained
# projector, whose WER is (honestly) terrible.

# %%
# %matplotlib inline
import time
from collections import Counter

import jiwer
import matplotlib.pyplot as plt
import numpy as np
import torch

from asr.audio import load_audio
from asr.evaluate import corpus_wer, normalize, read_manifest, word_counts
from asr.inference import FasterWhisperBackend, ModelBackend, default_model, load_model
from asr.synth import sentences, synthesize
from course import DEV, have_data, lecture_says, save_figure

DEFAULT_MODEL = default_model(two_pass=False)  # checkpoints/offline of this repository

torch.set_num_threads(1)
torch.manual_seed(0)

if have_data():
    rows = read_manifest(DEV)[::155][:8]  # 8 clips spread over the speakers
    clips = [load_audio(r["audio"]) for r in rows]
    references = [r["text"] for r in rows]
    origin = "speechocean762 dev (real, non-native read speech)"
else:
    references = sentences(8, seed=3)
    voices = ["en-us", "en-us+f2", "en-gb-x-rp", "en-us+m3"]
    clips = [synthesize(t, voice=voices[i % 4]) for i, t in enumerate(references)]
    origin = "espeak-ng synthetic speech (../shared/data is absent)"
seconds = np.array([len(c) / 16000 for c in clips])
print(f"{len(clips)} clips from {origin}, {seconds.sum():.1f} s in total")
for ref, s in zip(references, seconds, strict=True):
    print(f"  {s:4.1f} s  {ref}")

# %% [markdown]
# ## 1. WER by hand
#
# WER = (S + D + I) / N: the minimum number of word substitutions, deletions and insertions that turn
# the hypothesis into the reference, over the number of reference words. It is an edit distance
# (dynamic programming), can exceed 100 % (insertions), and is computed over the whole corpus (total
# edits / total words), not as a mean of per-sentence rates.


# %%
def edit_counts(ref: list[str], hyp: list[str]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of a minimum-cost alignment."""
    d = np.zeros((len(ref) + 1, len(hyp) + 1), dtype=int)
    d[:, 0], d[0, :] = np.arange(len(ref) + 1), np.arange(len(hyp) + 1)
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            d[i, j] = min(d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]), d[i - 1, j] + 1, d[i, j - 1] + 1)
    s = dl = ins = 0
    i, j = len(ref), len(hyp)
    while i or j:  # walk back along one optimal path
        if i and j and d[i, j] == d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            s += ref[i - 1] != hyp[j - 1]
            i, j = i - 1, j - 1
        elif i and d[i, j] == d[i - 1, j] + 1:
            dl, i = dl + 1, i - 1
        else:
            ins, j = ins + 1, j - 1
    return s, dl, ins


ref, hyp = "the cat sat on the mat", "the cat sat on mat today"
s, dl, ins = edit_counts(ref.split(), hyp.split())
out = jiwer.process_words(ref, hyp)
print(f"by hand: S={s} D={dl} I={ins} -> WER {(s + dl + ins) / len(ref.split()):.3f}")
print(f"jiwer:   S={out.substitutions} D={out.deletions} I={out.insertions} -> WER {out.wer:.3f}")
print(jiwer.visualize_alignment(out, show_measures=False))

# %% [markdown]
# ## 2. Normalisation
#
# "Mark's going to see 2 elephants!" and "MARKS GOING TO SEE TWO ELEPHANTS" are the same speech. Raw
# string comparison would count case, punctuation and number formatting as errors. We use Whisper's
# English normaliser (lower case, no punctuation, spelled numbers to digits, contractions expanded)
# plus one project rule: digits are compared as spoken words one by one (`asr.evaluate.normalize`).
# Every system is scored with the *same* normaliser; numbers are only comparable that way.

# %%
for text in [
    "Mark's going to see 2 elephants!",
    "MARKS GOING TO SEE TWO ELEPHANTS",
    "Dr. Smith paid $20.50",
    "twenty six",
    "It's 0351, OK?",
]:
    print(f"{text!r:40s} -> {normalize(text)!r}")

# %% [markdown]
# ## 3. Two systems on the same clips
#
# Both decode greedily (beam 1), one clip at a time for Whisper, one batch for ours, on one CPU thread.

# %%
# float32, not int8: int8 kernels round per CPU (lecture)
whisper = FasterWhisperBackend(compute_type="float32", num_beams=1, threads=1)
trained = (DEFAULT_MODEL / "config.json").is_file()
ours = ModelBackend(
    load_model(DEFAULT_MODEL), num_beams=1, name="ours (trained)" if trained else "ours (UNTRAINED)"
)
systems = {whisper.name: whisper, ours.name: ours}
hypotheses, elapsed = {}, {}
for name, backend in systems.items():
    start = time.perf_counter()
    hypotheses[name] = backend.decode(clips, [None] * len(clips))
    elapsed[name] = time.perf_counter() - start
for name in systems:
    rtf = elapsed[name] / seconds.sum()
    raw = corpus_wer(references, hypotheses[name], normalise=False)
    wer = corpus_wer(references, hypotheses[name])
    print(
        f"{name:36s} WER {100 * wer:6.1f} % (raw strings: {100 * raw:6.1f} %), {elapsed[name]:5.1f} s, RTF {rtf:.2f}"
    )
    if name == whisper.name:
        lecture_says(f"Whisper's raw WER is {100 * raw:.0f} %", f"and {100 * wer:.0f} % after normalisation")
if not trained:
    print(
        "\nno trained checkpoint in checkpoints/offline: 'ours' is the untrained projector, so its WER is "
        "expected to be near or above 100 %. Train one (`make train`, see Class 5) and re-run."
    )

# %%
for i, ref in enumerate(references):
    print(f"REF  {normalize(ref)}")
    for name in systems:
        c = word_counts(normalize(ref), normalize(hypotheses[name][i]))
        print(f"  {100 * c.rate:5.0f} %  {name[:12]:12s} {normalize(hypotheses[name][i])[:90]}")

# %% [markdown]
# ## 4. Error analysis
#
# Break the errors down by type, look at the most frequent substitutions, and at the alignment of
# the worst utterance. Errors are rarely uniform: a few words (names, numbers, rare words) and a few
# speakers usually dominate.

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
breakdown = {}
for name in systems:
    norm_refs = [normalize(r) or "<empty>" for r in references]
    norm_hyps = [normalize(h) for h in hypotheses[name]]
    out = jiwer.process_words(norm_refs, norm_hyps)
    breakdown[name] = out
    n_words = sum(len(r.split()) for r in norm_refs)
    left.bar(
        name[:20],
        out.substitutions / n_words,
        label="substitutions" if name == whisper.name else None,
        color="tab:blue",
    )
    left.bar(
        name[:20],
        out.deletions / n_words,
        bottom=out.substitutions / n_words,
        color="tab:orange",
        label="deletions" if name == whisper.name else None,
    )
    left.bar(
        name[:20],
        out.insertions / n_words,
        bottom=(out.substitutions + out.deletions) / n_words,
        color="tab:green",
        label="insertions" if name == whisper.name else None,
    )
    per_utt = [word_counts(r, h).rate for r, h in zip(norm_refs, norm_hyps, strict=True)]
    right.scatter(seconds, np.minimum(per_utt, 3.0), label=name[:20])
left.set(ylabel="errors per reference word", title="WER by error type")
left.legend()
right.set(
    xlabel="clip duration (s)", ylabel="utterance WER (capped at 3)", title="Per-utterance WER vs duration"
)
right.legend()
save_figure(fig, "06_error_breakdown")
plt.show()

# %%
substituted, inserted, deleted = jiwer.collect_error_counts(breakdown[whisper.name])
print("Whisper's most frequent substitutions (reference, hypothesis):", Counter(substituted).most_common(5))
print("deleted words:", Counter(deleted).most_common(5))
print("inserted words:", Counter(inserted).most_common(5))
rates = [
    word_counts(normalize(r), normalize(h)).rate
    for r, h in zip(references, hypotheses[whisper.name], strict=True)
]
worst = int(np.argmax(rates))
print(f"\nWhisper's worst utterance ({100 * rates[worst]:.0f} %):")
print(
    jiwer.visualize_alignment(
        jiwer.process_words(normalize(references[worst]), normalize(hypotheses[whisper.name][worst])),
        show_measures=False,
    )
)

# %% [markdown]
# ## 5. How sure are we? A bootstrap interval
#
# Eight clips give a very noisy WER. Resampling utterances with replacement shows how much the
# corpus WER would move with a different sample of the same size: compare systems on hundreds of
# utterances (`asr evaluate --manifest ...`) before believing a difference of a few points.

# %%
rng = np.random.default_rng(0)
fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
for name, color in zip(systems, ["tab:blue", "tab:red"], strict=True):
    counts = [
        word_counts(normalize(r), normalize(h)) for r, h in zip(references, hypotheses[name], strict=True)
    ]
    errs, words = np.array([c.errors for c in counts]), np.array([c.reference for c in counts])
    samples = [
        errs[idx].sum() / max(1, words[idx].sum())
        for idx in rng.integers(0, len(counts), (1000, len(counts)))
    ]
    low, high = np.percentile(samples, [2.5, 97.5])
    print(
        f"{name:36s} WER {100 * errs.sum() / words.sum():6.1f} %, 95 % bootstrap interval [{100 * low:.1f}, {100 * high:.1f}] %"
    )
    if name == whisper.name:
        lecture_says(f"Whisper's WER spans about {100 * low:.0f}-{100 * high:.0f} %")
    ax.hist(100 * np.array(samples), bins=40, color=color, alpha=0.5, label=name[:20])
    for bound in (low, high):
        ax.axvline(100 * bound, color=color, linestyle="--", linewidth=1)
ax.set(
    xlabel="corpus WER (%)",
    ylabel="bootstrap samples (of 1000)",
    title=f"Bootstrap WER on {len(references)} clips (dashed: 95 % interval)",
)
ax.legend()
save_figure(fig, "06_bootstrap")
plt.show()

# %% [markdown]
# ## Exercises (about 40 minutes)
#
# Solutions: `notebooks/solutions/06_evaluation.py` (try first).
#
# 1. Run `asr evaluate --manifest ../shared/data/speechocean762.dev.jsonl --limit 100 --compare faster-whisper`
#    (from the repository root). How wide is the bootstrap interval on 100 clips?
# 2. Compute CER (`asr.evaluate.corpus_cer`) next to WER. For which errors does CER forgive more?
# 3. Remove normalisation for the Whisper outputs only and recompute: which single rule of the
#    normaliser matters most on this data?
# 4. Group WER by speaker age or gender (speechocean762 rows have `age`, `gender`). Is the model fair?
# 5. Decode with `num_beams=4` for both systems. Does beam search change WER here? At what cost (RTF)?
# 6. Write down three error categories you see in the alignments (e.g. names, plurals, numbers) and
#    count them on 50 utterances: error analysis is manual work, and the most useful hour in a project.
