"""Train an encoder-projector-LLM ASR model: `poetry run python train.py [hydra overrides]`.

Examples:
    python train.py                                   # offline default: packaged models, synthetic speech, CPU
    python train.py experiment=local_corpus           # the real corpora in ../shared/data
    python train.py experiment=flagship               # whisper-large-v3-turbo -> SmolLM3-3B, GPUs, hub
    python train.py model=offline_lora training.max_steps=500
    torchrun --nproc_per_node 2 train.py ...          # DDP (gloo on CPU, NCCL on GPU)
"""

from __future__ import annotations

import inspect
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from asr.config import ASRConfig
from asr.training import DataConfig, TrainingConfig, train


def _check_keys(group: str, values: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(f'{group}.{k}' for k in unknown)}; allowed: {sorted(allowed)}"
        )


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    model_keys = set(inspect.signature(ASRConfig.__init__).parameters) - {"self", "kwargs"}
    _check_keys("model", tree["model"], model_keys)
    _check_keys("data", tree["data"], set(inspect.signature(DataConfig).parameters))
    _check_keys("training", tree["training"], set(inspect.signature(TrainingConfig).parameters))
    train(tree["model"], DataConfig(**tree["data"]), TrainingConfig(**tree["training"]))


if __name__ == "__main__":
    main()
