"""Checkpoints of a training run, written atomically (a temporary folder, then one rename).

``<output_dir>/checkpoints/step-N`` holds the trainable weights, optimiser, scheduler, RNG states
and the data position (``state.json``, written last: it marks the checkpoint complete), so a resumed
run replays the same data order and learning-rate schedule. ``<output_dir>/final`` is the model
alone (config, generation config, processor, trainable weights). :func:`average_checkpoints` writes
the mean of several saves' trainable weights as one more such folder (``asr average``).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from asr.modeling import WEIGHTS_NAME, ASRModel

CHECKPOINT_PREFIX = "step-"
# files of a step checkpoint that belong to the run, not to the model
RUN_STATE_FILES = {"optimizer.pt", "scheduler.pt", "rng.pt", "state.json"}


def step_of(path: Path) -> int | None:
    """The step of a ``step-N`` checkpoint folder, ``None`` for any other folder."""
    name = path.name
    return int(name[len(CHECKPOINT_PREFIX) :]) if name.startswith(CHECKPOINT_PREFIX) else None


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """A fresh temp folder beside ``final`` to write into; renamed to ``final`` (replacing it)
    once the block completes, so ``final`` is never half-written."""
    tmp = final.parent / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are never listed)."""
    root = output_dir / "checkpoints"
    found = (
        [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if (p / "state.json").is_file()]
        if root.is_dir()
        else []
    )
    return sorted(found, key=step_of)


def save_checkpoint(
    accelerator: Accelerator,
    model: ASRModel,
    optimizer,
    scheduler,
    state: dict[str, Any],
    output_dir: Path,
    keep: int,
) -> Path:
    """Write ``checkpoints/step-N`` atomically: everything into a temp folder, then one rename;
    then drop all but the ``keep`` newest."""
    final = output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{state['step']}"
    with atomic_folder(final) as tmp:
        accelerator.unwrap_model(model).save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(
            {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
            tmp / "rng.pt",
        )
        (tmp / "state.json").write_text(json.dumps(state, indent=2))  # written last: marks completeness
    for old in checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: ASRModel, optimizer, scheduler) -> dict[str, Any]:
    """Restore weights, optimiser, scheduler and RNG states; returns the saved ``state.json``."""
    model.load_trainable_state_dict(load_file(str(path / WEIGHTS_NAME)))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = torch.load(path / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return json.loads((path / "state.json").read_text())


def save_final(model: ASRModel, output_dir: Path) -> Path:
    """The trained model (no optimiser state) as ``<output_dir>/final``, atomically."""
    final = output_dir / "final"
    with atomic_folder(final) as tmp:
        model.save_pretrained(tmp)
    return final


def average_checkpoints(sources: list[Path], out: Path) -> Path:
    """Write the element-wise mean of the sources' trainable weights as a model folder at ``out``
    (atomically), with the newest source's config, generation config and processor files.

    Averaging the saves of a run at a constant learning rate (stochastic weight averaging) lands
    nearer the middle of the region they wander in than any one save. LoRA's two factors are
    averaged separately, which is close to averaging their product while the saves are close."""
    if not sources:
        raise ValueError("average_checkpoints: no checkpoints given")
    states = []
    for source in sources:
        weights = source / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{source}: no {WEIGHTS_NAME} (not a checkpoint folder)")
        states.append(load_file(str(weights)))
    names = set(states[0])
    for source, state in zip(sources[1:], states[1:], strict=True):
        if set(state) != names or any(state[n].shape != states[0][n].shape for n in names):
            raise ValueError(f"{source}: its weights do not match {sources[0]}'s (another model?)")
    mean = {
        n: (sum(s[n].double() for s in states) / len(states)).to(states[0][n].dtype) for n in sorted(names)
    }
    newest = max(sources, key=lambda p: (step_of(p) or -1, str(p)))
    with atomic_folder(out) as tmp:
        for file in newest.iterdir():
            if file.is_file() and file.name not in RUN_STATE_FILES and file.name != WEIGHTS_NAME:
                shutil.copy2(file, tmp / file.name)
        save_file(mean, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    return out
