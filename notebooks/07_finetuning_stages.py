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
# # Class 7 — Fine-tuning stages
#
# A model is rarely trained once. The project's recipe chains three stages, each starting from the
# previous checkpoint (`training.init_from`):
#
# 1. **your own data**: the projector on a small corpus from the target domain (a JSONL manifest);
# 2. **a public corpus**: more speakers and words, at a lower learning rate, optionally with LoRA
#    adapters in the LLM;
# 3. **prompt-conditioned transcription**: half of the training prompts carry a *context* (hot words)
#    so that, at inference, names and terms in the context are spelled right.
#
# This notebook prepares data for stage 1, measures the corpora of stage 2, counts what LoRA adds and
# checks that it starts as a no-op, and shows what a context does, with Whisper today and with our
# model once stage 3 has run. The training runs themselves are the `train.py` commands at the end.

# %%
# %matplotlib inline
import json
import random
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from asr import ASRConfig, ASRModel
from asr.audio import AudioError, load_audio
from asr.data import hotword_context
from asr.evaluate import normalize, word_counts
from asr.inference import FasterWhisperBackend
from asr.lengths import encoder_frames
from asr.prompt import IGNORE_INDEX
from asr.synth import synthesize
from asr.training.config import register_configs
from course import DATA, lecture_says, save_figure

torch.set_num_threads(1)
torch.manual_seed(0)
REPO = Path.cwd().resolve().parent

# %% [markdown]
# ## 1. The stage presets
#
# Each stage is a Hydra preset in `conf/experiment/`. The YAML files hold only what they change;
# every default lives in the schemas (`asr.training.config`: `TrainingConfig`, and the prompt and
# decoding options of `PromptConfig` and `DecodingConfig`), so we compose the tree exactly as
# `train.py` does to read the values it will use.

# %%
register_configs()
print(f"{'preset':18s} {'data':10s} {'init_from':22s} {'steps':>6s} {'lr':>8s} {'context':>8s}")
with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
    for stage in ("stage1_own_data", "stage2_public", "stage3_context"):
        cfg = compose("config", overrides=[f"experiment={stage}"], return_hydra_config=True)
        data, train = cfg.hydra.runtime.choices.data, cfg.training
        print(
            f"{stage:18s} {data:10s} {train.init_from or '-':22s} {train.max_steps:6d} "
            f"{train.learning_rate:8.1e} {train.context_prob:8.1f}"
        )

# %% [markdown]
# ## 2. Stage 1: your own data
#
# All the trainer needs is a JSONL manifest: one line per clip with `audio` (a path relative to the
# manifest) and `text`. Before training, check every row: the file decodes, the clip is between 0.1 s
# and 30 s, the transcript is not empty. A bad row must be counted and skipped, not crash a run an
# hour in. We build a tiny corpus (with two broken rows on purpose) and validate it.

# %%
corpus = Path(tempfile.mkdtemp(prefix="own-data-"))
texts = [
    "turn on the kitchen lights",
    "set a timer for ten minutes",
    "call mum on her mobile",
    "what is the weather in leeds",
]
rows = []
for i, text in enumerate(texts):
    sf.write(corpus / f"clip{i}.wav", synthesize(text, voice=["en-gb-x-rp", "en-us"][i % 2]), 16000)
    rows.append({"audio": f"clip{i}.wav", "text": text, "speaker": ["rp", "us"][i % 2]})
rows.append({"audio": "missing.wav", "text": "this file does not exist"})
sf.write(corpus / "short.wav", np.zeros(800, dtype=np.float32), 16000)  # 0.05 s
rows.append({"audio": "short.wav", "text": "too short"})
manifest = corpus / "train.jsonl"
manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))

good, bad = [], []
for row in map(json.loads, manifest.read_text().splitlines()):
    try:
        clip = load_audio(corpus / row["audio"], max_seconds=30)
    except AudioError as err:
        bad.append(str(err).replace(str(corpus) + "/", ""))
        continue
    if not row.get("text", "").strip():
        bad.append(f"{row['audio']}: empty transcript")
        continue
    good.append((row, len(clip) / 16000))
