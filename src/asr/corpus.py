"""The training input pipeline at scale: a compact row index, the feature store, datasets that
read it (or decode and augment audio in workers), and a sampler that mixes corpora.

Flow (``asr.training.loop.prepare_data`` drives it):

1. :func:`index_sources` reads every corpus lazily (manifests line by line) into compact
   :class:`Row` objects: text and where the audio is, never the audio itself.
2. :func:`build_store` encodes each clip that the :class:`~asr.store.FeatureStore` does not
   hold yet, once: each rank its own share of the rows, DataLoader workers decoding. Unusable
   clips are recorded in the store with their reason, so no later run decodes them again.
3. :class:`StoreDataset` serves frames memory-mapped from the store; :class:`AudioDataset`
   decodes (and augments) audio in workers when the encoder runs every step instead.
4. :class:`MixtureSampler` draws each epoch's rows from the corpora by weight, groups them by
   length, and cuts batches of a fixed size or of a budget of audio seconds; deterministic in
   (seed, epoch), which is what exact resume relies on.
"""

from __future__ import annotations

import itertools
import logging
import random
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from asr.audio import AudioError, is_silent, load_audio
from asr.augment import sample_rng
from asr.data import (
    MAX_CHARS_PER_SECOND,
    MAX_LABEL_TOKENS,
    BadRows,
    Example,
    HubClip,
    hotword_context,
    implausible_transcript,
    read_source,
    stream_hub_audio,
)
from asr.lengths import SAMPLE_RATE, encoder_frames, mel_frames, seconds
from asr.prompt import normalize_target
from asr.store import FeatureStore, FileKeys, HypothesisStore, encoder_key

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Row:
    """One clip of the index: where its audio is, its target and which corpus it came from."""

    id: str
    audio: Any  # a path (str) normally; bytes or an array for in-memory sources
    text: str
    corpus: int = 0
    context: str | None = None
    first_pass: list[str] | None = None
    key: str = ""  # the store key of the audio (asr.store.source_key)
    frames: int = 0  # encoder frames, once known (from the store, or the duration)


def fixed_subset(n: int, fraction: float, rng: random.Random) -> list[int]:
    """A seeded subset of ``round(fraction * n)`` row positions (all when fraction >= 1)."""
    if fraction >= 1:
        return list(range(n))
    return sorted(rng.sample(range(n), round(fraction * n)))


def index_sources(
    specs: list[dict[str, Any]], bad: BadRows, seed: int = 0, text_normalization: str = "none"
) -> tuple[list[Row], list[float]]:
    """Rows of every corpus and each corpus's sampling weight.

    A corpus entry may keep a fixed part of itself with ``fraction`` (a seeded subset, the same
    every run) and sets how often its rows are drawn per epoch with ``weight`` (2: each row
    twice; 0.5: a fresh half every epoch): :class:`MixtureSampler` applies it to indices, the
    rows themselves are held once."""
    rng = random.Random(seed)
    rows: list[Row] = []
    weights = []
    for corpus, spec in enumerate(specs):
        part = read_source(spec, bad)
        keep = fixed_subset(len(part), float(spec.get("fraction", 1.0)), rng)
        for i in keep:
            r = part[i]
            text = normalize_target(r["text"], text_normalization)
            frames = frames_of(float(r["duration"])) if r.get("duration") else 0
            rows.append(Row(r["id"], r["audio"], text, corpus, r.get("context"), frames=frames))
        weights.append(float(spec.get("weight", 1.0)))
    return rows, weights


def add_contexts(rows: list[Row], context_prob: float, seed: int) -> None:
    """Prompt-conditioned training: a hot-word context for a ``context_prob`` share of rows,
    drawn once per run (seeded)."""
    if context_prob <= 0:
        return
    rng = random.Random(seed)
    vocabulary = sorted({w for r in rows for w in r.text.split()})
    for r in rows:
        if rng.random() < context_prob:
            r.context = hotword_context(r.text, vocabulary, rng)


