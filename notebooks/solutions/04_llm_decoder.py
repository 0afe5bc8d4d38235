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
# # Class 4 — The LLM decoder: solutions to the exercises
#
# Worked solutions for the exercises at the end of `notebooks/04_llm_decoder.py`. Run it like the class
# notebook, with `notebooks/` as the working directory (it finds `../shared/data` from there). The setup
# repeats what the exercises need from the class notebook: the model, the clip, its audio vectors and
# the processor's inputs. About a minute on one CPU thread.

# %%
# %matplotlib inline
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from asr import lengths as lengths_of
from asr.inference import default_model, load_model
from asr.synth import synthesize
from asr.trace import decoder_attentions
from course import example_clip, save_figure

DEFAULT_MODEL = default_model(two_pass=False)  # checkpoints/offline of this repository

torch.set_num_threads(1)
torch.manual_seed(0)
trained = (DEFAULT_MODEL / "config.json").is_file()
model = load_model(DEFAULT_MODEL)
processor = model.processor
decoder, tokenizer = model.decoder, processor.tokenizer
print(f"model: {'trained checkpoint' if trained else 'UNTRAINED projector: transcripts will be nonsense'}")

clip, reference, _ = example_clip(1)
features = processor.features([clip])
with torch.no_grad():
    frames, lengths = model.encode(features["input_features"], features["mel_lengths"])
    audio, positions = model.project(frames, lengths)
n_audio = int(positions[0])
inputs = processor(audio=[clip])  # features + left-padded prompt: what model.generate needs
N = 24
print(f"clip: {len(clip) / 16000:.2f} s, reference {reference!r}, {n_audio} audio positions")


# %% [markdown]
# ## Exercise 1 — A repetition penalty in our own greedy loop
#
# CTRL's rule (Keskar et al., 2019), as `asr.modeling.GeneratedRepetitionPenalty` applies it: before
# each argmax, take every token id that already occurs among the **generated** tokens (once, however
# often it occurred; the prompt is not penalised) and divide its logit by θ if the logit is positive,
# multiply it by θ if it is negative. Both make the token less likely; θ = 1 switches it off.
#
# The check needs the options passed explicitly: without them, `model.generate` decodes as
# `model.decoding` says, the checkpoint's `generation_config.json` (for the shipped one-pass model:
# beam search with 4 beams, n-gram blocking, no penalty; `DecodingConfig`'s default penalty is 1.2).
# `GREEDY` below makes `generate` a plain greedy search like our loop. We compare on the class clip
# and on a synthetic clip that repeats a word, where a penalty has something to act on.


# %%
@torch.no_grad()
def prompt_embeds(clip: np.ndarray) -> torch.Tensor:
    """The prompt of one clip with its audio vectors merged in (section 5 of the class notebook)."""
    feats = processor.features([clip])
    clip_frames, clip_lengths = model.encode(feats["input_features"], feats["mel_lengths"])
    clip_audio, clip_positions = model.project(clip_frames, clip_lengths)
    batch = processor.prompts([int(clip_positions[0])], padding_side="left")
    return model.merge(batch["input_ids"], batch["audio_mask"], clip_audio, clip_positions)


@torch.no_grad()
def greedy_penalised(embeds: torch.Tensor, n_tokens: int, penalty: float) -> list[int]:
    """Greedy decoding with a KV cache and CTRL's repetition penalty on the generated tokens."""
    out = decoder(inputs_embeds=embeds, use_cache=True)
    tokens: list[int] = []
    for _ in range(n_tokens):
        logits = out.logits[0, -1].clone()
        if tokens and penalty != 1.0:
            seen = torch.tensor(sorted(set(tokens)))  # each generated id once
            picked = logits[seen]
            logits[seen] = torch.where(picked < 0, picked * penalty, picked / penalty)
        token = int(logits.argmax())
        tokens.append(token)
        if token == tokenizer.eos_token_id:
            break
        step = decoder.get_input_embeddings()(torch.tensor([[token]]))
        out = decoder(inputs_embeds=step, past_key_values=out.past_key_values, use_cache=True)
    return tokens


def until_eos(ids: list[int]) -> list[int]:
    """A generated row up to and including the first end-of-turn token."""
    eos = tokenizer.eos_token_id
    return ids[: ids.index(eos) + 1] if eos in ids else ids


