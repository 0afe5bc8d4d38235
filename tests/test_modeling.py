"""ASRModel: training forward, freezing, batch-invariant features and decoding, saving and loading
(with and without LoRA), Auto registration; plus one round trip of the real offline model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import manifest_rows, tiny_model
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel

from asr import ASRConfig, ASRModel
from asr.audio import SAMPLE_RATE, AudioError, load_audio
from asr.modeling import shared_prefix_length
from asr.prompt import IGNORE_INDEX

# a random LLM's argmax is a newline or a special token, which decodes to ""; suppress those so
# that decoding comparisons compare real text
VISIBLE = {"suppress_tokens": [*range(17), 198], "max_new_tokens": 10}


def clips(*seconds: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = [np.arange(int(s * SAMPLE_RATE)) / SAMPLE_RATE for s in seconds]
    return [
        (0.3 * np.sin(2 * np.pi * 300 * x) + 0.05 * rng.standard_normal(len(x))).astype(np.float32) for x in t
    ]


def training_batch(model: ASRModel, audios: list[np.ndarray], texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(model.processor(audio=audios, text=texts))


@pytest.fixture(scope="module")
def batch_audio() -> list[np.ndarray]:
    return clips(1.0, 0.5, 1.5, 0.27)


def test_widths_are_read_from_config(tiny: ASRModel) -> None:
    config = tiny.config
    assert (config.encoder_width, config.decoder_width) == (64, 48)
    assert tiny.projector.linear_1.in_features == config.encoder_config["d_model"] * config.projector_stack
    assert tiny.projector.linear_2.out_features == config.decoder_config["hidden_size"]
    assert tiny.encoder.width == 64 and tiny.decoder.get_input_embeddings().embedding_dim == 48


def test_frozen_parts_stay_frozen_and_in_eval_mode(tiny: ASRModel) -> None:
    tiny.train()
    assert tiny.training and tiny.projector.training
    assert not tiny.encoder.training and not tiny.decoder.training
    assert not any(m.training for m in tiny.encoder.modules())
    assert not any(m.training for m in tiny.decoder.modules())
    trainable = {n for n, p in tiny.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("projector.") for n in trainable)
    assert trainable == {f"projector.{n}" for n, _ in tiny.projector.named_parameters()}


def test_forward_loss_and_gradients_reach_only_the_projector(tiny: ASRModel, batch_audio) -> None:
    batch = training_batch(tiny, batch_audio, ["one two three", "four", "five six seven eight", "nine"])
    tiny.train()
    out = tiny(**batch)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    # the LM head ran only where a label is predicted
    n_labels = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert out.logits.shape == (n_labels, tiny.decoder.config.vocab_size)
    # untrained: close to uniform over the vocabulary
    assert abs(out.loss.item() - np.log(tiny.decoder.config.vocab_size)) < 2.0
    out.loss.backward()
    with_grad = {n for n, p in tiny.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in tiny.named_parameters() if n.startswith("projector.")}
    assert all(p.grad.abs().sum() > 0 for n, p in tiny.named_parameters() if n.startswith("projector."))


def test_loss_ignores_everything_but_the_target(tiny: ASRModel, batch_audio) -> None:
    batch = training_batch(tiny, batch_audio[:2], ["one two three", "four"])
    with torch.no_grad():
        full = tiny(**batch, logits_at_labels=False)  # transformers' loss over the whole sequence
        logits = full.logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        expected = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
        )
        fast = tiny(**batch)  # the LM head only at label positions
    assert full.logits.shape[:2] == batch["input_ids"].shape
    assert full.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert fast.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(fast.logits, full.logits[:, :-1][labels != IGNORE_INDEX])


@pytest.mark.parametrize("lora", [None, {"r": 4, "target_modules": ["q_proj", "k_proj", "v_proj"]}])
def test_shared_prompt_head_and_label_only_head_give_the_same_gradients(
    batch_audio, lora: dict | None
) -> None:
    """The shortcuts of the training forward change no number: loss and every trainable
    gradient (projector, and LoRA adapters whose keys/values the shared head depends on)."""
    tiny = tiny_model(lora=lora)
    if lora:  # B = 0 at init would hide a missing gradient path through the shared head
        with torch.no_grad():
            for name, param in tiny.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.05)
    batch = training_batch(tiny, batch_audio, ["one two three", "four", "five six seven eight", "nine"])
    first_audio = int(batch["audio_mask"][0].float().argmax())  # the chat template + system prompt
    assert first_audio > 10
    assert (
        shared_prefix_length(batch["input_ids"], batch["attention_mask"], batch["audio_mask"]) == first_audio
    )
    left = tiny.processor.prompts([3, 5], padding_side="left")
    assert shared_prefix_length(left["input_ids"], left["attention_mask"], left["audio_mask"]) == 0
    grads = []
    for fast in (False, True):
        tiny.zero_grad()
        loss = tiny(**batch, logits_at_labels=fast).loss
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in tiny.parameters() if p.requires_grad]))
    (slow_loss, slow), (fast_loss, quick) = grads
    torch.testing.assert_close(fast_loss, slow_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(quick, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_cached_encoder_frames_give_the_same_logits(tiny: ASRModel, batch_audio) -> None:
    batch = training_batch(tiny, batch_audio, ["a", "b", "c", "d"])
    with torch.no_grad():
        frames, lengths = tiny.encode(batch["input_features"], batch["mel_lengths"])
        live = tiny(**batch).logits
        rest = {k: v for k, v in batch.items() if k not in ("input_features", "mel_lengths")}
        cached = tiny(**rest, encoder_frames=frames, encoder_lengths=lengths).logits
    torch.testing.assert_close(cached, live)


def test_mismatched_audio_positions_raise(tiny: ASRModel, batch_audio) -> None:
    features = tiny.processor.features(batch_audio[:1])
    _, lengths = tiny.encode(features["input_features"], features["mel_lengths"])
    n = int(tiny.projector.output_length(lengths)[0])
    wrong = tiny.processor.prompts([n + 1], ["hello"], padding_side="right")
    with pytest.raises(ValueError, match=rf"prompt has {n + 1} audio positions, projector gave {n}"):
        tiny(**wrong, **features)


def test_features_do_not_depend_on_the_batch(tiny: ASRModel, batch_audio) -> None:
    """Each clip's frames (up to the one the encoder stem reads past its end) are the same alone,
    in any batch, and in Whisper's own 30 s input."""
    batched = tiny.processor.features(batch_audio)
    assert batched["mel_lengths"].tolist() == [100, 50, 150, 27]
    assert batched["input_features"].shape[-1] >= 152
    for i, audio in enumerate(batch_audio):
        m = int(batched["mel_lengths"][i]) + 1
        alone = tiny.processor.features([audio])["input_features"][0, :, :m]
        torch.testing.assert_close(batched["input_features"][i, :, :m], alone, atol=1e-5, rtol=0)
        window = tiny.processor.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")[
            "input_features"
        ]
        torch.testing.assert_close(alone, window[0, :, :m], atol=1e-4, rtol=0)


