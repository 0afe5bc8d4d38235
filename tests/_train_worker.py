"""Run in a subprocess by the tests (torch.distributed.run for DDP, or killed with SIGKILL):
one tiny training run. Usage: _train_worker.py MANIFEST OUT [JSON TrainingConfig overrides]."""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_training import tiny_model_config  # noqa: E402

import asr.training.loop  # noqa: E402
from asr.corpus import StoreDataset  # noqa: E402
from asr.training import DataConfig, TrainingConfig, train  # noqa: E402

# what this rank encoded into the feature store and which rows it trained on, in order
seen: dict[str, list] = {"encoded": [], "trained": []}
_build, _getitem = asr.training.loop.build_store, StoreDataset.__getitem__


def recording_build(rows, *args, **kwargs):
    seen["encoded"].append(_build(rows, *args, **kwargs))
    return seen["encoded"][-1]


def recording_getitem(self, i):
    seen["trained"].append(self.rows[i].id)
    return _getitem(self, i)


asr.training.loop.build_store, StoreDataset.__getitem__ = recording_build, recording_getitem

torch.set_num_threads(1)
manifest, out = sys.argv[1], Path(sys.argv[2])
overrides = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
data = DataConfig(train=[{"type": "manifest", "path": manifest}], eval=[])
cfg = TrainingConfig(
    **{
        "output_dir": str(out),
        "max_steps": 4,
        "batch_size": 2,
        "warmup_steps": 1,
        "save_every": 100,
        "eval_every": 100,
        "cache_encoder": False,
        "wandb": {"mode": "disabled"},
        "mixed_precision": "no",
        **overrides,
    }
)
summary, model = train(tiny_model_config(), data, cfg)
rank = int(os.environ.get("RANK", 0))
torch.save({"summary": summary, "state": model.trainable_state_dict(), **seen}, out / f"rank{rank}.pt")
