"""Course notebooks and their solutions run top to bottom: jupytext (percent .py) -> nbformat -> nbclient, cwd = notebooks/.

Each notebook is one test; a failing cell fails it with the cell's traceback. Deselect them with
``-m "not notebook"`` (each takes up to a couple of minutes on a 2-core CPU).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
SOLUTIONS = sorted((NOTEBOOK_DIR / "solutions").glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT_S = 300


def execute(notebook: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    # kernel "python3" is ipykernel's own spec, whose argv[0] "python" jupyter_client replaces by
    # sys.executable: the kernel runs in this interpreter's environment (.venv)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
    )
    return client.execute()


def test_course_has_seven_notebooks() -> None:
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(1, 8)]


@pytest.mark.notebook
def test_kernel_is_this_interpreter(tmp_path: Path) -> None:
    notebook = jupytext.reads(
        "# %%\nimport os, sys\nprint(sys.executable)\nprint(os.getcwd())\n", fmt="py:percent"
    )
    outputs = execute(notebook, tmp_path).cells[0].outputs
    executable, cwd = "".join(o.get("text", "") for o in outputs).split()
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    assert Path(cwd).resolve() == tmp_path.resolve()


def test_every_class_has_solutions() -> None:
    assert [p.name for p in SOLUTIONS] == [p.name for p in NOTEBOOKS]


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
