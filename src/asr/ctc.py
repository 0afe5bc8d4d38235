"""An auxiliary CTC loss on the projector output, scored against the LLM's own token embeddings.

Why: with a frozen LLM and a few hours of speech, the next-token loss can be lowered by the LLM's
prior alone (fluent words that were never said), so the audio positions are pushed only weakly to
carry the words. CTC asks every audio position, on its own, to name the token being spoken (or
"blank"), so the projector must put the words into the audio vectors (Graves et al. 2006; used as
an auxiliary loss for LLM-based ASR e.g. by Fathullah et al. 2023).

The classes are tokens of the LLM's vocabulary, scored with its frozen output embeddings (tied to
the input embeddings in SmolLM2/SmolLM3): a position that scores high for a token lies near that
token's own embedding, which is what the LLM reads. Only a blank score and a temperature are
learned (578 parameters at width 576), so the head adds nothing that inference needs. The softmax
runs over the tokens of the batch's own transcripts (a sampled softmax, as in Jean et al. 2015),
not all 49k: the full vocabulary made a CPU step 46% slower (10.8 s vs 7.4 s, batch 8, 12 s clips)
for an auxiliary loss whose job is alignment, which in-batch contrast already asks for.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from asr.prompt import IGNORE_INDEX


class CTCHead(nn.Module):
    """Per-position log-probabilities over ``vocabulary + blank`` (the blank is the last class)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.blank = nn.Linear(width, 1)
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, audio: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, P, width) audio vectors, (C, width) class embeddings -> (B, P, C + 1) log-probs."""
        audio = audio.float()
        tokens = audio @ embeddings.float().T * self.log_scale.exp()
        return torch.cat([tokens, self.blank(audio)], dim=-1).log_softmax(-1)

    def guide_parameters(self) -> tuple[np.ndarray, float, float]:
        """``(blank weight (width,), blank bias, log scale)`` in NumPy: what CTC-guided decoding
        (:class:`asr.ctc_guide.CTCPrefixScorer`) reads, in torch and in the runtime's export."""
        weight = self.blank.weight.detach().float().cpu().numpy()[0]
        return weight, float(self.blank.bias.detach()[0]), float(self.log_scale.detach())

    def loss(
        self,
        audio: torch.Tensor,
        lengths: torch.Tensor,
        labels: torch.Tensor,
        embeddings: torch.Tensor,
        drop_ids: tuple[int, ...] = (),
    ) -> torch.Tensor:
        """Mean CTC loss per target token of the batch; targets are each row's label tokens but
        ``drop_ids`` (the end-of-turn token, which is not spoken), the classes the distinct tokens
        among them. Rows whose transcript has more tokens than the clip has positions contribute
        nothing (``zero_infinity``)."""
        targets, target_lengths = ctc_targets(labels, drop_ids)
        classes, targets = torch.unique(targets, return_inverse=True)
        log_probs = self(audio, embeddings[classes])
        return nn.functional.ctc_loss(
            log_probs.transpose(0, 1),
            targets,
            lengths.to(torch.long),
            target_lengths,
            blank=log_probs.shape[-1] - 1,
            reduction="mean",
            zero_infinity=True,
        )


def ctc_targets(labels: torch.Tensor, drop_ids: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (B, L) with IGNORE_INDEX outside the transcript -> (concatenated targets, lengths)."""
    keep = labels != IGNORE_INDEX
    for token in drop_ids:
        keep &= labels != token
    return labels[keep], keep.sum(dim=1)


def ctc_greedy(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """CTC's best-path read-out of (B, P, C + 1) log-probs (blank last): per row, the argmax class
    at each of its ``lengths`` positions, repeats merged, blanks dropped (Graves et al. 2006)."""
    blank = log_probs.shape[-1] - 1
    rows = []
    for best, n in zip(log_probs.argmax(-1).tolist(), lengths.tolist(), strict=True):
        path = best[: int(n)]
        rows.append([c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1])])
    return rows
