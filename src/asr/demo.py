"""A classroom demo in the browser: speak or upload a clip, read our transcript beside faster-whisper
tiny.en's (same audio, both timed), and see what each stage made of it (the figures of
:mod:`asr.trace`, so class 2's pictures come from the student's own voice).

    asr demo                      # http://127.0.0.1:7860, the shipped checkpoint, offline
    asr demo --model outputs/offline/final --port 8000
    asr demo --share              # a public gradio.live link (needs the network)

The logic lives in :class:`Demo` (no Gradio: testable and reusable); :func:`build_app` wraps it in a
``gradio.Blocks`` page. Gradio is an optional dependency (``poetry install --with demo``), imported
only when the app is built.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asr.audio import SAMPLE_RATE, AudioError, has_speech, load_audio
from asr.inference.transcribe import FASTER_WHISPER, Transcriber, default_model, load_model

MAX_SECONDS = 600.0  # longer files: `asr transcribe`, not a web page
TRACE_SECONDS = 30.0  # the trace figures show the first window (one encoder pass)
FIGURES = {
    "waveform": "1. waveform (16 kHz samples)",
    "log_mel": "2. log-mel spectrogram (what Whisper hears)",
    "encoder": "3. encoder frames (20 ms each)",
    "projector": "4. projector output (LLM-width vectors)",
    "attention": "5. decoder attention over the audio positions",
}


@dataclass
class DemoOutput:
    """What the page shows: ``message`` is empty when all went well, else what went wrong."""

    message: str = ""
    transcript: str = ""
    baseline: str = ""
    timings: str = ""
    images: list[tuple[str, str]] = field(default_factory=list)  # (PNG path, caption)


class Demo:
    """One loaded model (merged LoRA), the baseline loaded on first use, and the page's limits."""

    def __init__(
        self,
        model: str | Path | None = None,
        compare: bool = True,
        trace: bool = True,
        max_seconds: float = MAX_SECONDS,
        work_dir: str | Path | None = None,
    ) -> None:
        self.model_path = Path(model) if model is not None else default_model()
        self.model = load_model(self.model_path)
        self.name = self.model_path.name if (self.model_path / "config.json").is_file() else "untrained"
        self.transcriber = Transcriber(self.model, progress=True)  # tqdm: the page's progress bar
        self.compare = compare
        self.trace = trace
        self.max_seconds = max_seconds
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="asr-demo-"))
        self._baseline: Transcriber | None = None

    def baseline(self) -> Transcriber:
        if self._baseline is None:
            self._baseline = Transcriber(FASTER_WHISPER, threads=os.cpu_count())
        return self._baseline

    def __call__(self, audio: str | Path | None, context: str | None = None) -> DemoOutput:
        """Transcribe one recording or uploaded file; bad input is a message, never an exception."""
        if not audio:
            return DemoOutput(message="Record something or upload an audio file first.")
        name = Path(audio).name
        try:
            samples = load_audio(audio)
        except (AudioError, OSError) as err:
            return DemoOutput(message=f"Cannot use {name}: {str(err).replace(str(audio), name)}")
        seconds = len(samples) / SAMPLE_RATE
        if seconds > self.max_seconds:
            return DemoOutput(
                message=f"{name} is {seconds:.0f} s long; this demo takes up to {self.max_seconds:.0f} s. "
                "Use `asr transcribe FILE` for long files."
            )
        if not has_speech(samples):
            return DemoOutput(
                message=f"No speech found in {name} ({seconds:.1f} s of silence or a steady sound)."
            )
        context = (context or "").strip() or None
        out = DemoOutput()
        t0 = time.perf_counter()
        out.transcript = self.transcriber([samples], context=context)[0].text
        ours = time.perf_counter() - t0
        out.timings = f"{self.name}: {ours:.2f} s"
        if self.compare:
            t0 = time.perf_counter()
            out.baseline = self.baseline()([samples], context=context)[0].text
            out.timings += f" · faster-whisper tiny.en int8: {time.perf_counter() - t0:.2f} s"
        out.timings += f" · audio: {seconds:.1f} s"
        if self.trace:
            out.images = self.figures(samples[: int(TRACE_SECONDS * SAMPLE_RATE)], context)
        return out

    def figures(self, samples: np.ndarray, context: str | None) -> list[tuple[str, str]]:
        """The trace of (the first window of) the clip, as PNG files with captions."""
        import matplotlib.pyplot as plt

        from asr.trace import trace

        folder = Path(tempfile.mkdtemp(dir=self.work_dir))
        result = trace(samples, model=self.model, out_dir=folder, context=context, verbose=False)
        plt.close("all")
        return [(str(result.files[key]), caption) for key, caption in FIGURES.items() if key in result.files]


