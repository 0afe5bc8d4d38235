"""Projectors: the registry, the output-length contract, the order frames are stacked in, and the
output scale the LLM sees at initialisation."""

from __future__ import annotations

import pytest
import torch

from asr.config import ASRConfig
from asr.projector import PROJECTORS, Projector, build_projector, register_projector

TYPES = sorted(PROJECTORS)
WIDTHS = [(1280, 1536), (384, 576)]  # whisper-large/Qwen-1.5B sized, and tiny.en/SmolLM2-135M
LENGTHS = [1, 4, 5, 6, 1500]


def config(encoder: int = 384, decoder: int = 576, **overrides) -> ASRConfig:
    args = {"projector_output_rms": 0.13, "projector_stack": 5, **overrides}
    return ASRConfig(encoder_config={"d_model": encoder}, decoder_config={"hidden_size": decoder}, **args)


def test_registry() -> None:
    assert set(PROJECTORS) == {"stack_mlp", "stack_linear", "conv_mlp"}
    assert all(issubclass(cls, Projector) for cls in PROJECTORS.values())
    with pytest.raises(ValueError, match=r"projector_type='transformer'.*conv_mlp.*stack_linear.*stack_mlp"):
        build_projector(config(projector_type="transformer"))
    with pytest.raises(ValueError, match="already registered"):
        register_projector("stack_mlp")(Projector)


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize(("encoder", "decoder"), WIDTHS)
def test_output_shapes_follow_output_length(kind: str, encoder: int, decoder: int) -> None:
    projector = build_projector(config(encoder, decoder, projector_type=kind)).eval()
    for n in LENGTHS:
        with torch.no_grad():
            out = projector(torch.randn(2, n, encoder))
        assert out.shape == (2, projector.output_length(n), decoder)
        assert out.shape[1] == -(-n // 5)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", TYPES)
def test_widths_read_from_config(kind: str) -> None:
    projector = build_projector(config(1280, 1536, projector_type=kind))
    assert (projector.in_width, projector.out_width, projector.k) == (1280, 1536, 5)
    first = next(m for m in projector.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv1d))
    if isinstance(first, torch.nn.Linear):
        assert first.in_features == 5 * 1280
    else:
        assert (first.in_channels, first.kernel_size, first.stride) == (1280, (5,), (5,))
    assert projector.norm.normalized_shape == (1536,)


def test_output_length_on_ints_and_tensors() -> None:
    projector = build_projector(config())
    assert [projector.output_length(n) for n in [0, 1, 4, 5, 6, 10, 11, 1500]] == [0, 1, 1, 1, 2, 2, 3, 300]
    lengths = torch.tensor([1, 4, 5, 6, 1500])
    out = projector.output_length(lengths)
    assert torch.is_tensor(out) and out.dtype == torch.long
    assert out.tolist() == [1, 1, 1, 2, 300]
    assert build_projector(config(projector_stack=1)).output_length(7) == 7


def test_stacking_order() -> None:
    projector = build_projector(config(encoder=3))
    frames = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)
    stacked = projector.stack(frames)
    assert stacked.shape == (2, 2, 15)
    # frames 0..4 land in position 0, in order, each frame's features contiguous
    assert torch.equal(stacked[0, 0], frames[0, :5].reshape(-1))
    # the tail (frames 5, 6) is followed by zero padding
    assert torch.equal(stacked[1, 1], torch.cat([frames[1, 5:].reshape(-1), torch.zeros(9)]))


@pytest.mark.parametrize("kind", TYPES)
def test_each_position_sees_only_its_own_k_frames(kind: str) -> None:
    """Position p depends on frames p*k .. p*k+k-1 only: batch padding cannot leak into a clip."""
    projector = build_projector(config(projector_type=kind)).eval()
    frames = torch.randn(1, 13, 384)
    changed = frames.clone()
    changed[0, 7] += 1.0  # frame 7 belongs to position 1
    with torch.no_grad():
        diff = (projector(changed) - projector(frames)).abs().amax(-1)[0]
    assert diff[1] > 1e-3
    assert diff[0] == 0 and diff[2] == 0


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("rms", [0.13, 0.02])
def test_initial_output_rms(kind: str, rms: float) -> None:
    projector = build_projector(config(1280, 1536, projector_type=kind, projector_output_rms=rms)).eval()
    assert torch.allclose(projector.norm.weight, torch.full((1536,), rms))
    with torch.no_grad():
        out = projector(torch.randn(4, 50, 1280))
    assert out.pow(2).mean().sqrt().item() == pytest.approx(rms, rel=0.02)


def test_default_gain_without_rms_is_one() -> None:
    projector = build_projector(config(projector_output_rms=None))
    assert torch.equal(projector.norm.weight, torch.ones(576))


def test_trainable_parameter_counts() -> None:
    counts = {
        k: sum(p.numel() for p in build_projector(config(projector_type=k)).parameters()) for k in TYPES
    }
    d_in, d = 5 * 384, 576
    assert counts["stack_linear"] == d_in * d + d + 2 * d
    assert counts["stack_mlp"] == d_in * d + d + d * d + d + 2 * d
    assert counts["conv_mlp"] == 384 * d * 5 + d + d * d + d + 2 * d
