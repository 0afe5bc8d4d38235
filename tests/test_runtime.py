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

from asr.inference import Transcriber, load_backend
from asr.inference.transcribe import ModelBackend, RuntimeBackend
from asr.runtime import RuntimeModel, numpy_model, unsupported
from asr.runtime.export import FILES, export_model, fingerprint, prepare
from asr.runtime.model import map_safetensors

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "offline"
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


def test_greedy_tokens_match_generate_alone_and_batched(talking: tuple) -> None:
    """The whole path: the same token ids as ``ASRModel.generate`` (greedy, repetition penalty on
    generated tokens, each clip's own cap), and a clip decodes the same in any batch, although
    rows finish at different steps (the cache drops them) and answers outgrow the first
    allocation (the cache grows)."""
    model, runtime = talking
    clips = [clip(s) for s in (2.0, 3.1, 1.2, 4.0)]
    with torch.no_grad():
        tokens = model.generate(**model.processor(audio=clips))
    eos = model.generation_config.eos_token_id
    expected = []
    for i, row in enumerate(tokens.tolist()):
        cap = runtime.cap(clips[i])
        row = row[:cap]
        expected.append(row[: row.index(eos) + 1] if eos in row else row)
    assert any(len(r) > 16 for r in expected), "no answer outgrows the cache's first allocation"
    assert len({len(r) for r in expected}) > 1, "rows should finish at different steps"
    assert runtime.generate(clips) == expected
    assert [runtime.generate([c])[0] for c in clips] == expected
    assert runtime.transcribe(clips) == model.transcribe(clips)


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
    for context in (None, "  Names: Ada Lovelace.  "):
        prompt = builder.build(3, context=context)
        head = runtime._encode(runtime.meta["prompt"]["before"])
        assert prompt.input_ids == head + [builder.audio_token_id] * 3 + runtime.tail(context)
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
    reason = unsupported(ROOT / "checkpoints" / "offline-2pass")
    assert reason and "two-pass" in reason
    assert "no config.json" in unsupported(tmp_path)
    config = json.loads((SHIPPED / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "projector_type": "conv_mlp"}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"num_beams": 4}))
    reason = unsupported(tmp_path)
    assert "'conv_mlp'" in reason and "beam search" in reason
    with pytest.raises(ValueError, match="two-pass"):
        load_backend(ROOT / "checkpoints" / "offline-2pass", runtime="numpy")


def test_fingerprint_follows_the_checkpoint_content(tmp_path: Path) -> None:
    for name in FILES:
        (tmp_path / name).write_bytes((SHIPPED / name).read_bytes())
    assert fingerprint(tmp_path) == fingerprint(SHIPPED)  # content, not the folder's name
    (tmp_path / "generation_config.json").write_text("{}")
    assert fingerprint(tmp_path) != fingerprint(SHIPPED)


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
    assert not isinstance(load_backend(SHIPPED, num_beams=2), RuntimeBackend)
    with pytest.raises(ValueError, match="runtime="):
        load_backend(SHIPPED, runtime="onnx")


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
