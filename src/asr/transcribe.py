"""Transcribe files or arrays of any length, in batches, with one error per bad file.

Audio longer than Whisper's 30 s window is cut into overlapping windows (28 s, 4 s overlap). The
model gives no timestamps, so the windows' transcripts are joined by aligning their words: the
longest run of words that the end of one window and the start of the next share, searched only
in the stretch of each that the overlap can hold, is the seam. The left window's words are kept
up to the middle of that run and the right window's after it, so no word is dropped or doubled.
When the two sides share no word (noise, a disagreement), the cut falls back to the overlap's
time midpoint, estimated from each window's speaking rate.

Any backend that turns a batch of <= 30 s clips into text can be plugged in: our
:class:`~asr.modeling.ASRModel`, or faster-whisper on the packaged Whisper tiny.en (the baseline).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from asr.audio import SAMPLE_RATE, WHISPER_WINDOW_SECONDS, AudioError, load_audio
from asr.config import ASRConfig
from asr.modeling import ASRModel

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "checkpoints" / "offline"
FASTER_WHISPER = "faster-whisper"
WINDOW_SECONDS = 28.0
OVERLAP_SECONDS = 4.0
SILENCE_RMS = 1e-3  # -60 dBFS: below this a window holds no speech worth decoding

AudioInput = str | Path | bytes | np.ndarray


# --------------------------------------------------------------------------- backends


class Backend(Protocol):
    """Turns a batch of 16 kHz mono clips (each <= 30 s) into text, one string per clip."""

    name: str

    def decode(self, clips: list[np.ndarray], contexts: list[str | None]) -> list[str]: ...


class ModelBackend:
    """Our encoder-projector-LLM model (greedy, or beam search with ``num_beams > 1``)."""

    def __init__(
        self, model: ASRModel, num_beams: int = 1, max_new_tokens: int | None = None, name: str = "asr-llm"
    ) -> None:
        self.model = model.eval()
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens  # None: the model's cap from the clip's duration
        self.name = name

    @torch.inference_mode()
    def decode(self, clips: list[np.ndarray], contexts: list[str | None]) -> list[str]:
        return self.model.transcribe(
            clips, context=contexts, num_beams=self.num_beams, max_new_tokens=self.max_new_tokens
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

        from asr.sources import packaged_whisper_dir

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


def load_model(path: str | Path = DEFAULT_MODEL, dtype: torch.dtype = torch.float32) -> ASRModel:
    """A checkpoint saved by ``ASRModel.save_pretrained``; the default path falls back to the untrained
    offline model (with a warning) until a trained checkpoint is shipped there."""
    path = Path(path)
    if path == DEFAULT_MODEL and not (path / "config.json").is_file():
        warnings.warn(
            f"{path} does not exist yet: using the UNTRAINED offline model (packaged Whisper tiny.en + "
            "SmolLM2-135M, random projector); its transcripts are meaningless. Pass --model CHECKPOINT_DIR.",
            stacklevel=2,
        )
        return ASRModel.from_sources(ASRConfig(), dtype).eval()
    return ASRModel.from_pretrained(path, dtype=dtype).eval()


def load_backend(
    model: str | Path | ASRModel | Backend = DEFAULT_MODEL,
    num_beams: int = 1,
    compute_type: str = "int8",
    threads: int | None = None,
    max_new_tokens: int | None = None,
) -> Backend:
    """``faster-whisper``, a checkpoint directory, a loaded :class:`ASRModel`, or a ready backend."""
    if isinstance(model, ASRModel):
        return ModelBackend(model, num_beams, max_new_tokens)
    if isinstance(model, str | Path):
        if str(model) == FASTER_WHISPER:
            return FasterWhisperBackend(compute_type, num_beams, threads)
        trained = (Path(model) / "config.json").is_file()
        name = Path(model).name if trained else "asr-llm UNTRAINED"
        return ModelBackend(load_model(model), num_beams, max_new_tokens, name=name)
    return model


# --------------------------------------------------------------------------- windows and stitching


def plan_windows(
    num_samples: int, window_seconds: float = WINDOW_SECONDS, overlap_seconds: float = OVERLAP_SECONDS
) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges covering the clip; one range when it fits Whisper's 30 s window.

    Windows step by ``window - overlap``; the last one is pulled back to end at the clip's end, so no
    window is a sliver (its overlap with the one before is then larger, which stitching handles).
    """
    if num_samples <= WHISPER_WINDOW_SECONDS * SAMPLE_RATE:
        return [(0, num_samples)]
    window = int(window_seconds * SAMPLE_RATE)
    step = int((window_seconds - overlap_seconds) * SAMPLE_RATE)
    if step <= 0:
        raise ValueError(f"overlap {overlap_seconds} s must be shorter than the window {window_seconds} s")
    spans = []
    start = 0
    while start + window < num_samples:
        spans.append((start, start + window))
        start += step
    spans.append((max(0, num_samples - window), num_samples))
    return spans


