"""Encoder outputs on disk, so training runs the frozen encoder once per clip, not once per step.

Entries live under ``<root>/<encoder key>/<aa>/<audio key>.pt``. The encoder key hashes the
encoder's source, mode, config and weights; the audio key hashes the 16 kHz samples. Changing the
encoder (or how it runs) or the audio therefore misses the cache instead of reusing stale frames.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from asr.modeling import ASRModel

# Bump when the code that turns audio into encoder frames changes (features, encoder paths):
# the weights alone do not identify the output.
CACHE_VERSION = 2


def encoder_key(model: ASRModel) -> str:
    """Identity of everything that determines the encoder output for given audio: the code
    version, the encoder's source, mode, config and weights."""
    h = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    cfg = model.config
    h.update(
        json.dumps(
            [cfg.encoder_source, cfg.encoder_mode, cfg.encoder_config], sort_keys=True, default=str
        ).encode()
    )
    for name, tensor in sorted(model.encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:20]


def audio_key(audio: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()[:32]


class EncoderCache:
    """Get/put encoder frames (stored float16) for one encoder."""

    def __init__(self, root: str | Path, model: ASRModel) -> None:
        self.dir = Path(root) / encoder_key(model)
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.pt"

    def get(self, audio: np.ndarray) -> torch.Tensor | None:
        path = self._path(audio_key(audio))
        if path.is_file():
            self.hits += 1
            return torch.load(path, weights_only=True)
        self.misses += 1
        return None

    def put(self, audio: np.ndarray, frames: torch.Tensor) -> None:
        path = self._path(audio_key(audio))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        torch.save(frames.detach().to(torch.float16).cpu().clone(), tmp)
        Path(tmp).replace(path)
