"""The training run: setup steps, then one accelerate loop (:func:`train`).

One loop for a single process and ``torchrun``/``accelerate launch`` DDP alike: only trainable
parameters reach the optimiser, batches are grouped by length, gradients accumulate, bf16 autocast
runs where the hardware has it. Checkpoints (:mod:`asr.training.checkpoint`) carry the data
position, so a resumed run replays the data order and learning-rate schedule of an uninterrupted
one. Messages go through ``tqdm.write`` (they do not break the progress bar).
"""

from __future__ import annotations

import csv
import json
import os
import random
import resource
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm
from transformers import get_scheduler

from asr.augment import Augmenter
from asr.config import ASRConfig
from asr.corpus import (
    AudioDataset,
    MixtureSampler,
    Row,
    StoreDataset,
    add_contexts,
    build_store,
    estimate_frames,
    in_memory,
    index_sources,
    usable_rows,
)
from asr.data import BadRows, Collator, Example, HubClip
from asr.evaluate import corpus_cer, corpus_wer
from asr.first_pass import first_pass_key
from asr.generation import DecodingConfig
from asr.modeling import ASRModel, ASROutput
from asr.paths import cache_dir
from asr.precision import cpu_has_bf16
from asr.processing import ASRProcessor, PromptConfig
from asr.store import FeatureStore, HypothesisStore, encoder_key
from asr.training.checkpoint import checkpoints, load_checkpoint, save_checkpoint, save_final
from asr.training.config import DataConfig, TrainingConfig

# --------------------------------------------------------------------------- evaluation


