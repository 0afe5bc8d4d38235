"""``transformers.pipeline`` support: ``pipeline("automatic-speech-recognition", model=CHECKPOINT_DIR)``.

How transformers 5 builds a pipeline: ``pipeline(task, model=path)`` reads the path's config
(``asr_llm`` is registered with ``AutoConfig``), looks the task up in ``PIPELINE_REGISTRY`` for the
pipeline class and the model classes to try, loads the model with the first class whose
``from_pretrained`` succeeds, then the tokenizer / feature extractor the pipeline class asks for.
The built-in "automatic-speech-recognition" entry only knows CTC, TDT and Whisper-like seq2seq
models and its pipeline expects token ids back from ``generate``; nothing in that path can be
pointed at our model without changing the registry entry.

So, through the public ``PIPELINE_REGISTRY.register_pipeline``, ``import asr`` registers:

- the task ``"asr-llm"``: :class:`ASRPipeline` with our checkpoint loader (no effect on anything else);
- the task ``"automatic-speech-recognition"`` again, with :class:`ASRPipeline` (a subclass of the
  stock ``AutomaticSpeechRecognitionPipeline``) and the stock model classes after our loader.
  For any model that is not an :class:`~asr.modeling.ASRModel` every method defers to the stock
  class, so other ASR models behave as before; the one difference is that a missing tokenizer or
  feature extractor is no longer an error at construction (our checkpoints carry neither: the
  model rebuilds them from its sources).

``pipeline("automatic-speech-recognition", model=..., pipeline_class=ASRPipeline)`` works too.
Audio over 30 s is cut into overlapping windows and stitched exactly as :mod:`asr.transcribe` does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.automatic_speech_recognition import AutomaticSpeechRecognitionPipeline
from transformers.pipelines.base import ChunkPipeline

from asr.audio import SAMPLE_RATE, load_audio
from asr.config import ASRConfig
from asr.modeling import ASRModel
from asr.transcribe import plan_windows, stitch

TASK = "asr-llm"


class ASRCheckpointLoader:
    """What ``pipeline()`` calls ``from_pretrained`` on: loads a directory saved by
    ``ASRModel.save_pretrained``, and refuses anything else so the next model class is tried."""

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: Any = None, **_: Any) -> ASRModel:
        config_file = Path(path) / "config.json"
        if not config_file.is_file() or ASRConfig.model_type not in config_file.read_text():
            raise ValueError(f"{path}: not an {ASRConfig.model_type} checkpoint directory")
        dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32  # "auto" -> float32
        return ASRModel.from_pretrained(path, dtype=dtype).eval()


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


class ASRPipeline(AutomaticSpeechRecognitionPipeline):
    """Speech -> ``{"text": ...}`` with :class:`ASRModel`; the stock behaviour for every other model.

    Call options: ``context`` (text that biases the transcript), ``num_beams``, ``max_new_tokens``,
    ``generate_kwargs`` (passed to the LLM's ``generate``), plus the usual ``batch_size``.
    """

    _load_feature_extractor = None  # soft: try to load, keep None when the checkpoint has none
    _load_tokenizer = None

    def __init__(
        self, model: Any, feature_extractor: Any = None, tokenizer: Any = None, **kwargs: Any
    ) -> None:
        self._asr_llm = isinstance(model, ASRModel)
        if not self._asr_llm:
            super().__init__(model, feature_extractor=feature_extractor, tokenizer=tokenizer, **kwargs)
            return
        self.type = ASRConfig.model_type
        kwargs.pop("decoder", None)
        # our own components, not whatever a directory lookup may have found
        ChunkPipeline.__init__(self, model, model.tokenizer, model.feature_extractor, **kwargs)

    def _sanitize_parameters(self, **kwargs: Any) -> tuple[dict, dict, dict]:
        if not self._asr_llm:
            return super()._sanitize_parameters(**kwargs)
        context = kwargs.pop("context", None)
        generate_kwargs = dict(kwargs.pop("generate_kwargs", None) or {})
        for name in ("num_beams", "max_new_tokens"):
            if kwargs.get(name) is not None:
                generate_kwargs[name] = kwargs.pop(name)
        unsupported = sorted(k for k, v in kwargs.items() if v is not None)
        if unsupported:
            raise ValueError(f"the {ASRConfig.model_type} pipeline does not support {unsupported}")
        return {"context": context}, {"generate_kwargs": generate_kwargs}, {}

    def preprocess(self, inputs: Any, context: str | None = None, **kwargs: Any):
        if not self._asr_llm:
            yield from super().preprocess(inputs, **kwargs)
            return
        audio = _audio_of(inputs)
        spans = plan_windows(len(audio))
        for n, (start, end) in enumerate(spans):
            yield {
                "audio": audio[start:end],
                "context": context,
                "span": (start / SAMPLE_RATE, end / SAMPLE_RATE),
                "is_last": n == len(spans) - 1,
            }

    def _forward(self, model_inputs: dict, generate_kwargs: dict | None = None, **kwargs: Any) -> dict:
        if not self._asr_llm:
            return super()._forward(model_inputs, generate_kwargs=generate_kwargs, **kwargs)
        single = isinstance(model_inputs["audio"], np.ndarray)  # unbatched call
        audios = [model_inputs["audio"]] if single else list(model_inputs["audio"])
        contexts = [model_inputs["context"]] if single else list(model_inputs["context"])
        texts = self.model.transcribe(audios, context=contexts, **(generate_kwargs or {}))
        if single:
            return {"text": texts[0], "span": model_inputs["span"], "is_last": model_inputs["is_last"]}
        return {"text": texts, "span": list(model_inputs["span"]), "is_last": list(model_inputs["is_last"])}

    def postprocess(self, model_outputs: list[dict], **kwargs: Any) -> dict:
        if not self._asr_llm:
            return super().postprocess(model_outputs, **kwargs)
        pieces = stitch([o["text"] for o in model_outputs], [tuple(o["span"]) for o in model_outputs])
        return {"text": " ".join(w for piece in pieces for w in piece)}


def register() -> None:
    """Register the pipeline for ``"asr-llm"`` and ``"automatic-speech-recognition"`` (see module doc)."""
    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=ASRPipeline, pt_model=ASRCheckpointLoader, type="audio"
    )
    stock = PIPELINE_REGISTRY.to_dict()["automatic-speech-recognition"]
    if stock["impl"] is ASRPipeline:  # already done (module reloaded)
        return
    # register_pipeline warns whenever it replaces an entry; replacing the built-in one is intended here
    registry_logger = logging.getLogger("transformers.pipelines.base")
    level = registry_logger.level
    registry_logger.setLevel(logging.ERROR)
    try:
        PIPELINE_REGISTRY.register_pipeline(
            "automatic-speech-recognition",
            pipeline_class=ASRPipeline,
            pt_model=(ASRCheckpointLoader, *stock["pt"]),
            default=stock.get("default"),
            type=stock.get("type"),
        )
    finally:
        registry_logger.setLevel(level)


register()
