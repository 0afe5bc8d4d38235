"""A training run killed with SIGKILL at random moments resumes to the same weights."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from test_training import write_corpus

from asr.training.checkpoint import checkpoints

WORKER = Path(__file__).with_name("_train_worker.py")
# a checkpoint after every step: a kill lands in or between saves
RUN = {
    "max_steps": 12,
    "batch_size": 3,
    "warmup_steps": 2,
    "save_every": 1,
    "log_every": 1,
    "learning_rate": 1e-2,
}


def _start(manifest: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(manifest), str(out), json.dumps(RUN)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )


def test_sigkill_at_random_moments_then_resume_gives_the_same_weights(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path / "data", n=10)
    straight = _start(manifest, tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stderr.read().decode()[-2000:]
    expected = torch.load(tmp_path / "straight" / "rank0.pt")["state"]

    rng = random.Random(0)
    out, kills = tmp_path / "killed", 0
    while kills < 3:
        proc = _start(manifest, out)
        while proc.poll() is None and not (out / "log.csv").is_file():
            time.sleep(0.05)  # training has begun once the first row is logged
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:
            break  # finished before the kill: nothing left to interrupt
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        complete = checkpoints(out)  # only checkpoints whose state.json was written count
        assert all((c / "model.safetensors").is_file() and (c / "optimizer.pt").is_file() for c in complete)
        (out / "log.csv").unlink(missing_ok=True)  # the next start's first row marks it as running
    final = _start(manifest, out)
    assert final.wait(timeout=600) == 0, final.stderr.read().decode()[-2000:]
    assert kills >= 1
    resumed = torch.load(out / "rank0.pt")["state"]
    assert resumed.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-6, rtol=0, msg=name)
    assert not list((out / "checkpoints").glob(".tmp-*")) and (out / "final" / "model.safetensors").is_file()
