"""transformers.pipeline round trip: a saved checkpoint directory in, the model's own text out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import speechlike, tiny_config, tiny_model
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.automatic_speech_recognition import AutomaticSpeechRecognitionPipeline

import asr
from asr import sources
from asr.inference.pipeline import TASK, ASRPipeline, SpeechRecognitionPipeline

RNG = np.random.default_rng(0)
UNTIED = {**tiny_config().decoder_config, "tie_word_embeddings": False}  # see test_transcribe.talking_tiny


def clip(seconds: float) -> np.ndarray:
    return speechlike(0.1 * RNG.standard_normal(int(seconds * 16000)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[asr.ASRModel, Path]:
    model = tiny_model(0, decoder_config=UNTIED)
    path = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(path)
    return model, path


def test_the_model_classes_register_the_pipeline() -> None:
    """``from asr import ASRModel`` (conftest's) registered the tasks (``asr.register``)."""
    tasks = PIPELINE_REGISTRY.to_dict()
    assert tasks["automatic-speech-recognition"]["impl"] is SpeechRecognitionPipeline
    assert tasks[TASK]["impl"] is ASRPipeline


@pytest.mark.real
def test_stock_models_get_the_stock_pipeline() -> None:
    """A Whisper model gets transformers' own class, not a subclass or a fork of it."""
    torch.manual_seed(0)
    whisper = WhisperForConditionalGeneration(WhisperConfig(**tiny_config().encoder_config)).eval()
    pipe = pipeline(
        "automatic-speech-recognition",
        model=whisper,
        tokenizer=sources.whisper_tokenizer(asr.PACKAGED_WHISPER),
        feature_extractor=WhisperFeatureExtractor(),
        device="cpu",
    )
    assert type(pipe) is AutomaticSpeechRecognitionPipeline and pipe.type == "seq2seq_whisper"
    assert isinstance(pipe(clip(1.0), generate_kwargs={"max_new_tokens": 3})["text"], str)


@pytest.mark.parametrize("task", ["automatic-speech-recognition", TASK])
def test_pipeline_from_directory_matches_model(saved, task: str) -> None:
    model, path = saved
    torch.manual_seed(0)  # the random frozen parts of the tiny model are rebuilt from the same seed
    pipe = pipeline(task, model=str(path), device="cpu")
    assert isinstance(pipe, ASRPipeline) and isinstance(pipe.model, asr.ASRModel)
    expected, loaded = model.state_dict(), pipe.model.state_dict()
    assert expected.keys() == loaded.keys() and all(torch.equal(expected[k], loaded[k]) for k in expected)

    a, b = clip(2.0), clip(3.0)
    with torch.inference_mode():
        want = model.transcribe([a], max_new_tokens=8)[0]
    assert want and pipe(a, max_new_tokens=8) == {"text": want}
    assert pipe({"raw": a, "sampling_rate": 16000}, max_new_tokens=8) == {"text": want}
    with torch.inference_mode():
        both = model.transcribe([a, b], max_new_tokens=8)
    assert pipe([a, b], batch_size=2, max_new_tokens=8) == [{"text": t} for t in both]


def test_pipeline_class_argument_and_long_audio(saved) -> None:
    model, _ = saved
    pipe = pipeline("automatic-speech-recognition", model=model, pipeline_class=ASRPipeline, device="cpu")
    long = clip(40.0)  # two windows, stitched
    out = pipe(long, max_new_tokens=6)["text"]
    with torch.inference_mode():
        first, second = model.transcribe([long[: 28 * 16000], long[12 * 16000 :]], max_new_tokens=6)
    assert out and set(out.split()) <= set(first.split()) | set(second.split())
    with pytest.raises(ValueError, match="does not support"):
        pipe(long, chunk_length_s=10)
