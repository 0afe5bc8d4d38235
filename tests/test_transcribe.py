"""Transcriber: windows and stitching, batching, bad inputs, output files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import manifest_rows, speechlike, tiny_config, tiny_model

from asr.audio import SAMPLE_RATE, load_audio
from asr.evaluate import corpus_wer, normalize
from asr.inference import Transcriber, pauses, plan_segments, plan_windows, stitch, to_srt, write_outputs

RNG = np.random.default_rng(0)


def noise(seconds: float, scale: float = 0.1) -> np.ndarray:
    return speechlike(scale * RNG.standard_normal(int(seconds * SAMPLE_RATE)))


def talking_tiny(seed: int = 0):
    """The tiny random model with an untied LM head: with tied embeddings a random LM just repeats
    the prompt's last token (a newline, stripped to ""), which would make every comparison vacuous."""
    decoder = {**tiny_config().decoder_config, "tie_word_embeddings": False}
    return tiny_model(seed, decoder_config=decoder)


class Recorder:
    """A backend that records what it was given and answers from a table (or by clip length)."""

    name = "recorder"

    def __init__(self, answer=lambda clip: f"len {len(clip)}", fail_on=None) -> None:
        self.answer, self.fail_on, self.calls = answer, fail_on, []

    def decode(self, clips, contexts):
        self.calls.append([len(c) for c in clips])
        if self.fail_on is not None and any(len(c) == self.fail_on for c in clips):
            raise RuntimeError("boom")
        return [self.answer(c) for c in clips]


# --------------------------------------------------------------------------- windows and stitching


def test_plan_windows_cover_everything() -> None:
    assert plan_windows(30 * SAMPLE_RATE) == [(0, 30 * SAMPLE_RATE)]
    n = int(95.3 * SAMPLE_RATE)
    spans = plan_windows(n)
    assert spans[0][0] == 0 and spans[-1][1] == n
    for (_, a1), (b0, b1) in zip(spans, spans[1:], strict=False):
        assert a1 - b0 >= 4 * SAMPLE_RATE  # every seam has at least the 4 s overlap
        assert b1 - b0 <= 28 * SAMPLE_RATE
    assert len(spans) == 4


def bursts(pattern: list[tuple[str, float]], seed: int = 0) -> np.ndarray:
    """Speech-like noise ("s", :func:`speechlike`) and quiet stretches ("q", a -70 dB floor)."""
    rng = np.random.default_rng(seed)
    level = {"s": 0.1, "q": 3e-4}
    parts = [level[kind] * rng.standard_normal(int(seconds * SAMPLE_RATE)) for kind, seconds in pattern]
    parts = [speechlike(p) if kind == "s" else p for (kind, _), p in zip(pattern, parts, strict=True)]
    return np.concatenate(parts).astype(np.float32)


def test_pauses_are_found_in_the_gaps() -> None:
    audio = bursts([("s", 3.0), ("q", 0.5), ("s", 2.0), ("q", 0.2), ("s", 2.0), ("q", 0.8), ("s", 1.0)])
    found = [c / SAMPLE_RATE for c in pauses(audio)]
    assert len(found) == 2  # the 0.2 s gap is shorter than a pause
    assert 3.0 < found[0] < 3.5 and 7.7 < found[1] < 8.5
    assert pauses(np.zeros(100, dtype=np.float32)) == []


