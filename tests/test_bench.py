"""Benchmark workers, run in-process on the tiny model (the subprocess plumbing is exercised by
`python benchmarks/bench.py`), and ``python -m asr``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import speechlike, tiny_config, tiny_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the harness is a repository script, not part of the asr package

import bench  # noqa: E402


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("bench")
    decoder = {**tiny_config().decoder_config, "tie_word_embeddings": False}
    tiny_model(0, decoder_config=decoder).save_pretrained(root / "ckpt")
    rng = np.random.default_rng(0)
    clips = []
    for n, seconds in enumerate((1.0, 2.0, 1.5)):
        clips.append(str(root / f"{n}.wav"))
        sf.write(clips[-1], speechlike(0.1 * rng.standard_normal(int(seconds * 16000))), 16000)
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
    from asr.inference import FASTER_WHISPER_OPTIONS
    from asr.sources import packaged_whisper_dir

    fw = {**spec, "model": "faster-whisper", "compute_type": "int8", "options": FASTER_WHISPER_OPTIONS}
    fw["model_dir"] = str(packaged_whisper_dir())
    command = bench.faster_whisper_command("x")
    assert command[1:] == ["-I", str(BENCHMARKS / "faster_whisper_worker.py"), "x"]
    result = bench._spawn("run", fw, timeout=300)
    assert "error" not in result, result
    assert len(result["texts"]) == 3 and result["peak_rss_mb"] < 600


def test_faster_whisper_worker_imports_no_torch() -> None:
    """The worker is a plain script whose imports are faster-whisper and the standard library only."""
    worker = BENCHMARKS / "faster_whisper_worker.py"
    assert worker.is_file()
    imported = set()
    for node in ast.walk(ast.parse(worker.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert "faster_whisper" in imported
    assert not imported & {"torch", "transformers", "peft", "asr"}, imported


def test_python_m_asr_is_the_asr_command(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "asr", "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: asr ")
    assert all(command in proc.stdout for command in ("transcribe", "evaluate", "trace"))
    assert "bench" not in proc.stdout


@pytest.fixture(scope="module")
def long_file(spec: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("longform")
    manifest = root / "m.jsonl"
    manifest.write_text(
        "".join(f'{{"audio": "{c}", "text": "clip {i}"}}\n' for i, c in enumerate(spec["clips"] * 4))
    )
    with pytest.raises(ValueError, match="only 24 s of audio"):
        bench.make_long_file(manifest, 60.0, root)
    return bench.make_long_file(manifest, 10.0, root)


def test_long_file_joins_clips_in_order_with_gaps(long_file: tuple[Path, str]) -> None:
    path, reference = long_file
    audio, rate = sf.read(path)
    # 1.0 + 2.0 + 1.5 + 1.0 + 2.0 s of clips and a 0.5 s gap after each: 10 s, the first 5 clips
    assert rate == 16000 and len(audio) == 16000 * (7.5 + 5 * bench.LONGFORM_GAP_SECONDS)
    assert reference == "clip 0 clip 1 clip 2 clip 3 clip 4"


def test_run_longform_reports_one_text_for_the_file(spec: dict, long_file: tuple[Path, str]) -> None:
    result = bench.run_longform({**spec, "file": str(long_file[0]), "batch_size": 8})
    assert result["audio_seconds"] == 10.0 and result["batch_size"] == 8 and len(result["texts"]) == 1
    table = bench.format_tables(
        {
            "clips": 0,
            "audio_seconds": 0,
            "threads": 1,
            "machine": {"processor": "x"},
            "runs": [],
            "longform": [bench._score(result, ["clip 0 clip 1"])],
            "longform_seconds": 10.0,
            "longform_manifest": "m.jsonl",
        }
    )
    assert "Long-form: one file of 10 s" in table and "| 8 |" in table


@pytest.mark.real
def test_faster_whisper_longform_worker(spec: dict, long_file: tuple[Path, str]) -> None:
    """The baseline's long-form side: BatchedInferencePipeline at batch 8 over the same file."""
    from asr.inference import FASTER_WHISPER_OPTIONS
    from asr.sources import packaged_whisper_dir

    fw = {**spec, "model": "faster-whisper", "compute_type": "int8", "options": FASTER_WHISPER_OPTIONS}
    fw |= {"model_dir": str(packaged_whisper_dir()), "file": str(long_file[0]), "batch_size": 8}
    result = bench._spawn("longform", fw, timeout=300)
    assert "error" not in result, result
    assert "BatchedInferencePipeline" in result["system"] and len(result["texts"]) == 1
    assert result["audio_seconds"] == 10.0


def test_ctc_draft_replay_counts_speculative_passes():
    """benchmarks/ctc_draft.py: a draft that holds the transcript writes it in one pass per
    ``k + 1`` tokens; a wrong draft gains nothing; the lookup resumes where the draft holds a written token."""
    import ctc_draft

    written = [5, 6, 7, 8, 9, 2]
    assert ctc_draft.passes(written, written, 16) == 1
    assert ctc_draft.passes(written, written, 2) == 2  # 3 tokens a pass
    assert ctc_draft.passes(written, [40, 41, 42], 4) == len(written)
    # the draft drops 7: pass 1 keeps 5, 6 and the LLM writes 7; the draft has no 7 to look up,
    # so pass 2 writes 8 alone; from 8 the draft guesses 9, 2 (right): 3 passes
    assert ctc_draft.propose([5, 6, 7], [5, 6, 8, 9, 2], 4) == []
    assert ctc_draft.propose([5, 6, 7, 8], [5, 6, 8, 9, 2], 4) == [9, 2]
    assert ctc_draft.passes(written, [5, 6, 8, 9, 2], 4) == 3
