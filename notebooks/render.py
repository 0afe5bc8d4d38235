"""Build the course as HTML that a student can read without Python: the lectures, and every notebook
and solution executed with its outputs (plots included), linked from one index.

    python notebooks/render.py [--out course] [--figures curriculum/figures] [--only 04_llm_decoder]

Notebooks run as in the tests (jupytext percent -> nbformat -> nbclient, cwd ``notebooks/``), with
``$ASR_COURSE_FIGURES`` set so that each notebook also writes its lecture figures
(``course.save_figure``): the lectures' figures are the plots their notebooks draw. ``make course``
runs this; the output folder is not committed, the figures are.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import time
from pathlib import Path

import nbformat

NOTEBOOK_DIR = Path(__file__).resolve().parent
REPO = NOTEBOOK_DIR.parent
CURRICULUM = REPO / "curriculum"
CELL_TIMEOUT_S = 300


def notebooks() -> list[Path]:
    """The class notebooks in order, then the appendix, then the solutions in the same order."""
    ordered = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py")) + sorted(NOTEBOOK_DIR.glob("appendix_*.py"))
    return ordered + [NOTEBOOK_DIR / "solutions" / p.name for p in ordered]


def execute(notebook: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel of this interpreter, working directory ``cwd``."""
    from nbclient import NotebookClient

    # kernel "python3" is ipykernel's own spec, whose argv[0] "python" jupyter_client replaces by
    # sys.executable: the kernel runs in this interpreter's environment (.venv)
    client = NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    return client.execute()


def _html(notebook: nbformat.NotebookNode, title: str) -> str:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter()
    body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": title}})
    return body


def _lecture_markdown(path: Path, rendered: set[str]) -> str:
    """A lecture with links to other lectures and to its rendered notebook made to work in HTML."""
    text = re.sub(r"\]\(([\w-]+)\.md\)", r"](\1.html)", path.read_text())
    text = text.replace("](../notebooks/", "](notebooks/")  # the rendered notebooks sit beside the pages
    stem = path.stem if path.stem != "README" else None
    if stem in rendered:
        text = re.sub(
            r"^(# .*)$",
            rf"\1\n\n*Notebook with its outputs: [{stem}](notebooks/{stem}.html) · "
            rf"solutions: [{stem}](notebooks/solutions/{stem}.html)*",
            text,
            count=1,
            flags=re.M,
        )
    return text


def render(out: Path, figures: Path, only: list[str] | None = None) -> list[tuple[str, float]]:
    """Execute and write the notebooks (all, or those named in ``only``), then the lectures; returns
    (notebook, seconds) per executed notebook. A failing notebook is written up to its failing cell
    and the others still run; the error names every failure at the end."""
    import jupytext
    from nbclient.exceptions import CellExecutionError

    os.environ["ASR_COURSE_FIGURES"] = str(figures.resolve())
    timings, failures = [], []
    for path in notebooks():
        if only and path.stem not in only:
            continue
        name = path.relative_to(NOTEBOOK_DIR).with_suffix(".html")
        start = time.perf_counter()
        executed = jupytext.read(path)
        try:
            execute(executed, NOTEBOOK_DIR)  # fills in the outputs in place
            failed = False
        except CellExecutionError:  # the page shows the traceback up to the failing cell
            failed = True
            failures.append(str(name.with_suffix("")))
        timings.append((str(name.with_suffix("")), time.perf_counter() - start))
        print(f"{name.with_suffix('')}: {timings[-1][1]:.0f} s{' FAILED' if failed else ''}", flush=True)
        target = out / "notebooks" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_html(executed, path.stem))
    out.mkdir(parents=True, exist_ok=True)
    rendered = {p.stem for p in notebooks() if (out / "notebooks" / f"{p.stem}.html").is_file()}
    solutions = out / "notebooks" / "solutions"
    solutions.mkdir(parents=True, exist_ok=True)
    listing = "\n".join(f"- [{p.stem}]({p.name})" for p in sorted(solutions.glob("[!i]*.html")))
    index = nbformat.v4.new_markdown_cell(f"# Worked solutions\n\n{listing or '(not rendered yet)'}\n")
    (solutions / "index.html").write_text(_html(nbformat.v4.new_notebook(cells=[index]), "solutions"))
    for lecture in sorted(CURRICULUM.glob("*.md")):
        cell = nbformat.v4.new_markdown_cell(_lecture_markdown(lecture, rendered))
        page = "index.html" if lecture.stem == "README" else f"{lecture.stem}.html"
        (out / page).write_text(_html(nbformat.v4.new_notebook(cells=[cell]), lecture.stem))
    shutil.copytree(figures, out / "figures", dirs_exist_ok=True)
    if failures:
        raise RuntimeError(f"notebooks that failed (their pages show where): {', '.join(failures)}")
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "course", help="output folder (default: course/)")
    parser.add_argument(
        "--figures", type=Path, default=CURRICULUM / "figures", help="where notebooks save lecture figures"
    )
    parser.add_argument("--only", nargs="*", help="notebook stems to execute (default: all)")
    args = parser.parse_args()
    render(args.out, args.figures, args.only)
    print(f"open {args.out / 'index.html'}")


if __name__ == "__main__":
    main()
