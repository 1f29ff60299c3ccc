"""Likelihood-informed preconditioning: batched Laplace maps of many datasets at once."""

import dataclasses

import numpy as np
import pymc as pm
import pytest

import pymc_abi as abi
from pymc_abi.model.preconditioner import KEYS, laplace_maps
from tests.conftest import SEED, measure
from tests.models import simulator
from tests.test_laplace import NOISE, X, exact_posterior, informative

BETA = np.array([1.5, -0.7, 0.2])


def datasets(n, seed=0):
    rng = np.random.default_rng(seed)
    beta = BETA + rng.normal(size=(n, 3))
    return beta @ X.T + rng.normal(0, NOISE, size=(n, len(X)))


def maps_of(logp, y):
    return laplace_maps(logp, np.zeros(3), {"y": y}, None, None)


def test_value_and_grad_rows_gives_each_row_its_own_dataset():
    logp = abi.JointLogp(abi.ParameterSpace(informative()))
    y = datasets(4)
    z = np.random.default_rng(1).normal(size=(4, 3))
    value, grad = logp.value_and_grad_rows(z, {"y": y})
    for i in range(4):
        v, g = logp.value_and_grad(z[i : i + 1], {"y": y[i]})
        np.testing.assert_allclose(value[i], v[0], rtol=1e-12)
        np.testing.assert_allclose(grad[i], g[0], rtol=1e-10)
    with pytest.raises(ValueError, match="one dataset per row: 'y' leads with \\(3,\\)"):
        logp.value_and_grad_rows(z, {"y": y[:3]})


def test_maps_of_a_normal_posterior_are_its_mean_and_covariance():
    logp = abi.JointLogp(abi.ParameterSpace(informative()))
    y = datasets(40)
    maps = maps_of(logp, y)
    assert maps.converged.all()
    for i in range(len(y)):
        mean, cov = exact_posterior(y[i])
        sd = np.sqrt(np.diag(cov))  # ~1/400 of the prior's
        np.testing.assert_allclose(maps["laplace_mean"][i], mean, atol=1e-4 * sd.min())
        scale = maps["laplace_scale"][i]
        np.testing.assert_allclose(scale @ scale.T, cov, rtol=1e-3, atol=1e-3 * sd.min() ** 2)
        np.testing.assert_allclose(scale @ maps["laplace_inverse"][i], np.eye(3), atol=1e-8)
        _, log_det = np.linalg.slogdet(scale)
        np.testing.assert_allclose(maps["laplace_log_det"][i], log_det, rtol=1e-10)


def test_maps_are_a_function_of_the_data_alone():
    logp = abi.JointLogp(abi.ParameterSpace(informative()))
    y = datasets(300)  # more than one chunk
    together = maps_of(logp, y)
    alone = maps_of(logp, y[[7, 250]])
    for key in KEYS:
        np.testing.assert_allclose(together[key][[7, 250]], alone[key], rtol=1e-9, atol=1e-12)


def test_a_scale_parameter_far_from_its_start_is_found():
    """The noise SD unknown and 1/100 of its start (1): the Newton steps get there."""
    with pm.Model() as model:
        beta = pm.Normal("beta", 0, 10, shape=3)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", X @ beta, sigma, observed=np.zeros(len(X)))
    space = abi.ParameterSpace(model)
    logp = abi.JointLogp(space)
    y = datasets(8, seed=2)
    maps = laplace_maps(logp, np.zeros(4), {"y": y}, None, None)
    assert maps.converged.all()
    for i in range(len(y)):
        residual = y[i] - X @ np.linalg.lstsq(X, y[i], rcond=None)[0]
        # the mode of log sigma (unconstrained, with the Jacobian): n - 1 effective terms
        n = len(X)
        expected = 0.5 * np.log(residual @ residual / (n - 1 + 3 - 1))
        assert abs(maps["laplace_mean"][i, 3] - expected) < 0.05
        assert abs(maps["laplace_mean"][i, 3] - np.log(NOISE)) < 0.3


def test_a_dataset_without_density_at_the_start_keeps_the_identity():
    """y ~ Uniform(0, b): data above the start's bound have no density there; data below
    it have their largest density on the support's edge (b = max y), where the gradient
    is not zero: no Laplace mode either."""
    with pm.Model() as model:
        b = pm.HalfNormal("b", 5)
        pm.Uniform("y", 0, b, observed=np.ones(5))
    logp = abi.JointLogp(abi.ParameterSpace(model))
    start = np.zeros(1)  # b = 1
    y = np.array([[0.5] * 5, [3.0] * 5])
    maps = laplace_maps(logp, start, {"y": y}, None, None)
    assert not maps.converged[1]
    np.testing.assert_array_equal(maps["laplace_mean"][1], start)
    np.testing.assert_array_equal(maps["laplace_scale"][1], np.eye(1))
    assert maps["laplace_log_det"][1] == 0
    # the other dataset's steps stall at its bound (b = 0.5), far from a stationary point
    assert not maps.converged[0]
    np.testing.assert_array_equal(maps["laplace_mean"][0], start)
    assert np.isfinite(logp(maps["laplace_mean"][:1], {"y": y[0]})).all()


