"""Normaliser, WER/CER arithmetic, manifest reading and the evaluation report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import speechlike

from asr.evaluate import (
    char_counts,
    corpus_cer,
    corpus_wer,
    evaluate,
    format_hits_by_training_count,
    format_table,
    hits_by_training_count,
    normalize,
    read_manifest,
    training_word_counts,
    word_counts,
    word_hits,
)
from asr.inference import Transcriber


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Hello, World!", "hello world"),
        ("TWO SIX FOUR EIGHT", "2648"),  # a read digit string, however the system writes it
        ("TWO SIX FOUR EIGHT", "2, 6, 4, 8."),
        ("ZERO THREE FIVE ONE", "0351"),  # leading zero kept
        ("twenty six", "26"),
        ("ONE", "1"),
        ("It's Mr. Smith.", "it is mister smith"),
        ("Look at Bob's T-shirt.", "LOOK AT BOB'S T SHIRT"),
        ("one point five", "1.5"),
    ],
)
def test_normalize_equates(a: str, b: str) -> None:
    assert normalize(a) == normalize(b)


def test_normalize_spells_digits_one_by_one() -> None:
    assert normalize("2648") == "two six four eight"
    assert normalize("26 apples") == "two six apples"
    assert normalize("Uh, hmm, yes.") == "yes"  # fillers dropped, as Whisper's normaliser does
    assert normalize("Hello,   World!") == "hello world"
    assert normalize("") == ""


def test_word_and_char_counts_by_hand() -> None:
    w = word_counts("a b c d", "a x c")  # b->x substituted, d deleted
    assert (w.substitutions, w.deletions, w.insertions, w.reference) == (1, 1, 0, 4)
    assert w.rate == 0.5
    c = char_counts("abcd", "axc")
    assert (c.substitutions, c.deletions, c.insertions, c.reference) == (1, 1, 0, 4)
    assert word_counts("a b", "a b c").insertions == 1
    assert word_counts("", "x y").errors == 2 and word_counts("", "").rate == 0.0
    assert word_counts("a b", "").deletions == 2


def test_corpus_rates_pool_errors_over_words() -> None:
    refs, hyps = ["a b c d e f g h", "x y"], ["a b c d e f g h", "p q"]
    # corpus: 2 errors / 10 words = 0.2; the mean of per-utterance rates would be (0 + 1) / 2 = 0.5
    assert corpus_wer(refs, hyps) == pytest.approx(0.2)
    assert corpus_wer(["A B C D"], ["a, x, c."]) == pytest.approx(0.5)
    assert corpus_cer(["abcd"], ["axc"]) == pytest.approx(0.5)
    assert corpus_wer(["Hello world"], ["hello, world!"]) == 0.0


class _Echo:
    """A backend that "recognises" a clip from its length, so the expected text is known."""

    name = "echo"

    def __init__(self, texts: dict[int, str]) -> None:
        self.texts = texts

    def decode(self, clips, contexts):
        return [self.texts[len(c)] for c in clips]


def test_evaluate_report_and_summary(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lengths = {16000: "mark is going to see elephant", 24000: "two six four eight"}
    for name, n in (("a.wav", 16000), ("b.wav", 24000)):
        sf.write(tmp_path / name, speechlike(0.1 * rng.standard_normal(n)), 16000)
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    rows = [
        {"audio": "a.wav", "text": "MARK IS GOING TO SEE ELEPHANT", "utt_id": "a"},
        {"audio": "b.wav", "text": "TWO SIX FOUR NINE", "utt_id": "b"},
        {"audio": "bad.wav", "text": "KATE LOVES CHINA", "utt_id": "bad"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    read = read_manifest(manifest)
    assert read[0]["audio"] == str(tmp_path / "a.wav") and len(read_manifest(manifest, limit=2)) == 2

    report = tmp_path / "report.jsonl"
    result = evaluate(Transcriber(_Echo(lengths)), read, report=report, progress=False)
    # errors: 0 + 1 substitution (eight/nine) + 3 deletions (failed file) over 6 + 4 + 3 words
    assert result.wer == pytest.approx(4 / 13)
    assert (result.substitutions, result.deletions, result.insertions) == (1, 3, 0)
    assert result.utterances == 3 and result.failed == 1
    assert result.audio_minutes == pytest.approx(2.5 / 60, abs=0.01)
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["a", "b", "bad"]
    assert lines[1]["hyp_normalised"] == "two six four eight" and lines[1]["errors"]["sub"] == 1
    assert lines[1]["wer"] == 0.25 and lines[2]["error"] and "bad.wav" in lines[2]["error"]
    table = format_table([result])
    assert "30.77%" in table and table.count("\n") == 2
    assert result.invented == 0 and "| 0.0% | 23.1% | 0.0% |" in table  # ins, del (3/13), invented


def test_invented_hypotheses() -> None:
    """Under half of the hypothesis' words in the reference: invented; deletions alone are not."""
    said = "he hoped there would be stew for dinner turnips and carrots"
    assert word_counts("mark is going to see elephant", "john is going to be a doctor").invented  # 3 of 7
    # exactly half (6 of 12 words) is not "under half"
    assert not word_counts(said, "he hoped that the result would be positive for players and fans").invented
    assert not word_counts(said, "he hoped there would be stew for dinner").invented  # deletions only
    assert not word_counts(said, "").invented
    assert word_counts("one two", "three four five one").invented  # 1 of 4 words
    assert not word_counts("one two", "one two three").invented  # 2 of 3 words


