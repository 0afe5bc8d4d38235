"""Transcripts written to files: plain text, JSON, SubRip (one cue per long-form window)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from asr.inference.transcribe import Transcript


def _srt_time(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def to_srt(transcript: Transcript) -> str:
    """SubRip text: one cue per window (see :func:`segments_for`), so cue times are window-level."""
    cues = [
        f"{n}\n{_srt_time(s.start)} --> {_srt_time(s.end)}\n{s.text}\n"
        for n, s in enumerate(transcript.segments, start=1)
    ]
    return "\n".join(cues)


FORMATS = ("txt", "json", "srt")


def write_outputs(
    transcripts: list[Transcript], output_dir: str | Path, formats: Sequence[str]
) -> list[Path]:
    """One file per input and format, named after the input's stem (made unique when stems clash)."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown output formats {sorted(unknown)}; choose from {FORMATS}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    used: set[str] = set()
    for n, t in enumerate(transcripts):
        stem = Path(t.source).stem if not t.source.startswith("<") else f"input-{n}"
        if stem in used:
            stem = f"{stem}-{n}"
        used.add(stem)
        for fmt in formats:
            path = out / f"{stem}.{fmt}"
            if fmt == "json":
                path.write_text(json.dumps(t.to_dict(), indent=2, ensure_ascii=False) + "\n")
            elif fmt == "srt":
                path.write_text(to_srt(t))
            else:
                path.write_text(t.text + "\n")
            written.append(path)
    return written
