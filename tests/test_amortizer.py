import warnings

import arviz as az
import numpy as np
import pymc as pm
import pytest
import torch

import pymc_abi as abi
from tests.conftest import ARVIZ_1, RESULT_TYPE, SEED, group_names, measure

N_OBS = 10


def conjugate_model(y=None):
    """mu ~ N(0, 1), y_i ~ N(mu, 1): posterior N(sum(y) / (n + 1), 1 / (n + 1))."""
    y = np.zeros(N_OBS) if y is None else y
    with pm.Model(coords={"obs": range(N_OBS)}) as model:
        x = pm.Data("x", np.arange(3.0))
        mu = pm.Normal("mu", 0, 1)
        pm.Deterministic("mu2", 2 * mu + x[0])
        pm.Normal("y", mu, 1, observed=y, dims="obs")
    return model


def analytic(y):
    n = len(y)
    return y.sum() / (n + 1), 1 / np.sqrt(n + 1)


@pytest.fixture(scope="module")
def trained():
    y = np.random.default_rng(SEED).normal(0.7, 1, N_OBS)
    model = conjugate_model(y)
    amortizer = abi.fit(model, steps=1000, batch_size=256, random_seed=SEED + 1, progressbar=False)
    return model, amortizer, y


@pytest.mark.statistical
def test_conjugate_posterior_matches_analytic(trained):
    model, amortizer, _ = trained
    rng = np.random.default_rng(SEED + 5)
    datasets = [{"y": rng.normal(m, 1, N_OBS)} for m in (-1.5, 0.0, 0.8, 2.0)]
    results = amortizer.sample(datasets, draws=1000, random_seed=SEED + 2)
    assert isinstance(results, list) and len(results) == 4
    for data, idata in zip(datasets, results):
        mean, sd = analytic(data["y"])
        draws = idata.posterior["mu"].values.ravel()
        # within 0.25 posterior SDs in the mean, 15% in the SD
        measure("mean error (SD)", abs(draws.mean() - mean) / sd, 0.25)
        measure("SD error", abs(draws.std() / sd - 1), 0.15)
        assert abs(draws.mean() - mean) < 0.25 * sd, (draws.mean(), mean)
        assert abs(draws.std() / sd - 1) < 0.15, (draws.std(), sd)


def test_result_layout(trained):
    model, amortizer, y = trained
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default path warns nowhere, ArviZ included
        idata = amortizer.sample(draws=125, random_seed=3)
        summary = az.summary(idata)
    # what pm.sample returns here: InferenceData (ArviZ 0.x) or DataTree (ArviZ 1.x)
    assert isinstance(idata, RESULT_TYPE)
    assert group_names(idata) == {"posterior", "sample_stats", "observed_data", "constant_data"}
    post = idata.posterior
    assert post["mu"].dims == ("chain", "draw")
    assert dict(post.sizes) == {"chain": 4, "draw": 125}
    np.testing.assert_allclose(post["mu2"].values, 2 * post["mu"].values)
    np.testing.assert_array_equal(idata.observed_data["y"].values, y)
    assert idata.observed_data["y"].dims == ("obs",)
    np.testing.assert_array_equal(idata.observed_data["obs"].values, np.arange(N_OBS))
    np.testing.assert_array_equal(idata.constant_data["x"].values, np.arange(3.0))
    assert idata.sample_stats["flow_log_prob"].shape == (4, 125)
    # independent draws: R-hat about 1 and an ESS near the number of draws
    assert summary.loc["mu", "r_hat"] < 1.02
    assert summary.loc["mu", "ess_bulk"] > 300
    assert idata.posterior.attrs["inference_library"] == "pymc_abi"
    # chains are a layout of independent draws: any number works
    one = amortizer.sample(draws=40, chains=1, random_seed=3)
    assert dict(one.posterior.sizes) == {"chain": 1, "draw": 40}
    with pytest.raises(ValueError, match="chains must be a positive integer"):
        amortizer.sample(chains=0)


