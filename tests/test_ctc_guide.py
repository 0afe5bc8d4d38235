"""CTC-guided decoding: prefix scores against brute force over every alignment, and the step rule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from asr.ctc_guide import CTCPrefixScorer, best, guided_scores, log_softmax


def small(seed: int = 0, positions: int = 5, vocab: int = 3, width: int = 4):
    rng = np.random.default_rng(seed)
    audio = rng.standard_normal((positions, width)).astype(np.float32)
    embeddings = rng.standard_normal((vocab, width)).astype(np.float32)
    blank_weight, blank_bias, log_scale = rng.standard_normal(width).astype(np.float32), 0.3, 0.2
    scorer = CTCPrefixScorer(audio, embeddings, blank_weight, blank_bias, log_scale)
    logits = np.concatenate(
        [audio @ embeddings.T * np.exp(log_scale), (audio @ blank_weight + blank_bias)[:, None]], axis=1
    )
    return scorer, np.exp(log_softmax(logits.astype(np.float64)))  # (P, V + 1), blank last


def collapse(path: tuple[int, ...], blank: int) -> tuple[int, ...]:
    return tuple(c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1]))


def brute_force(probs: np.ndarray) -> dict[tuple[int, ...], float]:
    """Every alignment's probability, summed by the label sequence it collapses to."""
    blank = probs.shape[1] - 1
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(probs.shape[1]), repeat=len(probs)):
        p = float(np.prod(probs[np.arange(len(probs)), path]))
        key = collapse(path, blank)
        totals[key] = totals.get(key, 0.0) + p
    return totals


def prefix_probability(totals: dict[tuple[int, ...], float], prefix: tuple[int, ...]) -> float:
    return sum(p for labels, p in totals.items() if labels[: len(prefix)] == prefix)


@pytest.mark.parametrize("seed", [0, 1])
def test_prefix_scores_equal_brute_force(seed: int) -> None:
    """psi(g + c) / psi(g) and P(g) / psi(g) along a prefix with a repeated token (the CTC
    recursion's special case), against sums over all 4^5 alignments."""
    scorer, probs = small(seed)
    totals = brute_force(probs)
    prefix: tuple[int, ...] = ()
    for token in (1, 1, 0):
        gains = scorer.gains([0, 1, 2])
        for c, gain in zip([0, 1, 2], gains, strict=True):
            want = prefix_probability(totals, (*prefix, c)) / prefix_probability(totals, prefix)
            assert gain == pytest.approx(np.log(want), abs=1e-9)
        end = totals.get(prefix, 0.0) / prefix_probability(totals, prefix)
        assert scorer.end_gain() == pytest.approx(np.log(end), abs=1e-9)
        scorer.advance(token)
        prefix = (*prefix, token)
    with pytest.raises(ValueError, match="not a candidate"):
        scorer.advance(2)


def test_guided_step_reranks_the_top_k_only() -> None:
    scorer, _ = small(3)
    log_probs = log_softmax(np.array([2.0, 1.9, -5.0, 0.0]))  # token 3 plays end of text
    joint = guided_scores(log_probs, scorer, weight=0.0, top_k=2, eos=3)
    assert set(joint) == {0, 1} and best(joint) == 0  # weight 0: the LLM's own greedy choice
    gains = dict(zip([0, 1], scorer.gains([0, 1]), strict=True))
    heavy = guided_scores(log_probs, scorer, weight=50.0, top_k=2, eos=3)
    assert best(heavy) == max(gains, key=gains.get)  # a heavy weight: the CTC head's choice
    with_end = guided_scores(log_probs, scorer, weight=1.0, top_k=4, eos=3)
    assert with_end[3] == pytest.approx(log_probs[3] + scorer.end_gain())
    assert best({5: 1.0, 2: 1.0}) == 2  # ties: the lowest id, as argmax
