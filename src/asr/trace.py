"""trace_data: follow one clip through the pipeline and draw what every stage hands to the next.

waveform (16 kHz samples) -> log-mel (80 or 128 bins x 10 ms frames) -> encoder frames (20 ms,
encoder width) -> projector positions (k stacked frames, LLM width) -> the decoder, whose attention
from the generated tokens back to the audio positions shows where it "listens" for each token.

Run ``python -m asr.trace AUDIO --out DIR`` (or ``asr trace``); in a notebook call :func:`trace`
with a loaded :class:`~asr.modeling.ASRModel`. Figures are plain :class:`matplotlib.figure.Figure`
objects (no pyplot state, so no backend is switched): PNGs are written by the Agg canvas, and
the same objects display inline in a notebook.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from asr.audio import HOP_LENGTH, SAMPLE_RATE, load_audio
from asr.first_pass import format_hypotheses
from asr.inference.transcribe import load_model
from asr.modeling import ASRModel
from asr.prompt import IGNORE_INDEX

ENCODER_FRAME_SECONDS = 2 * HOP_LENGTH / SAMPLE_RATE  # conv2 has stride 2: 20 ms per frame
MEL_FRAME_SECONDS = HOP_LENGTH / SAMPLE_RATE  # 10 ms


@dataclass
class TraceShapes:
    """Sizes at every stage; the arithmetic: mel = samples // 160, encoder = ceil(mel / 2),
    projector = ceil(encoder / k)."""

    samples: int
    seconds: float
    mel_bins: int
    mel_frames: int
    encoder_frames: int
    encoder_width: int
    stack: int
    projector_positions: int
    llm_width: int
    prompt_tokens: int
    generated_tokens: int
    decoder_layers: int
    decoder_heads: int

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


@dataclass
class Trace:
    """What :func:`trace` saw: shapes, the transcript, the arrays behind each figure, the figures
    themselves and (when an output folder was given) the saved PNG paths."""

    shapes: TraceShapes
    text: str
    tokens: list[str]
    waveform: np.ndarray
    log_mel: np.ndarray  # (mel_bins, mel_frames)
    encoder: np.ndarray  # (encoder_frames, encoder_width)
    projected: np.ndarray  # (projector_positions, llm_width)
    attention: np.ndarray  # (generated_tokens, projector_positions), mean over heads (and layers)
    audio_share: np.ndarray  # (generated_tokens,) attention mass on audio positions
    figures: dict[str, Figure] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


# --------------------------------------------------------------------------- figures


def _seconds_axis(ax, seconds_per_unit: float) -> None:
    """A second x axis on top, in seconds, for an axis counted in frames or positions."""
    top = ax.secondary_xaxis(
        "top", functions=(lambda x: x * seconds_per_unit, lambda s: s / seconds_per_unit)
    )
    top.set_xlabel("time (s)")


def plot_waveform(samples: np.ndarray, sampling_rate: int = SAMPLE_RATE) -> Figure:
    fig = Figure(figsize=(10, 2.8), layout="constrained")
    ax = fig.add_subplot()
    t = np.arange(len(samples)) / sampling_rate
    seconds = len(samples) / sampling_rate
    ax.plot(t, samples, linewidth=0.5)
    ax.set(
        xlabel="time (s)",
        ylabel="amplitude (full scale = 1)",
        xlim=(0, t[-1] if len(t) else 1),
        title=f"Waveform: {len(samples)} samples at {sampling_rate} Hz ({seconds:.2f} s)",
    )
    return fig


def plot_log_mel(log_mel: np.ndarray) -> Figure:
    """``log_mel``: (bins, frames), Whisper-scaled (log10, clamped to max - 8, then (x + 4) / 4)."""
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(log_mel, aspect="auto", origin="lower", cmap="magma", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="scaled log10 power")
    ax.set(
        xlabel="mel frame (10 ms hop, 25 ms window)",
        ylabel="mel bin (low -> high frequency)",
        title=f"Log-mel spectrogram: {log_mel.shape[0]} bins x {log_mel.shape[1]} frames",
    )
    _seconds_axis(ax, MEL_FRAME_SECONDS)
    return fig


def plot_encoder(frames: np.ndarray) -> Figure:
    """``frames``: (encoder_frames, width); drawn with time on x like the spectrogram."""
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    ax = fig.add_subplot()
    limit = float(np.quantile(np.abs(frames), 0.99)) or 1.0
    image = ax.imshow(frames.T, aspect="auto", origin="lower", cmap="coolwarm", vmin=-limit, vmax=limit)
    fig.colorbar(image, ax=ax, label="activation")
    ax.set(
        xlabel="encoder frame (20 ms each)",
        ylabel="channel",
        title=f"Whisper encoder output: {frames.shape[0]} frames x {frames.shape[1]} channels",
    )
    _seconds_axis(ax, ENCODER_FRAME_SECONDS)
    return fig


def plot_projector(projected: np.ndarray, stack: int) -> Figure:
    """``projected``: (positions, llm_width): the vectors that replace the audio placeholder tokens."""
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    ax = fig.add_subplot()
    limit = float(np.quantile(np.abs(projected), 0.99)) or 1.0
    image = ax.imshow(projected.T, aspect="auto", origin="lower", cmap="coolwarm", vmin=-limit, vmax=limit)
    fig.colorbar(image, ax=ax, label="embedding value")
    ms = round(stack * ENCODER_FRAME_SECONDS * 1000)
    ax.set(
        xlabel=f"LLM audio position ({stack} encoder frames = {ms} ms each)",
        ylabel="LLM embedding channel",
        title=f"Projector output: {projected.shape[0]} positions x {projected.shape[1]} channels (k={stack})",
    )
    _seconds_axis(ax, stack * ENCODER_FRAME_SECONDS)
    return fig


def plot_attention(
    attention: np.ndarray, audio_share: np.ndarray, tokens: list[str], stack: int, layer: int | None
) -> Figure:
    """Left: each generated token's attention over audio positions, normalised per row so the
    alignment shows; right: how much of the token's attention goes to audio at all."""
    rows = attention / np.maximum(attention.sum(axis=1, keepdims=True), 1e-12)
    height = float(np.clip(1.5 + 0.25 * len(tokens), 3.5, 12.0))
    fig = Figure(figsize=(12, height), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[4, 1], sharey=True)
    image = left.imshow(rows, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=left, label="share of the row's audio attention")
    step = max(1, len(tokens) // 40)
    left.set_yticks(range(0, len(tokens), step), [tokens[i] for i in range(0, len(tokens), step)], fontsize=7)
    which = "mean over layers" if layer is None else f"layer {layer}"
    ms = round(stack * ENCODER_FRAME_SECONDS * 1000)
    left.set(
        xlabel=f"audio position ({ms} ms each)",
        ylabel="generated token (query predicting it)",
        title=f"Decoder attention to audio ({which}, mean over heads)",
    )
    _seconds_axis(left, stack * ENCODER_FRAME_SECONDS)
    right.barh(range(len(tokens)), audio_share, color="tab:orange")
    right.set(xlabel="attention mass on audio (0-1)", xlim=(0, 1), title="Audio share")
    return fig


# --------------------------------------------------------------------------- the trace


def _token_label(tokenizer, token_id: int) -> str:
    return repr(tokenizer.decode([token_id]))[1:-1] or "''"


@torch.no_grad()
def trace(
    audio: str | Path | np.ndarray,
    model: ASRModel | str | Path | None = None,
    out_dir: str | Path | None = None,
    layer: int | None = None,
    context: str | None = None,
    max_new_tokens: int | None = None,
    verbose: bool = True,
) -> Trace:
    """Take one clip (a path, or a 16 kHz mono array) through ``model`` and draw every stage.

    ``model``: a loaded model, a checkpoint directory, or ``None`` for the shipped offline
    checkpoint (:func:`asr.inference.default_model`; the untrained model, with a warning, until
    it exists).

    The decoder's attention comes from a second, teacher-forced pass over the prompt plus the
    re-tokenised transcript (built by the prompt builder exactly like a training example), with
    eager attention switched on for that pass only; ``layer=None`` averages all layers.
    """
    model = model if isinstance(model, ASRModel) else load_model(model)
    samples = load_audio(audio, sampling_rate=SAMPLE_RATE if isinstance(audio, np.ndarray) else None)
    say = print if verbose else (lambda *_: None)
    say(f"waveform     : {len(samples)} samples = {len(samples) / SAMPLE_RATE:.2f} s at {SAMPLE_RATE} Hz")

    processor = model.processor
    features = {k: v.to(model.device) for k, v in processor.features([samples]).items()}
    n_mel = int(features["mel_lengths"][0])
    log_mel = features["input_features"][0, :, :n_mel].float().cpu().numpy()
    say(f"log-mel      : {log_mel.shape[0]} bins x {n_mel} frames (10 ms hop)")

    frames, lengths = model.encode(features["input_features"], features["mel_lengths"])
    n_enc = int(lengths[0])
    say(f"encoder      : {n_enc} frames x {frames.shape[-1]} (20 ms per frame)")

    projected, positions = model.project(frames.to(model.projector_dtype), lengths)
    n_pos, k = int(positions[0]), model.config.projector_stack
    say(f"projector    : {n_pos} positions x {projected.shape[-1]} (k={k}: {k * 20} ms per position)")

    # two-pass models: Whisper's own transcript, decoded as transcribe() decodes it
    first_pass = model.run_first_pass([samples], model.decoding.first_pass_beam_size)
    if first_pass:
        say(f"first pass   : {first_pass[0]}")
    prompt = processor.prompts([n_pos], contexts=[context], first_pass=first_pass)
    ids = model.generate(
        **{k: v.to(model.device) for k, v in prompt.items()},
        encoder_frames=frames,  # the frames computed above: the encoder runs once
        encoder_lengths=lengths,
        mel_lengths=features["mel_lengths"],
        max_new_tokens=max_new_tokens,
    )
    text = processor.batch_decode(ids)[0]
    prompt_tokens = int(prompt["attention_mask"].sum())
    hypotheses = format_hypotheses(first_pass[0]) if first_pass else None
    example = processor.prompt_builder.build(n_pos, transcript=text, context=context, first_pass=hypotheses)
    targets = [i for i, label in enumerate(example.labels) if label != IGNORE_INDEX]
    say(f"prompt       : {prompt_tokens} tokens ({n_pos} of them audio positions)")
    say(f"generated    : {len(targets)} tokens (with end of turn): {text!r}")

    ids = torch.tensor([example.input_ids], device=model.device)
    audio_mask = torch.tensor([example.audio_mask], device=model.device)
    attentions = decoder_attentions(model, ids, audio_mask, frames, lengths)
    stacked = torch.stack([a[0].float() for a in attentions])  # (layers, heads, T, T)
    mean = stacked.mean(dim=(0, 1)) if layer is None else stacked[layer].mean(dim=0)
    queries = torch.tensor(targets) - 1  # the position whose output predicts each target token
    audio_cols = audio_mask[0].nonzero().squeeze(-1).cpu()
    matrix = mean.cpu()[queries][:, audio_cols].numpy()
    audio_share = matrix.sum(axis=1)
    tokens = [_token_label(processor.tokenizer, example.input_ids[i]) for i in targets]
    layers, heads = stacked.shape[:2]
    say(f"attention    : {len(targets)} tokens x {n_pos} audio positions, {layers} layers x {heads} heads")

    shapes = TraceShapes(
        samples=len(samples),
        seconds=len(samples) / SAMPLE_RATE,
        mel_bins=log_mel.shape[0],
        mel_frames=n_mel,
        encoder_frames=n_enc,
        encoder_width=frames.shape[-1],
        stack=k,
        projector_positions=n_pos,
        llm_width=projected.shape[-1],
        prompt_tokens=prompt_tokens,
        generated_tokens=len(targets),
        decoder_layers=layers,
        decoder_heads=heads,
    )
    result = Trace(
        shapes=shapes,
        text=text,
        tokens=tokens,
        waveform=samples,
        log_mel=log_mel,
        encoder=frames[0, :n_enc].float().cpu().numpy(),
        projected=projected[0, :n_pos].float().cpu().numpy(),
        attention=matrix,
        audio_share=audio_share,
    )
    result.figures = {
        "waveform": plot_waveform(samples),
        "log_mel": plot_log_mel(log_mel),
        "encoder": plot_encoder(result.encoder),
        "projector": plot_projector(result.projected, k),
        "attention": plot_attention(matrix, audio_share, tokens, k, layer),
    }
    if out_dir is not None:
        result.files = save_figures(result.figures, out_dir)
        for path in result.files.values():
            say(f"saved        : {path}")
    return result


def decoder_attentions(
    model: ASRModel,
    input_ids: torch.Tensor,
    audio_mask: torch.Tensor,
    frames: torch.Tensor,
    lengths: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """One forward pass returning every layer's attention weights (B, heads, T, T).

    SDPA and flash kernels never materialise the weights, so the decoder is switched to the eager
    implementation for this pass and switched back afterwards.
    """
    previous = model.decoder.config._attn_implementation
    model.decoder.set_attn_implementation("eager")
    try:
        out = model(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            audio_mask=audio_mask,
            encoder_frames=frames,
            encoder_lengths=lengths,
            output_attentions=True,
        )
    finally:
        model.decoder.set_attn_implementation(previous)
    if not out.attentions:
        raise RuntimeError(f"{type(model.decoder).__name__} returned no attention weights")
    return out.attentions


def save_figures(figures: dict[str, Figure], out_dir: str | Path, dpi: int = 110) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for index, (name, fig) in enumerate(figures.items(), start=1):
        files[name] = out / f"{index}_{name}.png"
        fig.savefig(files[name], dpi=dpi)
    return files


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr trace", description=__doc__.splitlines()[0])
    parser.add_argument("audio", help="audio file (any format soundfile/librosa read; at most 30 s)")
    parser.add_argument(
        "--out", default="trace_output", help="folder for the PNG figures (default: %(default)s)"
    )
    parser.add_argument(
        "--model", default=None, help="checkpoint directory (default: the trained offline model)"
    )
    parser.add_argument(
        "--layer", type=int, default=None, help="decoder layer for the attention map (default: mean)"
    )
    parser.add_argument("--context", default=None, help="context text added to the prompt")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    trace(
        args.audio,
        args.model,
        args.out,
        layer=args.layer,
        context=args.context,
        max_new_tokens=args.max_new_tokens,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