def _key(word: str) -> str:
    """What two windows' versions of a word must share to match: letters and digits, lower case."""
    return re.sub(r"[^\w']", "", word.lower())


def _words_in(seconds: float, words: int, duration: float) -> int:
    return round(words * seconds / duration) if duration > 0 else 0


def stitch(texts: Sequence[str], spans: Sequence[tuple[float, float]]) -> list[list[str]]:
    """Join consecutive windows' transcripts; returns the words each window contributes.

    ``spans`` are the windows' ``(start, end)`` times (any unit). ``" ".join`` of all pieces is the
    full transcript; the pieces also give SRT cues.
    """
    if len(texts) != len(spans):
        raise ValueError(f"{len(texts)} transcripts for {len(spans)} windows")
    pieces = [text.split() for text in texts]
    for i in range(1, len(pieces)):
        left, right = pieces[i - 1], pieces[i]
        overlap = spans[i - 1][1] - spans[i][0]
        if not left or not right or overlap <= 0:
            continue
        left_words, right_words = len(texts[i - 1].split()), len(texts[i].split())
        left_duration = spans[i - 1][1] - spans[i - 1][0]
        right_duration = spans[i][1] - spans[i][0]
        # search regions: twice the words the overlap should hold, plus slack for rate changes
        tail_n = min(len(left), 2 * _words_in(overlap, left_words, left_duration) + 3)
        head_n = min(len(right), 2 * _words_in(overlap, right_words, right_duration) + 3)
        tail = [_key(w) for w in left[-tail_n:]]
        head = [_key(w) for w in right[:head_n]]
        match = SequenceMatcher(None, tail, head, autojunk=False).find_longest_match(0, tail_n, 0, head_n)
        enough = match.size >= 2 or (match.size == 1 and min(tail_n, head_n) <= 3)
        if enough and tail[match.a]:
            half = match.size // 2
            keep_left = len(left) - tail_n + match.a + half
            pieces[i - 1] = left[:keep_left]
            pieces[i] = right[match.b + half :]
        else:  # no shared words: cut at the overlap's midpoint, estimated from each side's word rate
            drop_left = _words_in(overlap / 2, left_words, left_duration)
            drop_right = _words_in(overlap / 2, right_words, right_duration)
            pieces[i - 1] = left[: len(left) - drop_left]
            pieces[i] = right[drop_right:]
    return pieces


# --------------------------------------------------------------------------- transcripts


@dataclass
class Segment:
    """The words one window contributes, between the midpoints of its overlaps (approximate times)."""

    start: float
    end: float
    text: str


@dataclass
class Transcript:
    source: str
    text: str = ""
    duration: float = 0.0
    segments: list[Segment] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def segments_for(pieces: list[list[str]], spans: list[tuple[float, float]]) -> list[Segment]:
    """One cue per window: from the midpoint of its overlap with the previous window to the midpoint
    of its overlap with the next (the model gives no word timestamps)."""
    segments = []
    for i, (words, (start, end)) in enumerate(zip(pieces, spans, strict=True)):
        cue_start = (start + spans[i - 1][1]) / 2 if i > 0 else start
        cue_end = (end + spans[i + 1][0]) / 2 if i + 1 < len(spans) else end
        if words:
            segments.append(Segment(round(cue_start, 3), round(cue_end, 3), " ".join(words)))
    return segments


