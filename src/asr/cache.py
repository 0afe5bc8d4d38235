"""Where converted weights, feature stores, synthetic corpora and runtime exports are kept."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of converted weights, feature caches, synthetic corpora and NumPy runtime exports
    (``$ASR_CACHE``, default ``~/.cache/asr``)."""
    root = os.environ.get("ASR_CACHE") or Path.home() / ".cache" / "asr"
    return Path(root)
