"""The only place prompts and label masks are built, for training and generation alike.

A prompt is the LLM's own chat template around a user turn that holds an audio placeholder
(plus an optional context text); the placeholder is expanded to exactly as many positions as the
projector produces, and those positions' embeddings are later replaced by the projected audio.
No token is added to the vocabulary: audio positions are tracked with ``audio_mask``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and transformers stay out of the NumPy runtime, which reads normalize_target
    import torch
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def normalize_target(text: str, mode: str) -> str:
    """How transcripts are written as answers: ``none`` keeps the corpus text, ``lower``
    lower-cases, ``plain`` lower-cases and strips punctuation (the corpora here are upper case,
    unpunctuated). Training targets go through it, and so does a first pass that a two-pass model
    weighs against its own answer (:meth:`asr.modeling.ASRModel.rescore_first_pass`)."""
    text = " ".join(text.split())
    if mode == "none":
        return text
    if mode == "lower":
        return text.lower()
    if mode == "plain":
        return re.sub(r"[^\w' ]+", "", text.lower()).strip()
    raise ValueError(f"data.text_normalization={mode!r}: expected none, lower or plain")


@dataclass
class Prompt:
    """One tokenised example: ``labels`` is IGNORE_INDEX everywhere but the transcript and the
    end-of-turn token; ``audio_mask`` marks the audio positions."""

    input_ids: list[int]
    labels: list[int]
    audio_mask: list[bool]


class PromptBuilder:
    """Builds prompts from a tokenizer with a chat template and the config's prompt fields."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        instruction: str,
        system_prompt: str | None = None,
        audio_placeholder: str = "<|audio|>",
        first_pass_label: str = "First-pass transcript (may contain errors):",
    ) -> None:
        if tokenizer.chat_template is None:
            raise ValueError("the decoder's tokenizer has no chat template; use an instruct/chat model")
        self.tokenizer = tokenizer
        self.instruction = instruction
        self.system_prompt = system_prompt
        self.placeholder = audio_placeholder
        self.first_pass_label = first_pass_label
        self.end_of_turn = tokenizer.eos_token
        # any real id works: its embedding is overwritten by the audio vectors
        self.audio_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self.pad_token_id = self.audio_token_id

    def user_text(self, context: str | None = None, first_pass: str | None = None) -> str:
        """The user turn: audio positions, instruction, then the optional parts (a context to
        bias towards; a first pass's hypotheses, in two-pass mode)."""
        text = f"{self.placeholder}\n{self.instruction}"
        if context:
            text += f"\nContext: {context.strip()}"
        if first_pass is not None:
            text += f"\n{self.first_pass_label}\n{first_pass.strip()}"
        return text

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def answer_ids(self, transcript: str) -> list[int]:
        """The tokens the model writes for ``transcript``: the text, then the end of the turn."""
        return self._encode(transcript.strip() + self.end_of_turn)

    def template(self, context: str | None = None, first_pass: str | None = None) -> tuple[str, str]:
        """The chat-templated prompt as text, split at the audio placeholder: what comes before the
        audio positions and what comes after them (the assistant turn opened)."""
        messages = [{"role": "user", "content": self.user_text(context, first_pass)}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        before, sep, after = text.partition(self.placeholder)
        if not sep:
            raise ValueError("the chat template dropped the audio placeholder")
        return before, after

    def build(
        self,
        n_audio: int,
        transcript: str | None = None,
        context: str | None = None,
        first_pass: str | None = None,
    ) -> Prompt:
        """Prompt for ``n_audio`` audio positions; with ``transcript`` the target is appended
        (training), without it the prompt ends where the assistant turn begins (generation).
        Context and first pass are part of the prompt, so never part of the labels."""
        before, after = self.template(context, first_pass)
        head, tail = self._encode(before), self._encode(after)
        ids = head + [self.audio_token_id] * n_audio + tail
        audio_mask = [False] * len(head) + [True] * n_audio + [False] * len(tail)
        labels = [IGNORE_INDEX] * len(ids)
        if transcript is not None:
            target = self.answer_ids(transcript)
            ids += target
            labels += target
            audio_mask += [False] * len(target)
        return Prompt(ids, labels, audio_mask)

    def collate(self, prompts: list[Prompt], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad a batch; generation needs ``padding_side='left'`` so every row ends at its prompt."""
        import torch

        width = max(len(p.input_ids) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(prompts), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        audio = torch.zeros((len(prompts), width), dtype=torch.bool)
        for i, p in enumerate(prompts):
            n = len(p.input_ids)
            span = slice(width - n, width) if padding_side == "left" else slice(0, n)
            ids[i, span] = torch.tensor(p.input_ids)
            labels[i, span] = torch.tensor(p.labels)
            attention[i, span] = 1
            audio[i, span] = torch.tensor(p.audio_mask)
        return {"input_ids": ids, "labels": labels, "attention_mask": attention, "audio_mask": audio}