def test_a_funnel_without_a_mode_keeps_the_identity():
    """Centred eight schools: the joint density grows without bound as tau -> 0 with every
    theta at mu, so Newton walks down the funnel's neck. A map there would be centred and
    scaled wherever the steps stopped (the true draws 10^5 map widths away); the fit says
    it found no mode and keeps the identity, as if not preconditioned."""
    sigma = np.array([15.0, 10, 16, 11, 9, 11, 10, 18])
    with pm.Model(coords={"school": range(8)}) as model:
        mu = pm.Normal("mu", 0, 5)
        tau = pm.HalfCauchy("tau", 5)
        theta = pm.Normal("theta", mu, tau, dims="school")
        pm.Normal("y", theta, sigma, observed=np.zeros(8), dims="school")
    logp = abi.JointLogp(abi.ParameterSpace(model))
    y = np.array([[28.0, 8, -3, 7, -1, 1, 18, 12], [1.0, -1, 0.5, 0, 0.2, -0.3, 0.1, 0]])
    start = np.zeros(10)
    maps = laplace_maps(logp, start, {"y": y}, None, None)
    assert not maps.converged.any()
    for i in range(2):
        np.testing.assert_array_equal(maps["laplace_mean"][i], start)
        np.testing.assert_array_equal(maps["laplace_scale"][i], np.eye(10))
        assert maps["laplace_log_det"][i] == 0


# ---------------------------------------------------------------------- the flow


@pytest.fixture(scope="module")
def preconditioned():
    """The informative regression (posterior SDs ~1/400 of the prior's), the flow trained
    relative to each dataset's Laplace map: briefly, since the map alone is exact here."""
    amortizer = abi.Amortizer(informative(), preconditioner="laplace", random_seed=SEED)
    amortizer.fit(steps=150, validation_simulations=256, random_seed=SEED, progressbar=False)
    return amortizer


@pytest.mark.statistical
def test_preconditioned_flow_alone_resolves_a_posterior_far_narrower_than_the_prior(
    preconditioned,
):
    for seed in (3, 4):
        y = datasets(1, seed=seed)[0]
        result = preconditioned.sample(
            {"y": y}, draws=1000, importance_sampling=False, random_seed=seed
        )
        beta = result.posterior["beta"].values.reshape(-1, 3)
        mean, cov = exact_posterior(y)
        sd = np.sqrt(np.diag(cov))
        error = np.max(np.abs(beta.mean(0) - mean) / sd)
        ratio = beta.std(0) / sd
        # over test seeds 0-4: errors 0.02-0.10 SD, SD ratios within 0.05 of 1
        measure("mean error (posterior SDs)", error, 0.2)
        measure("SD ratio, distance from 1", np.abs(ratio - 1).max(), 0.15)
        assert error < 0.2
        assert np.all(np.abs(ratio - 1) < 0.15), ratio


def test_preconditioned_densities_are_those_of_the_draws(preconditioned):
    """log q of the draws, as sampled and as evaluated (the map's log det included)."""
    y = datasets(1, seed=5)
    z, log_q = preconditioned.sample_unconstrained({"y": y}, draws=200, random_seed=1)
    [dataset], _ = preconditioned.data_spec.datasets({"y": y[0]})
    np.testing.assert_allclose(preconditioned._log_q(z[0], dataset), log_q[0], rtol=1e-5)
    # draws are float64 about a centre far from zero in units of their width
    assert np.all(np.std(z[0], axis=0) < 0.01)


def test_the_ladder_fits_each_datasets_maps_once(preconditioned):
    """Importance sampling draws more proposals and evaluates the flow's density, in
    several calls; the dataset's Newton fit is not repeated for each (it was, per call)."""
    spec = preconditioned.data_spec
    fits = []

    def counted(data):
        fits.append(len(next(iter(data.values()))))
        return spec.preconditioner(data)

    y = {"y": datasets(1, seed=7)[0]}
    [dataset], _ = spec.datasets(y)
    plain = preconditioned._flow(dataset)
    z, log_q = plain.propose(300, 1)
    preconditioned.data_spec = dataclasses.replace(spec, preconditioner=counted)
    try:
        flow = preconditioned._flow(dataset)
        again, again_log_q = flow.propose(300, 1)
        flow.propose(100, 2)
        evaluated = flow.log_q(z)
    finally:
        preconditioned.data_spec = spec
    assert fits == [1]  # one dataset, fitted once for three calls
    np.testing.assert_array_equal(again, z)
    np.testing.assert_array_equal(again_log_q, log_q)
    np.testing.assert_allclose(evaluated, log_q, rtol=1e-6)


def test_preconditioned_amortizer_saves_and_loads(preconditioned, tmp_path):
    path = tmp_path / "pre.abi"
    preconditioned.save(path)
    loaded = abi.Amortizer.load(path, informative())
    assert loaded.config["preconditioner"] == "laplace"
    y = {"y": datasets(1, seed=6)[0]}
    a = preconditioned.sample(y, draws=50, importance_sampling=False, random_seed=2)
    b = loaded.sample(y, draws=50, importance_sampling=False, random_seed=2)
    np.testing.assert_array_equal(a.posterior["beta"].values, b.posterior["beta"].values)


def test_preconditioner_option_is_checked():
    with pytest.raises(ValueError, match="preconditioner must be one of"):
        abi.NetworkConfig(preconditioner="newton")
    with pytest.raises(ValueError, match="has none \\(a pm.Simulator"):
        abi.Amortizer(simulator(), preconditioner="laplace", _pilot=0)
    with pytest.raises(ValueError, match="model comparison has none"):
        abi.ModelComparator({"a": informative(), "b": informative()}, preconditioner="laplace")
