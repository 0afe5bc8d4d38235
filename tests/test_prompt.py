"""PromptBuilder with the real SmolLM2 tokenizer: audio positions, label masks, the generation
prompt, context, and batch padding."""

from __future__ import annotations

import pytest
import torch

from asr import PACKAGED_SMOLLM2, PromptConfig, sources
from asr.prompt import IGNORE_INDEX, Prompt, PromptBuilder

TRANSCRIPT = "Mark is going to see elephant."


@pytest.fixture(scope="module")
def tokenizer():
    return sources.load_causal_lm_tokenizer(PACKAGED_SMOLLM2)


@pytest.fixture(scope="module")
def builder(tokenizer) -> PromptBuilder:
    prompt = PromptConfig()
    return PromptBuilder(tokenizer, prompt.instruction, prompt.system_prompt, prompt.audio_placeholder)


def audio_span(prompt: Prompt) -> list[int]:
    return [i for i, a in enumerate(prompt.audio_mask) if a]


@pytest.mark.parametrize("n", [1, 7, 150])
def test_audio_placeholder_expands_to_n_contiguous_positions(builder: PromptBuilder, n: int) -> None:
    for prompt in (
        builder.build(n),
        builder.build(n, TRANSCRIPT),
        builder.build(n, TRANSCRIPT, "names: Kate"),
    ):
        assert len(prompt.input_ids) == len(prompt.labels) == len(prompt.audio_mask)
        span = audio_span(prompt)
        assert len(span) == n == sum(prompt.audio_mask)
        assert span == list(range(span[0], span[0] + n))
        assert all(prompt.input_ids[i] == builder.audio_token_id for i in span)
        assert builder.placeholder not in builder.tokenizer.decode(prompt.input_ids)


def test_audio_sits_in_the_user_turn(builder: PromptBuilder, tokenizer) -> None:
    prompt = builder.build(4)
    span = audio_span(prompt)
    before = tokenizer.decode(prompt.input_ids[: span[0]])
    after = tokenizer.decode(prompt.input_ids[span[-1] + 1 :])
    assert before.endswith("<|im_start|>user\n")
    assert before.startswith(
        "<|im_start|>system\nYou are a speech recognizer. Write exactly what is said.<|im_end|>"
    )
    assert after.startswith("\nTranscribe the audio.<|im_end|>")


def test_labels_cover_only_the_transcript_and_end_of_turn(builder: PromptBuilder, tokenizer) -> None:
    prompt = builder.build(10, TRANSCRIPT)
    generation = builder.build(10)
    n_target = len(prompt.input_ids) - len(generation.input_ids)
    assert prompt.input_ids[: len(generation.input_ids)] == generation.input_ids
    assert all(label == IGNORE_INDEX for label in prompt.labels[:-n_target])
    target = prompt.labels[-n_target:]
    assert target == prompt.input_ids[-n_target:] and IGNORE_INDEX not in target
    assert target[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id
    assert tokenizer.decode(target) == TRANSCRIPT + "<|im_end|>"
    # the transcript is tokenised as the model would generate it right after the assistant header
    assert target[:-1] == tokenizer(TRANSCRIPT, add_special_tokens=False)["input_ids"]
    assert not any(
        m for m, label in zip(prompt.audio_mask, prompt.labels, strict=True) if label != IGNORE_INDEX
    )


def test_transcript_whitespace_is_stripped(builder: PromptBuilder) -> None:
    assert builder.build(3, f"  {TRANSCRIPT}\n") == builder.build(3, TRANSCRIPT)


def test_generation_prompt_ends_with_the_assistant_header(builder: PromptBuilder, tokenizer) -> None:
    prompt = builder.build(5)
    assert all(label == IGNORE_INDEX for label in prompt.labels)
    assert tokenizer.decode(prompt.input_ids).endswith("<|im_end|>\n<|im_start|>assistant\n")
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert prompt.input_ids[-len(header) :] == header


def test_context_is_in_the_prompt_and_masked(builder: PromptBuilder, tokenizer) -> None:
    plain = builder.build(5, TRANSCRIPT)
    prompt = builder.build(5, TRANSCRIPT, context="  Speaker names: Kate, Tim.  ")
    text = tokenizer.decode(prompt.input_ids)
    assert "\nTranscribe the audio.\nContext: Speaker names: Kate, Tim.<|im_end|>" in text
    assert len(prompt.input_ids) > len(plain.input_ids)
    labelled = [t for t, label in zip(prompt.input_ids, prompt.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == TRANSCRIPT + "<|im_end|>"
    assert builder.build(5, TRANSCRIPT, context="") == plain and builder.build(5, TRANSCRIPT, None) == plain


def test_no_system_prompt(tokenizer) -> None:
    builder = PromptBuilder(tokenizer, "Transcribe the audio.", system_prompt=None)
    text = tokenizer.decode(builder.build(2).input_ids)
    # SmolLM2's own template then supplies its default system turn
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_tokenizer_without_chat_template_is_rejected(tokenizer) -> None:
    template = tokenizer.chat_template
    try:
        tokenizer.chat_template = None
        with pytest.raises(ValueError, match="no chat template"):
            PromptBuilder(tokenizer, "Transcribe the audio.")
    finally:
        tokenizer.chat_template = template


def test_instruction_with_placeholder_is_rejected() -> None:
    with pytest.raises(ValueError, match="must not contain the audio placeholder"):
        PromptConfig(instruction="Listen: <|audio|>")


@pytest.fixture
def batch(builder: PromptBuilder) -> list[Prompt]:
    return [
        builder.build(3, "Hi."),
        builder.build(12, TRANSCRIPT, "names: Kate"),
        builder.build(7, "Two six four."),
    ]


def test_collate_right_padding(builder: PromptBuilder, batch: list[Prompt]) -> None:
    out = builder.collate(batch, padding_side="right")
    width = max(len(p.input_ids) for p in batch)
    assert out["input_ids"].shape == out["labels"].shape == out["attention_mask"].shape == (3, width)
    assert out["audio_mask"].dtype == torch.bool
    for i, p in enumerate(batch):
        n = len(p.input_ids)
        assert out["input_ids"][i, :n].tolist() == p.input_ids
        assert out["labels"][i, :n].tolist() == p.labels
        assert out["audio_mask"][i, :n].tolist() == p.audio_mask
        assert out["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
        assert (out["labels"][i, n:] == IGNORE_INDEX).all() and not out["audio_mask"][i, n:].any()
        assert (out["input_ids"][i, n:] == builder.pad_token_id).all()
    assert int(out["audio_mask"].sum()) == 3 + 12 + 7


def test_collate_left_padding(builder: PromptBuilder) -> None:
    prompts = [builder.build(3), builder.build(12, context="names: Kate"), builder.build(7)]
    out = builder.collate(prompts, padding_side="left")
    width = out["input_ids"].shape[1]
    last = prompts[0].input_ids[-1]
    for i, p in enumerate(prompts):
        n = len(p.input_ids)
        assert out["input_ids"][i, -1] == last  # every row ends with the prompt's last token
        assert out["input_ids"][i, width - n :].tolist() == p.input_ids
        assert out["attention_mask"][i].tolist() == [0] * (width - n) + [1] * n
        assert out["audio_mask"][i, width - n :].tolist() == p.audio_mask
        assert not out["audio_mask"][i, : width - n].any()
