"""Benchmark workers, run in-process on the tiny model (the subprocess plumbing is exercised by `asr bench`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tiny_config, tiny_model

from asr import bench


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("bench")
    decoder = {**tiny_config().decoder_config, "tie_word_embeddings": False}
    tiny_model(0, decoder_config=decoder).save_pretrained(root / "ckpt")
    rng = np.random.default_rng(0)
    clips = []
    for n, seconds in enumerate((1.0, 2.0, 1.5)):
        clips.append(str(root / f"{n}.wav"))
        sf.write(clips[-1], 0.1 * rng.standard_normal(int(seconds * 16000)), 16000)
    return {"model": str(root / "ckpt"), "clips": clips, "threads": 1, "beams": 1, "batch_size": 2}


def test_run_config_reports_speed_memory_and_texts(spec: dict) -> None:
    result = bench.run_config(spec)
    assert result["audio_seconds"] == 4.5 and result["seconds"] > 0 and len(result["texts"]) == 3
    assert result["peak_rss_mb"] > 50
    scored = bench._score(dict(result), ["a", "b", "c"])
    assert (
        scored["rtf"] == pytest.approx(result["seconds"] / 4.5)
        and scored["wer"] > 0
        and "texts" not in scored
    )


def test_profile_parts_add_up(spec: dict) -> None:
    profile = bench.run_profile(spec)
    seconds = profile["seconds"]
    assert {"features", "encoder", "projector", "llm_prefill", "llm_decode", "other"} <= set(seconds)
    assert sum(seconds.values()) == pytest.approx(profile["total_seconds"], abs=0.01)
    assert profile["decode_steps"] > 0 and seconds["other"] >= -0.01
    table = bench.format_tables(
        {
            "clips": 3,
            "audio_seconds": 4.5,
            "threads": 1,
            "machine": {"processor": "x"},
            "runs": [],
            "profile": [profile],
        }
    )
    assert "llm_decode" in table


def test_peak_rss_is_this_process() -> None:
    before = bench.peak_rss_mb()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB touched
    assert bench.peak_rss_mb() >= before and block.sum() > 0


@pytest.mark.real
def test_faster_whisper_worker_is_standalone(spec: dict, tmp_path: Path) -> None:
    """The baseline's worker imports faster-whisper only: no torch in its memory or its startup."""
    from asr.sources import packaged_whisper_dir
    from asr.transcribe import FASTER_WHISPER_OPTIONS

    fw = {**spec, "model": "faster-whisper", "compute_type": "int8", "options": FASTER_WHISPER_OPTIONS}
    fw["model_dir"] = str(packaged_whisper_dir())
    code = bench.faster_whisper_command("x")[3]
    assert "import torch" not in code and "import asr" not in code
    result = bench._spawn("run", fw, timeout=300)
    assert "error" not in result, result
    assert len(result["texts"]) == 3 and result["peak_rss_mb"] < 600
