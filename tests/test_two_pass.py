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
from asr.generation import through_eos
from asr.prompt import IGNORE_INDEX, normalize_target
from asr.store import FileKeys, HypothesisStore, source_key


class FakeFirstPass:
    """Counts its calls; the hypothesis names the clip's length so rows can be told apart."""

    def __init__(self) -> None:
        self.clips, self.beams = 0, []

    def __call__(self, clips: list[np.ndarray], beam_size: int = 1) -> list[list[str]]:
        self.clips += len(clips)
        self.beams.append(beam_size)
        return [[f"first pass of {len(c)} samples"] for c in clips]


class FixedFirstPass:
    """Fixed hypotheses; Whisper's score: 0 for its own hypothesis (as the model writes it), far
    below for anything else."""

    def __init__(self, hypotheses: list[str]) -> None:
        self.hypotheses, self.scored = hypotheses, []

    def __call__(self, clips: list[np.ndarray], beam_size: int = 1) -> list[list[str]]:
        return [[h] for h in self.hypotheses[: len(clips)]]

    def score(self, clips: list[np.ndarray], candidates: list[list[str]]) -> list[list[float]]:
        self.scored += [t for texts in candidates for t in texts]
        own = {normalize_target(h, "plain") for h in self.hypotheses}
        return [[0.0 if t in own else -100.0 for t in texts] for texts in candidates]


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
    model.processor.target_normalization = "plain"
    model.set_decoding(model.decoding.replace(first_pass_rescore=0.5))
    model.save_pretrained(tmp_path)
    loaded = ASRModel.from_pretrained(tmp_path)
    assert loaded.config.first_pass == "whisper"
    assert loaded.config.first_pass_n_best == 3
    assert loaded.processor.target_normalization == "plain"
    assert loaded.decoding.first_pass_rescore == 0.5
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


def test_decoding_sets_the_first_pass_beam(tmp_path) -> None:
    """``generation.first_pass_beam_size`` reaches the first pass of ``transcribe`` (and a call
    can override it) and is saved with the checkpoint."""
    model = two_pass_model()
    clips = [np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1]
    short = {"max_new_tokens": 2}
    model.transcribe(clips, **short)
    model.set_decoding(model.decoding.replace(first_pass_beam_size=5))
    model.transcribe(clips, **short)
    model.transcribe(clips, first_pass_beam_size=3, **short)
    assert model._first_pass.beams == [1, 5, 3]
    model.save_pretrained(tmp_path / "saved")
    assert ASRModel.from_pretrained(tmp_path / "saved").decoding.first_pass_beam_size == 5
    with pytest.raises(ValueError, match="first_pass_beam_size"):
        model.decoding.replace(first_pass_beam_size=0)


@pytest.mark.real
def test_first_pass_beam_decodes_as_faster_whisper(dev_rows) -> None:
    """The first pass with a beam of 5 writes what faster-whisper writes with ``beam_size=5``
    (the same CTranslate2 model and options), and its greedy output what greedy writes."""
    from asr.inference.transcribe import FasterWhisperBackend

    clips = [load_audio(r["audio"]) for r in dev_rows[:4]]
    first_pass = CTranslate2FirstPass(threads=2)
    for beam in (1, 5):
        ours = [h[0] for h in first_pass(clips, beam_size=beam)]
        theirs = FasterWhisperBackend(num_beams=beam, threads=2).decode(clips, [None] * len(clips))
        assert ours == theirs
    assert len(CTranslate2FirstPass(n_best=2, threads=2)(clips[:1], beam_size=5)[0]) == 2


def test_answer_logprobs_match_the_plain_decoder_loss() -> None:
    """Scoring answers after generation prompts (the guard's teacher forcing) gives each row's
    log-probability as the plain decoder loss over the same prompt and answer computes it."""
    model = two_pass_model()
    processor = model.processor
    rng = np.random.default_rng(1)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 27000)]
    first_pass = model.run_first_pass(clips)
    texts = ["one two three", "a longer answer than the other one"]
    inputs = processor(audio=clips, first_pass=first_pass)
    audio, n_audio = model.audio_embeddings(inputs["input_features"], inputs["mel_lengths"])
    answers = [processor.prompt_builder.answer_ids(t) for t in texts]
    got = model.answer_logprobs(
        inputs["input_ids"], inputs["attention_mask"], inputs["audio_mask"], audio, n_audio, answers
    )
    for i, (clip, text, answer) in enumerate(zip(clips, texts, answers, strict=True)):
        batch = processor(audio=[clip], text=[text], first_pass=[first_pass[i]])
        with torch.no_grad():
            loss = model(**batch, logits_at_labels=False).loss
        assert got[i].item() == pytest.approx(-loss.item() * len(answer), rel=1e-4)