print(f"{manifest.name}: {len(good)} usable rows, {len(bad)} bad rows")
for row, seconds in good:
    print(f"  {seconds:4.2f} s  {row['speaker']}  {row['text']!r}")
for reason in bad:
    print(f"  skipped: {reason}")
print(
    f"\ntrain with:  python train.py experiment=stage1_own_data data.train.0.path={manifest} "
    f"data.eval.0.path=<your dev.jsonl>"
)

# %% [markdown]
# ## 3. Stage 2: a public corpus
#
# More speakers, more words, more acoustic conditions. Here the "public corpus" is the real speech in
# `../shared/data`: three corpora with very different content and durations, mixed by weight
# (`conf/data/shared.yaml`). Look at what the model would see.

# %%
shared = OmegaConf.load(REPO / "conf" / "data" / "shared.yaml")
if (DATA / "README.md").is_file():
    stats = {}
    for spec in shared.train:
        path = REPO / spec.path
        rows_ = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        durations = np.array([r["duration"] for r in rows_])
        words = {w for r in rows_ for w in normalize(r["text"]).split()}
        stats[path.stem] = (rows_, durations, words, spec.weight)
    total_weight = sum(w * len(r) for r, _, _, w in stats.values())
    print(
        f"{'corpus':28s} {'clips':>6s} {'hours':>6s} {'speakers':>8s} {'mean s':>7s} {'words':>6s} {'share':>6s}"
    )
    for name, (rows_, durations, words, weight) in stats.items():
        speakers = len({r["speaker"] for r in rows_})
        print(
            f"{name:28s} {len(rows_):6d} {durations.sum() / 3600:6.2f} {speakers:8d} "
            f"{durations.mean():7.2f} {len(words):6d} {weight * len(rows_) / total_weight:6.1%}"
        )
        corpus = name.split(".")[0]
        if corpus == "speechocean762":
            lecture_says(
                f"speechocean762 ({len(rows_)} clips, {durations.sum() / 3600:.1f} h, {speakers} non-native "
                f"speakers, {durations.mean():.1f} s on average, {len(words)} distinct words)"
            )
        elif corpus == "an4":
            lecture_says(f"AN4 ({len(rows_)} clips, {durations.sum() / 3600:.1f} h,")
        elif corpus.startswith("fsdd"):
            lecture_says(
                f"FSDD ({len(rows_)} isolated digits, {durations.sum() / 3600:.1f} h, {speakers} speakers)"
            )
    fig, ax = plt.subplots(figsize=(10, 3.5), layout="constrained")
    for name, (_, durations, _, _) in stats.items():
        ax.hist(durations, bins=np.linspace(0, 12, 49), alpha=0.6, label=name)
    ax.set(xlabel="clip duration (s)", ylabel="number of clips", title="Durations of the stage-2 corpora")
    ax.legend()
    save_figure(fig, "07_corpus_durations")
    plt.show()
    own_words = {w for t in texts for w in t.split()}
    seen = set().union(*(w for _, _, w, _ in stats.values()))
    print(f"words of our own data never seen in the public corpora: {sorted(own_words - seen)}")
else:
    print(
        f"{DATA} is absent: with it, this cell measures the stage-2 corpora. The recipe is the same with "
        "any manifest; with network, `data=librispeech` streams LibriSpeech and Common Voice."
    )

# %% [markdown]
# **Why a lower learning rate in stage 2?** The projector already works on stage-1 data; large steps
# on a different distribution would erase that (catastrophic forgetting). A smaller rate, and mixing
# some stage-1 data back in, keep what was learned.
#
# ### LoRA: letting the LLM adapt a little
#
# A frozen LLM can only be *addressed* by the projector. LoRA adds, to chosen weight matrices W, a
# trainable low-rank update W + (α/r)·B·A with A (r × in) and B (out × r). B starts at zero, so the
# model is unchanged at the start of training. For r = 8 on the query and value projections of all
# 30 layers: q is 576 → 576, v is 576 → 192 (3 KV heads of 64).

