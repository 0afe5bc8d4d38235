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
# # Class 4 — The LLM decoder
#
# The decoder is SmolLM2-135M-Instruct, frozen: 30 Llama blocks, 576 wide, 9 query heads sharing
# 3 key/value heads, a 49 152-token vocabulary. It never learned to hear; it reads the projected audio
# as if it were 10 "words" per second in its prompt. In this notebook we look at it as a language
# model first, then at the prompt with the audio prefix, at its attention, at the KV cache that makes
# generation cheap, and at greedy vs beam search. The alternatives (shallow fusion, CTC) are in the
# appendix, `notebooks/appendix_fusion_ctc.py`.
#
# Two objects share the work, as in transformers' audio LLMs (Qwen2-Audio, Voxtral): the **processor**
# (`model.processor`: Whisper's feature extractor, the LLM's tokenizer, the prompt builder) turns
# audio and text into tensors and generated ids back into text; the **model** takes tensors and
# returns tensors (a loss, logits, or token ids).

# %%
# %matplotlib inline
import time

import matplotlib.pyplot as plt
import torch

from asr.inference import default_model, load_model
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
features = processor.features([clip])  # {input_features (1, 80, T), mel_lengths (1,)}
print(f"clip: {len(clip) / 16000:.2f} s, reference {reference!r}")

# %% [markdown]
# ## 1. The model in numbers

# %%
c = decoder.config
head_dim = c.hidden_size // c.num_attention_heads
per_layer = sum(p.numel() for p in decoder.model.layers[0].parameters())
print(
    f"hidden {c.hidden_size}, layers {c.num_hidden_layers}, query heads {c.num_attention_heads}, "
    f"KV heads {c.num_key_value_heads} (head dim {head_dim}), MLP {c.intermediate_size} (SwiGLU), "
    f"vocab {c.vocab_size}, RoPE theta {c.rope_parameters['rope_theta']:.0f}, tied embeddings {c.tie_word_embeddings}"
)
print(f"token embeddings {decoder.get_input_embeddings().weight.numel():,d} (shared with the output layer)")
print(f"one block {per_layer:,d} x {c.num_hidden_layers} = {per_layer * c.num_hidden_layers:,d}")
print(f"total {sum(p.numel() for p in decoder.parameters()):,d}")
print(
    "\ntokens of a sentence:",
    tokenizer.convert_ids_to_tokens(tokenizer("Kate recognises speech in Seattle.").input_ids),
)

# %% [markdown]
# ## 2. A language model is a prior over text
#
# Before any audio, the LLM already knows which word sequences are likely. That is what makes LLM
# decoders good at spelling, punctuation and rare-but-plausible phrases, and also what makes them
# *hallucinate* fluent text when the audio evidence is weak. Score two acoustically similar sentences:


# %%
@torch.no_grad()
def log_prob(text: str) -> float:
    """Total log-probability of ``text`` under the LLM (natural log, after the first token)."""
    ids = tokenizer(text, return_tensors="pt").input_ids
    logits = decoder(ids).logits[0, :-1]
    return float(torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None]).sum())


for text in [
    "It is easy to recognize speech.",
    "It is easy to wreck a nice beach.",
    "Kate loves China.",
    "Kate loves china.",
    "Gate loafs Shine a.",
]:
    print(f"{log_prob(text):8.2f}  {text}")

with torch.no_grad():
    ids = tokenizer("The cat sat on the", return_tensors="pt").input_ids
    probs = torch.softmax(decoder(ids).logits[0, -1], -1)
top = probs.topk(5)
print(
    "\nnext token after 'The cat sat on the':",
    ", ".join(
        f"{tokenizer.decode([int(i)])!r} {p:.2f}" for p, i in zip(top.values, top.indices, strict=True)
    ),
)

# %% [markdown]
# ## 3. The prompt with its audio prefix
#
# The processor's `PromptBuilder` (`processor.prompt_builder`) writes the chat template around the
# audio slots; the model replaces the slots' embeddings with the projector's output
# (`ASRModel.merge`) and the LLM continues after `<|im_start|>assistant`. A *context* (hot words, the
# previous sentence) goes into the user turn. The processor knows how many slots to reserve before
# the model runs: `ceil(encoder frames / k)` (`processor.audio_positions`).

# %%
frames, lengths = model.encode(features["input_features"], features["mel_lengths"])
audio, positions = model.project(frames, lengths)
n_audio = int(positions[0])
assert processor.audio_positions(lengths) == [n_audio]  # the processor's count = the projector's
for context in (None, "Kate, China, Seattle"):
    prompt = processor.prompt_builder.build(n_audio, context=context)
    text_tokens = len(prompt.input_ids) - n_audio
    print(f"context={context!r}: {len(prompt.input_ids)} positions = {n_audio} audio + {text_tokens} text")
