"""trace_data: one clip through the public API, the shape at every stage, two figures.

Model answer to Class 2's exercise 0. `asr.trace` (`python -m asr.trace AUDIO --out DIR`) is the
full version: waveform, log-mel and the decoder's attention too.

    python notebooks/solutions/trace_data.py [AUDIO] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: importing this never switches a notebook's backend

from asr.audio import SAMPLE_RATE, load_audio
from asr.inference import default_model, load_model
from asr.synth import synthesize


def save_frames(frames: np.ndarray, title: str, xlabel: str, path: Path) -> None:
    """``frames``: (time, channels), drawn with time on the x axis."""
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    ax = fig.add_subplot()
    limit = float(np.quantile(np.abs(frames), 0.99)) or 1.0  # a few huge channels would wash out the rest
    image = ax.imshow(frames.T, aspect="auto", origin="lower", cmap="coolwarm", vmin=-limit, vmax=limit)
    fig.colorbar(image, ax=ax, label="value")
    ax.set(xlabel=xlabel, ylabel="channel", title=title)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Trace one clip: log-mel -> encoder -> projector.")
    parser.add_argument("audio", nargs="?", help="audio file, at most 30 s (default: a synthetic clip)")
    parser.add_argument("--out", type=Path, default=Path("trace_data_out"), help="folder for the PNGs")
    args = parser.parse_args(argv)

    samples = load_audio(args.audio) if args.audio else synthesize("mark is going to see elephant")
    model = load_model(default_model(two_pass=False))  # checkpoints/offline (untrained if absent)
    with torch.no_grad():
        features = model.processor.features([samples])  # input_features (1, 80, T), mel_lengths (1,)
        frames, lengths = model.encode(features["input_features"], features["mel_lengths"])
        projected, positions = model.project(frames, lengths)
    n_mel, n_enc, n_pos = int(features["mel_lengths"][0]), int(lengths[0]), int(positions[0])
    k, d_enc, d_llm = model.config.projector_stack, frames.shape[-1], projected.shape[-1]

    print(f"waveform : {len(samples)} samples = {len(samples) / SAMPLE_RATE:.2f} s at {SAMPLE_RATE} Hz")
    print(f"log-mel  : {features['input_features'].shape[1]} bins x {n_mel} frames (10 ms)")
    print(f"encoder  : {n_enc} frames x {d_enc} (20 ms each)")
    print(f"projector: {n_pos} positions x {d_llm} ({k} x {d_enc} = {k * d_enc} stacked -> {d_llm})")
    print(
        f"flagship (same frame counts; not run offline): log-mel 128 x {n_mel}, whisper-large-v3-turbo "
        f"{n_enc} x 1280, projector {n_pos} x 2048 ({k} x 1280 = {k * 1280} -> SmolLM3-3B's 2048)"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    for name, x, xlabel in (
        ("encoder", frames[0, :n_enc], "encoder frame (20 ms)"),
        ("projector", projected[0, :n_pos], f"LLM audio position ({20 * k} ms)"),
    ):
        path = args.out / f"{name}_output.png"
        save_frames(x.numpy(), f"{name.capitalize()} output: {x.shape[0]} x {x.shape[1]}", xlabel, path)
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