# %%
base = ASRModel.from_sources(ASRConfig()).eval()
lora_config = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
with_lora = ASRModel.from_sources(ASRConfig(lora=lora_config)).eval()
with_lora.projector.load_state_dict(base.projector.state_dict())

trainable = {n: p.numel() for n, p in with_lora.named_parameters() if p.requires_grad}
lora_params = sum(v for n, v in trainable.items() if "lora_" in n)
print(
    f"trainable: projector {sum(v for n, v in trainable.items() if n.startswith('projector')):,d} + "
    f"LoRA {lora_params:,d} = {sum(trainable.values()):,d}"
)
print(f"by hand: 30 layers x 8 x ((576 + 576) + (576 + 192)) = {30 * 8 * ((576 + 576) + (576 + 192)):,d}")
print(
    f"share of the LLM's {sum(p.numel() for p in base.decoder.parameters()):,d} weights: "
    f"{lora_params / sum(p.numel() for p in base.decoder.parameters()):.2%}"
)

clip = synthesize(texts[0])
inputs = base.processor(audio=[clip], text=[texts[0]])  # features + prompt + labels, as tensors
positions = int(base.projector.output_length(encoder_frames(inputs["mel_lengths"]))[0])
assert int(inputs["audio_mask"].sum()) == positions  # the processor reserved one slot per position
with torch.no_grad():
    a = base(**inputs).logits
    b = with_lora(**inputs).logits
print(f"max |logits with LoRA - without| at initialisation: {(a - b).abs().max():.1e}  (B = 0)")
del with_lora

# %% [markdown]
# ## 4. Stage 3: prompt-conditioned transcription
#
# A context goes into the user turn of the prompt (`Context: ...`). Its tokens are *inputs*, never
# targets: the labels of the context are `-100`, only the transcript is learned. In training, half
# of the examples get a hot-word list made of some words of their own transcript plus distractors
# (`asr.data.hotword_context`), so the model learns to *use* the list when the audio supports it, not to
# copy it.

# %%
rng = random.Random(0)
vocabulary = ["leeds", "kitchen", "siobhan", "grafana", "timer", "okonkwo", "tbilisi", "mobile"]
for text in texts[:3]:
    print(f"{text!r:32s} context: {hotword_context(text, vocabulary, rng)!r}")

context = hotword_context(texts[0], vocabulary, rng)
prompts = base.processor.prompt_builder  # the processor's prompt builder
example = prompts.build(10, transcript=texts[0], context=context)
plain = prompts.build(10, transcript=texts[0])
labelled = [
    base.processor.tokenizer.decode([t])
    for t, lab in zip(example.input_ids, example.labels, strict=True)
    if lab != IGNORE_INDEX
]
print(
    f"\nprompt with context: {len(example.input_ids)} tokens (without: {len(plain.input_ids)}); labelled tokens: {labelled}"
)

# %% [markdown]
# What a context can do, shown with Whisper tiny.en, whose decoder accepts a text prompt
# (`initial_prompt`): synthetic sentences with rare names, transcribed without and with the names as
# context. Our model gets the same ability from stage 3 (`model.transcribe(clips, context=...)`,
# `asr transcribe --context`).

