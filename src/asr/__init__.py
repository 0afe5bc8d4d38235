"""LLM-based speech recognition: frozen Whisper encoder -> trainable projector -> frozen LLM."""

from asr.config import PACKAGED_SMOLLM2, PACKAGED_WHISPER, ASRConfig
from asr.generation import DecodingConfig
from asr.modeling import ASRModel
from asr.processing import ASRProcessor, PromptConfig

__all__ = [
    "ASRConfig",
    "ASRModel",
    "ASRProcessor",
    "DecodingConfig",
    "PACKAGED_SMOLLM2",
    "PACKAGED_WHISPER",
    "PromptConfig",
]
__version__ = "0.1.0"


def _register_pipelines() -> None:
    # pipeline("asr-llm" | "automatic-speech-recognition", model=CHECKPOINT) needs the task entries
    # (see asr.inference.pipeline for what changes in transformers' registry, and why)
    from asr.inference.pipeline import register

    register()


_register_pipelines()
