"""CPU benchmark: our model against faster-whisper tiny.en on the same clips.

Every configuration runs in its own Python process so its peak resident memory (``VmHWM``) is its
own, not the high-water mark of everything measured before it. A worker loads the backend, decodes
the clips to arrays (not timed), transcribes one clip to warm up, then times one pass over all
clips. Reported per configuration: real-time factor (processing seconds / audio seconds), peak
RSS, load time and the WER on those clips (a sanity check, not an evaluation).

Separately: startup time (``asr transcribe`` in a fresh process, from spawn to the transcript on
stdout) and, for our model, where the time goes: log-mel features, Whisper encoder, projector,
LLM prefill (the prompt with the audio embeddings) and token-by-token decoding, measured with
forward hooks on the real modules during ordinary ``generate`` calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED_MANIFEST = Path(__file__).resolve().parents[3] / "shared" / "data" / "speechocean762.dev.jsonl"


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (``VmHWM``; ``ru_maxrss`` where /proc is absent)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


# --------------------------------------------------------------------------- worker side


def _load_clips(paths: list[str]):
    from asr.audio import load_audio

    return [load_audio(p) for p in paths]


def run_config(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this process: load, warm up, time a pass, report."""
    import torch

    torch.set_num_threads(spec["threads"])
    from asr.evaluate import corpus_wer
    from asr.transcribe import Transcriber

    start = time.perf_counter()
    transcriber = Transcriber(
        spec["model"],
        batch_size=spec["batch_size"],
        num_beams=spec["beams"],
        compute_type=spec.get("compute_type", "int8"),
        threads=spec["threads"],
    )
    load_seconds = time.perf_counter() - start
    clips = _load_clips(spec["clips"])
    audio_seconds = sum(len(c) for c in clips) / 16000
    transcriber(clips[:1])  # warm-up: first-call allocations and lazy initialisation
    start = time.perf_counter()
    transcripts = transcriber(clips)
    seconds = time.perf_counter() - start
    return {
        "system": transcriber.name,
        "batch_size": spec["batch_size"],
        "compute_type": spec.get("compute_type") if spec["model"] == "faster-whisper" else "float32",
        "clips": len(clips),
        "audio_seconds": round(audio_seconds, 2),
        "seconds": round(seconds, 3),
        "rtf": seconds / audio_seconds,
        "load_seconds": round(load_seconds, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "wer": corpus_wer(spec["references"], [t.text for t in transcripts]),
        "failed": sum(t.error is not None for t in transcripts),
    }


class _Timer:
    """Accumulates wall time of a module's forward calls via hooks; ``split`` sorts decoder calls into
    prefill (the whole prompt as embeddings) and decode steps (one new token)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._start: dict[int, tuple[str, float]] = {}

    def attach(self, module, name: str, split: bool = False) -> None:
        def pre(mod, args, kwargs):
            part = name
            if split:
                embeds = kwargs.get("inputs_embeds")
                part = "llm_prefill" if embeds is not None and embeds.shape[1] > 1 else "llm_decode"
            self._start[id(mod)] = (part, time.perf_counter())

        def post(mod, args, kwargs, output):
            part, t0 = self._start.pop(id(mod))
            self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - t0
            self.calls[part] = self.calls.get(part, 0) + 1

        module.register_forward_pre_hook(pre, with_kwargs=True)
        module.register_forward_hook(post, with_kwargs=True)


def run_profile(spec: dict[str, Any]) -> dict[str, Any]:
    """Where our model's time goes, per stage, over the clips in batches of ``batch_size``."""
    import torch

    torch.set_num_threads(spec["threads"])
    from asr.transcribe import load_model

    model = load_model(spec["model"])
    clips = _load_clips(spec["clips"])
    audio_seconds = sum(len(c) for c in clips) / 16000
    batches = [clips[k : k + spec["batch_size"]] for k in range(0, len(clips), spec["batch_size"])]
    with torch.inference_mode():
        model.transcribe(clips[:1])  # warm-up
        timer = _Timer()
        timer.attach(model.encoder, "encoder")
        timer.attach(model.projector, "projector")
        timer.attach(model.decoder, "llm", split=True)
        features_seconds, generate_seconds = 0.0, 0.0
        for batch in batches:
            t0 = time.perf_counter()
            features = model.features(batch)
            t1 = time.perf_counter()
            model.generate(**features)
            t2 = time.perf_counter()
            features_seconds += t1 - t0
            generate_seconds += t2 - t1
    parts = {"features": features_seconds, **timer.seconds}
    parts["other"] = features_seconds + generate_seconds - sum(parts.values())
    total = features_seconds + generate_seconds
    decode_steps = timer.calls.get("llm_decode", 0)
    return {
        "batch_size": spec["batch_size"],
        "audio_seconds": round(audio_seconds, 2),
        "total_seconds": round(total, 3),
        "seconds": {k: round(v, 3) for k, v in parts.items()},
        "share": {k: round(v / total, 3) for k, v in parts.items()},
        "decode_steps": decode_steps,
        "ms_per_decode_step": round(1000 * timer.seconds.get("llm_decode", 0.0) / max(decode_steps, 1), 2),
    }


# --------------------------------------------------------------------------- parent side


def _spawn(mode: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one worker in a fresh interpreter; its last stdout line is the JSON result."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "asr.bench", "--worker", mode, f.name],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:], "spec_model": spec["model"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def startup_seconds(model: str, clip: str, threads: int, timeout: float) -> float:
    """Seconds from spawning ``asr transcribe CLIP`` to its first line of stdout (the transcript)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    command = [
        sys.executable,
        "-m",
        "asr.cli",
        "transcribe",
        clip,
        "--model",
        model,
        "--threads",
        str(threads),
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - start
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"{' '.join(command)} failed (exit {proc.returncode})")
    return elapsed


def format_tables(report: dict[str, Any]) -> str:
    lines = [
        f"{report['clips']} clips, {report['audio_seconds']:.1f} s of audio, {report['threads']} thread(s), "
        f"{report['machine']['processor']}",
        "",
        "| system | batch | compute | RTF | seconds | peak RSS MiB | load s | WER |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        if "error" in r:
            lines.append(f"| {r['spec_model']} | | | failed: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['system']} | {r['batch_size']} | {r['compute_type']} | {r['rtf']:.3f} | {r['seconds']:.2f} "
            f"| {r['peak_rss_mb']:.0f} | {r['load_seconds']:.1f} | {100 * r['wer']:.1f}% |"
        )
    if report.get("startup"):
        lines += ["", "| startup (spawn -> first transcript) | seconds |", "|---|---|"]
        lines += [f"| {name} | {sec:.1f} |" for name, sec in report["startup"].items()]
    for profile in report.get("profile", []):
        if "error" in profile:
            lines += ["", f"profile failed: {profile['error']}"]
            continue
        lines += [
            "",
            f"Profile of our model, batch {profile['batch_size']} ({profile['total_seconds']:.2f} s total, "
            f"{profile['decode_steps']} decode steps, {profile['ms_per_decode_step']} ms each):",
            "| stage | seconds | share |",
            "|---|---|---|",
        ]
        lines += [
            f"| {k} | {v:.3f} | {100 * profile['share'][k]:.1f}% |" for k, v in profile["seconds"].items()
        ]
    return "\n".join(lines)


def run(
    model: str,
    manifest: str | Path,
    clips: int = 16,
    batch_sizes: tuple[int, ...] = (1, 8),
    compute_types: tuple[str, ...] = ("int8", "float32"),
    beams: int = 1,
    threads: int = 2,
    startup: bool = True,
    profile: bool = True,
    timeout: float = 900,
    out: str | Path | None = "bench.json",
) -> dict[str, Any]:
    """Run the whole benchmark; returns (and optionally saves) the report."""
    from tqdm.auto import tqdm

    from asr.evaluate import read_manifest

    rows = read_manifest(manifest, limit=clips)
    base = {
        "clips": [r["audio"] for r in rows],
        "references": [r["text"] for r in rows],
        "threads": threads,
        "beams": beams,
    }
    specs = [{**base, "model": model, "batch_size": b} for b in batch_sizes]
    specs += [{**base, "model": "faster-whisper", "batch_size": 1, "compute_type": c} for c in compute_types]
    runs = [_spawn("run", s, timeout) for s in tqdm(specs, desc="benchmark configurations")]
    report: dict[str, Any] = {
        "model": model,
        "manifest": str(manifest),
        "clips": len(rows),
        "audio_seconds": sum(float(r.get("duration", 0.0)) for r in rows),
        "threads": threads,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "runs": runs,
    }
    if startup:
        report["startup"] = {
            name: round(startup_seconds(m, rows[0]["audio"], threads, timeout), 2)
            for name, m in (("asr-llm", model), ("faster-whisper int8", "faster-whisper"))
        }
    if profile:
        report["profile"] = [
            _spawn("profile", {**base, "model": model, "batch_size": b}, timeout) for b in batch_sizes
        ]
    if out is not None:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from asr.transcribe import DEFAULT_MODEL

    parser.add_argument(
        "--model", default=str(DEFAULT_MODEL), help="our checkpoint dir (default: %(default)s)"
    )
    parser.add_argument(
        "--manifest", default=str(SHARED_MANIFEST), help="JSONL manifest (default: %(default)s)"
    )
    parser.add_argument("--clips", type=int, default=16, help="first N rows of the manifest (default: 16)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--compute-types", nargs="+", default=["int8", "float32"], help="faster-whisper's")
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per configuration (default: 2)")
    parser.add_argument("--no-startup", action="store_true", help="skip the startup-time measurement")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-stage profile")
    parser.add_argument("--out", default="bench.json", help="JSON report path (default: %(default)s)")


def main_from_args(args: argparse.Namespace) -> int:
    report = run(
        args.model,
        args.manifest,
        clips=args.clips,
        batch_sizes=tuple(args.batch_sizes),
        compute_types=tuple(args.compute_types),
        beams=args.beam,
        threads=args.threads,
        startup=not args.no_startup,
        profile=not args.no_profile,
        out=args.out,
    )
    print(format_tables(report))
    print(f"\nsaved {args.out}")
    return 0 if all("error" not in r for r in report["runs"]) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        mode, spec_file = argv[1], argv[2]
        spec = json.loads(Path(spec_file).read_text())
        result = run_config(spec) if mode == "run" else run_profile(spec)
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(prog="asr bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
