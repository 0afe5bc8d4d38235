"""Whisper's own decoder as a first pass: its hypotheses become one more part of the LLM's prompt.

Two-pass mode (cross-modal generative error correction, as in Whispering-LLaMA): the frozen Whisper
that gives the encoder frames also has a decoder trained on 680k hours. Its transcript (or N-best
list) goes into the prompt after the audio positions, and the LLM writes the corrected transcript
from both. The first pass decodes each clip in Whisper's own 30 s window, greedy (``n_best=1``) or
with a beam of ``n_best`` returning all of them, with no timestamps, no previous-text conditioning
and no temperature fallback: what the faster-whisper baseline decodes.

Two runners, one interface (``__call__(clips) -> list[list[str]]``):

- the packaged tiny.en is a CTranslate2 model, run with ``ctranslate2`` itself (batched,
  int8 by default): the same weights and decoder as the faster-whisper baseline;
- any other encoder source (a hub id, a local HF folder) runs transformers'
  ``WhisperForConditionalGeneration.generate``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from asr.config import PACKAGED_WHISPER
from asr.lengths import SAMPLE_RATE

MAX_TOKENS = 448  # Whisper's decoder context


def first_pass_key(source: str, n_best: int) -> str:
    """Identity of a first pass's output: a store keeps hypotheses per key (``v1``: the decoding
    options above; bump when they change)."""
    return hashlib.sha256(f"v1|{source}|{n_best}".encode()).hexdigest()[:16]


class CTranslate2FirstPass:
    """The packaged CTranslate2 Whisper, batched."""

    def __init__(self, n_best: int = 1, compute_type: str = "int8", threads: int = 0) -> None:
        import ctranslate2
        from faster_whisper.feature_extractor import FeatureExtractor
        from tokenizers import Tokenizer

        from asr.sources import packaged_whisper_dir

        folder = packaged_whisper_dir()
        self.model = ctranslate2.models.Whisper(
            str(folder), device="cpu", compute_type=compute_type, intra_threads=threads
        )
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.extractor = FeatureExtractor(feature_size=self.model.n_mels)
        self.n_best = n_best
        sot = self.tokenizer.token_to_id("<|startoftranscript|>")
        self.prompt = [sot, self.tokenizer.token_to_id("<|notimestamps|>")]
        self.eot = self.tokenizer.token_to_id("<|endoftext|>")

    def __call__(self, clips: Sequence[np.ndarray]) -> list[list[str]]:
        import ctranslate2
        from faster_whisper.audio import pad_or_trim

        # faster-whisper's own features: the clip's frames (its extra last frame dropped), then
        # the log-mel padded with zeros to the 30 s window
        features = np.stack(
            [pad_or_trim(self.extractor(np.asarray(c, dtype=np.float32))[:, :-1]) for c in clips]
        )
        results = self.model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32)),
            [self.prompt] * len(clips),
            beam_size=self.n_best,
            num_hypotheses=self.n_best,
            max_length=MAX_TOKENS,
            suppress_blank=True,
        )
        return [
            [self.tokenizer.decode([t for t in ids if t < self.eot]).strip() for ids in r.sequences_ids]
            for r in results
        ]


class TransformersFirstPass:
    """Any HF Whisper checkpoint (hub id or folder), through ``generate``."""

    def __init__(self, source: str, n_best: int = 1) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        from asr.sources import resolve

        folder = resolve(source)
        self.model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
        self.processor = WhisperProcessor.from_pretrained(folder)
        self.n_best = n_best

    @torch.inference_mode()
    def __call__(self, clips: Sequence[np.ndarray]) -> list[list[str]]:
        features = self.processor.feature_extractor(
            [np.asarray(c, dtype=np.float32) for c in clips],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
        )["input_features"].to(self.model.device, self.model.dtype)
        ids = self.model.generate(
            features,
            num_beams=self.n_best,
            num_return_sequences=self.n_best,
            do_sample=False,
            max_new_tokens=MAX_TOKENS // 2,
        )
        texts = [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
        return [texts[i : i + self.n_best] for i in range(0, len(texts), self.n_best)]


FirstPass = CTranslate2FirstPass | TransformersFirstPass


def load_first_pass(source: str, n_best: int = 1, threads: int = 0) -> FirstPass:
    """The first-pass runner for an encoder source (no network for the packaged one)."""
    if n_best < 1:
        raise ValueError(f"first_pass_n_best={n_best}: must be at least 1")
    if source == PACKAGED_WHISPER:
        return CTranslate2FirstPass(n_best, threads=threads)
    if not Path(source).exists() and "/" not in source:
        raise ValueError(f"first pass: {source!r} is not a Whisper checkpoint (a folder or a hub id)")
    return TransformersFirstPass(source, n_best)


def format_hypotheses(hypotheses: Sequence[str]) -> str:
    """The first-pass part of a prompt: one hypothesis as is, an N-best list one per line."""
    if len(hypotheses) == 1:
        return hypotheses[0]
    return "\n".join(f"{i}. {h}" for i, h in enumerate(hypotheses, 1))