def test_plan_segments_cut_at_pauses() -> None:
    """Pieces cut at pauses touch, cover the clip and fit the limit; a clip that fits Whisper's
    window stays whole; a stretch without pauses gets the overlapping windows."""
    audio = bursts([("s", 4.5), ("q", 0.5)] * 14)  # 70 s, a pause every 5 s
    spans = plan_segments(audio)
    assert spans[0][0] == 0 and spans[-1][1] == len(audio)
    assert all(b == c for (_, b), (c, _) in zip(spans, spans[1:], strict=False))  # touching, no overlap
    assert all(b - a <= 20 * SAMPLE_RATE for a, b in spans)
    assert len(spans) == 4  # 20 s pieces need the pauses every 5 s: 19.75 + 20 + 20 + the rest
    for _, cut in spans[:-1]:
        assert cut % (5 * SAMPLE_RATE) >= 4.5 * SAMPLE_RATE  # inside a quiet half second
    assert plan_segments(audio[: 30 * SAMPLE_RATE]) == [(0, 30 * SAMPLE_RATE)]
    steady = bursts([("s", 70.0)])
    assert plan_segments(steady) == plan_windows(len(steady))
    mixed = bursts([("s", 10.0), ("q", 0.5), ("s", 60.0)])
    spans = plan_segments(mixed)
    assert abs(spans[0][1] - 10.25 * SAMPLE_RATE) < 0.1 * SAMPLE_RATE
    rest = [(a - spans[0][1], b - spans[0][1]) for a, b in spans[1:]]
    assert rest == plan_windows(len(mixed) - spans[0][1])


def windows_of(words: list[str], starts: list[int], size: int) -> tuple[list[str], list[tuple[float, float]]]:
    """Window transcripts over a word sequence, one word per time unit."""
    spans = [(s, min(s + size, len(words))) for s in starts]
    return [" ".join(words[a:b]) for a, b in spans], spans


def test_stitch_keeps_every_word_once() -> None:
    words = [f"w{i}" for i in range(200)]
    texts, spans = windows_of(words, [0, 62, 121, 150], 70)  # overlaps of 8, 11 and 41 words
    assert [w for piece in stitch(texts, spans) for w in piece] == words


def test_stitch_with_damaged_seams_and_repeated_words() -> None:
    """Seam words cut in half by the window edge, and common words that repeat everywhere."""
    sentence = "the cat and the dog sat on the mat and the bird sang to the cat"
    base = sentence.split()
    words = [f"{w}{i // len(base)}" if i % 3 == 0 else w for i, w in enumerate(base * 8)]
    texts, spans = windows_of(words, [0, 50, 100], 58)
    damaged = []
    for k, text in enumerate(texts):
        ws = text.split()
        if k > 0:
            ws[0] = ws[0][-2:]  # the window starts in the middle of a word
        if k < len(texts) - 1:
            ws[-1] = ws[-1][:2] + "-"
        damaged.append(" ".join(ws))
    assert [w for piece in stitch(damaged, spans) for w in piece] == words


def test_stitch_punctuation_and_case_do_not_break_alignment() -> None:
    left = "so billy went into the pet shop. So Tina went"
    right = "Shop so tina went into the washroom"
    pieces = stitch([left, right], [(0.0, 10.0), (6.0, 16.0)])
    assert (
        " ".join(w for p in pieces for w in p)
        == "so billy went into the pet shop. So tina went into the washroom"  # left words up to the match middle
    )


def test_stitch_without_shared_words_cuts_at_the_overlap_midpoint() -> None:
    left = " ".join(f"a{i}" for i in range(20))  # 20 words in 10 s: 2 words/s
    right = " ".join(f"b{i}" for i in range(20))
    pieces = stitch([left, right], [(0.0, 10.0), (8.0, 18.0)])  # 2 s overlap: 1 s (2 words) off each
    assert pieces[0][-1] == "a17" and pieces[1][0] == "b2"
    assert stitch(["", right], [(0.0, 10.0), (8.0, 18.0)])[1] == right.split()


@pytest.fixture(scope="module")
def long_clip() -> tuple[np.ndarray, list[dict], list[tuple[int, int]]]:
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"{SHARED_DATA} not present: the long-form tests need ../shared/data")
    rows = manifest_rows(SHARED_DATA / "speechocean762.dev.jsonl", 20)
    gap = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    pieces, bounds, t = [], [], 0
    for row in rows:
        clip = load_audio(SHARED_DATA / row["audio"])
        pieces += [clip, gap]
        bounds.append((t, t + len(clip)))
        t += len(clip) + len(gap)
    audio = np.concatenate(pieces)
    assert len(audio) > 60 * SAMPLE_RATE
    return audio, rows, bounds


