"""The shipped checkpoint (checkpoints/offline) loads offline and transcribes real speech."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from asr.audio import load_audio
from asr.evaluate import corpus_wer
from asr.modeling import ASRModel

pytestmark = pytest.mark.real

# measured on these 24 clips when the checkpoint was shipped (see checkpoints/offline/README.md),
# plus a margin for CPU numerics; the untrained model scores several hundred percent here.
# Tighten it whenever a better checkpoint is shipped.
# speechocean762: measured 40.0% at shipping (stage F, the mean of experiment=native_swa's saves,
# 2026-12-02; 36.16% on all 1,240 clips); 43.0% for stage E (beam search + n-gram blocking, torch),
# 45.2%, 50.4% before
WER_BOUND = 0.47
# the same on 24 clips spread over the LibriSpeech dev speakers: native read English
# measured 39.1% for stage F (34.73% on all 659 clips: these 24 are a noisy sample); 41.7% for
# stage E (45.8% greedy with the penalty 1.0, 52.2% with 1.2); 48.8%, 45.7%, ~89% with the
# checkpoints before
NATIVE_WER_BOUND = 0.44

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "checkpoints" / "offline"


@pytest.fixture(scope="module")
def shipped() -> ASRModel:
    if not (DEFAULT_MODEL / "config.json").is_file():
        pytest.skip(f"{DEFAULT_MODEL} not shipped")
    torch.manual_seed(0)
    return ASRModel.from_pretrained(DEFAULT_MODEL).eval()


def test_shipped_checkpoint_is_small_and_offline(shipped):
    files = sorted(p.name for p in DEFAULT_MODEL.iterdir())
    assert "config.json" in files and "model.safetensors" in files
    assert (DEFAULT_MODEL / "model.safetensors").stat().st_size < 20 * 2**20  # trainable part only
    assert shipped.config.encoder_source.startswith("packaged:")
    assert shipped.config.decoder_source.startswith("packaged:")


def dev_wer(model: ASRModel, shared_data: Path, manifest: str) -> tuple[float, list[tuple[str, str]]]:
    """WER on 24 clips spread over a dev set's speakers (every 25th row), batches of 8."""
    rows = [json.loads(line) for line in (shared_data / manifest).read_text().splitlines()][::25][:24]
    audios = [load_audio(shared_data / r["audio"]) for r in rows]
    hyps: list[str] = []
    for i in range(0, len(audios), 8):
        hyps += model.transcribe(audios[i : i + 8])
    references = [r["text"] for r in rows]
    return corpus_wer(references, hyps), list(zip(references, hyps, strict=True))


def test_shipped_checkpoint_transcribes_real_speech(shipped, shared_data):
    wer, pairs = dev_wer(shipped, shared_data, "speechocean762.dev.jsonl")
    print(f"shipped checkpoint WER on {len(pairs)} speechocean762 dev clips: {wer:.1%}")
    assert wer <= WER_BOUND, f"WER {wer:.1%} over the bound {WER_BOUND:.0%}: {pairs[:4]}"


def test_shipped_checkpoint_transcribes_native_english(shipped, shared_data):
    wer, pairs = dev_wer(shipped, shared_data, "librispeech.dev.jsonl")
    print(f"shipped checkpoint WER on {len(pairs)} LibriSpeech dev clips: {wer:.1%}")
    assert wer <= NATIVE_WER_BOUND, f"WER {wer:.1%} over the bound {NATIVE_WER_BOUND:.0%}: {pairs[:3]}"


# Transcripts of the first speechocean762 dev clips, one clip at a time, by the checkpoint as
# shipped (experiment=native_enc_lora_2, step 300; beam search + n-gram blocking as in its
# generation_config.json; greedy wrote "a kitten" for "elephant"): a change that moves code must
# not move these.
AS_SHIPPED = [
    "mark is going to see animal",
    "jack loves chinese",
    "two six four eight",
    "seven three four two",
]


