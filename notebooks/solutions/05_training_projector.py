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
# # Class 5 — Training the projector: solutions to the exercises
#
# Worked solutions for the exercises at the end of `notebooks/05_training_projector.py`. Run it like
# the class notebook, with `notebooks/` as the working directory. To keep the whole notebook at a couple
# of minutes on a CPU, every run here is **much shorter** than the exercise asks: 10 steps on one or
# two clips per batch instead of 20-60 steps on batches of 4. The effects are already visible, and they
# grow clearer with more steps (raise `STEPS` and the batch sizes if you have the time).
#
# The setup repeats the class notebook's: a fresh model (untrained projector), a cache of encoder
# outputs, a function that builds batches with the processor, and the training loop, now as a function
# with an optional warm-up and held-out evaluation.

# %%
# %matplotlib inline
import json
import time
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from asr import ASRConfig, ASRModel, ASRProcessor
from asr.audio import load_audio
from asr.lengths import audio_positions
from asr.prompt import IGNORE_INDEX
from asr.synth import DEFAULT_VOICES, sentences, synthesize
from course import DATA

torch.set_num_threads(1)
torch.manual_seed(0)
model = ASRModel.from_sources(ASRConfig()).eval()  # fresh, untrained projector
processor = model.processor
initial = {k: v.clone() for k, v in model.projector.state_dict().items()}  # every run starts here
STEPS = 10  # per run; the exercises ask for 20-60


@torch.no_grad()
def encode(clips: list[np.ndarray]) -> list[torch.Tensor]:
    """Encoder frames of each clip, trimmed to its length (the frozen encoder: compute once)."""
    out = []
    for clip in clips:
        features = processor.features([clip])
        frames, lengths = model.encode(features["input_features"], features["mel_lengths"])
        out.append(frames[0, : int(lengths[0])])
    return out


def make_batch(
    frames: list[torch.Tensor], texts: list[str] | None, proc: ASRProcessor = processor
) -> dict[str, torch.Tensor]:
    """Cached encoder frames + the processor's prompts: a right-padded training batch with labels
    (``texts``), or left-padded generation prompts (``texts=None``), as in the class notebook."""
    lengths = torch.tensor([len(f) for f in frames])
    n_audio = proc.audio_positions(lengths)  # ceil(frames / k) slots for each clip
    if texts is not None:
        prompts = proc.prompts(n_audio, texts=texts, padding_side="right")
    else:
        prompts = proc.prompts(n_audio, padding_side="left")
    return {**prompts, "encoder_frames": pad_sequence(frames, batch_first=True), "encoder_lengths": lengths}


@torch.no_grad()
def eval_loss(m: ASRModel, batch: dict[str, torch.Tensor]) -> float:
    return float(m(**batch).loss)


def train(
    m: ASRModel,
    batches: list[dict[str, torch.Tensor]],
    lr: float,
    warmup: int = 0,
    evals: dict[str, dict[str, torch.Tensor]] | None = None,
    every: int = 4,
    **forward: Any,
) -> dict[str, Any]:
    """The class notebook's loop, one AdamW step per batch on ``m``'s projector, with a linear
    warm-up over the first ``warmup`` steps. ``evals``: named batches whose loss is measured without
    ``backward`` before training, every ``every`` steps and at the end. ``forward``: extra arguments of
    the model's forward."""

    def ramp(step: int) -> float:  # the learning rate's factor at a step: (step + 1) / warmup, then 1
        return min(1.0, (step + 1) / warmup) if warmup else 1.0

    optimizer = torch.optim.AdamW(m.projector.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, ramp)
    run: dict[str, Any] = {"loss": [], "norm": [], "eval_steps": [], **{name: [] for name in evals or {}}}

    def measure(step: int) -> None:
        run["eval_steps"].append(step)
        for name, batch in (evals or {}).items():
            run[name].append(eval_loss(m, batch))

    seconds = 0.0
    m.train()  # the projector's dropout (0 here); the frozen parts stay in eval mode
    for step, batch in enumerate(batches):
        if evals and step % every == 0:
            measure(step)
        start = time.perf_counter()
        loss = m(**batch, **forward).loss
        loss.backward()
        run["norm"].append(float(torch.nn.utils.clip_grad_norm_(m.projector.parameters(), float("inf"))))
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        seconds += time.perf_counter() - start
        run["loss"].append(loss.item())
    if evals:
        measure(len(batches))
    m.eval()
    return {**{k: np.array(v) for k, v in run.items()}, "seconds_per_step": seconds / len(batches)}


