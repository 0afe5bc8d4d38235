"""Corpora in, training examples out: manifests, audiofolders, hub datasets, the synthetic corpus.

Every source yields rows ``{"id", "audio", "text", "context"?}`` where ``audio`` is a path, raw
bytes or a 16 kHz array. Rows that cannot be used (missing or empty text, unreadable, NaN, silent
or over-long audio) are skipped and recorded in :class:`BadRows` with the file name and the reason,
so a long run neither crashes nor loses data silently.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from asr.lengths import encoder_frames
from asr.processing import ASRProcessor

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a")


@dataclass
class BadRows:
    """Skipped rows with their file names and reasons; ``summary()`` is printed at the end of a run."""

    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, reason: str) -> None:
        self.rows.append((name, reason))
        log.warning("skipping %s: %s", name, reason)

    def __len__(self) -> int:
        return len(self.rows)

    def summary(self) -> str:
        if not self.rows:
            return "bad data: none skipped"
        kinds = Counter(reason.split(":")[0] for _, reason in self.rows)
        head = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
        files = "; ".join(f"{name} ({reason})" for name, reason in self.rows[:10])
        more = f"; ... {len(self.rows) - 10} more" if len(self.rows) > 10 else ""
        return f"bad data: {len(self.rows)} rows skipped ({head}): {files}{more}"

    def write(self, path: Path) -> None:
        path.write_text("".join(json.dumps({"file": n, "reason": r}) + "\n" for n, r in self.rows))


def read_manifest(path: str | Path, bad: BadRows, limit: int | None = None) -> list[dict[str, Any]]:
    """JSONL rows with ``audio`` (relative to the manifest's folder or absolute) and ``text``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    with path.open(encoding="utf-8", errors="replace") as lines:  # line by line: large manifests
        return _manifest_rows(path, lines, bad, limit)


def _manifest_rows(path: Path, lines: Any, bad: BadRows, limit: int | None) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            bad.add(f"{path}:{n}", f"invalid json: {err}")
            continue
        if not row.get("audio"):
            bad.add(f"{path}:{n}", "missing audio: no 'audio' field")
            continue
        audio = Path(row["audio"])
        audio = audio if audio.is_absolute() else path.parent / audio
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            bad.add(str(audio), "empty transcript: 'text' missing or empty")
            continue
        rows.append({**row, "id": str(row.get("utt_id") or audio.stem), "audio": str(audio), "text": text})
        if limit and len(rows) >= limit:
            break
    return rows


def read_audiofolder(folder: str | Path, bad: BadRows, limit: int | None = None) -> list[dict[str, Any]]:
    """A HF-style audiofolder: audio files plus ``metadata.jsonl`` or ``metadata.csv`` with
    ``file_name`` and ``text`` (or ``transcription``)."""
    folder = Path(folder)
    meta_jsonl, meta_csv = folder / "metadata.jsonl", folder / "metadata.csv"
    if meta_jsonl.is_file():
        entries = [json.loads(line) for line in meta_jsonl.read_text().splitlines() if line.strip()]
    elif meta_csv.is_file():
        with meta_csv.open(newline="") as f:
            entries = list(csv.DictReader(f))
    else:
        raise FileNotFoundError(f"{folder}: audiofolder needs metadata.jsonl or metadata.csv")
    rows = []
    for entry in entries:
        name = entry.get("file_name")
        text = entry.get("text", entry.get("transcription"))
        if not name:
            bad.add(str(folder), "missing audio: metadata row without file_name")
            continue
        if not isinstance(text, str) or not text.strip():
            bad.add(str(folder / name), "empty transcript: no text in metadata")
            continue
        rows.append({"id": Path(name).stem, "audio": str(folder / name), "text": text})
        if limit and len(rows) >= limit:
            break
    return rows


@dataclass(frozen=True)
class HubClip:
    """Where a hub row's audio is: its position in the split's stream. The index pass reads the
    text column only; the feature store's build streams the audio once (:func:`stream_hub_audio`),
    so no audio is ever held for the whole corpus."""

    dataset: str
    config: str | None
    split: str
    index: int
    audio_column: str = "audio"
    streaming: bool = True

    @property
    def name(self) -> str:
        return f"{self.dataset}[{self.config or ''}:{self.split}]#{self.index}"

    @property
    def store_key(self) -> str:
        """What identifies its audio in the feature store (:func:`asr.store.source_key`)."""
        return f"hub|{self.dataset}|{self.config}|{self.split}|{self.index}"


def _hub_dataset(name: str, config: str | None, split: str, streaming: bool) -> Any:
    from datasets import load_dataset

    from asr.sources import hub_reachable, offline_hint

    if not Path(name).exists() and not hub_reachable():
        raise RuntimeError(
            f"dataset {name!r}: the Hugging Face Hub is unreachable (offline?). {offline_hint()}"
        )
    return load_dataset(name, config, split=split, streaming=streaming)


def read_hub(
    name: str,
    bad: BadRows,
    config: str | None = None,
    split: str = "train",
    text_column: str = "text",
    audio_column: str = "audio",
    streaming: bool = True,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of a hub dataset (LibriSpeech, Common Voice...), text only: ``audio`` is a
    :class:`HubClip`. With ``streaming`` nothing is downloaded up front, and only the text (and
    id) columns are read here (parquet datasets skip the audio bytes entirely)."""
    ds = _hub_dataset(name, config, split, streaming)
    if ds.column_names is not None:  # known up front: read the text (and id) columns only
        if text_column not in ds.column_names:
            raise ValueError(f"dataset {name!r}: no column {text_column!r} (has {ds.column_names})")
        ds = ds.select_columns([c for c in (text_column, "id") if c in ds.column_names])
    rows = []
    for i, example in enumerate(ds):  # a stream: one example at a time, audio (if any) dropped
        clip = HubClip(name, config, split, i, audio_column, streaming)
        text = example.get(text_column)
        if not isinstance(text, str) or not text.strip():
            bad.add(clip.name, "empty transcript")
            continue
        rows.append({"id": str(example.get("id") or clip.name), "audio": clip, "text": text})
        if limit and len(rows) >= limit:
            break
    return rows


def stream_hub_audio(clips: list[HubClip]) -> Any:
    """``(clip, file bytes or decoded array dict)`` for the wanted clips of one split, in stream
    order, reading the stream once and stopping after the last wanted row. Audio stays undecoded
    (``Audio(decode=False)``) and is decoded by us with soundfile: no FFmpeg or torchcodec."""
    from datasets import Audio

    first = clips[0]
    wanted = {c.index: c for c in clips}
    ds = _hub_dataset(first.dataset, first.config, first.split, first.streaming)
    ds = ds.cast_column(first.audio_column, Audio(decode=False))
    last = max(wanted)
    for i, example in enumerate(ds.select_columns([first.audio_column])):
        if i in wanted:
            audio = example[first.audio_column]
            yield wanted[i], audio.get("bytes") or audio.get("path")
        if i >= last:
            return


def read_source(spec: dict[str, Any], bad: BadRows) -> list[dict[str, Any]]:
    """One corpus from its config entry: ``{type: manifest|audiofolder|hub|synthetic, ...}``."""
    kind = spec.get("type")
    limit = spec.get("limit")
    if kind == "manifest":
        return read_manifest(spec["path"], bad, limit)
    if kind == "audiofolder":
        return read_audiofolder(spec["path"], bad, limit)
    if kind == "hub":
        args = {
            k: spec[k] for k in ("config", "split", "text_column", "audio_column", "streaming") if k in spec
        }
        return read_hub(spec["name"], bad, limit=limit, **args)
    if kind == "synthetic":
        from asr.synth import default_corpus

        train, dev = default_corpus(int(spec["n_train"]), int(spec["n_dev"]), seed=int(spec.get("seed", 0)))
        split = spec.get("split", "train")
        if split not in ("train", "dev"):
            raise ValueError(f"synthetic data split={split!r}: expected train or dev")
        return read_manifest(train if split == "train" else dev, bad, limit)
    raise ValueError(f"data source type={kind!r}: expected manifest, audiofolder, hub or synthetic")


@dataclass
class Example:
    """A prepared training example: encoder frames (cached) or features, and its target."""

    id: str
    text: str
    frames: torch.Tensor | None = None  # (T, width) encoder output, when cached
    features: torch.Tensor | None = None  # (n_mels, T_mel) log-mel, when not
    mel_length: int = 0
    context: str | None = None
    first_pass: list[str] | None = None  # two-pass mode: the first pass's hypotheses

    @property
    def length(self) -> int:
        return self.frames.shape[0] if self.frames is not None else encoder_frames(self.mel_length)


class Collator:
    """Batches examples: pads frames (or features), builds prompts with exactly as many audio
    positions as the projector gives each clip, and masks everything but the transcript.

    ``generation=True`` builds left-padded prompts without transcripts (for ``generate``)."""

    def __init__(self, processor: ASRProcessor, generation: bool = False) -> None:
        self.processor = processor
        self.generation = generation

    def __call__(self, batch: list[Example]) -> dict[str, torch.Tensor]:
        """Rows a worker could not use (anything but an :class:`Example`: ``asr.corpus.Skipped``)
        leave the batch and come back under ``"skipped"``, for the run to report by name."""
        skipped = [ex for ex in batch if not isinstance(ex, Example)]
        batch = [ex for ex in batch if isinstance(ex, Example)]
        if not batch:
            return {"skipped": skipped}
        out = self._collate(batch)
        if skipped:
            out["skipped"] = skipped
        return out

    def _collate(self, batch: list[Example]) -> dict[str, torch.Tensor]:
        n_audio = self.processor.audio_positions([ex.length for ex in batch])
        contexts = [ex.context for ex in batch]
        first_pass = [ex.first_pass for ex in batch]
        if self.generation:
            out = self.processor.prompts(n_audio, contexts=contexts, first_pass=first_pass)
        else:
            texts = [ex.text for ex in batch]
            out = self.processor.prompts(
                n_audio, texts, contexts, padding_side="right", first_pass=first_pass
            )
        if batch[0].frames is not None:
            lengths = torch.tensor([ex.frames.shape[0] for ex in batch])
            frames = torch.zeros(
                len(batch), int(lengths.max()), batch[0].frames.shape[1], dtype=batch[0].frames.dtype
            )
            for i, ex in enumerate(batch):
                frames[i, : ex.frames.shape[0]] = ex.frames
            out.update(encoder_frames=frames, encoder_lengths=lengths)
        else:
            width = max(ex.features.shape[-1] for ex in batch)
            features = torch.stack(
                [
                    torch.nn.functional.pad(
                        ex.features, (0, width - ex.features.shape[-1]), value=float(ex.features.min())
                    )
                    for ex in batch
                ]
            )
            out.update(input_features=features, mel_lengths=torch.tensor([ex.mel_length for ex in batch]))
        return out


MAX_CHARS_PER_SECOND = 40.0  # the corpora here peak at 27.5 (a 0.18 s "three"), typical 7-16
CHAR_SLACK = 20  # characters allowed on top, so one short word on a very short clip passes
MAX_LABEL_TOKENS = 448  # Whisper's own cap on a 30 s window's tokens


def implausible_transcript(
    text: str,
    seconds: float,
    tokenizer: Any,
    max_chars_per_second: float = MAX_CHARS_PER_SECOND,
    max_label_tokens: int = MAX_LABEL_TOKENS,
) -> str | None:
    """Why a transcript cannot belong to ``seconds`` of audio (a misaligned row), or None.

    One such row (2 s of audio, 10,000 characters) once took a 4-step run from 1.6 to 17 GB, so
    rows are checked against the audio's length before anything is batched."""
    allowed = max_chars_per_second * seconds + CHAR_SLACK
    if len(text) > allowed:
        return f"implausible transcript: {len(text)} characters for {seconds:.2f} s of audio (at most {allowed:.0f})"
    if len(text.encode()) <= max_label_tokens:  # byte-level BPE: never more tokens than bytes
        return None
    tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    if tokens > max_label_tokens:
        return f"implausible transcript: {tokens} tokens, over the cap of {max_label_tokens}"
    return None


def hotword_context(text: str, vocabulary: list[str], rng: random.Random) -> str:
    """A hot-word list for prompt-conditioned training: some words of the transcript mixed with
    distractors, shuffled, so the model learns to use (not copy) the context."""
    words = [w for w in text.split() if len(w) > 2] or text.split()
    picked = rng.sample(words, min(len(words), rng.randint(1, 3)))
    picked += rng.sample(vocabulary, min(len(vocabulary), rng.randint(1, 3)))
    rng.shuffle(picked)
    return ", ".join(dict.fromkeys(picked))
