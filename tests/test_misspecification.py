import matplotlib
import numpy as np
import pymc as pm
import pytest

from pymc_abi.amortizers.fitting import fit
from pymc_abi.diagnostics.misspecification import (
    check_misspecification,
    plot_misspecification,
)

matplotlib.use("Agg")
N_OBS = 30


@pytest.fixture(scope="module")
def amortizer():
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", mu, sigma, observed=np.zeros(N_OBS))
    return fit(model, steps=600, random_seed=0, progressbar=False)


def test_data_from_the_model_pass(amortizer):
    rng = np.random.default_rng(1)
    p_values = []
    for i in range(5):
        y = rng.normal(rng.normal(0, 1), abs(rng.normal(0, 1)), N_OBS)
        p_values.append(check_misspecification(amortizer, {"y": y}, random_seed=i).p_value)
    # p-values of well-specified data are spread over (0, 1), not piled up near 0
    assert np.median(p_values) > 0.1, p_values
    assert min(p_values) > 0.01, p_values


def test_another_scale_is_flagged(amortizer):
    y = np.random.default_rng(2).normal(0.0, 15.0, N_OBS)  # far outside the prior's scales
    result = check_misspecification(amortizer, {"y": y}, random_seed=3)
    assert result.misspecified and result.p_value < 0.01, result
    assert result.mmd > np.quantile(result.null, 0.99)


def test_heavier_tails_are_flagged(amortizer):
    """One dataset of 30 has limited power against tails; five tested together do not."""
    rng = np.random.default_rng(4)
    cauchy = [{"y": rng.standard_cauchy(N_OBS)} for _ in range(5)]
    result = check_misspecification(amortizer, cauchy, random_seed=5)
    assert result.p_value < 0.01, result
    normal = [{"y": rng.normal(0.3, 0.8, N_OBS)} for _ in range(5)]
    assert check_misspecification(amortizer, normal, random_seed=5).p_value > 0.05


def test_plot(amortizer):
    result = check_misspecification(amortizer, {"y": np.zeros(N_OBS) + 0.5}, num_null=100)
    ax = plot_misspecification(result)
    assert len(ax.patches) == 30  # histogram bars
    assert ax.get_lines()[0].get_xdata()[0] == pytest.approx(result.mmd)
    assert "p =" in ax.get_legend().get_texts()[1].get_text()
