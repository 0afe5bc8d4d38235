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
from asr.generation import DecodingConfig
from asr.lengths import SAMPLE_RATE, WHISPER_WINDOW_FRAMES, mel_frames, seconds
from asr.runtime import numpy_model as nm
from asr.runtime.export import CONTEXT_MARK, META, WEIGHTS, prepare

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
    """Clips in, text out, as ``ASRModel.transcribe`` on a one-pass model with greedy decoding,
    without torch or transformers: ``RuntimeModel.from_checkpoint("checkpoints/offline")``.

    The prompt's head (chat template and system prompt, before the audio) is the same for every
    clip: its keys and values are computed once per model and copied into every batch."""

    def __init__(self, folder: str | os.PathLike) -> None:
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

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | os.PathLike, log: Callable[[str], None] | None = None
    ) -> RuntimeModel:
        """The export of a checkpoint folder (made on first use: :func:`asr.runtime.export.prepare`)."""
        return cls(prepare(checkpoint, log=log))

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

    def tail(self, context: str | None) -> list[int]:
        """Token ids after the audio (instruction, optional context, assistant turn)."""
        context = context.strip() if context and context.strip() else None
        if context not in self._tails:
            prompt = self.meta["prompt"]
            text = (
                prompt["after"] if context is None else prompt["after_context"].replace(CONTEXT_MARK, context)
            )
            self._tails[context] = self._encode(text)
        return self._tails[context]

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

    def generate(
        self,
        clips: list[np.ndarray],
        contexts: list[str | None] | None = None,
        max_new_tokens: int | None = None,
    ) -> list[list[int]]:
        """Token ids of each clip's answer (ending with the end-of-turn id unless capped)."""
        contexts = contexts or [None] * len(clips)
        embed = self.weights["llm.embed_tokens.weight"]
        audio = [self.audio_vectors(clip) for clip in clips]
        prompts = [
            np.concatenate([vectors, embed[self.tail(context)]])
            for vectors, context in zip(audio, contexts, strict=True)
        ]
        caps = [max_new_tokens or self.cap(clip) for clip in clips]
        return nm.greedy(
            prompts,
            caps,
            self.weights,
            self.llm_dims,
            self.eos,
            repetition_penalty=self.decoding.repetition_penalty,
            head=self.head(),
            guide=self.guide(audio),
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
    ) -> list[str]:
        """16 kHz mono clips (each at most 30 s) -> text, in one batch."""
        audios = [audios] if isinstance(audios, np.ndarray) and audios.ndim == 1 else list(audios)
        clips = [load_audio(a, sampling_rate=SAMPLE_RATE, name=f"<clip {i}>") for i, a in enumerate(audios)]
        contexts = context if isinstance(context, list) else [context] * len(clips)
        ids = self.generate(clips, contexts, max_new_tokens)
        return [t.strip() for t in self.tokenizer.decode_batch(ids, skip_special_tokens=True)]
