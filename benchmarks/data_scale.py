"""Data at scale: does the input pipeline stay flat as the corpus grows?

    python benchmarks/data_scale.py [--sizes 1000 10000 50000] [--unique 1000] [--steps 12]

Corpora of N rows are manifests that reference ``--unique`` real clips of ../shared/data again
and again (no audio is copied; synthetic speech when ../shared is absent). The feature store is
built once for those clips (first run only), then each measurement runs ``train()`` of the offline
preset (projector training, batch 8) in its own subprocess, so its peak RSS is its own:

- rows N: peak RSS and seconds from ``train()`` to the end of the first optimiser step (model
  load, indexing the corpus, reading the store, the step);
- throughput, on the smallest corpus, side by side: steady-state samples/s of the store path
  (frames memory-mapped), of the in-memory path it replaced (every clip's frames held in a Python
  list, the same steps: ``memory``), and with augmentation on (decode + speed + noise + SpecAugment
  in a DataLoader worker, the encoder in every step).
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
SHARED = ROOT.parent / "shared" / "data"
WORK = Path(os.environ.get("ASR_CACHE", Path.home() / ".cache" / "asr")) / "bench-data-scale"


def unique_clips(n: int) -> list[dict]:
    """``n`` short real clips (speechocean762, AN4, ARCTIC train), absolute paths; synthetic speech
    without ../shared."""
    from asr.data import BadRows, read_manifest, read_source

    bad = BadRows()
    names = ("speechocean762.train", "an4.train", "arctic_cathy.train")
    if not (SHARED / "README.md").is_file():
        spec = {"type": "synthetic", "split": "train", "n_train": n, "n_dev": 8}
        return read_source(spec, bad)[:n]
    rows = [r for name in names for r in read_manifest(SHARED / f"{name}.jsonl", bad)]
    return rows[:n]


def write_manifest(clips: list[dict], n: int) -> Path:
    path = WORK / f"rows-{n}-of-{len(clips)}.jsonl"
    if not path.is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        lines = (
            json.dumps(
                {
                    "audio": clips[i % len(clips)]["audio"],
                    "text": clips[i % len(clips)]["text"],
                    "utt_id": f"row{i}",
                }
            )
            + "\n"
            for i in range(n)
        )
        path.write_text("".join(lines))
    return path


def run_train(manifest: Path, steps: int, threads: int, augment: bool = False, workers: int = 0) -> dict:
    """``train()`` in this process (called as a worker subprocess)."""
    import torch

    from asr.training import DataConfig, TrainingConfig, train

    torch.set_num_threads(threads)
    data = DataConfig(
        train=[{"type": "manifest", "path": str(manifest)}],
        eval=[],
        text_normalization="plain",
        augment={"enabled": augment},
    )
    cfg = TrainingConfig(
        output_dir=str(WORK / f"out-{time.time_ns()}"),
        max_steps=steps,
        batch_size=8,
        log_every=1,
        save_every=10**6,
        eval_every=10**6,
        eval_samples=0,
        cache_dir=str(WORK / "store"),
        num_workers=workers,
        threads=threads,
        resume=False,
        wandb={"mode": "disabled"},
    )
    summary, _ = train({}, data, cfg)
    log = (Path(cfg.output_dir) / "log.csv").read_text().splitlines()[1:]
    rates = [float(line.split(",")[4]) for line in log if line.split(",")[4]]
    return {
        "first_step_s": summary["first_step_seconds"],
        "peak_rss_mb": summary["peak_rss_mb"],
        "samples_per_s": sum(rates[2:]) / max(len(rates[2:]), 1),  # steady state: after 2 steps
        "train_rows": summary["train_examples"],
    }


def run_memory(manifest: Path, steps: int, threads: int) -> dict:
    """The replaced path: every clip's frames held in a list, length-grouped batches, the same
    model, optimiser and precision as ``train()``."""
    import torch

    from asr import ASRConfig, ASRModel
    from asr.corpus import prepare_examples
    from asr.data import BadRows, Collator, read_manifest
    from asr.store import FeatureStore, encoder_key
    from asr.training.loop import _mixed_precision

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ASRModel.from_sources(ASRConfig())
    bad = BadRows()
    t0 = time.time()
    store = FeatureStore(WORK / "store", encoder_key(model), model.config.encoder_width)  # built by `store`
    examples = prepare_examples(
        read_manifest(manifest, bad),
        model,
        model.processor,
        bad,
        store,
        text_normalization="plain",
        progress=False,
    )
    prepare_s = time.time() - t0
    examples.sort(key=lambda ex: ex.length)
    collate = Collator(model.processor)
    batches = [collate(examples[i : i + 8]) for i in range(0, len(examples), 8)]
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(0)).tolist()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    bf16 = _mixed_precision("auto") == "bf16"
    model.train()
    times = []
    for i in range(steps):
        t = time.time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batches[order[i % len(order)]]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.time() - t)
    steady = times[2:]
    return {
        "prepare_s": prepare_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "samples_per_s": 8 * len(steady) / sum(steady),
    }


def subprocess_json(args: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--unique", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "data_scale.json")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, manifest = args.worker
        if mode == "memory":
            result = run_memory(Path(manifest), args.steps, args.threads)
        else:
            result = run_train(
                Path(manifest),
                args.steps,
                args.threads,
                augment=mode == "augment",
                workers=1 if mode == "augment" else 0,
            )
        print(json.dumps(result))
        return

    clips = unique_clips(args.unique)
    manifests = {n: write_manifest(clips, n) for n in args.sizes}
    small = manifests[min(args.sizes)]
    t = time.time()
    subprocess_json(["--worker", "store", str(small), "--steps", "1"], args.threads)  # builds the store
    build_s = time.time() - t
    print(
        f"feature store for {len(clips)} clips: ready in {build_s:.0f} s (built on first use)",
        file=sys.stderr,
    )
    scale = {}
    for n, path in manifests.items():
        scale[n] = subprocess_json(["--worker", "store", str(path), "--steps", "2"], args.threads)
        print(f"{n} rows: {scale[n]}", file=sys.stderr)
    steps = ["--steps", str(args.steps)]
    throughput = {
        mode: subprocess_json(["--worker", mode, str(small), *steps], args.threads)
        for mode in ("store", "memory", "augment")
    }
    results = {"unique_clips": len(clips), "store_build_s": build_s, "scale": scale, "throughput": throughput}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))

    base = scale[min(args.sizes)]
    print(
        f"\nData at scale: offline preset, batch 8, {args.threads} threads; rows reference {len(clips)} clips"
    )
    print(f"{'rows':>8}{'first step s':>14}{'peak RSS MB':>13}{'RSS vs smallest':>17}")
    for n, r in scale.items():
        print(
            f"{n:>8}{r['first_step_s']:>14.1f}{r['peak_rss_mb']:>13.0f}{r['peak_rss_mb'] / base['peak_rss_mb'] - 1:>+16.1%}"
        )
    print(f"\n{'path (' + str(min(args.sizes)) + ' rows)':<44}{'samples/s':>10}{'peak RSS MB':>13}")
    names = {
        "store": "feature store (memory-mapped frames)",
        "memory": "in-memory frames (the replaced path)",
        "augment": "augmentation on (1 worker, encoder per step)",
    }
    for mode, r in throughput.items():
        print(f"{names[mode]:<44}{r['samples_per_s']:>10.2f}{r['peak_rss_mb']:>13.0f}")


if __name__ == "__main__":
    main()
