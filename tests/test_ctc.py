"""The auxiliary CTC loss (asr.ctc): targets, the loss against a brute-force sum over alignments,
what it rewards, how it joins the model's loss, and checkpoints with and without the head."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model
from test_modeling import clips, training_batch

from asr import ASRModel
from asr.ctc import CTCHead, ctc_greedy, ctc_targets
from asr.prompt import IGNORE_INDEX
from asr.training.loop import build_model

TEXTS = ["one two three", "four", "five six seven eight", "nine"]


def test_targets_are_the_transcript_tokens_without_the_end_of_turn() -> None:
    model = tiny_model()
    batch = training_batch(model, clips(1.0, 0.5, 1.5, 0.8), TEXTS)
    targets, lengths = ctc_targets(batch["labels"], (model.generation_config.eos_token_id,))
    tokenizer = model.processor.tokenizer
    expected = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    assert lengths.tolist() == [len(e) for e in expected]
    assert targets.tolist() == [token for e in expected for token in e]
    # the labels themselves still end with the end-of-turn token
    last = [row[row != IGNORE_INDEX][-1].item() for row in batch["labels"]]
    assert last == [model.generation_config.eos_token_id] * 4


def reference_ctc(log_probs: torch.Tensor, target: list[int], blank: int) -> float:
    """-log of the summed probability of every path that collapses to ``target`` (brute force)."""
    total = 0.0
    steps, classes = log_probs.shape
    for path in itertools.product(range(classes), repeat=steps):
        collapsed = [c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1])]
        if collapsed == target:
            total += math.exp(sum(log_probs[t, c].item() for t, c in enumerate(path)))
    return -math.log(total)


def test_loss_equals_the_sum_over_alignments() -> None:
    torch.manual_seed(0)
    head = CTCHead(6)
    embeddings = torch.randn(50, 6)
    audio = torch.randn(1, 5, 6)
    labels = torch.tensor([[IGNORE_INDEX, 7, 3, 7, 2, IGNORE_INDEX]])  # 2: end of turn
    loss = head.loss(audio, torch.tensor([5]), labels, embeddings, drop_ids=(2,))
    # classes: the batch's distinct tokens in sorted order (3, 7), then the blank
    log_probs = head(audio, embeddings[torch.tensor([3, 7])])[0]
    expected = reference_ctc(log_probs, [1, 0, 1], blank=2) / 3  # mean: per target token
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_greedy_readout_merges_repeats_drops_blanks_and_stops_at_each_length() -> None:
    blank = 3
    paths = [[0, 0, 3, 1, 1, 3, 1, 2], [2, 3, 2, 2, 0, 0, 0, 0]]
    log_probs = torch.full((2, 8, 4), -10.0)
    for row, path in enumerate(paths):
        log_probs[row, torch.arange(8), torch.tensor(path)] = 0.0
    assert blank == log_probs.shape[-1] - 1
    # row 0: "0 0 _ 1 1 _ 1 2" -> 0 1 1 2 (the blank keeps the two 1s apart); row 1 stops after 4
    assert ctc_greedy(log_probs, torch.tensor([8, 4])) == [[0, 1, 1, 2], [2, 2]]


def test_greedy_readout_of_audio_at_the_token_embeddings_is_the_transcript() -> None:
    torch.manual_seed(0)
    head = CTCHead(16)
    head.log_scale.data.fill_(2.0)  # a confident head
    embeddings = torch.nn.functional.normalize(torch.randn(40, 16), dim=-1) * 4
    spoken = [5, 9, 9, 30]
    audio = torch.stack([embeddings[t] for t in spoken])[None]
    audio = torch.cat([audio[:, :2], torch.zeros(1, 1, 16), audio[:, 2:]], dim=1)  # a gap between the 9s
    head.blank.weight.data.zero_()
    head.blank.bias.data.fill_(5.0)  # the zero vector is blank; the others are their tokens
    assert ctc_greedy(head(audio, embeddings), torch.tensor([5])) == [spoken]


def test_audio_near_the_spoken_tokens_scores_better_than_the_same_vectors_reordered() -> None:
    torch.manual_seed(0)
    head = CTCHead(16)
    embeddings = torch.randn(40, 16)
    spoken = [5, 9, 12, 30]
    labels = torch.tensor([spoken])
    aligned = torch.stack([embeddings[t] for t in spoken for _ in range(2)])[None]  # two positions a token
    reordered = aligned.flip(1)
    lengths = torch.tensor([8])
    assert (
        head.loss(aligned, lengths, labels, embeddings)
        < head.loss(reordered, lengths, labels, embeddings) - 1
    )


def test_model_loss_is_lm_plus_weighted_ctc_and_trains_the_head() -> None:
    plain, with_ctc = tiny_model(), tiny_model(ctc_weight=0.5)
    batch = training_batch(plain, clips(1.0, 0.5, 1.5, 0.8), TEXTS)
    with_ctc.train()
    out = with_ctc(**batch)
    assert out.loss.item() == pytest.approx(out.lm_loss.item() + 0.5 * out.ctc_loss.item(), rel=1e-6)
    # the head is built after the projector: same projector init, so the same LM loss
    assert out.lm_loss.item() == pytest.approx(plain.train()(**batch).loss.item(), rel=1e-6)
    assert plain(**batch).ctc_loss is None
    out.loss.backward()
    with_grad = {n.split(".")[0] for n, p in with_ctc.named_parameters() if p.grad is not None}
    assert with_grad == {"projector", "ctc_head"}
    optimiser = torch.optim.AdamW(with_ctc.parameters(), lr=1e-2)
    first = out.ctc_loss.item()
    for _ in range(20):
        optimiser.zero_grad()
        out = with_ctc(**batch)
        out.loss.backward()
        optimiser.step()
    assert out.ctc_loss.item() < 0.7 * first


def test_checkpoints_with_and_without_the_head(tmp_path: Path) -> None:
    model = tiny_model(ctc_weight=0.3)
    with torch.no_grad():
        model.ctc_head.log_scale.fill_(0.7)
    model.save_pretrained(tmp_path / "with")
    again = ASRModel.from_pretrained(tmp_path / "with")
    assert again.ctc_head.log_scale.item() == pytest.approx(0.7)
    # a run without CTC starts from it (the head is left behind) and decodes the same
    no_head = build_model({"ctc_weight": 0.0}, str(tmp_path / "with"))
    assert no_head.ctc_head is None
    torch.testing.assert_close(no_head.projector.linear_1.weight, model.projector.linear_1.weight)
    # a CTC run from a checkpoint without a head gets a fresh one
    tiny_model().save_pretrained(tmp_path / "without")
    fresh = build_model({"ctc_weight": 0.3}, str(tmp_path / "without"))
    assert fresh.ctc_head is not None and fresh.config.ctc_weight == 0.3
    assert fresh.ctc_head.log_scale.item() == 0.0


def test_negative_weight_is_rejected() -> None:
    with pytest.raises(ValueError, match="ctc_weight"):
        tiny_model(ctc_weight=-1.0)


def test_rows_longer_than_their_audio_are_ignored_not_infinite() -> None:
    head = CTCHead(8)
    embeddings = torch.randn(30, 8)
    labels = torch.tensor(
        [[1, 2, 3, 4, 5, 6], [7, 8, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]
    )
    loss = head.loss(torch.randn(2, 4, 8), torch.tensor([3, 4]), labels, embeddings)
    assert np.isfinite(loss.item())
