"""espeak-ng synthetic corpus: audio format, voices, deterministic sentences, cached corpora, intelligibility."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import jiwer
import numpy as np
import pytest

from asr import synth
from asr.audio import SAMPLE_RATE, load_audio
from asr.sources import packaged_whisper_dir

SENTENCE = "mark is going to see the elephant"


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def test_synthesize_gives_16k_mono_speech() -> None:
    audio = synth.synthesize(SENTENCE)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.8 < audio.size / SAMPLE_RATE < 5.0
    assert rms(audio) > 0.02 and np.abs(audio).max() <= 1.0
    longer = synth.synthesize(f"{SENTENCE} and then they all go back to the station by bus")
    assert longer.size > 1.5 * audio.size
    # espeak-ng's pitch-flutter phase carries over between calls, so a repeat is close but not bit-identical
    again = synth.synthesize(SENTENCE)
    assert abs(again.size - audio.size) < 0.01 * audio.size and abs(rms(again) - rms(audio)) < 0.05 * rms(
        audio
    )


def test_voice_rate_and_pitch_change_the_audio() -> None:
    base = synth.synthesize(SENTENCE, "en-us", rate=160)
    slow, fast = synth.synthesize(SENTENCE, rate=130), synth.synthesize(SENTENCE, rate=200)
    assert slow.size > 1.3 * fast.size
    for other in (synth.synthesize(SENTENCE, "en-gb-x-rp+f4"), synth.synthesize(SENTENCE, pitch=70)):
        n = min(base.size, other.size)
        assert other.size != base.size or not np.allclose(other[:n], base[:n], atol=1e-3)


def test_bad_input_raises() -> None:
    for text in ("", "   "):
        with pytest.raises(ValueError, match="empty text"):
            synth.synthesize(text)
    with pytest.raises(synth.SynthError, match="no voice 'xx-nope'"):
        synth.synthesize("hello", voice="xx-nope")


def test_spelled_letters_are_spoken_as_letter_names() -> None:
    assert synth._speakable("it is spelled b a g") == "it is spelled b, a, g"
    assert synth._speakable("i would like a cup of tea") == "i would like a cup of tea"


def test_sentences_are_deterministic_read_speech() -> None:
    first = synth.sentences(300, seed=3)
    assert first == synth.sentences(300, seed=3)
    assert first != synth.sentences(300, seed=4)
    assert all(2 <= len(s.split()) <= 12 and re.fullmatch(r"[a-z ]+", s) for s in first)
    lengths = [len(s.split()) for s in first]
    assert min(lengths) <= 3 and max(lengths) >= 10
    vocab = {w for s in synth.sentences(5000, seed=0) for w in s.split()}
    assert 200 <= len(vocab) <= 600
    kept = synth.sentences(50, seed=4, exclude=set(first))
    assert not set(kept) & set(first)


def read_rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def test_build_corpus_writes_and_reuses(tmp_path: Path) -> None:
    manifest = synth.build_corpus(tmp_path / "c", n=8, seed=1, split="train")
    assert manifest == tmp_path / "c" / "train.jsonl"
    rows = read_rows(manifest)
    assert len(rows) == 8 and len({r["utt_id"] for r in rows}) == 8
    assert [r["text"] for r in rows] == synth.sentences(8, 1)
    for row in rows:
        assert set(row) == {"audio", "text", "duration", "speaker", "utt_id"}
        audio = load_audio(manifest.parent / row["audio"])
        assert row["duration"] == pytest.approx(audio.size / SAMPLE_RATE, abs=1e-3)
        assert rms(audio) > 0.01
    assert len({r["speaker"] for r in rows}) > 1

    stamp = manifest.stat().st_mtime_ns
    start = time.perf_counter()
    assert synth.build_corpus(tmp_path / "c", n=8, seed=1, split="train") == manifest
    assert time.perf_counter() - start < 0.5 and manifest.stat().st_mtime_ns == stamp

    manifest.unlink()  # as after an interrupted build: rebuilt, not taken as finished
    assert len(read_rows(synth.build_corpus(tmp_path / "c", n=8, seed=1))) == 8
    other = read_rows(synth.build_corpus(tmp_path / "c", n=8, seed=2))  # other arguments: rebuilt
    assert [r["text"] for r in other] == synth.sentences(8, 2)


def test_corpus_of_given_sentences(tmp_path: Path) -> None:
    """Sentences from a file are spoken as normalised (digits as words, no punctuation), bad lines
    are named, and other sentences rebuild the corpus."""
    text = tmp_path / "sentences.txt"
    text.write_text("The Zeppelin landed at 9.\n\nQuixotic ferns, she said!\n")
    assert synth.read_sentences(text) == ["the zeppelin landed at nine", "quixotic ferns she said"]
    manifest = synth.build_corpus(tmp_path / "c", n=2, seed=0, texts=synth.read_sentences(text))
    rows = read_rows(manifest)
    assert [r["text"] for r in rows] == ["the zeppelin landed at nine", "quixotic ferns she said"]
    assert all(rms(load_audio(manifest.parent / r["audio"])) > 0.01 for r in rows)
    again = synth.build_corpus(tmp_path / "c", n=1, seed=0, texts=["a different sentence", "unused"])
    assert [r["text"] for r in read_rows(again)] == ["a different sentence"]

    with pytest.raises(ValueError, match="3 clips asked for, 2 sentences given"):
        synth.build_corpus(tmp_path / "d", n=3, texts=["one", "two"])
    bad = tmp_path / "bad.txt"
    bad.write_text("fine words\n?!\n")
    with pytest.raises(ValueError, match=re.escape(f"{bad}:2: no words to speak")):
        synth.read_sentences(bad)
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="no sentences"):
        synth.read_sentences(tmp_path / "blank.txt")
    with pytest.raises(SystemExit):  # the CLI names the file instead of a traceback
        synth.main([str(tmp_path / "e"), "--text", str(bad)])


def test_default_corpus_keeps_dev_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASR_CACHE", str(tmp_path))
    train, dev = synth.default_corpus(n_train=10, n_dev=4)
    assert train.is_relative_to(tmp_path / "synthetic") and dev.name == "dev.jsonl"
    train_texts, dev_rows = {r["text"] for r in read_rows(train)}, read_rows(dev)
    assert len(dev_rows) == 4 and not {r["text"] for r in dev_rows} & train_texts
    assert synth.default_corpus(n_train=10, n_dev=4) == (train, dev)


def test_speech_is_intelligible_to_whisper() -> None:
    faster_whisper = pytest.importorskip("faster_whisper")
    model = faster_whisper.WhisperModel(
        str(packaged_whisper_dir()), device="cpu", compute_type="int8", cpu_threads=1
    )
    refs = [SENTENCE, "there are thirty seven cats on the farm", "i would like a cup of tea please"]
    hyps = []
    for text in refs:
        audio = np.pad(synth.synthesize(text), (SAMPLE_RATE // 4, SAMPLE_RATE // 4))
        segments, _ = model.transcribe(audio, beam_size=1, language="en", without_timestamps=True)
        words = re.sub(r"[^a-z' ]", " ", " ".join(s.text for s in segments).lower())
        hyps.append(" ".join(words.split()))
    assert jiwer.wer(refs, hyps) <= 0.5, hyps