GREEDY = {"num_beams": 1, "no_repeat_ngram_size": 0}  # the search of our loop
DEFAULT_PENALTY = model.decoding.repetition_penalty
print(f"model.decoding.repetition_penalty = {DEFAULT_PENALTY} (what generate uses without the keyword)")
for name, audio_in in {"class clip": clip, "repeated word": synthesize("nine nine nine nine nine")}.items():
    embeds = prompt_embeds(audio_in)
    clip_inputs = processor(audio=[audio_in])
    ours = {p: greedy_penalised(embeds, N, p) for p in (1.0, 1.1, DEFAULT_PENALTY)}
    explicit = until_eos(
        model.generate(**clip_inputs, max_new_tokens=N, repetition_penalty=1.1, **GREEDY)[0].tolist()
    )
    default = until_eos(model.generate(**clip_inputs, max_new_tokens=N, **GREEDY)[0].tolist())
    print(f"\n{name}:")
    for p, tokens in ours.items():
        print(f"  our loop, penalty {p}: {processor.decode(tokens)!r}")
    print(f"  generate(repetition_penalty=1.1) == our 1.1 loop: {explicit == ours[1.1]}")
    print(
        f"  generate() (default {DEFAULT_PENALTY})      == our {DEFAULT_PENALTY} loop: {default == ours[DEFAULT_PENALTY]}"
    )
    print(f"  generate() (default {DEFAULT_PENALTY})      == our 1.1 loop: {default == ours[1.1]}")

# %% [markdown]
# **Answer.** Our loop matches `model.generate(..., repetition_penalty=1.1)` token for token: the same
# logits, the same rule on the same set of tokens (the generated ones only; transformers' own processor
# would also penalise the prompt's ids when the prompt is in `input_ids`). Called without the keyword,
# `generate` applies the checkpoint's penalty, so comparing it with a 1.1 loop is comparing two different decoders; the
# two can agree on a clip where no token repeats (the penalty then never changes an argmax), which
# is why a short transcript without repeated tokens cannot tell them apart. On a clip whose words
# *do* repeat, the penalty acts against the truth: "nine nine nine ..." is exactly what a repetition
# penalty discourages. It lowers a repeated token's logit by a fixed factor, so it flips the choice
# only when a competitor is close; it discourages loops without forbidding them, and it can delete
# genuine repetitions. That trade-off is why the penalty is tuned on dev sets: 1.2 suited the models
# trained on short accented clips, where 1.0 let the LLM loop; the shipped model, retrained on native
# English, decodes best without one (1.0), because in LibriSpeech's long sentences words like "the" and
# "of" come back many times.

# %% [markdown]
# ## Exercise 2 — Timing with and without the KV cache
#
# `greedy` stops at `<|im_end|>`, and a trained model says `<|im_end|>` after a few tokens; to time
# N tokens we must not stop. One run of 64 steps per mode gives all four points: the time after n
# steps is the time of `greedy(n)`. We keep the time of every step too.


# %%
@torch.no_grad()
def step_times(n_tokens: int, use_cache: bool) -> np.ndarray:
    """Seconds since the start after each of ``n_tokens`` greedy steps (never stopping at <|im_end|>)."""
    embeds = prompt_embeds(clip)
    times = []
    start = time.perf_counter()
    out = decoder(inputs_embeds=embeds, use_cache=use_cache)
    for _ in range(n_tokens):
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        step = decoder.get_input_embeddings()(token)
        if use_cache:
            out = decoder(inputs_embeds=step, past_key_values=out.past_key_values, use_cache=True)
        else:
            embeds = torch.cat([embeds, step], dim=1)
            out = decoder(inputs_embeds=embeds, use_cache=False)
        times.append(time.perf_counter() - start)
    return np.array(times)


N_MAX = 64
prompt_length = prompt_embeds(clip).shape[1]
cumulative = {use_cache: step_times(N_MAX, use_cache) for use_cache in (True, False)}
n = np.arange(1, N_MAX + 1)
for use_cache, times in cumulative.items():
    per_step = np.diff(times, prepend=0.0)
    quadratic, linear, _ = np.polyfit(n, times, 2)
    print(
        f"{'with' if use_cache else 'without'} cache: "
        + ", ".join(f"N={k} {times[k - 1]:.2f} s" for k in (8, 16, 32, 64))
        + f"; per step {per_step[1:9].mean() * 1e3:.0f} ms (steps 2-9) -> {per_step[-8:].mean() * 1e3:.0f} ms"
        + f" (last 8); fit a N^2 + b N + c: a = {quadratic * 1e3:.3f} ms, b = {linear * 1e3:.1f} ms"
    )