@pytest.mark.shared
def test_stitch_real_long_clip_from_known_words(long_clip) -> None:
    """Segment transcripts built from the known words (each word placed evenly inside its clip),
    on the real segments of a > 60 s clip: they are cut between clips, and joining returns every
    word exactly once, in order."""
    audio, rows, bounds = long_clip
    timed = []  # (word, start, end) in samples
    for row, (a, b) in zip(rows, bounds, strict=True):
        ws = row["text"].split()
        step = (b - a) / len(ws)
        timed += [(w, a + k * step, a + (k + 1) * step) for k, w in enumerate(ws)]
    spans = plan_segments(audio)
    assert len(spans) >= 3
    for _, cut in spans[:-1]:  # every cut falls between two clips, none inside one
        assert not any(a < cut < b for a, b in bounds)
    texts = [" ".join(w for w, s, e in timed if e > a and s < b) for a, b in spans]
    pieces = stitch(texts, spans)
    assert [w for p in pieces for w in p] == [w for w, _, _ in timed]


@pytest.mark.real
@pytest.mark.shared
def test_long_form_with_faster_whisper(long_clip) -> None:
    """End to end: faster-whisper transcribes each segment, we join them; the result has about the
    reference's words, and its WER is close to transcribing the clips one by one."""
    audio, rows, bounds = long_clip
    transcriber = Transcriber("faster-whisper", threads=1)
    [long] = transcriber([audio])
    assert long.error is None and len(long.segments) == len(plan_segments(audio))
    reference = " ".join(r["text"] for r in rows)
    ref_words, hyp_words = len(normalize(reference).split()), len(normalize(long.text).split())
    assert 0.85 * ref_words <= hyp_words <= 1.15 * ref_words
    clips = [audio[a:b] for a, b in bounds]
    one_by_one = " ".join(t.text for t in transcriber(clips))
    assert corpus_wer([reference], [long.text]) <= corpus_wer([reference], [one_by_one]) + 0.1


# --------------------------------------------------------------------------- batching


def test_batched_equals_unbatched_tiny_model() -> None:
    model = talking_tiny()
    clips = [noise(s) for s in (2.0, 3.1, 1.2, 4.0, 2.5)]
    one = Transcriber(model, batch_size=1, max_new_tokens=8)(clips)
    four = Transcriber(model, batch_size=4, max_new_tokens=8)(clips)
    assert all(t.text for t in one)
    assert [t.text for t in one] == [t.text for t in four]
    # the same through the model's own left-padded batch
    with torch.inference_mode():
        assert model.transcribe(clips, max_new_tokens=8) == [t.text for t in one]
    # with the default duration-derived caps each clip is cut at its own cap, in any batch
    own = Transcriber(model, batch_size=1)(clips)
    assert [t.text for t in own] == [t.text for t in Transcriber(model, batch_size=4)(clips)]


def test_batches_run_longest_first_and_skip_silence() -> None:
    backend = Recorder()
    clips = [noise(1.0), np.zeros(SAMPLE_RATE, np.float32), noise(3.0), noise(2.0), noise(0.5, 1e-5)]
    out = Transcriber(backend, batch_size=2)(clips)
    assert backend.calls == [[48000, 32000], [16000]]  # silent and near-silent clips never decoded
    assert [t.text for t in out] == ["len 16000", "", "len 48000", "len 32000", ""]
    assert all(t.error is None for t in out)
    assert [t.no_speech for t in out] == [False, True, False, False, True]


