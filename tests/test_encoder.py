"""AudioEncoder on the real packaged Whisper tiny.en encoder and real clips: the padded path is
Whisper's own 30 s output trimmed; the variable path is batch-invariant and close to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import manifest_rows

from asr import PACKAGED_WHISPER, sources
from asr.audio import load_audio
from asr.encoder import AudioEncoder
from asr.lengths import encoder_frames as encoder_lengths
from asr.lengths import mel_frames

pytestmark = [pytest.mark.real, pytest.mark.shared]

ROWS = (0, 4, 9)  # 336, 275 and 295 mel frames: an even, an odd, an odd length


@pytest.fixture(scope="module")
def whisper():
    model, feature_extractor = sources.load_whisper(PACKAGED_WHISPER)
    return model.model.encoder, feature_extractor


@pytest.fixture(scope="module")
def clips(shared_data: Path) -> list[np.ndarray]:
    rows = manifest_rows(shared_data / "speechocean762.dev.jsonl", max(ROWS) + 1)
    return [load_audio(shared_data / rows[i]["audio"]) for i in ROWS]


@pytest.fixture(scope="module")
def features(whisper, clips) -> torch.Tensor:
    """The feature extractor's own 3000-frame log-mel of each clip, (3, 80, 3000)."""
    return whisper[1](clips, sampling_rate=16000, return_tensors="pt")["input_features"]


@pytest.fixture(scope="module")
def mel_lengths(clips) -> torch.Tensor:
    return torch.tensor([mel_frames(len(c)) for c in clips])


@pytest.fixture(scope="module")
def reference(whisper, features) -> torch.Tensor:
    """HF WhisperEncoder on the full 30 s input, one clip at a time: (3, 1500, 384)."""
    with torch.no_grad():
        return torch.cat([whisper[0](f[None]).last_hidden_state for f in features])


def test_clip_lengths_differ(mel_lengths) -> None:
    assert mel_lengths.tolist() == [336, 275, 295]


def test_padded_path_is_whispers_output_trimmed(whisper, features, mel_lengths, reference) -> None:
    encoder = AudioEncoder(whisper[0], "padded")
    with torch.no_grad():
        frames, lengths = encoder(features, mel_lengths)
    assert lengths.tolist() == [168, 138, 148]
    assert frames.shape == (3, 168, 384)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(frames[i, :n], reference[i, :n], atol=1e-5, rtol=0)


def test_padded_path_pads_short_features_with_silence(whisper, features, mel_lengths, reference) -> None:
    """Features cut right after the audio are padded to 30 s at Whisper's silence level."""
    encoder = AudioEncoder(whisper[0], "padded")
    cut = features[..., : int(mel_lengths.max()) + 40]  # past the STFT frames that still hold audio
    with torch.no_grad():
        frames, lengths = encoder(cut, mel_lengths)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(frames[i, :n], reference[i, :n], atol=1e-4, rtol=0)


def test_variable_path_batched_equals_alone(whisper, features, mel_lengths) -> None:
    encoder = AudioEncoder(whisper[0], "variable")
    with torch.no_grad():
        batched, lengths = encoder(features, mel_lengths)
        assert batched.shape == (3, 168, 384)
        for i, n in enumerate(lengths.tolist()):
            alone, alone_lengths = encoder(features[i : i + 1], mel_lengths[i : i + 1])
            assert alone.shape == (1, n, 384) and alone_lengths.tolist() == [n]
            torch.testing.assert_close(batched[i, :n], alone[0], atol=1e-4, rtol=1e-4)


def test_variable_path_does_not_read_past_the_clip(whisper, features, mel_lengths) -> None:
    """What lies beyond mel frame 2 * ceil(mel / 2) (another clip's audio, noise) must not matter."""
    encoder = AudioEncoder(whisper[0], "variable")
    noisy = features.clone()
    for i, m in enumerate(mel_lengths.tolist()):
        noisy[i, :, 2 * ((m + 1) // 2) + 1 :] = torch.randn_like(noisy[i, :, 2 * ((m + 1) // 2) + 1 :])
    with torch.no_grad():
        clean, lengths = encoder(features, mel_lengths)
        dirty, _ = encoder(noisy, mel_lengths)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(dirty[i, :n], clean[i, :n], atol=1e-4, rtol=1e-4)


def test_variable_path_is_close_to_padded(whisper, features, mel_lengths, reference) -> None:
    """Whisper was trained on 30 s windows, so the short path is an approximation: the frames
    point the same way (mean cosine 0.94-0.97 on these clips), not the same values."""
    encoder = AudioEncoder(whisper[0], "variable")
    with torch.no_grad():
        frames, lengths = encoder(features, mel_lengths)
    for i, n in enumerate(lengths.tolist()):
        cosine = torch.nn.functional.cosine_similarity(frames[i, :n], reference[i, :n], dim=-1)
        assert cosine.mean() > 0.9, cosine.mean()
        assert cosine.median() > 0.9


def test_encoder_lengths() -> None:
    mel = torch.tensor([1, 2, 3, 336, 337, 2999, 3000])
    assert encoder_lengths(mel).tolist() == [1, 1, 2, 168, 169, 1500, 1500]
    assert encoder_lengths(mel).tolist() == [-(-m // 2) for m in mel.tolist()]


def test_more_than_30_seconds_raises(whisper) -> None:
    encoder = AudioEncoder(whisper[0], "variable")
    with pytest.raises(ValueError, match="3001 mel frames; Whisper's window is 3000"):
        encoder(torch.zeros(1, 80, 3001), torch.tensor([3001]))


def test_full_window_variable_equals_padded(whisper, features) -> None:
    """At exactly 30 s both paths are the stock encoder."""
    lengths = torch.tensor([3000])
    with torch.no_grad():
        variable, _ = AudioEncoder(whisper[0], "variable")(features[:1], lengths)
        padded, _ = AudioEncoder(whisper[0], "padded")(features[:1], lengths)
    assert variable.shape == padded.shape == (1, 1500, 384)
    torch.testing.assert_close(variable, padded, atol=1e-4, rtol=0)
