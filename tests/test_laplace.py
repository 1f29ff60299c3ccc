"""The refinement tier of the per-dataset ladder: a Laplace fit on the exact density, and
the defensive mixture of it and the flow, importance-sampled."""

import logging

import numpy as np
import pymc as pm
import pytest
from scipy import stats

import pymc_abi as abi
from pymc_abi.inference.laplace import Laplace, MixtureProposal, laplace_fit

X = np.random.default_rng(11).normal(size=(100, 3))
NOISE = 0.05  # the noise SD, known: the posterior of beta is normal, ~1/400 of the prior SD


def informative(y=None):
    """beta ~ N(0, 10^2 I), y ~ N(X beta, 0.05^2): a posterior far narrower than the prior."""
    with pm.Model(coords={"coef": range(3)}) as model:
        beta = pm.Normal("beta", 0, 10, dims="coef")
        pm.Normal("y", X @ beta, NOISE, observed=np.zeros(100) if y is None else y)
    return model


def exact_posterior(y):
    precision = X.T @ X / NOISE**2 + np.eye(3) / 100
    cov = np.linalg.inv(precision)
    return cov @ X.T @ y / NOISE**2, cov


def data(seed=3):
    return X @ np.array([1.5, -0.7, 0.2]) + np.random.default_rng(seed).normal(0, NOISE, 100)


def test_laplace_fit_of_a_normal_posterior_is_exact():
    y = data()
    logp = abi.JointLogp(abi.ParameterSpace(informative()))
    fit = laplace_fit(lambda z: logp.value_and_grad(z, {"y": y}), np.zeros(3))
    assert isinstance(fit, Laplace)
    mean, cov = exact_posterior(y)
    sd = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(fit.mean, mean, atol=1e-4 * sd.min())
    np.testing.assert_allclose(fit.sd, sd, rtol=1e-4)
    np.testing.assert_allclose(fit.chol @ fit.chol.T, np.linalg.inv(cov), rtol=1e-4)


def test_value_and_grad_matches_pymc():
    y = data()
    model = pm.observe(informative(), {"y": y})
    logp = abi.JointLogp(abi.ParameterSpace(informative()))
    z = np.random.default_rng(0).normal(size=(4, 3))
    value, grad = logp.value_and_grad(z, {"y": y})
    np.testing.assert_allclose(value, logp(z, {"y": y}), rtol=1e-12)
    dlogp = model.compile_dlogp()
    np.testing.assert_allclose(grad, [dlogp({"beta": v}) for v in z], rtol=1e-10)


def test_laplace_fit_says_why_where_there_is_no_mode():
    def saddle(z):  # log p = -z0^2 / 2 + z1^2 / 2: no maximum
        value = -0.5 * z[:, 0] ** 2 + 0.5 * np.tanh(z[:, 1]) ** 2
        grad = np.column_stack([-z[:, 0], np.tanh(z[:, 1]) / np.cosh(z[:, 1]) ** 2])
        return value, grad

    why = laplace_fit(saddle, np.array([0.3, 0.0]))
    assert isinstance(why, str) and "not positive definite" in why


def test_mixture_densities_are_the_mixtures_of_their_parts():
    rng = np.random.default_rng(2)
    chol = np.linalg.cholesky(np.array([[4.0, 1.0], [1.0, 2.0]]))  # precision A = L L^T
    fit = Laplace(mean=np.array([1.0, -2.0]), chol=chol, log_p=0.0, evaluations=0)
    cov = np.linalg.inv(chol @ chol.T)
    z = rng.normal(size=(50, 2))
    np.testing.assert_allclose(
        fit.normal_log_prob(z), stats.multivariate_normal(fit.mean, cov).logpdf(z), rtol=1e-10
    )
    np.testing.assert_allclose(
        fit.t_log_prob(z, nu=4.0),
        stats.multivariate_t(fit.mean, cov, df=4.0).logpdf(z),
        rtol=1e-10,
    )
    np.testing.assert_allclose(np.cov(fit.sample_normal(200_000, rng).T), cov, atol=0.01)
    np.testing.assert_allclose(np.median(fit.sample_t(200_000, rng), axis=0), fit.mean, atol=0.01)

    flow = stats.multivariate_normal(np.zeros(2), 100**2 * np.eye(2))
    mixture = MixtureProposal(
        fit,
        lambda n, seed: (z := flow.rvs(n, random_state=seed).reshape(n, 2), flow.logpdf(z)),
        lambda z: flow.logpdf(z),
    )
    draws, log_q = mixture(40_000, seed=5)
    expected = np.logaddexp.reduce(
        [
            np.log(0.2) + flow.logpdf(draws),
            np.log(0.5) + stats.multivariate_normal(fit.mean, cov).logpdf(draws),
            np.log(0.3) + stats.multivariate_t(fit.mean, cov, df=4.0).logpdf(draws),
        ]
    )
    np.testing.assert_allclose(log_q, expected, rtol=1e-10)
    # the draws follow the mixture: a fifth of them from the flow, which is far wider
    far = np.linalg.norm(draws - fit.mean, axis=1) > 10
    assert 0.19 < far.mean() < 0.21