def score(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus WER/CER after the project's Whisper-style normaliser (the same as ``asr evaluate``)."""
    return {"wer": corpus_wer(references, hypotheses), "cer": corpus_cer(references, hypotheses)}


def evaluate_examples(
    model: ASRModel,
    processor: ASRProcessor,
    examples: list[Example],
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Decode examples (cached frames or features) with the model's decoding options and score them."""
    was_training = model.training
    model.eval()
    hyps: list[str] = []
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    collate = Collator(processor, generation=True)  # left-padded prompts, the training batches' audio
    for batch in tqdm(batches, desc="evaluating", leave=False, disable=not progress):
        inputs = {k: v.to(model.device) for k, v in collate(batch).items()}
        hyps += processor.batch_decode(model.generate(**inputs))
    model.train(was_training)
    refs = [ex.text for ex in examples]
    return {
        **score(refs, hyps),
        "samples": [{"id": ex.id, "ref": r, "hyp": h} for ex, r, h in zip(examples, refs, hyps, strict=True)],
    }


# --------------------------------------------------------------------------- setup


def build_model(model_config: dict[str, Any], init_from: str | None) -> ASRModel:
    """A fresh model from sources, or an earlier stage's checkpoint.

    From a checkpoint the architecture (sources, projector) is the checkpoint's; ``model`` may only
    add LoRA adapters (``lora`` / ``encoder_lora``) that the checkpoint does not have yet: they
    start as the identity (peft's B = 0), so the stage begins exactly where the last one ended;
    and turn on a first pass (``first_pass: whisper``: a one-pass model trained on as two-pass).
    ``ctc_weight`` is the run's (a training objective: a new CTC head starts from its init).
    Prompt and decoding options are not the model's: they come from their own groups.
    """
    if not init_from:
        return ASRModel.from_sources(ASRConfig(**model_config))
    config = ASRConfig.from_pretrained(init_from)
    added = [key for key in ("lora", "encoder_lora") if model_config.get(key) and not getattr(config, key)]
    for key in added:
        setattr(config, key, dict(model_config[key]))
    if model_config.get("first_pass", "none") != "none":  # a one-pass checkpoint made two-pass
        config.first_pass = model_config["first_pass"]
        config.first_pass_n_best = int(model_config.get("first_pass_n_best", 1))
    config.ctc_weight = float(model_config.get("ctc_weight", 0.0))
    return ASRModel.from_pretrained(init_from, config=config, new_lora=bool(added))


def attach_processor(
    model: ASRModel, prompt: PromptConfig | None, generation: DecodingConfig | None
) -> ASRProcessor:
    """The processor this run batches and decodes with (the loaded model's, with the run's
    prompt), and the run's decoding options; ``None`` keeps the loaded ones. Both are saved with
    every checkpoint, so a later stage may change them freely."""
    processor = model.processor
    if prompt is not None and prompt != processor.prompt_config:
        processor = processor.with_prompt(prompt)
        model.set_processor(processor)
    if generation is not None:
        model.set_decoding(generation)
    return processor


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # CPU autocast in bf16 made fwd+bwd of the frozen LLM ~1.6x faster on a CPU with AVX-512 BF16;
    # without native bf16 (AVX2 only) a bf16 matmul is ~100x slower than float32
    return "bf16" if cpu_has_bf16() else "no"


def setup_accelerator(cfg: TrainingConfig) -> Accelerator:
    """Threads, the accelerator (DDP when launched by torchrun/accelerate) and the seeds."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # a fresh accelerator state for each run (the process's distributed state is kept): accelerate
    # refuses a second Accelerator with another precision, which a notebook or a test that trains
    # twice in one process asks for on a CPU where "auto" means bf16
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=_mixed_precision(cfg.mixed_precision),
        cpu=not torch.cuda.is_available(),  # without it, torchrun on CPU runs N independent jobs
    )
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    return accelerator


def load_model(
    model_config: dict[str, Any],
    cfg: TrainingConfig,
    accelerator: Accelerator,
    prompt: PromptConfig | None,
    generation: DecodingConfig | None,
) -> tuple[ASRModel, ASRProcessor]:
    model = build_model(model_config, cfg.init_from).to(accelerator.device)
    processor = attach_processor(model, prompt, generation)
    if accelerator.mixed_precision == "bf16":
        # the frozen LLM only ever runs under bf16 autocast: storing it in bf16 halves its memory
        # and saves re-casting every weight at every step; what trains (projector, LoRA) stays
        # float32 so that AdamW's small updates are not rounded away
        model.decoder.to(torch.bfloat16)
        for param in model.decoder.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    return model, processor


@dataclass
class Corpus:
    """The training set (a dataset over the row index), the eval examples (in memory), the bad
    rows met on the way, and what the feature store did."""

    train: torch.utils.data.Dataset
    rows: list[Row]
    weights: list[float]
    eval: list[Example]
    bad: BadRows
    seconds: float
    store: dict[str, Any] = field(default_factory=dict)


def store_root(cfg: TrainingConfig) -> Path:
    """Shared across runs (``$ASR_CACHE/feature-store``, or ``cache_dir``), or inside the run's
    folder with ``cache_encoder: false``."""
    if not cfg.cache_encoder:
        return Path(cfg.output_dir) / "feature-store"
    return Path(cfg.cache_dir) if cfg.cache_dir else cache_dir() / "feature-store"


def prepare_data(
    data: DataConfig, cfg: TrainingConfig, model: ASRModel, processor: ASRProcessor, accelerator: Accelerator
) -> Corpus:
    """Index the corpora (no audio in memory), fill the feature store with what it lacks (each
    rank its share, then a barrier), and build the datasets that read it.

    With ``precompute: false``, augmentation on, or an encoder that trains (``encoder_lora``),
    training examples are decoded (and augmented) in DataLoader workers and the encoder runs every
    step; eval examples come from the store, or as features when the encoder trains (frames
    from the stage's start would hide what it learns)."""
    t0 = time.time()
    progress = accelerator.is_main_process
    bad = BadRows()
    train_rows, weights = index_sources(data.train, bad, cfg.seed, data.text_normalization)
    add_contexts(train_rows, cfg.context_prob, cfg.seed)
    # an eval set must not change between evaluations: a weight below 1 keeps that fixed share
    eval_specs = [{**spec, "fraction": spec.get("fraction", spec.get("weight", 1.0))} for spec in data.eval]
    eval_rows = index_sources(eval_specs, bad, cfg.seed + 1, data.text_normalization)[0][: cfg.eval_samples]
    trains_encoder = any(p.requires_grad for p in model.encoder.parameters())
    on_the_fly = not cfg.precompute or data.augment.enabled or trains_encoder
    if on_the_fly:  # before any clip is encoded
        check_on_the_fly(train_rows, model, data)
    store = FeatureStore(store_root(cfg), encoder_key(model), model.config.encoder_width)
    hypotheses = None
    if model.config.first_pass != "none":
        key = first_pass_key(model.config.encoder_source, model.config.first_pass_n_best)
        hypotheses = HypothesisStore(store.dir.parent, key)
    built = build_store(
        eval_rows if on_the_fly and hypotheses is None else train_rows + eval_rows,
        model,
        processor,
        store,
        hypotheses,
        data.max_seconds,
        num_workers=cfg.num_workers,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        progress=progress,
    )
    accelerator.wait_for_everyone()  # sync point: every rank's shards are committed
    store.refresh()
    if hypotheses is not None:
        hypotheses.reload()  # the other ranks' lines
    usable = partial(usable_rows, store=store, tokenizer=processor.tokenizer, hypotheses=hypotheses)
    eval_rows = usable(eval_rows, bad=bad)
    if trains_encoder:
        features = AudioDataset(eval_rows, processor, max_seconds=data.max_seconds)
        eval_examples = [features[i] for i in range(len(eval_rows))]
    else:
        eval_examples = in_memory(eval_rows, store)
    if on_the_fly:
        for row in train_rows:
            row.frames = estimate_frames(row)
            row.first_pass = hypotheses.get(row.key) if hypotheses else None
        augmenter = Augmenter(data.augment, cfg.seed) if data.augment.enabled else None
        train = AudioDataset(train_rows, processor, augmenter, cfg.seed, data.max_seconds)
    else:
        train_rows = usable(train_rows, bad=bad)
        train = StoreDataset(train_rows, store)
    if not train_rows:
        raise RuntimeError(f"no usable training examples. {bad.summary()}")
    info = {"clips": len(store), "encoded_here": built, "dir": str(store.dir)}
    return Corpus(train, train_rows, weights, eval_examples, bad, time.time() - t0, info)


def check_on_the_fly(rows: list[Row], model: ASRModel, data: DataConfig) -> None:
    """What decoding clips by row in workers cannot serve."""
    if model.config.first_pass != "none" and data.augment.enabled:
        # the stored first pass heard the clean clip: paired with augmented audio it would teach
        # the LLM to trust the text over what it hears; a first pass per augmented sample would
        # cost more than the step itself
        raise ValueError("two-pass training (model.first_pass) does not support data.augment")
    if any(isinstance(row.audio, HubClip) for row in rows):
        raise ValueError(
            "hub corpora are streamed once into the feature store; augmentation and "
            "training.precompute=false read clips by row: use a manifest or audiofolder copy"
        )


@dataclass
class Run:
    """What the loop works with, after ``accelerator.prepare``."""

    accelerator: Accelerator
    model: Any  # the prepared (possibly DDP-wrapped) model
    unwrapped: ASRModel
    processor: ASRProcessor
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: MixtureSampler
    loader: torch.utils.data.DataLoader
    trainable: list[torch.nn.Parameter]
    output_dir: Path

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def setup_optimisation(
    model: ASRModel, processor: ASRProcessor, corpus: Corpus, cfg: TrainingConfig, accelerator: Accelerator
) -> Run:
    """AdamW over the trainable parameters only, the schedule, the length-grouped loader."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        cfg.scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps
    )
    sampler = MixtureSampler(
        [row.frames for row in corpus.rows],
        [row.corpus for row in corpus.rows],
        corpus.weights,
        cfg.batch_size,
        cfg.seed,
        cfg.group_by_length,
        cfg.batch_seconds,
    )
    loader = torch.utils.data.DataLoader(
        corpus.train,
        batch_sampler=sampler,
        collate_fn=Collator(processor),
        num_workers=cfg.num_workers,
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    return Run(
        accelerator=accelerator,
        model=model,
        unwrapped=accelerator.unwrap_model(model),
        processor=processor,
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=sampler,
        loader=loader,
        trainable=trainable,
        output_dir=Path(cfg.output_dir),
    )


@dataclass
class Position:
    """Where the run is (what ``state.json`` of a checkpoint holds)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def resume(run: Run, cfg: TrainingConfig) -> Position:
    """The newest complete checkpoint's position (weights, optimiser, RNG restored), or the start."""
    found = checkpoints(run.output_dir) if cfg.resume else []
    if not found:
        return Position()
    state = load_checkpoint(found[-1], run.unwrapped, run.optimizer, run.scheduler)
    position = Position(state["step"], state["epoch"], state["batch_in_epoch"], state["history"])
    if run.main:
        tqdm.write(f"resuming from {found[-1]} (step {position.step})")
    return position


def batches(run: Run, pos: Position, max_steps: int, bad: BadRows) -> Iterator[dict[str, torch.Tensor]]:
    """Micro-batches from ``pos`` on, epoch after epoch, advancing ``pos``'s data position: the
    same order whether the run started at step 0 or resumed from a checkpoint. Rows a worker
    could not decode are reported in ``bad`` and leave their batch."""
    while pos.step < max_steps:
        run.sampler.start_epoch(pos.epoch)
        run.loader.dataset.epoch = pos.epoch  # workers derive augmentation from it
        loader = run.loader
        if pos.batch_in_epoch:
            loader = run.accelerator.skip_first_batches(run.loader, pos.batch_in_epoch)
        for batch in loader:
            pos.batch_in_epoch += 1
            for skipped in batch.pop("skipped", []):
                bad.add(skipped.name, skipped.reason)
            if "input_ids" in batch:
                yield batch
        pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0


# --------------------------------------------------------------------------- logging


class Logger:
    """``log.csv`` (all columns, blanks where a row lacks one) and wandb; the main process only."""

    COLUMNS = ("step", "epoch", "loss", "ctc_loss", "lr", "samples_per_s", "eval_wer", "eval_cer")

    def __init__(self, run: Run, cfg: TrainingConfig, config: dict[str, Any]) -> None:
        run.output_dir.mkdir(parents=True, exist_ok=True)
        self.enabled = run.main
        self.path = run.output_dir / "log.csv"
        self.wandb = _init_wandb(cfg, config) if self.enabled else None

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def finish(self, summary: dict[str, Any]) -> None:
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in summary.items() if isinstance(v, int | float)})
            self.wandb.finish()


def run_config(
    model_config: dict[str, Any],
    data: DataConfig,
    cfg: TrainingConfig,
    prompt: PromptConfig | None,
    generation: DecodingConfig | None,
) -> dict[str, Any]:
    """Every option of the run, as wandb records it."""
    optional = {"prompt": prompt, "generation": generation}
    return {
        "model": model_config,
        "training": asdict(cfg),
        "data": asdict(data),
        **{key: asdict(value) for key, value in optional.items() if value is not None},
    }


def _init_wandb(cfg: TrainingConfig, config: dict[str, Any]) -> Any:
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
        config=config,
        settings=wandb.Settings(init_timeout=60, console="off"),
    )


