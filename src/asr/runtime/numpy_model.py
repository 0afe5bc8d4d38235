"""The whole inference path of a model in NumPy: log-mel -> Whisper encoder -> projector -> LLM with
a key/value cache -> greedy or beam search; for a two-pass model also the teacher-forced scores of its
rescoring (the LLM's and Whisper's decoder's log-probability of a given answer).

Each function is the arithmetic of one part, written out as in openai/whisper's ``model.py``: the
training code's modules (``asr.encoder``, ``asr.projector``, transformers' Llama) are the
reference, and tests/test_runtime.py checks every part against them on real weights. Nothing here
imports torch or transformers, so a process that only transcribes starts in about a second and
holds the float32 weights and little else (see :mod:`asr.runtime`).

Weights are plain arrays keyed by the names :mod:`asr.runtime.export` writes (``encoder.*``,
``projector.*``, ``llm.*``, ``whisper_decoder.*``); linear layers are stored as (in, out) so every product is ``x @ w``, and the LLM's q/k/v and
gate/up projections side by side (one product each: fewer, wider matrix products decode faster).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asr.ctc_guide import CTCPrefixScorer, best, guided_scores, log_softmax
from asr.lengths import WHISPER_WINDOW_FRAMES

Weights = dict[str, np.ndarray]

# Abramowitz & Stegun 7.1.26: |erf error| < 1.5e-7, below float32's resolution of GELU's output
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf(x: np.ndarray) -> np.ndarray:
    """In place on temporaries (a fresh array per step costs three times as long: GELU is a third
    of the Whisper encoder's time over a 30 s window otherwise)."""
    t = np.abs(x)
    t *= _ERF_P
    t += 1.0
    np.reciprocal(t, out=t)
    poly = t * _ERF_A[4]
    for a in _ERF_A[3::-1]:  # Horner: ((a4 t + a3) t + a2) t ... + a0) t
        poly += a
        poly *= t
    decay = np.square(x)
    np.negative(decay, out=decay)
    np.exp(decay, out=decay)
    poly *= decay
    np.subtract(1.0, poly, out=poly)
    return np.copysign(poly, x, out=poly)


def gelu(x: np.ndarray) -> np.ndarray:
    """The exact (erf) GELU of Whisper and the projector."""
    y = erf(x * np.float32(1 / np.sqrt(2)))
    y += 1.0
    y *= x
    y *= 0.5
    return y


def silu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up, in place in ``gate`` (the MLP's widest activations: one buffer)."""
    denominator = np.exp(-gate)
    denominator += 1.0
    gate /= denominator
    gate *= up
    return gate


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in place (``x`` is a scratch array of scores)."""
    x -= x.max(-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(-1, keepdims=True)
    return x


def log_softmax32(x: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis, in place and in float32, as transformers' beam search
    (``x``: a scratch array of logits; :func:`asr.ctc_guide.log_softmax`'s float64 copies of
    a batch of beams' 49k-token rows would be most of beam search's memory)."""
    x -= x.max(-1, keepdims=True)
    x -= np.log(np.exp(x).sum(-1, keepdims=True))
    return x


# --------------------------------------------------------------------------- audio


def log_mel(audio: np.ndarray, mel_filters: np.ndarray, n_fft: int = 400, hop: int = 160) -> np.ndarray:
    """Whisper's log-mel spectrogram of one clip (as ``WhisperFeatureExtractor``): centred frames
    (reflect padding), periodic Hann window, power spectrum, mel (``mel_filters``: (n_fft // 2 + 1,
    n_mels)), log10, floor at max - 8, then (x + 4) / 4. Returns (n_mels, len(audio) // hop)."""
    padded = np.pad(audio.astype(np.float32), n_fft // 2, mode="reflect")
    n_frames = 1 + (len(padded) - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:n_frames]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    mel = np.log10(np.maximum(power @ mel_filters, 1e-10)).T[:, :-1]
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)


def features(audio: np.ndarray, mel_filters: np.ndarray, n_fft: int = 400, hop: int = 160) -> np.ndarray:
    """A clip's log-mel frames as the processor gives them: one ``n_fft`` of zeros after the clip
    (so its last frames are those of Whisper's zero-padded window), at most 3000 frames."""
    tail = np.zeros(n_fft, dtype=np.float32)
    mel = log_mel(np.concatenate([audio.astype(np.float32), tail]), mel_filters, n_fft, hop)
    return mel[:, :WHISPER_WINDOW_FRAMES]


def conv1d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int = 1) -> np.ndarray:
    """(C_in, T) -> (C_out, T_out), kernel ``weight``: (C_out, C_in, K), zero padding K // 2."""
    c_out, c_in, k = weight.shape
    x = np.pad(x, ((0, 0), (k // 2, k // 2)))
    t_out = (x.shape[1] - k) // stride + 1
    cols = np.stack([x[:, j : j + stride * (t_out - 1) + 1 : stride] for j in range(k)], axis=1)
    return weight.reshape(c_out, c_in * k) @ cols.reshape(c_in * k, t_out) + bias[:, None]


def _heads(x: np.ndarray, heads: int) -> np.ndarray:
    """(T, width) -> (heads, T, width // heads)."""
    return x.reshape(len(x), heads, -1).transpose(1, 0, 2)


def _merge_heads(x: np.ndarray) -> np.ndarray:
    """(heads, T, head_dim) -> (T, heads * head_dim)."""
    return x.transpose(1, 0, 2).reshape(x.shape[1], -1)


def _self_attention_block(
    x: np.ndarray, w: Weights, p: str, heads: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """A Whisper layer's pre-norm self-attention with its residual (encoder: no mask; decoder:
    causal); ``p``: the layer's weight prefix."""
    h = layer_norm(x, w[p + "self_attn_layer_norm.weight"], w[p + "self_attn_layer_norm.bias"])
    scale = np.float32((x.shape[1] // heads) ** -0.5)
    q = _heads((h @ w[p + "q.weight"] + w[p + "q.bias"]) * scale, heads)
    k = _heads(h @ w[p + "k.weight"], heads)
    v = _heads(h @ w[p + "v.weight"] + w[p + "v.bias"], heads)
    scores = q @ k.transpose(0, 2, 1)
    if mask is not None:
        scores += mask
    return x + _merge_heads(softmax(scores) @ v) @ w[p + "out.weight"] + w[p + "out.bias"]


def _mlp_block(x: np.ndarray, w: Weights, p: str) -> np.ndarray:
    """A Whisper layer's pre-norm GELU MLP with its residual."""
    h = layer_norm(x, w[p + "final_layer_norm.weight"], w[p + "final_layer_norm.bias"])
    return x + gelu(h @ w[p + "fc1.weight"] + w[p + "fc1.bias"]) @ w[p + "fc2.weight"] + w[p + "fc2.bias"]


@dataclass(frozen=True)
class EncoderDims:
    layers: int
    heads: int


def whisper_encoder(mel: np.ndarray, n_mel: int, w: Weights, dims: EncoderDims) -> np.ndarray:
    """The variable-length Whisper encoder of :class:`asr.encoder.AudioEncoder` on one clip's
    ``n_mel`` mel frames: (frames, width), frames = ceil(n_mel / 2)."""
    t = (n_mel + 1) // 2
    x = mel[:, : min(2 * t + 1, mel.shape[1])]
    x = gelu(conv1d(x, w["encoder.conv1.weight"], w["encoder.conv1.bias"]))
    x = gelu(conv1d(x, w["encoder.conv2.weight"], w["encoder.conv2.bias"], stride=2)).T[:t]
    x = x + w["encoder.embed_positions"][:t]
    for i in range(dims.layers):
        p = f"encoder.layers.{i}."
        x = _mlp_block(_self_attention_block(x, w, p, dims.heads), w, p)
    return layer_norm(x, w["encoder.layer_norm.weight"], w["encoder.layer_norm.bias"])


def project(frames: np.ndarray, w: Weights, kind: str, stack: int) -> np.ndarray:
    """Encoder frames (T, width) -> LLM vectors (ceil(T / stack), llm_width): the ``stack_mlp`` and
    ``stack_linear`` projectors of :mod:`asr.projector` (zero-padded to a multiple of ``stack``)."""
    t, d = frames.shape
    pad = (-t) % stack
    x = np.concatenate([frames, np.zeros((pad, d), np.float32)]).reshape(-1, stack * d)
    if kind == "stack_mlp":
        x = gelu(x @ w["projector.linear_1.weight"] + w["projector.linear_1.bias"])
        x = x @ w["projector.linear_2.weight"] + w["projector.linear_2.bias"]
    elif kind == "stack_linear":
        x = x @ w["projector.linear.weight"] + w["projector.linear.bias"]
    else:
        raise ValueError(f"projector_type={kind!r}: the NumPy runtime runs stack_mlp and stack_linear")
    return layer_norm(x, w["projector.norm.weight"], w["projector.norm.bias"])


def whisper_decoder_logprobs(
    encoded: np.ndarray, sequences: list[list[int]], start: int, w: Weights, dims: EncoderDims
) -> list[float]:
    """Whisper's decoder teacher-forced on each of ``sequences`` (its start tokens, then a text's
    tokens and the end of text) over one clip's encoder output (1500, width) of its 30 s window:
    the summed log-probability of each sequence's tokens after its first ``start``, as
    :class:`asr.first_pass.WhisperScorer` (``dims``: the decoder's layers and heads)."""
    width = encoded.shape[1]
    scale = np.float32((width // dims.heads) ** -0.5)
    embed = w["whisper_decoder.embed_tokens"]
    cross = []  # the encoder output's keys and values, once per layer
    for i in range(dims.layers):
        p = f"whisper_decoder.layers.{i}.cross_"
        k = encoded @ w[p + "k.weight"]
        v = encoded @ w[p + "v.weight"] + w[p + "v.bias"]
        cross.append((_heads(k, dims.heads), _heads(v, dims.heads)))
    scores = []
    for ids in sequences:
        n = len(ids) - 1  # inputs ids[:-1] predict ids[1:]
        x = embed[ids[:-1]] + w["whisper_decoder.embed_positions"][:n]
        causal = _mask(np.tri(n, dtype=bool))
        for i, (ck, cv) in enumerate(cross):
            p = f"whisper_decoder.layers.{i}."
            x = _self_attention_block(x, w, p, dims.heads, causal)
            h = layer_norm(x, w[p + "cross_layer_norm.weight"], w[p + "cross_layer_norm.bias"])
            q = _heads((h @ w[p + "cross_q.weight"] + w[p + "cross_q.bias"]) * scale, dims.heads)
            attn = _merge_heads(softmax(q @ ck.transpose(0, 2, 1)) @ cv)
            x = _mlp_block(x + attn @ w[p + "cross_out.weight"] + w[p + "cross_out.bias"], w, p)
        x = layer_norm(x, w["whisper_decoder.layer_norm.weight"], w["whisper_decoder.layer_norm.bias"])
        logprobs = log_softmax(x[start - 1 :] @ embed.T)
        scores.append(float(logprobs[np.arange(len(logprobs)), ids[start:]].sum()))
    return scores


# --------------------------------------------------------------------------- the LLM


@dataclass(frozen=True)
class LlamaDims:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float


class KVCache:
    """Keys and values of every row, written at each row's own positions (a row's prompt fills
    ``[0, length)``, its answer follows), so rows of different lengths need no padding inside the
    LLM: attention masks the slots a row has not written. One array per layer (batch, KV heads,
    slots, head dim), so growing or reordering the cache copies one layer at a time, never the
    whole cache twice."""

    def __init__(self, dims: LlamaDims, batch: int, capacity: int) -> None:
        shape = (batch, dims.kv_heads, capacity, dims.head_dim)
        self.k = [np.zeros(shape, np.float32) for _ in range(dims.layers)]
        self.v = [np.zeros(shape, np.float32) for _ in range(dims.layers)]
        self.length = np.zeros(batch, np.int64)  # slots written, per row

    def reserve(self, capacity: int) -> None:
        """Room for ``capacity`` positions per row: grown by doubling, so a batch holds memory for
        the answers it writes, not for every row's cap (most transcripts end far before it)."""
        have = self.k[0].shape[2]
        if capacity > have:
            grow = [(0, 0)] * 2 + [(0, max(capacity, 2 * have) - have), (0, 0)]
            for store in (self.k, self.v):
                store[:] = [np.pad(store.pop(0), grow) for _ in range(len(store))]

    def keep(self, rows: np.ndarray) -> None:
        """Keep only ``rows`` (ascending), moved to the front in place."""
        for store in (self.k, self.v):
            for i, layer in enumerate(store):
                layer[: len(rows)] = layer[rows]
                store[i] = layer[: len(rows)]
        self.length = self.length[rows]

    def take(self, rows: np.ndarray) -> None:
        """Rows ``rows`` (any order; a row may repeat), copied."""
        for store in (self.k, self.v):
            store[:] = [store.pop(0)[rows] for _ in range(len(store))]
        self.length = self.length[rows]


def rope_tables(positions: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the rotary angles at ``positions`` (N,): (N, head_dim // 2) each."""
    inv = 1.0 / theta ** (np.arange(head_dim // 2, dtype=np.float32) * 2 / head_dim)
    angles = positions[:, None].astype(np.float32) * inv
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotary embeddings as transformers' Llama (``rotate_half``): x (H, N, D)."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def _attend(q: np.ndarray, keys: np.ndarray, values: np.ndarray, bias: np.ndarray, group: int) -> np.ndarray:
    """Grouped-query attention of one row: q (H, T, D), keys/values (KV, S, D), ``bias`` (T, S):
    0 where a query may look, -inf elsewhere; query head h reads key/value head h // group.
    Returns (T, H * D)."""
    h, t, d = q.shape
    kv = keys.shape[0]
    scores = q.reshape(kv, group * t, d) @ keys.transpose(0, 2, 1)
    scores *= np.float32(d**-0.5)
    scores = scores.reshape(kv, group, t, -1)
    scores += bias
    out = softmax(scores).reshape(kv, group * t, -1) @ values
    return out.reshape(h, t, d).transpose(1, 0, 2).reshape(t, h * d)


def _attend_step(
    q: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    bias: np.ndarray,
    group: int,
    prefix: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """One decoding step's grouped-query attention, every row at once: q (H, B, D), each row's
    keys/values (B, KV, S, D), ``bias`` (B, 1, 1, [P +] S). ``prefix``: keys/values (C, KV, P, D)
    that each of C equal consecutive groups of rows reads before its own, in one product per
    group (beam search's beams of one clip and their prompt). Returns (B, H * D)."""
    h, n, d = q.shape
    qb = q.transpose(1, 0, 2).reshape(n, keys.shape[1], group, d)
    scores = qb @ keys.transpose(0, 1, 3, 2)
    if prefix is not None:
        clips, beams, p = len(prefix[0]), n // len(prefix[0]), prefix[0].shape[2]
        shared = _per_clip(qb, clips) @ prefix[0].transpose(0, 1, 3, 2)
        scores = np.concatenate([_per_row(shared, beams), scores], -1)
    scores *= np.float32(d**-0.5)
    scores += bias
    probs = softmax(scores)
    if prefix is None:
        return (probs @ values).reshape(n, h * d)
    out = probs[..., p:] @ values
    out += _per_row(_per_clip(probs[..., :p], clips) @ prefix[1], beams)
    return out.reshape(n, h * d)


def _mask(visible: np.ndarray) -> np.ndarray:
    """An additive attention mask: 0 where ``visible``, -inf elsewhere."""
    return np.where(visible, np.float32(0), np.float32(-np.inf))


def llama(
    x: np.ndarray,
    lengths: np.ndarray,
    cache: KVCache,
    w: Weights,
    dims: LlamaDims,
    prefix: KVCache | None = None,
) -> np.ndarray:
    """Run embeddings ``x`` (N, width) through the LLM after what ``cache`` holds: each cache row's
    next positions, packed end to end (``lengths[0]`` vectors of row 0, then row 1's), so no work
    is spent on padding. Writes their keys/values into the cache and returns the final-norm hidden
    states (N, width).

    ``prefix`` (one decoding step only): the cache's rows come in equal consecutive groups, one per
    ``prefix`` row, and each continues its group's prefix row: beam search's beams of one clip
    read their prompt's keys and values there, stored once, and keep only their answers in
    ``cache``."""
    n = len(x)
    rows = np.arange(len(lengths))
    start = cache.length.copy()
    row = np.repeat(rows, lengths)  # each packed vector's cache row ...
    offset = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    positions = np.repeat(start, lengths) + offset  # ... and position in it
    end = start + lengths
    decode = bool((lengths == 1).all())  # one new position per row: attend in one batched product
    if prefix is not None and not decode:
        raise ValueError("a shared prefix is read by decoding steps only (one position per row)")
    group = dims.heads // dims.kv_heads
    if decode:  # row r's query sees its slots [0, end[r])
        s = int(end.max())
        bias = _mask(np.arange(s)[None, :] < end[:, None])[:, None, None, :]
        if prefix is not None:  # ... after its prefix row's [0, prefix.length)
            beams = n // len(prefix.length)
            sp = int(prefix.length.max())
            seen = np.repeat(prefix.length, beams)
            prefix_bias = _mask(np.arange(sp)[None, :] < seen[:, None])[:, None, None, :]
            bias = np.concatenate(
                [np.broadcast_to(prefix_bias, (n, 1, 1, sp)), np.broadcast_to(bias, (n, 1, 1, s))], -1
            )
            positions = positions + seen  # rotary positions continue the prefix
    else:  # causal within each row, after what the cache held
        masks = [
            _mask(np.arange(e)[None, :] <= (b + np.arange(t))[:, None])
            for t, b, e in zip(lengths, start, end, strict=True)
        ]
    spans = np.cumsum(lengths) - lengths
    q_width, kv_width = dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim
    cos, sin = rope_tables(positions, dims.head_dim, dims.rope_theta)
    for i in range(dims.layers):
        p = f"llm.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], dims.rms_norm_eps)
        qkv = h @ w[p + "qkv_proj.weight"]  # q, k and v in one product
        q = qkv[:, :q_width].reshape(n, dims.heads, dims.head_dim).transpose(1, 0, 2)
        k = qkv[:, q_width : q_width + kv_width].reshape(n, dims.kv_heads, dims.head_dim).transpose(1, 0, 2)
        v = qkv[:, q_width + kv_width :].reshape(n, dims.kv_heads, dims.head_dim)
        q = rope(q, cos, sin)
        slots = positions if prefix is None else positions - seen
        cache.k[i][row, :, slots] = rope(k, cos, sin).transpose(1, 0, 2)
        cache.v[i][row, :, slots] = v
        if decode:  # q: (H, B, D), one position per row
            shared = None if prefix is None else (prefix.k[i][:, :, :sp], prefix.v[i][:, :, :sp])
            attn = _attend_step(q, cache.k[i][:, :, :s], cache.v[i][:, :, :s], bias, group, shared)
        else:
            attn = np.concatenate(
                [
                    _attend(q[:, a : a + t], cache.k[i][r, :, :e], cache.v[i][r, :, :e], mask, group)
                    for r, a, t, e, mask in zip(rows, spans, lengths, end, masks, strict=True)
                    if t  # a row may have nothing new (answer_logprobs: a one-token answer)
                ]
            )
        x = x + attn @ w[p + "o_proj.weight"]
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], dims.rms_norm_eps)
        gate, up = np.split(h @ w[p + "gate_up_proj.weight"], 2, axis=-1)
        x = x + silu_mul(gate, up) @ w[p + "down_proj.weight"]
    cache.length = end
    return rms_norm(x, w["llm.norm.weight"], dims.rms_norm_eps)


def _per_clip(x: np.ndarray, clips: int) -> np.ndarray:
    """(B, KV, G, X) rows in equal consecutive groups -> (clips, KV, group size * G, X)."""
    b, kv, g, d = x.shape
    return x.reshape(clips, b // clips, kv, g, d).transpose(0, 2, 1, 3, 4).reshape(clips, kv, -1, d)


def _per_row(x: np.ndarray, beams: int) -> np.ndarray:
    """The inverse of :func:`_per_clip`: (clips, KV, beams * G, X) -> (clips * beams, KV, G, X)."""
    c, kv, bg, d = x.shape
    return x.reshape(c, kv, beams, bg // beams, d).transpose(0, 2, 1, 3, 4).reshape(c * beams, kv, -1, d)


def _cache_after(head: tuple[KVCache, int] | None, dims: LlamaDims, batch: int, room: int) -> KVCache:
    """A cache of ``batch`` rows that each start with ``head``'s positions (none without one),
    with ``room`` more slots."""
    start = head[1] if head else 0
    cache = KVCache(dims, batch, start + room)
    if head:
        for store, from_head in ((cache.k, head[0].k), (cache.v, head[0].v)):
            for layer, layer_head in zip(store, from_head, strict=True):
                layer[:, :, :start] = layer_head[:1, :, :start]
        cache.length[:] = start
    return cache


def answer_logprobs(
    prompts: list[np.ndarray],
    answers: list[list[list[int]]],
    w: Weights,
    dims: LlamaDims,
    head: tuple[KVCache, int] | None = None,
) -> list[list[float]]:
    """Teacher forcing: the summed log-probability of each of ``answers[b]`` (token lists) after
    prompt ``b``'s embeddings (``head`` as in :func:`greedy`), as ``ASRModel.answer_logprobs``.
    Each prompt runs once; its keys and values are copied to its answers' rows."""
    embed = w["llm.embed_tokens.weight"]
    lm_head = w.get("llm.lm_head.weight", embed)
    lengths = np.array([len(p) for p in prompts])
    width = max(len(a) for candidates in answers for a in candidates)
    cache = _cache_after(head, dims, len(prompts), int(lengths.max()) + width)
    last = llama(np.concatenate(prompts), lengths, cache, w, dims)[np.cumsum(lengths) - 1]
    rows = np.repeat(np.arange(len(prompts)), [len(candidates) for candidates in answers])
    cache.take(rows)
    flat = [a for candidates in answers for a in candidates]
    steps = np.array([len(a) - 1 for a in flat])  # an answer's last token is predicted, not fed
    hidden = llama(embed[[t for a in flat for t in a[:-1]]], steps, cache, w, dims) if steps.any() else None
    scores = []
    for i, (row, answer, first) in enumerate(zip(rows, flat, np.cumsum(steps) - steps, strict=True)):
        states = np.concatenate(
            [last[row : row + 1], hidden[first : first + steps[i]] if steps[i] else last[:0]]
        )
        logprobs = log_softmax(states @ lm_head.T)
        scores.append(float(logprobs[np.arange(len(answer)), answer].sum()))
    it = iter(scores)
    return [[next(it) for _ in candidates] for candidates in answers]


def penalise(scores: np.ndarray, written: list[list[int]], penalty: float) -> np.ndarray:
    """CTRL's repetition penalty, in place: each row's scores (B, V) of the tokens it has written
    are divided by ``penalty`` where positive, multiplied where negative (as
    ``asr.modeling.GeneratedRepetitionPenalty``)."""
    if penalty != 1.0:
        for j, seen in enumerate(written):
            if seen:
                seen = np.unique(seen)
                picked = scores[j, seen]
                scores[j, seen] = np.where(picked < 0, picked * penalty, picked / penalty)
    return scores


def block_ngrams(scores: np.ndarray, written: list[list[int]], size: int) -> np.ndarray:
    """transformers' ``no_repeat_ngram_size``, in place: a row's next token may not complete an
    n-gram of ``size`` tokens that the row has already written (its score becomes -inf). It
    stops the loops a decoder falls into ("a picturesque slap on the back ... a picturesque slap
    on the back ..."), which neither the cap nor beam search prevents."""
    if size > 0:
        for j, seen in enumerate(written):
            if len(seen) + 1 < size:
                continue
            prefix = seen[len(seen) - size + 1 :]
            banned = [
                seen[i + size - 1] for i in range(len(seen) - size + 1) if seen[i : i + size - 1] == prefix
            ]
            scores[j, banned] = -np.inf
    return scores


def next_tokens(
    logits: np.ndarray,
    written: list[list[int]],
    eos: int,
    repetition_penalty: float = 1.0,
    guide: tuple[list[CTCPrefixScorer], float, int] | None = None,
    no_repeat_ngram_size: int = 0,
) -> np.ndarray:
    """One greedy step: each row's next token from its logits (B, V) after its ``written`` tokens;
    a guided row's scorer advances by its token."""
    block_ngrams(logits, written, no_repeat_ngram_size)
    penalise(logits, written, repetition_penalty)
    if guide is None:
        return logits.argmax(-1)
    scorers, weight, top_k = guide
    rows = log_softmax(logits)
    tokens = np.array(
        [best(guided_scores(row, s, weight, top_k, eos)) for row, s in zip(rows, scorers, strict=True)]
    )
    for token, scorer in zip(tokens.tolist(), scorers, strict=True):
        if token != eos:
            scorer.advance(token)
    return tokens


def _prefill(
    prompts: list[np.ndarray], w: Weights, dims: LlamaDims, head: tuple[KVCache, int] | None, room: int
) -> tuple[np.ndarray, np.ndarray, KVCache, np.ndarray]:
    """Run every row's prompt through the LLM (after the shared ``head``): the token embeddings,
    the LM head (tied, as SmolLM2's, or its own), the cache (``room`` slots more for the answers)
    and each row's last hidden state."""
    embed = w["llm.embed_tokens.weight"]
    lm_head = w.get("llm.lm_head.weight", embed)
    lengths = np.array([len(p) for p in prompts])
    cache = _cache_after(head, dims, len(prompts), int(lengths.max()) + room)
    hidden = llama(np.concatenate(prompts), lengths, cache, w, dims)[np.cumsum(lengths) - 1]
    return embed, lm_head, cache, hidden


def greedy(
    prompts: list[np.ndarray],
    caps: list[int],
    w: Weights,
    dims: LlamaDims,
    eos: int,
    repetition_penalty: float = 1.0,
    head: tuple[KVCache, int] | None = None,
    guide: tuple[list[CTCPrefixScorer], float, int] | None = None,
    no_repeat_ngram_size: int = 0,
) -> list[list[int]]:
    """Greedy decoding after each row's prompt embeddings (P_b, width), at most ``caps[b]`` tokens,
    ending at ``eos`` (kept). CTRL's repetition penalty applies to the tokens each row has
    generated (as ``asr.modeling.GeneratedRepetitionPenalty``). ``head``: a one-row cache of the
    positions every prompt starts with, and how many they are; the prompts then hold the rest.
    ``guide``: each row's CTC prefix scorer, the weight and top-k of CTC-guided decoding
    (:mod:`asr.ctc_guide`, after the penalty, as ``asr.modeling.CTCGuide``).
    ``no_repeat_ngram_size``: :func:`block_ngrams` before the penalty (transformers' order)."""
    n = len(prompts)
    embed, lm_head, cache, hidden = _prefill(prompts, w, dims, head, room=16)
    out: list[list[int]] = [[] for _ in range(n)]
    live = np.arange(n)  # rows still decoding
    while True:
        live_guide = None if guide is None else ([guide[0][r] for r in live], *guide[1:])
        written = [out[r] for r in live]
        tokens = next_tokens(
            hidden @ lm_head.T, written, eos, repetition_penalty, live_guide, no_repeat_ngram_size
        )
        keep = []
        for j, r in enumerate(live):
            out[r].append(int(tokens[j]))
            if tokens[j] != eos and len(out[r]) < caps[r]:
                keep.append(j)
        if not keep:
            return out
        if len(keep) < len(live):  # finished rows leave the batch (and the cache)
            live, tokens = live[keep], tokens[keep]
            cache.keep(np.array(keep))
        cache.reserve(int(cache.length.max()) + 1)
        hidden = llama(embed[tokens], np.ones(len(live), np.int64), cache, w, dims)


@dataclass
class _Beams:
    """One clip's beam search: its running hypotheses (token lists and summed log-probabilities,
    best first) and the finished ones (length-normalised score, tokens; best first)."""

    cap: int
    running: list[list[int]]
    scores: np.ndarray
    finished: list[tuple[float, list[int]]]

    def step(self, logprobs: np.ndarray, eos: int, width: int, length_penalty: float) -> np.ndarray | None:
        """Extend by one token from the running rows' log-probabilities (R, V). Returns which
        running row each new running hypothesis continues (``width`` of them), or ``None`` once
        nothing can beat the finished ones: transformers' rule with ``early_stopping=False``."""
        vocab = logprobs.shape[1]
        total = (logprobs + self.scores[:, None]).ravel()
        keep = 2 * width  # enough that ``width`` continue even if every beam's best is the end
        top = np.argpartition(-total, keep)[:keep]
        top = top[np.argsort(-total[top], kind="stable")]
        rows, tokens = np.divmod(top, vocab)
        length = len(self.running[0]) + 1
        ends = (tokens == eos) | (length >= self.cap)
        for j in np.flatnonzero(ends[:width]):  # only the best ``width`` candidates may finish
            tokens_j = self.running[rows[j]] + [int(tokens[j])]
            self.finished.append((float(total[top[j]]) / length**length_penalty, tokens_j))
        self.finished = sorted(self.finished, key=lambda f: -f[0])[:width]
        go = np.flatnonzero(~ends)[:width]
        if len(go) < width:  # at the cap
            return None
        self.running = [self.running[rows[j]] + [int(tokens[j])] for j in go]
        self.scores = total[top[go]]
        best_possible = self.scores[0] / length**length_penalty
        if len(self.finished) == width and best_possible <= self.finished[-1][0]:
            return None
        return rows[go]


def beam_search(
    prompts: list[np.ndarray],
    caps: list[int],
    w: Weights,
    dims: LlamaDims,
    eos: int,
    num_beams: int,
    length_penalty: float = 1.0,
    repetition_penalty: float = 1.0,
    head: tuple[KVCache, int] | None = None,
    no_repeat_ngram_size: int = 0,
) -> list[list[int]]:
    """Beam search of ``num_beams`` per row after its prompt embeddings, as transformers'
    ``generate(num_beams=...)`` (defaults: ``early_stopping=False``): each step keeps the best
    ``2 * num_beams`` continuations of a clip's beams; those among the first ``num_beams`` that end
    (``eos``, kept, or the clip's cap ``caps[b]``) join its finished hypotheses, scored by their
    summed log-probability over ``length ** length_penalty``; the best unfinished continue. A clip
    stops once its best running score cannot beat its worst of ``num_beams`` finished ones, and
    leaves the batch; its answer is its best finished hypothesis. The penalty applies to
    log-probabilities (transformers' order in beam search); ``head`` and ``no_repeat_ngram_size``
    as in :func:`greedy`.

    A clip's beams read its prompt's keys and values from one row of the prompt cache (``llama``'s
    ``prefix``) and keep only their answers' in their own rows; each step reorders the answer rows
    of the clips whose hypotheses changed parent."""
    n, width = len(prompts), num_beams
    embed, lm_head, prompt, hidden = _prefill(prompts, w, dims, head, room=0)  # answers: own rows
    cache: KVCache | None = None  # the beams' answers, from the first step on
    beams = [_Beams(cap, [[]], np.zeros(1, np.float32), []) for cap in caps]
    live = list(range(n))  # clips still searching, in cache order
    while True:
        logprobs = log_softmax32(hidden @ lm_head.T)
        written = [t for b in live for t in beams[b].running]
        block_ngrams(logprobs, written, no_repeat_ngram_size)
        penalise(logprobs, written, repetition_penalty)
        r = 1 if cache is None else width  # each clip's rows: its one prompt row, then its beams
        parents = [
            beams[b].step(logprobs[j * r : (j + 1) * r], eos, width, length_penalty)
            for j, b in enumerate(live)
        ]
        go = [j for j, p in enumerate(parents) if p is not None]
        if not go:
            return [beams[b].finished[0][1] for b in range(n)]
        if len(go) < len(live):  # finished clips leave the batch (and the caches)
            prompt.keep(np.array(go))
            if cache is not None:
                cache.keep(np.concatenate([j * width + np.arange(width) for j in go]))
        if cache is None:  # the first step: each clip's one row becomes its beams, no answer yet
            cache = KVCache(dims, len(go) * width, 16)
        else:
            _reorder(cache, [parents[j] for j in go])
        live = [live[j] for j in go]
        cache.reserve(int(cache.length.max()) + 1)
        tokens = [beams[b].running[i][-1] for b in live for i in range(width)]
        hidden = llama(embed[tokens], np.ones(len(tokens), np.int64), cache, w, dims, prefix=prompt)


def _reorder(cache: KVCache, parents: list[np.ndarray]) -> None:
    """Each clip's beam rows (``len(parents[j])`` consecutive rows per clip, in order) take the
    answer positions of their parent rows."""
    width = len(parents[0]) if parents else 0
    for j, parent in enumerate(parents):
        if (parent == np.arange(width)).all():
            continue
        block = slice(j * width, (j + 1) * width)
        end = int(cache.length[j * width])
        for layer in (*cache.k, *cache.v):
            layer[block, :, :end] = layer[block, :, :end][parent]