def is_silent(samples: np.ndarray) -> bool:
    """Digital silence or near it (RMS below -60 dBFS): no speech to decode."""
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) < SILENCE_RMS


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
        model: str | Path | ASRModel | Backend = DEFAULT_MODEL,
        batch_size: int = 8,
        num_beams: int = 1,
        window_seconds: float = WINDOW_SECONDS,
        overlap_seconds: float = OVERLAP_SECONDS,
        compute_type: str = "int8",
        threads: int | None = None,
        max_new_tokens: int | None = None,
        progress: bool = False,
    ) -> None:
        self.backend = load_backend(model, num_beams, compute_type, threads, max_new_tokens)
        self.batch_size = batch_size
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
            spans = plan_windows(len(audio), self.window_seconds, self.overlap_seconds)
            results.append(Transcript(source=name, duration=round(len(audio) / SAMPLE_RATE, 3)))
            window_spans.append(spans)
            jobs += [_Job(i, w, audio[a:b], contexts[i]) for w, (a, b) in enumerate(spans)]
        texts = self._decode(jobs, results)
        for i, result in enumerate(results):
            if result.error is not None:
                continue
            spans = [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in window_spans[i]]
            pieces = stitch([texts[(i, w)] for w in range(len(spans))], spans)
            result.text = " ".join(w for piece in pieces for w in piece)
            result.segments = segments_for(pieces, spans)
        return results

    def _decode(self, jobs: list[_Job], results: list[Transcript]) -> dict[tuple[int, int], str]:
        """Run the backend over all windows, longest first (least padding); a failing batch is retried
        clip by clip so one bad clip costs only its own file."""
        texts: dict[tuple[int, int], str] = {}
        speech = []
        for job in jobs:
            if is_silent(job.samples):
                texts[(job.item, job.window)] = ""
            else:
                speech.append(job)
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
    model: str | Path | ASRModel | Backend = DEFAULT_MODEL,
    context: str | Sequence[str | None] | None = None,
    **kwargs,
) -> list[Transcript]:
    """One-call convenience: ``transcribe("talk.wav", model="checkpoints/offline")``."""
    many = isinstance(inputs, list | tuple)
    return Transcriber(model, **kwargs)(list(inputs) if many else [inputs], context=context)


# --------------------------------------------------------------------------- output files


def _srt_time(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def to_srt(transcript: Transcript) -> str:
    """SubRip text: one cue per window (see :func:`segments_for`), so cue times are window-level."""
    cues = [
        f"{n}\n{_srt_time(s.start)} --> {_srt_time(s.end)}\n{s.text}\n"
        for n, s in enumerate(transcript.segments, start=1)
    ]
    return "\n".join(cues)


FORMATS = ("txt", "json", "srt")


def write_outputs(
    transcripts: list[Transcript], output_dir: str | Path, formats: Sequence[str]
) -> list[Path]:
    """One file per input and format, named after the input's stem (made unique when stems clash)."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown output formats {sorted(unknown)}; choose from {FORMATS}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    used: set[str] = set()
    for n, t in enumerate(transcripts):
        stem = Path(t.source).stem if not t.source.startswith("<") else f"input-{n}"
        if stem in used:
            stem = f"{stem}-{n}"
        used.add(stem)
        for fmt in formats:
            path = out / f"{stem}.{fmt}"
            if fmt == "json":
                path.write_text(json.dumps(t.to_dict(), indent=2, ensure_ascii=False) + "\n")
            elif fmt == "srt":
                path.write_text(to_srt(t))
            else:
                path.write_text(t.text + "\n")
            written.append(path)
    return written
