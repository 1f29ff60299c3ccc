"""Importance sampling with the model's exact density (PSIS), and the NUTS fallback."""

import logging

import numpy as np
import pymc as pm
import pytest
import torch

import pymc_abi as abi
from tests.conftest import SEED, measure

N_OBS = 10


def conjugate(y=None):
    """mu ~ N(0, 1), y_i ~ N(mu, 1): posterior N(sum(y) / (n + 1), 1 / (n + 1))."""
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        pm.Normal("y", mu, 1, observed=np.zeros(N_OBS) if y is None else y)
    return model


def analytic(y):
    return y.sum() / (len(y) + 1), 1 / np.sqrt(len(y) + 1)


def test_joint_logp_matches_pymc():
    model = conjugate()
    space = abi.ParameterSpace(model)
    logp = abi.JointLogp(space)
    y = np.random.default_rng(0).normal(size=N_OBS)
    z = np.linspace(-2, 2, 7)[:, None]
    reference = pm.observe(model, {"y": y}).compile_logp(jacobian=True)
    expected = [reference({"mu": v[0]}) for v in z]
    np.testing.assert_allclose(logp(z, {"y": y}), expected, rtol=1e-10)


@pytest.mark.parametrize("kind", ["garch11", "user_scan"])
def test_joint_logp_of_a_scan_is_pymcs_and_one_scan_for_the_batch(kind):
    """A density that holds a scan (GARCH's volatility, a user's recursion) is evaluated for
    a batch of draws by one batched scan, and equals PyMC's density draw by draw."""
    from pytensor.scan.op import Scan
    from pytensor.tensor.blockwise import Blockwise

    from tests import models

    model = getattr(models, kind)()
    space = abi.ParameterSpace(model)
    logp = abi.JointLogp(space)
    y = abi.ModelSimulator(model).sample(1, random_seed=3)["y"][0]
    z = np.random.default_rng(0).normal(0, 0.5, (9, space.ndim))
    values = logp(z, {"y": y})
    reference = pm.observe(model, {"y": y}).compile_logp(jacobian=True)
    expected = [
        reference(
            {
                name: row[space.slices[name]].reshape(space.shapes[name])
                for name in space.value_names
            }
        )
        for row in z
    ]
    np.testing.assert_allclose(values, expected, rtol=1e-9)
    compiled = next(iter(logp._cache._functions.values()))
    nodes = compiled.fn.maker.fgraph.apply_nodes
    assert any(isinstance(node.op, Scan) for node in nodes)
    assert not any(isinstance(node.op, Blockwise) for node in nodes)


def test_importance_sampling_corrects_an_undertrained_amortizer():
    model = conjugate()
    amortizer = abi.fit(model, steps=40, random_seed=0, progressbar=False)
    y = np.random.default_rng(1).normal(0.8, 1, N_OBS)
    mean, sd = analytic(y)
    plain = amortizer.sample({"y": y}, draws=1000, importance_sampling=False, random_seed=2)
    plain = plain.posterior["mu"].values
    with _maybe_warns():
        idata = amortizer.sample({"y": y}, draws=1000, importance_sampling=True, random_seed=2)
    corrected = idata.posterior["mu"].values
    with _maybe_warns():  # on by default: the model has a density
        default = amortizer.sample({"y": y}, draws=1000, random_seed=2).posterior["mu"].values
    np.testing.assert_array_equal(default, corrected)
    err_plain = abs(plain.mean() - mean) / sd + abs(plain.std() / sd - 1)
    err_is = abs(corrected.mean() - mean) / sd + abs(corrected.std() / sd - 1)
    assert err_plain > 0.5, err_plain  # the amortizer is really off
    assert err_is < 0.5 * err_plain, (err_is, err_plain)
    stats = idata.sample_stats
    assert {"pareto_k", "ess", "ess_fraction", "proposals", "distinct_draws", "reliable"} <= set(
        stats.attrs
    )
    # proposals were added until their ESS reached twice the draws (or 16 times the draws)
    assert stats.attrs["ess"] >= 8000 or stats.attrs["proposals"] == 16 * 4000
    assert stats["model_log_prob"].shape == (4, 1000)


class _maybe_warns:
    """Accept, but do not require, the k̂ warning (an undertrained flow may or may not be
    close enough for k̂ < 0.7)."""

    def __enter__(self):
        self._ctx = pytest.warns(UserWarning)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            self._ctx.__exit__(*exc)
        except pytest.fail.Exception:
            pass
        return False


