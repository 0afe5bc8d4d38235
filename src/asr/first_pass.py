"""Whisper's own decoder as a first pass: its hypotheses become one more part of the LLM's prompt.

Two-pass mode (cross-modal generative error correction, as in Whispering-LLaMA): the frozen Whisper
that gives the encoder frames also has a decoder trained on 680k hours. Its transcript (or N-best
list) goes into the prompt after the audio positions, and the LLM writes the corrected transcript
from both. The first pass decodes each clip in Whisper's own 30 s window, greedy or with a beam
(``beam_size``, at least ``n_best``) returning its ``n_best`` best, with no timestamps, no
previous-text conditioning and no temperature fallback: what the faster-whisper baseline decodes.

Two runners, one interface: ``__call__(clips, beam_size=1) -> list[list[str]]``, and
``score(clips, candidates) -> list[list[float]]``, Whisper's log-probability of given transcripts
of each clip (:class:`WhisperScorer`), which two-pass decoding weighs against the LLM's
(:attr:`asr.generation.DecodingConfig.first_pass_rescore`):

- the packaged tiny.en is a CTranslate2 model, run with ``ctranslate2`` itself (batched,
  int8 by default): the same weights and decoder as the faster-whisper baseline;
- any other encoder source (a hub id, a local HF folder) runs transformers'
  ``WhisperForConditionalGeneration.generate``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asr.lengths import SAMPLE_RATE
from asr.paths import PACKAGED_WHISPER
from asr.prompt import normalize_target

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

        from asr.paths import packaged_whisper_dir

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
        self._scorer: WhisperScorer | None = None  # loaded on first use

    def __call__(self, clips: Sequence[np.ndarray], beam_size: int = 1) -> list[list[str]]:
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
            beam_size=max(beam_size, self.n_best),
            num_hypotheses=self.n_best,
            max_length=MAX_TOKENS,
            suppress_blank=True,
        )
        return [
            [self.tokenizer.decode([t for t in ids if t < self.eot]).strip() for ids in r.sequences_ids]
            for r in results
        ]

    def score(self, clips: Sequence[np.ndarray], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        """Whisper's log-probability of each clip's candidate transcripts (:class:`WhisperScorer`,
        on the same weights converted to transformers: CTranslate2 cannot score a given text with
        its end)."""
        if self._scorer is None:
            self._scorer = WhisperScorer.from_source(PACKAGED_WHISPER)
        return self._scorer(clips, candidates)


class TransformersFirstPass:
    """Any HF Whisper checkpoint (hub id or folder), through ``generate``."""

    def __init__(self, source: str, n_best: int = 1) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        from asr.sources import resolve

        folder = resolve(source)
        self.model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
        self.processor = WhisperProcessor.from_pretrained(folder)
        self.n_best = n_best

    def __call__(self, clips: Sequence[np.ndarray], beam_size: int = 1) -> list[list[str]]:
        import torch

        with torch.inference_mode():
            return self._generate(clips, beam_size)

    def _generate(self, clips: Sequence[np.ndarray], beam_size: int) -> list[list[str]]:
        features = self.processor.feature_extractor(
            [np.asarray(c, dtype=np.float32) for c in clips],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
        )["input_features"].to(self.model.device, self.model.dtype)
        ids = self.model.generate(
            features,
            num_beams=max(beam_size, self.n_best),
            num_return_sequences=self.n_best,
            do_sample=False,
            max_new_tokens=MAX_TOKENS // 2,
        )
        texts = [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
        return [texts[i : i + self.n_best] for i in range(0, len(texts), self.n_best)]

    def score(self, clips: Sequence[np.ndarray], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        """Whisper's log-probability of each clip's candidate transcripts (:class:`WhisperScorer`)."""
        scorer = WhisperScorer(self.model, self.processor.feature_extractor, self.processor.tokenizer)
        return scorer(clips, candidates)


class WhisperScorer:
    """Whisper's log-probability of a given transcript of each clip, teacher-forced: its start
    tokens (no timestamps), the text's tokens and the end of text, after the clip's 30 s window.
    Two-pass decoding weighs it against the LLM's (``generation.first_pass_rescore``)."""

    def __init__(self, model: Any, feature_extractor: Any, tokenizer: Any) -> None:
        self.model, self.feature_extractor, self.tokenizer = model, feature_extractor, tokenizer
        self.start = tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])

    @classmethod
    def from_source(cls, source: str) -> WhisperScorer:
        from asr.sources import load_whisper, whisper_tokenizer

        model, feature_extractor = load_whisper(source)
        return cls(model, feature_extractor, whisper_tokenizer(source))

    def __call__(self, clips: Sequence[np.ndarray], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        """Each clip's candidate transcripts -> their log-probabilities (the encoder runs once
        per clip)."""
        import torch

        with torch.inference_mode():
            return self._score(clips, candidates)

    def _score(self, clips: Sequence[np.ndarray], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        import torch

        features = self.feature_extractor(
            [np.asarray(c, dtype=np.float32) for c in clips], sampling_rate=SAMPLE_RATE, return_tensors="pt"
        )["input_features"].to(self.model.device, self.model.dtype)
        encoded = self.model.get_encoder()(features).last_hidden_state
        counts = torch.tensor([len(c) for c in candidates], device=encoded.device)
        eot = self.tokenizer.eos_token_id
        answers = [
            (self.tokenizer(f" {t.strip()}", add_special_tokens=False)["input_ids"] if t.strip() else [])
            + [eot]
            for texts in candidates
            for t in texts
        ]
        width = len(self.start) + max(map(len, answers))
        ids = torch.full((len(answers), width), eot, device=self.model.device)
        for row, answer in zip(ids, answers, strict=True):
            row[: len(self.start) + len(answer)] = torch.tensor(self.start + answer)
        logits = self.model(
            encoder_outputs=(encoded.repeat_interleave(counts, dim=0),), decoder_input_ids=ids[:, :-1]
        ).logits
        logprobs = logits.float().log_softmax(-1).gather(2, ids[:, 1:, None])[..., 0]
        first = len(self.start) - 1  # the position that predicts the text's first token
        scores = iter(
            float(lp[first : first + len(a)].sum()) for lp, a in zip(logprobs, answers, strict=True)
        )
        return [[next(scores) for _ in texts] for texts in candidates]


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


def disagreements(
    texts: Sequence[str], first_pass: Sequence[Sequence[str]], mode: str
) -> tuple[list[str], list[str], list[int]]:
    """Two-pass rescoring's candidates (in torch and in the NumPy runtime): each answer and each
    clip's best first-pass hypothesis as the model was trained to write them (``normalize_target``
    with ``mode``), and the rows where the two differ."""
    written = [normalize_target(t, mode) for t in texts]
    firsts = [normalize_target(h[0], mode) for h in first_pass]
    return written, firsts, [i for i, (a, b) in enumerate(zip(written, firsts, strict=True)) if a != b]
