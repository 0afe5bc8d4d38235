"""CPU benchmark: our model against faster-whisper tiny.en on the same clips.

Every configuration runs in its own Python process so its peak resident memory (``VmHWM``) is its
own, not the high-water mark of everything measured before it. A worker loads the backend, decodes
the clips to arrays (not timed), transcribes one clip to warm up, then times one pass over all
clips. Reported per configuration: real-time factor (processing seconds / audio seconds), peak
RSS, load time and the WER on those clips (a sanity check, not an evaluation). The faster-whisper
worker is a standalone script, ``faster_whisper_worker.py`` next to this one, that imports
faster-whisper only (not torch, transformers or the ``asr`` package), with the same decoding options
as :class:`asr.inference.FasterWhisperBackend`, so its memory and startup are the baseline's own.

Separately: startup time (a fresh process, from spawn to the transcript on stdout) and, for our
model, where the time goes: log-mel features, Whisper encoder, projector,
LLM prefill (the prompt with the audio embeddings) and token-by-token decoding, measured with
forward hooks on the real modules during ordinary ``generate`` calls.

    python benchmarks/bench.py [--model checkpoints/offline --clips 16 --threads 2 --parts runs ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from faster_whisper_worker import peak_rss_mb  # this folder: on sys.path when run as a script
from tqdm.auto import tqdm

# workers import only what their backend needs: a NumPy-runtime worker never loads torch, so its
# memory and load time are the runtime's own (asr.evaluate, asr.sources pull torch: parent side)
from asr.audio import load_audio
from asr.inference import FASTER_WHISPER, FASTER_WHISPER_OPTIONS, Transcriber, default_model, load_model

# speed/memory per configuration, startup time, our model's profile, one long file
PARTS = ("runs", "startup", "profile", "longform")
RUNTIMES = ("numpy", "torch")  # our model's two paths (asr.inference.load_backend), the default
# ... and torch with every weight in bf16 (--dtype bfloat16: fast only on CPUs with AVX-512 BF16/AMX)
CHOICES = (*RUNTIMES, "torch-bf16")
LONGFORM_SECONDS = 300.0  # the long file: consecutive manifest clips, at least this long
LONGFORM_GAP_SECONDS = 0.5  # silence between them
ROOT = Path(__file__).resolve().parents[1]
SHARED_MANIFEST = ROOT.parent / "shared" / "data" / "speechocean762.dev.jsonl"
LONGFORM_MANIFEST = ROOT.parent / "shared" / "data" / "librispeech.dev.jsonl"  # read speech, in order
FASTER_WHISPER_WORKER = Path(__file__).resolve().with_name("faster_whisper_worker.py")


# --------------------------------------------------------------------------- worker side


def _paths(runtime: str) -> dict[str, str]:
    """A ``--runtimes`` choice as Transcriber's ``runtime`` and ``dtype``."""
    return {"runtime": "torch", "dtype": "bfloat16"} if runtime == "torch-bf16" else {"runtime": runtime}


def _flags(runtime: str) -> list[str]:
    """The same as ``asr transcribe`` flags."""
    return [f"--{k}={v}" for k, v in _paths(runtime).items()]


def _load_clips(paths: list[str]):
    return [load_audio(p) for p in paths]