class LossMeter:
    """Training loss and throughput between log rows (and in all). The loss stays a detached
    tensor until a row is logged, so the micro-steps never wait for the device to report it."""

    def __init__(self) -> None:
        self.start = self.interval_start = time.time()
        self.samples = self.interval_samples = 0
        self.first_step: float | None = None  # seconds from the loop's start to its first step
        self.total: torch.Tensor | float = 0.0
        self.ctc_total: torch.Tensor | float | None = None  # the auxiliary CTC loss, when trained
        self.count = 0

    def add(self, out: ASROutput, batch: dict[str, torch.Tensor]) -> None:
        self.total = self.total + out.loss.detach().double()
        if out.ctc_loss is not None:
            self.ctc_total = (self.ctc_total or 0.0) + out.ctc_loss.detach().double()
        self.count += 1
        self.samples += batch["input_ids"].shape[0]
        self.interval_samples += batch["input_ids"].shape[0]

    def stepped(self) -> None:
        if self.first_step is None:
            self.first_step = time.time() - self.start

    def row(self, run: Run, pos: Position) -> dict[str, Any]:
        loss = float(self.total / self.count)  # sync point: the one .item() per log row
        ctc = None if self.ctc_total is None else float(self.ctc_total / self.count)
        now = time.time()
        rate = self.interval_samples / max(now - self.interval_start, 1e-9)
        self.total, self.count, self.interval_samples, self.interval_start = 0.0, 0, 0, now
        self.ctc_total = None
        return {
            "step": pos.step,
            "epoch": pos.epoch,
            "loss": loss,
            "ctc_loss": ctc,
            "lr": run.scheduler.get_last_lr()[0],
            "samples_per_s": rate,
        }