def test_audio_embeddings_do_not_depend_on_the_batch(tiny: ASRModel, batch_audio) -> None:
    with torch.no_grad():
        audio, lengths = tiny.audio_embeddings(**tiny.processor.features(batch_audio))
        for i, clip in enumerate(batch_audio):
            alone, n = tiny.audio_embeddings(**tiny.processor.features([clip]))
            assert n.tolist() == [int(lengths[i])]
            torch.testing.assert_close(audio[i, : int(n[0])], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("repetition_penalty", [1.0, 1.1, 3.0])
def test_batched_generation_equals_one_by_one(
    tiny: ASRModel, batch_audio, num_beams: int, repetition_penalty: float
) -> None:
    options = {**VISIBLE, "num_beams": num_beams, "repetition_penalty": repetition_penalty}
    batched = tiny.transcribe(batch_audio, **options)
    alone = [tiny.transcribe([clip], **options)[0] for clip in batch_audio]
    assert batched == alone
    assert all(text.strip() for text in batched)


def test_generation_with_context(tiny: ASRModel, batch_audio) -> None:
    processor = tiny.processor
    contexts = ["names: Kate", None]
    batched = processor.batch_decode(
        tiny.generate(**processor(audio=batch_audio[:2], context=contexts), **VISIBLE)
    )
    alone = [
        processor.batch_decode(tiny.generate(**processor(audio=[a], context=c), **VISIBLE))[0]
        for a, c in zip(batch_audio[:2], contexts, strict=True)
    ]
    assert batched == alone


@pytest.mark.parametrize("context", [None, ["names: Kate", None, "x", None]])
def test_prompt_head_cache_gives_the_same_tokens(tiny: ASRModel, batch_audio, context) -> None:
    """The shared head's keys/values computed once (the default) or per row: the same ids."""
    inputs = tiny.processor(audio=batch_audio[:4], context=context[: len(batch_audio)] if context else None)
    plain = tiny.generate(**inputs, **VISIBLE, cache_prompt_head=False)
    cached = tiny.generate(**inputs, **VISIBLE)
    assert torch.equal(plain, cached)
    embeds = tiny.merge(
        inputs["input_ids"],
        inputs["audio_mask"],
        *tiny.audio_embeddings(inputs["input_features"], inputs["mel_lengths"]),
    )
    moved, mask, cache = tiny._prompt_head_cache(
        inputs["input_ids"], inputs["attention_mask"], inputs["audio_mask"], embeds
    )
    head = cache.get_seq_length()
    assert head > 0 and mask[:, :head].all() and int(mask.sum()) == int(inputs["attention_mask"].sum())
    # each row: its own head first, then its padding, then the rest of its prompt, in order
    for row in range(len(moved)):
        kept = inputs["attention_mask"][row].bool()
        torch.testing.assert_close(moved[row][mask[row].bool()], embeds[row][kept])


def test_rows_without_a_shared_head_are_not_rearranged(tiny: ASRModel, batch_audio) -> None:
    inputs = tiny.processor(audio=batch_audio[:2])
    ids = inputs["input_ids"].clone()
    first = int(inputs["attention_mask"][1].argmax())
    ids[1, first] += 1  # the second row's first token differs
    embeds = tiny.decoder.get_input_embeddings()(ids)
    moved, mask, cache = tiny._prompt_head_cache(ids, inputs["attention_mask"], inputs["audio_mask"], embeds)
    assert cache is None and moved is embeds and mask is inputs["attention_mask"]


def test_decoding_cap_follows_audio_length(tiny: ASRModel) -> None:
    assert tiny.max_new_tokens_for(torch.tensor([100, 300])) == 16 + 24  # 3 s at 8 tokens/s
    text = tiny.transcribe(clips(0.5), suppress_tokens=[*range(17), 198])[
        0
    ]  # eos suppressed: runs to the cap
    assert len(tiny.processor.tokenizer(text, add_special_tokens=False)["input_ids"]) <= 16 + 4 + 2


def test_n_best_rows_keep_their_clips_caps(tiny: ASRModel, batch_audio) -> None:
    """``num_return_sequences`` rows per clip, each capped by its own clip's duration."""
    inputs = tiny.processor(audio=batch_audio[:2])
    options = {"num_beams": 3, "suppress_tokens": VISIBLE["suppress_tokens"]}  # no eos: runs to the cap
    tokens = tiny.generate(**inputs, num_return_sequences=3, **options)
    assert tokens.shape[0] == 6
    caps = [tiny.max_new_tokens_for(m[None]) for m in inputs["mel_lengths"]]
    written = (tokens != tiny.generation_config.pad_token_id).sum(1).tolist()
    assert written == [caps[0]] * 3 + [caps[1]] * 3
    best = tiny.generate(**inputs, **options)
    assert torch.equal(tokens[::3, : best.shape[1]], best)


def test_clip_longer_than_30_seconds_is_rejected(tiny: ASRModel) -> None:
    with pytest.raises(ValueError, match="longer than Whisper's 30 s window"):
        tiny.processor.features([np.zeros(30 * SAMPLE_RATE + 200, np.float32)])


def reload(path: Path, seed: int = 0) -> ASRModel:
    """Random frozen parts (tests) are rebuilt from the seed; real sources from their weights."""
    torch.manual_seed(seed)
    return ASRModel.from_pretrained(path).eval()


def logits(model: ASRModel, audios: list[np.ndarray]) -> torch.Tensor:
    with torch.no_grad():
        return model(**training_batch(model, audios, ["hello world"] * len(audios))).logits


@pytest.mark.parametrize("lora", [None, {"r": 4}])
def test_save_and_reload(tmp_path: Path, batch_audio, lora: dict | None) -> None:
    model = tiny_model(lora=lora)
    with torch.no_grad():  # make the trainable part differ from any fresh init
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(tmp_path)
    saved_files = {f.name for f in tmp_path.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "processor_config.json",
    } <= saved_files
    assert {"tokenizer.json", "tokenizer_config.json"} <= saved_files  # the processor's: a complete folder
    assert not [f for f in saved_files if f.endswith(".tmp")]
    state = load_file(str(tmp_path / "model.safetensors"))
    projector_keys = {k for k in state if k.startswith("projector.")}
    lora_keys = {k for k in state if "lora_" in k}
    assert projector_keys and projector_keys | lora_keys == set(state)
    if lora:
        assert lora_keys and all(k.startswith("decoder.") for k in lora_keys)
        assert all(state[k].shape[0] == 4 for k in lora_keys if "lora_A" in k)
        assert {n for n, p in model.named_parameters() if p.requires_grad} == set(state)
    else:
        assert not lora_keys
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "asr_llm" and saved["lora"] == lora
    assert saved["decoder_config"]["hidden_size"] == 48 and saved["encoder_config"]["d_model"] == 64

    loaded = reload(tmp_path)
    for k, v in loaded.trainable_state_dict().items():
        assert torch.equal(v, state[k]), k
    torch.testing.assert_close(logits(loaded, batch_audio), logits(model, batch_audio), atol=0, rtol=0)
    assert loaded.transcribe(batch_audio, **VISIBLE) == model.transcribe(batch_audio, **VISIBLE)


def test_auto_classes(tmp_path: Path, tiny: ASRModel, batch_audio) -> None:
    assert isinstance(AutoConfig.for_model("asr_llm"), ASRConfig)
    tiny.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ASRConfig)
    torch.manual_seed(0)
    auto = AutoModel.from_pretrained(tmp_path).eval()
    assert type(auto) is ASRModel
    torch.testing.assert_close(logits(auto, batch_audio), logits(tiny, batch_audio), atol=0, rtol=0)
    # config overrides given to AutoModel reach the model
    torch.manual_seed(0)
    assert AutoModel.from_pretrained(tmp_path, projector_dropout=0.1).config.projector_dropout == 0.1


