"""Two-pass mode: the first pass's hypotheses in the prompt, stored once, reloaded with the model."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import tiny_model

from asr import ASRModel
from asr.audio import load_audio
from asr.corpus import prepare_examples
from asr.data import BadRows, Collator
from asr.first_pass import CTranslate2FirstPass, first_pass_key, format_hypotheses
from asr.prompt import IGNORE_INDEX
from asr.store import FileKeys, HypothesisStore, source_key


class FakeFirstPass:
    """Counts its calls; the hypothesis names the clip's length so rows can be told apart."""

    def __init__(self) -> None:
        self.clips = 0

    def __call__(self, clips: list[np.ndarray]) -> list[list[str]]:
        self.clips += len(clips)
        return [[f"first pass of {len(c)} samples"] for c in clips]


def two_pass_model() -> ASRModel:
    model = tiny_model(first_pass="whisper")
    model._first_pass = FakeFirstPass()
    return model


def test_hypothesis_reaches_the_prompt_and_is_masked_from_labels(tiny: ASRModel) -> None:
    processor = tiny.processor
    hyp = "the first pass heard this"
    batch = processor.prompts([3], texts=["the reference"], first_pass=[[hyp]])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    text = processor.tokenizer.decode(ids)
    assert hyp in text and processor.first_pass_label in text
    assert text.index(hyp) < text.index("the reference")
    scored = processor.tokenizer.decode(labels[labels != IGNORE_INDEX])
    assert hyp not in scored and scored.startswith("the reference")
    # the prompt without a first pass differs only by the hypothesis part
    plain = processor.prompts([3], texts=["the reference"])
    assert processor.tokenizer.decode(plain["input_ids"][0]) == text.replace(
        f"\n{processor.first_pass_label}\n{hyp}", ""
    )


def test_n_best_lists_are_numbered() -> None:
    assert format_hypotheses(["only one"]) == "only one"
    assert format_hypotheses(["a b", "a c"]) == "1. a b\n2. a c"


def test_two_pass_config_round_trips(tmp_path) -> None:
    model = tiny_model(first_pass="whisper", first_pass_n_best=3)
    model.save_pretrained(tmp_path)
    loaded = ASRModel.from_pretrained(tmp_path)
    assert loaded.config.first_pass == "whisper"
    assert loaded.config.first_pass_n_best == 3
    assert tiny_model().run_first_pass([np.zeros(16000, np.float32)]) is None
    with pytest.raises(ValueError, match="first_pass="):
        tiny_model(first_pass="gpt")


def test_transcribe_runs_the_first_pass_once_per_clip() -> None:
    model = two_pass_model()
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 24000)]
    texts = model.transcribe(clips)
    assert len(texts) == 2
    assert model._first_pass.clips == 2


def test_stored_hypotheses_train_exactly_like_fresh_ones(tmp_path, dev_rows) -> None:
    """Precomputed (read back from the store) and on-the-fly hypotheses give the same batch and
    the same loss, and a second run decodes nothing."""
    rows = dev_rows[:4]
    store_root = tmp_path / "store"

    def examples_and_calls():
        model = two_pass_model()
        store = HypothesisStore(store_root, "fake")
        found = prepare_examples(rows, model, model.processor, BadRows(), hypotheses=store, progress=False)
        return model, found, model._first_pass.clips

    model, fresh, calls_fresh = examples_and_calls()
    _, stored, calls_stored = examples_and_calls()
    assert (calls_fresh, calls_stored) == (4, 0)
    assert [e.first_pass for e in fresh] == [e.first_pass for e in stored]
    collate = Collator(model.processor)
    a, b = collate(fresh), collate(stored)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    torch.manual_seed(0)
    with torch.no_grad():
        assert model(**a).loss.item() == model(**b).loss.item()
    text = model.processor.tokenizer.decode(a["input_ids"][0])
    assert fresh[0].first_pass[0] in text


def test_store_ignores_a_line_cut_short(tmp_path) -> None:
    store = HypothesisStore(tmp_path, "k")
    store.put([("a", ["one"]), ("b", ["two"])])
    with store.path.open("a") as f:
        f.write('{"key": "c", "hyps": ["thr')  # a kill mid-write
    again = HypothesisStore(tmp_path, "k")
    assert again.get("a") == ["one"] and again.get("c") is None
    again.put([("c", ["three"])])  # starts on a new line
    assert HypothesisStore(tmp_path, "k").get("c") == ["three"]


