"""CTC-guided greedy decoding: the CTC head's prefix score re-ranks the LLM's next tokens.

Why: a frozen LLM trained on a few hours of speech still writes likely words that were not said.
The CTC head (:mod:`asr.ctc`, trained beside the LLM loss) reads the same audio positions one by
one and knows which tokens they hold and in what order. Joint CTC/attention decoding (Watanabe et
al. 2017, ESPnet's ``CTCPrefixScore``) lets it vote at every step: the LLM's ``top_k`` next tokens
``c`` after the transcript so far ``g`` are ranked by

    log p_LLM(c | g) + weight * (log psi(g + c) - log psi(g)),

where ``psi(h)`` is the CTC probability that the audio's transcript starts with ``h``; the end of
text gains ``log P_CTC(g) - log psi(g)``, the CTC probability that ``g`` is all. A token the audio
does not hold, or an early end, loses score. The head scores positions against the LLM's own
output embeddings over its whole vocabulary plus a blank; nothing else is learned.

NumPy only: the torch path (:class:`asr.modeling.CTCGuide`) and the NumPy runtime
(:func:`asr.runtime.numpy_model.greedy`) share this code, so both write the same transcripts.
"""

from __future__ import annotations

import numpy as np

NEG = -1e30  # log 0 that stays finite in sums


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True)))[..., 0]


class CTCPrefixScorer:
    """One clip's CTC prefix scores as its transcript grows one token at a time.

    ``audio``: the clip's projected positions (P, width); ``embeddings``: the LLM's output
    embeddings (V, width); ``blank_weight`` (width,), ``blank_bias`` and ``log_scale``: the CTC
    head's parameters. Log-probabilities are float64; the per-position normaliser over the whole
    vocabulary is computed once, in chunks (never a (P, V) array)."""

    def __init__(
        self,
        audio: np.ndarray,
        embeddings: np.ndarray,
        blank_weight: np.ndarray,
        blank_bias: float,
        log_scale: float,
        chunk: int = 64,
    ) -> None:
        self.audio = np.asarray(audio, dtype=np.float32)
        self.embeddings = embeddings
        self.scale = float(np.exp(log_scale))
        blank = (self.audio @ np.asarray(blank_weight, dtype=np.float32) + blank_bias).astype(np.float64)
        norm = np.empty(len(self.audio))
        for a in range(0, len(self.audio), chunk):
            logits = (self.audio[a : a + chunk] @ embeddings.T).astype(np.float64) * self.scale
            both = np.concatenate([logits, blank[a : a + chunk, None]], axis=1)
            norm[a : a + chunk] = _logsumexp(both)
        self.norm = norm
        self.blank = blank - norm
        self.nonblank_end = np.full(len(self.audio), NEG)  # r^n: paths of g ending in its last token
        self.blank_end = np.cumsum(self.blank)  # r^b: paths of g ending in blank (g empty: all blank)
        self.last: int | None = None
        self.psi = 0.0  # log psi(g); the empty prefix has probability 1
        self._pending: dict[int, tuple[float, np.ndarray, np.ndarray]] = {}

    def token_log_probs(self, tokens: np.ndarray) -> np.ndarray:
        """(P, K) CTC log-probabilities of ``tokens`` at every position."""
        logits = (self.audio @ self.embeddings[tokens].T).astype(np.float64) * self.scale
        return logits - self.norm[:, None]

    def gains(self, tokens: list[int]) -> np.ndarray:
        """``log psi(g + c) - log psi(g)`` for each candidate ``c`` (the states are kept until
        :meth:`advance` picks one)."""
        x = self.token_log_probs(np.asarray(tokens)).T  # (K, P)
        k, p = x.shape
        both = np.logaddexp(self.blank_end, self.nonblank_end)
        # phi: paths of g that c may follow as a new token (after a blank only, when c repeats g's last)
        phi = np.where(np.array([c == self.last for c in tokens])[:, None], self.blank_end, both)
        nonblank = np.full((k, p), NEG)
        blank_end = np.full((k, p), NEG)
        if self.last is None:
            nonblank[:, 0] = x[:, 0]
        psi = nonblank[:, 0].copy()
        for t in range(1, p):
            nonblank[:, t] = np.logaddexp(nonblank[:, t - 1], phi[:, t - 1]) + x[:, t]
            blank_end[:, t] = np.logaddexp(blank_end[:, t - 1], nonblank[:, t - 1]) + self.blank[t]
            psi = np.logaddexp(psi, phi[:, t - 1] + x[:, t])
        self._pending = {c: (float(psi[i]), nonblank[i], blank_end[i]) for i, c in enumerate(tokens)}
        return psi - self.psi

    def end_gain(self) -> float:
        """``log P_CTC(g) - log psi(g)``: what ending the transcript here scores."""
        return float(np.logaddexp(self.nonblank_end[-1], self.blank_end[-1])) - self.psi

    def advance(self, token: int) -> None:
        """Append ``token`` (one of the last :meth:`gains` candidates) to the prefix."""
        if token not in self._pending:
            raise ValueError(f"token {token} was not a candidate of the last step")
        self.psi, self.nonblank_end, self.blank_end = self._pending[token]
        self.last = token
        self._pending = {}


def guided_scores(
    log_probs: np.ndarray, scorer: CTCPrefixScorer, weight: float, top_k: int, eos: int
) -> dict[int, float]:
    """The LLM's ``top_k`` next tokens (``log_probs``: its (V,) log-probabilities, after any
    repetition penalty) with their joint scores; the best is the step's token."""
    top = np.argpartition(-log_probs, top_k - 1)[:top_k]
    top = top[np.argsort(-log_probs[top], kind="stable")].tolist()
    words = [c for c in top if c != eos]
    joint = {}
    if words:
        for c, gain in zip(words, scorer.gains(words), strict=True):
            joint[c] = float(log_probs[c]) + weight * float(gain)
    if eos in top:
        joint[eos] = float(log_probs[eos]) + weight * scorer.end_gain()
    return joint


def best(joint: dict[int, float]) -> int:
    """The step's token: the highest joint score, the lowest id among equals (as ``argmax``)."""
    return max(sorted(joint), key=joint.__getitem__)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    return logits - _logsumexp(logits)[..., None]
