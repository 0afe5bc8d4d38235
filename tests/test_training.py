"""Training: collation, masking, cache invalidation, bad-data counting, resume, DDP (tiny models)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tiny_config, tiny_model
from safetensors.torch import load_file, save_file

from asr.config import ASRConfig
from asr.corpus import prepare_examples
from asr.data import BadRows, Collator, Example, read_manifest
from asr.generation import DecodingConfig
from asr.processing import ASRProcessor, PromptConfig
from asr.prompt import IGNORE_INDEX
from asr.training import DataConfig, TrainingConfig, train
from asr.training.checkpoint import average_checkpoints, checkpoints
from asr.training.config import ConfigError, configs_from_hydra, model_schema, register_configs
from asr.training.loop import build_model

WORDS = ["red", "green", "blue", "cat", "dog", "one", "two", "three"]


def tiny_model_config(**overrides) -> dict:
    cfg = tiny_config(**overrides)
    keys = set(inspect.signature(ASRConfig.__init__).parameters) - {"self", "kwargs"}
    return {k: getattr(cfg, k) for k in keys}


def tone(seconds: float, freq: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_corpus(folder: Path, n: int = 12, bad: bool = False) -> Path:
    """Tone clips with word transcripts; with ``bad``, one row of each kind of broken data."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        sf.write(folder / f"c{i}.wav", tone(0.4 + 0.15 * i, 200 + 40 * i), 16000)
        rows.append({"audio": f"c{i}.wav", "text": " ".join(rng.choice(WORDS, 1 + i % 3))})
    if bad:
        (folder / "corrupt.wav").write_bytes(b"RIFF not really a wav file")
        nan = tone(1.0, 300)
        nan[100] = np.nan
        sf.write(folder / "nan.wav", nan, 16000, subtype="FLOAT")
        sf.write(folder / "long.wav", tone(31.0, 300), 16000)
        sf.write(folder / "silent.wav", np.zeros(16000, np.float32), 16000)
        rows += [
            {"audio": "corrupt.wav", "text": "red"},
            {"audio": "nan.wav", "text": "red"},
            {"audio": "long.wav", "text": "red"},
            {"audio": "silent.wav", "text": "red"},
            {"audio": "missing.wav", "text": "red"},
            {"audio": "c0.wav", "text": ""},
            {"audio": "c1.wav"},
        ]
    manifest = folder / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def test_bad_rows_are_skipped_and_counted_by_name(tmp_path):
    manifest = write_corpus(tmp_path / "data", n=3, bad=True)
    bad = BadRows()
    rows = read_manifest(manifest, bad)
    assert len(rows) == 8 and len(bad) == 2  # empty and missing transcripts caught at read time
    model = tiny_model()
    examples = prepare_examples(rows, model, model.processor, bad, progress=False)
    assert [e.id for e in examples] == ["c0", "c1", "c2"]
    reasons = dict(bad.rows)
    assert len(bad) == 7
    assert "cannot decode" in reasons[str(tmp_path / "data" / "corrupt.wav")]
    assert "NaN" in reasons[str(tmp_path / "data" / "nan.wav")]
    assert "over the 30 s limit" in reasons[str(tmp_path / "data" / "long.wav")]
    assert "silent" in reasons[str(tmp_path / "data" / "silent.wav")]
    assert "not found" in reasons[str(tmp_path / "data" / "missing.wav")]
    summary = bad.summary()
    assert summary.startswith("bad data: 7 rows skipped") and "corrupt.wav" in summary


