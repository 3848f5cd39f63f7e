"""The tutorial notebooks (docs/tutorials): stored without outputs, and each runs top to
bottom without an error (executed with ``pytest --notebooks``, as .ci/run does)."""

from __future__ import annotations

from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
CELL_TIMEOUT_S = 600


def test_there_are_five_tutorials_listed_in_the_docs():
    listed = (TUTORIALS.parents[0] / "notebooks.md").read_text()
    assert len(NOTEBOOKS) == 5
    for notebook in NOTEBOOKS:
        assert f"tutorials/{notebook.name}" in listed, (
            f"{notebook.name} is not in docs/notebooks.md"
        )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_stored_without_outputs(notebook):
    nbformat = pytest.importorskip("nbformat")
    cells = nbformat.read(notebook, as_version=4).cells
    code = [cell for cell in cells if cell.cell_type == "code"]
    assert code, "a tutorial has code"
    assert all(not cell.outputs and cell.execution_count is None for cell in code), (
        f"{notebook.name} holds outputs: clear them before committing"
    )


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs(notebook, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    document = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(
        document,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # anything written lands in tmp
    )
    client.execute()  # raises CellExecutionError naming the cell on any error
    errors = [
        output
        for cell in document.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
