"""LLM-based speech recognition: frozen Whisper encoder -> trainable projector -> frozen LLM.

``import asr`` is cheap: the model classes (and torch, transformers) load on first use of
``asr.ASRModel`` and the other names below, which also registers them with transformers' Auto
classes and ``pipeline("asr-llm" | "automatic-speech-recognition", ...)``. The ``asr`` command's
NumPy runtime (:mod:`asr.runtime`) never loads them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asr.config import PACKAGED_SMOLLM2, PACKAGED_WHISPER, ASRConfig
    from asr.generation import DecodingConfig
    from asr.modeling import ASRModel
    from asr.processing import ASRProcessor, PromptConfig

_EXPORTS = {
    "ASRConfig": "asr.config",
    "ASRModel": "asr.modeling",
    "ASRProcessor": "asr.processing",
    "DecodingConfig": "asr.generation",
    "PACKAGED_SMOLLM2": "asr.config",
    "PACKAGED_WHISPER": "asr.config",
    "PromptConfig": "asr.processing",
}
__all__ = [
    "PACKAGED_SMOLLM2",
    "PACKAGED_WHISPER",
    "ASRConfig",
    "ASRModel",
    "ASRProcessor",
    "DecodingConfig",
    "PromptConfig",
    "register",
]
__version__ = "0.1.0"


def register() -> None:
    """Register the model with transformers' Auto classes and pipelines (idempotent; done on
    first use of any name above)."""
    importlib.import_module("asr.modeling")  # AutoConfig / AutoModel registration
    importlib.import_module("asr.processing")  # AutoProcessor registration
    from asr.inference.pipeline import register as register_pipelines

    register_pipelines()


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'asr' has no attribute {name!r}")
    register()
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