def test_collator_mixed_lengths_and_label_mask():
    model = tiny_model()
    k = model.config.projector_stack
    examples = [
        Example("a", "red cat", frames=torch.randn(23, model.config.encoder_width)),
        Example("b", "one two three", frames=torch.randn(7, model.config.encoder_width)),
    ]
    batch = Collator(model.processor)(examples)
    assert batch["encoder_frames"].shape == (2, 23, model.config.encoder_width)
    assert batch["encoder_lengths"].tolist() == [23, 7]
    assert torch.all(batch["encoder_frames"][1, 7:] == 0)
    assert batch["audio_mask"].sum(1).tolist() == [-(-23 // k), -(-7 // k)]
    tok = model.processor.tokenizer
    for i, text in enumerate(["red cat", "one two three"]):
        labels = batch["labels"][i]
        kept = labels[labels != IGNORE_INDEX]
        assert tok.decode(kept) == text + tok.eos_token
        # everything after the transcript is padding with attention 0
        n = int(batch["attention_mask"][i].sum())
        assert torch.all(labels[n:] == IGNORE_INDEX) and torch.all(batch["attention_mask"][i, n:] == 0)
    out = model(**batch)
    assert torch.isfinite(out.loss)


def _run(manifest: Path, out: Path, model: dict | None = None, **overrides) -> dict:
    data = DataConfig(
        train=[{"type": "manifest", "path": str(manifest)}],
        eval=[{"type": "manifest", "path": str(manifest), "limit": 3}],
    )
    args = {
        "output_dir": str(out),
        "max_steps": 6,
        "batch_size": 3,
        "warmup_steps": 2,
        "save_every": 3,
        "eval_every": 100,
        "eval_samples": 3,
        "log_every": 1,
        "cache_encoder": False,
        "wandb": {"mode": "disabled"},
        "learning_rate": 1e-2,
    }
    summary, trained = train(
        tiny_model_config(**(model or {})), data, TrainingConfig(**{**args, **overrides})
    )
    return {"summary": summary, "state": trained.trainable_state_dict()}


def test_training_writes_checkpoints_logs_and_resumes_identically(tmp_path):
    manifest = write_corpus(tmp_path / "data", n=10)
    straight = _run(manifest, tmp_path / "a")
    assert straight["summary"]["steps"] == 6
    assert [p.name for p in checkpoints(tmp_path / "a")] == ["step-3", "step-6"]
    log = (tmp_path / "a" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,epoch,loss,ctc_loss,lr") and len(log) >= 7
    assert (tmp_path / "a" / "final" / "model.safetensors").is_file()
    assert not list((tmp_path / "a" / "checkpoints").glob(".tmp-*"))

    # an interrupted run: keep only the step-3 checkpoint, as if the process died after it
    _run(manifest, tmp_path / "b")
    for leftover in [tmp_path / "b" / "checkpoints" / "step-6", tmp_path / "b" / "final"]:
        import shutil

        shutil.rmtree(leftover)
    resumed = _run(manifest, tmp_path / "b")
    for name, value in straight["state"].items():
        assert torch.allclose(value, resumed["state"][name], atol=1e-6), name
    # and it did learn something: weights moved from the initial projector
    init = tiny_model().trainable_state_dict()
    assert any(not torch.allclose(init[n], v) for n, v in straight["state"].items())

    # `asr average`: the mean of the run's saves, a model folder that loads like any other
    from asr.cli import main
    from asr.modeling import ASRModel

    saves = [load_file(str(p / "model.safetensors")) for p in checkpoints(tmp_path / "a")]
    assert main(["average", str(tmp_path / "a"), "--out", str(tmp_path / "avg")]) == 0
    averaged = ASRModel.from_pretrained(tmp_path / "avg").trainable_state_dict()
    for name, value in averaged.items():
        assert torch.allclose(value, (saves[0][name] + saves[1][name]) / 2, atol=1e-6), name
    assert not (tmp_path / "avg" / "optimizer.pt").exists()  # the run's state stays behind
    assert main(["average", str(tmp_path / "a"), "--from-step", "4", "--out", str(tmp_path / "last")]) == 0
    only_last = load_file(str(tmp_path / "last" / "model.safetensors"))
    assert all(torch.equal(only_last[n], saves[1][n]) for n in saves[1])
    assert main(["average", str(tmp_path / "a"), "--from-step", "7", "--out", str(tmp_path / "none")]) == 2


def test_averaging_refuses_checkpoints_of_different_models(tmp_path):
    for name, width in [("a", 4), ("b", 6)]:
        (tmp_path / name).mkdir()
        save_file({"projector.weight": torch.zeros(width, 2)}, str(tmp_path / name / "model.safetensors"))
    with pytest.raises(ValueError, match="do not match"):
        average_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        average_checkpoints([tmp_path / "a", tmp_path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_encoder_lora_trains_on_features_not_stored_frames(tmp_path):
    """With ``encoder_lora`` the encoder runs in every step: stored frames would have given its
    adapters no gradient, and they would have stayed the identity."""
    manifest = write_corpus(tmp_path / "data", n=6)
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    state = _run(manifest, tmp_path / "run", model={"encoder_lora": lora}, max_steps=3)["state"]
    adapters = {n: v for n, v in state.items() if n.startswith("encoder.") and ".lora_B." in n}
    assert adapters and all(v.abs().sum() > 0 for v in adapters.values())


def test_invalid_training_values_name_the_key():
    with pytest.raises(ValueError, match="training.batch_size"):
        TrainingConfig(batch_size=0)
    with pytest.raises(ValueError, match="training.wandb.mode"):
        TrainingConfig(wandb={"mode": "sometimes"})
    with pytest.raises(ValueError, match="encoder_mode"):
        ASRConfig(encoder_mode="streaming")
    with pytest.raises(ValueError, match="data.max_seconds"):
        DataConfig(train=[{"type": "manifest", "path": "x"}], eval=[], max_seconds=45)


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    register_configs()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _error_text(error: BaseException) -> str:
    return f"{error} {error.__cause__ or ''}"


def test_hydra_schemas_check_keys_and_types_at_composition():
    run = configs_from_hydra(_compose())
    assert run.prompt == PromptConfig() and run.generation == DecodingConfig()
    assert run.training == TrainingConfig(
        max_steps=150, learning_rate=2e-3, warmup_steps=20, eval_every=50, save_every=50
    )
    assert set(run.model) == {f.name for f in dataclasses.fields(model_schema())}
    assert set(run.model) == set(inspect.signature(ASRConfig.__init__).parameters) - {"self", "kwargs"}
    for bad, key in [
        ("training.bogus=1", "training.bogus"),
        ("training.max_steps=abc", "training.max_steps"),
        ("model.projector_stack=x", "model.projector_stack"),
        ("generation.beams=2", "generation.beams"),
    ]:
        with pytest.raises(Exception) as caught:
            _compose(bad)
        assert key in _error_text(caught.value), bad
    with pytest.raises(ConfigError, match="training.bogus"):  # `+` adds it; building the configs refuses
        configs_from_hydra(_compose("+training.bogus=1"))
    with pytest.raises(ConfigError, match="missing mandatory value data.train.0.path"):
        configs_from_hydra(_compose("data=manifest"))
    with pytest.raises(ValueError, match="generation.num_beams"):
        configs_from_hydra(_compose("generation.num_beams=0"))
    own = configs_from_hydra(
        _compose("data=manifest", "data.train.0.path=a.jsonl", "data.eval.0.path=b.jsonl")
    )
    assert own.data.train == [{"type": "manifest", "path": "a.jsonl"}]
    assert own.data.eval == [{"type": "manifest", "path": "b.jsonl", "limit": 100}]


def test_a_stage_trains_with_its_own_prompt_and_decoding_options(tmp_path):
    """Prompt and decoding options come from their own configs, also on a checkpoint a stage
    starts from, and the saved model carries them."""
    manifest = write_corpus(tmp_path / "data", n=4)
    tiny_model().save_pretrained(tmp_path / "stage1")
    prompt = PromptConfig(instruction="Write down the words.", system_prompt=None)
    generation = DecodingConfig(num_beams=2, max_new_tokens_base=4, repetition_penalty=1.0)
    cfg = TrainingConfig(
        output_dir=str(tmp_path / "stage2"),
        init_from=str(tmp_path / "stage1"),
        max_steps=2,
        batch_size=2,
        warmup_steps=1,
        eval_samples=2,
        cache_encoder=False,
        wandb={"mode": "disabled"},
    )
    data = DataConfig(
        train=[{"type": "manifest", "path": str(manifest)}],
        eval=[{"type": "manifest", "path": str(manifest)}],
    )
    summary, model = train(tiny_model_config(), data, cfg, prompt=prompt, generation=generation)
    assert summary["steps"] == 2 and summary["eval_wer_after"] is not None
    assert model.decoding == generation and model.processor.prompt_config == prompt
    saved = ASRProcessor.from_pretrained(tmp_path / "stage2" / "final")
    assert saved.prompt_config == prompt
    config = json.loads((tmp_path / "stage2" / "final" / "generation_config.json").read_text())
    assert config["num_beams"] == 2 and config["max_new_tokens_base"] == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_ends_with_identical_projectors(tmp_path):
    manifest = write_corpus(tmp_path / "data", n=8)
    out = tmp_path / "ddp"
    worker = Path(__file__).with_name("_train_worker.py")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(worker),
        str(manifest),
        str(out),
    ]
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert r0["summary"]["num_processes"] == 2
    # the store was filled by both ranks, each encoding its own half of the corpus
    assert r0["encoded"] == [4] and r1["encoded"] == [4]
    # an epoch (2 steps of 2 rows per rank) gives each rank disjoint rows whose union is the corpus
    first0, first1 = r0["trained"][:4], r1["trained"][:4]
    assert not set(first0) & set(first1)
    assert sorted(first0 + first1) == sorted(f"c{i}" for i in range(8))
    init = tiny_model().trainable_state_dict()
    for name, value in r0["state"].items():
        assert torch.equal(value, r1["state"][name]), name
    assert any(not torch.allclose(init[n], v) for n, v in r0["state"].items())


def test_context_reaches_the_prompt_and_is_masked_from_labels(tmp_path):
    model = tiny_model()
    bad = BadRows()
    rows = read_manifest(write_corpus(tmp_path / "d", n=6), bad)
    examples = prepare_examples(rows, model, model.processor, bad, context_prob=1.0, seed=3, progress=False)
    assert all(ex.context for ex in examples)
    # hot words: at least one word of its own transcript is in each context
    assert all(set(ex.context.replace(",", " ").split()) & set(ex.text.split()) for ex in examples)
    batch = Collator(model.processor)(examples[:2])
    tok = model.processor.tokenizer
    for i, ex in enumerate(examples[:2]):
        n = int(batch["attention_mask"][i].sum())
        text = tok.decode(batch["input_ids"][i, :n])
        assert f"Context: {ex.context}" in text
        labels = batch["labels"][i]
        assert tok.decode(labels[labels != IGNORE_INDEX]) == ex.text + tok.eos_token
    no_context = prepare_examples(rows, model, model.processor, bad, context_prob=0.0, progress=False)
    assert not any(ex.context for ex in no_context)


def test_hub_dataset_fails_fast_offline_with_the_alternatives(monkeypatch):
    import time

    from asr import data as data_module

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="unreachable.*packaged"):
        data_module.read_hub("openslr/librispeech_asr", BadRows(), config="clean", split="validation")
    assert time.perf_counter() - start < 10


def test_audiofolder_rows(tmp_path):
    folder = tmp_path / "af"
    folder.mkdir()
    sf.write(folder / "a.wav", tone(0.5, 300), 16000)
    sf.write(folder / "b.wav", tone(0.5, 400), 16000)
    (folder / "metadata.csv").write_text("file_name,transcription\na.wav,red cat\nb.wav,\n")
    bad = BadRows()
    from asr.data import read_audiofolder

    rows = read_audiofolder(folder, bad)
    assert [(r["id"], r["text"]) for r in rows] == [("a", "red cat")]
    assert bad.rows == [(str(folder / "b.wav"), "empty transcript: no text in metadata")]


def test_a_stage_adds_lora_to_a_projector_checkpoint(tmp_path):
    """A later stage may add LoRA to a projector-only checkpoint: the projector is loaded, the
    adapters are new and start as the identity, so the model begins where the stage ended."""
    stage1 = tiny_model(seed=0)
    with torch.no_grad():
        for param in stage1.projector.parameters():
            param.add_(0.05 * torch.randn_like(param))
    stage1.save_pretrained(tmp_path / "stage1")
    torch.manual_seed(0)  # the random frozen parts are rebuilt from the seed
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    stage2 = build_model({**tiny_model_config(), "lora": lora}, str(tmp_path / "stage1")).eval()
    assert (
        stage2.config.lora["r"] == 4
        and stage2.config.projector_output_rms == stage1.config.projector_output_rms
    )
    trainable = {n for n, p in stage2.named_parameters() if p.requires_grad}
    adapters = {n for n in trainable if ".lora_" in n}
    assert adapters and trainable - adapters == set(stage1.trainable_state_dict())
    for name, value in stage1.trainable_state_dict().items():
        torch.testing.assert_close(stage2.get_parameter(name), value)
    features = stage1.processor.features([tone(1.0, 440.0), tone(0.6, 660.0)])
    frames, lengths = stage1.encode(features["input_features"], features["mel_lengths"])
    n_audio = [int(n) for n in stage1.projector.output_length(lengths)]
    prompts = stage1.processor.prompts(n_audio, ["one two"] * len(n_audio), padding_side="right")
    batch = {**prompts, "encoder_frames": frames, "encoder_lengths": lengths}
    batch.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(stage2(**batch).logits, stage1(**batch).logits)
    # and the adapters do train: the saved stage-2 checkpoint carries them and reloads
    with torch.no_grad():
        for name in adapters:
            stage2.get_parameter(name).add_(0.01)
    stage2.save_pretrained(tmp_path / "stage2")
    torch.manual_seed(0)
    again = build_model(tiny_model_config(), str(tmp_path / "stage2")).eval()
    assert again.config.lora["r"] == 4
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, stage2(**batch).logits)
