"""The example notebooks are listed in the docs, saved clean, and shrinkable for CI.

The notebooks are *executed* by the documentation build (MyST-NB, ``nb_execution_mode``
"cache", errors fail the build), which ``.ci/run`` runs with ``PYMC_ABI_FAST=1``; running
them here as well would double CI time.
"""

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))


def test_every_notebook_is_in_the_docs():
    listed = set(re.findall(r"^examples/(\w+)$", (ROOT / "docs" / "examples.md").read_text(), re.M))
    assert listed == {path.stem for path in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_clean(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "a notebook without code"
    # no stored outputs: the docs build executes every notebook afresh
    assert all(not cell.outputs and cell.execution_count is None for cell in code), path.name
    # budgets shrink under PYMC_ABI_FAST=1, as CI sets it
    assert 'os.environ.get("PYMC_ABI_FAST") == "1"' in code[0].source
    # one title: the page title in the docs
    headings = [
        line
        for cell in notebook.cells
        if cell.cell_type == "markdown"
        for line in cell.source.splitlines()
        if line.startswith("# ")
    ]
    assert len(headings) == 1 and notebook.cells[0].source.startswith("# "), path.name
