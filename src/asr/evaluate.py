"""Word and character error rates on a JSONL manifest, with the same normaliser for every system.

Normalisation is Whisper's English normaliser (``EnglishTextNormalizer`` from transformers: lower
case, punctuation and fillers removed, contractions and titles expanded, spelled numbers turned
into digits) with two documented changes:

- its British -> American spelling table is not shipped with transformers (it lives in the hub
  tokenizer repos), so spellings are left as they are (an empty table); our corpora are American
  English, so this changes nothing measurable here;
- numbers are then compared *digit by digit as words*: "26", "twenty six" and "2 6" all become
  "two six", "TWO SIX FOUR EIGHT" and "2648" both become "two six four eight". Whisper's
  normaliser alone turns "two six four eight" into "2648" but "2, 6, 4, 8." into "2 6 4 8" and
  "0351" into "351", which would count a correctly read digit string as several errors depending
  on punctuation; speechocean762 is full of read digit strings. Digit runs that start with 0 are
  spaced before Whisper's normaliser so their leading zeros survive.

WER and CER are corpus-level: total edits over total reference words (characters), not a mean of
per-utterance rates. CER counts the spaces of the normalised text as characters.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import jiwer
from tqdm.auto import tqdm
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from asr import data
from asr.data import BadRows
from asr.inference.transcribe import Transcriber

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@lru_cache(maxsize=1)
def _whisper_normalizer() -> EnglishTextNormalizer:
    return EnglishTextNormalizer({})


def _space_leading_zero(match: re.Match) -> str:
    return " ".join(match.group(0))


def normalize(text: str) -> str:
    """Whisper-style English normalisation with numbers spelled digit by digit (see module doc)."""
    text = re.sub(r"(?<![\d.,])0\d+", _space_leading_zero, text)
    text = _whisper_normalizer()(text)
    text = re.sub(r"(?<=\w)\.(?=\d)", " point ", text)  # Whisper writes 1.5 as "one.5"
    text = text.replace("%", " percent ")
    text = re.sub(r"\d", lambda m: f" {DIGIT_WORDS[int(m.group(0))]} ", text)
    text = re.sub(r"[^\w' ]", " ", text)
    return " ".join(text.split())


INVENTED_BELOW = 0.5  # share of a hypothesis' words found in the reference


@dataclass
class Counts:
    """Edit counts of one or many utterances; rates are ``errors / reference``."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        if self.reference == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.reference

    @property
    def hits(self) -> int:
        return self.reference - self.substitutions - self.deletions

    @property
    def invented(self) -> bool:
        """A hypothesis that shares under half of its words with the reference: fluent text that
        was not said, the failure an LLM decoder is prone to (an empty hypothesis is not one)."""
        hypothesis = self.hits + self.substitutions + self.insertions
        return hypothesis > 0 and self.hits < INVENTED_BELOW * hypothesis

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.reference + other.reference,
        )


def _counts(ref: list[str], hyp: list[str]) -> Counts:
    """Levenshtein alignment counts of token lists; an empty side is all deletions or insertions."""
    if not ref:
        return Counts(insertions=len(hyp))
    if not hyp:
        return Counts(deletions=len(ref), reference=len(ref))
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return Counts(out.substitutions, out.deletions, out.insertions, len(ref))


def word_counts(reference: str, hypothesis: str) -> Counts:
    """Word edits between two already-normalised strings."""
    return _counts(reference.split(), hypothesis.split())


def char_counts(reference: str, hypothesis: str) -> Counts:
    """Character edits (spaces included) between two already-normalised strings."""
    ref, hyp = list(reference), list(hypothesis)
    if not ref or not hyp:
        return _counts(ref, hyp)
    out = jiwer.process_characters(reference, hypothesis)
    return Counts(out.substitutions, out.deletions, out.insertions, len(ref))


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str], normalise: bool = True) -> float:
    """Total word edits / total reference words."""
    f = normalize if normalise else (lambda s: s)
    total = sum((word_counts(f(r), f(h)) for r, h in zip(references, hypotheses, strict=True)), Counts())
    return total.rate


def corpus_cer(references: Sequence[str], hypotheses: Sequence[str], normalise: bool = True) -> float:
    """Total character edits / total reference characters."""
    f = normalize if normalise else (lambda s: s)
    total = sum((char_counts(f(r), f(h)) for r, h in zip(references, hypotheses, strict=True)), Counts())
    return total.rate


# --------------------------------------------------------------------------- manifests and runs


def read_manifest(path: str | Path, limit: int | None = None) -> list[dict]:
    """Rows of a JSONL manifest with absolute ``audio`` paths and a ``utt_id``.

    Reading is :func:`asr.data.read_manifest`'s: rows without audio or transcript cannot be
    scored, so they are skipped and reported by file name (a warning), not silently dropped.
    """
    bad = BadRows()
    rows = data.read_manifest(path, bad, limit)
    if bad:
        warnings.warn(bad.summary(), stacklevel=2)
    return [{**row, "audio": str(Path(row["audio"]).resolve()), "utt_id": row["id"]} for row in rows]