def build_app(demo: Demo) -> Any:
    """The page: microphone or upload, an optional context box, both transcripts with timings, the
    trace figures, and one message line for whatever went wrong."""
    import gradio as gr

    def run(audio: str | None, upload: str | None, context: str, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - Gradio's idiom
        progress(0, desc="transcribing")
        out = demo(upload or audio, context)
        message = f"**{out.message}**" if out.message else ""
        images = {caption: path for path, caption in out.images}
        return message, out.transcript, out.baseline, out.timings, *(images.get(c) for c in FIGURES.values())

    with gr.Blocks(title="asr-llm demo", analytics_enabled=False) as app:
        gr.Markdown(
            f"# Speech -> Whisper encoder -> projector -> LLM\n"
            f"Model: `{demo.model_path}`. Speak into the microphone or upload a file "
            f"(up to {demo.max_seconds:.0f} s), then press **Transcribe**."
        )
        with gr.Row():
            audio = gr.Audio(sources=["microphone"], type="filepath", label="Record", elem_id="record")
            upload = gr.File(label="or upload an audio file", type="filepath", elem_id="upload")
        context = gr.Textbox(label="Context or hot words (optional)", placeholder="names, topic ...")
        button = gr.Button("Transcribe", variant="primary", elem_id="transcribe")
        message = gr.Markdown(elem_id="message")
        with gr.Row():
            ours = gr.Textbox(label=f"ours ({demo.name})", elem_id="ours", interactive=False)
            baseline = gr.Textbox(
                label="faster-whisper tiny.en", elem_id="baseline", interactive=False, visible=demo.compare
            )
        timings = gr.Markdown(elem_id="timings")
        figures = []
        with gr.Column(elem_id="trace", visible=demo.trace):
            gr.Markdown("### What each stage made of the clip (the first 30 s)")
            keys = list(FIGURES)
            for row in (keys[:2], keys[2:4], keys[4:]):
                with gr.Row():
                    figures += [
                        gr.Image(
                            label=FIGURES[key], type="filepath", interactive=False, elem_id=f"trace-{key}"
                        )
                        for key in row
                    ]
        button.click(run, [audio, upload, context], [message, ours, baseline, timings, *figures])
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr demo", description="A browser demo (Gradio) of the model.")
    parser.add_argument("--model", default=None, help="checkpoint directory (default: as `asr transcribe`)")
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to bind (default: $GRADIO_SERVER_NAME, which a Space sets, else localhost only)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        help="port (default: 7860)",
    )
    parser.add_argument("--share", action="store_true", help="also serve a public gradio.live link")
    parser.add_argument("--no-compare", action="store_true", help="skip faster-whisper tiny.en")
    parser.add_argument("--no-trace", action="store_true", help="skip the trace figures")
    parser.add_argument("--max-seconds", type=float, default=MAX_SECONDS, help="longest accepted clip")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the demo runs offline
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit(
            "asr demo needs Gradio: `poetry install --with demo` (or `pip install gradio`)"
        ) from None
    demo = Demo(
        args.model, compare=not args.no_compare, trace=not args.no_trace, max_seconds=args.max_seconds
    )
    build_app(demo).queue().launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0