first_audio = prompt.audio_mask.index(True)
for i, (tid, is_audio) in enumerate(zip(prompt.input_ids, prompt.audio_mask, strict=True)):
    if i == first_audio:
        print(f"{i:3d}-{i + n_audio - 1:3d}  [{n_audio} audio vectors, 100 ms each]")
    elif not is_audio:
        print(f"{i:7d}  {tokenizer.decode([tid])!r}")

# %% [markdown]
# ## 4. Attention over the prompt, layer by layer
#
# Self-attention is causal: position *t* sees positions ≤ *t*. We teacher-force the prompt plus a
# transcript and measure, per layer, how much of the transcript tokens' attention lands on the audio
# positions (the rest goes to the text of the prompt and to previous transcript tokens).

# %%
example = processor.prompt_builder.build(n_audio, transcript=reference.lower())
ids = torch.tensor([example.input_ids])
mask = torch.tensor([example.audio_mask])
with torch.no_grad():
    attentions = decoder_attentions(model, ids, mask, frames, lengths)  # 30 x (1, 9, T, T)
targets = torch.tensor([i for i, label in enumerate(example.labels) if label != -100]) - 1
share = torch.stack([a[0].mean(0)[targets][:, mask[0]].sum(-1).mean() for a in attentions]).numpy()
print(f"sequence {ids.shape[1]} positions; {len(targets)} transcript tokens")
print(
    f"audio share by layer: min {share.min():.3f} (layer {share.argmin()}), max {share.max():.3f} (layer {share.argmax()})"
)

fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
left.bar(range(len(share)), share)
left.axhline(n_audio / ids.shape[1], color="k", linestyle="--", label="uniform over all positions")
left.set(
    xlabel="decoder layer", ylabel="mean attention mass on audio", title="Where the transcript tokens look"
)
left.legend()
image = right.imshow(attentions[15][0].mean(0).sqrt().numpy(), cmap="viridis")
fig.colorbar(image, ax=right, label="sqrt(attention weight)")
right.set(
    xlabel="key position", ylabel="query position", title="Layer 15, mean over heads (causal: lower triangle)"
)
save_figure(fig, "04_attention_to_audio")
plt.show()

# %% [markdown]
# The bright first column is an **attention sink**: many heads park most of their weight on the first
# token (`<|im_start|>`) when nothing else is relevant. What matters for recognition is the share that
# does reach the audio, and in which layers; compare this picture for the untrained and a trained
# projector.

# %% [markdown]
# ## 5. Generation is a loop; the KV cache removes the recomputation
#
# Greedy decoding: feed the prompt, take the most likely token, append it, repeat until
# `<|im_end|>`. Each new token needs the keys and values of every earlier position in every layer.
# Without a cache every step re-runs the whole sequence: O(T²) position-passes through the weights
# and O(T³) attention over T tokens. With the cache each step runs one new position through the
# weights, but its attention still reads all t earlier positions, so the total stays O(T²): the
# cache does not make decoding linear, it removes a factor of T.
# Per cached position: 2 (K and V) × 30 layers × 3 KV heads × 64 × 4 bytes (float32) = 46 080 bytes.
# Grouped-query attention (3 KV heads for 9 query heads) divides this by 3.


