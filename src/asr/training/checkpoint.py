"""Checkpoints of a training run, written atomically (a temporary folder, then one rename).

``<output_dir>/checkpoints/step-N`` holds the trainable weights, optimiser, scheduler, RNG states
and the data position (``state.json``, written last: it marks the checkpoint complete), so a resumed
run replays the same data order and learning-rate schedule. ``<output_dir>/final`` is the model
alone (config, generation config, processor, trainable weights).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from asr.modeling import WEIGHTS_NAME, ASRModel

CHECKPOINT_PREFIX = "step-"


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
    """Write ``checkpoints/step-N`` atomically: everything into a temp folder, then one rename;
    then drop all but the ``keep`` newest."""
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
    tmp = output_dir / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final
