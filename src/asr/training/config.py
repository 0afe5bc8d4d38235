"""The configuration of a training run: dataclasses with their defaults and checks, and the Hydra
schemas built from them.

Every option has one source of truth. :class:`TrainingConfig` and :class:`DataConfig` live here,
the prompt in :class:`asr.processing.PromptConfig`, decoding in
:class:`asr.generation.DecodingConfig`, and the architecture in the signature of
:class:`asr.config.ASRConfig` (the ``model`` schema is generated from it at run time, so it follows
whatever that signature is). :func:`register_configs` puts them into Hydra's ConfigStore, so the
YAML files under ``conf/`` hold only what they change and an unknown key or a wrong type fails at
composition, naming the key. :func:`configs_from_hydra` turns a composed tree into the objects
:func:`asr.training.train` takes, running every dataclass's checks.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from asr.augment import AugmentConfig
from asr.config import ASRConfig
from asr.generation import DecodingConfig
from asr.processing import PromptConfig


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
    scheduler: str = "cosine"  # cosine | linear | constant_with_warmup
    max_grad_norm: float = 1.0
    seed: int = 0
    mixed_precision: str = "auto"  # auto | bf16 | fp16 | no
    threads: int | None = None
    group_by_length: bool = True
    # the feature store (asr.store): encoder frames computed once per clip, memory-mapped in training
    cache_encoder: bool = True  # False: the store lives in output_dir, not shared with other runs
    cache_dir: str | None = None  # the shared store's root; default: $ASR_CACHE/feature-store
    precompute: bool = True  # False: decode in workers and run the encoder every step (naive path;
    # also what an encoder with LoRA gets, whatever this says: stored frames would not train it)
    num_workers: int = 0  # DataLoader workers: decoding (store build, on-the-fly path) and reading
    batch_seconds: float | None = None  # dynamic batches: rows x longest clip <= this many seconds
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
            "num_workers": self.num_workers >= 0,
            "batch_seconds": self.batch_seconds is None or self.batch_seconds > 0,
            "mixed_precision": self.mixed_precision in ("auto", "bf16", "fp16", "no"),
            "scheduler": self.scheduler in ("cosine", "linear", "constant_with_warmup"),
            "wandb.mode": self.wandb.get("mode", "offline") in ("offline", "online", "disabled"),
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"training.{key}: invalid value {getattr(self, key.split('.')[0])!r}")


@dataclass
class DataConfig:
    """The corpora (see :func:`asr.data.read_source` for the keys of one entry, and
    :func:`asr.corpus.index_sources` for ``weight`` and ``fraction``), how clips and transcripts
    are filtered, and augmentation; Hydra's ``data`` group."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    max_seconds: float = 30.0
    text_normalization: str = "none"  # none | lower | plain
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # on-the-fly, in workers

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):  # from a composed Hydra tree
            self.augment = AugmentConfig(**self.augment)
        if not self.train:
            raise ValueError("data.train: at least one corpus is needed")
        if not 0 < self.max_seconds <= 30:
            raise ValueError(f"data.max_seconds={self.max_seconds}: must be in (0, 30], Whisper's window")


# --------------------------------------------------------------------------- Hydra schemas

_SCALARS = (str, int, float, bool)


def _omegaconf_type(hint: Any) -> Any:
    """A type OmegaConf can check: scalars and optional scalars as they are, anything else
    (``dict[str, Any] | None``: LoRA arguments, sub-model configs) as ``Any``."""
    if hint in _SCALARS:
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(inner) == 1 and inner[0] in _SCALARS:
            return inner[0] | None
    return Any


def model_schema() -> type:
    """The ``model`` group's schema: one field per parameter of ``ASRConfig.__init__`` (but
    ``self``/``kwargs``), with its default; built when called, so it follows the signature."""
    hints = typing.get_type_hints(ASRConfig.__init__)
    fields = []
    for name, param in inspect.signature(ASRConfig.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        default = dataclasses.MISSING if param.default is param.empty else param.default
        if isinstance(default, dict | list):
            spec = field(default_factory=lambda d=default: type(d)(d))
        else:
            spec = field(default=default)
        fields.append((name, _omegaconf_type(hints.get(name, Any)), spec))
    return dataclasses.make_dataclass("ModelConfig", fields)


# the groups of conf/ and the schema each one's node is checked against
GROUPS = ("model", "data", "training", "prompt", "generation")


def config_schema() -> type:
    """The schema of the whole tree: one typed node per group."""
    schemas = {
        "model": model_schema(),
        "data": DataConfig,
        "training": TrainingConfig,
        "prompt": PromptConfig,
        "generation": DecodingConfig,
    }
    fields = []
    for name in GROUPS:
        schema = schemas[name]
        if any(
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            for f in dataclasses.fields(schema)
        ):
            spec = field(default=MISSING)  # "???": a group fills it (data.train has no default)
        else:
            spec = field(default_factory=schema)
        fields.append((name, schema, spec))
    return dataclasses.make_dataclass("Config", fields)


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore: ``base_config`` (the whole tree, which
    ``conf/config.yaml`` puts first in its defaults list) and each group's own as
    ``<group>/schema``. Called by ``train.py`` (and tests) before composing, never on import."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    root = config_schema()
    store.store(name="base_config", node=root)
    for f in dataclasses.fields(root):
        store.store(group=f.name, name="schema", node=f.type)


# --------------------------------------------------------------------------- composed tree -> objects


class RunConfigs(NamedTuple):
    """What :func:`asr.training.train` takes, built from one composed Hydra tree."""

    model: dict[str, Any]  # ASRConfig keyword arguments
    data: DataConfig
    training: TrainingConfig
    prompt: PromptConfig
    generation: DecodingConfig


class ConfigError(ValueError):
    """A composed tree that cannot become a run's configs (the message names the key)."""


def configs_from_hydra(cfg: DictConfig) -> RunConfigs:
    """The composed tree -> ``ASRConfig`` kwargs, ``DataConfig``, ``TrainingConfig``,
    ``PromptConfig``, ``DecodingConfig``, checked before anything loads: a value left at ``???``,
    a key the schema lacks (added with ``+group.key=``), or a value a class's checks reject
    raises :class:`ConfigError` naming the key."""
    tree = {group: _container(cfg, group) for group in GROUPS}
    model_keys = {f.name for f in dataclasses.fields(model_schema())}
    model = _known("model", tree["model"], model_keys)
    ASRConfig(**model)  # its own checks (encoder_mode, projector_stack ...), before any weights load
    built = {
        group: cls(**_known(group, tree[group], {f.name for f in dataclasses.fields(cls)}))
        for group, cls in (
            ("data", DataConfig),
            ("training", TrainingConfig),
            ("prompt", PromptConfig),
            ("generation", DecodingConfig),
        )
    }
    return RunConfigs(model=model, **built)


def _container(cfg: DictConfig, group: str) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg[group], resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        key = re.sub(r"\[(\d+)\]", r".\1", error.full_key)  # data.train[0].path -> data.train.0.path
        raise ConfigError(f"missing mandatory value {key}: set it on the command line ({key}=...)") from error


def _known(group: str, values: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    unknown = sorted(set(values) - allowed)
    if unknown:
        keys = ", ".join(f"{group}.{key}" for key in unknown)
        raise ConfigError(f"unknown config key(s) {keys}; allowed: {sorted(allowed)}")
    return values