def test_transcripts_as_shipped(shipped, shared_data):
    rows = [json.loads(line) for line in (shared_data / "speechocean762.dev.jsonl").read_text().splitlines()][
        :4
    ]
    hyps = [shipped.transcribe([load_audio(shared_data / r["audio"])])[0] for r in rows]
    assert hyps == AS_SHIPPED


def test_prompt_head_cache_keeps_real_transcripts(shipped, shared_data):
    """Decoding with the shared prompt head cached (the default) gives the same tokens as running
    every row's whole prompt, on real clips of both dev sets in mixed-length batches."""
    for manifest, n in (("librispeech.dev.jsonl", 4), ("speechocean762.dev.jsonl", 8)):
        rows = [json.loads(line) for line in (shared_data / manifest).read_text().splitlines()][::50][:n]
        inputs = shipped.processor(audio=[load_audio(shared_data / r["audio"]) for r in rows])
        cached = shipped.generate(**inputs, num_beams=1)  # the cache serves greedy search only
        plain = shipped.generate(**inputs, num_beams=1, cache_prompt_head=False)
        assert shipped.processor.batch_decode(cached) == shipped.processor.batch_decode(plain), manifest


def test_checkpoint_in_the_old_format_loads_the_same(shipped, tmp_path):
    """A checkpoint saved before processors and generation configs (prompt and decoding options
    inside config.json, nothing else beside the weights) loads with the same options."""
    config = json.loads((DEFAULT_MODEL / "config.json").read_text())
    # (transformers 5 itself drops generation keys such as repetition_penalty from any config it
    # reads, so an old checkpoint's penalty was already the default 1.2 when loaded)
    config.update(max_new_tokens_per_second=6.0, min_new_tokens=12, instruction="Write down the audio.")
    config.update(system_prompt=shipped.processor.system_prompt, audio_placeholder="<|audio|>")
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((DEFAULT_MODEL / "model.safetensors").read_bytes())
    old = ASRModel.from_pretrained(tmp_path)
    assert old.decoding.max_new_tokens_per_second == 6.0 and old.decoding.max_new_tokens_base == 12
    assert old.processor.instruction == "Write down the audio."
    assert "min_new_tokens" not in old.config.to_dict()  # moved out, not duplicated
    old.save_pretrained(tmp_path / "resaved")
    assert ASRModel.from_pretrained(tmp_path / "resaved").decoding == old.decoding


TWO_PASS = DEFAULT_MODEL.parent / "offline-2pass"
TWO_PASS_WER_BOUND = 0.15  # 7.41% on the first 200 LibriSpeech dev clips (rescored), tiny.en 7.28%


def test_two_pass_checkpoint_transcribes_native_speech(shared_data):
    """The two-pass checkpoint loads offline with its first pass and decoding options, and on
    native read speech (where the one-pass model deletes half the words) stays near tiny.en."""
    if not (TWO_PASS / "config.json").is_file():
        pytest.skip(f"{TWO_PASS} not shipped")
    model = ASRModel.from_pretrained(TWO_PASS).merge_adapters()
    assert model.config.first_pass == "whisper" and model.decoding.repetition_penalty == 1.0
    assert model.decoding.first_pass_rescore == 0.75 and model.processor.target_normalization == "plain"
    assert model.decoding.first_pass_beam_size == 5
    rows = [json.loads(line) for line in (shared_data / "librispeech.dev.jsonl").read_text().splitlines()]
    rows = rows[::80][:8]  # spread over the dev speakers
    hyps = model.transcribe([load_audio(shared_data / r["audio"]) for r in rows])
    wer = corpus_wer([r["text"] for r in rows], hyps)
    print(f"two-pass checkpoint WER on {len(rows)} LibriSpeech dev clips: {wer:.1%}")
    assert wer <= TWO_PASS_WER_BOUND, list(zip([r["text"] for r in rows], hyps, strict=True))[:3]
