"""Publishing: push_to_hub writes what from_pretrained reads (against a Hub kept in a local
folder), the card travels, `asr push` works, and an unreachable Hub fails in seconds."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from conftest import tiny_model
from huggingface_hub import constants
from test_modeling import clips

from asr import ASRModel, cli, sources

CARD = "---\nlicense: apache-2.0\n---\n# tiny test model\n"


@pytest.fixture
def local_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A Hub whose repositories are folders under ``tmp_path/hub``: uploads copy into them and
    downloads find them (the path huggingface_hub's cache would give)."""
    root = tmp_path / "hub"

    class LocalApi:
        def __init__(self, token: str | None = None) -> None:
            self.token = token

        def create_repo(self, repo_id: str, private: bool | None = None, exist_ok: bool = False):
            (root / repo_id).mkdir(parents=True, exist_ok=exist_ok)
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, repo_id: str, folder_path: str, **_) -> SimpleNamespace:
            shutil.copytree(folder_path, root / repo_id, dirs_exist_ok=True)
            return SimpleNamespace(commit_url=f"local://{repo_id}")

    monkeypatch.setattr(huggingface_hub, "HfApi", LocalApi)
    monkeypatch.setattr(sources, "_hub_cached", lambda repo: root / repo if (root / repo).is_dir() else None)
    monkeypatch.chdir(tmp_path)  # so that "me/tiny" is not also a local folder
    return root


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    model = tiny_model(lora={"r": 4, "target_modules": ["q_proj", "v_proj"]})
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "README.md").write_text(CARD)
    return tmp_path / "ckpt"


def test_push_then_from_pretrained_round_trips(local_hub: Path, saved: Path) -> None:
    model = ASRModel.from_pretrained(saved)
    assert model.push_to_hub("me/tiny").commit_url == "local://me/tiny"
    repo = local_hub / "me" / "tiny"
    assert {p.name for p in saved.iterdir()} <= {p.name for p in repo.iterdir()}
    assert (repo / "README.md").read_text() == CARD  # our card, not a generic one
    again = ASRModel.from_pretrained("me/tiny")
    for (name, a), (_, b) in zip(
        model.trainable_state_dict().items(), again.trainable_state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    audio = clips(1.0, 0.6)
    ids = model.generate(**model.processor(audio=audio), max_new_tokens=5)
    torch.testing.assert_close(again.generate(**again.processor(audio=audio), max_new_tokens=5), ids)


def test_asr_push_command(local_hub: Path, saved: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["push", str(saved), "me/tiny-cli"]) == 0
    assert "pushed" in capsys.readouterr().out
    assert (local_hub / "me" / "tiny-cli" / "model.safetensors").is_file()
    assert (local_hub / "me" / "tiny-cli" / "README.md").read_text() == CARD


def test_unreachable_hub_fails_in_seconds_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(sources, "_hub_cached", lambda repo: None)
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"nobody/nothing: no such checkpoint folder.*unreachable"):
        ASRModel.from_pretrained("nobody/nothing")
    assert time.monotonic() - start < 10


def test_a_missing_local_path_is_not_sent_to_the_hub(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ASRModel.from_pretrained(tmp_path / "not" / "here")