def test_checkpoint_that_does_not_fit_is_rejected(tmp_path: Path, tiny: ASRModel) -> None:
    tiny.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    config = json.loads((tmp_path / "config.json").read_text())
    config["projector_type"] = "stack_linear"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="checkpoint does not fit the model"):
        reload(tmp_path)
    assert state
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ASRModel.from_pretrained(tmp_path / "nothing")


# --------------------------------------------------------------------------- the real offline model


@pytest.mark.real
@pytest.mark.shared
def test_real_model_round_trip(tmp_path: Path, real_model: ASRModel, shared_data: Path) -> None:
    rows = manifest_rows(shared_data / "speechocean762.dev.jsonl", 2)
    audios = [load_audio(shared_data / r["audio"]) for r in rows]
    config = real_model.config
    assert (config.encoder_width, config.decoder_width) == (384, 576)
    assert config.projector_output_rms == pytest.approx(0.13, abs=0.03)  # SmolLM2's embedding RMS
    trainable = sum(p.numel() for p in real_model.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in real_model.projector.parameters())

    text = real_model.transcribe(audios, max_new_tokens=8)
    assert len(text) == 2 and all(isinstance(t, str) for t in text)
    real_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").stat().st_size < 20e6  # the projector only
    loaded = ASRModel.from_pretrained(tmp_path).eval()
    assert loaded.transcribe(audios, max_new_tokens=8) == text
    torch.testing.assert_close(logits(loaded, audios), logits(real_model, audios), atol=0, rtol=0)