# %%
cases = [
    ("please ask siobhan to call doctor okonkwo tomorrow", "Siobhan, Okonkwo"),
    ("we deployed kubernetes on the grafana server", "Kubernetes, Grafana"),
    ("send the report to anneliese in tbilisi", "Anneliese, Tbilisi"),
    ("ask mister szczepanski about the pytorch release", "Szczepanski, PyTorch"),
]
# float32, not int8: int8 kernels round per CPU (lecture)
whisper = FasterWhisperBackend(compute_type="float32", num_beams=1, threads=1)
clips = [synthesize(text) for text, _ in cases]
without = whisper.decode(clips, [None] * len(cases))
with_context = whisper.decode(clips, [c for _, c in cases])
totals = np.zeros(2)
for (text, hot), a, b in zip(cases, without, with_context, strict=True):
    rates = [word_counts(normalize(text), normalize(h)).rate for h in (a, b)]
    totals += [word_counts(normalize(text), normalize(h)).errors for h in (a, b)]
    print(
        f"reference : {text}\n  no context   ({100 * rates[0]:3.0f} %): {a}\n  {hot!r:24s} ({100 * rates[1]:3.0f} %): {b}"
    )
n_words = sum(len(normalize(t).split()) for t, _ in cases)
print(
    f"\nWER without context {100 * totals[0] / n_words:.1f} %, with context {100 * totals[1] / n_words:.1f} %"
)
lecture_says(
    f"about {100 * totals[0] / n_words:.0f} % WER without context and about {100 * totals[1] / n_words:.0f} % with",
    when=True,  # espeak-ng speech
)
fig, ax = plt.subplots(figsize=(4.5, 3), layout="constrained")
bars = ax.bar(["no context", "names as context"], 100 * totals / n_words, color=["tab:gray", "tab:green"])
ax.bar_label(bars, fmt="%.1f %%")
ax.set(ylabel="WER (%)", title=f"Whisper tiny.en, {len(cases)} sentences with rare names")
save_figure(fig, "07_context_wer")
plt.show()

# %% [markdown]
# Contexts help when the audio is ambiguous and the right spelling is in the list; they can also hurt:
# a decoder that trusts the prompt too much inserts its words where they were never said (exercise 4
# looks for such a case). Stage 3's distractors exist to teach the model the difference.
#
# ## 5. The commands
#
# ```bash
# python train.py experiment=stage1_own_data data.train.0.path=my/train.jsonl data.eval.0.path=my/dev.jsonl
# python train.py experiment=stage2_public                       # init_from: outputs/stage1/final
# python train.py experiment=stage2_public model=offline_lora    # the same, with LoRA on q/v
# python train.py experiment=stage3_context                      # init_from: outputs/stage2/final
# asr evaluate --model outputs/stage3/final --manifest ../shared/data/speechocean762.dev.jsonl
# asr transcribe meeting.wav --model outputs/stage3/final --context "Siobhan, Okonkwo"
# ```
#
# ## Exercises (about 40 minutes)
#
# Solutions: `notebooks/solutions/07_finetuning_stages.py` (try first).
#
# 1. Record 10 sentences of your own (phone, 16 kHz or any rate: `load_audio` resamples; or synthesise
#    them with several voices), write the manifests as in section 2 and validate them, keeping one
#    speaker for a dev set only. Continue the shipped checkpoint on the rest for at most 50 steps
#    (`experiment=stage1_own_data` with `training.init_from=checkpoints/offline training.max_steps=50`:
#    a real stage 1 from a fresh projector needs hundreds of clips and steps). Compare the dev WER
#    before and after, separately for sentences seen in training and new ones.
# 2. Which of the three stage-2 corpora would you down-weight for a meeting-transcription product,
#    and why? Change the weights in a copy of `conf/data/shared.yaml`.
# 3. LoRA rank: how many parameters for r = 4, 16, 64? At which rank does LoRA outgrow the projector?
#    Add `o_proj` to the targets and recount.
# 4. Find a case where a context *hurts* Whisper here (a wrong hot word similar to a word that was said).
# 5. The shipped checkpoint (`checkpoints/offline`, `default_model(two_pass=False)`) was trained without
#    contexts. Measure its WER on section 4's sentences with no context, with the right names and with
#    *unrelated* names. What should stage 3 (`experiment=stage3_context`, after stages 1 and 2: far
#    more than a class's CPU time) change, and how would you check that a context never hurts?
