"""Numbers the lectures quote, recomputed from the code and models they describe (the notebooks print
the same values): a change that moves one of them fails here until the lecture says it too."""

from __future__ import annotations

from pathlib import Path

import pytest

from asr import lengths
from asr.modeling import ASRModel

CURRICULUM = Path(__file__).resolve().parents[1] / "curriculum"


def spaced(n: int) -> str:
    """1234567 -> "1 234 567", the lectures' way of writing large numbers."""
    return f"{n:,}".replace(",", " ")


def lecture(name: str) -> str:
    return (CURRICULUM / name).read_text()


def test_class_1_frame_arithmetic() -> None:
    text = lecture("01_audio_as_numbers.md")
    rows = {"samples": [], "mel frames": [], "encoder frames": [], "LLM audio positions, k = 5": []}
    for seconds in (3.36, 30.0):
        samples = round(seconds * lengths.SAMPLE_RATE)
        mel = lengths.mel_frames(samples)
        encoder = lengths.encoder_frames(mel)
        for name, value in zip(
            rows, (samples, mel, encoder, lengths.audio_positions(encoder, 5)), strict=True
        ):
            rows[name].append(spaced(value))
    for name, (short, long) in rows.items():
        assert f"| {name} |" in text and f"| {short} | {long} |" in text, name
    samples = round(3.36 * lengths.SAMPLE_RATE)
    assert f"A 3.36 s clip is {spaced(samples)} samples: {spaced(2 * samples)} bytes as int16." in text
    padding = 1 - lengths.mel_frames(samples) / lengths.WHISPER_WINDOW_FRAMES
    assert f"for a 3.36 s clip, {100 * padding:.1f} % of the 3000" in text


@pytest.fixture(scope="module")
def shipped() -> ASRModel:
    path = Path(__file__).resolve().parents[1] / "checkpoints" / "offline"
    if not (path / "config.json").is_file():
        pytest.skip(f"{path} not shipped")
    return ASRModel.from_pretrained(path, merge_lora=True)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.real
def test_parameter_counts(shipped: ASRModel) -> None:
    decoder = shipped.decoder
    embeddings, block = count(decoder.get_input_embeddings()), count(decoder.model.layers[0])
    total = count(decoder)
    layers = decoder.config.num_hidden_layers
    assert total == embeddings + layers * block + decoder.config.hidden_size  # + the final norm
    assert (
        f"{spaced(embeddings)} embeddings + {layers} × {spaced(block)} per block + "
        f"{decoder.config.hidden_size} = {spaced(total)}" in lecture("04_llm_decoder.md")
    )
    assert f"| {spaced(total)} |" in lecture("02_end_to_end.md")
    encoder = count(shipped.encoder)
    assert f"**{spaced(encoder)}**" in lecture("03_whisper_encoder.md")
    assert f"### Where the {encoder / 1e6:.1f} M parameters are" in lecture("03_whisper_encoder.md")


@pytest.mark.real
def test_kv_cache_and_prompt_sizes(shipped: ASRModel) -> None:
    c = shipped.decoder.config
    per_position = (
        2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    )
    text = lecture("04_llm_decoder.md")
    assert f"**{spaced(per_position)} bytes**" in text
    assert f"{spaced(per_position)} bytes per position" in lecture("glossary.md")
    n_audio = lengths.audio_positions(lengths.encoder_frames(lengths.mel_frames(3 * 16000)), 5)
    prompt = shipped.processor.prompt_builder.build(n_audio)
    before = prompt.audio_mask.index(True)
    after = len(prompt.input_ids) - before - n_audio
    assert (
        f"For a 3 s clip: {before} tokens before the audio, {n_audio} audio slots, {after} tokens after"
        in text
    )


def test_class_6_hallucination_example_counts() -> None:
    """The WER breakdown class 6 gives for its hallucination example is that of the two strings it quotes."""
    import re

    from asr.evaluate import normalize, word_counts

    text = " ".join(lecture("06_evaluation.md").split())
    reference = re.search(r'- reference: "([^"]+)"', text).group(1)
    hypothesis = re.search(r'- ours: "([^"]+)"', text).group(1)
    c = word_counts(normalize(reference), normalize(hypothesis))
    assert (
        f"{c.deletions} deletions and {c.substitutions} substitutions of {c.reference} words "
        f"({100 * c.rate:.1f}%)" in text
    )
    assert c.insertions == 0  # the lecture names only deletions and substitutions