def test_source_key_follows_the_content_not_the_path_or_time(tmp_path) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(b"x" * 10)
    key = source_key(str(path))
    assert source_key(path) == key
    copy = tmp_path / "moved" / "b.wav"  # a re-provisioned corpus: new place, new mtime
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    os.utime(copy, ns=(0, 0))
    assert source_key(copy) == key
    path.write_bytes(b"y" * 10)  # same size, new bytes
    assert source_key(str(path)) != key
    big = tmp_path / "big.wav"  # large files: the two ends and the size
    big.write_bytes(b"a" * (3 << 20))
    big_key = source_key(big)
    with big.open("r+b") as f:
        f.seek((3 << 20) - 1)
        f.write(b"b")
    assert source_key(big) != big_key
    assert source_key(np.zeros(4)) == source_key(np.zeros(4)) != source_key(np.ones(4))
    assert first_pass_key("packaged:whisper-tiny.en", 1) != first_pass_key("packaged:whisper-tiny.en", 2)


def test_file_keys_hash_each_file_once(tmp_path, monkeypatch) -> None:
    import asr.store

    path = tmp_path / "a.wav"
    path.write_bytes(b"x" * 10)
    keys = FileKeys(tmp_path / "keys.jsonl")
    assert keys(str(path)) == source_key(path) and keys(np.zeros(4)) == source_key(np.zeros(4))
    keys.save()
    with (tmp_path / "keys.jsonl").open("a") as f:
        f.write('{"stat": "cut sh')  # a kill mid-write
    monkeypatch.setattr(asr.store, "source_key", lambda audio: pytest.fail("read an unchanged file"))
    again = FileKeys(tmp_path / "keys.jsonl")
    assert again(path) == keys(path)  # known path, size and time: only a stat
    monkeypatch.undo()
    path.write_bytes(b"y" * 10)
    os.utime(path, ns=(1, 1))
    assert again(path) == source_key(path) != keys.known[next(iter(keys.known))]
    again.save()  # starts on a new line after the cut one
    assert len(FileKeys(tmp_path / "keys.jsonl").known) == 2


def test_ctranslate2_first_pass_equals_faster_whisper(dev_rows) -> None:
    """The packaged first pass, batched, writes what the faster-whisper baseline writes."""
    from asr.inference.transcribe import FasterWhisperBackend

    clips = [load_audio(r["audio"]) for r in dev_rows[:4]]
    ours = [h[0] for h in CTranslate2FirstPass(threads=2)(clips)]
    baseline = FasterWhisperBackend(threads=2).decode(clips, [None] * len(clips))
    assert ours == baseline


def test_the_pipeline_and_trace_run_the_first_pass(tmp_path) -> None:
    from transformers import pipeline

    from asr.inference.pipeline import ASRPipeline
    from asr.trace import trace

    model = two_pass_model()
    rng = np.random.default_rng(1)
    clip = (rng.standard_normal(16000) * np.abs(np.sin(np.linspace(0, 9, 16000)))).astype(np.float32) * 0.2
    pipe = pipeline("automatic-speech-recognition", model=model, pipeline_class=ASRPipeline, device="cpu")
    pipe(clip)
    assert model._first_pass.clips == 1
    result = trace(clip, model, out_dir=tmp_path, max_new_tokens=3, verbose=False)
    assert model._first_pass.clips == 2
    assert result.shapes.generated_tokens >= 1


def test_two_pass_training_refuses_augmentation_before_encoding_anything(tmp_path) -> None:
    from test_training import tiny_model_config, write_corpus

    from asr.training import DataConfig, TrainingConfig, train

    manifest = write_corpus(tmp_path / "d", n=3)
    data = DataConfig(train=[{"type": "manifest", "path": str(manifest)}], eval=[], augment={"enabled": True})
    out = str(tmp_path / "out")
    cfg = TrainingConfig(output_dir=out, max_steps=1, cache_encoder=False, wandb={"mode": "disabled"})
    with pytest.raises(ValueError, match="does not support data.augment"):
        train(tiny_model_config(first_pass="whisper"), data, cfg)
    assert not (tmp_path / "out" / "feature-store").exists()
