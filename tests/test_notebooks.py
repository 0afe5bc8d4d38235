"""Course notebooks run top to bottom: jupytext (percent .py) -> nbformat -> nbclient, cwd = notebooks/.

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


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path) -> None:
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