@pytest.mark.statistical
def test_well_trained_amortizer_is_reliable_and_keeps_its_draws():
    """Near-uniform weights are reliable whatever k̂ says (k̂ was 1.13 here once), and
    importance sampling keeps nearly every draw distinct."""
    model = conjugate()
    amortizer = abi.fit(model, steps=800, random_seed=SEED, progressbar=False)
    y = np.random.default_rng(SEED + 3).normal(-0.5, 1, N_OBS)
    idata = amortizer.sample({"y": y}, draws=500, importance_sampling=True, random_seed=4)
    attrs = idata.sample_stats.attrs
    measure("1 - ess_fraction", 1 - attrs["ess_fraction"], 0.1)
    measure("1 - distinct_draws", 1 - attrs["distinct_draws"], 0.1)
    assert attrs["reliable"] == 1, attrs
    assert attrs["ess_fraction"] > 0.9 and attrs["distinct_draws"] > 0.9, attrs
    mean, sd = analytic(y)
    draws = idata.posterior["mu"].values
    measure("mean error (SD)", abs(draws.mean() - mean) / sd, 0.15)
    assert abs(draws.mean() - mean) < 0.15 * sd


def _overconfident(amortizer):
    """An untrained flow, shrunk: draws about 0 where the posterior sits about 3, and far
    too narrow. (Untrained alone, it is wider than the posterior, which importance
    sampling handles.)"""
    with torch.no_grad():
        amortizer.net.theta_std.std.mul_(0.05)
    return amortizer


def test_nuts_fallback_for_a_bad_amortizer():
    logging.getLogger("pymc").setLevel(logging.ERROR)
    model = conjugate()
    amortizer = _overconfident(abi.Amortizer(model, random_seed=0))
    y = np.random.default_rng(5).normal(3.0, 1, N_OBS)  # far in the prior tail
    with pytest.warns(abi.UnreliablePosteriorWarning, match="Pareto k̂"):
        idata = amortizer.sample({"y": y}, draws=250, refine=False, fallback="nuts", random_seed=6)
    assert idata.attrs["fallback"] == "nuts"
    assert idata.sample_stats.attrs["reliable"] == 0
    assert idata.sample_stats.attrs["tier"] == "nuts"
    mean, sd = analytic(y)
    draws = idata.posterior["mu"].values
    assert abs(draws.mean() - mean) < 0.2 * sd
    assert abs(draws.std() / sd - 1) < 0.15


def test_nuts_fallback_for_a_model_with_initial_values():
    """pm.observe refuses models with initval=; the fallback must not."""
    logging.getLogger("pymc").setLevel(logging.ERROR)
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1, initval=0.5)
        pm.Normal("y", mu, 1, observed=np.zeros(N_OBS))
    amortizer = _overconfident(abi.Amortizer(model, random_seed=0))
    y = np.random.default_rng(5).normal(3.0, 1, N_OBS)
    with pytest.warns(abi.UnreliablePosteriorWarning, match="Pareto k̂"):
        idata = amortizer.sample({"y": y}, draws=200, refine=False, fallback="nuts", random_seed=6)
    assert idata.attrs["fallback"] == "nuts"
    mean, sd = analytic(y)
    assert abs(idata.posterior["mu"].values.mean() - mean) < 0.25 * sd
    assert model.rvs_to_initial_values[mu] == 0.5  # the user's model is as it was


def test_simulator_model_cannot_importance_sample():
    def sim(rng, mu, size=None):
        return rng.normal(mu, 1, size=size)

    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        pm.Simulator("y", sim, params=(mu,), observed=np.zeros(5))
    with pytest.warns(abi.UnvectorizedWarning, match="Could not vectorize"):
        amortizer = abi.Amortizer(model, random_seed=0, _pilot=64)
    assert not amortizer.has_density
    with pytest.raises(ValueError, match="'y' is a pm.Simulator.*no exact density"):
        amortizer.sample(importance_sampling=True)
    with pytest.raises(ValueError, match="'y' is a pm.Simulator.*no exact density"):
        amortizer.sample(fallback="nuts")
    # by default, a model without a density gets the flow's own draws
    idata = amortizer.sample(draws=10, random_seed=1)
    assert set(idata.sample_stats.data_vars) == {"flow_log_prob"}
    assert "pareto_k" not in idata.sample_stats.attrs