def snapshot(m: ASRModel = model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.projector.state_dict().items()}


# the one-clip training set of exercises 2-5: "one two three" (as in the class notebook)
ONE_TEXT = "one two three"
one_frames = encode([synthesize(ONE_TEXT)])
one = make_batch(one_frames, [ONE_TEXT])
print(
    f"{ONE_TEXT!r}: {one['input_ids'].shape[1]} positions, {int((one['labels'] != IGNORE_INDEX).sum())} labelled"
)

# %% [markdown]
# ## Exercise 1 — Generalisation
#
# Twenty sentences from `asr.synth.sentences(20, seed=1)`, each in another voice (cycling through
# `asr.synth.DEFAULT_VOICES`): 16 for training, 4 held out. We train `STEPS` (10) steps in batches of 2
# in a shuffled order (1.25 passes over the training clips, instead of 60 steps of 4). Every 5 steps
# we measure the loss of 4 training clips and of the 4 held-out clips, without `backward`.

# %%
texts = sentences(20, seed=1)
voices = [DEFAULT_VOICES[i % len(DEFAULT_VOICES)] for i in range(len(texts))]
start = time.perf_counter()
frames20 = encode([synthesize(t, voice=v) for t, v in zip(texts, voices, strict=True)])
print(f"synthesised and encoded {len(texts)} clips in {time.perf_counter() - start:.1f} s")
for text, voice in list(zip(texts, voices, strict=True))[:3]:
    print(f"  {voice:18s} {text!r}")

train_ids, held_ids = list(range(16)), list(range(16, 20))
generator = torch.Generator().manual_seed(0)
passes = -(-2 * STEPS // len(train_ids))  # enough shuffled passes for STEPS batches of 2
order = torch.cat([torch.randperm(len(train_ids), generator=generator) for _ in range(passes)]).tolist()
batches = [
    make_batch([frames20[i] for i in order[2 * s : 2 * s + 2]], [texts[i] for i in order[2 * s : 2 * s + 2]])
    for s in range(STEPS)
]
evals = {
    "train (4 clips)": make_batch([frames20[i] for i in train_ids[:4]], [texts[i] for i in train_ids[:4]]),
    "held-out (4 clips)": make_batch([frames20[i] for i in held_ids], [texts[i] for i in held_ids]),
}
model.projector.load_state_dict(initial)
run1 = train(model, batches, lr=5e-3, evals=evals, every=5)
for i, step in enumerate(run1["eval_steps"]):
    print(f"step {step:2d}: " + ", ".join(f"{name} {run1[name][i]:.3f}" for name in evals))
print(f"{run1['seconds_per_step']:.2f} s per step")

fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
ax.plot(
    np.arange(len(run1["loss"])), run1["loss"], ".", color="gray", label="training batch (before its step)"
)
for name in evals:
    ax.plot(run1["eval_steps"], run1[name], "o-", label=name)
ax.set(xlabel="step", ylabel="cross-entropy (nats per token)", title="Train vs held-out", ylim=(0, None))
ax.legend()
plt.show()

# %% [markdown]
# **Answer.** In so few steps the held-out loss falls almost as fast as the training loss. The first
# steps teach things that help every clip: the scale and layout of the audio vectors, the output format
# (a short lower-case sentence, then `<|im_end|>`), and the frequent words of the sentence templates
# ("the", "is", numbers, names), which the held-out sentences share. Memorisation shows only when the
# same clips come back many times. Here most training clips have been seen once; in the
# exercise's 60 steps of 4 (15 passes) the training loss keeps falling while the held-out loss levels
# off, and that gap is the measure of overfitting. Twenty template sentences are far too few to
# generalise: the held-out clips share the voices, not the words. More sentences, more voices and
# speaking rates, and real speech are what close the gap (`make train` uses thousands of clips).

# %% [markdown]
# ## Exercise 2 — Learning rate and warm-up
#
# Four runs of `STEPS` full-batch steps on the one clip, all from the same initial projector: lr 3e-4,
# the class notebook's 5e-3, 3e-2, and 3e-2 with a linear warm-up over the first 5 steps (lr × 1/5, 2/5,
# ..., 1).

# %%
settings = {"3e-4": (3e-4, 0), "5e-3": (5e-3, 0), "3e-2": (3e-2, 0), "3e-2, warm-up 5": (3e-2, 5)}
runs = {}
for name, (lr, warmup) in settings.items():
    model.projector.load_state_dict(initial)
    runs[name] = train(model, [one] * STEPS, lr=lr, warmup=warmup)
    if name == "5e-3":
        baseline = snapshot()  # the reference model of exercises 3-5
    losses = runs[name]["loss"]
    print(
        f"lr {name:16s} loss {losses[0]:.2f} -> {losses[-1]:.2f} (min {losses.min():.2f}); "
        f"largest rise between steps {np.diff(losses).max():+.2f}; max grad norm {runs[name]['norm'].max():.1f}"
    )

steps = np.arange(1, STEPS + 1)
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8), layout="constrained")
for name, run in runs.items():
    left.plot(steps, run["loss"], "o-", markersize=3, label=f"lr {name}")
    right.plot(steps, run["norm"], "o-", markersize=3, label=f"lr {name}")
