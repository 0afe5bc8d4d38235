"""Course notebooks and their solutions run top to bottom: jupytext (percent .py) -> nbformat -> nbclient, cwd = notebooks/.

Each notebook is one test; a failing cell fails it with the cell's traceback. Deselect them with
``-m "not notebook"`` (each takes up to a couple of minutes on a 2-core CPU).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jupytext
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
sys.path.insert(0, str(NOTEBOOK_DIR))
from render import execute, notebooks  # noqa: E402  (notebooks/render.py: `make course` runs it too)

from course import LECTURE_MARK  # noqa: E402

CLASSES = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
NOTEBOOKS = [p for p in notebooks() if p.parent == NOTEBOOK_DIR]
SOLUTIONS = [p for p in notebooks() if p.parent != NOTEBOOK_DIR]


def test_course_has_seven_notebooks() -> None:
    assert [p.name[:2] for p in CLASSES] == [f"{i:02d}" for i in range(1, 8)]


@pytest.mark.notebook
def test_kernel_is_this_interpreter(tmp_path: Path) -> None:
    notebook = jupytext.reads(
        "# %%\nimport os, sys\nprint(sys.executable)\nprint(os.getcwd())\n", fmt="py:percent"
    )
    outputs = execute(notebook, tmp_path).cells[0].outputs
    executable, cwd = "".join(o.get("text", "") for o in outputs).split()
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    assert Path(cwd).resolve() == tmp_path.resolve()


def test_every_notebook_has_solutions() -> None:
    assert NOTEBOOKS[-1].name.startswith("appendix_")
    assert all(p.is_file() for p in SOLUTIONS), [p.name for p in SOLUTIONS if not p.is_file()]


@pytest.mark.notebook
@pytest.mark.parametrize(
    "path", NOTEBOOKS + SOLUTIONS, ids=lambda p: f"{p.parent.name}/{p.stem}" if p in SOLUTIONS else p.stem
)
def test_notebook_runs(path: Path) -> None:
    """Class notebooks and their solutions (run from notebooks/ too, so relative paths agree)."""
    notebook = jupytext.read(path)
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert code_cells, f"{path.name} has no code cells"
    start = time.perf_counter()
    executed = execute(notebook, NOTEBOOK_DIR)
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")
    errors = [
        o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
    assert all(c.execution_count for c in executed.cells if c.cell_type == "code"), "a cell did not run"
    lecture = NOTEBOOK_DIR.parent / "curriculum" / f"{path.stem}.md"
    unsaid = [q for q in lecture_quotes(executed) if flat(q) not in flat(lecture.read_text())]
    assert not unsaid, f"{path.name} measured it, {lecture.name} does not say it: {unsaid}"


def flat(text: str) -> str:
    """Whitespace-insensitive form, so a quote may wrap across lecture lines."""
    return " ".join(text.split())


def lecture_quotes(executed) -> list[str]:
    """What the notebook printed with ``course.lecture_says``: the lecture's wording of its numbers."""
    return [
        line.removeprefix(LECTURE_MARK)
        for cell in executed.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
        for line in output.text.splitlines()
        if line.startswith(LECTURE_MARK)
    ]


@pytest.mark.notebook
def test_students_trace_data_script(tmp_path: Path) -> None:
    """Class 2's hands-on: the model answer writes both figures and prints the shapes."""
    import subprocess

    script = NOTEBOOK_DIR / "solutions" / "trace_data.py"
    out = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("encoder_output.png", "projector_output.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
    assert "384" in out.stdout and "576" in out.stdout


def test_lectures_render_to_html_with_working_links_and_figures(tmp_path: Path) -> None:
    """`make course` without the notebooks: every lecture becomes a page whose links to other pages
    and whose figures (committed in curriculum/figures) all resolve."""
    import re

    import render

    assert render.render(tmp_path, render.CURRICULUM / "figures", only=["-"]) == []
    pages = sorted(tmp_path.glob("*.html"))
    assert {p.stem for p in pages} == {"index"} | {
        p.stem for p in render.CURRICULUM.glob("*.md") if p.stem != "README"
    }
    for page in pages:
        html = page.read_text()
        links = [h for h in re.findall(r'href="([^"#:]+)"', html) if not h.startswith("http")]
        images = re.findall(r'<img[^>]*src="([^"]+)"', html)
        assert all((tmp_path / h).is_file() or (tmp_path / h / "index.html").is_file() for h in links), (
            page.name,
            links,
        )
        assert all((tmp_path / s).is_file() for s in images), (page.name, images)


def test_lecture_quotes_travel_from_the_notebook_output_to_the_check(capsys) -> None:
    import nbformat

    from course import lecture_says

    lecture_says("a mean cosine of about 0.97", "spend 6 % (layer 0)", when=True)
    lecture_says("not printed", when=False)
    printed = capsys.readouterr().out
    cell = nbformat.v4.new_code_cell("...")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="other\n" + printed)]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("x"), cell])
    assert lecture_quotes(notebook) == ["a mean cosine of about 0.97", "spend 6 % (layer 0)"]
    assert flat("a mean cosine\n  of about 0.97") in flat("agree with a mean cosine of about\n0.97 after")