def test_rescoring_keeps_the_answer_the_two_models_prefer() -> None:
    """``first_pass_rescore``: where the answer differs from the first pass, the one with the
    higher LLM + weight * Whisper log-probability is returned (the first pass as Whisper wrote it)."""
    model = two_pass_model()
    processor = model.processor
    processor.target_normalization = "plain"
    firsts = ["Yes!", "First pass, number 1!", "A first pass, much longer: it is number 2."]
    model._first_pass = FixedFirstPass(firsts)
    rng = np.random.default_rng(2)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 20000, 24000)]
    short = {"repetition_penalty": 1.0, "max_new_tokens_base": 3, "max_new_tokens_per_second": 1.0}
    inputs = processor(audio=clips, first_pass=[[f] for f in firsts])
    tokens = model.generate(**inputs, **short)
    own = processor.batch_decode(tokens)
    assert model.transcribe(clips, **short) == own  # the checkpoint's default: no rescoring
    # weight 0: the LLM's scores alone, row by row (its answer against the first pass, as trained)
    audio, n_audio = model.audio_embeddings(inputs["input_features"], inputs["mel_lengths"])
    prompts = (inputs["input_ids"], inputs["attention_mask"], inputs["audio_mask"], audio, n_audio)
    eos = model.generation_config.eos_token_id
    own_ids = [through_eos(row, eos) for row in tokens.tolist()]
    plain = ["yes", "first pass number 1", "a first pass much longer it is number 2"]
    first_ids = [processor.prompt_builder.answer_ids(t) for t in plain]
    gain = model.answer_logprobs(*prompts, own_ids) - model.answer_logprobs(*prompts, first_ids)
    assert 0 < int((gain >= 0).sum()) < 3  # both outcomes occur in this batch
    expected = [o if g >= 0 else f for o, f, g in zip(own, firsts, gain.tolist(), strict=True)]
    assert model.transcribe(clips, first_pass_rescore=0.0, **short) == expected
    # Whisper's scores decide where they outweigh the LLM's; it scores both answers of each row
    # that differs, as the model writes them
    model._first_pass.scored.clear()
    assert model.transcribe(clips, first_pass_rescore=1e6, **short) == firsts
    assert sorted(model._first_pass.scored) == sorted(plain + [normalize_target(t, "plain") for t in own])


def test_stored_hypotheses_train_exactly_like_fresh_ones(tmp_path, dev_rows) -> None:
    """Precomputed (read back from the store) and on-the-fly hypotheses give the same batch and
    the same loss, and a second run decodes nothing."""
    rows = dev_rows[:4]
    store_root = tmp_path / "store"

    def examples_and_calls():
        model = two_pass_model()
        model.set_decoding(model.decoding.replace(first_pass_beam_size=5))  # decoding only
        store = HypothesisStore(store_root, "fake")
        found = prepare_examples(rows, model, model.processor, BadRows(), hypotheses=store, progress=False)
        return model, found, model._first_pass.clips

    model, fresh, calls_fresh = examples_and_calls()
    _, stored, calls_stored = examples_and_calls()
    assert (calls_fresh, calls_stored) == (4, 0)
    assert set(model._first_pass.beams) == {1}  # training hypotheses are greedy
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


def test_whisper_scores_its_own_transcript_above_a_changed_one(dev_rows) -> None:
    """The rescoring's Whisper side: batched scores equal one-by-one ones (padding changes
    nothing), and Whisper prefers its own greedy transcript to one with a word changed."""
    clips = [load_audio(r["audio"]) for r in dev_rows[:3]]
    first_pass = CTranslate2FirstPass(threads=2)
    own = [normalize_target(h[0], "plain") for h in first_pass(clips)]
    changed = [f"{t} zebra" for t in own]
    batched = first_pass.score(clips, [[a, b] for a, b in zip(own, changed, strict=True)])
    alone = [
        [first_pass.score([c], [[t]])[0][0] for t in (a, b)]
        for c, a, b in zip(clips, own, changed, strict=True)
    ]
    assert np.allclose(batched, alone, atol=1e-3)
    assert all(a > b for a, b in batched)


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
