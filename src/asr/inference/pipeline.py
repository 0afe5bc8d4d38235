"""``transformers.pipeline`` for our checkpoints: ``pipeline("asr-llm", model=CHECKPOINT_DIR)``.

:class:`ASRPipeline` serves :class:`~asr.modeling.ASRModel` only: a path, file bytes, a 16 kHz
array or ``{"raw"|"array": ..., "sampling_rate": ...}`` in, ``{"text": ...}`` out; audio over 30 s
is cut into windows and stitched by :mod:`asr.inference.longform`, as the ``Transcriber`` does.
It is registered as its own task, ``"asr-llm"``.

``pipeline("automatic-speech-recognition", model=CHECKPOINT_DIR)`` works too. transformers picks a
pipeline by task, not by model type, and its built-in ASR pipeline cannot drive a prompt-based
LLM decoder, so :func:`register` wraps that task's entry in :class:`SpeechRecognitionPipeline`,
which only dispatches: an ``ASRModel`` gets an :class:`ASRPipeline`, every other model the stock
``AutomaticSpeechRecognitionPipeline`` itself (the same class, untouched: Whisper checkpoints
behave exactly as without this package). :func:`asr.register` calls :func:`register`; it runs on
the first use of ``asr.ASRModel`` (or any model class ``asr`` exports: ``from asr import
ASRModel`` is enough), not on ``import asr``, which stays cheap for the NumPy runtime. The model
classes the task tries are the stock ones (``ASRModel`` is registered with
``AutoModelForSpeechSeq2Seq``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.automatic_speech_recognition import AutomaticSpeechRecognitionPipeline
from transformers.pipelines.base import ChunkPipeline

from asr.audio import SAMPLE_RATE, has_speech, load_audio
from asr.inference.longform import join_windows, plan_segments
from asr.inference.transcribe import ModelBackend
from asr.modeling import ASRModel
from asr.processing import ASRProcessor

TASK = "asr-llm"
STOCK_TASK = "automatic-speech-recognition"


def _audio_of(inputs: Any) -> np.ndarray:
    """A path, file bytes, a 16 kHz array, or ``{"raw"|"array": ..., "sampling_rate": ...}``."""
    if isinstance(inputs, dict):
        raw = inputs.get("raw", inputs.get("array"))
        if raw is None or "sampling_rate" not in inputs:
            raise ValueError("dict inputs need 'raw' (or 'array') and 'sampling_rate'")
        return load_audio(np.asarray(raw), sampling_rate=int(inputs["sampling_rate"]))
    if isinstance(inputs, np.ndarray):
        return load_audio(inputs, sampling_rate=SAMPLE_RATE)
    return load_audio(inputs)


class ASRPipeline(ChunkPipeline):
    """Speech -> ``{"text": ...}`` with :class:`ASRModel`.

    Call options: ``context`` (text that biases the transcript), ``num_beams``, ``max_new_tokens``,
    ``generate_kwargs`` (passed to ``ASRModel.generate``), plus the usual ``batch_size``.
    """

    _load_processor = None  # soft: ours comes from the model when the checkpoint has none
    _load_feature_extractor = None
    _load_tokenizer = None

    def __init__(self, model: ASRModel, processor: ASRProcessor | None = None, **kwargs: Any) -> None:
        if not isinstance(model, ASRModel):
            raise TypeError(f"ASRPipeline serves asr_llm models, got {type(model).__name__}")
        self.asr_processor = processor if isinstance(processor, ASRProcessor) else model.processor
        if self.asr_processor is None:
            raise ValueError("the model has no processor attached: load it with ASRModel.from_pretrained")
        for key in ("tokenizer", "feature_extractor", "image_processor", "decoder"):
            kwargs.pop(key, None)
        super().__init__(
            model,
            tokenizer=self.asr_processor.tokenizer,
            feature_extractor=self.asr_processor.feature_extractor,
            **kwargs,
        )
        self.backend = ModelBackend(model, processor=self.asr_processor)  # the Transcriber's decoding

    def _sanitize_parameters(self, context: str | None = None, **kwargs: Any) -> tuple[dict, dict, dict]:
        generate_kwargs = dict(kwargs.pop("generate_kwargs", None) or {})
        for name in ("num_beams", "max_new_tokens"):
            if kwargs.get(name) is not None:
                generate_kwargs[name] = kwargs.pop(name)
        unsupported = sorted(k for k, v in kwargs.items() if v is not None)
        if unsupported:
            raise ValueError(f"the {TASK} pipeline does not support {unsupported}")
        return {"context": context}, {"generate_kwargs": generate_kwargs}, {}

    def preprocess(self, inputs: Any, context: str | None = None):
        audio = _audio_of(inputs)
        spans = plan_segments(audio)
        for n, (start, end) in enumerate(spans):
            yield {
                "audio": audio[start:end],
                "context": context,
                "span": (start, end),
                "is_last": n == len(spans) - 1,
            }

    def _forward(self, model_inputs: dict, generate_kwargs: dict | None = None) -> dict:
        single = isinstance(model_inputs["audio"], np.ndarray)  # unbatched call
        audios = [model_inputs["audio"]] if single else list(model_inputs["audio"])
        contexts = [model_inputs["context"]] if single else list(model_inputs["context"])
        speech = [i for i, audio in enumerate(audios) if has_speech(audio)]  # the Transcriber's gate
        texts = [""] * len(audios)
        if speech:
            decoded = self.backend.decode(
                [audios[i] for i in speech], [contexts[i] for i in speech], **(generate_kwargs or {})
            )
            for i, text in zip(speech, decoded, strict=True):
                texts[i] = text
        if single:
            return {"text": texts[0], "span": model_inputs["span"], "is_last": model_inputs["is_last"]}
        return {"text": texts, "span": list(model_inputs["span"]), "is_last": list(model_inputs["is_last"])}

    def postprocess(self, model_outputs: list[dict]) -> dict:
        spans = [tuple(int(x) for x in o["span"]) for o in model_outputs]
        text, _ = join_windows([o["text"] for o in model_outputs], spans)
        return {"text": text}


class SpeechRecognitionPipeline(AutomaticSpeechRecognitionPipeline):
    """The ``automatic-speech-recognition`` task's entry: builds an :class:`ASRPipeline` for an
    ``ASRModel`` and the stock ``AutomaticSpeechRecognitionPipeline`` for anything else."""

    _load_processor = None
    _load_feature_extractor = None  # soft: our checkpoints need none; stock models find theirs
    _load_tokenizer = None

    def __new__(cls, model: Any, *args: Any, **kwargs: Any) -> ChunkPipeline:
        if isinstance(model, ASRModel):
            return ASRPipeline(model, *args, **kwargs)
        return AutomaticSpeechRecognitionPipeline(model, *args, **kwargs)


def register() -> None:
    """Register ``"asr-llm"`` and route ``"automatic-speech-recognition"`` through the dispatcher."""
    if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=ASRPipeline, pt_model=ASRModel, type="audio")
    stock = PIPELINE_REGISTRY.supported_tasks[STOCK_TASK]
    stock["impl"] = SpeechRecognitionPipeline  # the one field changed; model classes and defaults stay
