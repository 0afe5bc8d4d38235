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
# # Class 7 — Fine-tuning stages: worked solutions
#
# Solutions to the exercises at the end of `notebooks/07_finetuning_stages.py`. Try them first.
#
# Run this file like the class notebooks, with `notebooks/` as the working directory (it moves there
# by itself when started in `notebooks/solutions/`). Everything it writes (audio, manifests, a
# training run, a data config) goes into one temporary folder. It needs about two minutes on a
# 2-core CPU, most of it the 20-step training run of Exercise 1; it uses the shipped
# `checkpoints/offline` and says so when it is missing (then Exercise 1 starts from a fresh
# projector and Exercise 5 is meaningless).

# %%
import dataclasses
import json
import os
import tempfile
from pathlib import Path

import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from asr.audio import AudioError, load_audio
from asr.evaluate import Counts, normalize, word_counts
from asr.inference import FasterWhisperBackend, ModelBackend, default_model, load_model
from asr.synth import synthesize
from asr.training import train
from asr.training.config import configs_from_hydra, register_configs

if Path.cwd().name == "solutions":  # the class notebooks' working directory: notebooks/
    os.chdir(Path.cwd().parent)

torch.set_num_threads(1)
torch.manual_seed(0)
REPO = Path.cwd().resolve().parent
CHECKPOINT = default_model(two_pass=False)  # checkpoints/offline: projector + LoRA, one pass
TRAINED = (CHECKPOINT / "config.json").is_file()
WORK = Path(tempfile.mkdtemp(prefix="class7-solutions-"))  # everything written here goes here
print(f"checkpoint: {CHECKPOINT if TRAINED else 'MISSING (untrained model)'}; writing to {WORK}")
register_configs()


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    pairs = zip(references, hypotheses, strict=True)
    return sum((word_counts(normalize(r), normalize(h)) for r, h in pairs), Counts()).rate


