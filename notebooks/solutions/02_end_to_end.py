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
# # Class 2 — The end-to-end architecture: solutions
#
# Worked solutions to the exercises of `notebooks/02_end_to_end.py`. Try them first.
#
# Run with `notebooks/` as the working directory (like the class notebook): it finds
# `../shared/data`, the shipped `checkpoints/offline` and `solutions/trace_data.py` from there.
# Offline, on a CPU, in about a minute; everything it writes goes to a temporary folder that the last
# cell removes.

# %%
# %matplotlib inline
import importlib.util
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import soundfile as sf
import torch
from IPython.display import Image, display

from asr import ASRConfig, ASRModel
from asr.audio import SAMPLE_RATE
from asr.inference import default_model, load_model
from asr.projector import build_projector
from asr.prompt import IGNORE_INDEX
from asr.synth import synthesize
from asr.trace import decoder_attentions, trace
from course import example_clip

DEFAULT_MODEL = default_model(two_pass=False)  # checkpoints/offline of this repository

torch.set_num_threads(1)
torch.manual_seed(0)  # the untrained projector's random init, when no checkpoint exists

trained = (DEFAULT_MODEL / "config.json").is_file()
model = load_model(DEFAULT_MODEL)
processor = model.processor
print(
    f"model: {'trained checkpoint ' + str(DEFAULT_MODEL) if trained else 'UNTRAINED projector (no checkpoint yet)'}"
)

clip, reference, _ = example_clip(0)
print(f"reference transcript: {reference!r}")

workdir = tempfile.TemporaryDirectory(prefix="asr-class2-")  # removed by the last cell
TMP = Path(workdir.name)

result = trace(clip, model)  # as in the class notebook: shapes, transcript, figures
s = result.shapes
with torch.no_grad():  # the encoder frames of the clip, for exercises 2 and 5
    features = processor.features([clip])
    frames, lengths = model.encode(features["input_features"], features["mel_lengths"])

# %% [markdown]
# ## Exercise 0 — Write your own trace_data.py
#
# The model answer is `notebooks/solutions/trace_data.py` (about 60 lines, public API only):
# `asr.audio.load_audio` → `load_model(default_model(two_pass=False))` →
# `model.processor.features([clip])` → `model.encode` → `model.project`, printing the shape at every
# stage and saving `encoder_output.png` and `projector_output.png`. `asr.trace` is the full version.
# From a terminal: `python notebooks/solutions/trace_data.py CLIP.wav --out trace_data_out`. Here we
# import it and call its `main` with the same arguments, on the class clip written to a WAV file.

# %%
spec = importlib.util.spec_from_file_location("trace_data", Path("solutions") / "trace_data.py")
trace_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(trace_data)

wav = TMP / "clip.wav"
sf.write(str(wav), clip, SAMPLE_RATE)
out = TMP / "trace_data_out"
trace_data.main([str(wav), "--out", str(out)])
for name in ("encoder_output.png", "projector_output.png"):
    path = out / name
    assert path.is_file() and path.stat().st_size > 0, f"{path} was not written"
    print(f"{name}: {path.stat().st_size:,d} bytes")
display(Image(filename=str(out / "encoder_output.png")), Image(filename=str(out / "projector_output.png")))

# %% [markdown]
# **Answer.** For the 3.36 s speechocean762 clip the script prints 53 760 samples → log-mel
# 80 × 336 → encoder 168 × 384 → projector 34 × 576 (5 × 384 = 1920 numbers stacked per position,
# mapped to 576). The flagship changes only the widths: 128 mel bins, whisper-large-v3-turbo's
# 1280-wide frames (still 168: same 10 ms hop, same stride-2 stem) and 34 positions of **2048**
# (5 × 1280 = 6400 → 2048), because the projector's output replaces token embeddings and must have
# exactly the LLM's embedding width: SmolLM3-3B's `hidden_size` is 2048. The original seed course's
# "1280 → 1536" is wrong for SmolLM3-3B. (Without `../shared/data` the clip is synthetic and the frame
# counts differ; the widths do not. `model.processor(audio=clip)` gives the same `input_features` and
# `mel_lengths`, plus the prompt tensors that `generate` needs.)
#
# ## Exercise 1 — asr.trace on "your own recording"
#
# No microphone in an automated run, so "your recording" is the same sentence spoken by espeak-ng
# with a British female voice, written to a WAV file. `trace(path, model, out_dir=...)` is exactly
# what `python -m asr.trace me.wav --out trace_out --model checkpoints/offline` runs; here the model
# is already loaded.