def test_tones_get_no_text_and_are_flagged() -> None:
    """A 2 s tone and 95 s of tone (once: "two" and a 95 s loop of invented words) decode to "",
    flagged ``no_speech`` in JSON output, without running the model."""
    backend = Recorder()
    t = np.arange(95 * SAMPLE_RATE) / SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = Transcriber(backend)([tone[: 2 * SAMPLE_RATE], tone, noise(1.0)])
    assert backend.calls == [[16000]]
    assert [(t.text, t.no_speech) for t in out] == [("", True), ("", True), ("len 16000", False)]
    assert out[1].to_dict()["no_speech"] is True


# --------------------------------------------------------------------------- bad inputs


def test_bad_files_are_reported_and_the_rest_transcribed(tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    sf.write(good, noise(1.0), SAMPLE_RATE)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    text = tmp_path / "notes.txt"
    text.write_text("this is not audio\n")
    short = tmp_path / "short.wav"
    sf.write(short, noise(0.05), SAMPLE_RATE)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(2 * SAMPLE_RATE), SAMPLE_RATE)
    stereo = tmp_path / "stereo44k.flac"
    sf.write(stereo, speechlike(0.1 * RNG.standard_normal((int(1.5 * 44100), 2)), 44100), 44100)
    missing = tmp_path / "missing.wav"

    backend = Recorder()
    out = Transcriber(backend)([good, corrupt, text, short, silent, stereo, missing])
    by_name = {Path(t.source).name: t for t in out}
    assert by_name["good.wav"].text == "len 16000" and by_name["good.wav"].error is None
    assert by_name["stereo44k.flac"].text == f"len {int(1.5 * SAMPLE_RATE)}"  # mono 16 kHz
    assert by_name["silent.wav"].text == "" and by_name["silent.wav"].error is None
    for name, why in [
        ("corrupt.wav", "decode"),
        ("notes.txt", "decode"),
        ("short.wav", "shorter"),
        ("missing.wav", "not found"),
    ]:
        error = by_name[name].error
        assert error is not None and name in error and why in error, error
        assert by_name[name].text == ""


def test_a_clip_that_breaks_the_model_costs_only_its_file() -> None:
    backend = Recorder(fail_on=int(1.5 * SAMPLE_RATE))
    out = Transcriber(backend, batch_size=8)([noise(1.0), noise(1.5), noise(2.0)])
    assert [t.text for t in out] == ["len 16000", "", "len 32000"]
    assert out[1].error is not None and "boom" in out[1].error and out[0].error is None


def test_context_reaches_the_backend() -> None:
    seen = []

    class Ctx(Recorder):
        def decode(self, clips, contexts):
            seen.extend(contexts)
            return ["x"] * len(clips)

    Transcriber(Ctx())([noise(1.0), noise(1.0)], context=["Mark", None])
    assert seen == ["Mark", None]


# --------------------------------------------------------------------------- outputs


def test_output_files(tmp_path: Path) -> None:
    backend = Recorder(answer=lambda clip: "one two three four five six")
    [t] = Transcriber(backend)([noise(65.0)])
    assert len(t.segments) == 3 and t.segments[0].start == 0.0 and t.segments[-1].end == 65.0
    assert all(a.end == b.start for a, b in zip(t.segments, t.segments[1:], strict=False))
    written = write_outputs([t, t], tmp_path, ["json", "srt", "txt"])
    assert len(written) == 6
    data = json.loads((tmp_path / "input-0.json").read_text())
    assert (
        set(data) == {"source", "text", "duration", "segments", "error", "no_speech"}
        and data["duration"] == 65.0
    )
    srt = (tmp_path / "input-0.srt").read_text()
    blocks = srt.strip().split("\n\n")
    assert len(blocks) == 3 and blocks[0].splitlines()[0] == "1"
    assert blocks[0].splitlines()[1] == "00:00:00,000 --> 00:00:26,000"
    assert blocks[-1].splitlines()[1].endswith("--> 00:01:05,000")
    assert to_srt(t) == srt
    with pytest.raises(ValueError, match="unknown output formats"):
        write_outputs([t], tmp_path, ["docx"])