def test_processor_validates_arrays_like_files(tiny: ASRModel) -> None:
    """The API rejects what the CLI rejects, with the same words, and scales PCM like files."""
    with pytest.raises(AudioError, match=r"<clip 0>: no audio samples"):
        tiny.transcribe([np.zeros(0, np.float32)])
    with pytest.raises(AudioError, match=r"<clip 1>: audio contains NaN or infinite samples"):
        tiny.transcribe([clips(1.0)[0], np.full(16000, np.nan, np.float32)])
    with pytest.raises(AudioError, match="expected a 1-D array or a list of arrays"):
        tiny.processor(audio="clip.wav")
    audio = clips(1.0)[0]
    pcm = (audio * 32767).astype(np.int16)
    as_float = tiny.processor(audio=[pcm.astype(np.float32) / 32768.0])["input_features"]
    torch.testing.assert_close(tiny.processor(audio=[pcm])["input_features"], as_float)
    stereo = tiny.processor(audio=[np.stack([audio, audio])])["input_features"]
    torch.testing.assert_close(stereo, tiny.processor(audio=[audio])["input_features"])


def test_truncated_weights_name_the_file(tmp_path: Path, tiny: ASRModel) -> None:
    tiny.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(OSError, match=r"model\.safetensors: unreadable checkpoint weights"):
        reload(tmp_path)


