"""Numbers for the core of the offline model: parameters, load time, peak memory, encoder cost.

    OMP_NUM_THREADS=1 python benchmarks/core_report.py [--clips 5 --threads 1 --repeats 3 --cold]

- parameters: total and trainable, per part, of ``ASRModel.from_sources(ASRConfig())``;
- load time: that call with the converted weights already cached (``--cold`` also times the
  first conversion, CTranslate2 -> HF and GGUF -> HF, into a temporary ``$ASR_CACHE``);
- peak memory: the process's peak RSS (``resource.getrusage``) after loading and after encoding;
- encoder time per clip, one clip at a time, for the padded (30 s window) and variable-length
  paths on real clips from ../shared/data (synthetic tones when it is absent), with the cosine
  similarity between the two paths' frames.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT.parent / "shared" / "data" / "speechocean762.dev.jsonl"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def load_clips(n: int) -> tuple[list, str]:
    import numpy as np

    from asr.audio import load_audio

    if MANIFEST.is_file():
        rows = [json.loads(line) for line in MANIFEST.read_text().splitlines()[:n]]
        return [load_audio(MANIFEST.parent / r["audio"]) for r in rows], f"{MANIFEST.name} (first {n})"
    t = np.arange(3 * 16000) / 16000
    return [(0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32) for i in range(n)], "synthetic"


def cold_conversion_seconds() -> float:
    """First-use conversion of both packaged sources, in a fresh process and an empty cache."""
    code = "import time, torch; torch.set_num_threads({t}); from asr import sources as s; t=time.perf_counter(); "
    code += "s.resolve(s.PACKAGED_WHISPER); s.resolve(s.PACKAGED_SMOLLM2); print(time.perf_counter()-t)"
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "ASR_CACHE": cache}
        out = subprocess.run(
            [sys.executable, "-c", code.format(t=os.environ.get("OMP_NUM_THREADS", "1"))],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=5)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per clip and path (best is kept)")
    parser.add_argument("--cold", action="store_true", help="also time the first conversion (about a minute)")
    args = parser.parse_args()

    import torch

    from asr import ASRConfig, ASRModel

    torch.set_num_threads(args.threads)
    report: dict = {"threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    if args.cold:
        report["cold_conversion_s"] = round(cold_conversion_seconds(), 1)

    rss_before = peak_rss_mb()
    start = time.perf_counter()
    torch.manual_seed(0)
    model = ASRModel.from_sources(ASRConfig()).eval()
    report["load_s"] = round(time.perf_counter() - start, 2)
    report["peak_rss_mb_before_load"] = round(rss_before)
    report["peak_rss_mb_after_load"] = round(peak_rss_mb())

    def count(module: torch.nn.Module, trainable: bool = False) -> int:
        return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)

    report["parameters"] = {
        "total": count(model),
        "trainable": count(model, trainable=True),
        "encoder": count(model.encoder),
        "projector": count(model.projector),
        "decoder": count(model.decoder),
    }

    clips, source = load_clips(args.clips)
    report["clips"] = {"source": source, "seconds": [round(len(c) / 16000, 2) for c in clips]}
    timings: dict[str, list[float]] = {"padded": [], "variable": []}
    cosines: list[float] = []
    with torch.no_grad():
        for clip in clips:
            outputs = {}
            for mode in timings:
                model.config.encoder_mode = model.encoder.mode = mode
                features = model.features([clip])
                best = float("inf")
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    frames, lengths = model.encode(features["input_features"], features["mel_lengths"])
                    best = min(best, time.perf_counter() - start)
                timings[mode].append(best)
                outputs[mode] = frames[0, : int(lengths[0])]
            cosine = torch.nn.functional.cosine_similarity(outputs["variable"], outputs["padded"], dim=-1)
            cosines.append(float(cosine.mean()))
    model.config.encoder_mode = model.encoder.mode = "variable"
    report["encoder_ms_per_clip"] = {
        mode: {"mean": round(1000 * sum(t) / len(t), 1), "each": [round(1000 * x, 1) for x in t]}
        for mode, t in timings.items()
    }
    report["variable_speedup"] = round(sum(timings["padded"]) / sum(timings["variable"]), 1)
    report["variable_vs_padded_mean_cosine"] = [round(c, 4) for c in cosines]
    report["peak_rss_mb_after_encoding"] = round(peak_rss_mb())
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