# %%
me = synthesize(reference.lower(), voice="en-gb-x-rp+f4", rate=150)
me_wav = TMP / "me.wav"
sf.write(str(me_wav), me, SAMPLE_RATE)
mine = trace(str(me_wav), model, out_dir=TMP / "trace_out")
print("files:", sorted(p.name for p in (TMP / "trace_out").iterdir()))
print(f"class clip: {result.text!r}\nsynthetic : {mine.text!r}")
for stage in ("log_mel", "encoder"):
    display(result.figures[stage], mine.figures[stage])

# %% [markdown]
# **Answer.** `trace` writes five PNGs: waveform, log-mel, encoder, projector, attention. Between two
# speakers the **log-mel** changes most visibly: pitch (the spacing of the harmonic stripes), formant
# positions (vocal tract size: here a child against an adult voice, with `../shared/data`), loudness,
# and speaking rate (the number of frames). The encoder image changes less at a glance: the same few
# channels are large and nearly constant in every clip (horizontal stripes), and the encoder's job is
# precisely to map different voices saying the same words to similar representations. The attention
# figure changes with the transcript itself (its rows are the generated tokens).
#
# Note: without `--model`, the command line uses `default_model()`, which prefers the two-pass
# checkpoint `checkpoints/offline-2pass` (Whisper's own transcript joins the prompt); this class
# uses the one-pass `checkpoints/offline`, so pass `--model checkpoints/offline` to compare.
#
# ## Exercise 2 — Attention to the audio, layer by layer
#
# `trace(clip, model, layer=0)` and `layer=29` give single layers. For all 30, one teacher-forced
# pass with `asr.trace.decoder_attentions` (what `trace` runs inside) is enough: it returns every
# layer's weights, and we compute the audio share per layer ourselves, checking it against `trace`.

# %%
by_layer = {layer: trace(clip, model, layer=layer, verbose=False) for layer in (0, 29)}
for layer, r in by_layer.items():
    print(f"trace(layer={layer:2d}): mean audio share {r.audio_share.mean():.3f}")

example = processor.prompt_builder.build(s.projector_positions, transcript=result.text)  # as trace does
ids, audio_mask = torch.tensor([example.input_ids]), torch.tensor([example.audio_mask])
with torch.no_grad():
    attentions = decoder_attentions(model, ids, audio_mask, frames, lengths)  # layers x (1, heads, T, T)
queries = torch.tensor([i for i, label in enumerate(example.labels) if label != IGNORE_INDEX]) - 1
audio_columns = audio_mask[0].nonzero().squeeze(-1)
heads_mean = torch.stack([a[0].float().mean(0) for a in attentions])  # (layers, T, T)
share = heads_mean[:, queries][:, :, audio_columns].sum(-1)  # (layers, generated tokens)
for layer, r in by_layer.items():
    assert np.allclose(share[layer].numpy(), r.audio_share, atol=1e-4)
assert np.allclose(share.mean(0).numpy(), result.audio_share, atol=1e-4)  # trace's default: all layers
per_layer = share.mean(-1).numpy()
order = np.argsort(per_layer)[::-1]
print(f"mean audio share per layer: {np.round(per_layer, 3).tolist()}")
print(f"most: layers {order[:3].tolist()}; least: layers {order[-3:].tolist()}; mean {per_layer.mean():.3f}")

fig, ax = plt.subplots(figsize=(10, 3.2), layout="constrained")
ax.bar(range(len(per_layer)), per_layer)
ax.axhline(s.projector_positions / s.prompt_tokens, color="gray", linestyle=":", label="uniform (1st token)")
ax.set(xlabel="decoder layer", ylabel="mean audio share", title="How much each layer attends to the audio")
ax.legend()
plt.show()

