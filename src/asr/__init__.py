"""LLM-based speech recognition: frozen Whisper encoder -> trainable projector -> frozen LLM."""

from asr.config import PACKAGED_SMOLLM2, PACKAGED_WHISPER, ASRConfig
from asr.modeling import ASRModel

__all__ = ["ASRConfig", "ASRModel", "PACKAGED_SMOLLM2", "PACKAGED_WHISPER"]
__version__ = "0.1.0"

# Registers the transformers pipeline for "automatic-speech-recognition" and "asr-llm" (see asr.pipeline).
import asr.pipeline  # noqa: E402, F401