def due(step: int, every: int, max_steps: int) -> bool:
    return step % every == 0 or step == max_steps


def log_eval(run: Run, corpus: Corpus, cfg: TrainingConfig, pos: Position, logger: Logger, when: str) -> dict:
    """Evaluate on the eval examples; one row in the history and the log, one line printed."""
    result = evaluate_examples(
        run.unwrapped, run.processor, corpus.eval, cfg.eval_batch_size, progress=when != "step"
    )
    pos.history.append({"step": pos.step, "eval_wer": result["wer"], "eval_cer": result["cer"]})
    logger.log(pos.history[-1])
    first = result["samples"][0]
    if when == "before":
        tqdm.write(
            f"eval before training: WER {result['wer']:.1%} CER {result['cer']:.1%} on {len(corpus.eval)} clips"
        )
    else:
        tqdm.write(f"step {pos.step}: eval WER {result['wer']:.1%} | {first['ref']!r} -> {first['hyp']!r}")
    return result


def save(run: Run, cfg: TrainingConfig, pos: Position) -> None:
    run.accelerator.wait_for_everyone()  # sync point: every rank has finished the step
    if run.main:
        save_checkpoint(
            run.accelerator,
            run.model,
            run.optimizer,
            run.scheduler,
            asdict(pos),
            run.output_dir,
            cfg.keep_checkpoints,
        )


