"""Training loop glue used by the top-level ``train.py``: data -> cached frames -> projector.

One accelerate loop (single process, ``torchrun``/``accelerate launch`` DDP alike): only
trainable parameters reach the optimiser, batches are grouped by length, gradients accumulate,
bf16 autocast runs where the hardware has it. Checkpoints are written atomically (temporary
folder, then rename) with optimiser, scheduler, RNG and data position, so ``resume`` replays the
same data order and learning-rate schedule as an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from tqdm.auto import tqdm
from transformers import get_scheduler

from asr.cache import EncoderCache
from asr.config import ASRConfig
from asr.data import (
    BadRows,
    Collator,
    Example,
    ExampleDataset,
    LengthGroupedSampler,
    prepare_examples,
    read_sources,
)
from asr.evaluate import corpus_cer, corpus_wer
from asr.modeling import WEIGHTS_NAME, ASRModel
from asr.sources import cache_dir

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"


@dataclass
class TrainingConfig:
    """Everything about the optimisation; Hydra's ``training`` group maps onto it one to one."""

    output_dir: str = "outputs/offline"
    init_from: str | None = None  # a checkpoint of an earlier stage to start from
    max_steps: int = 300
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 30
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    seed: int = 0
    mixed_precision: str = "auto"  # auto | bf16 | fp16 | no
    threads: int | None = None
    group_by_length: bool = True
    cache_encoder: bool = True  # cached frames on disk; False still precomputes in memory
    cache_dir: str | None = None  # default: $ASR_CACHE/encoder-cache
    precompute: bool = True  # False: run the encoder every step (the naive path)
    context_prob: float = 0.0  # prompt-conditioned training: share of examples with a context
    log_every: int = 10
    eval_every: int = 100
    eval_samples: int = 48
    eval_batch_size: int = 16
    save_every: int = 100
    keep_checkpoints: int = 2
    resume: bool = True
    wandb: dict[str, Any] = field(default_factory=lambda: {"mode": "offline", "project": "asr"})

    def __post_init__(self) -> None:
        checks = {
            "max_steps": self.max_steps > 0,
            "batch_size": self.batch_size > 0,
            "grad_accum": self.grad_accum > 0,
            "learning_rate": self.learning_rate > 0,
            "eval_every": self.eval_every > 0,
            "save_every": self.save_every > 0,
            "context_prob": 0.0 <= self.context_prob <= 1.0,
            "mixed_precision": self.mixed_precision in ("auto", "bf16", "fp16", "no"),
            "scheduler": self.scheduler in ("cosine", "linear", "constant_with_warmup"),
            "wandb.mode": self.wandb.get("mode", "offline") in ("offline", "online", "disabled"),
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"training.{key}: invalid value {getattr(self, key.split('.')[0])!r}")


@dataclass
class DataConfig:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    max_seconds: float = 30.0
    text_normalization: str = "none"

    def __post_init__(self) -> None:
        if not self.train:
            raise ValueError("data.train: at least one corpus is needed")
        if not 0 < self.max_seconds <= 30:
            raise ValueError(f"data.max_seconds={self.max_seconds}: must be in (0, 30], Whisper's window")


# --------------------------------------------------------------------------- evaluation


