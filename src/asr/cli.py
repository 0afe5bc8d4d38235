"""The ``asr`` command: transcribe, evaluate, trace, demo, push, average.

    asr transcribe talk.wav more.opus --model checkpoints/offline --format json,srt --output-dir out/
    asr evaluate --model checkpoints/offline --manifest ../shared/data/speechocean762.dev.jsonl --limit 100 \\
        --compare faster-whisper --report reports/dev.jsonl
    asr evaluate --model faster-whisper --manifest ...          # the baseline alone
    asr trace clip.wav --out trace_output/
    asr demo                                                    # browser demo on 127.0.0.1:7860
    asr push checkpoints/offline user/asr-offline               # publish a checkpoint to the Hub
    asr average outputs/native_swa --from-step 150 --out outputs/native_swa/averaged

``--model`` takes a checkpoint directory saved by ``ASRModel.save_pretrained`` or the literal
``faster-whisper`` (Whisper tiny.en through CTranslate2, the packaged offline baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from asr.inference.longform import SEGMENT_SECONDS
from asr.inference.outputs import FORMATS
from asr.inference.transcribe import DTYPES, FASTER_WHISPER, RUNTIMES


def _threads(threads: int | None) -> int:
    """CPU threads for the backends (each applies them: torch's, NumPy's BLAS, CTranslate2's)."""
    return threads or os.cpu_count() or 1


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help=f"checkpoint directory, or '{FASTER_WHISPER}' (default: $ASR_MODEL, else checkpoints/offline-2pass, else checkpoints/offline, in this folder or one above; the untrained model if absent)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="clips per forward pass (default: 8)")
    parser.add_argument(
        "--beam",
        type=int,
        default=None,
        help="beam width; 1 is greedy (default: the checkpoint's generation_config.json; faster-whisper: 1)",
    )
    parser.add_argument(
        "--compute-type",
        default="int8",
        choices=["int8", "float32", "int8_float32"],
        help="faster-whisper's CTranslate2 compute type (default: int8)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="decoding cap (default: from each batch's duration)"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument(
        "--runtime",
        default="auto",
        choices=list(RUNTIMES),
        help="auto: NumPy (no torch: fast start, small memory) where the checkpoint allows it, else torch (default: auto)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=list(DTYPES),
        help="our model's weights: bfloat16 runs in torch, ~2x faster on CPUs with AVX-512 BF16/AMX, ~100x slower without (default: float32)",
    )
    parser.add_argument("--progress", action="store_true", help="show a progress bar")


def cmd_transcribe(args: argparse.Namespace) -> int:
    from asr.inference import Transcriber, write_outputs

    threads = _threads(args.threads)
    transcriber = Transcriber(
        args.model,
        batch_size=args.batch_size,
        num_beams=args.beam,
        compute_type=args.compute_type,
        threads=threads,
        max_new_tokens=args.max_new_tokens,
        progress=args.progress,
        runtime=args.runtime,
        dtype=args.dtype,
    )
    transcripts = transcriber(args.files, context=args.context)
    for t in transcripts:
        if t.error is not None:
            print(f"error: {t.error}", file=sys.stderr)
        elif len(transcripts) == 1:
            print(t.text)
        else:
            print(f"{t.source}\t{t.text}")
    if args.format:
        formats = [f for group in args.format for f in group.split(",")]
        written = write_outputs(transcripts, args.output_dir or ".", formats)
        print(f"wrote {len(written)} file(s) to {args.output_dir or '.'}", file=sys.stderr)
    return 1 if any(t.error is not None for t in transcripts) else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from asr.evaluate import (
        evaluate,
        format_agreement,
        format_hits_by_training_count,
        format_table,
        hits_by_training_count,
        read_manifest,
        summarise,
        training_word_counts,
    )
    from asr.inference import Transcriber

    threads = _threads(args.threads)
    rows = read_manifest(args.manifest, limit=args.limit)
    # read before the long run, so a wrong path fails fast
    counts = training_word_counts(args.train_manifest) if args.train_manifest else None
    systems = [args.model] + ([args.compare] if args.compare else [])
    beams = [args.beam, args.beam if args.compare_beam is None else args.compare_beam]
    results = []
    for n, system in enumerate(systems):
        transcriber = Transcriber(
            system,
            batch_size=args.batch_size,
            num_beams=beams[n],
            compute_type=args.compute_type,
            threads=threads,
            runtime=args.runtime,
            dtype=args.dtype,
        )
        report = None
        if args.report:
            report = Path(args.report)
            if n > 0:
                report = report.with_name(f"{report.stem}.{system.replace('/', '_')}{report.suffix}")
        results.append(evaluate(transcriber, rows, report=report))
        if report:
            print(f"per-utterance report: {report}", file=sys.stderr)
    print(f"\n{args.manifest} ({len(rows)} utterances)\n")
    print(format_table(results))
    if len(results) == 2:
        print("\n" + format_agreement(*results))
    hits = [hits_by_training_count(r, counts) for r in results] if counts is not None else None
    if hits is not None:
        print(
            f"\nword accuracy by how often the word occurs in {len(args.train_manifest)} training manifest(s)\n"
        )
        print(format_hits_by_training_count(results, hits))
    if args.json:
        Path(args.json).write_text(json.dumps(summarise(results, hits), indent=2) + "\n")
    return 0


def cmd_trace(argv: list[str]) -> int:
    from asr import trace

    return trace.main(argv)


def cmd_demo(argv: list[str]) -> int:
    from asr import demo

    return demo.main(argv)


def cmd_push(args: argparse.Namespace) -> int:
    from asr.modeling import ASRModel

    model = ASRModel.from_pretrained(args.checkpoint)
    commit = model.push_to_hub(args.repo_id, card=args.card, private=args.private or None)
    print(f"pushed {args.checkpoint} to {args.repo_id}: {getattr(commit, 'commit_url', commit)}")
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from asr.training.checkpoint import average_checkpoints, checkpoints, step_of

    sources: list[Path] = []
    for given in map(Path, args.checkpoints):
        found = checkpoints(given) if (given / "checkpoints").is_dir() else [given]
        sources += [p for p in found if args.from_step is None or (step_of(p) or 0) >= args.from_step]
    if not sources:
        print(f"asr average: no checkpoint in {args.checkpoints} from step {args.from_step}", file=sys.stderr)
        return 2
    out = average_checkpoints(sources, Path(args.out))
    print(f"averaged {len(sources)} checkpoints ({', '.join(p.name for p in sources)}) into {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="Encoder-projector-LLM speech recognition.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("transcribe", help="transcribe audio files (any length)")
    p.add_argument("files", nargs="+", help="audio files (wav, flac, ogg/opus, mp3 ...)")
    _model_arguments(p)
    p.add_argument("--context", default=None, help="text that biases the transcript (names, topic)")
    p.add_argument(
        "--format",
        action="append",
        metavar="FMT",
        help=f"also write files: {', '.join(FORMATS)} (repeat or comma-separate); SRT has one cue per "
        f"segment (long audio is cut at pauses into pieces of at most {SEGMENT_SECONDS:g} s)",
    )
    p.add_argument("--output-dir", default=None, help="folder for --format files (default: current folder)")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("evaluate", help="WER/CER on a JSONL manifest")
    _model_arguments(p)
    p.add_argument(
        "--manifest", required=True, help="JSONL with 'audio' (relative to the manifest) and 'text'"
    )
    p.add_argument("--limit", type=int, default=None, help="first N utterances only")
    p.add_argument(
        "--compare", default=None, help=f"a second system on the same audio, e.g. '{FASTER_WHISPER}'"
    )
    p.add_argument(
        "--compare-beam",
        type=int,
        default=None,
        help="the --compare system's beam width (default: --beam, else its own default: 1 for "
        "faster-whisper), e.g. 5 to compare a two-pass model whose first pass decodes with a beam "
        "of 5 against that first pass",
    )
    p.add_argument("--report", default=None, help="per-utterance JSONL report path")
    p.add_argument("--json", default=None, help="write the summary rows as JSON here")
    p.add_argument(
        "--train-manifest",
        action="append",
        default=None,
        metavar="JSONL",
        help="a training manifest (repeat for several): also print each system's word accuracy "
        "by how often the reference word occurs in their transcripts (unseen, 1-4, 5-49, 50+)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "trace", help="figures of one clip's path through the model (see asr.trace)", add_help=False
    )
    p.add_argument(
        "trace_args", nargs=argparse.REMAINDER, help="arguments of asr.trace (AUDIO --out DIR ...)"
    )
    p.set_defaults(func=lambda args: cmd_trace(args.trace_args))

    p = sub.add_parser("demo", help="browser demo (Gradio; see asr.demo)", add_help=False)
    p.add_argument("demo_args", nargs=argparse.REMAINDER, help="arguments of asr.demo (--model --port ...)")
    p.set_defaults(func=lambda args: cmd_demo(args.demo_args))

    p = sub.add_parser("push", help="upload a checkpoint and its model card to the Hugging Face Hub")
    p.add_argument("checkpoint", help="checkpoint directory saved by ASRModel.save_pretrained")
    p.add_argument("repo_id", help="the Hub repository, user/name (created if missing)")
    p.add_argument("--card", default=None, help="model card (default: CHECKPOINT/README.md)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("average", help="average the trainable weights of several checkpoints of a run")
    p.add_argument(
        "checkpoints",
        nargs="+",
        help="checkpoint folders, or a run's output_dir (its checkpoints/step-N folders)",
    )
    p.add_argument("--from-step", type=int, default=None, help="only step-N checkpoints with N >= this")
    p.add_argument("--out", required=True, help="the averaged model's folder")
    p.set_defaults(func=cmd_average)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--progress" not in argv:  # transformers' "Loading weights" bars on every call, otherwise
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers loads
    if argv[:1] == ["trace"]:  # everything after it, --help included, belongs to asr.trace
        return cmd_trace(argv[1:])
    if argv[:1] == ["demo"]:  # the same for asr.demo
        return cmd_demo(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
