"""How long each representation of a clip is: samples -> log-mel frames -> encoder frames -> LLM
positions. The one home of this arithmetic; everything else calls it.

At 16 kHz a log-mel frame is 160 samples (10 ms), Whisper's conv stem halves the frame rate (20 ms
per encoder frame), and the projector stacks ``k`` encoder frames into one LLM position
(k = 5: 100 ms).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # no torch at run time: the NumPy runtime (asr.runtime) imports this module
    import torch

SAMPLE_RATE = 16_000
HOP_LENGTH = 160  # samples per 10 ms log-mel frame
WHISPER_WINDOW_SECONDS = 30.0
WHISPER_WINDOW_FRAMES = int(WHISPER_WINDOW_SECONDS * SAMPLE_RATE) // HOP_LENGTH  # 3000 mel frames

N = TypeVar("N", int, "torch.Tensor")


def mel_frames(num_samples: N) -> N:
    """Log-mel frames Whisper's feature extractor gives ``num_samples`` of audio."""
    return num_samples // HOP_LENGTH


def encoder_frames(mel_lengths: N) -> N:
    """Encoder frames from ``mel_lengths`` mel frames (conv2: kernel 3, stride 2, padding 1)."""
    return (mel_lengths + 1) // 2


def audio_positions(frames: N, stack: int) -> N:
    """LLM positions a projector that stacks ``stack`` frames gives ``frames`` encoder frames."""
    return (frames + stack - 1) // stack


def seconds(mel_lengths: N) -> float:
    """Duration of ``mel_lengths`` log-mel frames (the longest, for a tensor)."""
    return float(mel_lengths.max() if hasattr(mel_lengths, "max") else mel_lengths) * HOP_LENGTH / SAMPLE_RATE
