"""The NumPy runtime (asr.runtime) against the torch model it was exported from: each part's
numbers, the generated tokens, the shipped checkpoint's transcripts; and what it needs at start."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import speechlike, tiny_config, tiny_model
from safetensors.numpy import load_file

from asr.generation import DecodingConfig, through_eos
from asr.inference import Transcriber, load_backend
from asr.inference.transcribe import ModelBackend, RuntimeBackend
from asr.modeling import load_decoding
from asr.precision import cpu_has_bf16
from asr.runtime import RuntimeModel, numpy_model, unsupported
from asr.runtime.export import FILES, export_model, fingerprint, prepare
from asr.runtime.model import map_safetensors

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "offline"
TWO_PASS = ROOT / "checkpoints" / "offline-2pass"
RNG = np.random.default_rng(0)


def clip(seconds: float) -> np.ndarray:
    return speechlike(0.1 * RNG.standard_normal(int(seconds * 16000)))


@pytest.fixture(scope="module")
def talking(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A tiny random model with an untied LM head (a tied random one repeats the prompt's last
    token, which makes comparisons vacuous), its export, and the runtime on it."""
    model = tiny_model(3, decoder_config={**tiny_config().decoder_config, "tie_word_embeddings": False})
    folder = tmp_path_factory.mktemp("runtime")
    export_model(model, folder)
    return model, RuntimeModel(folder)


def test_features_match_the_processor(talking: tuple) -> None:
    model, runtime = talking
    clips = [clip(s) for s in (1.3, 2.71)]
    ref = model.processor.features(clips)
    for i, c in enumerate(clips):
        n = int(ref["mel_lengths"][i])
        ours = numpy_model.features(c, runtime.weights["mel_filters"])
        np.testing.assert_allclose(ours[:, :n], ref["input_features"][i, :, :n].numpy(), atol=2e-5)


def test_audio_vectors_match_encoder_and_projector(talking: tuple) -> None:
    model, runtime = talking
    clips = [clip(s) for s in (0.9, 2.2)]
    inputs = model.processor.features(clips)
    with torch.no_grad():
        audio, n_audio = model.audio_embeddings(inputs["input_features"], inputs["mel_lengths"])
    for i, c in enumerate(clips):
        ours = runtime.audio_vectors(c)
        assert ours.shape == (int(n_audio[i]), model.config.decoder_width)
        np.testing.assert_allclose(ours, audio[i, : int(n_audio[i])].numpy(), atol=2e-4)