@dataclass
class Result:
    """One system's scores on one manifest."""

    system: str
    utterances: int
    failed: int
    audio_minutes: float
    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    reference_words: int
    seconds: float
    rtf: float  # processing seconds / audio seconds
    invented: int = 0  # hypotheses sharing under half their words with the reference
    samples: list[dict] = field(default_factory=list, repr=False)  # per utterance (the report's lines)

    @property
    def invented_share(self) -> float:
        return self.invented / self.utterances if self.utterances else 0.0

    @property
    def insertion_rate(self) -> float:
        return self.insertions / self.reference_words if self.reference_words else 0.0

    @property
    def deletion_rate(self) -> float:
        return self.deletions / self.reference_words if self.reference_words else 0.0

    def to_dict(self) -> dict:
        rates = {"invented_share": self.invented_share, "insertion_rate": self.insertion_rate}
        scores = {k: v for k, v in asdict(self).items() if k != "samples"}
        return {**scores, **rates, "deletion_rate": self.deletion_rate}


def evaluate(
    transcriber: Transcriber,
    rows: list[dict],
    report: str | Path | None = None,
    chunk: int = 64,
    progress: bool = True,
) -> Result:
    """Transcribe every row, score it, optionally write a per-utterance JSONL report.

    A file that cannot be transcribed counts as an empty hypothesis (all deletions) and is listed
    with its error. The clock covers decoding the audio and the model, not loading the model.
    """
    words, chars, seconds, audio_seconds, failed, invented = Counts(), Counts(), 0.0, 0.0, 0, 0
    lines = []
    bar = tqdm(total=len(rows), desc=f"evaluating {transcriber.name}", unit="utt", disable=not progress)
    for k in range(0, len(rows), chunk):
        part = rows[k : k + chunk]
        start = time.perf_counter()
        transcripts = transcriber([r["audio"] for r in part])
        seconds += time.perf_counter() - start
        for row, t in zip(part, transcripts, strict=True):
            ref, hyp = normalize(row["text"]), normalize(t.text)
            w, c = word_counts(ref, hyp), char_counts(ref, hyp)
            words, chars = words + w, chars + c
            audio_seconds += t.duration or float(row.get("duration", 0.0))
            failed += t.error is not None
            invented += w.invented
            lines.append(
                {
                    "id": row["utt_id"],
                    "audio": row["audio"],
                    "ref": row["text"],
                    "hyp": t.text,
                    "ref_normalised": ref,
                    "hyp_normalised": hyp,
                    "wer": round(w.rate, 4),
                    "errors": {"sub": w.substitutions, "del": w.deletions, "ins": w.insertions},
                    "ref_words": w.reference,
                    "invented": w.invented,
                    "error": t.error,
                }
            )
        bar.update(len(part))
    bar.close()
    if report is not None:
        report = Path(report)
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    return Result(
        system=transcriber.name,
        utterances=len(rows),
        failed=failed,
        audio_minutes=round(audio_seconds / 60, 2),
        wer=words.rate,
        cer=chars.rate,
        substitutions=words.substitutions,
        deletions=words.deletions,
        insertions=words.insertions,
        reference_words=words.reference,
        seconds=round(seconds, 2),
        rtf=seconds / audio_seconds if audio_seconds else float("nan"),
        invented=invented,
        samples=lines,
    )


def format_table(results: Sequence[Result]) -> str:
    """A Markdown table, one row per system, for side-by-side comparison."""
    header = "| system | utts | failed | audio min | WER | CER | sub/del/ins | ins % | del % | invented | seconds | RTF |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for r in results:
        lines.append(
            f"| {r.system} | {r.utterances} | {r.failed} | {r.audio_minutes:.2f} | {100 * r.wer:.2f}% "
            f"| {100 * r.cer:.2f}% | {r.substitutions}/{r.deletions}/{r.insertions} "
            f"| {100 * r.insertion_rate:.1f}% | {100 * r.deletion_rate:.1f}% | {100 * r.invented_share:.1f}% "
            f"| {r.seconds:.1f} | {r.rtf:.3f} |"
        )
    return "\n".join(lines)


COUNT_BINS = ((0, 0), (1, 4), (5, 49), (50, None))  # times a word occurs in the training transcripts


def word_hits(reference: str, hypothesis: str) -> list[bool]:
    """For each word of ``reference`` (normalised), whether the alignment matches it in
    ``hypothesis``: the per-word view that :class:`Counts` sums up."""
    ref = reference.split()
    hits = [False] * len(ref)
    if ref and hypothesis.split():
        for chunk in jiwer.process_words(reference, hypothesis).alignments[0]:
            if chunk.type == "equal":
                hits[chunk.ref_start_idx : chunk.ref_end_idx] = [True] * (
                    chunk.ref_end_idx - chunk.ref_start_idx
                )
    return hits