def score(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus WER/CER after the project's Whisper-style normaliser (the same as ``asr evaluate``)."""
    return {"wer": corpus_wer(references, hypotheses), "cer": corpus_cer(references, hypotheses)}


def evaluate_examples(
    model: ASRModel, examples: list[Example], batch_size: int = 16, progress: bool = True
) -> dict[str, Any]:
    """Greedy-decode examples (cached frames or features) and score them."""
    was_training = model.training
    model.eval()
    hyps: list[str] = []
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    collate = Collator(model.prompts, model.projector.output_length)  # the training batches' padding
    audio_keys = ("encoder_frames", "encoder_lengths", "input_features", "mel_lengths")
    for batch in tqdm(batches, desc="evaluating", leave=False, disable=not progress):
        collated = collate(batch)
        audio = {k: collated[k].to(model.device) for k in audio_keys if k in collated}
        hyps += model.generate(**audio, context=[ex.context for ex in batch])
    model.train(was_training)
    refs = [ex.text for ex in examples]
    return {
        **score(refs, hyps),
        "samples": [{"id": ex.id, "ref": r, "hyp": h} for ex, r, h in zip(examples, refs, hyps, strict=True)],
    }


# --------------------------------------------------------------------------- checkpoints


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are never listed)."""
    root = output_dir / "checkpoints"
    found = (
        [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if (p / "state.json").is_file()]
        if root.is_dir()
        else []
    )
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def save_checkpoint(
    accelerator: Accelerator,
    model: ASRModel,
    optimizer,
    scheduler,
    state: dict[str, Any],
    output_dir: Path,
    keep: int,
) -> Path:
    """Write ``checkpoints/step-N`` atomically: everything into a temp folder, then one rename."""
    root = output_dir / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{state['step']}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{state['step']}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    accelerator.unwrap_model(model).save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(
        {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        tmp / "rng.pt",
    )
    (tmp / "state.json").write_text(json.dumps(state, indent=2))  # written last: marks completeness
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: ASRModel, optimizer, scheduler) -> dict[str, Any]:
    model.load_trainable_state_dict(load_file(str(path / WEIGHTS_NAME)))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = torch.load(path / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return json.loads((path / "state.json").read_text())


# --------------------------------------------------------------------------- the run


# fields a later stage may change on a checkpoint it starts from; the rest of the architecture
# (sources, projector) always comes from the checkpoint
STAGE_FIELDS = (
    "instruction",
    "system_prompt",
    "max_new_tokens_per_second",
    "min_new_tokens",
    "repetition_penalty",
    "no_repeat_ngram_size",
)


def build_model(model_config: dict[str, Any], init_from: str | None) -> ASRModel:
    """A fresh model from sources, or an earlier stage's checkpoint.

    From a checkpoint, ``model`` overrides only the prompt/decoding fields, and may add LoRA
    adapters (``lora`` / ``encoder_lora``) that the checkpoint does not have yet: they start
    as the identity (peft's B = 0), so the stage begins exactly where the last one ended.
    """
    if not init_from:
        return ASRModel.from_sources(ASRConfig(**model_config))
    config = ASRConfig.from_pretrained(init_from)
    for key in STAGE_FIELDS:
        if key in model_config:
            setattr(config, key, model_config[key])
    added = [key for key in ("lora", "encoder_lora") if model_config.get(key) and not getattr(config, key)]
    for key in added:
        setattr(config, key, dict(model_config[key]))
    return ASRModel.from_pretrained(init_from, config=config, new_lora=bool(added))


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16"  # CPU autocast: ~1.6x faster fwd+bwd for the frozen LLM here


def train(
    model_config: dict[str, Any], data: DataConfig, cfg: TrainingConfig
) -> tuple[dict[str, Any], ASRModel]:
    """Run (or resume) one training stage. Returns the summary (also written to ``summary.json``
    on the main process; empty on the others) and this process's trained model."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    output_dir = Path(cfg.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=_mixed_precision(cfg.mixed_precision),
        cpu=not torch.cuda.is_available(),  # without it, torchrun on CPU runs N independent jobs
    )
    main = accelerator.is_main_process
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    t0 = time.time()
    model = build_model(model_config, cfg.init_from).to(accelerator.device)
    if accelerator.mixed_precision == "bf16":
        # the frozen LLM only ever runs under bf16 autocast: storing it in bf16 halves its memory
        # and saves re-casting every weight at every step; what trains (projector, LoRA) stays
        # float32 so that AdamW's small updates are not rounded away
        model.decoder.to(torch.bfloat16)
        for param in model.decoder.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    load_seconds = time.time() - t0
    bad = BadRows()
    train_rows = read_sources(data.train, bad, seed=cfg.seed)
    eval_rows = read_sources(data.eval, bad, seed=cfg.seed + 1) if data.eval else []
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else cache_dir() / "encoder-cache"
    cache = EncoderCache(cache_root, model) if cfg.cache_encoder and cfg.precompute else None
    prep = {"max_seconds": data.max_seconds, "text_normalization": data.text_normalization, "progress": main}
    t0 = time.time()
    train_examples = prepare_examples(
        train_rows, model, bad, cache, cfg.precompute, context_prob=cfg.context_prob, seed=cfg.seed, **prep
    )
    eval_examples = prepare_examples(
        eval_rows[: cfg.eval_samples], model, bad, cache, True, context_prob=0.0, seed=cfg.seed, **prep
    )
    prep_seconds = time.time() - t0
    if not train_examples:
        raise RuntimeError(f"no usable training examples. {bad.summary()}")

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        cfg.scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps
    )
    sampler = LengthGroupedSampler(
        [ex.length for ex in train_examples],
        cfg.batch_size * accelerator.num_processes,
        cfg.seed,
        cfg.group_by_length,
    )
    collator = Collator(model.prompts, model.projector.output_length)
    loader = torch.utils.data.DataLoader(
        ExampleDataset(train_examples), batch_size=cfg.batch_size, sampler=sampler, collate_fn=collator
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    unwrapped: ASRModel = accelerator.unwrap_model(model)

    step, epoch, batch_in_epoch = 0, 0, 0
    history: list[dict[str, Any]] = []
    found = checkpoints(output_dir) if cfg.resume else []
    if found:
        state = load_checkpoint(found[-1], unwrapped, optimizer, scheduler)
        step, epoch, batch_in_epoch, history = (
            state["step"],
            state["epoch"],
            state["batch_in_epoch"],
            state["history"],
        )
        if main:
            print(f"resuming from {found[-1]} (step {step})")
    output_dir.mkdir(parents=True, exist_ok=True)
    run = _init_wandb(cfg, model_config, data) if main else None

    log_path = output_dir / "log.csv"
    before = None
    if main and eval_examples and step == 0:
        before = evaluate_examples(unwrapped, eval_examples, cfg.eval_batch_size)
        print(
            f"eval before training: WER {before['wer']:.1%} CER {before['cer']:.1%} on {len(eval_examples)} clips"
        )
        history.append({"step": 0, "eval_wer": before["wer"], "eval_cer": before["cer"]})
        _log(log_path, history[-1], run)

    model.train()
    progress = tqdm(total=cfg.max_steps, initial=step, desc="training", disable=not main)
    t_train, samples_seen, window_loss = time.time(), 0, []
    while step < cfg.max_steps:
        sampler.start_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, batch_in_epoch) if batch_in_epoch else loader
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            batch_in_epoch += 1
            samples_seen += batch["input_ids"].shape[0]
            window_loss.append(loss.item())
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                row = {
                    "step": step,
                    "epoch": epoch,
                    "loss": float(np.mean(window_loss)),
                    "lr": scheduler.get_last_lr()[0],
                    "samples_per_s": samples_seen / (time.time() - t_train),
                }
                window_loss = []
                history.append(row)
                progress.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.1e}")
                if main:
                    _log(log_path, row, run)
            if main and eval_examples and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                result = evaluate_examples(unwrapped, eval_examples, cfg.eval_batch_size, progress=False)
                row = {"step": step, "eval_wer": result["wer"], "eval_cer": result["cer"]}
                history.append(row)
                _log(log_path, row, run)
                tqdm.write(
                    f"step {step}: eval WER {result['wer']:.1%} | {result['samples'][0]['ref']!r} -> {result['samples'][0]['hyp']!r}"
                )
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                accelerator.wait_for_everyone()
                if main:
                    state = {
                        "step": step,
                        "epoch": epoch,
                        "batch_in_epoch": batch_in_epoch,
                        "history": history,
                    }
                    save_checkpoint(
                        accelerator, model, optimizer, scheduler, state, output_dir, cfg.keep_checkpoints
                    )
            if step >= cfg.max_steps:
                break
        else:
            epoch, batch_in_epoch = epoch + 1, 0
    progress.close()
    train_seconds = time.time() - t_train

    summary: dict[str, Any] = {}
    if main:
        final = output_dir / "final"
        tmp = output_dir / ".tmp-final"
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped.save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        after = evaluate_examples(unwrapped, eval_examples, cfg.eval_batch_size) if eval_examples else None
        summary = {
            "checkpoint": str(final.resolve()),
            "steps": step,
            "num_processes": accelerator.num_processes,
            "train_examples": len(train_examples),
            "eval_examples": len(eval_examples),
            "eval_wer_before": before["wer"] if before else None,
            "eval_wer_after": after["wer"] if after else None,
            "eval_cer_after": after["cer"] if after else None,
            "samples_per_s": samples_seen / max(train_seconds, 1e-9),
            "train_seconds": train_seconds,
            "prepare_seconds": prep_seconds,
            "load_seconds": load_seconds,
            "cache": {"hits": cache.hits, "misses": cache.misses} if cache else None,
            "bad_rows": len(bad),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "trainable_parameters": sum(p.numel() for p in trainable),
            "training": asdict(cfg),
        }
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if after:
            (output_dir / "eval_samples.jsonl").write_text(
                "".join(json.dumps(s) + "\n" for s in after["samples"])
            )
        bad.write(output_dir / "bad_rows.jsonl")
        print(bad.summary())
        if before and after:
            print(
                f"eval WER before training: {before['wer']:.1%}  after: {after['wer']:.1%}  ({len(eval_examples)} clips)"
            )
        print(f"peak memory (RSS): {summary['peak_rss_mb']:.0f} MB")
        print(f"checkpoint: {final.resolve()}")
        if run is not None:
            run.summary.update({k: v for k, v in summary.items() if isinstance(v, int | float)})
            run.finish()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary, unwrapped


def _log(path: Path, row: dict[str, Any], run: Any) -> None:
    """Append to the CSV log (all columns, blanks where a row lacks one) and to wandb."""
    columns = ["step", "epoch", "loss", "lr", "samples_per_s", "eval_wer", "eval_cer"]
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)
    if run is not None:
        run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])


def _init_wandb(cfg: TrainingConfig, model_config: dict[str, Any], data: DataConfig) -> Any:
    """wandb offline by default (never touches the network), online only when asked."""
    mode = cfg.wandb.get("mode", "offline")
    if mode == "disabled":
        return None
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(
        project=cfg.wandb.get("project", "asr"),
        mode=mode,
        dir=cfg.output_dir,
        config={"model": model_config, "training": asdict(cfg), "data": asdict(data)},
        settings=wandb.Settings(init_timeout=60, console="off"),
    )