left.set(xlabel="step", ylabel="training loss", title="Loss by learning rate", ylim=(0, None))
right.set(xlabel="step", ylabel="gradient norm", title="Gradient norm of the projector", yscale="log")
left.legend()
plt.show()

# %% [markdown]
# **Answer.** AdamW normalises each parameter's step by its gradient's running scale, so in the
# first steps every weight moves by roughly ±lr, whatever the size of its gradient. The first layer's
# weights start at about ±0.023 (uniform in ±1/√1920).
#
# * **3e-4 is too slow:** each step changes the weights by about 1 % of their size. The loss barely
#   moves in 10 steps; it would get there, in hundreds of steps.
# * **3e-2 is unstable:** the first step changes every weight by more than its own size. The audio
#   vectors jump somewhere else, and the loss typically drops fast and then bounces instead of
#   falling steadily (the largest rise between steps is printed). With more clips this shows as spikes
#   and a jumping gradient norm.
# * **A warm-up** takes the first steps at 6e-3, 1.2e-2, ..., while Adam's moment estimates settle,
#   and then uses the full rate. It removes most of the early damage. The same idea, with a longer
#   ramp and a cosine decay after it, is in `conf/training/cpu.yaml` (20 warm-up steps, lr 2e-3).
#
# On a single clip even a large rate can end low, because there is only one target to memorise. The
# instability shows more clearly with more clips per batch and more steps.

# %% [markdown]
# ## Exercise 3 — Masking bug hunt: train without masking
#
# Labels = input ids at every real position, the prompt included (padding stays -100). We use
# `logits_at_labels=False`: the lean loss path of `ASRModel.forward` assumes that the prompt's shared
# head carries no labels, and in a batch of several clips it would skip those positions.

# %%
unmasked = {**one, "labels": one["input_ids"].masked_fill(one["attention_mask"] == 0, IGNORE_INDEX)}
model.projector.load_state_dict(initial)
run3 = train(model, [unmasked] * STEPS, lr=5e-3, logits_at_labels=False)
no_mask = snapshot()
print(
    f"unmasked loss {run3['loss'][0]:.3f} -> {run3['loss'][-1]:.3f} (5e-3 with masking: "
    f"{runs['5e-3']['loss'][0]:.3f} -> {runs['5e-3']['loss'][-1]:.3f})"
)


@torch.no_grad()
def loss_by_segment(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, float]]:
    """Next-token loss of the one clip, by what the target token is: (positions, mean nats)."""
    model.projector.load_state_dict(state)
    logits = model(**one, logits_at_labels=False).logits[0, :-1]
    ids = one["input_ids"][0]
    nats = torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none")
    first_audio = int(one["audio_mask"][0].int().argmax())
    audio = one["audio_mask"][0, 1:]
    transcript = one["labels"][0, 1:] != IGNORE_INDEX
    before = torch.arange(1, len(ids)) < first_audio
    segments = {
        "prompt before the audio": before,
        "audio slots": audio,
        "prompt after the audio": ~before & ~audio & ~transcript,
        "transcript + <|im_end|>": transcript,
    }
    return {name: (int(s.sum()), float(nats[s].mean())) for name, s in segments.items()}