c = decoder.config
weight_flops = 2 * (
    sum(p.numel() for p in decoder.model.layers.parameters()) + decoder.get_output_embeddings().weight.numel()
)
attention_flops = (
    2 * 2 * c.num_attention_heads * (c.hidden_size // c.num_attention_heads) * c.num_hidden_layers
)
print(
    f"\nprompt {prompt_length} positions; per new position: {weight_flops / 1e6:.0f} MFLOP through the weights "
    f"(blocks + LM head), {attention_flops / 1e3:.1f} kFLOP of attention per position it attends to"
)
print(f"attention costs as much as the weights only at {weight_flops / attention_flops:,.0f} positions")

fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8), layout="constrained")
for use_cache, times in cumulative.items():
    label = "with KV cache" if use_cache else "without cache"
    left.plot(n, times, label=label)
    left.plot([8, 16, 32, 64], times[[7, 15, 31, 63]], "o", color=left.lines[-1].get_color())
    right.plot(n[1:], np.diff(times) * 1e3, label=label)
left.set(xlabel="tokens generated N", ylabel="total seconds", title="Time of greedy(N)")
right.set(xlabel="step t", ylabel="ms for step t", title="Time per step", ylim=(0, None))
left.legend()
right.legend()
save_figure(fig, "04_kv_cache_timing")
plt.show()

# %% [markdown]
# **Answer.** Let P be the prompt length (the printed number, audio included) and T the number of
# generated tokens. Each position costs a fixed amount through the weights (projections, SwiGLU MLP,
# LM head: about 270 MFLOP) plus attention proportional to the number of positions it attends to.
#
# * **With a cache**, step t runs *one* position: the fixed weight cost plus attention over P + t cached
#   keys. The per-step cost grows linearly with t, so the total is O(T²), not O(T). The quadratic term
#   is tiny here: attention over a position costs about 69 kFLOP against 270 MFLOP through the
#   weights, so it only matters at thousands of positions. Over 64 tokens the per-step time is nearly
#   flat (the fitted `a` is close to zero) and the curve looks linear. On a CPU a one-position step is also bound by memory bandwidth: every step
#   reads all the weights (about 540 MB in float32) to do a matrix-vector product.
# * **Without a cache**, step t reruns all P + t positions: the weight cost grows linearly with t
#   (the per-step time in the right panel rises), and attention is (P + t)². The totals are
#   c·(P·T + T²/2) for the weights and O(T³) for attention. The measured curve is the quadratic weight
#   term (the fitted `a` is clearly positive). The cubic attention term would only show at thousands
#   of positions. While T < 2P the linear P·T part dominates, so the curve bends only gently.
#
# The cache removes the recomputation: P + T positions processed instead of P·T + T²/2 (48 times
# fewer for P = T = 64); it does not make decoding linear. The measured gap is much smaller than that
# factor because many positions at once are a matrix product, which a CPU does far more efficiently per
# position than a one-position step.

# %% [markdown]
# ## Exercise 3 — The size of the KV cache
#
# Per position and per layer the cache holds one key and one value vector per KV head:
# 2 × layers × KV heads × head dim numbers. A 30 s clip fills Whisper's window: 1500 encoder frames,
# 300 audio positions at k = 5.

# %%
audio_30s = lengths_of.audio_positions(lengths_of.encoder_frames(lengths_of.WHISPER_WINDOW_FRAMES), 5)
prompt_30s = processor.prompt_builder.build(audio_30s)
text_30s = len(prompt_30s.input_ids) - audio_30s
total = audio_30s + text_30s + 200
print(f"30 s clip: {audio_30s} audio + {text_30s} prompt tokens + 200 generated = {total} positions")

# measured on a real cache: the prompt of our clip, one forward pass
with torch.no_grad():
    cache = decoder(inputs_embeds=prompt_embeds(clip), use_cache=True).past_key_values
cache_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
print(f"measured: {cache_bytes / cache.get_seq_length():,.0f} bytes per position (float32)")