@pytest.mark.real
def test_faster_whisper_on_real_speech(dev_rows: list[dict]) -> None:
    transcriber = Transcriber("faster-whisper", threads=1)
    result = evaluate(transcriber, dev_rows[:4], progress=False)
    assert result.failed == 0 and result.wer < 0.5  # tiny.en on non-native read speech


def test_agreement_with_a_baseline_splits_by_where_the_baseline_is_wrong():
    from asr.evaluate import Result, agreement

    def result(name, pairs):
        samples = [{"ref_normalised": r, "hyp_normalised": h} for r, h in pairs]
        return Result(name, len(pairs), 0, 0.0, 0.0, 0.0, 0, 0, 0, 0, 0.0, 0.0, samples=samples)

    refs = ["a b c d", "e f", "g h"]
    baseline = result("fw", [(refs[0], "a b c d"), (refs[1], "e x"), (refs[2], "y h")])
    ours = result("2pass", [(refs[0], "a b c d"), (refs[1], "e f"), (refs[2], "y h")])
    a = agreement(ours, baseline)
    assert a["same_as_baseline"] == 2 / 3
    assert (a["baseline_right"], a["wer_where_baseline_right"]) == (1, 0.0)
    assert a["baseline_wrong"] == 2
    assert a["wer_where_baseline_wrong"] == 1 / 4  # "y h" for "g h"; "e f" corrected
    assert a["baseline_wer_where_wrong"] == 2 / 4
    assert "samples" not in ours.to_dict()


def test_word_hits_mark_the_reference_words_the_alignment_matches() -> None:
    assert word_hits("the cat sat on the mat", "the hat sat the mat") == [
        True,
        False,
        True,
        False,
        True,
        True,
    ]
    assert word_hits("a b", "x a y b z") == [True, True]  # insertions around matches
    assert word_hits("a b", "") == [False, False] and word_hits("", "a") == []
    hits = word_hits("mark is going to see elephant", "john is going to be a doctor")
    assert sum(hits) == word_counts("mark is going to see elephant", "john is going to be a doctor").hits


def test_word_accuracy_by_how_often_training_saw_the_word(tmp_path: Path) -> None:
    from asr.evaluate import Result

    manifest = tmp_path / "train.jsonl"
    texts = ["THE CAT SAT.", "The dog sat", "the cat ran", *["the"] * 47, "Seven"]
    manifest.write_text("".join(json.dumps({"audio": "x.wav", "text": t}) + "\n" for t in texts))
    counts = training_word_counts([manifest])
    assert counts["the"] == 50 and counts["cat"] == 2 and counts["seven"] == 1 and "mat" not in counts
    samples = [  # ref: the(50) cat(2) sat(2) on(0) a(0) mat(0); seven(1) dog(1)
        {"ref_normalised": "the cat sat on a mat", "hyp_normalised": "the cat sat on the hat"},
        {"ref_normalised": "seven dog", "hyp_normalised": "seven"},
    ]
    result = Result("m", 2, 0, 0.0, 0.0, 0.0, 0, 0, 0, 8, 0.0, 0.0, samples=samples)
    bins = hits_by_training_count(result, counts)
    assert [b["seen"] for b in bins] == ["0", "1-4", "5-49", "50+"]
    assert [b["words"] for b in bins] == [3, 4, 0, 1]
    assert [b["accuracy"] for b in bins] == [pytest.approx(1 / 3), 0.75, 0.0, 1.0]  # on; cat sat seven
    table = format_hits_by_training_count([result, result], [bins, bins])
    assert "| 0 | 3 (37.5%) | 33.3% | 33.3% |" in table and table.count("\n") == 5