# --------------------------------------------------------------------------- the run


def train(
    model_config: dict[str, Any],
    data: DataConfig,
    cfg: TrainingConfig,
    prompt: PromptConfig | None = None,
    generation: DecodingConfig | None = None,
) -> tuple[dict[str, Any], ASRModel]:
    """Run (or resume) one training stage. Returns the summary (also written to ``summary.json``
    on the main process; empty on the others) and this process's trained model.

    ``prompt`` / ``generation``: the prompt to train with and the decoding options of evaluation
    and of the saved checkpoint (``None``: the loaded model's own)."""
    accelerator = setup_accelerator(cfg)
    t0 = time.time()
    model, processor = load_model(model_config, cfg, accelerator, prompt, generation)
    processor.target_normalization = data.text_normalization  # saved with it: how answers are written
    load_seconds = time.time() - t0
    corpus = prepare_data(data, cfg, model, processor, accelerator)
    run = setup_optimisation(model, processor, corpus, cfg, accelerator)
    pos = resume(run, cfg)
    logger = Logger(run, cfg, run_config(model_config, data, cfg, prompt, generation))
    before = (
        log_eval(run, corpus, cfg, pos, logger, "before")
        if run.main and corpus.eval and pos.step == 0
        else None
    )

    run.model.train()
    progress = tqdm(total=cfg.max_steps, initial=pos.step, desc="training", disable=not run.main)
    meter = LossMeter()
    for batch in batches(run, pos, cfg.max_steps, corpus.bad):
        with accelerator.accumulate(run.model):
            out = run.model(**batch)
            accelerator.backward(
                out.loss
            )  # sync point (DDP): gradients all-reduced on a step's last micro-batch
            if accelerator.sync_gradients and cfg.max_grad_norm:
                accelerator.clip_grad_norm_(run.trainable, cfg.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad()
        meter.add(out, batch)  # no .item() here: the host does not wait for the device
        if not accelerator.sync_gradients:
            continue  # accumulating: not an optimiser step yet
        pos.step += 1
        meter.stepped()
        progress.update(1)
        if due(pos.step, cfg.log_every, cfg.max_steps):
            pos.history.append(meter.row(run, pos))  # sync point: loss.item()
            progress.set_postfix(loss=f"{pos.history[-1]['loss']:.3f}", lr=f"{pos.history[-1]['lr']:.1e}")
            logger.log(pos.history[-1])
        if run.main and corpus.eval and due(pos.step, cfg.eval_every, cfg.max_steps):
            log_eval(run, corpus, cfg, pos, logger, "step")
        if due(pos.step, cfg.save_every, cfg.max_steps):
            save(run, cfg, pos)  # sync point: all ranks wait for each other
        if pos.step >= cfg.max_steps:
            break
    progress.close()
    timings = {
        "train": time.time() - meter.start,
        "prepare": corpus.seconds,
        "load": load_seconds,
        # from train() to the end of the first optimiser step: load + data + first step
        "first_step": (meter.start - t0) + (meter.first_step or 0.0),
    }
    summary = finish(run, corpus, cfg, pos, before, meter, timings, logger)
    return summary, run.unwrapped


# --------------------------------------------------------------------------- the end


def finish(
    run: Run,
    corpus: Corpus,
    cfg: TrainingConfig,
    pos: Position,
    before: dict[str, Any] | None,
    meter: LossMeter,
    timings: dict[str, float],
    logger: Logger,
) -> dict[str, Any]:
    """Main process: the final save, the last evaluation, ``summary.json`` and the closing lines."""
    summary: dict[str, Any] = {}
    if run.main:
        final = save_final(run.unwrapped, run.output_dir)
        after = (
            evaluate_examples(run.unwrapped, run.processor, corpus.eval, cfg.eval_batch_size)
            if corpus.eval
            else None
        )
        summary = {
            "checkpoint": str(final.resolve()),
            "steps": pos.step,
            "num_processes": run.accelerator.num_processes,
            "train_examples": len(corpus.train),
            "eval_examples": len(corpus.eval),
            "eval_wer_before": before["wer"] if before else None,
            "eval_wer_after": after["wer"] if after else None,
            "eval_cer_after": after["cer"] if after else None,
            "samples_per_s": meter.samples / max(timings["train"], 1e-9),
            "train_seconds": timings["train"],
            "prepare_seconds": timings["prepare"],
            "load_seconds": timings["load"],
            "first_step_seconds": timings["first_step"],
            "feature_store": corpus.store,
            "bad_rows": len(corpus.bad),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "trainable_parameters": sum(p.numel() for p in run.trainable),
            "training": asdict(cfg),
        }
        report(run.output_dir, summary, corpus, before, after)
        logger.finish(summary)
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return summary


def report(
    output_dir: Path,
    summary: dict[str, Any],
    corpus: Corpus,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """``summary.json``, ``eval_samples.jsonl``, ``bad_rows.jsonl`` and the closing lines."""
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if after:
        (output_dir / "eval_samples.jsonl").write_text(
            "".join(json.dumps(s) + "\n" for s in after["samples"])
        )
    corpus.bad.write(output_dir / "bad_rows.jsonl")
    tqdm.write(corpus.bad.summary())
    if before and after:
        tqdm.write(
            f"eval WER before training: {before['wer']:.1%}  after: {after['wer']:.1%}  ({len(corpus.eval)} clips)"
        )
    tqdm.write(f"peak memory (RSS): {summary['peak_rss_mb']:.0f} MB")
    tqdm.write(f"checkpoint: {summary['checkpoint']}")