placeholder = processor.tokenizer.decode([processor.prompt_builder.audio_token_id])
print(f"\nthe audio slots' input id is {placeholder!r}: unmasked, it is their label too")
print(f"{'target tokens':26s} {'n':>3s}  {'untrained':>9s}  {'masked':>9s}  {'unmasked':>9s}")
table = {
    name: loss_by_segment(state)
    for name, state in (("untrained", initial), ("masked", baseline), ("unmasked", no_mask))
}
for segment in table["untrained"]:
    n = table["untrained"][segment][0]
    print(f"{segment:26s} {n:3d}  " + "  ".join(f"{table[m][segment][1]:9.3f}" for m in table))

# %% [markdown]
# **Answer.** Without masking, the loss is the mean over *every* next-token prediction in the sequence.
# The transcript is a handful of those positions; the rest is the system prompt, the instruction and the
# audio slots. The number is misleading for three reasons, all visible in the table:
#
# * **The prompt before the audio cannot change:** causal attention means the projector cannot affect
#   positions before the first audio vector, so their loss is the same in all three columns. It is a
#   constant floor mixed into the average.
# * **The audio slots get a label:** their input id (the placeholder) becomes their target. The
#   projector is now rewarded for making every audio vector predict the placeholder token, which is
#   not the same as encoding what was said. Here the placeholder is `<|im_end|>` itself (printed
#   above), so the unmasked loss even teaches the model to expect the end of the turn after each audio
#   vector.
# * **The transcript is diluted:** a falling total says little about the only part that matters. Compare
#   the transcript row of the masked and unmasked models, and the prompt rows' share of the average.
#
# The masked loss measures exactly what we want the model to do, predict the transcript given the
# audio. A loss computed over the prompt also rewards memorising the template.

# %% [markdown]
# ## Exercise 4 — Stopping: drop the `<|im_end|>` target
#
# The last label of the example is `<|im_end|>`; we set it to -100 and train. We then compare how likely
# `<|im_end|>` is right after the transcript (teacher-forced), and what greedy generation produces.

# %%
eos = processor.eos_token_id
last = int((one["labels"][0] != IGNORE_INDEX).nonzero().max())
assert int(one["labels"][0, last]) == eos
no_stop = {**one, "labels": one["labels"].clone()}
no_stop["labels"][0, last] = IGNORE_INDEX
model.projector.load_state_dict(initial)
run4 = train(model, [no_stop] * STEPS, lr=5e-3)
without_eos = snapshot()

prompt = make_batch(one_frames, None)  # generation prompt, no transcript
for name, state in (
    ("untrained", initial),
    ("trained with <|im_end|>", baseline),
    ("trained without", without_eos),
):
    model.projector.load_state_dict(state)
    with torch.no_grad():
        logits = model(**one, logits_at_labels=False).logits[0, last - 1]
        ids = model.generate(**prompt, max_new_tokens=16)[0].tolist()
    p_eos = float(torch.softmax(logits, -1)[eos])
    stopped = (
        f"stopped after {ids.index(eos) + 1} tokens" if eos in ids else f"no <|im_end|> in {len(ids)} tokens"
    )
    print(f"{name:24s} p(<|im_end|> | {ONE_TEXT!r}) = {p_eos:.3f}; {stopped}: {processor.decode(ids)!r}")

# %% [markdown]
# **Answer.** With the `<|im_end|>` label, training pushes p(`<|im_end|>`) after the transcript towards
# 1, so generation stops right after the words. Without it, nothing in the loss rewards stopping. The
# probability is left to the frozen LLM's prior for this context: the instruct model's habit of ending a
# short answer keeps it above zero, but nothing protects it while the audio vectors move to make the
# transcript likely. Compare the printed probabilities of the two trained models. After 10 steps the
# greedy outputs may still look alike; with longer training the transcript tokens become very likely
# and `<|im_end|>` does not, so generation runs on until the token cap. It continues the sentence
# ("four five six ..."), repeats it, or adds a chatty explanation. The cap (16 + 8 tokens per second of
# audio) and the repetition penalty limit the damage; they do not fix it. A transcript that never stops
# is the symptom of this bug.

# %% [markdown]
# ## Exercise 5 — k = 10: 200 ms of audio per LLM position
#
# `ASRConfig(projector_stack=10)`: the projector stacks 10 encoder frames (200 ms) per LLM position. It
# is a different model: its processor reserves ceil(frames / 10) audio slots. The encoder is the same,
# so the cached frames serve both.