def test_users_chain_arviz_and_pymc_onto_the_result(trained):
    model, amortizer, _ = trained
    idata = amortizer.sample(draws=100, random_seed=3)
    if ARVIZ_1:
        plot = az.plot_dist(idata, var_names=["mu"])
    else:
        plot = az.plot_posterior(idata, var_names=["mu"])
    assert plot is not None
    with model:
        pp = pm.sample_posterior_predictive(idata, progressbar=False, random_seed=1)
    assert pp.posterior_predictive["y"].shape == (4, 100, N_OBS)


def test_workflow_order_ppc_then_importance_sampling_then_fallback(trained, tmp_path):
    """PyMC 5.28's PPC with extend_inferencedata appends the observed variable to
    model.observed_RVs a second time; nothing after it may depend on that state."""
    model, amortizer, y = trained
    idata = amortizer.sample(draws=100, random_seed=3)
    with model:
        pm.sample_posterior_predictive(
            idata, extend_inferencedata=True, progressbar=False, random_seed=1
        )
    checked = amortizer.sample(draws=200, importance_sampling=True, random_seed=4)
    assert checked.sample_stats.attrs["reliable"] == 1
    mean, sd = analytic(y)
    assert abs(checked.posterior["mu"].values.mean() - mean) < 0.25 * sd
    # a deliberately over-confident copy falls back to NUTS, after the same PPC
    path = tmp_path / "copy.abi"
    amortizer.save(path)
    bad = abi.Amortizer.load(path, model=model)
    with torch.no_grad():
        bad.net.theta_std.std.mul_(0.02)
    with pytest.warns(UserWarning):
        nuts = bad.sample({"y": y + 3.0}, draws=200, refine=False, fallback="nuts", random_seed=5)
    assert nuts.attrs["fallback"] == "nuts"
    mean, sd = analytic(y + 3.0)
    assert abs(nuts.posterior["mu"].values.mean() - mean) < 0.25 * sd