def test_other_data_sizes_importance_sample_and_fall_back(tmp_path):
    """A varying dim: the model's density and NUTS work at lengths other than the model's."""
    logging.getLogger("pymc").setLevel(logging.ERROR)
    with pm.Model(coords={"obs": range(N_OBS)}) as model:
        mu = pm.Normal("mu", 0, 1)
        pm.Normal("y", mu, 1, observed=np.zeros(N_OBS), dims="obs")
    amortizer = abi.Amortizer(model, dim_lengths={"obs": (5, 40)}, random_seed=0, _pilot=256)
    amortizer = _overconfident(amortizer)
    y = np.random.default_rng(7).normal(3.0, 1, 37)  # far in the prior tail
    mean, sd = analytic(y)

    z = np.array([[-0.5], [0.4], [1.9]])
    reference = pm.observe(_conjugate_of_length(37), {"y": y}).compile_logp(jacobian=True)
    np.testing.assert_allclose(
        abi.JointLogp(amortizer.parameters)(z, {"y": y}, dim_lengths={"obs": 37}),
        [reference({"mu": v[0]}) for v in z],
        rtol=1e-10,
    )

    # untrained, so k̂ is large and NUTS takes over, with coords of the dataset's length
    with pytest.warns(abi.UnreliablePosteriorWarning, match="Pareto k̂"):
        idata = amortizer.sample({"y": y}, draws=250, refine=False, fallback="nuts", random_seed=8)
    assert idata.attrs["fallback"] == "nuts"
    assert idata.observed_data.sizes["obs"] == 37
    draws = idata.posterior["mu"].values
    assert abs(draws.mean() - mean) < 0.2 * sd
    assert abs(draws.std() / sd - 1) < 0.15


def _conjugate_of_length(n):
    with pm.Model(coords={"obs": range(n)}) as model:
        mu = pm.Normal("mu", 0, 1)
        pm.Normal("y", mu, 1, observed=np.zeros(n), dims="obs")
    return model


def _gaussian_proposal(shift, scale, d=2, seed=0):
    rng = np.random.default_rng(seed)

    def propose(n):
        z = shift + scale * rng.normal(size=(n, d))
        log_q = -0.5 * (((z - shift) / scale) ** 2).sum(1) - d * np.log(scale)
        return z, log_q

    def log_density(z):
        return -0.5 * (z**2).sum(1)

    return propose, log_density


def test_importance_resample_exact_and_bad_proposals():
    from pymc_abi.inference.importance import importance_resample

    rng = np.random.default_rng(1)
    exact = importance_resample(*_gaussian_proposal(0.0, 1.0), 2000, rng)
    assert exact.reliable and exact.ess_fraction > 0.99
    assert exact.proposals == 4000 and exact.distinct > 0.99  # systematic: no repeats
    np.testing.assert_allclose(exact.z.mean(0), 0.0, atol=0.1)

    shifted = importance_resample(*_gaussian_proposal(0.8, 1.0), 2000, rng)
    assert shifted.reliable and shifted.proposals > 4000  # more proposals, as needed
    np.testing.assert_allclose(shifted.z.mean(0), 0.0, atol=0.1)  # the shift is corrected
    np.testing.assert_allclose(shifted.z.std(0), 1.0, atol=0.1)
    assert shifted.distinct > 0.8

    narrow = importance_resample(*_gaussian_proposal(0.0, 0.35), 2000, rng)
    assert not narrow.reliable and narrow.pareto_k > 0.7
    assert narrow.proposals == 16 * 2000  # capped


def test_nearly_uniform_weights_are_reliable_whatever_k_hat():
    """A plateau of log-weights at their maximum (a near-exact flow) fools the Pareto fit."""
    from pymc_abi.inference.importance import importance_resample

    rng = np.random.default_rng(0)
    plateau = np.minimum(rng.normal(0.0, 0.3, 4000), 0.0) * 0.02  # max weight ~ mean

    def propose(n):
        return rng.normal(size=(n, 1)), np.zeros(n)

    values = iter([plateau, *[np.minimum(rng.normal(0, 0.3, 4000), 0) * 0.02] * 20])
    result = importance_resample(propose, lambda z: next(values)[: len(z)], 2000, rng)
    assert result.ess_fraction > 0.99
    assert result.reliable


def test_nuts_tier_takes_its_mass_matrix_from_many_distinct_draws():
    """With enough distinct draws, NUTS starts from them with their variance as its mass
    matrix and tunes for 500 steps; with few, PyMC's own initialization and 1,000."""
    from pymc_abi.inference.nuts import SHORT_TUNE, nuts

    logging.getLogger("pymc").setLevel(logging.ERROR)
    model = conjugate()
    amortizer = abi.Amortizer(model, random_seed=0, _pilot=64)
    y = np.random.default_rng(9).normal(1.0, 1, N_OBS)
    mean, sd = analytic(y)
    [dataset], _ = amortizer.data_spec.datasets({"y": y}, None)
    rng = np.random.default_rng(0)
    for z, tune in [(rng.normal(mean, sd, (400, 1)), SHORT_TUNE), (np.full((400, 1), mean), 1000)]:
        values = amortizer.parameters.to_constrained(z)
        idata = nuts(
            amortizer.data_spec,
            dataset,
            values,
            z,
            draws=300,
            chains=2,
            seed=1,
            attrs={"reliable": 0},
            log_likelihood=False,
        )
        assert idata.posterior.attrs["tuning_steps"] == tune
        assert idata.sample_stats.attrs["tier"] == "nuts"
        draws = idata.posterior["mu"].values
        assert abs(draws.mean() - mean) < 0.25 * sd
        assert abs(draws.std() / sd - 1) < 0.2


