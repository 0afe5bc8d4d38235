"""Inference: batches of files or arrays of any length -> transcripts, and the transformers pipeline.

- :mod:`asr.inference.transcribe`: the ``Transcriber`` (batching, bad-file isolation, backends);
- :mod:`asr.inference.longform`: audio over 30 s cut at pauses (or in overlapping windows), joined;
- :mod:`asr.inference.outputs`: txt / json / srt writers;
- :mod:`asr.inference.pipeline`: ``pipeline("asr-llm" | "automatic-speech-recognition", model=...)``.
"""

from asr.inference.longform import pauses, plan_segments, plan_windows, stitch
from asr.inference.outputs import FORMATS, to_srt, write_outputs
from asr.inference.transcribe import (
    FASTER_WHISPER,
    FASTER_WHISPER_OPTIONS,
    FasterWhisperBackend,
    ModelBackend,
    Transcriber,
    Transcript,
    default_model,
    load_backend,
    load_model,
    transcribe,
)

__all__ = [
    "FASTER_WHISPER",
    "FASTER_WHISPER_OPTIONS",
    "FORMATS",
    "FasterWhisperBackend",
    "ModelBackend",
    "Transcriber",
    "Transcript",
    "default_model",
    "load_backend",
    "load_model",
    "pauses",
    "plan_segments",
    "plan_windows",
    "stitch",
    "to_srt",
    "transcribe",
    "write_outputs",
]
