"""The frozen Whisper encoder, run on just the frames that hold audio.

Whisper's encoder was trained on 30 s windows (3000 mel frames -> 1500 frames of 20 ms). Two
paths give the projector only the frames that hold audio:

- ``padded``: the standard 30 s input, output trimmed to ``ceil(mel_frames / 2)`` frames;
- ``variable``: the convolution stem, positions and layers run on the audio frames alone (padded
  only to the longest clip of the batch, with a key-padding mask), which is up to 10x cheaper for
  short clips.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from asr.lengths import encoder_frames


class AudioEncoder(nn.Module):
    """Wraps a HF ``WhisperEncoder`` and returns ``(frames, lengths)`` without padding frames."""

    def __init__(self, whisper: WhisperEncoder, mode: str = "variable") -> None:
        super().__init__()
        self.whisper = whisper
        self.mode = mode
        self.window = whisper.config.max_source_positions * 2  # 3000 mel frames

    @property
    def width(self) -> int:
        return self.whisper.config.d_model

    def forward(
        self, input_features: torch.Tensor, mel_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_features``: (B, n_mels, T) log-mel, T <= 3000; ``mel_lengths``: (B,) frames
        that hold audio. Returns (B, max(lengths), width) and the per-clip frame counts."""
        if input_features.shape[-1] > self.window:
            raise ValueError(
                f"input has {input_features.shape[-1]} mel frames; Whisper's window is {self.window}"
            )
        lengths = encoder_frames(mel_lengths.to(input_features.device))
        if self.mode == "padded":
            frames = self.padded(input_features)
        else:
            frames = self.variable(input_features, lengths)
        return frames[:, : int(lengths.max())], lengths

    def padded(self, input_features: torch.Tensor) -> torch.Tensor:
        """The stock 30 s path: (B, 1500, width)."""
        pad = self.window - input_features.shape[-1]
        if pad:
            input_features = self._pad_features(input_features, pad)
        return self.whisper(input_features).last_hidden_state

    @staticmethod
    def _pad_features(features: torch.Tensor, pad: int) -> torch.Tensor:
        # Whisper clamps log-mel at (max - 8) before scaling by 1/4: digital silence sits at max - 2
        floor = features.amax(dim=(1, 2), keepdim=True) - 2.0
        return torch.cat([features, floor.expand(-1, features.shape[1], pad)], dim=-1)

    def variable(self, input_features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Only the frames that hold audio, batched with a key-padding mask."""
        w = self.whisper
        t = int(lengths.max())
        # output frame i reads mel frames up to 2i + 2 (kernel 3, padding 1, conv2 stride 2), so
        # the last one needs mel frame 2t: the real frame, as in the 30 s path, not the conv's
        # zero padding (which made a clip's output depend on the batch it was in)
        t_mel = min(2 * t + 1, self.window)
        x = input_features[..., :t_mel]
        if x.shape[-1] < t_mel:
            x = self._pad_features(x, t_mel - x.shape[-1])
        x = nn.functional.gelu(w.conv1(x))
        x = nn.functional.gelu(w.conv2(x)).permute(0, 2, 1)[:, :t]
        x = x + w.embed_positions.weight[:t].to(x.dtype)
        mask = None
        if bool((lengths < t).any()):
            keep = torch.arange(t, device=x.device)[None, :] < lengths[:, None]
            mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device)
            mask = mask.masked_fill(~keep, torch.finfo(x.dtype).min)[:, None, None, :].expand(-1, 1, t, t)
        for layer in w.layers:
            x = layer(x, mask)
        return w.layer_norm(x)
