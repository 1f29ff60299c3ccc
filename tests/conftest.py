"""Shared fixtures and helpers.

Tests run with one torch thread (on a busy 2-core machine, two threads make these small
networks several times slower), and every test leaves torch's global state (threads,
generator) as it found it.
"""

import json
import os

import arviz as az
import matplotlib
import numpy as np
import pymc as pm
import pytest
import torch
import xarray as xr

matplotlib.use("Agg")

#: What ``pm.sample`` returns here: ``DataTree`` with ArviZ 1.x, ``InferenceData`` with 0.x.
ARVIZ_1 = int(az.__version__.split(".")[0]) >= 1
RESULT_TYPE = xr.DataTree if ARVIZ_1 else az.InferenceData
PYMC_6 = int(pm.__version__.split(".")[0]) >= 6


#: Added to the seeds of the statistical tests: ``PYMC_ABI_TEST_SEED=3 pytest -m statistical``
#: reruns them on other seeds (benchmarks/test_seeds.py measures their spread that way).
SEED = int(os.environ.get("PYMC_ABI_TEST_SEED", "0"))


def measure(name: str, value: float, limit: float) -> None:
    """Record a statistical test's margin (``value`` against its tolerance ``limit``) when
    ``PYMC_ABI_TEST_RECORD`` names a file; the seed study reads them back."""
    path = os.environ.get("PYMC_ABI_TEST_RECORD")
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
        row = {"test": test, "name": name, "value": float(value), "limit": float(limit)}
        with open(path, "a") as f:
            f.write(json.dumps({**row, "seed": SEED}) + "\n")


def group_names(result) -> set[str]:
    """The groups of a result, in either generation."""
    return set(result.children) if ARVIZ_1 else set(result.groups())


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _restore_torch_state():
    """Undo what a test does to torch's global thread count and generator."""
    threads = torch.get_num_threads()
    state = torch.random.get_rng_state()
    yield
    torch.set_num_threads(threads)
    torch.random.set_rng_state(state)
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture
def rng():
    return np.random.default_rng(SEED)