def compose_preset(*overrides: str):
    """The composed Hydra tree, exactly as train.py sees it."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


# %% [markdown]
# ## Exercise 1 — Your own data, a held-out speaker, a short run from the shipped checkpoint
#
# Ten sentences stand in for your recordings (replace the synthesis by your own files: any format and
# rate, `load_audio` resamples). Two espeak-ng voices are the "training speakers"; a third voice is
# held out: the dev set reads two new sentences and two training sentences with it, so we can tell
# learning the *speaker-independent* task from memorising *sentences*.

# %%
texts = [
    "turn on the kitchen lights",
    "set a timer for ten minutes",
    "call mum on her mobile",
    "what is the weather in leeds",
    "play some jazz in the living room",
    "remind me to water the plants",
    "switch off the heating at night",
    "add milk and eggs to the shopping list",
    "open the garage door",  # dev only
    "read me the news headlines",  # dev only
]
train_voices, dev_voice = ["en-gb-x-rp", "en-us"], "en-us+f2"
corpus = WORK / "own-data"
corpus.mkdir()
splits = {
    "train": [(t, train_voices[i % 2]) for i, t in enumerate(texts[:8])],
    "dev": [(t, dev_voice) for t in texts[8:] + texts[:2]],
}
manifests = {}
for split, items in splits.items():
    lines = []
    for i, (text, voice) in enumerate(items):
        sf.write(corpus / f"{split}{i}.wav", synthesize(text, voice=voice), 16000)
        lines.append(json.dumps({"audio": f"{split}{i}.wav", "text": text, "speaker": voice}) + "\n")
    manifests[split] = corpus / f"{split}.jsonl"
    manifests[split].write_text("".join(lines))


def validate(manifest: Path) -> list[tuple[dict, object]]:
    """Rows that decode, last 0.1-30 s and have a transcript; the others are reported, not fatal."""
    good = []
    for n, line in enumerate(manifest.read_text().splitlines(), 1):
        row = json.loads(line)
        try:
            clip = load_audio(manifest.parent / row["audio"], max_seconds=30)
        except AudioError as err:
            print(f"  {manifest.name}:{n} skipped: {err}")
            continue
        if not row.get("text", "").strip():
            print(f"  {manifest.name}:{n} skipped: empty transcript")
            continue
        good.append((row, clip))
    return good


checked = {split: validate(path) for split, path in manifests.items()}
speakers = {split: {row["speaker"] for row, _ in rows} for split, rows in checked.items()}
assert not speakers["train"] & speakers["dev"], "a dev speaker is also a training speaker"
for split, rows in checked.items():
    seconds = sum(len(clip) for _, clip in rows) / 16000
    print(f"{split}: {len(rows)} usable rows, {seconds:.1f} s, speakers {sorted(speakers[split])}")

# %% [markdown]
# Before: the shipped checkpoint on the dev clips. Then the stage-1 preset, composed exactly as
# `train.py` would compose it, re-pointed at our manifests and at the shipped checkpoint, and cut to
# a tiny run (20 steps of 2 clips: five passes over the 8 training clips).

# %%
shipped = load_model(CHECKPOINT)  # adapters folded in: for inference only
dev_clips = [clip for _, clip in checked["dev"]]
dev_texts = [row["text"] for row, _ in checked["dev"]]
before = ModelBackend(shipped, name="shipped").decode(dev_clips, [None] * len(dev_clips))

run = configs_from_hydra(
    compose_preset(
        "experiment=stage1_own_data", "data.train.0.path=train.jsonl", "data.eval.0.path=dev.jsonl"
    )
)
data = dataclasses.replace(
    run.data,
    train=[{**run.data.train[0], "path": str(manifests["train"])}],
    eval=[{**run.data.eval[0], "path": str(manifests["dev"])}],
)
training = dataclasses.replace(
    run.training,
    init_from=str(CHECKPOINT) if TRAINED else None,  # continue the shipped model (projector + LoRA)
    output_dir=str(WORK / "stage1"),
    max_steps=20,
    batch_size=2,
    learning_rate=5e-4,  # the rate the shipped LoRA stage used; the preset's 2e-3 is for a fresh projector
    warmup_steps=2,
    eval_every=20,
    save_every=20,
    log_every=5,
    cache_encoder=False,  # the feature store inside this run's folder, not the shared cache
    mixed_precision="no",
    wandb={"mode": "disabled"},
)
print(
    "the same run from the command line:\n  python train.py experiment=stage1_own_data "
    f"data.train.0.path={manifests['train']} data.eval.0.path={manifests['dev']} "
    f"training.init_from={CHECKPOINT} training.max_steps=20 training.batch_size=2 "
    "training.learning_rate=5e-4 training.warmup_steps=2\n"
)
# prompt and decoding options None: the checkpoint's own, unchanged
summary, tuned = train(run.model, data, training)
after = ModelBackend(tuned, name="tuned").decode(dev_clips, [None] * len(dev_clips))

print(f"\n{'dev clip (held-out voice)':42s} {'seen text':9s} {'before':>7s} {'after':>7s}")
for text, a, b in zip(dev_texts, before, after, strict=True):
    rates = [word_counts(normalize(text), normalize(h)).rate for h in (a, b)]
    print(f"{text:42s} {str(text in texts[:8]):9s} {100 * rates[0]:6.0f}% {100 * rates[1]:6.0f}%   -> {b!r}")
new = [i for i, t in enumerate(dev_texts) if t not in texts[:8]]
seen = [i for i, t in enumerate(dev_texts) if t in texts[:8]]
for label, idx in (("new sentences", new), ("training sentences", seen)):
    refs = [dev_texts[i] for i in idx]
    print(
        f"{label:20s} WER before {100 * corpus_wer(refs, [before[i] for i in idx]):5.1f} %, "
        f"after {100 * corpus_wer(refs, [after[i] for i in idx]):5.1f} %"
    )
print(f"train() summary: eval WER {summary['eval_wer_before']:.1%} -> {summary['eval_wer_after']:.1%}")

# %% [markdown]
# **Answer.** The validation keeps every row that decodes, lasts 0.1-30 s and has a transcript, and
# the speaker check fails loudly if a dev voice leaks into training. Read the table by row type: the
# two *training sentences* spoken by the new voice usually improve most (the model has seen their
# words and, with LoRA, can start to memorise them); the two *new sentences* are the honest test of
# whether twenty steps on eight clips taught anything general, and they move little or not at all
# (they may even get worse: continuing on eight clips also pulls the model away from what it knew).
# That is what the start of a real stage 1 looks like: what makes it work is hundreds of clips from
# many speakers and hundreds of steps (`stage1_own_data` runs 500 steps of 8 clips), not a longer run
# on ten sentences.
# Before trusting any "after" number, check that the dev set shares no speaker with training, as
# above: with training speakers in dev, memorisation would look like progress.

# %% [markdown]
# ## Exercise 2 — Re-weighting the stage-2 corpora for meeting transcription
#
# First what the presets really do (the lecture says stage-1 data in the mix would limit
# forgetting: does `stage2_public` mix any in?).

# %%
for stage in ("stage2_public", "stage3_context"):
    cfg = compose_preset(f"experiment={stage}")
    entries = OmegaConf.to_container(cfg.data.train)
    print(
        f"{stage}: data={cfg.hydra.runtime.choices.data}, model={cfg.hydra.runtime.choices.model} "
        f"(lora {cfg.model.lora}), init_from={cfg.training.init_from}, lr={cfg.training.learning_rate}, "
        f"context_prob={cfg.training.context_prob}"
    )
    for e in entries:
        print(f"    {e['path']:45s} weight {e.get('weight', 1.0)}")

DOCUMENTED = {  # ../shared/data/README.md, used when the data is absent
    "speechocean762.train.jsonl": 2500,
    "an4.train.jsonl": 948,
    "fsdd_digits.train.jsonl": 3000,
    "librispeech.train.jsonl": 2165,
}


def rows_in(path: str) -> int:
    file = REPO / path if not Path(path).is_absolute() else Path(path)
    if file.is_file():
        return sum(1 for line in file.read_text().splitlines() if line.strip())
    return DOCUMENTED[file.name]


def shares(entries: list[dict]) -> dict[str, float]:
    """Each corpus's share of an epoch's draws, as asr.corpus.MixtureSampler draws them."""
    draws = {}
    for e in entries:
        n, w = rows_in(e["path"]), float(e.get("weight", 1.0))
        draws[Path(e["path"]).name] = int(w) * n + round((w - int(w)) * n)
    total = sum(draws.values())
    return {name: d / total for name, d in draws.items()}


meeting = OmegaConf.load(REPO / "conf" / "data" / "shared.yaml")
new_weights = {"speechocean762.train.jsonl": 1.0, "an4.train.jsonl": 0.2, "fsdd_digits.train.jsonl": 0.05}
for entry in meeting.train:
    entry.weight = new_weights[Path(entry.path).name]
meeting.train.append({"type": "manifest", "path": "../shared/data/librispeech.train.jsonl", "weight": 1.0})
meeting.train.append({"type": "manifest", "path": str(manifests["train"]), "weight": 2.0})  # stage-1 data
OmegaConf.save(meeting, WORK / "meeting.yaml")
print(f"\n{WORK / 'meeting.yaml'}:\n{OmegaConf.to_yaml(meeting)}")
shipped_shares = shares(OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "data" / "shared.yaml").train))
for name, share in shares(OmegaConf.to_container(meeting.train)).items():
    print(f"  {name:28s} shared.yaml {shipped_shares.get(name, 0.0):6.1%}  ->  meeting {share:6.1%}")

# %% [markdown]
# **What the presets really do.** `stage2_public` composes `data=shared`: speechocean762, AN4 and
# FSDD with weights 1.0, 1.0 and 0.3, and **no stage-1 data**. It starts from
# `outputs/stage1/final`, projector only (`model=offline`, no LoRA), at 5e-4 instead of stage 1's
# 2e-3; the lower learning rate (and the starting point) is the only protection against forgetting
# in the preset as shipped. `stage3_context` uses the same three corpora, at 3e-4, with half of the
# examples given a hot-word context. To mix stage-1 data back in, list your stage-1 manifest in a
# data config with a small weight, as the `meeting.yaml` above does.
#
# **Answer.** For meetings (adults, native and non-native, spontaneous sentences, few isolated
# digits or spelled letters), down-weight **FSDD** most (isolated digits, 6 speakers, 8 kHz
# recordings: almost nothing a meeting contains) and **AN4** strongly (spelled letters, digits,
# census words from 1991). Keep speechocean762 (full sentences, 125 speakers), and since none of the
# three is native conversational speech, add what is closest in `../shared/data`: LibriSpeech read
# speech (as `conf/data/native.yaml` does) and, later, real meeting recordings. With the weights
# above FSDD drops from about a fifth of the draws to about 3 %. To use the copy, put it in
# `conf/data/meeting.yaml` and run `python train.py experiment=stage2_public data=meeting` (a group
# chosen on the command line wins over the preset's own `override /data: shared`).

# %% [markdown]
# ## Exercise 3 — LoRA parameter counts
#
# A LoRA adapter on a linear layer `in → out` adds A (r × in) and B (out × r): r·(in + out)
# parameters. The layer shapes come from the LLM's own config, recorded in every checkpoint.

# %%
dims = tuned.config.decoder_config
hidden, layers, inter = dims["hidden_size"], dims["num_hidden_layers"], dims["intermediate_size"]
head_dim = dims.get("head_dim") or hidden // dims["num_attention_heads"]
q_width, kv_width = dims["num_attention_heads"] * head_dim, dims["num_key_value_heads"] * head_dim
shapes = {
    "q_proj": (hidden, q_width),
    "k_proj": (hidden, kv_width),
    "v_proj": (hidden, kv_width),
    "o_proj": (q_width, hidden),
    "gate_proj": (hidden, inter),
    "up_proj": (hidden, inter),
    "down_proj": (inter, hidden),
}


def lora_parameters(r: int, targets: list[str]) -> int:
    return layers * r * sum(sum(shapes[t]) for t in targets)


projector = sum(p.numel() for p in tuned.projector.parameters())
llm = sum(p.numel() for n, p in tuned.decoder.named_parameters() if "lora_" not in n)
print(f"projector {projector:,d} parameters; LLM {llm:,d}")
for targets in (["q_proj", "v_proj"], ["q_proj", "v_proj", "o_proj"]):
    print(f"\ntargets {targets}:")
    for r in (4, 8, 16, 64):
        n = lora_parameters(r, targets)
        print(
            f"  r = {r:2d}: {n:9,d} parameters, {n / llm:6.2%} of the LLM, {n / projector:5.2f} x the projector"
        )
    crossing = next(r for r in range(1, 513) if lora_parameters(r, targets) > projector)
    print(
        f"  LoRA outgrows the projector from r = {crossing} (r = {crossing - 1}: {lora_parameters(crossing - 1, targets):,d})"
    )

if tuned.config.lora:  # check the formula against the adapters peft really built
    lora = tuned.config.lora
    actual = sum(p.numel() for n, p in tuned.named_parameters() if "lora_" in n)
    print(
        f"\nthe checkpoint's adapters (r = {lora['r']} on {len(lora['target_modules'])} layer types): "
        f"formula {lora_parameters(lora['r'], list(lora['target_modules'])):,d}, peft {actual:,d}"
    )

# %% [markdown]
# **Answer.** On q and v, each rank costs 30 × (1152 + 768) = 57 600 parameters: r = 4, 16 and 64 give
# 230 400, 921 600 and 3 686 400 (0.17 %, 0.69 % and 2.74 % of the LLM). The projector has 1 440 000,
# exactly r = 25 worth, so LoRA outgrows it from **r = 26**. Adding `o_proj` (576 → 576, another 1152
# per rank and layer) makes a rank cost 92 160: r = 4, 16, 64 give 368 640, 1 474 560 and 5 898 240,
# and LoRA outgrows the projector from **r = 16**. The shipped checkpoint's r = 8 on all seven linear
# layers is 2 442 240 (the formula and peft agree above). Parameters grow linearly with r, and so
# does the capacity to fit (and memorise) a small corpus.

# %% [markdown]
# ## Exercise 4 — A context that hurts Whisper
#
# A wrong hot word that sounds like a word that was said: the decoder's prompt makes the wrong
# spelling likelier than the right one.

# %%
# float32, not int8: int8 kernels round per CPU (lecture)
whisper = FasterWhisperBackend(compute_type="float32", num_beams=1, threads=1)
traps = [
    ("please send the invoice to mark today", "Marc"),
    ("we will meet john in the lobby", "Jon"),
    ("ask katherine to book the meeting room", "Kathryn"),
    ("the train to bath leaves at noon", "Beth"),
    ("she moved to austin last year", "Boston"),
    ("the new fridge will arrive on friday", "Frida"),
]
trap_clips = [synthesize(text) for text, _ in traps]
plain = whisper.decode(trap_clips, [None] * len(traps))
primed = whisper.decode(trap_clips, [c for _, c in traps])
hurt = 0
for (text, context), a, b in zip(traps, plain, primed, strict=True):
    ra, rb = (word_counts(normalize(text), normalize(h)).rate for h in (a, b))
    hurt += rb > ra
    flag = "HURT" if rb > ra else ("helped" if rb < ra else "")
    print(f"{text}\n  no context {100 * ra:4.0f} %: {a}\n  {context!r:10s} {100 * rb:4.0f} %: {b}  {flag}")
refs = [t for t, _ in traps]
print(
    f"\nWER without context {100 * corpus_wer(refs, plain):.1f} %, with the wrong hot words "
    f"{100 * corpus_wer(refs, primed):.1f} %; the context hurt {hurt} of {len(traps)} sentences"
)

# %% [markdown]
# **Answer.** Whisper's `initial_prompt` is text its decoder reads before the audio, so a hot word
# raises the probability of exactly that spelling. When the audio is compatible with it ("Jon" and
# "John" sound the same, "Marc" and "Mark" too), the decoder copies the prompt's spelling, and the
# reference counts it as a substitution; a near-homophone ("Beth" for "bath", "Boston" for "Austin")
# can win where the audio is ambiguous. Which sentences flip varies with the voice and the decoder,
# but same-sounding spellings flip most reliably. The lesson for stage 3: evaluate contexts that are
# *wrong but plausible*, not only right and unrelated ones, and count the sentences a context breaks
# as well as those it fixes.

# %% [markdown]
# ## Exercise 5 — The shipped checkpoint with a right, a missing and an unrelated context
#
# `checkpoints/offline` was trained without contexts (`experiment=local_corpus` then
# `experiment=local_corpus_lora`, both with `context_prob` 0), so this measures what a context does
# to a model that never saw one; stage 3 (`experiment=stage3_context`, 500 steps at `context_prob`
# 0.5) is what would teach it to use them.

# %%
cases = [  # section 4 of the class notebook
    ("please ask siobhan to call doctor okonkwo tomorrow", "Siobhan, Okonkwo"),
    ("we deployed kubernetes on the grafana server", "Kubernetes, Grafana"),
    ("send the report to anneliese in tbilisi", "Anneliese, Tbilisi"),
    ("ask mister szczepanski about the pytorch release", "Szczepanski, PyTorch"),
]
unrelated = ["Ingrid, Nairobi", "Matlab, Heroku", "Svetlana, Reykjavik", "Olufemi, TensorFlow"]
clips = [synthesize(text) for text, _ in cases]
refs = [text for text, _ in cases]
ours = ModelBackend(shipped, name="shipped")
conditions = {
    "no context": [None] * len(cases),
    "right names": [c for _, c in cases],
    "unrelated names": unrelated,
}
outputs = {label: ours.decode(clips, contexts) for label, contexts in conditions.items()}
for label, hyps in outputs.items():
    print(f"{label:16s} WER {100 * corpus_wer(refs, hyps):6.1f} %")
for i, text in enumerate(refs):
    print(f"\nreference: {text}")
    for label, hyps in outputs.items():
        print(f"  {label:16s} {hyps[i]}")

# %% [markdown]
# **Answer.** Expect all three WERs to be high: the one-pass model was trained on about four hours of
# non-native read speech, spelled letters and digits, and on native (here synthetic) English it
# tends to write fluent sentences of its own (`README.md`). What the context changes is accidental:
# the frozen LLM can read the `Context:` line and sometimes copies a name from it, or is thrown off by
# it, but nothing in training taught the projector and adapters to weigh it against the audio, so the
# right names may help a little, not at all, or hurt, and unrelated names may leak into the output.
#
# After stage 3 the check is the same three rows on a held-out set with rare names: the right names
# should lower WER (mostly on the names themselves), a missing context should cost nothing compared
# with a model trained without contexts, and unrelated names should leave the WER where "no context"
# is, because half of the training contexts held distractors the model had to ignore. Add the
# wrong-but-plausible contexts of Exercise 4, and report sentences broken as well as fixed.
