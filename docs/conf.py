"""Sphinx configuration for the pymc-abi documentation.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (see the README).
The example notebooks in ``examples/`` are copied into ``docs/examples/`` and executed by
MyST-NB at build time, so the rendered pages always come from the current code. Set
``PYMC_ABI_FAST=1`` for small budgets (CI does).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pymc_abi

HERE = Path(__file__).parent
ROOT = HERE.parent

# The notebooks live in examples/ (so they are easy to find in the repository); Sphinx
# needs them inside its source folder. Copy them, with their data, on every build.
_examples = HERE / "examples"
if _examples.exists():
    shutil.rmtree(_examples)
shutil.copytree(
    ROOT / "examples",
    _examples,
    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.abi", "*.nc"),
)

project = "pymc-abi"
author = "pymc-abi developers"
copyright = "2026, pymc-abi developers"
release = pymc_abi.__version__
version = release

extensions = [
    "myst_nb",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "examples/data/README.md", "README.md"]
templates_path = ["_templates"]

# API reference: numpydoc renders the docstrings; autosummary writes one page per object.
autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()

# MyST: Markdown pages and notebooks.
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist", "substitution"]
myst_heading_anchors = 3
nb_execution_mode = os.environ.get("PYMC_ABI_DOCS_EXECUTE", "cache")
nb_execution_timeout = 1800
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_excludepatterns: list[str] = []
nb_merge_streams = True

html_theme = "pydata_sphinx_theme"
html_title = "pymc-abi"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "use_edit_page_button": False,
}
html_show_sourcelink = False
if os.environ.get("PYMC_ABI_FAST") == "1":
    html_theme_options["announcement"] = (
        "Built with PYMC_ABI_FAST=1: the examples ran with small training budgets, so their "
        "numbers and plots are rougher than with the defaults."
    )