def test_gelu_matches_torch() -> None:
    """Within 1e-6 of the exact GELU (float64 erf); torch's own float32 kernel is itself ~1e-6 off
    it on AVX-512 CPUs (its vectorised erf), so the two agree within 2e-6."""
    x = np.linspace(-8, 8, 10001, dtype=np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    np.testing.assert_allclose(numpy_model.gelu(x), exact, atol=1e-6)
    ref = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(numpy_model.gelu(x), ref, atol=2e-6)


def test_shared_prefix_attention_equals_copied_keys() -> None:
    """Beam search's beams read their clip's prompt from one prefix row: the same attention as
    every row holding its own copy of the prompt before its answer (rows of different lengths)."""
    rng = np.random.default_rng(0)
    clips, beams, kv, group, d, p, s = 3, 4, 2, 3, 8, 7, 5
    n = clips * beams
    q = rng.standard_normal((kv * group, n, d), dtype=np.float32)
    prefix_k, prefix_v = (rng.standard_normal((clips, kv, p, d), dtype=np.float32) for _ in range(2))
    keys, values = (rng.standard_normal((n, kv, s, d), dtype=np.float32) for _ in range(2))
    prompt_len = np.array([7, 4, 6]).repeat(beams)  # each clip's prompt, shorter than the slots
    answer_len = np.array([5, 3, 1]).repeat(beams)
    seen = np.arange(p)[None, :] < prompt_len[:, None]
    mine = np.arange(s)[None, :] < answer_len[:, None]
    bias = numpy_model._mask(np.concatenate([seen, mine], 1))[:, None, None, :]
    shared = numpy_model._attend_step(q, keys, values, bias, group, (prefix_k, prefix_v))
    copied = numpy_model._attend_step(
        q,
        np.concatenate([prefix_k.repeat(beams, 0), keys], 2),
        np.concatenate([prefix_v.repeat(beams, 0), values], 2),
        bias,
        group,
    )
    np.testing.assert_allclose(shared, copied, rtol=1e-5, atol=1e-6)
    # and the attention of one row alone, by the prefill's per-row path
    row = 5
    alone = numpy_model._attend(
        q[:, row : row + 1],
        np.concatenate([prefix_k[row // beams], keys[row]], 1),
        np.concatenate([prefix_v[row // beams], values[row]], 1),
        bias[row, 0],
        group,
    )
    np.testing.assert_allclose(shared[row : row + 1], alone, rtol=1e-5, atol=1e-6)


def _answers(tokens: torch.Tensor, caps: list[int], eos: int) -> list[list[int]]:
    """``generate``'s rows as answers: cut at each clip's cap and after the end of text."""
    rows = [row[:cap] for row, cap in zip(tokens.tolist(), caps, strict=True)]
    return [through_eos(row, eos) for row in rows]


def test_through_eos_keeps_the_end_of_text_and_drops_the_padding_after_it() -> None:
    assert through_eos([5, 6, 2, 2, 2], eos=2) == [5, 6, 2]
    assert through_eos([2, 7], eos=2) == [2]
    assert through_eos([5, 6, 7], eos=2) == [5, 6, 7]  # capped before the end: all of it
    assert through_eos([], eos=2) == []


def test_greedy_tokens_match_generate_alone_and_batched(talking: tuple) -> None:
    """The whole path: the same token ids as ``ASRModel.generate`` (greedy, repetition penalty on
    generated tokens, each clip's own cap), and a clip decodes the same in any batch, although
    rows finish at different steps (the cache drops them) and answers outgrow the first
    allocation (the cache grows)."""
    model, runtime = talking
    clips = [clip(s) for s in (2.0, 3.1, 1.2, 4.0)]
    with torch.no_grad():
        tokens = model.generate(**model.processor(audio=clips))
    expected = _answers(tokens, [runtime.cap(c) for c in clips], model.generation_config.eos_token_id)
    assert any(len(r) > 16 for r in expected), "no answer outgrows the cache's first allocation"
    assert len({len(r) for r in expected}) > 1, "rows should finish at different steps"
    assert runtime.generate(clips) == expected
    assert [runtime.generate([c])[0] for c in clips] == expected
    assert runtime.transcribe(clips) == model.transcribe(clips)


def test_beam_search_matches_generate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beam search (``num_beams`` 3, length penalty 1.5, repetition penalty 1.3): the same token
    ids as transformers' ``generate`` for each clip, alone and in one batch, and not greedy's.

    A random LLM never ends an answer, so the end-of-text row of its LM head is set to the mean of
    its final hidden states (scaled): then some clips end by the end of text, at different steps
    (the early-stopping rule and the batch shrinking are exercised), others at their cap."""
    model = tiny_model(3, decoder_config={**tiny_config().decoder_config, "tie_word_embeddings": False})
    clips = [clip(s) for s in (2.0, 3.1, 1.2, 4.0)]
    for name in "ab":
        (tmp_path / name).mkdir()
    export_model(model, tmp_path / "a")
    states = []
    llama = numpy_model.llama
    monkeypatch.setattr(numpy_model, "llama", lambda *a, **k: states.append(llama(*a, **k)) or states[-1])
    RuntimeModel(tmp_path / "a").generate(clips)
    monkeypatch.undo()
    mean = torch.from_numpy(np.concatenate(states).mean(0))
    eos = model.generation_config.eos_token_id
    with torch.no_grad():
        model.decoder.get_output_embeddings().weight[eos] = 0.55 * mean / mean.dot(mean)
    export_model(model, tmp_path / "b")
    runtime = RuntimeModel(tmp_path / "b")
    runtime.decoding = runtime.decoding.replace(length_penalty=1.5, repetition_penalty=1.3)
    options = {"num_beams": 3, "length_penalty": 1.5, "repetition_penalty": 1.3}
    caps = [runtime.cap(c) for c in clips]
    expected = []
    with torch.no_grad():
        for c, cap in zip(clips, caps, strict=True):  # alone: its own cap is the batch's
            expected += _answers(model.generate(**model.processor(audio=[c]), **options), [cap], eos)
    ended = [r[-1] == eos for r in expected]
    assert any(ended) and not all(ended), "some answers should end by the end of text, some at the cap"
    assert len({len(r) for r in expected if r[-1] == eos}) > 1, "answers should end at different steps"
    assert runtime.generate(clips, num_beams=3) == expected
    assert [runtime.generate([c], num_beams=3)[0] for c in clips] == expected
    assert runtime.generate(clips, num_beams=1) != expected


def test_ngram_blocking_matches_generate(talking: tuple) -> None:
    """``no_repeat_ngram_size`` 1 and 2 (greedy and beam search, no repetition penalty, as
    shipped): the same token ids as ``generate``, no answer repeats a token n-gram, and the
    blocking changes what the random model writes (it loops without)."""
    model, runtime = talking
    clips = [clip(s) for s in (2.0, 3.1, 1.2, 4.0)]
    caps = [runtime.cap(c) for c in clips]
    eos = model.generation_config.eos_token_id
    penalty = runtime.decoding.repetition_penalty
    runtime.decoding = runtime.decoding.replace(repetition_penalty=1.0)
    plain = runtime.generate(clips)
    changed = False
    try:
        for size in (1, 2):
            runtime.decoding = runtime.decoding.replace(no_repeat_ngram_size=size)
            for beams in (1, 3):
                options = {"num_beams": beams, "no_repeat_ngram_size": size, "repetition_penalty": 1.0}
                expected = []
                with torch.no_grad():
                    for c, cap in zip(clips, caps, strict=True):
                        expected += _answers(
                            model.generate(**model.processor(audio=[c]), **options), [cap], eos
                        )
                for answer in expected:
                    grams = [tuple(answer[i : i + size]) for i in range(len(answer) - size + 1)]
                    assert len(grams) == len(set(grams))
                assert runtime.generate(clips, num_beams=beams) == expected
                changed |= beams == 1 and expected != plain
    finally:
        runtime.decoding = runtime.decoding.replace(no_repeat_ngram_size=0, repetition_penalty=penalty)
    assert changed, "blocking should change what greedy writes"


def test_ctc_guided_tokens_match_generate(tmp_path: Path) -> None:
    """CTC-guided greedy decoding (``generation.ctc_guide_weight``): the runtime writes the torch
    path's tokens, and the guide changes what plain greedy writes (the comparison is not vacuous)."""
    decoder = {**tiny_config().decoder_config, "tie_word_embeddings": False}
    model = tiny_model(3, decoder_config=decoder, ctc_weight=0.3)
    clips = [clip(s) for s in (2.0, 3.1, 1.2)]
    with torch.no_grad():
        plain = model.transcribe(clips)
        model.set_decoding(model.decoding.replace(ctc_guide_weight=5.0, ctc_guide_top_k=4))
        guided = model.transcribe(clips)
    assert guided != plain
    export_model(model, tmp_path)
    runtime = RuntimeModel(tmp_path)
    assert runtime.decoding.ctc_guide_weight == 5.0
    assert runtime.transcribe(clips) == guided
    assert [runtime.transcribe([c])[0] for c in clips] == guided
    without_head = tiny_model(3, decoder_config=decoder)
    with pytest.raises(ValueError, match="needs a CTC head"):
        without_head.transcribe(clips[:1], ctc_guide_weight=1.0)
    with pytest.raises(ValueError, match="ctc_guide_weight"):
        model.decoding.replace(num_beams=2)


def test_context_prompt_matches_the_prompt_builder(talking: tuple) -> None:
    model, runtime = talking
    builder = model.processor.prompt_builder
    head = runtime._encode(runtime.meta["prompt"]["before"])
    for context in (None, "  Names: Ada Lovelace.  "):
        for first_pass in (None, "", " the first pass heard this "):  # two-pass prompts too
            prompt = builder.build(3, context=context, first_pass=first_pass)
            tail = runtime.tail(context, first_pass)
            assert prompt.input_ids == head + [builder.audio_token_id] * 3 + tail
    c = clip(2.0)
    assert runtime.transcribe([c], context="Ada") == model.transcribe([c], context="Ada")


def test_mapped_weights_equal_the_file(talking: tuple) -> None:
    _, runtime = talking
    folder = runtime.folder
    loaded = load_file(str(folder / "weights.safetensors"))
    mapped = map_safetensors(folder / "weights.safetensors")
    assert loaded.keys() == mapped.keys()
    for key, value in loaded.items():
        assert mapped[key].dtype == value.dtype and np.array_equal(mapped[key], value)
        assert not mapped[key].flags.writeable  # views of the file, not copies


def test_a_damaged_weights_file_is_named(talking: tuple, tmp_path: Path) -> None:
    data = (talking[1].folder / "weights.safetensors").read_bytes()
    for name, content in (("cut.safetensors", data[: len(data) // 2]), ("junk.safetensors", b"not weights")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(OSError, match=name):
            map_safetensors(tmp_path / name)


def test_unsupported_names_the_reason(tmp_path: Path) -> None:
    assert unsupported(SHIPPED) is None
    assert unsupported(TWO_PASS) is None
    assert "no config.json" in unsupported(tmp_path)
    config = json.loads((SHIPPED / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "projector_type": "conv_mlp"}))
    reason = unsupported(tmp_path)
    assert "'conv_mlp'" in reason
    two_pass = json.loads((TWO_PASS / "config.json").read_text())
    (tmp_path / "generation_config.json").write_text("{}")
    for change, words in (
        ({"encoder_source": "openai/whisper-tiny.en"}, "not the packaged Whisper"),
        ({"encoder_lora": {"r": 8}}, "LoRA on its encoder"),
    ):
        (tmp_path / "config.json").write_text(json.dumps({**two_pass, **change}))
        assert words in unsupported(tmp_path)
        with pytest.raises(ValueError, match=words):
            load_backend(tmp_path, runtime="numpy")


def test_fingerprint_follows_the_checkpoint_content(tmp_path: Path) -> None:
    for name in FILES:
        (tmp_path / name).write_bytes((SHIPPED / name).read_bytes())
    assert fingerprint(tmp_path) == fingerprint(SHIPPED)  # content, not the folder's name
    (tmp_path / "generation_config.json").write_text("{}")
    assert fingerprint(tmp_path) == fingerprint(SHIPPED)  # decoding is read at load, not exported
    (tmp_path / "config.json").write_text((SHIPPED / "config.json").read_text().replace("{", '{"x": 1, ', 1))
    assert fingerprint(tmp_path) != fingerprint(SHIPPED)


def test_decoding_is_read_from_the_checkpoint_at_load(
    talking: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edited ``generation_config.json`` decodes as it says with the same export (no re-export);
    read without transformers, it is what the torch path reads from the same file."""
    exported = talking[1].folder
    monkeypatch.setattr("asr.runtime.model.prepare", lambda checkpoint, log=None: exported)
    assert RuntimeModel.from_checkpoint(tmp_path).decoding == talking[1].decoding  # no file: the export's
    shipped = json.loads((SHIPPED / "generation_config.json").read_text())
    edited = {**shipped, "num_beams": 2, "length_penalty": 0.7, "no_repeat_ngram_size": 3}
    (tmp_path / "generation_config.json").write_text(json.dumps(edited))
    runtime = RuntimeModel.from_checkpoint(tmp_path)
    expected = load_decoding(SHIPPED, {}).replace(num_beams=2, length_penalty=0.7, no_repeat_ngram_size=3)
    assert runtime.decoding == expected != talking[1].decoding
    assert runtime.decoding == load_decoding(tmp_path, {})  # the torch path's reading of the file
    assert DecodingConfig.from_dict(shipped) == load_decoding(SHIPPED, {})


def test_transcribe_command_never_imports_torch() -> None:
    """What the ``asr`` command loads before it knows the backend: nothing of torch or
    transformers (their import is most of a cold start: about 15 s on the reference VM)."""
    code = (
        "import sys, asr, asr.cli, asr.runtime, asr.inference; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_backend_choice(talking: tuple) -> None:
    model, _ = talking
    assert isinstance(load_backend(model), ModelBackend)  # a loaded model stays in torch
    backend = load_backend(SHIPPED)  # auto: the shipped checkpoint runs in NumPy
    assert isinstance(backend, RuntimeBackend) and backend.name == "offline (numpy)"
    beams = load_backend(SHIPPED, num_beams=2)  # beam search runs in NumPy too
    assert isinstance(beams, RuntimeBackend) and beams.num_beams == 2
    assert isinstance(load_backend(TWO_PASS), RuntimeBackend)  # the default model, too
    with pytest.raises(ValueError, match="runtime="):
        load_backend(SHIPPED, runtime="onnx")


def test_bfloat16_is_torch_only_and_casts_every_weight() -> None:
    """``dtype="bfloat16"`` runs the torch path with bf16 weights (the NumPy runtime is float32
    only, so insisting on it is an error); a CPU without native bf16 gets a warning."""
    with pytest.raises(ValueError, match="--runtime numpy computes in float32 only"):
        load_backend(SHIPPED, runtime="numpy", dtype="bfloat16")
    with pytest.raises(ValueError, match="dtype="):
        load_backend(SHIPPED, dtype="float16")
    if cpu_has_bf16():
        backend = load_backend(SHIPPED, dtype="bfloat16")
    else:
        with pytest.warns(UserWarning, match="without AVX-512 BF16 or AMX"):
            backend = load_backend(SHIPPED, dtype="bfloat16")
    assert isinstance(backend, ModelBackend) and backend.name == "offline bfloat16"
    assert {p.dtype for p in backend.model.parameters()} == {torch.bfloat16}


@pytest.mark.skipif(
    not cpu_has_bf16(), reason="bf16 is ~100x slower than float32 on a CPU without AVX-512 BF16/AMX"
)
def test_shipped_checkpoint_bfloat16_within_tolerance(shared_data: Path) -> None:
    """bf16 weights change rounding, so a few words: on the whole dev sets the shipped stage F's
    WER moved by +0.24 (LibriSpeech) and +0.47 (speechocean762) points. On 24 real LibriSpeech
    dev clips most bf16 transcripts equal float32's (18 of 24 on an AMX CPU at 2026-12-02; the
    others part where the model guesses anyway), and their WER stays close (+2.6 points there:
    one clip that parts early moves 8 clips' WER by 5.9, so fewer clips are too noisy to bound)."""
    from asr.audio import load_audio
    from asr.evaluate import corpus_wer

    rows = [
        json.loads(line) for line in (shared_data / "librispeech.dev.jsonl").read_text().splitlines()[:24]
    ]
    clips = [load_audio(str(shared_data / r["audio"])) for r in rows]
    refs = [r["text"] for r in rows]
    f32 = RuntimeModel(prepare(SHIPPED)).transcribe(clips)  # = the torch float32 path (above)
    bf16 = [t.text for t in Transcriber(SHIPPED, dtype="bfloat16")(clips)]
    assert sum(a == b for a, b in zip(f32, bf16, strict=True)) >= 12
    assert abs(corpus_wer(refs, bf16) - corpus_wer(refs, f32)) < 0.05


def test_shipped_checkpoint_same_transcripts_as_torch(shared_data: Path) -> None:
    """The shipped model on 8 real LibriSpeech dev clips (5-20 s, long answers): the NumPy
    runtime writes exactly the torch path's transcripts, batched and alone."""
    from asr.audio import load_audio

    rows = [json.loads(line) for line in (shared_data / "librispeech.dev.jsonl").read_text().splitlines()[:8]]
    clips = [load_audio(str(shared_data / r["audio"])) for r in rows]
    runtime = RuntimeModel(prepare(SHIPPED))
    torch_texts = [t.text for t in Transcriber(SHIPPED, runtime="torch")(clips)]
    assert runtime.transcribe(clips) == torch_texts
    assert [runtime.transcribe([c])[0] for c in clips[:3]] == torch_texts[:3]


def test_llm_answer_logprobs_match_torch(talking: tuple) -> None:
    """Two-pass rescoring's LLM side: the summed log-probability of given answers after each
    clip's prompt, as ``ASRModel.answer_logprobs`` computes it (rows of different lengths)."""
    model, runtime = talking
    clips = [clip(s) for s in (1.5, 2.6)]
    answers = [
        runtime._encode("one two three") + [runtime.eos],
        runtime._encode("a longer answer, here") + [2],
    ]
    inputs = model.processor(audio=clips)
    with torch.no_grad():
        audio, n_audio = model.audio_embeddings(inputs["input_features"], inputs["mel_lengths"])
        ref = model.answer_logprobs(
            inputs["input_ids"], inputs["attention_mask"], inputs["audio_mask"], audio, n_audio, answers
        )
    _, prompts = runtime.prompts(clips)
    w, dims, head = runtime.weights, runtime.llm_dims, runtime.head()
    ours = numpy_model.answer_logprobs(prompts, [[a] for a in answers], w, dims, head=head)
    np.testing.assert_allclose([s for (s,) in ours], ref.numpy(), rtol=1e-4)
    # several answers per prompt share its keys/values; a one-token answer (only the end) too
    shared = numpy_model.answer_logprobs(prompts, [answers + [[2]], answers[::-1]], w, dims, head=head)
    alone = numpy_model.answer_logprobs([prompts[0]], [[[2]]], w, dims, head=head)[0][0]
    np.testing.assert_allclose(shared[0][:2], ref.numpy(), rtol=1e-4)
    assert shared[0][2] == pytest.approx(alone, rel=1e-5)
    assert shared[1][0] == pytest.approx(float(ref[1]), rel=1e-4)


def test_whisper_decoder_logprobs_match_torch() -> None:
    """Two-pass rescoring's Whisper side on a small random Whisper: the teacher-forced sum of
    log-probabilities after the start tokens equals transformers' decoder's."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from asr.runtime.export import _whisper_decoder_weights

    torch.manual_seed(0)
    config = WhisperConfig(
        d_model=64, encoder_layers=1, encoder_attention_heads=4, decoder_layers=2, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=300, max_target_positions=32,
        pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=1,
    )  # fmt: skip
    whisper = WhisperForConditionalGeneration(config).eval()
    weights: dict[str, np.ndarray] = {}
    _whisper_decoder_weights(whisper.model.decoder, weights)
    encoded = RNG.standard_normal((50, 64)).astype(np.float32)
    sequences = [[1, 2, 40, 41, 42, 0], [1, 2, 0], [1, 2, 7, 250, 9, 9, 9, 13, 0]]
    ours = numpy_model.whisper_decoder_logprobs(encoded, sequences, 2, weights, numpy_model.EncoderDims(2, 4))
    for seq, got in zip(sequences, ours, strict=True):
        ids = torch.tensor([seq])
        with torch.no_grad():
            logits = whisper(
                encoder_outputs=(torch.from_numpy(encoded)[None],), decoder_input_ids=ids[:, :-1]
            ).logits
        logprobs = logits[0].log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]
        assert got == pytest.approx(float(logprobs[1:].sum()), rel=1e-4, abs=1e-4)


@pytest.fixture(scope="module")
def two_pass_runtime() -> RuntimeModel:
    return RuntimeModel(prepare(TWO_PASS), threads=2)


def test_two_pass_whisper_scores_match_torch(two_pass_runtime: RuntimeModel) -> None:
    """The shipped two-pass model's Whisper scores (the packaged tiny.en: features of the clip's
    30 s window, encoder, decoder) against ``WhisperScorer``; empty text included."""
    from asr.first_pass import WhisperScorer
    from asr.paths import PACKAGED_WHISPER

    c = clip(2.5)
    texts = ["hello world", "", "the cat sat on the mat"]
    ref = WhisperScorer.from_source(PACKAGED_WHISPER)([c], [texts])[0]
    np.testing.assert_allclose(two_pass_runtime.whisper_scores(c, texts), ref, rtol=1e-3, atol=1e-2)


def test_two_pass_checkpoint_same_transcripts_as_torch(
    two_pass_runtime: RuntimeModel, dev_rows: list
) -> None:
    """The default model (two-pass) on 8 real speechocean762 dev clips: the NumPy runtime's first
    pass, prompt, greedy answer and rescoring give the torch path's transcripts, batched and
    alone; on some clips the answer differs from the first pass, so the rescoring decides."""
    from asr.audio import load_audio
    from asr.prompt import normalize_target

    clips = [load_audio(r["audio"]) for r in dev_rows]
    torch_texts = [t.text for t in Transcriber(TWO_PASS, runtime="torch", threads=2)(clips)]
    assert two_pass_runtime.transcribe(clips) == torch_texts
    assert [two_pass_runtime.transcribe([c])[0] for c in clips[:3]] == torch_texts[:3]
    first = two_pass_runtime.run_first_pass(clips)
    answers = two_pass_runtime.tokenizer.decode_batch(
        two_pass_runtime.generate(clips, first_pass=first), skip_special_tokens=True
    )
    assert any(
        normalize_target(a, "plain") != normalize_target(h[0], "plain")
        for a, h in zip(answers, first, strict=True)
    )
