"""Audio longer than Whisper's 30 s window: pieces cut at pauses, and their transcripts joined.

Audio over 30 s is cut at pauses into segments of at most 20 s (:func:`plan_segments`), the way
faster-whisper's batched pipeline cuts at voice-activity boundaries: no word is split, nothing is
decoded twice, and each piece is as long as the clips the model was trained on. A stretch with no
pause is cut into overlapping windows (28 s, 4 s overlap; :func:`plan_windows`). The model gives no
timestamps, so overlapping windows' transcripts are joined by aligning their words: the longest run of
words that the end of one window and the start of the next share, searched only in the stretch of
each that the overlap can hold, is the seam. The left window's words are kept up to the middle of
that run and the right window's after it, so no word is dropped or doubled. When the two sides
share no word (noise, a disagreement), the cut falls back to the overlap's time midpoint,
estimated from each window's speaking rate. The one home of this logic: the ``Transcriber`` and
the transformers pipeline both use it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

import numpy as np

from asr.audio import frame_energy_db
from asr.lengths import SAMPLE_RATE, WHISPER_WINDOW_SECONDS

WINDOW_SECONDS = 28.0
OVERLAP_SECONDS = 4.0
SEGMENT_SECONDS = 20.0  # the longest piece cut at pauses: LibriSpeech's longer training clips
MIN_PAUSE_SECONDS = 0.3
FRAME = 320  # 20 ms


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


def pauses(audio: np.ndarray, min_pause_seconds: float = MIN_PAUSE_SECONDS) -> list[int]:
    """Sample positions in the middle of each pause: a run of at least ``min_pause_seconds`` of 20 ms
    frames quieter than a quarter of the way from the clip's floor (10th percentile of frame energy,
    at most 50 dB under the loud frames) to its loud frames (95th percentile)."""
    energy = frame_energy_db(audio, FRAME)
    floor, loud = np.percentile(energy, [10, 95])
    floor = max(floor, loud - 50.0)
    quiet = np.concatenate([[0], (energy < floor + 0.25 * (loud - floor)).astype(np.int8), [0]])
    edges = np.diff(quiet)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    need = int(np.ceil(min_pause_seconds * SAMPLE_RATE / FRAME))
    return [int((a + b) * FRAME // 2) for a, b in zip(starts, ends, strict=True) if b - a >= need]


def plan_segments(
    audio: np.ndarray,
    segment_seconds: float = SEGMENT_SECONDS,
    window_seconds: float = WINDOW_SECONDS,
    overlap_seconds: float = OVERLAP_SECONDS,
) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges covering the clip; one range when it fits Whisper's 30 s window.

    Longer audio is cut at the last pause that keeps a segment within ``segment_seconds``, so
    consecutive segments touch and share nothing. Where no pause comes in time, the stretch up to
    the next pause (or the end) gets :func:`plan_windows`' overlapping windows, whose transcripts
    :func:`stitch` aligns.
    """
    n = len(audio)
    if n <= WHISPER_WINDOW_SECONDS * SAMPLE_RATE:
        return [(0, n)]
    limit = int(segment_seconds * SAMPLE_RATE)
    cuts = pauses(audio)
    spans: list[tuple[int, int]] = []
    start = 0
    while n - start > limit:
        inside = [c for c in cuts if start < c <= start + limit]
        if inside:
            spans.append((start, inside[-1]))
            start = inside[-1]
            continue
        end = next((c for c in cuts if c > start), n)
        spans += [
            (start + a, start + b) for a, b in plan_windows(end - start, window_seconds, overlap_seconds)
        ]
        start = end
    if start < n:
        spans.append((start, n))
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


@dataclass
class Segment:
    """The words one window contributes, between the midpoints of its overlaps (approximate times)."""

    start: float
    end: float
    text: str


def segments_for(pieces: list[list[str]], spans: list[tuple[float, float]]) -> list[Segment]:
    """One cue per window: from the midpoint of its overlap with the previous window to the midpoint
    of its overlap with the next (the model gives no word timestamps); segments cut at a pause
    touch, so their cues are the segments themselves."""
    segments = []
    for i, (words, (start, end)) in enumerate(zip(pieces, spans, strict=True)):
        cue_start = (start + spans[i - 1][1]) / 2 if i > 0 else start
        cue_end = (end + spans[i + 1][0]) / 2 if i + 1 < len(spans) else end
        if words:
            segments.append(Segment(round(cue_start, 3), round(cue_end, 3), " ".join(words)))
    return segments


def join_windows(texts: Sequence[str], spans: Sequence[tuple[int, int]]) -> tuple[str, list[Segment]]:
    """Windows' transcripts (``spans`` in samples, from :func:`plan_segments`) -> the whole text
    and one segment per window (times in seconds)."""
    seconds = [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in spans]
    pieces = stitch(texts, seconds)
    return " ".join(w for piece in pieces for w in piece), segments_for(pieces, seconds)