def run_config(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this process: load, warm up, time a pass, report."""
    paths = _paths(spec.get("runtime", "auto"))
    start = time.perf_counter()
    transcriber = Transcriber(
        spec["model"],
        batch_size=spec["batch_size"],
        num_beams=spec["beams"],
        compute_type=spec.get("compute_type", "int8"),
        threads=spec["threads"],
        **paths,
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
        "compute_type": paths.get("dtype", "float32"),
        "audio_seconds": round(audio_seconds, 2),
        "seconds": round(seconds, 3),
        "load_seconds": round(load_seconds, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "texts": [t.text for t in transcripts],
    }


def run_longform(spec: dict[str, Any]) -> dict[str, Any]:
    """Our model on one long file: the Transcriber's segments (cut at pauses), ``batch_size`` at a time."""
    transcriber = Transcriber(
        spec["model"],
        batch_size=spec["batch_size"],
        threads=spec["threads"],
        **_paths(spec.get("runtime", "auto")),
    )
    audio = load_audio(spec["file"])
    transcriber([audio[: 10 * 16000]])  # warm-up
    start = time.perf_counter()
    text = transcriber([audio])[0].text
    seconds = time.perf_counter() - start
    return {
        "system": transcriber.name,
        "batch_size": spec["batch_size"],
        "audio_seconds": round(len(audio) / 16000, 2),
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "texts": [text],
    }


def make_long_file(manifest: str | Path, seconds: float, folder: Path) -> tuple[Path, str]:
    """Consecutive clips of ``manifest`` (so one speaker's reading goes on) joined with short
    silences into one WAV of at least ``seconds``; returns its path and the joined reference."""
    from asr.evaluate import read_manifest

    parts, texts, total = [], [], 0.0
    gap = np.zeros(int(LONGFORM_GAP_SECONDS * 16000), dtype=np.float32)
    for row in read_manifest(manifest):
        clip = load_audio(row["audio"])
        parts += [clip, gap]
        texts.append(row["text"])
        total += len(clip) / 16000 + LONGFORM_GAP_SECONDS
        if total >= seconds:
            break
    if total < seconds:
        raise ValueError(f"{manifest}: only {total:.0f} s of audio, the long-form file needs {seconds:.0f} s")
    path = folder / "longform.wav"
    sf.write(path, np.concatenate(parts), 16000)
    return path, " ".join(texts)


def faster_whisper_command(spec_file: str) -> list[str]:
    """The standalone faster-whisper worker; ``-I`` keeps the cwd and its folder off ``sys.path``."""
    return [sys.executable, "-I", str(FASTER_WHISPER_WORKER), spec_file]


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
    if spec.get("runtime") == "numpy":
        return run_profile_numpy(spec)
    import torch

    torch.set_num_threads(spec["threads"])
    model = load_model(spec["model"], _paths(spec.get("runtime", "torch")).get("dtype"))
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
            inputs = model.processor(audio=batch)
            t1 = time.perf_counter()
            model.generate(**inputs)
            t2 = time.perf_counter()
            features_seconds += t1 - t0
            generate_seconds += t2 - t1
    parts = {"features": features_seconds, **timer.seconds}
    parts["other"] = features_seconds + generate_seconds - sum(parts.values())
    total = features_seconds + generate_seconds
    decode_steps = timer.calls.get("llm_decode", 0)
    return _profile_report(
        spec, audio_seconds, total, parts, decode_steps, timer.seconds.get("llm_decode", 0.0)
    )


def run_profile_numpy(spec: dict[str, Any]) -> dict[str, Any]:
    """The same stages in the NumPy runtime, timed by wrapping its functions."""
    from threadpoolctl import threadpool_limits

    from asr.runtime import RuntimeModel, numpy_model

    threadpool_limits(spec["threads"])
    model = RuntimeModel.from_checkpoint(spec["model"])
    clips = _load_clips(spec["clips"])
    audio_seconds = sum(len(c) for c in clips) / 16000
    model.transcribe(clips[:1])  # warm-up (the prompt head's cache included)
    seconds: dict[str, float] = {}
    calls: dict[str, int] = {}

    def timed(name: str, fn):
        def run(*args, **kwargs):
            part = name if name != "llm" else ("llm_decode" if bool((args[1] == 1).all()) else "llm_prefill")
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            seconds[part] = seconds.get(part, 0.0) + time.perf_counter() - t0
            calls[part] = calls.get(part, 0) + 1
            return out

        return run

    for name, attr in (
        ("features", "features"),
        ("encoder", "whisper_encoder"),
        ("projector", "project"),
        ("llm", "llama"),
    ):
        setattr(numpy_model, attr, timed(name, getattr(numpy_model, attr)))
    start = time.perf_counter()
    for k in range(0, len(clips), spec["batch_size"]):
        model.transcribe(clips[k : k + spec["batch_size"]])
    total = time.perf_counter() - start
    seconds["other"] = total - sum(seconds.values())
    steps = calls.get("llm_decode", 0)
    return _profile_report(spec, audio_seconds, total, seconds, steps, seconds.get("llm_decode", 0.0))


def _profile_report(
    spec: dict[str, Any],
    audio_seconds: float,
    total: float,
    parts: dict[str, float],
    decode_steps: int,
    decode: float,
) -> dict[str, Any]:
    return {
        "runtime": spec.get("runtime", "torch"),
        "batch_size": spec["batch_size"],
        "audio_seconds": round(audio_seconds, 2),
        "total_seconds": round(total, 3),
        "seconds": {k: round(v, 3) for k, v in parts.items()},
        "share": {k: round(v / total, 3) for k, v in parts.items()},
        "decode_steps": decode_steps,
        "ms_per_decode_step": round(1000 * decode / max(decode_steps, 1), 2),
    }


# --------------------------------------------------------------------------- parent side


def _write_spec(spec: dict[str, Any]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    return f.name


def _worker_command(mode: str, spec_file: str, model: str) -> list[str]:
    if model == FASTER_WHISPER and mode in ("run", "longform"):
        return faster_whisper_command(spec_file)
    return [sys.executable, str(Path(__file__).resolve()), "--worker", mode, spec_file]


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}


def _spawn(mode: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one worker in a fresh interpreter; its last stdout line is the JSON result."""
    spec_file = _write_spec(spec)
    try:
        proc = subprocess.run(
            _worker_command(mode, spec_file, spec["model"]),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_env(spec["threads"]),
        )
    finally:
        Path(spec_file).unlink()
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:], "spec_model": spec["model"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _score(result: dict[str, Any], references: list[str]) -> dict[str, Any]:
    from asr.evaluate import corpus_wer

    if "error" in result:
        return result
    texts = result.pop("texts")
    return {
        **result,
        "rtf": result["seconds"] / result["audio_seconds"],
        "wer": corpus_wer(references, texts),
    }


def startup_seconds(command: list[str], threads: int, timeout: float) -> float:
    """Seconds from spawning ``command`` to its first line of stdout (the transcript)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env(threads)
    )
    try:
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - start
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0 or not line.strip():
        raise RuntimeError(f"{command[:4]} failed (exit {proc.returncode})")
    return elapsed


def _startup(model: str, base: dict[str, Any], timeout: float, runtimes: tuple[str, ...]) -> dict[str, float]:
    """Our model (each runtime) and faster-whisper through ``asr transcribe``, and faster-whisper
    on its own. The NumPy runtime's export is made first (once per checkpoint, as a user's first
    run does), so this measures the cached path the target is about."""
    clip, threads = base["clips"][0], base["threads"]

    def cli(m: str, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "asr.cli",
            "transcribe",
            clip,
            "--model",
            m,
            "--threads",
            str(threads),
            *extra,
        ]

    for runtime in runtimes:
        subprocess.run(cli(model, *_flags(runtime)), capture_output=True, timeout=timeout, env=_env(threads))
    spec_file = _write_spec({**base, "model": FASTER_WHISPER, "compute_type": "int8", "startup": True})
    try:
        ours = {
            f"asr transcribe (our model, {' '.join(_flags(r))})": round(
                startup_seconds(cli(model, *_flags(r)), threads, timeout), 2
            )
            for r in runtimes
        }
        return {
            **ours,
            "asr transcribe --model faster-whisper": round(
                startup_seconds(cli(FASTER_WHISPER), threads, timeout), 2
            ),
            "faster-whisper alone (int8)": round(
                startup_seconds(faster_whisper_command(spec_file), threads, timeout), 2
            ),
        }
    finally:
        Path(spec_file).unlink()


def _table(header: list[str], results: list[dict[str, Any]], cells) -> list[str]:
    """A markdown table: one row per result (``cells(result)``), a failed run as its error."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        row = [r["spec_model"], f"failed: {r['error']}"] if "error" in r else cells(r)
        lines.append("| " + " | ".join(row + [""] * (len(header) - len(row))) + " |")
    return lines


def format_tables(report: dict[str, Any]) -> str:
    lines = [
        f"{report['clips']} clips, {report['audio_seconds']:.1f} s of audio, {report['threads']} thread(s), "
        f"{report['machine']['processor']}",
        "",
    ]
    lines += _table(
        ["system", "batch", "compute", "RTF", "seconds", "peak RSS MiB", "load s", "WER"],
        report["runs"],
        lambda r: [
            r["system"],
            str(r["batch_size"]),
            r["compute_type"],
            f"{r['rtf']:.3f}",
            f"{r['seconds']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['load_seconds']:.1f}",
            f"{100 * r['wer']:.1f}%",
        ],
    )
    if report.get("longform"):
        lines += [
            "",
            f"Long-form: one file of {report['longform_seconds']:.0f} s ({report['longform_manifest']}):",
        ]
        lines += _table(
            ["system", "batch", "RTF", "seconds", "peak RSS MiB", "WER"],
            report["longform"],
            lambda r: [
                r["system"],
                str(r["batch_size"]),
                f"{r['rtf']:.3f}",
                f"{r['seconds']:.1f}",
                f"{r['peak_rss_mb']:.0f}",
                f"{100 * r['wer']:.1f}%",
            ],
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
            f"Profile of our model ({profile['runtime']}), batch {profile['batch_size']} "
            f"({profile['total_seconds']:.2f} s total, "
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
    parts: tuple[str, ...] = PARTS,
    timeout: float = 900,
    out: str | Path | None = "bench.json",
    longform_manifest: str | Path = LONGFORM_MANIFEST,
    runtimes: tuple[str, ...] = RUNTIMES,
) -> dict[str, Any]:
    """Run the benchmark ``parts`` (see :data:`PARTS`); returns (and optionally saves) the report."""
    from asr.evaluate import read_manifest
    from asr.paths import packaged_whisper_dir

    rows = read_manifest(manifest, limit=clips)
    references = [r["text"] for r in rows]
    base = {
        "clips": [r["audio"] for r in rows],
        "threads": threads,
        "beams": beams,
        "options": FASTER_WHISPER_OPTIONS,
        "model_dir": str(packaged_whisper_dir()),
    }
    specs = [{**base, "model": model, "batch_size": b, "runtime": r} for r in runtimes for b in batch_sizes]
    specs += [{**base, "model": FASTER_WHISPER, "batch_size": 1, "compute_type": c} for c in compute_types]
    runs = []
    if "runs" in parts:
        runs = [_score(_spawn("run", s, timeout), references) for s in tqdm(specs, desc="configurations")]
    report: dict[str, Any] = {
        "model": model,
        "manifest": str(manifest),
        "clips": len(rows),
        "audio_seconds": sum(float(r.get("duration", 0.0)) for r in rows),
        "threads": threads,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "runs": runs,
    }
    if "longform" in parts:
        with tempfile.TemporaryDirectory() as folder:
            path, reference = make_long_file(longform_manifest, LONGFORM_SECONDS, Path(folder))
            long_specs = [
                *(
                    {**base, "model": model, "file": str(path), "batch_size": 8, "runtime": r}
                    for r in runtimes
                ),
                {**base, "model": FASTER_WHISPER, "file": str(path), "batch_size": 8, "compute_type": "int8"},
            ]
            report["longform"] = [_score(_spawn("longform", s, timeout), [reference]) for s in long_specs]
        report["longform_manifest"] = str(longform_manifest)
        report["longform_seconds"] = report["longform"][0].get("audio_seconds", LONGFORM_SECONDS)
    if "startup" in parts:
        report["startup"] = _startup(model, base, timeout, runtimes)
    if "profile" in parts:
        report["profile"] = [
            _spawn("profile", {**base, "model": model, "batch_size": b, "runtime": r}, timeout)
            for r in runtimes
            for b in batch_sizes
        ]
    if out is not None:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=str(default_model()), help="our checkpoint dir (default: %(default)s)"
    )
    parser.add_argument(
        "--manifest", default=str(SHARED_MANIFEST), help="JSONL manifest (default: %(default)s)"
    )
    parser.add_argument("--clips", type=int, default=16, help="first N rows of the manifest (default: 16)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--compute-types", nargs="+", default=["int8", "float32"], help="faster-whisper's")
    parser.add_argument("--beam", type=int, default=1, help="beam width of both systems (default: 1, greedy)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per configuration (default: 2)")
    parser.add_argument(
        "--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure (default: all)"
    )
    parser.add_argument(
        "--longform-manifest",
        default=str(LONGFORM_MANIFEST),
        help="clips joined in order into one long file (default: %(default)s)",
    )
    parser.add_argument(
        "--runtimes",
        nargs="+",
        choices=CHOICES,
        default=list(RUNTIMES),
        help="our model's paths (default: numpy torch; torch-bf16: torch with bf16 weights)",
    )
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
        parts=tuple(args.parts),
        out=args.out,
        longform_manifest=args.longform_manifest,
        runtimes=tuple(args.runtimes),
    )
    print(format_tables(report))
    print(f"\nsaved {args.out}")
    return 0 if all("error" not in r for r in report["runs"]) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        mode, spec_file = argv[1], argv[2]
        spec = json.loads(Path(spec_file).read_text())
        result = {"run": run_config, "profile": run_profile, "longform": run_longform}[mode](spec)
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
