"""Shared fixtures and helpers.

Tests run with one torch thread (on a busy 2-core machine, two threads make these small
networks several times slower), and every test leaves torch's global state (threads,
generator) as it found it.
"""

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
    return np.random.default_rng(0)