# %%
torch.manual_seed(0)
model10 = ASRModel.from_sources(ASRConfig(projector_stack=10)).eval()
one10 = make_batch(one_frames, [ONE_TEXT], proc=model10.processor)
run5 = train(model10, [one10] * STEPS, lr=5e-3)
for name, m, batch, run in (("k = 5", model, one, runs["5e-3"]), ("k = 10", model10, one10, run5)):
    params = sum(p.numel() for p in m.projector.parameters())
    print(
        f"{name:6s}: {params:,d} projector parameters, {int(batch['audio_mask'].sum())} audio of "
        f"{batch['input_ids'].shape[1]} positions, {run['seconds_per_step']:.2f} s per step, "
        f"loss {run['loss'][0]:.3f} -> {run['loss'][-1]:.3f}"
    )
print(
    f"a 30 s clip (1500 encoder frames): {audio_positions(1500, 5)} audio positions at k = 5, "
    f"{audio_positions(1500, 10)} at k = 10"
)
del model10

# %% [markdown]
# **Answer.** The first linear layer takes 10 × 384 = 3840 inputs instead of 1920, so the projector
# grows from 1.44 M to about 2.55 M parameters. The time per step barely changes on this clip: the
# LLM's forward and backward passes cost time in proportion to the sequence, and halving the audio
# positions of a clip of about a second saves a handful of the roughly 50 positions (printed above).
# Timing noise on a busy CPU is as large as the difference. On a 30 s clip (300 → 150 audio positions,
# out of about 334 + the transcript) a step processes about 40 % fewer positions, and the KV cache at
# inference holds 150 positions fewer. The losses after 10 steps on one clip say little about
# accuracy: both projectors can memorise one sentence. With real data, k = 10 gives each LLM position
# 200 ms of audio, longer than a typical phone and close to a syllable, so fast speech packs several
# tokens' worth of sound into one vector. The usual trade-off (SLAM-ASR and others) is that a larger k is cheaper and a little less
# accurate: compare the two on a dev set after real training before choosing.

# %% [markdown]
# ## Exercise 6 — Real speech
#
# Eight utterances from `an4.train.jsonl` between 1 and 2.5 s (an4: people spelling names and saying
# digits into a microphone), transcripts lower-cased as the project's data loaders do. We train
# `STEPS` steps in batches of 2 (2.5 passes) and transcribe the first four.

# %%
AN4 = DATA / "an4.train.jsonl"
if AN4.is_file():
    rows = [json.loads(line) for line in AN4.read_text().splitlines()]
    rows = [r for r in rows if 1.0 <= r["duration"] <= 2.5][:8]
    an4_texts = [r["text"].lower() for r in rows]
    an4_frames = encode([load_audio(DATA / r["audio"]) for r in rows])
    an4_batches = [
        make_batch(an4_frames[i : i + 2], an4_texts[i : i + 2]) for i in [2 * (s % 4) for s in range(STEPS)]
    ]
    model.projector.load_state_dict(initial)
    run6 = train(model, an4_batches, lr=5e-3)
    print(
        f"an4: loss {run6['loss'][0]:.3f} -> {run6['loss'][-1]:.3f} in {len(an4_batches)} steps "
        f"({run6['seconds_per_step']:.2f} s per step)"
    )
    print(f"synthetic sentences (exercise 1), same steps: {run1['loss'][0]:.3f} -> {run1['loss'][-1]:.3f}")
    with torch.no_grad():
        ids = model.generate(**make_batch(an4_frames[:4], None), max_new_tokens=12)
    for text, output in zip(an4_texts[:4], processor.batch_decode(ids), strict=True):
        print(f"  reference {text!r:28s} -> {output!r}")
else:
    print(f"{AN4} not found: this exercise needs ../shared/data (real speech); nothing to do")

# %% [markdown]
# **Answer.** The loop is the same; only the data change. Real speech differs from espeak in ways the
# projector has to learn: real voices and microphones, background noise and silence around the words.
# The transcripts are hard for the LLM's prior too: an4 is mostly spelled letters and digits ("u m n
# y h six"), which no language model predicts from context, so every token must come from the audio.
# Expect the loss to start at least as high as on synthetic speech and to fall more slowly, and the
# transcripts after a few steps to be letter-and-number-shaped guesses rather than the right
# letters. Eight clips and 10 steps are a smoke test (the loop runs on real data and the loss falls).
# A real model needs the thousands of clips of `make train`.
