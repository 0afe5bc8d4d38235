"""Training throughput of the offline preset, one optimisation added per row.

    python benchmarks/train_throughput.py [--clips 64 --steps 8 --batch-size 8 --threads 2]

Each path runs in its own subprocess (honest peak memory), on the same clips (the first clips of
../shared/data's speechocean762 train manifest, else synthetic speech), doing real projector
training steps (forward + backward through the frozen LLM + AdamW) under bf16 autocast:

- naive:     every step runs the encoder on 30 s padded log-mel (3000 frames), the stock Whisper
             way, and the loss is transformers' own (LM head over every position);
- variable:  the encoder runs on only the frames that hold audio;
- cached:    the encoder ran once beforehand; steps read its frames;
- +lean-fwd: the training forward's shortcuts (``ASRModel.forward`` with labels): the prompt's
             head (template + system prompt) runs once per batch and its keys/values are shared,
             and the LM head runs only at the positions that predict a label;
- +bf16:     and the frozen LLM is stored in bf16 (what train.py does under bf16 autocast).

Batches are length-grouped for every path, as train.py's sampler does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("naive", "variable", "cached", "cached+lean-fwd", "cached+lean-fwd+bf16")
SHARED = ROOT.parent / "shared" / "data" / "speechocean762.train.jsonl"


def rows(n: int) -> list[dict]:
    from asr.data import BadRows, read_manifest, read_source

    bad = BadRows()
    if SHARED.is_file():
        return read_manifest(SHARED, bad, limit=n)
    return read_source({"type": "synthetic", "split": "train", "n_train": max(n, 64), "n_dev": 8}, bad)[:n]


def worker(path: str, clips: int, steps: int, batch_size: int, threads: int) -> dict:
    import torch

    from asr import ASRConfig, ASRModel
    from asr.corpus import prepare_examples
    from asr.data import BadRows, Collator

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    mode = "padded" if path == "naive" else "variable"
    model = ASRModel.from_sources(ASRConfig(encoder_mode=mode))
    examples = prepare_examples(
        rows(clips), model, model.processor, BadRows(), precompute=path.startswith("cached"), progress=False
    )
    examples.sort(key=lambda ex: ex.length)  # length-grouped batches, as train.py's sampler makes
    if path.endswith("+bf16"):
        model.decoder.to(torch.bfloat16)
    lean = "+lean-fwd" in path
    collate = Collator(model.processor)
    batches = [collate(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step(batch: dict) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch, logits_at_labels=lean).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step(batches[0])  # warm-up
    t0 = time.perf_counter()
    samples = 0
    for i in range(steps):
        batch = batches[i % len(batches)]
        step(batch)
        samples += batch["input_ids"].shape[0]
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "path": path,
        "samples_per_s": samples / seconds,
        "s_per_step": seconds / steps,
        "peak_rss_mb": peak_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "train_throughput.json"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.clips, args.steps, args.batch_size, args.threads)))
        return
    results = []
    for path in PATHS:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            path,
            "--clips",
            str(args.clips),
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--threads",
            str(args.threads),
        ]
        out = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{path:>16}: {results[-1]['samples_per_s']:.2f} samples/s", file=sys.stderr)
    base = results[0]["samples_per_s"]
    print(
        f"\ntraining throughput, offline preset, batch {args.batch_size}, {args.threads} threads, {args.steps} steps"
    )
    print(f"{'path':<18}{'samples/s':>12}{'s/step':>10}{'speed-up':>10}{'peak RSS':>12}")
    for r in results:
        print(
            f"{r['path']:<18}{r['samples_per_s']:>12.2f}{r['s_per_step']:>10.2f}{r['samples_per_s'] / base:>9.1f}x{r['peak_rss_mb']:>9.0f} MB"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2)
    )


if __name__ == "__main__":
    main()
