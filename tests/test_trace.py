"""trace_data: shapes follow the model arithmetic, figures are real PNGs, the CLI works end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tiny_model
from matplotlib.image import imread

from asr.trace import main, trace

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("waveform", "log_mel", "encoder", "projector", "attention")
SAMPLES = 21_920  # 1.37 s: odd frame counts exercise every ceiling below


def synthetic_clip(n: int = SAMPLES, seed: int = 0) -> np.ndarray:
    """A gliding tone with noise: enough structure for every stage to have something to show."""
    t = np.arange(n) / 16_000
    rng = np.random.default_rng(seed)
    tone = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.02 * rng.standard_normal(n)
    return tone.astype(np.float32)


def expected(samples: int, k: int) -> tuple[int, int, int]:
    mel = samples // 160
    encoder = math.ceil(mel / 2)
    return mel, encoder, math.ceil(encoder / k)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > 5_000, f"{path} is suspiciously small ({len(data)} bytes)"
    height, width = imread(path).shape[:2]
    assert width >= 800 and height >= 250, f"{path}: {width}x{height}"


@pytest.mark.parametrize("k", [5, 3])
def test_trace_shapes_match_arithmetic_and_figures_are_pngs(k: int, tmp_path: Path) -> None:
    model = tiny_model(projector_stack=k)
    clip = synthetic_clip()
    result = trace(clip, model, out_dir=tmp_path, max_new_tokens=6, verbose=False)
    mel, encoder, positions = expected(SAMPLES, k)
    s = result.shapes
    assert (s.samples, s.mel_frames, s.encoder_frames, s.projector_positions) == (
        SAMPLES,
        mel,
        encoder,
        positions,
    )
    assert (s.mel_bins, s.encoder_width, s.llm_width, s.stack) == (80, 64, 48, k)
    assert s.prompt_tokens == len(model.processor.prompt_builder.build(positions).input_ids)
    assert (s.decoder_layers, s.decoder_heads) == (2, 4)
    assert result.log_mel.shape == (80, mel)
    assert result.encoder.shape == (encoder, 64)
    assert result.projected.shape == (positions, 48)
    assert 1 <= s.generated_tokens <= 6 + 1  # up to max_new_tokens, plus the end-of-turn token
    assert result.attention.shape == (s.generated_tokens, positions) == (len(result.tokens), positions)
    # each row of a softmax sums to 1, so the mass on audio positions is a share in (0, 1]
    assert np.all(result.audio_share > 0) and np.all(result.audio_share <= 1 + 1e-5)
    assert result.text == model.transcribe([clip], max_new_tokens=6)[0]
    assert model.decoder.config._attn_implementation == "sdpa", "eager attention was not switched back"
    assert sorted(result.files) == sorted(FIGURES)
    for path in result.files.values():
        assert_png(path)


def test_single_layer_attention_differs_from_layer_mean() -> None:
    model = tiny_model()
    clip = synthetic_clip(8_000)
    mean = trace(clip, model, max_new_tokens=3, verbose=False)
    first = trace(clip, model, layer=0, max_new_tokens=3, verbose=False)
    assert mean.attention.shape == first.attention.shape
    assert not np.allclose(mean.attention, first.attention)
    assert mean.files == {}, "no output folder given: nothing should be written"


def test_cli_writes_figures_and_prints_shapes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "checkpoint"
    tiny_model(projector_stack=4).save_pretrained(checkpoint)
    wav = tmp_path / "clip.wav"
    sf.write(wav, synthetic_clip(), 16_000)
    out = tmp_path / "figures"
    assert main([str(wav), "--out", str(out), "--model", str(checkpoint), "--max-new-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    mel, encoder, positions = expected(SAMPLES, 4)
    assert f"{SAMPLES} samples" in printed
    assert f"{mel} frames" in printed and f"{encoder} frames" in printed
    assert f"{positions} positions" in printed
    pngs = sorted(out.glob("*.png"))
    assert [p.stem.split("_", 1)[1] for p in pngs] == list(FIGURES)
    for path in pngs:
        assert_png(path)