def training_word_counts(manifests: Sequence[str | Path]) -> dict[str, int]:
    """How often each normalised word occurs in the transcripts of training manifests (each row
    once, whatever weight a data config draws it at)."""
    counts: dict[str, int] = {}
    for manifest in manifests:
        for row in read_manifest(manifest):
            for word in normalize(row["text"]).split():
                counts[word] = counts.get(word, 0) + 1
    return counts


def hits_by_training_count(result: Result, counts: dict[str, int]) -> list[dict]:
    """Word accuracy (share of reference words the hypothesis matches) of each bin of
    :data:`COUNT_BINS`: a model that learns words only from its training speech gets the unseen
    and rare ones wrong, so this separates a data limit from a modelling one."""
    total, right = [0] * len(COUNT_BINS), [0] * len(COUNT_BINS)
    for sample in result.samples:
        ref = sample["ref_normalised"]
        for word, hit in zip(ref.split(), word_hits(ref, sample["hyp_normalised"]), strict=True):
            n = counts.get(word, 0)
            b = next(i for i, (lo, hi) in enumerate(COUNT_BINS) if n >= lo and (hi is None or n <= hi))
            total[b], right[b] = total[b] + 1, right[b] + hit
    words = max(sum(total), 1)
    return [
        {
            "seen": f"{lo}+" if hi is None else f"{lo}" if lo == hi else f"{lo}-{hi}",
            "words": n,
            "share": n / words,
            "accuracy": r / n if n else 0.0,
        }
        for (lo, hi), n, r in zip(COUNT_BINS, total, right, strict=True)
    ]


def format_hits_by_training_count(results: Sequence[Result], rows: Sequence[list[dict]]) -> str:
    """A Markdown table: reference words by how often they occur in the training transcripts,
    with each system's word accuracy on them (``rows``: :func:`hits_by_training_count` of each)."""
    header = (
        "| times in training | reference words | "
        + " | ".join(f"{r.system} accuracy" for r in results)
        + " |"
    )
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for i, first in enumerate(rows[0]):
        accuracies = " | ".join(f"{100 * row[i]['accuracy']:.1f}%" for row in rows)
        lines.append(f"| {first['seen']} | {first['words']} ({100 * first['share']:.1f}%) | {accuracies} |")
    return "\n".join(lines)


def agreement(ours: Result, baseline: Result) -> dict[str, float]:
    """How a system relates to a baseline on the same utterances (for two-pass mode, whose first
    pass is the faster-whisper baseline's own decoder): how often it writes exactly what the
    baseline wrote (after normalising), and its WER where the baseline is right and where it is
    wrong."""
    same = right_n = wrong_n = 0
    right, wrong, base_wrong = Counts(), Counts(), Counts()
    for a, b in zip(ours.samples, baseline.samples, strict=True):
        same += a["hyp_normalised"] == b["hyp_normalised"]
        counts = word_counts(a["ref_normalised"], a["hyp_normalised"])
        if b["hyp_normalised"] == b["ref_normalised"]:
            right, right_n = right + counts, right_n + 1
        else:
            wrong, wrong_n = wrong + counts, wrong_n + 1
            base_wrong = base_wrong + word_counts(b["ref_normalised"], b["hyp_normalised"])
    n = max(len(ours.samples), 1)
    return {
        "same_as_baseline": same / n,
        "baseline_right": right_n,
        "wer_where_baseline_right": right.rate,
        "baseline_wrong": wrong_n,
        "wer_where_baseline_wrong": wrong.rate,
        "baseline_wer_where_wrong": base_wrong.rate,
    }


def summarise(results: Sequence[Result], hits: Sequence[list[dict]] | None = None) -> list[dict]:
    """``asr evaluate --json``: each system's scores; the first of two also its agreement with
    the second, and each its word accuracy by training count when ``hits`` (one
    :func:`hits_by_training_count` per system) is given."""
    summary = [r.to_dict() for r in results]
    if len(results) == 2:
        summary[0]["agreement"] = agreement(*results)
    if hits is not None:
        for row, bins in zip(summary, hits, strict=True):
            row["hits_by_training_count"] = bins
    return summary


def format_agreement(ours: Result, baseline: Result) -> str:
    a = agreement(ours, baseline)
    return (
        f"{ours.system} vs {baseline.system}: same transcript {a['same_as_baseline']:.1%}; "
        f"where {baseline.system} is right ({a['baseline_right']} utts) WER {a['wer_where_baseline_right']:.2%}; "
        f"where it is wrong ({a['baseline_wrong']} utts) WER {a['wer_where_baseline_wrong']:.2%} "
        f"(its own {a['baseline_wer_where_wrong']:.2%})"
    )
