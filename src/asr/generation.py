"""Decoding options, kept apart from the architecture (as openai/whisper keeps ``DecodingOptions``
apart from ``ModelDimensions``).

:class:`DecodingConfig` is the one place their defaults and checks live: Hydra's ``generation``
group is built from it, and it becomes the ``GenerationConfig`` saved beside a checkpoint
(``generation_config.json``), which ``ASRModel.generate`` reads. A training stage changes them like
any other option; they never touch the weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the NumPy runtime reads DecodingConfig without transformers
    from transformers import GenerationConfig


@dataclass
class DecodingConfig:
    """How transcripts are decoded.

    Args:
        num_beams: 1 is greedy search.
        length_penalty: beam search scores are divided by ``length ** length_penalty``.
        repetition_penalty: CTRL's penalty on tokens already generated (1.0 switches it off);
            1.2 was tuned on speechocean762 dev, where 1.0 let the early models loop. It also
            penalises true repeats ("the" in a long sentence): both shipped checkpoints decode
            with 1.0 (the one-pass model's native retraining ended its loops).
        no_repeat_ngram_size: forbid repeating n-grams of this size (0 switches it off).
        max_new_tokens_per_second / max_new_tokens_base: the cap on generated tokens,
            ``base + ceil(seconds * per_second)`` for each clip, so a loop stops early.
        first_pass_rescore: two-pass models: where the model's answer differs from the first
            pass, keep the one with the higher ``LLM log-prob + first_pass_rescore * Whisper
            log-prob`` (each answer teacher-forced after the same prompt and audio). The LLM
            alone rewrites correct first passes of native speech it cannot hear better than
            Whisper; Whisper's own score of the rewrite vetoes those. ``0``: the LLM's scores
            alone; ``None``: always the model's answer (plain two-pass decoding).
        first_pass_beam_size: two-pass models: the beam width of the first pass at inference
            (its best ``first_pass_n_best`` go into the prompt and the rescoring). Training
            hypotheses stay as stored (greedy); the shipped two-pass checkpoint, trained on greedy
            ones, decodes with 5 (LibriSpeech dev 7.41% -> 6.53%, speechocean762 44.95% -> 45.70%).
        ctc_guide_weight: greedy decoding of a model with a CTC head (``model.ctc_weight`` > 0):
            each step's ``ctc_guide_top_k`` likeliest tokens are re-ranked by ``LLM log-prob +
            ctc_guide_weight * CTC prefix-score gain`` (:mod:`asr.ctc_guide`), so the audio's own
            read-out vetoes words it does not hold. ``0`` switches it off.
    """

    num_beams: int = 1
    length_penalty: float = 1.0
    repetition_penalty: float = 1.2
    no_repeat_ngram_size: int = 0
    max_new_tokens_per_second: float = 8.0
    max_new_tokens_base: int = 16
    first_pass_rescore: float | None = None
    first_pass_beam_size: int = 1
    ctc_guide_weight: float = 0.0
    ctc_guide_top_k: int = 5

    def __post_init__(self) -> None:
        checks = {
            "num_beams": self.num_beams >= 1,
            "repetition_penalty": self.repetition_penalty > 0,
            "no_repeat_ngram_size": self.no_repeat_ngram_size >= 0,
            "max_new_tokens_per_second": self.max_new_tokens_per_second > 0,
            "max_new_tokens_base": self.max_new_tokens_base >= 0,
            "first_pass_rescore": self.first_pass_rescore is None or self.first_pass_rescore >= 0,
            "first_pass_beam_size": self.first_pass_beam_size >= 1,
            "ctc_guide_weight": self.ctc_guide_weight >= 0
            and (self.ctc_guide_weight == 0 or self.num_beams == 1),
            "ctc_guide_top_k": self.ctc_guide_top_k >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"generation.{key}: invalid value {getattr(self, key)!r}")

    def max_new_tokens(self, seconds: float) -> int:
        """The cap on generated tokens for a clip of ``seconds``."""
        return self.max_new_tokens_base + math.ceil(seconds * self.max_new_tokens_per_second)

    def to_generation_config(self) -> GenerationConfig:
        from transformers import GenerationConfig

        return GenerationConfig(do_sample=False, **asdict(self))

    @classmethod
    def from_generation_config(cls, generation_config: GenerationConfig | None) -> DecodingConfig:
        """The options a saved ``GenerationConfig`` holds (defaults for the ones it lacks)."""
        if generation_config is None:
            return cls()
        return cls.from_dict({f.name: getattr(generation_config, f.name, None) for f in fields(cls)})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DecodingConfig:
        """The options in ``values`` (a ``generation_config.json``'s, read without transformers by
        the NumPy runtime); other keys are ignored, missing or ``None`` ones take the defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})

    def replace(self, **changes: Any) -> DecodingConfig:
        return type(self)(**{**asdict(self), **changes})

    def take(self, kwargs: dict[str, Any]) -> DecodingConfig:
        """This config with the options found in a call's ``kwargs`` (removed from them) applied:
        ``generate`` and ``transcribe`` accept any decoding option as a keyword."""
        overrides = {k: kwargs.pop(k) for k in asdict(self) if k in kwargs}
        return self.replace(**overrides) if overrides else self


def through_eos(row: list[int], eos: int) -> list[int]:
    """A generated row up to and including its first end-of-text token (all of it if none):
    ``generate`` pads finished rows of a batch after that token, and an answer scored or counted
    on its own must not carry the padding."""
    return row[: row.index(eos) + 1] if eos in row else row
