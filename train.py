"""Train an encoder-projector-LLM ASR model: `poetry run python train.py [hydra overrides]`.

Examples:
    python train.py                                   # offline default: packaged models, synthetic speech, CPU
    python train.py experiment=local_corpus           # the real corpora in ../shared/data
    python train.py experiment=flagship               # whisper-large-v3-turbo -> SmolLM3-3B, GPUs, hub
    python train.py model=offline_lora training.max_steps=500
    python train.py generation.num_beams=4 prompt.instruction="Write down what is said."
    torchrun --nproc_per_node 2 train.py ...          # DDP (gloo on CPU, NCCL on GPU)

The schemas (``asr.training.config.register_configs``) give every group of ``conf/`` its type, so
an unknown key or a wrong type fails while Hydra composes; ``configs_from_hydra`` then builds the
objects ``train`` takes and runs their checks.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from asr.training import train
from asr.training.config import configs_from_hydra, register_configs


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        run = configs_from_hydra(cfg)
    except ValueError as error:  # a missing or unknown key, a rejected value: the message names it
        raise SystemExit(f"config error: {error}") from None
    train(run.model, run.data, run.training, prompt=run.prompt, generation=run.generation)


if __name__ == "__main__":
    register_configs()
    main()
