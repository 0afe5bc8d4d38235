"""`RuntimeModel`: a checkpoint's NumPy export (:mod:`asr.runtime.export`) as a transcriber."""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from asr.audio import load_audio
from asr.ctc_guide import CTCPrefixScorer
from asr.first_pass import CTranslate2FirstPass, disagreements, format_hypotheses
from asr.generation import DecodingConfig, through_eos
from asr.lengths import SAMPLE_RATE, WHISPER_WINDOW_FRAMES, mel_frames, seconds
from asr.runtime import numpy_model as nm
from asr.runtime.export import (
    CONTEXT_MARK,
    FIRST_PASS_MARK,
    GENERATION_CONFIG,
    META,
    WEIGHTS,
    WHISPER_TOKENIZER,
    prepare,
)

DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def map_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A safetensors file's arrays as read-only views of the file mapped into memory: no copy, so
    the weights cost their size once (in the page cache, shared by processes) and load instantly."""
    with path.open("rb") as f:
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        (size,) = struct.unpack("<Q", buffer[:8])
        header = json.loads(buffer[8 : 8 + size])
    except (struct.error, ValueError) as err:
        raise OSError(f"{path}: not a safetensors file ({err}); delete its folder to export again") from err
    header.pop("__metadata__", None)
    arrays = {}
    for name, info in header.items():
        if info["dtype"] not in DTYPES:
            raise ValueError(
                f"{path}: {name} has dtype {info['dtype']}, which the NumPy runtime does not read"
            )
        begin, end = info["data_offsets"]
        if 8 + size + end > len(buffer):
            raise OSError(
                f"{path}: cut short ({name} ends past the file's end); delete its folder to export again"
            )
        dtype = np.dtype(DTYPES[info["dtype"]])
        arrays[name] = np.frombuffer(
            buffer, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=8 + size + begin
        ).reshape(info["shape"])
    return arrays


class RuntimeModel:
    """Clips in, text out, as ``ASRModel.transcribe`` (greedy or beam search), without torch or
    transformers: ``RuntimeModel.from_checkpoint("checkpoints/offline")``.

    The prompt's head (chat template and system prompt, before the audio) is the same for every
    clip: its keys and values are computed once per model and copied into every batch. A two-pass
    model runs its first pass in CTranslate2 (:class:`asr.first_pass.CTranslate2FirstPass`, as the
    torch path does) and its rescoring here (:meth:`rescore`); ``threads``: CTranslate2's (0: its
    default)."""

    def __init__(self, folder: str | os.PathLike, threads: int = 0) -> None:
        from tokenizers import Tokenizer

        self.folder = folder = Path(folder)
        self.meta = json.loads((folder / META).read_text())
        self.weights = map_safetensors(folder / WEIGHTS)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.encoder_dims = nm.EncoderDims(**self.meta["encoder"])
        self.llm_dims = nm.LlamaDims(**self.meta["llm"])
        self.eos = int(self.meta["eos_token_id"])
        self.decoding = DecodingConfig(**self.meta["decoding"])
        self._head: tuple[nm.KVCache, int] | None = None
        self._tails: dict[str | None, list[int]] = {}
        self.two_pass = self.meta.get("two_pass")
        self.threads = threads
        self._first_pass: CTranslate2FirstPass | None = None  # loaded on first use
        if self.two_pass:
            self.whisper_tokenizer = Tokenizer.from_file(str(folder / WHISPER_TOKENIZER))
            self.whisper_dims = nm.EncoderDims(**self.two_pass["decoder"])

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | os.PathLike, log: Callable[[str], None] | None = None, threads: int = 0
    ) -> RuntimeModel:
        """The export of a checkpoint folder (made on first use: :func:`asr.runtime.export.prepare`),
        decoding as the folder's ``generation_config.json`` says now."""
        model = cls(prepare(checkpoint, log=log), threads=threads)
        generation = Path(checkpoint) / GENERATION_CONFIG
        if generation.is_file():
            model.decoding = DecodingConfig.from_dict(json.loads(generation.read_text()))
        return model

    # ------------------------------------------------------------------ prompt

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def head(self) -> tuple[nm.KVCache, int]:
        """Keys/values of the prompt's head, computed on first use."""
        if self._head is None:
            ids = self._encode(self.meta["prompt"]["before"])
            cache = nm.KVCache(self.llm_dims, 1, len(ids))
            x = self.weights["llm.embed_tokens.weight"][ids]
            nm.llama(x, np.array([len(ids)]), cache, self.weights, self.llm_dims)
            self._head = (cache, len(ids))
        return self._head

    def tail(self, context: str | None, first_pass: str | None = None) -> list[int]:
        """Token ids after the audio (instruction, optional context, a two-pass model's first
        pass, assistant turn)."""
        context = context.strip() if context and context.strip() else None
        if first_pass is None and context in self._tails:
            return self._tails[context]
        key = "after" + "_context" * (context is not None) + "_first_pass" * (first_pass is not None)
        text = self.meta["prompt"][key].replace(CONTEXT_MARK, context or "")
        ids = self._encode(text.replace(FIRST_PASS_MARK, (first_pass or "").strip()))
        if first_pass is None:
            self._tails[context] = ids
        return ids

    # ------------------------------------------------------------------ audio -> text

    def audio_vectors(self, clip: np.ndarray) -> np.ndarray:
        """One 16 kHz clip -> its projected audio positions (P, llm_width)."""
        n_mel = max(mel_frames(len(clip)), 1)
        if n_mel > WHISPER_WINDOW_FRAMES:
            raise ValueError(
                "a clip is longer than Whisper's 30 s window; use asr.inference (Transcriber) for long audio"
            )
        feats = self.meta["features"]
        mel = nm.features(clip, self.weights["mel_filters"], feats["n_fft"], feats["hop"])
        frames = nm.whisper_encoder(mel, n_mel, self.weights, self.encoder_dims)
        projector = self.meta["projector"]
        return nm.project(frames, self.weights, projector["type"], projector["stack"])

    def cap(self, clip: np.ndarray) -> int:
        """The decoding cap from the clip's duration (``DecodingConfig.max_new_tokens``, as in torch)."""
        return self.decoding.max_new_tokens(seconds(max(mel_frames(len(clip)), 1)))

    def prompts(
        self,
        clips: list[np.ndarray],
        contexts: list[str | None] | None = None,
        first_pass: list[list[str]] | None = None,
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Each clip's audio vectors and its prompt's embeddings after the shared head."""
        contexts = contexts or [None] * len(clips)
        hypotheses = [format_hypotheses(h) for h in first_pass] if first_pass else [None] * len(clips)
        embed = self.weights["llm.embed_tokens.weight"]
        audio = [self.audio_vectors(clip) for clip in clips]
        prompts = [
            np.concatenate([vectors, embed[self.tail(context, hypothesis)]])
            for vectors, context, hypothesis in zip(audio, contexts, hypotheses, strict=True)
        ]
        return audio, prompts

    def generate(
        self,
        clips: list[np.ndarray],
        contexts: list[str | None] | None = None,
        max_new_tokens: int | None = None,
        first_pass: list[list[str]] | None = None,
        prompts: tuple[list[np.ndarray], list[np.ndarray]] | None = None,
        num_beams: int | None = None,
    ) -> list[list[int]]:
        """Token ids of each clip's answer (ending with the end-of-turn id unless capped), by
        greedy or beam search as ``num_beams`` (default: the generation config's) says;
        ``first_pass``: a two-pass model's hypotheses of each clip (run here when not given);
        ``prompts``: those of :meth:`prompts`, when already built."""
        if prompts is None:
            first_pass = first_pass or self.run_first_pass(clips)
        audio, prompts = prompts or self.prompts(clips, contexts, first_pass)
        caps = [max_new_tokens or self.cap(clip) for clip in clips]
        # DecodingConfig checks the override as in torch (CTC guidance is greedy only)
        decoding = self.decoding if num_beams is None else self.decoding.replace(num_beams=num_beams)
        if decoding.num_beams > 1:
            return nm.beam_search(
                prompts,
                caps,
                self.weights,
                self.llm_dims,
                self.eos,
                decoding.num_beams,
                length_penalty=decoding.length_penalty,
                repetition_penalty=decoding.repetition_penalty,
                head=self.head(),
                no_repeat_ngram_size=decoding.no_repeat_ngram_size,
            )
        return nm.greedy(
            prompts,
            caps,
            self.weights,
            self.llm_dims,
            self.eos,
            repetition_penalty=decoding.repetition_penalty,
            head=self.head(),
            guide=self.guide(audio),
            no_repeat_ngram_size=decoding.no_repeat_ngram_size,
        )

    def guide(self, audio: list[np.ndarray]) -> tuple[list[CTCPrefixScorer], float, int] | None:
        """CTC-guided decoding's scorers, one per clip's audio vectors (``None`` when it is off)."""
        weight = self.decoding.ctc_guide_weight
        if not weight:
            return None
        w = self.weights
        lm_head = w.get("llm.lm_head.weight", w["llm.embed_tokens.weight"])
        head = (w["ctc.blank.weight"], float(w["ctc.blank.bias"][0]), float(w["ctc.log_scale"][0]))
        return [CTCPrefixScorer(a, lm_head, *head) for a in audio], weight, self.decoding.ctc_guide_top_k

    def transcribe(
        self,
        audios: list[np.ndarray] | np.ndarray,
        context: list[str | None] | str | None = None,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
    ) -> list[str]:
        """16 kHz mono clips (each at most 30 s) -> text, in one batch (``num_beams``: default the
        generation config's)."""
        audios = [audios] if isinstance(audios, np.ndarray) and audios.ndim == 1 else list(audios)
        clips = [load_audio(a, sampling_rate=SAMPLE_RATE, name=f"<clip {i}>") for i, a in enumerate(audios)]
        contexts = context if isinstance(context, list) else [context] * len(clips)
        first_pass = self.run_first_pass(clips)
        prompts = self.prompts(clips, contexts, first_pass)
        ids = self.generate(clips, contexts, max_new_tokens, prompts=prompts, num_beams=num_beams)
        texts = [t.strip() for t in self.tokenizer.decode_batch(ids, skip_special_tokens=True)]
        if first_pass is None or self.decoding.first_pass_rescore is None:
            return texts
        return self.rescore(clips, prompts[1], ids, texts, first_pass)

    # ------------------------------------------------------------------ two-pass models

    def run_first_pass(self, clips: list[np.ndarray]) -> list[list[str]] | None:
        """A two-pass model's first-pass hypotheses of each clip (``None`` for a one-pass model)."""
        if not self.two_pass:
            return None
        if self._first_pass is None:
            self._first_pass = CTranslate2FirstPass(self.two_pass["n_best"], threads=self.threads)
        return self._first_pass(clips, beam_size=self.decoding.first_pass_beam_size)

    def whisper_scores(self, clip: np.ndarray, texts: list[str]) -> list[float]:
        """Whisper's log-probability of each of ``texts`` as the transcript of ``clip``: its start
        tokens, the text and the end of text, teacher-forced after the clip's 30 s window (as
        :class:`asr.first_pass.WhisperScorer` in torch)."""
        feats = self.meta["features"]
        padded = np.zeros(WHISPER_WINDOW_FRAMES * feats["hop"], np.float32)
        padded[: len(clip)] = clip[: len(padded)]
        mel = nm.features(padded, self.weights["mel_filters"], feats["n_fft"], feats["hop"])
        encoded = nm.whisper_encoder(mel, WHISPER_WINDOW_FRAMES, self.weights, self.encoder_dims)
        start, eot = self.two_pass["start"], self.two_pass["eot"]
        encode = self.whisper_tokenizer.encode
        sequences = [
            start + (encode(f" {t.strip()}", add_special_tokens=False).ids if t.strip() else []) + [eot]
            for t in texts
        ]
        return nm.whisper_decoder_logprobs(encoded, sequences, len(start), self.weights, self.whisper_dims)

    def rescore(
        self,
        clips: list[np.ndarray],
        prompts: list[np.ndarray],
        ids: list[list[int]],
        texts: list[str],
        first_pass: list[list[str]],
    ) -> list[str]:
        """Two-pass decoding's last step, as ``ASRModel.rescore_first_pass``: where the answer
        differs from the first pass (both as the model was trained to write them), the one with
        the higher ``LLM + first_pass_rescore * Whisper`` log-probability is kept; the first pass
        is returned as Whisper wrote it."""
        written, firsts, differ = disagreements(texts, first_pass, self.two_pass["target_normalization"])
        if not differ:
            return texts
        own = [through_eos(ids[i], self.eos) for i in differ]
        theirs = [self._encode(firsts[i].strip()) + [self.eos] for i in differ]
        llm = nm.answer_logprobs(
            [prompts[i] for i in differ],
            [[a, b] for a, b in zip(own, theirs, strict=True)],
            self.weights,
            self.llm_dims,
            head=self.head(),
        )
        weight = self.decoding.first_pass_rescore
        texts = list(texts)
        for (answer_llm, first_llm), i in zip(llm, differ, strict=True):
            gain = answer_llm - first_llm
            if weight:
                answer, first = self.whisper_scores(clips[i], [written[i], firsts[i]])
                gain += weight * (answer - first)
            if gain < 0:
                texts[i] = first_pass[i][0]
        return texts
