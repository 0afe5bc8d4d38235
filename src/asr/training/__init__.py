"""Training: data -> cached encoder frames -> projector (and LoRA), one accelerate loop.

- :mod:`asr.training.config`: :class:`TrainingConfig`, :class:`DataConfig` and the Hydra schemas
  (``register_configs``, ``configs_from_hydra``) that ``train.py`` uses;
- :mod:`asr.training.checkpoint`: atomic ``step-N`` checkpoints and the final save;
- :mod:`asr.training.loop`: the setup steps and :func:`train`.
"""

from asr.training.config import DataConfig, TrainingConfig
from asr.training.loop import train

__all__ = ["DataConfig", "TrainingConfig", "train"]
