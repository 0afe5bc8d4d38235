"""The asr command, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import speechlike, tiny_config, tiny_model

from asr import cli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    decoder = {
        **tiny_config().decoder_config,
        "tie_word_embeddings": False,
    }  # a tiny model that says something
    path = tmp_path_factory.mktemp("ckpt")
    tiny_model(0, decoder_config=decoder).save_pretrained(path)
    return path


def test_transcribe_writes_json_and_srt(tmp_path: Path, checkpoint: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    wav = tmp_path / "talk.wav"
    sf.write(wav, speechlike(0.1 * rng.standard_normal(40 * 16000)), 16000)  # 40 s: two windows
    out = tmp_path / "out"
    argv = ["transcribe", str(wav), "--model", str(checkpoint), "--format", "json,srt", "--format", "txt"]
    code = cli.main([*argv, "--output-dir", str(out), "--threads", "1", "--max-new-tokens", "6"])
    assert code == 0
    printed = capsys.readouterr().out.strip()
    data = json.loads((out / "talk.json").read_text())
    assert data["source"] == str(wav) and data["duration"] == 40.0 and data["error"] is None
    assert data["text"] == printed and printed
    assert [(s["start"], s["end"]) for s in data["segments"]] == [(0.0, 20.0), (20.0, 40.0)]
    assert " ".join(s["text"] for s in data["segments"]) == data["text"]
    cues = (out / "talk.srt").read_text().strip().split("\n\n")
    assert [c.splitlines()[:2] for c in cues] == [
        ["1", "00:00:00,000 --> 00:00:20,000"],
        ["2", "00:00:20,000 --> 00:00:40,000"],
    ]
    assert (out / "talk.txt").read_text().strip() == printed


def test_transcribe_reports_bad_file_and_exit_code(tmp_path: Path, checkpoint: Path, capsys) -> None:
    good, bad = tmp_path / "good.wav", tmp_path / "bad.wav"
    sf.write(good, speechlike(0.1 * np.random.default_rng(1).standard_normal(16000)), 16000)
    bad.write_text("not audio")
    code = cli.main(["transcribe", str(good), str(bad), "--model", str(checkpoint), "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out.startswith(f"{good}\t") and "bad.wav" in captured.err and "error" in captured.err


def test_evaluate_command(tmp_path: Path, checkpoint: Path, capsys) -> None:
    sf.write(tmp_path / "a.wav", speechlike(0.1 * np.random.default_rng(2).standard_normal(16000)), 16000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": "a.wav", "text": "HELLO WORLD"}) + "\n")
    report, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    argv = ["evaluate", "--model", str(checkpoint), "--manifest", str(manifest), "--report", str(report)]
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"audio": "a.wav", "text": "Hello there"}) + "\n")
    options = [
        "--json",
        str(summary),
        "--threads",
        "1",
        "--max-new-tokens",
        "4",
        "--train-manifest",
        str(train),
    ]
    assert cli.main([*argv, *options]) == 0
    out = capsys.readouterr().out
    assert "| system |" in out and "| times in training |" in out
    [row] = json.loads(summary.read_text())
    assert row["utterances"] == 1 and row["reference_words"] == 2 and row["wer"] > 0
    assert [b["words"] for b in row["hits_by_training_count"]] == [1, 1, 0, 0]  # world unseen, hello once
    assert json.loads(report.read_text())["ref_normalised"] == "hello world"


def test_evaluate_compare_beam_sets_only_the_baselines_beam(
    tmp_path: Path, checkpoint: Path, monkeypatch, capsys
) -> None:
    import asr.inference

    beams = []

    class Recording(asr.inference.Transcriber):
        def __init__(self, system, **kwargs) -> None:
            beams.append(kwargs["num_beams"])
            super().__init__(system, **kwargs)

    monkeypatch.setattr(asr.inference, "Transcriber", Recording)
    sf.write(tmp_path / "a.wav", speechlike(0.1 * np.random.default_rng(3).standard_normal(16000)), 16000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": "a.wav", "text": "HELLO"}) + "\n")
    argv = ["evaluate", "--model", str(checkpoint), "--manifest", str(manifest), "--compare", str(checkpoint)]
    summary = tmp_path / "s.json"
    options = ["--compare-beam", "2", "--json", str(summary), "--threads", "1", "--max-new-tokens", "3"]
    assert cli.main([*argv, *options]) == 0
    assert beams == [None, 2] and len(json.loads(summary.read_text())) == 2  # None: the checkpoint's own
    assert "same transcript" in capsys.readouterr().out


def test_trace_subcommand_is_passed_through(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["trace", "--help"])
    assert exit_info.value.code == 0 and "usage: asr trace" in capsys.readouterr().out