models = {
    "SmolLM2-135M": (c.num_hidden_layers, c.num_key_value_heads, c.hidden_size // c.num_attention_heads),
    "SmolLM2-135M without GQA": (
        c.num_hidden_layers,
        c.num_attention_heads,
        c.hidden_size // c.num_attention_heads,
    ),
    "SmolLM3-3B": (36, 4, 128),
}
for name, (layers, kv_heads, head_dim) in models.items():
    per_position = 2 * layers * kv_heads * head_dim  # numbers
    print(
        f"{name:25s} {per_position * 4:7,d} B/position; {total} positions: "
        f"float32 {per_position * 4 * total / 2**20:6.2f} MiB, bfloat16 {per_position * 2 * total / 2**20:6.2f} MiB"
    )

# %% [markdown]
# **Answer.** 534 positions × 46 080 B = 23.5 MiB in float32 and 11.7 MiB in bfloat16 for SmolLM2-135M.
# SmolLM3-3B stores 2 × 36 × 4 × 128 = 36 864 numbers per position (147 456 B in float32): 75.1 MiB
# in float32, 37.5 MiB in bfloat16. That is small next to the weights (about 0.54 GB for SmolLM2 in
# float32, about 6 GB for SmolLM3-3B in bfloat16), but it is per sequence: a batch of 64 clips needs
# 64 times as much. The 300 audio positions are more than half of it, which is one reason to stack
# frames (k) and to keep audio prefixes short. Grouped-query attention divides the cache by
# query heads / KV heads (3 for SmolLM2, 4 for SmolLM3's 16 query heads).

# %% [markdown]
# ## Exercise 4 — Attention to the audio with and without a context
#
# We teacher-force the same transcript with and without `Context: Kate, China` and measure, per layer,
# the share of the transcript tokens' attention that lands on the audio. We also measure the share on the
# inserted context tokens (found as the span where the two prompts differ).


# %%
def attention_shares(context: str | None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The transcript tokens' mean attention mass on the audio, per layer; also their mean attention
    per key position (layers, T) and the prompt's token ids."""
    example = processor.prompt_builder.build(n_audio, transcript=reference.lower(), context=context)
    ids, mask = torch.tensor([example.input_ids]), torch.tensor([example.audio_mask])
    with torch.no_grad():
        attentions = decoder_attentions(model, ids, mask, frames, lengths)  # layers x (1, heads, T, T)
    targets = torch.tensor([i for i, label in enumerate(example.labels) if label != -100]) - 1
    per_key = torch.stack([a[0].mean(0)[targets].mean(0) for a in attentions])  # (layers, T)
    return per_key[:, mask[0]].sum(-1).numpy(), per_key.numpy(), example.input_ids


CONTEXT = "Kate, China"
plain_audio, _, plain_ids = attention_shares(None)
context_audio, context_keys, context_ids = attention_shares(CONTEXT)
first = next(i for i, (a, b) in enumerate(zip(plain_ids, context_ids, strict=False)) if a != b)
end = len(context_ids) - next(
    i for i, (a, b) in enumerate(zip(plain_ids[::-1], context_ids[::-1], strict=False)) if a != b
)
context_share = context_keys[:, first:end].sum(-1)
print(f"inserted tokens {first}-{end - 1}: {tokenizer.decode(context_ids[first:end])!r}")
print(
    f"audio share, mean over layers: {plain_audio.mean():.3f} without context, {context_audio.mean():.3f} with; "
    f"context share {context_share.mean():.3f}"
)
diff = context_audio - plain_audio
print(
    f"largest drop: layer {diff.argmin()} ({diff.min():+.3f}); largest rise: layer {diff.argmax()} ({diff.max():+.3f})"
)
print(
    f"uniform attention would give audio {n_audio / len(plain_ids):.3f} (without) and "
    f"{n_audio / len(context_ids):.3f} (with context)"
)

layers = np.arange(len(plain_audio))
fig, ax = plt.subplots(figsize=(10, 3.5), layout="constrained")
ax.bar(layers - 0.2, plain_audio, width=0.4, label="audio, no context")
ax.bar(layers + 0.2, context_audio, width=0.4, label=f"audio, context {CONTEXT!r}")
ax.plot(layers + 0.2, context_share, "k.-", label="context tokens")
ax.set(xlabel="decoder layer", ylabel="mean attention mass", title="Where the transcript tokens look")
ax.legend()
plt.show()

# %% [markdown]
# **Answer.** Read the numbers printed above; the pattern to look for is this. The context adds a few
# text tokens, between the audio and the answer, that contain the words of the transcript. Attention is
# a softmax over all earlier positions, so whatever mass the transcript tokens put on the context is
# taken from elsewhere: from the attention sink, the prompt text and the audio. Layers whose heads
# copy from earlier text (matching a token to an earlier occurrence) put visible mass on the context,
# and in those layers the audio share tends to fall. Layers that read the audio keep their share. This
# is how a context biases recognition: the model can copy a spelling from the prompt instead of decoding
# it from sound. It is also why a wrong context can override the audio (Class 7). With the untrained
# projector the audio vectors carry no content, and the comparison only shows how attention is divided
# among positions.