# --------------------------------------------------------------------------- building the store


class DecodeDataset(torch.utils.data.Dataset):
    """Decodes and checks rows in DataLoader workers: ``(i, audio, None)`` or ``(i, None, reason)``."""

    def __init__(self, rows: list[Row], max_seconds: float) -> None:
        self.rows, self.max_seconds = rows, max_seconds

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        row = self.rows[i]
        try:
            audio = row.audio
            if isinstance(audio, dict):
                audio = load_audio(audio["array"], audio["sampling_rate"], max_seconds=self.max_seconds)
            else:
                audio = load_audio(audio, max_seconds=self.max_seconds)
        except AudioError as err:
            return i, None, f"bad audio: {err}"
        except Exception as err:  # noqa: BLE001 - any decoder failure is this row's, not the run's
            return i, None, f"bad audio: {type(err).__name__}: {err}"
        if is_silent(audio):
            return i, None, "silent audio: RMS below -60 dBFS"
        return i, audio, None


def _row_name(row: Row) -> str:
    if isinstance(row.audio, HubClip):
        return row.audio.name
    return row.audio if isinstance(row.audio, str) else row.id


def fill_keys(rows: list[Row], store: FeatureStore) -> None:
    """Give every row its store key (:func:`asr.store.source_key`), reusing the file hashes
    remembered beside the store (read only when some row has no key yet)."""
    missing = [row for row in rows if not row.key]
    if not missing:
        return
    keys = FileKeys(store.dir.parent / "file-keys.jsonl")
    for row in missing:
        row.key = keys(row.audio)
    keys.save()


