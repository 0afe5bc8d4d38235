"""Shared fixtures: tiny random models (fast, offline), the real packaged model, shared data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, WhisperConfig

from asr import PACKAGED_SMOLLM2, ASRConfig, ASRModel

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_config(**overrides) -> ASRConfig:
    """A small random Whisper encoder and Llama decoder; the tokenizer is the real SmolLM2 one."""
    encoder = WhisperConfig(
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        num_mel_bins=80,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=128,
        vocab_size=128,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        decoder_start_token_id=1,
    )
    decoder = LlamaConfig(
        vocab_size=49152,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    args = {
        "encoder_source": "random",
        "decoder_source": "random",
        "tokenizer_source": PACKAGED_SMOLLM2,
        "encoder_config": encoder.to_dict(),
        "decoder_config": decoder.to_dict(),
        "projector_output_rms": 0.1,
        **overrides,
    }
    return ASRConfig(**args)


def tiny_model(seed: int = 0, **overrides) -> ASRModel:
    torch.manual_seed(seed)
    return ASRModel.from_sources(tiny_config(**overrides)).eval()


@pytest.fixture
def tiny() -> ASRModel:
    return tiny_model()


@pytest.fixture(scope="session")
def real_model() -> ASRModel:
    """The offline default: packaged Whisper tiny.en + SmolLM2-135M, untrained projector."""
    torch.manual_seed(0)
    return ASRModel.from_sources(ASRConfig()).eval()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"{SHARED_DATA} not present: real-speech tests need ../shared/data beside the repo")
    return SHARED_DATA


def manifest_rows(path: Path, n: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:n] if n else rows


@pytest.fixture(scope="session")
def dev_rows(shared_data: Path) -> list[dict]:
    """First speechocean762 dev rows with absolute audio paths."""
    rows = manifest_rows(shared_data / "speechocean762.dev.jsonl", 8)
    return [{**r, "audio": str(shared_data / r["audio"])} for r in rows]


def speechlike(noise: np.ndarray, rate: int = 16000) -> np.ndarray:
    """Noise whose loudness rises and falls three times a second, as syllables do: it passes the
    no-speech gate (asr.audio.has_speech), which steady noise does not."""
    t = np.arange(noise.shape[0]) / rate
    envelope = 0.1 + 0.9 * np.abs(np.sin(2 * np.pi * 1.5 * t))
    return (noise * (envelope if noise.ndim == 1 else envelope[:, None])).astype(np.float32)
