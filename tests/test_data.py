"""Data rows checked against their audio before anything is batched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
from conftest import tiny_model

from asr.corpus import prepare_examples
from asr.data import MAX_LABEL_TOKENS, BadRows, implausible_transcript, read_manifest


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


def test_misaligned_transcript_is_skipped_by_name(tmp_path: Path) -> None:
    """A 2 s clip with a 10,000-character transcript (once: 1.6 -> 17 GB in four steps) is
    reported like any bad row; ordinary rows, fast speech included, pass."""
    for name, seconds in (("ok.wav", 2.0), ("short.wav", 0.18), ("misaligned.wav", 2.0)):
        sf.write(tmp_path / name, tone(seconds), 16000)
    rows = [
        {"audio": "ok.wav", "text": "the quick brown fox jumps over the lazy dog"},
        {"audio": "short.wav", "text": "three"},  # the fastest row in ../shared/data: 27.5 characters/s
        {"audio": "misaligned.wav", "text": "word " * 2000},
    ]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bad = BadRows()
    model = tiny_model()
    examples = prepare_examples(read_manifest(manifest, bad), model, model.processor, bad, progress=False)
    assert [e.id for e in examples] == ["ok", "short"]
    ((name, reason),) = bad.rows
    assert name.endswith("misaligned.wav")
    assert reason == "implausible transcript: 9999 characters for 2.00 s of audio (at most 100)"


def test_label_token_cap() -> None:
    tokenizer = tiny_model().processor.tokenizer
    text = "a b " * 300  # plausible for 30 s by characters, too many tokens
    assert implausible_transcript(text.strip(), 30.0, tokenizer) == (
        f"implausible transcript: {len(tokenizer(text.strip())['input_ids'])} tokens, over the cap of {MAX_LABEL_TOKENS}"
    )
    assert implausible_transcript("a b c", 30.0, tokenizer) is None