def test_log_likelihood_group_matches_pymc_and_feeds_loo(trained):
    model, amortizer, _ = trained
    idata = amortizer.sample(draws=250, log_likelihood=True, random_seed=3)
    assert "log_likelihood" in group_names(idata)
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "obs")
    # the same values PyMC computes for these draws
    plain = amortizer.sample(draws=250, random_seed=3)
    with model:
        reference = pm.compute_log_likelihood(plain, progressbar=False)
    np.testing.assert_allclose(
        idata.log_likelihood["y"].values, reference.log_likelihood["y"].values, rtol=1e-10
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loo = az.loo(idata)
    # elpd of 10 standard-normal-ish points: about -10 * 1.4, p_loo about one parameter
    assert -25 < float(loo["elpd"] if ARVIZ_1 else loo["elpd_loo"]) < -8
    assert 0.3 < float(loo["p"] if ARVIZ_1 else loo["p_loo"]) < 3
    table = az.compare({"a": idata, "b": amortizer.sample(draws=250, log_likelihood=True)})
    assert set(table.index) == {"a", "b"}


def test_many_datasets_in_one_result(trained):
    """dataset_dim stacks the datasets: the same draws as the list, one object, a dim."""
    model, amortizer, _ = trained
    rng = np.random.default_rng(7)
    datasets = [{"y": rng.normal(m, 1, N_OBS)} for m in (-1.0, 0.0, 1.0)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a k̂ warning would be fine here
        listed = amortizer.sample(datasets, draws=50, log_likelihood=True, random_seed=4)
        one = amortizer.sample(
            datasets, draws=50, log_likelihood=True, dataset_dim="dataset", random_seed=4
        )
    assert isinstance(one, RESULT_TYPE)
    assert one.posterior["mu"].dims == ("chain", "draw", "dataset")
    assert one.posterior["mu2"].shape == (4, 50, 3)
    assert one.observed_data["y"].dims == ("dataset", "obs")
    assert one.constant_data["x"].dims[0] != "dataset"  # fixed data is shared
    for i, result in enumerate(listed):
        for name in ("mu", "mu2"):
            np.testing.assert_array_equal(
                one.posterior[name].values[:, :, i], result.posterior[name].values
            )
        np.testing.assert_array_equal(
            one.log_likelihood["y"].values[:, :, i], result.log_likelihood["y"].values
        )
        assert one.sample_stats["pareto_k"].values[i] == result.sample_stats.attrs["pareto_k"]
        assert one.sample_stats["reliable"].values[i] == result.sample_stats.attrs["reliable"]
    summary = az.summary(one, var_names=["mu"])
    assert len(summary) == 3
    raw = amortizer.sample(
        datasets, draws=20, importance_sampling=False, dataset_dim="dataset", random_seed=4
    )
    assert set(raw.sample_stats.data_vars) == {"flow_log_prob"}
    with pytest.raises(ValueError, match="give a list"):
        amortizer.sample(datasets[0], draws=5, dataset_dim="dataset")


def test_many_datasets_with_a_nuts_fallback_in_one_result():
    """A dataset refitted by NUTS takes its slot in the stacked result."""
    import logging

    logging.getLogger("pymc").setLevel(logging.ERROR)
    model = conjugate_model()
    amortizer = abi.Amortizer(model, random_seed=0)
    with torch.no_grad():
        amortizer.net.theta_std.std.mul_(0.05)  # far too narrow: every dataset is flagged
    y = np.random.default_rng(5).normal(2.5, 1, N_OBS)
    with pytest.warns(abi.UnreliablePosteriorWarning, match="Pareto k̂"):
        one = amortizer.sample(
            [{"y": y}],
            draws=200,
            chains=2,
            refine=False,
            fallback="nuts",
            dataset_dim="d",
            random_seed=6,
        )
    assert one.sample_stats["fallback"].values.tolist() == [True]
    assert one.sample_stats["tier"].values.tolist() == ["nuts"]
    assert one.sample_stats["seconds"].values[0] > 0  # the ladder's time, NUTS included
    mean, sd = analytic(y)
    draws = one.posterior["mu"].values[:, :, 0]
    assert abs(draws.mean() - mean) < 0.25 * sd
    assert np.isnan(one.sample_stats["flow_log_prob"].values).all()


def test_same_seed_same_draws(trained):
    _, amortizer, _ = trained
    a = amortizer.sample(draws=100, random_seed=4).posterior["mu"].values
    b = amortizer.sample(draws=100, random_seed=4).posterior["mu"].values
    c = amortizer.sample(draws=100, random_seed=5).posterior["mu"].values
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.statistical
def test_log_prob_matches_sample_stats_and_analytic(trained):
    _, amortizer, y = trained
    idata = amortizer.sample(draws=200, random_seed=6)
    lp = amortizer.log_prob(idata)
    np.testing.assert_allclose(lp, idata.sample_stats["flow_log_prob"].values, atol=1e-4)
    # mu has no transform: the density is close to the analytic normal
    mean, sd = analytic(y)
    mu = np.linspace(mean - sd, mean + sd, 5)
    expected = -0.5 * ((mu - mean) / sd) ** 2 - np.log(sd * np.sqrt(2 * np.pi))
    got = amortizer.log_prob({"mu": mu})
    # within 0.25 nats over +-1 SD (a mean off by 0.25 SDs shifts it by that much there)
    measure("log density error", np.abs(got - expected).max(), 0.25)
    np.testing.assert_allclose(got, expected, atol=0.25)
    # another dataset shifts the density
    other = amortizer.log_prob({"mu": mu}, observed={"y": y + 3})
    assert np.all(other < got)


def test_save_load_round_trip(trained, tmp_path):
    model, amortizer, _ = trained
    path = tmp_path / "model.abi"
    amortizer.save(path)
    loaded = abi.Amortizer.load(path, model=model)
    a = amortizer.sample(draws=50, random_seed=9).posterior["mu"].values
    b = loaded.sample(draws=50, random_seed=9).posterior["mu"].values
    np.testing.assert_array_equal(a, b)
    assert loaded.history.loss == amortizer.history.loss
    assert "trained" in repr(loaded)

    with pm.Model() as other:
        s = pm.HalfNormal("s", 1)
        pm.Normal("y", 0, s, observed=np.zeros(N_OBS))
    with pytest.raises(
        abi.ModelChangedError, match="trained on another model: .*variable 's' is new"
    ):
        abi.Amortizer.load(path, model=other)

    blob = torch.load(path, weights_only=True)
    blob["version"] = 999
    torch.save(blob, tmp_path / "future.abi")
    with pytest.raises(ValueError, match="format version 999"):
        abi.Amortizer.load(tmp_path / "future.abi", model=model)
    (tmp_path / "junk.abi").write_text("not a model")
    with pytest.raises(abi.DamagedFileError, match="not a readable pymc-abi amortizer"):
        abi.Amortizer.load(tmp_path / "junk.abi", model=model)


def test_observed_errors(trained):
    _, amortizer, _ = trained
    with pytest.raises(ValueError, match="'z'.*not observed variables"):
        amortizer.sample({"z": np.zeros(3)})
    with pytest.raises(ValueError, match=r"shape \(7,\).*trained on shape \(10,\)"):
        amortizer.sample({"y": np.zeros(7)})
    with pytest.raises(ValueError, match="NaN or inf"):
        amortizer.sample({"y": np.full(N_OBS, np.nan)})


def test_plot_loss(trained):
    _, amortizer, _ = trained
    ax = abi.plot_loss(amortizer)
    assert len(ax.get_lines()) == 2
    np.testing.assert_array_equal(ax.get_lines()[1].get_ydata(), amortizer.history.val_loss)


@pytest.mark.statistical
def test_offline_training_and_automatic_summary():
    # a Gamma-Poisson-like positive parameter, data small and fixed-size: identity summary
    with pm.Model() as model:
        lam = pm.Gamma("lam", 2.0, 1.0)
        pm.Poisson("y", lam, shape=3, observed=[1, 2, 3])
    amortizer = abi.fit(
        model, simulations=4000, epochs=15, batch_size=128, random_seed=SEED, progressbar=False
    )
    assert amortizer.config["summary_kinds"] == {"y": "deepset"}
    idata = amortizer.sample(draws=1000, random_seed=SEED + 1)
    # conjugate: Gamma(2 + 6, 1 + 3)
    draws = idata.posterior["lam"].values.ravel()
    mean, sd = 8 / 4, np.sqrt(8) / 4
    measure("mean error (SD)", abs(draws.mean() - mean) / sd, 0.25)
    measure("SD error", abs(draws.std() / sd - 1), 0.2)
    assert abs(draws.mean() - mean) < 0.25 * sd
    assert abs(draws.std() / sd - 1) < 0.2
    assert draws.min() > 0


def test_non_finite_simulations_are_dropped_and_reported():
    with pm.Model() as model:
        x = pm.Normal("x", 0, 1)
        # sigma is NaN when x < -2 (2.3% of simulations)
        pm.Normal("y", 0, pm.math.sqrt(x + 2), observed=np.zeros(2))
    with pytest.warns(
        abi.DroppedSimulationsWarning, match="simulations held NaN or inf and were dropped"
    ):
        amortizer = abi.fit(model, steps=20, batch_size=64, random_seed=0, progressbar=False)
    assert amortizer.dropped_simulations > 0


def test_initialization_and_training_ignore_the_global_torch_seed():
    """random_seed alone decides everything (it once missed the summary network's init)."""
    results = []
    for global_seed in (123, 456):
        torch.manual_seed(global_seed)
        amortizer = abi.fit(
            conjugate_model(),
            steps=20,
            random_seed=7,
            progressbar=False,
            validation_simulations=128,
        )
        results.append((amortizer.history.val_loss, amortizer.sample(draws=5, random_seed=1)))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(
        results[0][1].posterior["mu"].values, results[1][1].posterior["mu"].values
    )
    # and training leaves the global torch generator alone
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    abi.fit(
        conjugate_model(), steps=5, random_seed=7, progressbar=False, validation_simulations=128
    )
    assert torch.rand(1) == expected