def test_many_draws_are_oversampled_only_for_the_first_twenty_thousand():
    """Beyond OVERSAMPLED draws, one unit of ESS per draw is asked for and at most 4
    proposals per draw are drawn; the density never sees more than CHUNK rows at once."""
    from pymc_abi.inference import importance

    assert importance.ess_target(1000) == 2000
    assert importance.ess_target(100_000) == 2 * 20_000 + 80_000
    assert importance.proposal_limit(100_000) == 16 * 20_000 + 4 * 80_000
    propose, log_density = _gaussian_proposal(0.3, 1.0)
    seen = []

    def recorded(z):
        seen.append(len(z))
        return log_density(z)

    rng = np.random.default_rng(3)
    result = importance.importance_resample(propose, recorded, 100_000, rng)
    assert max(seen) <= importance.CHUNK and sum(seen) == result.proposals
    assert result.reliable and result.ess >= 0.999 * importance.ess_target(100_000)
    assert result.proposals <= importance.proposal_limit(100_000)
    # the draws follow the target, N(0, 1): 100,000 draws, means within 5 standard errors
    np.testing.assert_allclose(result.z.mean(0), 0.0, atol=5 / np.sqrt(result.ess))
    np.testing.assert_allclose(result.z.std(0), 1.0, atol=0.01)
    assert result.distinct > 0.9


def test_flow_density_in_passes_equals_one_pass(monkeypatch):
    from pymc_abi.inference import sampling

    model = conjugate()
    amortizer = abi.Amortizer(model, random_seed=0, _pilot=64)
    y = np.random.default_rng(9).normal(1.0, 1, N_OBS)
    z = np.random.default_rng(1).normal(size=(1000, 1))
    one = amortizer.log_prob({"mu": z[:, 0]}, {"y": y})
    monkeypatch.setitem(sampling.ROWS_PER_PASS, "cpu", 7)
    np.testing.assert_allclose(amortizer.log_prob({"mu": z[:, 0]}, {"y": y}), one, rtol=1e-6)


def test_a_draw_outside_the_support_leaves_the_other_draws_of_the_batch_alone():
    """PyMC's parameter checks (sigma > 0) hold per draw: one draw whose scale underflows
    to 0, or that is NaN, is -inf or NaN itself, not every draw of its batch."""
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", mu, sigma, observed=np.zeros(N_OBS))
    logp = abi.JointLogp(abi.ParameterSpace(model))
    y = {"y": np.random.default_rng(0).normal(size=N_OBS)}
    z = np.array([[0.1, 0.2], [0.0, -1e5], [0.3, -0.1], [np.nan, 0.0]])
    alone = np.array([logp(row[None], y)[0] for row in z])
    together = logp(z, y)
    assert alone[1] == -np.inf and np.isnan(alone[3])
    np.testing.assert_array_equal(together, alone)
    value, _ = logp.value_and_grad(z, y)
    np.testing.assert_array_equal(value, alone)


def _eight_schools():
    with pm.Model(coords={"school": range(8)}) as model:
        mu = pm.Normal("mu", 0, 5)
        tau = pm.HalfCauchy("tau", 5)  # its checks nest: the case that once failed
        theta = pm.Normal("theta", mu, tau, dims="school")
        pm.Normal("y", theta, 10.0, observed=np.zeros(8), dims="school")
    return model


@pytest.mark.parametrize(
    "name",
    ["eight_schools", "hierarchical", "lkj_mvnormal", "dirichlet", "censored", "binomial_logit"],
)
def test_joint_logp_of_models_with_nested_checks_is_pymcs(name):
    """Parameter checks inside other checks' graphs (a HalfCauchy scale of a centred
    hierarchy, a Cholesky factor) all become per-draw switches, and the density stays
    PyMC's."""
    from tests import models

    model = _eight_schools() if name == "eight_schools" else getattr(models, name)()
    space = abi.ParameterSpace(model)
    logp = abi.JointLogp(space)
    sim = abi.ModelSimulator(model, random_seed=0)
    draws = sim.sample(4, random_seed=1)
    z = space.to_unconstrained(draws)
    observed = {rv.name: draws[rv.name][0] for rv in model.observed_RVs}
    reference = pm.observe(model, observed).compile_logp(jacobian=True)
    points = [
        {n: z[i][space.slices[n]].reshape(space.shapes[n]) for n in space.value_names}
        for i in range(len(z))
    ]
    np.testing.assert_allclose(logp(z, observed), [reference(p) for p in points], rtol=1e-10)