@pytest.fixture(scope="module")
def undertrained():
    """An amortizer whose flow is far wider than this model's posteriors."""
    return abi.fit(informative(), steps=60, random_seed=0, progressbar=False)


def test_ladder_answers_informative_data_with_the_laplace_tier(undertrained):
    y = data()
    mean, cov = exact_posterior(y)
    sd = np.sqrt(np.diag(cov))
    with pytest.warns(abi.UnreliablePosteriorWarning, match=r"Pareto k̂.*tiers tried: flow, \d"):
        flow_only = undertrained.sample(
            {"y": y}, draws=500, refine=False, fallback=False, random_seed=1
        )
    assert flow_only.sample_stats.attrs["tier"] == "flow"
    assert flow_only.sample_stats.attrs["reliable"] == 0

    result = undertrained.sample({"y": y}, draws=500, random_seed=1)  # no warning
    attrs = result.sample_stats.attrs
    assert attrs["tier"] == "laplace" and attrs["reliable"] == 1, attrs
    # the flow's k̂: above 0.7, or nan where one weight dominates and no tail fits (ArviZ 1)
    assert not attrs["flow_pareto_k"] <= 0.7 and attrs["pareto_k"] <= 0.7
    assert attrs["seconds"] > 0
    draws = result.posterior["beta"].values.reshape(-1, 3)
    # 2,000 draws: the mean of each is within 0.1 posterior SD (2.2 standard errors)
    assert np.all(np.abs(draws.mean(0) - mean) < 0.1 * sd), (draws.mean(0) - mean) / sd
    assert np.all(np.abs(draws.std(0) / sd - 1) < 0.1), draws.std(0) / sd
    # flow_log_prob stays the flow's own density of the returned draws
    flat = result.posterior["beta"].values.reshape(-1, 3)
    np.testing.assert_allclose(
        result.sample_stats["flow_log_prob"].values.reshape(-1),
        undertrained.log_prob({"beta": flat}, {"y": y}),
        rtol=1e-4,
    )


def test_ladder_is_reproducible_and_per_dataset_in_one_result(undertrained):
    ys = [data(3), data(4)]
    one = undertrained.sample([{"y": y} for y in ys], draws=200, dataset_dim="d", random_seed=7)
    again = undertrained.sample([{"y": y} for y in ys], draws=200, dataset_dim="d", random_seed=7)
    np.testing.assert_array_equal(one.posterior["beta"].values, again.posterior["beta"].values)
    assert one.sample_stats["tier"].values.tolist() == ["laplace", "laplace"]
    assert one.sample_stats["reliable"].values.tolist() == [1, 1]
    assert one.sample_stats["seconds"].dims == ("d",)


def test_refine_needs_importance_sampling(undertrained):
    with pytest.raises(ValueError, match="refine=True.*needs importance sampling"):
        undertrained.sample(refine=True, importance_sampling=False)


def test_a_far_too_wide_flow_hands_over_to_the_laplace_tier(caplog):
    """An untrained flow on 400 rows: its weights are bounded (k̂ fine) but its ESS is a few
    percent of its proposals; the Laplace tier answers with a fraction of the proposals,
    and the log says how to make the flow itself right."""
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        pm.Normal("y", mu, 1, observed=np.zeros(400))
    amortizer = abi.Amortizer(model, random_seed=0, _pilot=256)
    y = np.random.default_rng(2).normal(0.5, 1, 400)
    mean, sd = y.sum() / 401, 1 / np.sqrt(401)
    flow = amortizer.sample({"y": y}, draws=500, refine=False, fallback=False, random_seed=1)
    with caplog.at_level(logging.INFO, logger="pymc_abi"):
        ladder = amortizer.sample({"y": y}, draws=500, random_seed=1)
    [line] = [r.getMessage() for r in caplog.records if "Laplace tier answered" in r.message]
    assert "far too wide" in line and "preconditioner='laplace'" in line
    assert flow.sample_stats.attrs["tier"] == "flow" and flow.sample_stats.attrs["reliable"]
    assert flow.sample_stats.attrs["ess_fraction"] < 0.1
    attrs = ladder.sample_stats.attrs
    assert attrs["tier"] == "laplace" and attrs["reliable"] == 1
    assert attrs["proposals"] < flow.sample_stats.attrs["proposals"] / 2
    for result in (flow, ladder):
        draws = result.posterior["mu"].values
        assert abs(draws.mean() - mean) < 0.1 * sd and abs(draws.std() / sd - 1) < 0.1


def test_better_of_two_importance_results():
    from pymc_abi.inference.importance import ImportanceResult

    def result(k, ess):
        return ImportanceResult(np.zeros((1, 1)), [0.0], [0.0], k, ess, 1000, 1.0)

    assert result(0.5, 100).better_than(result(0.9, 800))  # reliable first
    assert result(0.5, 600).better_than(result(0.2, 500))  # then the larger ESS
    assert result(0.9, 10).better_than(result(1.5, 500))  # both unreliable: smaller k̂
