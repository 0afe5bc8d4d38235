"""Transcribe files or arrays of any length, in batches, with one error per bad file.

Any backend that turns a batch of <= 30 s clips into text can be plugged in: our model (in NumPy,
:mod:`asr.runtime`, where the checkpoint allows it; else through torch and its processor), or
faster-whisper on the packaged Whisper tiny.en (the baseline). Long audio is cut into windows and
stitched by :mod:`asr.inference.longform`. torch and transformers are imported only by the torch
backend, so a NumPy-runtime transcription starts in about a second.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from asr.audio import SAMPLE_RATE, AudioError, has_speech, load_audio
from asr.inference.longform import (
    OVERLAP_SECONDS,
    SEGMENT_SECONDS,
    WINDOW_SECONDS,
    Segment,
    join_windows,
    plan_segments,
)

if TYPE_CHECKING:
    import torch

    from asr.modeling import ASRModel
    from asr.processing import ASRProcessor

FASTER_WHISPER = "faster-whisper"
DEFAULT_CHECKPOINT = Path("checkpoints") / "offline"
TWO_PASS_CHECKPOINT = Path("checkpoints") / "offline-2pass"
MODEL_ENV = "ASR_MODEL"
RUNTIMES = ("auto", "numpy", "torch")
DTYPES = ("float32", "bfloat16")  # the weights our model computes in (bfloat16: torch only)

AudioInput = str | Path | bytes | np.ndarray


def default_model(two_pass: bool = True) -> Path:
    """The checkpoint used when none is named: ``$ASR_MODEL`` if set, else the first of
    ``checkpoints/offline-2pass`` (two-pass: far better on ordinary English) and
    ``checkpoints/offline`` (the one-pass model; the only one with ``two_pass=False``, which the
    course uses to teach the plain architecture) found in the current folder or one above it (a
    clone of this repository ships both), else ``checkpoints/offline`` relative to the current
    folder (absent: :func:`load_model` falls back to the untrained model with a warning)."""
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV])
    names = (TWO_PASS_CHECKPOINT, DEFAULT_CHECKPOINT) if two_pass else (DEFAULT_CHECKPOINT,)
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        for name in names:
            if (folder / name / "config.json").is_file():
                return folder / name
    return DEFAULT_CHECKPOINT


# --------------------------------------------------------------------------- backends


class Backend(Protocol):
    """Turns a batch of 16 kHz mono clips (each <= 30 s) into text, one string per clip."""

    name: str

    def decode(self, clips: list[np.ndarray], contexts: list[str | None]) -> list[str]: ...


class ModelBackend:
    """Our encoder-projector-LLM model: processor -> ``generate`` -> ``batch_decode``."""

    def __init__(
        self,
        model: ASRModel,
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
        name: str = "asr-llm",
        processor: ASRProcessor | None = None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor or model.processor
        if self.processor is None:
            raise ValueError("the model has no processor attached: pass processor=")
        self.options = {"max_new_tokens": max_new_tokens}  # None: each clip's cap from its duration
        if num_beams is not None:
            self.options["num_beams"] = num_beams
        self.name = name

    def decode(self, clips: list[np.ndarray], contexts: list[str | None], **options: Any) -> list[str]:
        """``options``: per-call ``generate`` keywords over the backend's own
        (:meth:`asr.modeling.ASRModel.transcribe`: a two-pass model's first pass and rescoring
        included)."""
        import torch

        with torch.inference_mode():
            return self.model.transcribe(
                clips, contexts, processor=self.processor, **{**self.options, **options}
            )


class RuntimeBackend:
    """A checkpoint in NumPy (:class:`asr.runtime.RuntimeModel`; a two-pass model's first pass in
    CTranslate2): the same transcripts as :class:`ModelBackend` without torch
    (tests/test_runtime.py)."""

    def __init__(
        self,
        checkpoint: str | Path,
        max_new_tokens: int | None = None,
        threads: int | None = None,
        num_beams: int | None = None,
    ) -> None:
        from asr.runtime import RuntimeModel

        if threads:
            from threadpoolctl import threadpool_limits

            threadpool_limits(threads)  # NumPy's BLAS; kept for the process, as torch.set_num_threads
        self.model = RuntimeModel.from_checkpoint(
            checkpoint, log=lambda line: print(line, file=sys.stderr), threads=threads or 0
        )
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.name = f"{Path(checkpoint).name} (numpy)"

    def decode(self, clips: list[np.ndarray], contexts: list[str | None]) -> list[str]:
        return self.model.transcribe(
            clips, contexts, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams
        )


# How the baseline decodes: no timestamps, no conditioning on previous text, no VAD (it sees exactly
# the audio our model sees), and no temperature fallback (deterministic, like our greedy/beam search).
FASTER_WHISPER_OPTIONS = {
    "language": "en",
    "without_timestamps": True,
    "condition_on_previous_text": False,
    "vad_filter": False,
    "temperature": 0.0,
}


class FasterWhisperBackend:
    """faster-whisper (CTranslate2) on the packaged Whisper tiny.en: the baseline to beat.

    Clips are decoded one at a time with :data:`FASTER_WHISPER_OPTIONS`.
    """

    def __init__(self, compute_type: str = "int8", num_beams: int = 1, threads: int | None = None) -> None:
        from faster_whisper import WhisperModel

        from asr.paths import packaged_whisper_dir

        self.model = WhisperModel(
            str(packaged_whisper_dir()), device="cpu", compute_type=compute_type, cpu_threads=threads or 0
        )
        self.num_beams = num_beams
        self.name = f"faster-whisper tiny.en {compute_type} beam{num_beams}"

    def decode(self, clips: list[np.ndarray], contexts: list[str | None]) -> list[str]:
        texts = []
        for clip, context in zip(clips, contexts, strict=True):
            segments, _ = self.model.transcribe(
                clip, beam_size=self.num_beams, initial_prompt=context, **FASTER_WHISPER_OPTIONS
            )
            texts.append(" ".join(s.text.strip() for s in segments).strip())
        return texts


def load_model(path: str | Path | None = None, dtype: torch.dtype | str | None = None) -> ASRModel:
    """A checkpoint saved by ``ASRModel.save_pretrained`` (default: :func:`default_model`), for
    inference (LoRA adapters folded into the frozen weights at load, peft not imported; float32
    unless ``dtype``, a torch dtype or one of :data:`DTYPES`); when the default is absent, the
    untrained offline model, with a warning."""
    import torch

    from asr.config import ASRConfig
    from asr.modeling import ASRModel

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype or torch.float32
    path = Path(path) if path is not None else default_model()
    if not (path / "config.json").is_file() and path in (DEFAULT_CHECKPOINT, default_model()):
        warnings.warn(
            f"{path} does not exist: using the UNTRAINED offline model (packaged Whisper tiny.en + "
            "SmolLM2-135M, random projector); its transcripts are meaningless. Pass --model CHECKPOINT_DIR "
            f"or set ${MODEL_ENV}.",
            stacklevel=2,
        )
        return ASRModel.from_sources(ASRConfig(), dtype).eval()
    return ASRModel.from_pretrained(path, dtype=dtype, merge_lora=True)


def _check_paths(runtime: str, dtype: str) -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    if dtype != "float32" and runtime == "numpy":
        raise ValueError(f"--runtime numpy computes in float32 only: use --runtime torch for --dtype {dtype}")


def _warn_slow_bf16() -> None:
    import torch

    from asr.precision import cpu_has_bf16

    if not torch.cuda.is_available() and not cpu_has_bf16():
        warnings.warn(
            "dtype bfloat16 on a CPU without AVX-512 BF16 or AMX: its matrix products are ~100x slower "
            "than float32 here; use the default float32",
            stacklevel=3,
        )


def _torch_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def load_backend(
    model: str | Path | ASRModel | Backend | None = None,
    num_beams: int | None = None,
    compute_type: str = "int8",
    threads: int | None = None,
    max_new_tokens: int | None = None,
    runtime: str = "auto",
    dtype: str = "float32",
) -> Backend:
    """``faster-whisper``, a checkpoint directory (default: :func:`default_model`), a loaded
    :class:`ASRModel`, or a ready backend.

    ``runtime`` (checkpoint directories): ``auto`` runs a checkpoint in NumPy
    (:class:`RuntimeBackend`) when :func:`asr.runtime.unsupported` finds nothing against it, else
    in torch; ``numpy`` insists (an error says why it cannot);
    ``torch`` is the training stack's own path (:class:`ModelBackend`).

    ``dtype`` (checkpoint directories): ``bfloat16`` casts every weight to bf16 in torch (the
    NumPy runtime is float32 only): for checkpoints/offline about twice as fast at batch 8 on a
    CPU with AVX-512 BF16 or AMX, at most 0.31 WER points from float32 on the whole dev sets
    (benchmarks/README.md); ~100x slower on a CPU without them, so that gets a warning."""
    _check_paths(runtime, dtype)
    if model is None or isinstance(model, str | Path):
        if str(model) == FASTER_WHISPER:
            return FasterWhisperBackend(compute_type, num_beams or 1, threads)
        path = Path(model) if model is not None else default_model()
        if runtime != "torch" and dtype == "float32":
            from asr.runtime import unsupported

            reason = unsupported(path)
            if reason is None:
                return RuntimeBackend(path, max_new_tokens, threads, num_beams)
            if runtime == "numpy":
                raise ValueError(f"--runtime numpy: {reason}")
        _torch_threads(threads)
        name = path.name if (path / "config.json").is_file() else "asr-llm UNTRAINED"
        if dtype != "float32":
            name = f"{name} {dtype}"
            _warn_slow_bf16()
        return ModelBackend(load_model(path, dtype), num_beams, max_new_tokens, name=name)
    modeling = sys.modules.get("asr.modeling")  # an ASRModel exists only once it is imported
    if modeling is not None and isinstance(model, modeling.ASRModel):
        _torch_threads(threads)
        return ModelBackend(model, num_beams, max_new_tokens)
    return model


# --------------------------------------------------------------------------- transcripts


@dataclass
class Transcript:
    source: str
    text: str = ""
    duration: float = 0.0
    segments: list[Segment] = field(default_factory=list)
    error: str | None = None
    no_speech: bool = False  # every window was silence or stationary sound (asr.audio.has_speech)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Job:
    item: int
    window: int
    samples: np.ndarray
    context: str | None


class Transcriber:
    """Files or arrays in, :class:`Transcript` per input out; bad inputs get ``error`` set, the rest
    are transcribed regardless."""

    def __init__(
        self,
        model: str | Path | ASRModel | Backend | None = None,
        batch_size: int = 8,
        num_beams: int | None = None,
        segment_seconds: float = SEGMENT_SECONDS,
        window_seconds: float = WINDOW_SECONDS,
        overlap_seconds: float = OVERLAP_SECONDS,
        compute_type: str = "int8",
        threads: int | None = None,
        max_new_tokens: int | None = None,
        progress: bool = False,
        runtime: str = "auto",
        dtype: str = "float32",
    ) -> None:
        self.backend = load_backend(model, num_beams, compute_type, threads, max_new_tokens, runtime, dtype)
        self.batch_size = batch_size
        self.segment_seconds = segment_seconds
        self.window_seconds = window_seconds
        self.overlap_seconds = overlap_seconds
        self.progress = progress

    @property
    def name(self) -> str:
        return self.backend.name

    def __call__(
        self,
        inputs: Sequence[AudioInput],
        context: str | Sequence[str | None] | None = None,
        sampling_rate: int = SAMPLE_RATE,
    ) -> list[Transcript]:
        contexts = list(context) if isinstance(context, list | tuple) else [context] * len(inputs)
        if len(contexts) != len(inputs):
            raise ValueError(f"{len(contexts)} contexts for {len(inputs)} inputs")
        results: list[Transcript] = []
        jobs: list[_Job] = []
        window_spans: list[list[tuple[int, int]]] = []
        for i, source in enumerate(inputs):
            name = str(source) if isinstance(source, str | Path) else f"<{type(source).__name__} {i}>"
            try:
                rate = sampling_rate if isinstance(source, np.ndarray) else None
                audio = load_audio(source, sampling_rate=rate)
            except (AudioError, OSError) as err:
                results.append(Transcript(source=name, error=str(err)))
                window_spans.append([])
                continue
            spans = plan_segments(audio, self.segment_seconds, self.window_seconds, self.overlap_seconds)
            results.append(Transcript(source=name, duration=round(len(audio) / SAMPLE_RATE, 3)))
            window_spans.append(spans)
            jobs += [_Job(i, w, audio[a:b], contexts[i]) for w, (a, b) in enumerate(spans)]
        texts = self._decode(jobs, results)
        for i, result in enumerate(results):
            if result.error is not None:
                continue
            spans = window_spans[i]
            result.text, result.segments = join_windows([texts[(i, w)] for w in range(len(spans))], spans)
        return results

    def _decode(self, jobs: list[_Job], results: list[Transcript]) -> dict[tuple[int, int], str]:
        """Run the backend over all windows, longest first (least padding); a failing batch is retried
        clip by clip so one bad clip costs only its own file."""
        texts: dict[tuple[int, int], str] = {}
        speech = []
        for job in jobs:
            if has_speech(job.samples):
                speech.append(job)
            else:  # silence, a tone, hum: "" without running the model, which would invent words
                texts[(job.item, job.window)] = ""
        for i in {job.item for job in jobs} - {job.item for job in speech}:
            results[i].no_speech = True
        speech.sort(key=lambda j: -len(j.samples))
        batches = [speech[k : k + self.batch_size] for k in range(0, len(speech), self.batch_size)]
        for batch in tqdm(batches, desc="transcribing", unit="batch", disable=not self.progress):
            try:
                outputs = self.backend.decode([j.samples for j in batch], [j.context for j in batch])
            except Exception:  # noqa: BLE001 - isolate the failing clip below
                outputs = None
            for k, job in enumerate(batch):
                if outputs is not None:
                    texts[(job.item, job.window)] = outputs[k]
                    continue
                try:
                    texts[(job.item, job.window)] = self.backend.decode([job.samples], [job.context])[0]
                except Exception as err:  # noqa: BLE001 - reported per file, others go on
                    results[job.item].error = f"{results[job.item].source}: transcription failed ({err!r})"
                    texts[(job.item, job.window)] = ""
        return texts


def transcribe(
    inputs: AudioInput | Sequence[AudioInput],
    model: str | Path | ASRModel | Backend | None = None,
    context: str | Sequence[str | None] | None = None,
    **kwargs,
) -> list[Transcript]:
    """One-call convenience: ``transcribe("talk.wav", model="checkpoints/offline")``."""
    many = isinstance(inputs, list | tuple)
    return Transcriber(model, **kwargs)(list(inputs) if many else [inputs], context=context)
