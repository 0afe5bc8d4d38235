"""Run by test_kill.py in a subprocess that gets SIGKILLed: one tiny training run, resumable."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_training import tiny_model_config  # noqa: E402

from asr.training import DataConfig, TrainingConfig, train  # noqa: E402

torch.set_num_threads(1)
manifest, out = sys.argv[1], Path(sys.argv[2])
data = DataConfig(train=[{"type": "manifest", "path": manifest}], eval=[])
cfg = TrainingConfig(
    output_dir=str(out),
    max_steps=12,
    batch_size=3,
    warmup_steps=2,
    save_every=1,  # a checkpoint after every step: a kill lands in or between saves
    log_every=1,
    cache_encoder=False,
    learning_rate=1e-2,
    wandb={"mode": "disabled"},
    mixed_precision="no",
)
summary, model = train(tiny_model_config(), data, cfg)
torch.save(model.trainable_state_dict(), out / "result.pt")