# %% [markdown]
# **Answer.** The printed list and the bars answer it for this clip and checkpoint; the asserts show
# that our per-layer numbers are the ones `trace(layer=0)` and `trace(layer=29)` give, and that their
# mean over the layers is `trace`'s default. Two things to read off. The share varies widely from
# layer to layer, so the 30-layer mean that `trace` draws by default hides where the listening
# happens. And each bar compares with the uniform line of exercise 4: a layer below it gives the
# text more than its fair share of attention. That is common in LLMs: many heads park most of their
# attention on the first token of the sequence (an *attention sink*, where a head puts its attention
# when it has nothing to read) or on the words just written. The layers with the largest share are
# where the LLM reads the vectors that the projector learned to write (this checkpoint also trained
# small LoRA adapters inside the LLM, see `config.json`; the base weights stay frozen).
#
# ## Exercise 3 — A projector that stacks 10 frames
#
# Prediction before building anything: the stack size changes nothing before the projector
# (mel and encoder frames stay), then `ceil(encoder / 10)` positions of 576, and the first linear layer
# doubles its input (10 × 384 = 3840).

# %%
k, d_enc, d_llm = 10, model.config.encoder_width, model.config.decoder_width
positions = -(-s.encoder_frames // k)
params = k * d_enc * d_llm + d_llm + d_llm * d_llm + d_llm + 2 * d_llm
print(
    f"predicted: mel {s.mel_frames}, encoder {s.encoder_frames} x {d_enc}, projector {positions} x {d_llm} "
    f"({20 * k} ms each), prompt {s.prompt_tokens - s.projector_positions + positions} positions, "
    f"projector parameters {params:,d}"
)
torch.manual_seed(0)
model10 = ASRModel.from_sources(ASRConfig(projector_stack=k)).eval()  # untrained: transcript meaningless
print(f"built: projector parameters {sum(p.numel() for p in model10.projector.parameters()):,d}")
r10 = trace(clip, model10, max_new_tokens=8)  # a few tokens: only the shapes matter here
assert (r10.shapes.projector_positions, r10.shapes.llm_width) == (positions, d_llm)
assert r10.shapes.prompt_tokens == s.prompt_tokens - s.projector_positions + positions
del model10

# %% [markdown]
# **Answer.** For the 3.36 s clip: 336 mel frames and 168 encoder frames as before, then
# ceil(168 / 10) = **17 positions** × 576 instead of 34 (200 ms each), a prompt shorter by 17
# positions, and a projector of 10 × 384 × 576 + 576 + 576 × 576 + 576 + 2 × 576 = **2 545 920**
# parameters instead of 1 440 000.
#
# *Gains*: half the audio positions, so less attention and KV-cache work in every one of the 30
# decoder layers, and room for longer audio in the same context (a 30 s clip is 150 positions, not
# 300). *Losses*: each vector must now carry 200 ms, often two or three phonemes, through one
# 576-wide vector and one MLP: timing gets coarser, and short words can share a position with their
# neighbours. The projector also grows, and has more to learn. k = 5 (100 ms, about one phoneme per
# position) is the usual compromise; past some *k* accuracy drops, and only training both and
# measuring the WER (Classes 5 and 6) tells where.
#
# ## Exercise 4 — The audio share of uniform attention
#
# If a query spread its attention evenly over everything it can see, the audio share would be the
# fraction of visible positions that are audio. The token predicting the first word sees the
# prompt: 34 audio positions of 68, a share of **0.5**. The *j*-th generated token (from 0) sees
# *j* more text positions: `34 / (68 + j)`.

# %%
j = np.arange(s.generated_tokens)
uniform = s.projector_positions / (s.prompt_tokens + j)
measured = result.audio_share
print(
    f"{s.projector_positions} audio positions of {s.prompt_tokens}: uniform share {uniform[0]:.3f} for the first token"
)
print(
    f"uniform: mean {uniform.mean():.3f}; measured (mean over layers and heads): mean {measured.mean():.3f}"
)
print(f"measured / uniform: {measured.mean() / uniform.mean():.2f}")

fig, ax = plt.subplots(figsize=(8, 3), layout="constrained")
ax.plot(j, uniform, "o--", color="gray", label="uniform attention")
ax.plot(j, measured, "o-", label="measured (trace)")
ax.set_xticks(j, result.tokens, rotation=60, fontsize=7)
ax.set(ylabel="attention mass on audio", ylim=(0, 1), title="Audio share per generated token")
ax.legend()
plt.show()

# %% [markdown]
# **Answer.** Uniform attention would give 0.5 for the first token, falling slowly as generated
# tokens join the context (the grey curve). Compare the measured share (mean over 30 layers and
# 9 heads) with it: *below* the curve, the model gives the text positions more than their fair share
# (typically the first token, the attention sink of exercise 2, the instruction and the words it has
# just written); *above* it, the model seeks out the audio. Either way the share is only a
# first-order measure: a head can attend to a few audio positions and still read a lot from them. The
# rough diagonal of the attention figure (early words look at early audio) is the stronger sign that
# the model listens.
#
# ## Exercise 5 — The modality gap before and after training
#
# The shipped checkpoint is what Class 5's loop produces at scale (`make train`). Its untrained
# counterpart is a freshly built projector with the same config: `build_projector(model.config)`
# with the LayerNorm gain at the embeddings' median RMS, exactly as `ASRModel.from_sources` builds it.
# The section 4 measurements for both, side by side, on the same encoder frames.

# %%
if not trained:
    print("no trained checkpoint: both rows are untrained projectors (train one with `make train`)")
embeddings = model.decoder.get_input_embeddings().weight.detach()
unit = torch.nn.functional.normalize


def rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(-1).sqrt()


torch.manual_seed(0)
fresh = build_projector(model.config).eval()
with torch.no_grad():
    vectors = {
        "untrained projector": fresh(frames)[0, : s.projector_positions],
        "trained projector": model.project(frames, lengths)[0][0, : s.projector_positions],
    }
assert torch.allclose(vectors["trained projector"], torch.from_numpy(result.projected), atol=1e-5)
sample = embeddings[torch.randperm(len(embeddings), generator=torch.Generator().manual_seed(0))[:2000]]
token_token = (unit(sample, dim=-1) @ unit(embeddings, dim=-1).T).topk(2, dim=-1).values[:, 1]
print(f"{'':20s}  RMS median [min, max]    cosine to nearest token   nearest tokens of positions 0-7")
print(
    f"{'token embeddings':20s}  {rms(embeddings).median():.3f} [{rms(embeddings).min():.3f}, "
    f"{rms(embeddings).max():.3f}]    {token_token.mean():.3f} (nearest other token)"
)
for name, audio in vectors.items():
    best, nearest = (unit(audio, dim=-1) @ unit(embeddings, dim=-1).T).max(dim=-1)
    r = rms(audio)
    words = [processor.tokenizer.decode([i]) for i in nearest[:8].tolist()]
    print(f"{name:20s}  {r.median():.3f} [{r.min():.3f}, {r.max():.3f}]    {best.mean():.3f}   {words}")

both = torch.cat([sample, *vectors.values()]).numpy()
centred = both - both.mean(axis=0)
xy = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
ax.scatter(*xy[: len(sample)].T, s=3, alpha=0.4, label="2000 token embeddings")
start = len(sample)
for (name, audio), colour in zip(vectors.items(), ("tab:red", "tab:green"), strict=True):
    ax.scatter(*xy[start : start + len(audio)].T, s=14, color=colour, label=f"{len(audio)} vectors, {name}")
    start += len(audio)
ax.set(
    xlabel="principal component 1", ylabel="principal component 2", title="Token embeddings vs audio vectors"
)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Answer.** *Scale*: the untrained projector gives every vector exactly the embeddings' median RMS
# (min = max: a LayerNorm with a constant gain and zero bias makes every output's RMS equal to that
# gain); after training, gain and bias have moved, so the RMS spreads (the printed range; compare it
# with the tokens' own). *Direction*: compare the nearest-token cosines with the tokens'
# own (about 0.78), and the clusters in the PCA picture. If the trained vectors still sit well below
# the tokens' similarity, in a cluster of their own, with "nearest tokens" unrelated to the words
# spoken, that is expected: the loss never asks for token-like vectors, only for vectors from which
# the LLM predicts the transcript. The change that matters shows in what the LLM does with
# them: the transcript, the attention diagonal and the audio share of exercises 2 and 4 are
# clip-specific with the trained projector and generic with an untrained one.

# %%
workdir.cleanup()  # the WAV files and PNGs written above
