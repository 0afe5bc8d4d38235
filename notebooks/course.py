"""What every course notebook shares: where the real speech is, one example clip, and saving a
figure for the lectures. Notebooks run with ``notebooks/`` as their working directory, so
``from course import example_clip`` works in each of them (and in ``solutions/``, run from there too).

``make course`` runs every notebook with ``$ASR_COURSE_FIGURES`` set: :func:`save_figure` then writes
the lecture figures (``curriculum/figures``) from the notebooks' own plots, so a lecture's figure is
always the one its notebook draws. Without the variable it does nothing but show the figure.

:func:`lecture_says` prints, beside a number a notebook has just computed, the words in which its
lecture quotes it; the notebook tests check that each such quote is in the lecture, so a lecture
cannot drift from what its notebook measures.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from asr.audio import load_audio
from asr.evaluate import read_manifest
from asr.synth import synthesize

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"  # ../shared/data: real speech, when this machine has it
DEV = DATA / "speechocean762.dev.jsonl"
FALLBACK = ("mark is going to see elephant", "kate loves china")  # espeak-ng renders these instead
FIGURES_ENV = "ASR_COURSE_FIGURES"
LECTURE_MARK = "the lecture says: "


def have_data() -> bool:
    """Whether ``../shared/data`` is here (else the notebooks synthesise their speech)."""
    return DEV.is_file()


def example_clip(index: int = 0) -> tuple[np.ndarray, str, str]:
    """The course's example: row ``index`` of speechocean762 dev (real speech) or, without
    ``../shared/data``, an espeak-ng rendering of a similar sentence. Returns (16 kHz clip,
    reference transcript, where it came from)."""
    if have_data():
        row = read_manifest(DEV)[index]
        return load_audio(row["audio"]), row["text"], "speechocean762 dev (real speech)"
    text = FALLBACK[index % len(FALLBACK)]
    return synthesize(text), text, "espeak-ng (synthetic: ../shared/data is absent)"


def save_figure(fig, name: str) -> Path | None:
    """Write ``fig`` as ``<$ASR_COURSE_FIGURES>/<name>.png`` when that variable is set (``make
    course``); the path written, or None."""
    folder = os.environ.get(FIGURES_ENV)
    if not folder:
        return None
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def lecture_says(*quotes: str, when: bool | None = None) -> None:
    """Print each quote as ``the lecture says: <quote>``: the lecture's wording of a number this
    notebook just computed (tests/test_notebooks.py finds every such line in the executed notebook
    and checks that the class's lecture contains it). The lectures quote real speech and the
    shipped checkpoint, so by default (``when=None``) nothing is printed without ``../shared/data``;
    pass ``when`` to decide instead (True for synthetic speech, False without a trained model)."""
    if have_data() if when is None else when:
        for quote in quotes:
            print(f"{LECTURE_MARK}{quote}")
