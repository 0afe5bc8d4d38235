"""Would the CTC head's best path pay as a draft for speculative decoding? A simulation.

Speculative decoding feeds a guess of the next ``k`` tokens through the LLM in one pass and keeps
the longest prefix that greedy decoding would have written, plus the LLM's own next token: the
same transcript in fewer passes, each costing about one decode step on a CPU (a decode step is
bound by reading the weights, not by the rows). The guess here is the CTC head's best path
(:func:`asr.ctc.ctc_greedy` over the LLM's whole vocabulary), looked up after the last one to
three tokens written (as prompt-lookup decoding does). This script decodes real clips greedily,
replays each transcript against its draft, and prints the tokens gained per LLM pass for several
``k`` (1.0: no gain; the long-form decode steps would shrink by that factor).

    python benchmarks/ctc_draft.py --model checkpoints/offline \\
        --manifest ../shared/data/librispeech.dev.jsonl --clips 24
"""

from __future__ import annotations

import argparse

import torch

from asr.audio import load_audio
from asr.ctc import ctc_greedy
from asr.data import BadRows, read_manifest
from asr.generation import through_eos
from asr.inference.transcribe import load_model


def propose(written: list[int], draft: list[int], k: int) -> list[int]:
    """The ``k`` draft tokens after the latest place where the draft holds the last 3, 2 or 1
    tokens written (the draft's start before anything is written; nothing when no match)."""
    if not written:
        return draft[:k]
    for n in (3, 2, 1):
        if len(written) < n:
            continue
        tail = written[-n:]
        for start in range(len(draft) - n, -1, -1):
            if draft[start : start + n] == tail:
                return draft[start + n : start + n + k]
    return []


def passes(written: list[int], draft: list[int], k: int) -> int:
    """LLM passes that speculative greedy decoding with ``draft`` needs to write ``written``."""
    done = count = 0
    while done < len(written):
        guess = propose(written[:done], draft, k)
        accepted = 0
        while (
            accepted < len(guess)
            and done + accepted < len(written)
            and guess[accepted] == written[done + accepted]
        ):
            accepted += 1
        done += accepted + 1  # the accepted guesses and the LLM's own next token
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="checkpoints/offline")
    parser.add_argument("--manifest", default="../shared/data/librispeech.dev.jsonl")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    if model.ctc_head is None:
        raise SystemExit(f"{args.model}: no CTC head (model.ctc_weight 0)")
    rows = read_manifest(args.manifest, BadRows(), limit=args.clips)
    clips = [load_audio(row["audio"]) for row in rows]
    eos = model.generation_config.eos_token_id
    embeddings = model.decoder.get_output_embeddings().weight
    sizes = (1, 2, 4, 8, 16)
    written_tokens, needed = 0, dict.fromkeys(sizes, 0)
    for start in range(0, len(clips), 8):
        inputs = model.processor(audio=clips[start : start + 8])
        with torch.inference_mode():
            tokens = model.generate(**inputs, num_beams=1)
            audio, n_audio = model.audio_embeddings(inputs["input_features"], inputs["mel_lengths"])
            drafts = ctc_greedy(model.ctc_head(audio, embeddings), n_audio)
        for row, draft in zip(tokens.tolist(), drafts, strict=True):
            written = through_eos(row, eos)
            written_tokens += len(written)
            for k in sizes:
                needed[k] += passes(written, [*draft, eos], k)
    print(f"{len(clips)} clips, {written_tokens} tokens written by greedy decoding")
    for k in sizes:
        print(f"draft of {k:2d}: {needed[k]} LLM passes, {written_tokens / needed[k]:.2f} tokens per pass")


if __name__ == "__main__":
    main()
