"""Projectors: encoder frames -> LLM embeddings, one registry, one output-length contract.

Every projector maps ``(batch, frames, encoder_width)`` to ``(batch, output_length(frames),
llm_width)`` and exposes ``output_length(n)`` so that prompts can reserve exactly that many audio
positions before the projector runs (and so that cached encoder outputs of any length fit).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from asr.config import ASRConfig
from asr.lengths import audio_positions

PROJECTORS: dict[str, type[Projector]] = {}


def register_projector(name: str) -> Callable[[type[Projector]], type[Projector]]:
    """Class decorator adding a projector type to :data:`PROJECTORS` under ``name``."""

    def add(cls: type[Projector]) -> type[Projector]:
        if name in PROJECTORS:
            raise ValueError(f"projector type {name!r} is already registered")
        PROJECTORS[name] = cls
        return cls

    return add


def build_projector(config: ASRConfig) -> Projector:
    if config.projector_type not in PROJECTORS:
        raise ValueError(f"projector_type={config.projector_type!r}: expected one of {sorted(PROJECTORS)}")
    return PROJECTORS[config.projector_type](config)


class Projector(nn.Module):
    """Base class: k-frame stacking shared by all types (k=1 means no stacking)."""

    def __init__(self, config: ASRConfig) -> None:
        super().__init__()
        self.k = config.projector_stack
        self.in_width = config.encoder_width
        self.out_width = config.decoder_width

    def output_length(self, n: int | torch.Tensor) -> int | torch.Tensor:
        """Positions produced from ``n`` encoder frames: ceil(n / k)."""
        return audio_positions(n, self.k)

    def stack(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, ceil(T/k), k*D); the tail is zero-padded to a multiple of k."""
        b, t, d = frames.shape
        pad = (-t) % self.k
        if pad:
            frames = nn.functional.pad(frames, (0, 0, 0, pad))
        return frames.reshape(b, (t + pad) // self.k, self.k * d)


def _output_norm(config: ASRConfig) -> nn.LayerNorm:
    """LayerNorm whose gain starts at the LLM embeddings' RMS, so that audio vectors enter the
    LLM at the scale of its own token embeddings (about 0.13 for SmolLM2) instead of ~1."""
    norm = nn.LayerNorm(config.decoder_width)
    if config.projector_output_rms is not None:
        nn.init.constant_(norm.weight, float(config.projector_output_rms))
    return norm


@register_projector("stack_mlp")
class StackMLPProjector(Projector):
    """Stack k frames, Linear -> GELU -> Linear to the LLM width, then LayerNorm (the default)."""

    def __init__(self, config: ASRConfig) -> None:
        super().__init__(config)
        hidden = config.projector_hidden or self.out_width
        self.linear_1 = nn.Linear(self.k * self.in_width, hidden)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(config.projector_dropout)
        self.linear_2 = nn.Linear(hidden, self.out_width)
        self.norm = _output_norm(config)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.linear_1(self.stack(frames))
        return self.norm(self.linear_2(self.dropout(self.act(x))))


@register_projector("stack_linear")
class StackLinearProjector(Projector):
    """Stack k frames and one Linear to the LLM width, then LayerNorm: the smallest baseline."""

    def __init__(self, config: ASRConfig) -> None:
        super().__init__(config)
        self.linear = nn.Linear(self.k * self.in_width, self.out_width)
        self.norm = _output_norm(config)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(self.stack(frames)))


@register_projector("conv_mlp")
class ConvMLPProjector(Projector):
    """A strided Conv1d (kernel k, stride k) instead of stacking, then the MLP: a learned
    down-sampler with the same output-length contract."""

    def __init__(self, config: ASRConfig) -> None:
        super().__init__(config)
        hidden = config.projector_hidden or self.out_width
        self.conv = nn.Conv1d(self.in_width, hidden, kernel_size=self.k, stride=self.k)
        self.act = nn.GELU()
        self.linear = nn.Linear(hidden, self.out_width)
        self.norm = _output_norm(config)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        pad = (-frames.shape[1]) % self.k
        x = nn.functional.pad(frames, (0, 0, 0, pad)).transpose(1, 2)
        x = self.act(self.conv(x)).transpose(1, 2)
        return self.norm(self.linear(x))