# %%
@torch.no_grad()
def greedy(n_tokens: int, use_cache: bool) -> tuple[list[int], object]:
    """Our own greedy loop on the audio prompt (no repetition penalty)."""
    batch = processor.prompts([n_audio], padding_side="left")  # input_ids, audio_mask, ...
    embeds = model.merge(batch["input_ids"], batch["audio_mask"], audio, positions)
    out = decoder(inputs_embeds=embeds, use_cache=use_cache)
    tokens, cache = [], out.past_key_values
    for _ in range(n_tokens):
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(int(token))
        if int(token) == tokenizer.eos_token_id:
            break
        step = decoder.get_input_embeddings()(token)
        if use_cache:
            out = decoder(inputs_embeds=step, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
        else:
            embeds = torch.cat([embeds, step], dim=1)
            out = decoder(inputs_embeds=embeds, use_cache=False)
    return tokens, cache


N = 24
timings = {}
for use_cache in (True, False):
    start = time.perf_counter()
    tokens, cache = greedy(N, use_cache)
    timings[use_cache] = time.perf_counter() - start
    if use_cache:
        cached = tokens, cache
tokens, cache = cached
layer0 = cache.layers[0]
print(f"{len(tokens)} tokens: with cache {timings[True]:.2f} s, without {timings[False]:.2f} s")
print(
    f"cache: {len(cache.layers)} layers of keys {tuple(layer0.keys.shape)} (batch, KV heads, positions, head dim)"
)
per_position = (
    2 * len(cache.layers) * layer0.keys.shape[1] * layer0.keys.shape[3] * layer0.keys.element_size()
)
print(
    f"{per_position:,d} bytes per position; {cache.get_seq_length()} positions = {per_position * cache.get_seq_length() / 2**20:.2f} MiB"
)

# the library path, in three steps: processor -> tensors, model -> token ids, processor -> text
inputs = processor(audio=[clip])  # features + left-padded prompt: everything generate needs
print("\nprocessor(audio=[clip]):", {k: tuple(v.shape) for k, v in inputs.items()})
# greedy with no penalty and no n-gram blocking, like our loop (the checkpoint decodes otherwise: section 6)
ids = model.generate(**inputs, max_new_tokens=N, num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0)
print(f"model.generate: token ids {tuple(ids.shape)}")
ours = processor.decode(tokens)
library = processor.batch_decode(ids)[0]
print(f"our loop : {ours!r}\ngenerate : {library!r}\nidentical: {ours == library}")

# %% [markdown]
# ## 6. Greedy vs beam search
#
# Greedy keeps one hypothesis; beam search keeps the *B* best partial transcripts by total
# log-probability and extends each. It finds higher-probability outputs at *B* times the compute.
# For ASR with a strong acoustic signal the gain is usually small; with an LLM decoder it also
# favours shorter outputs (length normalisation matters).
#
# Decoding options are not part of the architecture: they live in `model.decoding` (an
# `asr.generation.DecodingConfig`, saved beside a checkpoint as `generation_config.json`), and any of
# them can be overridden for one call (`num_beams=4`, `repetition_penalty=1.1`, ...). Without
# `max_new_tokens`, each clip's cap is `max_new_tokens_base + ceil(max_new_tokens_per_second x
# seconds)`. The weights, the processor and its tensors stay the same: only the search changes.

# %%
print(model.decoding)
print(f"cap for this clip: {model.max_new_tokens_for(inputs['mel_lengths'])} new tokens")
for beams in (1, 4):
    start = time.perf_counter()
    ids = model.generate(**inputs, num_beams=beams, max_new_tokens=N)  # same tensors, another search
    text = processor.batch_decode(ids)[0]
    print(f"num_beams={beams}: {time.perf_counter() - start:5.2f} s  {text!r}")
print(f"reference          {reference!r}")

# %% [markdown]
# ## Exercises (about 40 minutes)
#
# Solutions: `notebooks/solutions/04_llm_decoder.py` (try first).
#
# 1. Extend `greedy` with CTRL's repetition penalty θ = 1.1: before each argmax, for every token id
#    already among the *generated* tokens (once, however often it occurred; the prompt is not
#    penalised), divide its logit by θ if it is positive and multiply it by θ if it is negative.
#    Check it token for token against
#    `model.generate(**inputs, max_new_tokens=N, num_beams=1, no_repeat_ngram_size=0,
#    repetition_penalty=1.1)`. Pass the options explicitly: without them `generate` decodes as
#    `model.decoding` says, the checkpoint's `generation_config.json` (the shipped model: beam
#    search, 4 beams, n-gram blocking, no penalty; `DecodingConfig`'s default penalty is 1.2).
# 2. Time `greedy(N, use_cache)` for N = 8, 16, 32, 64 with and without cache (generate exactly N
#    tokens: do not stop at `<|im_end|>`) and plot the curves. With a cache, each step processes one
#    new position but attends to all earlier ones; without, it reruns the whole sequence. What does
#    generating T tokens cost in each case, and why do the measured curves look linear and quadratic?
# 3. How large is the KV cache for a 30 s clip (300 audio positions + 34 prompt tokens + 200 generated)
#    in float32 and in bfloat16? For SmolLM3-3B (36 layers, 4 KV heads of 128)?
# 4. Put a context (`processor(audio=[clip], context="Kate, China")`, or
#    `processor.prompt_builder.build(n_audio, transcript=..., context=...)` for section 4) and compare
#    the attention audio share by layer with and without it.
#
# Fusion (shallow and deep) and CTC, including the CTC head of the shipped model, are in the appendix:
# `notebooks/appendix_fusion_ctc.py`.