def test_merged_adapters_decode_like_unmerged_ones() -> None:
    model = tiny_model(lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]})
    with torch.no_grad():  # adapters that do something (peft starts B at zero)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 9000)]
    inputs = model.processor(audio=clips)
    plain = model.generate(**inputs, max_new_tokens=6)
    with torch.no_grad():
        logits = model(**inputs).logits
    merged = model.merge_adapters()
    assert torch.equal(merged.generate(**inputs, max_new_tokens=6), plain)
    with torch.no_grad():
        assert torch.allclose(merged(**inputs).logits, logits, atol=1e-4)
    with pytest.raises(RuntimeError, match="merged"):
        merged.train()


def test_lora_folded_at_load_decodes_like_peft_merged_and_without_peft(tmp_path: Path) -> None:
    model = tiny_model(lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]})
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.save_pretrained(tmp_path)
    rng = np.random.default_rng(1)
    audio = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 9000)]
    inputs = model.processor(audio=audio)
    torch.manual_seed(0)  # the tiny model's frozen parts are random: the same draw for both
    peft_merged = ASRModel.from_pretrained(tmp_path).merge_adapters()
    torch.manual_seed(0)
    folded = ASRModel.from_pretrained(tmp_path, merge_lora=True)
    assert not any("lora" in name for name, _ in folded.named_parameters())
    assert folded.config.lora["r"] == 4  # the config still describes the checkpoint
    assert torch.equal(
        folded.generate(**inputs, max_new_tokens=6), peft_merged.generate(**inputs, max_new_tokens=6)
    )
    with torch.no_grad():
        torch.testing.assert_close(
            folded(**inputs).logits, peft_merged(**inputs).logits, atol=1e-5, rtol=1e-5
        )
    with pytest.raises(RuntimeError, match="folded"):
        folded.save_pretrained(tmp_path / "again")
    with pytest.raises(RuntimeError, match="merged"):
        folded.train()


def test_inference_load_does_not_import_peft(tmp_path: Path) -> None:
    import subprocess
    import sys

    tiny_model(lora={"r": 4, "target_modules": ["q_proj"]}).save_pretrained(tmp_path)
    code = (
        "import sys; from asr.inference import load_model; "
        f"m = load_model({str(tmp_path)!r}); print('peft' in sys.modules, m.lora_folded)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