def build_store(  # noqa: PLR0913 - the rows, the models and how the work is split
    rows: list[Row],
    model: Any,
    processor: Any,
    store: FeatureStore,
    hypotheses: HypothesisStore | None = None,
    max_seconds: float = 30.0,
    batch_size: int = 16,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> int:
    """Encode (and first-pass) this rank's share of the rows the stores lack; returns how many
    clips this rank decoded. Every rank must call :meth:`FeatureStore.refresh` after all ranks
    are done (a barrier) to see the others' shards."""
    from tqdm.auto import tqdm

    two_pass = hypotheses is not None and model.config.first_pass != "none"
    fill_keys(rows, store)
    unique: dict[str, Row] = {}
    for row in rows:
        unique.setdefault(row.key, row)
    # the split depends on the rows only, never on what the store holds when a rank looks
    mine = [
        row
        for row in list(unique.values())[rank::world_size]
        if row.key not in store or (two_pass and row.key in store.entries and hypotheses.get(row.key) is None)
    ]
    mine.sort(key=lambda r: r.frames)  # length-sorted batches: less padding
    if not mine:
        return 0
    local = [row for row in mine if not isinstance(row.audio, HubClip)]
    loader = torch.utils.data.DataLoader(
        DecodeDataset(local, max_seconds),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=list,
    )
    decoded = ([(local[i], audio, reason) for i, audio, reason in batch] for batch in loader)
    hub = _hub_batches(
        [row for row in mine if isinstance(row.audio, HubClip)], max_seconds, batch_size, num_workers
    )
    writer = store.writer(rank)
    bar = tqdm(total=len(mine), desc="feature store", disable=not progress)
    for batch in itertools.chain(decoded, hub):
        good = []
        for row, audio, reason in batch:
            if reason:
                writer.skip(row.key, reason)
                log.warning("skipping %s: %s", _row_name(row), reason)
            else:
                good.append((row, audio))
        _encode_into(good, model, processor, store, writer, hypotheses if two_pass else None)
        bar.update(len(batch))
    bar.close()
    writer.close()
    return len(mine)


def _hub_batches(
    rows: list[Row], max_seconds: float, batch_size: int, threads: int
) -> Iterator[list[tuple[Row, np.ndarray | None, str | None]]]:
    """Hub rows decoded as their split is streamed (once per split, in stream order), in a pool of
    ``threads`` (soundfile decodes outside the GIL)."""
    by_split: dict[tuple, list[Row]] = {}
    for row in rows:
        clip = row.audio
        by_split.setdefault((clip.dataset, clip.config, clip.split, clip.audio_column), []).append(row)
    with ThreadPoolExecutor(max(threads, 1)) as pool:
        for split_rows in by_split.values():
            row_of = {row.audio.index: row for row in split_rows}
            pending = []
            for clip, payload in stream_hub_audio(
                sorted((r.audio for r in split_rows), key=lambda c: c.index)
            ):
                pending.append((row_of[clip.index], payload))
                if len(pending) == batch_size:
                    yield list(pool.map(lambda item: _decode_payload(*item, max_seconds), pending))
                    pending = []
            if pending:
                yield list(pool.map(lambda item: _decode_payload(*item, max_seconds), pending))


def _decode_payload(row: Row, payload: Any, max_seconds: float) -> tuple[Row, np.ndarray | None, str | None]:
    _, audio, reason = DecodeDataset([replace(row, audio=payload)], max_seconds)[0]  # bytes or a path
    return row, audio, reason


def _encode_into(
    good: list[tuple[Row, np.ndarray]],
    model: Any,
    processor: Any,
    store: FeatureStore,
    writer: Any,
    hypotheses: HypothesisStore | None,
) -> None:
    """One decoded batch: frames of the clips the store lacks, first pass where it is missing."""
    new = [(row, audio) for row, audio in good if row.key not in store.entries]
    if new:
        feats = processor.features([audio for _, audio in new])
        with torch.no_grad():
            frames, lengths = model.encode(
                feats["input_features"].to(model.device), feats["mel_lengths"].to(model.device)
            )
        for n, (row, audio) in enumerate(new):
            writer.add(row.key, frames[n, : int(lengths[n])].to(torch.float16).cpu().numpy(), len(audio))
    if hypotheses is not None:
        need = [(row, audio) for row, audio in good if hypotheses.get(row.key) is None]
        if need:
            found = model.run_first_pass([audio for _, audio in need])
            hypotheses.put((row.key, h) for (row, _), h in zip(need, found, strict=True))


def usable_rows(  # noqa: PLR0913 - the rows and the limits they are checked against
    rows: list[Row],
    store: FeatureStore,
    bad: BadRows,
    tokenizer: Any,
    hypotheses: HypothesisStore | None = None,
    max_chars_per_second: float = MAX_CHARS_PER_SECOND,
    max_label_tokens: int = MAX_LABEL_TOKENS,
) -> list[Row]:
    """Rows the store holds frames for, with their lengths (and hypotheses) filled in; the rest
    are reported once each (skipped audio, implausible transcript) in ``bad``."""
    kept = []
    fill_keys(rows, store)
    for row in rows:
        if row.key not in store:
            bad.add(_row_name(row), "not in the feature store: build it first (asr.corpus.build_store)")
            continue
        if row.key in store.skipped:
            bad.add(_row_name(row), store.skipped[row.key])
            continue
        seconds = store.samples(row.key) / SAMPLE_RATE
        reason = implausible_transcript(row.text, seconds, tokenizer, max_chars_per_second, max_label_tokens)
        if reason:
            bad.add(_row_name(row), reason)
            continue
        row.frames = store.length(row.key)
        if hypotheses is not None:
            row.first_pass = hypotheses.get(row.key)
        kept.append(row)
    return kept


# --------------------------------------------------------------------------- datasets


class StoreDataset(torch.utils.data.Dataset):
    """Examples whose encoder frames come memory-mapped from the feature store."""

    def __init__(self, rows: list[Row], store: FeatureStore) -> None:
        self.rows, self.store = rows, store

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Example:
        row = self.rows[i]
        frames = torch.from_numpy(np.array(self.store.frames(row.key)))  # a copy out of the map
        return Example(row.id, row.text, frames=frames, context=row.context, first_pass=row.first_pass)


@dataclass
class Skipped:
    """A row a worker could not use; the collator passes it on so the run reports it by name."""

    name: str
    reason: str


class AudioDataset(torch.utils.data.Dataset):
    """Examples decoded (and augmented) in DataLoader workers, as log-mel features: the encoder
    runs in the training step. Randomness is a function of (seed, epoch, index), so a resumed run
    augments exactly as an uninterrupted one did."""

    def __init__(
        self,
        rows: list[Row],
        processor: Any,
        augmenter: Any = None,
        seed: int = 0,
        max_seconds: float = 30.0,
    ) -> None:
        self.rows, self.processor, self.augmenter = rows, processor, augmenter
        self.seed, self.max_seconds, self.epoch = seed, max_seconds, 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Example | Skipped:
        row = self.rows[i]
        _, audio, reason = DecodeDataset([row], self.max_seconds)[0]
        if reason:  # reported by the main process (BadRows), not here
            return Skipped(_row_name(row), reason)
        rng = sample_rng(self.seed, self.epoch, i)
        if self.augmenter is not None:
            augmented = self.augmenter(audio, rng)
            # a slowed-down clip near 30 s would leave Whisper's window: keep it as it was
            audio = augmented if len(augmented) <= self.max_seconds * SAMPLE_RATE else audio
        feats = self.processor.features([audio])
        m = int(feats["mel_lengths"][0])
        features = feats["input_features"][0, :, : m + m % 2].clone()
        if self.augmenter is not None:
            features = self.augmenter.features(features, m, rng)
        return Example(
            row.id, row.text, features=features, mel_length=m, context=row.context, first_pass=row.first_pass
        )


def frames_of(seconds: float) -> int:
    """Encoder frames of ``seconds`` of audio (:mod:`asr.lengths`)."""
    return int(encoder_frames(mel_frames(int(seconds * SAMPLE_RATE))))


def in_memory(rows: list[Row], store: FeatureStore) -> list[Example]:
    """The rows' examples with their frames copied out of the store (eval sets, small corpora)."""
    dataset = StoreDataset(rows, store)
    return [dataset[i] for i in range(len(rows))]


def estimate_frames(row: Row) -> int:
    """Encoder frames of a row without decoding it: its manifest duration, else the file header."""
    if row.frames:
        return row.frames
    if isinstance(row.audio, str):
        try:
            import soundfile

            return frames_of(soundfile.info(row.audio).duration)
        except Exception:  # noqa: BLE001 - unreadable: its worker reports it when it decodes it
            return 1
    return 1


# --------------------------------------------------------------------------- sampling


class MixtureSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of row indices, epoch by epoch.

    Each epoch draws every corpus's rows by its weight (2: all rows twice; 0.5: a random half),
    shuffles, sorts within mega-batches by length (less padding) and cuts batches: of
    ``batch_size`` rows, or with ``batch_seconds`` as many rows as fit that budget of padded audio
    (longest clip x rows). Batches are shuffled again, so lengths vary from step to step.
    Deterministic in (seed, epoch): a resumed run replays the same batches."""

    def __init__(  # noqa: PLR0913 - the rows' lengths and corpora, and how to batch them
        self,
        lengths: list[int],
        corpora: list[int],
        weights: list[float],
        batch_size: int,
        seed: int = 0,
        group: bool = True,
        batch_seconds: float | None = None,
    ) -> None:
        self.lengths, self.batch_size, self.seed, self.group = lengths, batch_size, seed, group
        self.batch_frames = frames_of(batch_seconds) if batch_seconds else None
        self.members = [[i for i, c in enumerate(corpora) if c == k] for k in range(len(weights))]
        self.weights = weights
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def start_epoch(self, epoch: int) -> None:
        """Named so that accelerate's own ``set_epoch`` calls (which count passes over one
        DataLoader object, wrong after a resume) never reach it."""
        self.epoch = epoch

    def epoch_indices(self, rng: random.Random) -> list[int]:
        order = []
        for members, weight in zip(self.members, self.weights, strict=True):
            whole, frac = int(weight), weight - int(weight)
            for _ in range(whole):
                order += rng.sample(members, len(members))
            order += rng.sample(members, round(frac * len(members)))
        rng.shuffle(order)
        return order

    def _cut(self, chunk: list[int]) -> list[list[int]]:
        if not self.batch_frames:
            return [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        batches, current, longest = [], [], 0
        for i in chunk:  # longest first: a batch's first row sets its padded length
            longest = max(longest, self.lengths[i])
            if current and longest * (len(current) + 1) > self.batch_frames:
                batches.append(current)
                current, longest = [], self.lengths[i]
            current.append(i)
        return [*batches, current] if current else batches

    def batches(self) -> list[list[int]]:
        if self._cache and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = self.epoch_indices(rng)
        if not self.group:
            out = self._cut(order)
        else:
            mega = 50 * self.batch_size
            chunks = [
                sorted(order[i : i + mega], key=lambda j: -self.lengths[j])
                for i in range(0, len(order), mega)
            ]
            out = [b for c in chunks for b in self._cut(c)]
            rng.shuffle(out)
        self._cache = (self.epoch, out)
        return out

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())


# --------------------------------------------------------------------------- small corpora in memory


def prepare_examples(  # noqa: PLR0913 - the rows, the model and how to prepare them
    rows: list[dict[str, Any]],
    model: Any,
    processor: Any,
    bad: BadRows,
    store: FeatureStore | None = None,
    precompute: bool = True,
    max_seconds: float = 30.0,
    text_normalization: str = "none",
    context_prob: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    hypotheses: HypothesisStore | None = None,
) -> list[Example]:
    """Rows (dicts, as :func:`asr.data.read_source` gives them) -> examples held in memory, through
    the same store and checks as a training run: for evaluation sets, tests and benchmarks.

    With ``precompute`` the examples hold encoder frames (from ``store``, or a temporary one);
    without it log-mel features (the encoder then runs in every step: the naive path).
    A two-pass model's first pass runs once per clip and is kept in ``hypotheses``."""
    index = [
        Row(
            str(r.get("id") or r.get("utt_id") or i),
            r["audio"],
            normalize_target(r["text"], text_normalization),
            context=r.get("context"),
        )
        for i, r in enumerate(rows)
    ]
    add_contexts(index, context_prob, seed)
    if not precompute:
        return _decoded_examples(index, processor, bad, max_seconds)
    with tempfile.TemporaryDirectory(prefix="asr-store-") as tmp:
        if store is None:
            store = FeatureStore(tmp, encoder_key(model), model.config.encoder_width)
        if hypotheses is None and model.config.first_pass != "none":
            hypotheses = HypothesisStore(tmp, "examples")
        build_store(index, model, processor, store, hypotheses, max_seconds, batch_size, progress=progress)
        store.refresh()
        return in_memory(usable_rows(index, store, bad, processor.tokenizer, hypotheses), store)


def _decoded_examples(rows: list[Row], processor: Any, bad: BadRows, max_seconds: float) -> list[Example]:
    """Log-mel examples (no encoder, no first pass), with the checks the store path makes."""
    dataset = AudioDataset(rows, processor, max_seconds=max_seconds)
    examples = []
    for i in range(len(rows)):
        ex = dataset[i]
        if isinstance(ex, Skipped):
            bad.add(ex.name, ex.reason)
            continue
        reason = implausible_transcript(ex.text, seconds(ex.mel_length), processor.tokenizer)
        if reason:
            bad.add(_row_name(rows[i]), reason)
            continue
        examples.append(ex)
    return examples
