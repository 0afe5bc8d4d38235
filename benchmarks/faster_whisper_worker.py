"""The faster-whisper side of ``benchmarks/bench.py``: one configuration in this process.

    python -I benchmarks/faster_whisper_worker.py SPEC.json

Imports faster-whisper and the standard library only (no torch, transformers or the ``asr``
package), so the memory and startup it reports are the baseline's own; ``-I`` keeps the current
folder and this script's folder off ``sys.path``. SPEC.json holds ``model_dir``, ``compute_type``,
``threads``, ``beams``, ``options`` (the decoding options of ``FASTER_WHISPER_OPTIONS``) and
``clips``. It loads the model, decodes the clips to arrays (not timed), transcribes one clip to
warm up, times one pass over all clips and prints the result as one JSON line. With ``"startup"``
in the spec it prints the first clip's transcript and exits.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (``VmHWM``; ``ru_maxrss`` where /proc is absent)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def main(spec_file: str) -> int:
    from faster_whisper import WhisperModel
    from faster_whisper.audio import decode_audio

    spec = json.loads(Path(spec_file).read_text())

    def transcribe(model, clip):
        segments, _ = model.transcribe(clip, beam_size=spec["beams"], **spec["options"])
        return " ".join(s.text.strip() for s in segments).strip()

    start = time.perf_counter()
    model = WhisperModel(
        spec["model_dir"], device="cpu", compute_type=spec["compute_type"], cpu_threads=spec["threads"]
    )
    load_seconds = time.perf_counter() - start
    if spec.get("startup"):
        print(transcribe(model, decode_audio(spec["clips"][0])), flush=True)
        return 0
    if spec.get("file"):  # long-form: one file through faster-whisper's own batched pipeline
        return longform(model, decode_audio(spec["file"]), spec, load_seconds)
    clips = [decode_audio(p) for p in spec["clips"]]
    transcribe(model, clips[0])
    start = time.perf_counter()
    texts = [transcribe(model, clip) for clip in clips]
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "system": f"faster-whisper tiny.en {spec['compute_type']} beam{spec['beams']}",
                "batch_size": 1,
                "compute_type": spec["compute_type"],
                "audio_seconds": round(sum(len(c) for c in clips) / 16000, 2),
                "seconds": round(seconds, 3),
                "load_seconds": round(load_seconds, 2),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "texts": texts,
            }
        )
    )
    return 0


def longform(model, audio, spec: dict, load_seconds: float) -> int:
    """``BatchedInferencePipeline`` as its documentation runs it (Silero VAD cuts the file into
    chunks of up to 30 s, ``batch_size`` chunks decoded together), with our decoding options but
    ``vad_filter`` (the pipeline needs it to find chunks without timestamps)."""
    from faster_whisper import BatchedInferencePipeline

    pipeline = BatchedInferencePipeline(model)
    options = {k: v for k, v in spec["options"].items() if k != "vad_filter"}

    def transcribe(samples) -> str:
        segments, _ = pipeline.transcribe(
            samples, beam_size=spec["beams"], batch_size=spec["batch_size"], **options
        )
        return " ".join(s.text.strip() for s in segments).strip()

    transcribe(audio[: 10 * 16000])  # warm-up
    start = time.perf_counter()
    text = transcribe(audio)
    seconds = time.perf_counter() - start
    result = {
        "system": f"faster-whisper tiny.en {spec['compute_type']} BatchedInferencePipeline",
        "batch_size": spec["batch_size"],
        "audio_seconds": round(len(audio) / 16000, 2),
        "seconds": round(seconds, 3),
        "load_seconds": round(load_seconds, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "texts": [text],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
