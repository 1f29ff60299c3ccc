"""Validation toolbox: SBC, calibration metrics, plots and C2ST on a small trained model."""

import numpy as np
import pymc as pm
import pytest
import torch

import pymc_abi as abi
from pymc_abi.diagnostics import rank_bins, rank_ecdf_band
from tests import models
from tests.conftest import RESULT_TYPE, SEED, group_names, measure

N_SIM = 500
DRAWS = 300


@pytest.fixture(scope="module")
def model():
    with pm.Model(coords={"obs": range(20)}) as m:
        mu = pm.Normal("mu", 0, 1)
        s = pm.HalfNormal("s", 1)
        pm.Deterministic("mu_plus_s", mu + s)
        # data with a spread: zeros would make the posterior improper (s -> 0)
        pm.Normal("y", mu, s, observed=np.linspace(-1.0, 1.0, 20), dims="obs")
    return m


@pytest.fixture(scope="module")
def amortizer(model):
    return abi.fit(model, steps=1000, random_seed=SEED, progressbar=False)


@pytest.fixture(scope="module")
def result(amortizer):
    return abi.sbc(
        amortizer, num_simulations=N_SIM, draws=DRAWS, random_seed=SEED + 1, progressbar=False
    )


@pytest.fixture(scope="module")
def miscalibrated_result(amortizer, model, tmp_path_factory):
    """SBC of a deliberately miscalibrated copy: the trained flow with its draws shrunk
    towards the standardization mean (over-confident and biased).

    (An untrained flow is no test case: it draws roughly from the prior, and the prior is
    calibrated in the SBC sense.)
    """
    path = tmp_path_factory.mktemp("sbc") / "copy.abi"
    amortizer.save(path)
    bad = abi.Amortizer.load(path, model=model)
    with torch.no_grad():
        bad.net.theta_std.std.mul_(0.3)
    return abi.sbc(bad, num_simulations=N_SIM, draws=100, random_seed=1, progressbar=False)


# ---------------------------------------------------------------------- sbc
def test_sbc_layout(result, amortizer):
    assert isinstance(result, RESULT_TYPE)
    assert group_names(result) == {"prior_sbc", "prior", "sbc_stats"}
    ranks = result.prior_sbc
    assert set(ranks.data_vars) == {"mu", "s", "mu_plus_s"}
    for name in ranks.data_vars:
        assert ranks[name].dims == ("chain", "draw")
        assert ranks[name].shape == (1, N_SIM)
        assert np.issubdtype(ranks[name].dtype, np.integer)
        assert 0 <= int(ranks[name].min()) and int(ranks[name].max()) <= DRAWS
        assert result.prior[name].shape == (1, N_SIM)
    assert ranks.attrs["draws"] == DRAWS and ranks.attrs["num_simulations"] == N_SIM

    stats = result.sbc_stats
    names = amortizer.parameters.names
    assert names == ["mu", "s_log__"]
    assert stats["parameter"].values.tolist() == names
    assert stats["variable"].values.tolist() == ["mu", "s"]
    for name in (
        "rank",
        "true_value",
        "posterior_mean",
        "posterior_median",
        "posterior_sd",
        "z_score",
        "contraction",
    ):
        assert stats[name].dims == ("chain", "draw", "parameter")
        assert stats[name].shape == (1, N_SIM, 2)
    # the flat truths are the unconstrained prior draws: mu as is, log(s)
    truth = stats["true_value"].values[0]
    np.testing.assert_allclose(truth[:, 0], result.prior["mu"].values[0], rtol=1e-12)
    np.testing.assert_allclose(np.exp(truth[:, 1]), result.prior["s"].values[0], rtol=1e-10)
    np.testing.assert_allclose(
        result.prior["mu_plus_s"].values, result.prior["mu"].values + result.prior["s"].values
    )
    # ranks are invariant under the monotone transforms (mu: identity; s: exp)
    flat_rank = stats["rank"].values[0]
    np.testing.assert_array_equal(flat_rank[:, 0], ranks["mu"].values[0])
    assert np.mean(flat_rank[:, 1] == ranks["s"].values[0]) >= 0.99
    z = (stats["posterior_mean"] - stats["true_value"]) / stats["posterior_sd"]
    np.testing.assert_allclose(stats["z_score"], z)


def test_sbc_layout_vector_simplex_and_covariates():
    """Model dims and coords, one rank per simplex weight, per-chunk sizes and covariates.

    Layout only: untrained amortizers, so no calibration is expected.
    """
    vector = abi.Amortizer(models.vector_dims(), random_seed=0)
    r = abi.sbc(vector, num_simulations=30, draws=20, random_seed=1, progressbar=False)
    assert r.prior_sbc["beta"].dims == ("chain", "draw", "k")
    assert r.prior_sbc["k"].values.tolist() == ["a", "b", "c"]
    assert set(r.prior_sbc.data_vars) == {"beta", "tau", "beta_sum"}
    # the model's coordinate labels everywhere: flat parameters, metrics and plots agree
    labels = ["beta[a]", "beta[b]", "beta[c]", "tau_log__"]
    assert r.sbc_stats["parameter"].values.tolist() == labels
    assert abi.calibration_metrics(r).index.tolist() == labels
    # by default the free variables, not the deterministics
    titles = [ax.get_title() for ax in abi.plot_sbc(r, kind="hist")]
    assert titles == ["beta[a]", "beta[b]", "beta[c]", "tau"]
    titles = [ax.get_title() for ax in abi.plot_sbc(r, var_names=["beta_sum"])]
    assert titles == ["beta_sum"]
    recovery = abi.plot_recovery(r, var_names="beta")
    assert [ax.get_title() for ax in recovery] == labels[:3]

    simplex = abi.Amortizer(models.dirichlet(), random_seed=0)
    r = abi.sbc(simplex, num_simulations=30, draws=20, random_seed=1, progressbar=False)
    assert r.prior_sbc["w"].shape == (1, 30, 3)  # constrained: one rank per weight
    assert r.sbc_stats.sizes["parameter"] == 2  # unconstrained: K - 1 coordinates
    np.testing.assert_allclose(r.prior["w"].sum("w_dim_0"), 1.0)

    with pm.Model(coords={"obs": range(20)}) as m:
        X = pm.Data("X", np.ones((20, 2)), dims=("obs", "f"))
        b = pm.Normal("b", 0, 1, shape=2)
        pm.Deterministic("mu", X @ b, dims="obs")
        pm.Normal("y", X @ b, 1, observed=np.zeros(20), dims="obs")

    def draw(rng, n, lengths):
        return rng.normal(size=(n, lengths.get("obs", 20), 2))

    varying = abi.Amortizer(m, covariates={"X": draw}, dim_lengths={"obs": (10, 30)}, random_seed=0)
    with pytest.warns(abi.PymcAbiWarning, match="'mu' changes shape"):
        r = abi.sbc(
            varying, num_simulations=30, draws=20, chunk_size=10, random_seed=1, progressbar=False
        )
    assert list(r.prior_sbc.data_vars) == ["b"]
    r = abi.sbc(
        varying,
        num_simulations=30,
        draws=20,
        dim_lengths={"obs": 15},
        random_seed=1,
        progressbar=False,
    )
    assert r.prior_sbc["mu"].shape == (1, 30, 15)
    with pytest.raises(ValueError, match="not trained to vary"):
        abi.sbc(varying, num_simulations=30, dim_lengths={"f": 3}, progressbar=False)


def test_sbc_reproducible(amortizer):
    a = abi.sbc(amortizer, num_simulations=40, draws=50, random_seed=3, progressbar=False)
    b = abi.sbc(amortizer, num_simulations=40, draws=50, random_seed=3, progressbar=False)
    c = abi.sbc(amortizer, num_simulations=40, draws=50, random_seed=4, progressbar=False)
    np.testing.assert_array_equal(a.sbc_stats["rank"], b.sbc_stats["rank"])
    np.testing.assert_array_equal(a.prior["mu"], b.prior["mu"])
    assert not np.array_equal(a.prior["mu"], c.prior["mu"])
    # chunking does not change the simulations' count or the rank range
    d = abi.sbc(
        amortizer,
        num_simulations=40,
        draws=50,
        deterministics=False,
        chunk_size=7,
        random_seed=3,
        progressbar=False,
    )
    assert set(d.prior_sbc.data_vars) == {"mu", "s"}
    assert d.prior_sbc["mu"].shape == (1, 40)
    assert int(d.sbc_stats["rank"].max()) <= 50


@pytest.mark.statistical
def test_trained_amortizer_is_calibrated(result, amortizer):
    table = abi.calibration_metrics(result)
    assert table.index.tolist() == amortizer.parameters.names
    assert table["variable"].tolist() == ["mu", "s"]
    for name, row in table.iterrows():
        measure(f"{name}: -log10 uniformity p", -np.log10(row["uniformity_pvalue"]), 4.0)
        measure(f"{name}: calibration error", row["calibration_error"], 0.04)
        measure(f"{name}: |z-score SD - 1|", abs(row["z_score_sd"] - 1), 0.15)
        measure(f"{name}: |z-score mean|", abs(row["z_score_mean"]), 0.15)
    # ranks uniform: chi-square p-value not tiny, calibration error small (95% of exactly
    # uniform runs stay below 0.57 / sqrt(500) = 0.026). 500 simulations see a bias of a
    # tenth of a posterior SD, which 1,000 steps leave: over 3 seeds the smallest p-value
    # was 0.0016, hence 1e-4 (the miscalibrated copy below gives p < 1e-3 by far)
    assert (table["uniformity_pvalue"] > 1e-4).all(), table
    assert (table["calibration_error"] < 0.04).all(), table
    # z-scores ~ N(0, 1) for a calibrated near-Gaussian posterior
    assert (table["z_score_sd"].between(0.85, 1.15)).all(), table
    assert (table["z_score_mean"].abs() < 0.15).all(), table
    # 20 observations: the posterior is much narrower than the prior
    contraction = result.sbc_stats["contraction"].values
    assert ((contraction > 0) & (contraction < 1)).all()
    assert (table["contraction"] > 0.8).all(), table
    # calibrated: E[(mean - truth)^2] = E[posterior var], so nrmse^2 ~ 1 - contraction
    np.testing.assert_allclose(table["nrmse"], np.sqrt(1 - table["contraction"]), atol=0.05)
    np.testing.assert_allclose(table["r2"], 1 - table["nrmse"] ** 2, atol=0.01)


def test_miscalibrated_posterior_is_flagged(miscalibrated_result, result):
    table = abi.calibration_metrics(miscalibrated_result)
    assert (table["uniformity_pvalue"] < 1e-3).all(), table
    trained = abi.calibration_metrics(result)
    assert (table["calibration_error"] > 2 * trained["calibration_error"]).all()
    assert (table["nrmse"] > trained["nrmse"]).all(), table


def test_uniformity_test_on_exact_ranks(result):
    """The chi-square p-value is uniform under exactly uniform ranks (5% below 0.05)."""
    from pymc_abi.diagnostics.metrics import _uniformity_test

    rng = np.random.default_rng(0)
    pvalues = np.array(
        [_uniformity_test(rng.integers(0, 101, 500), 100, None)[1] for _ in range(1000)]
    )
    assert abs(np.mean(pvalues < 0.05) - 0.05) < 0.02  # binomial sd 0.007
    edges = rank_bins(500, 100)
    assert edges[0] == 0 and edges[-1] == 101 and len(edges) == 21
    assert set(np.diff(edges)) <= {5, 6}


def test_metrics_reject_other_results(amortizer):
    idata = amortizer.sample(draws=10, random_seed=0)
    with pytest.raises(ValueError, match="sbc_stats"):
        abi.calibration_metrics(idata)
    with pytest.raises(ValueError, match="prior_sbc"):
        abi.plot_sbc(idata)
    with pytest.raises(ValueError, match="Expected the result of pymc_abi.sbc"):
        abi.plot_recovery({"mu": np.zeros(3)})


@pytest.mark.parametrize(("n", "draws"), [(200, 99), (500, 300), (50, 9)])
def test_rank_ecdf_band_covers_uniform_ranks(n, draws):
    """95% of ECDFs of exactly uniform ranks lie inside the band at every point at once."""
    x, lower, upper = rank_ecdf_band(n, draws, prob=0.95, random_seed=1)
    assert x[0] == 0 and x[-1] == 1 and np.all(np.diff(x) > 0)
    assert np.all(lower <= x) and np.all(x <= upper)
    points = np.round(x * (draws + 1))
    rng = np.random.default_rng(2)
    ranks = np.sort(rng.integers(0, draws + 1, size=(2000, n)), axis=1)
    ecdf = np.stack([np.searchsorted(r, points, side="left") for r in ranks]) / n
    inside = ((ecdf >= lower - 1e-12) & (ecdf <= upper + 1e-12)).all(axis=1).mean()
    # measured 95.5-96.5% on 4,000 ECDFs (the binomial quantiles make it a little wide)
    assert 0.93 < inside < 0.98, inside  # binomial sd of the fraction: 0.005
    # a pointwise band would cover far less: the band is simultaneous
    narrow = rank_ecdf_band(n, draws, prob=0.5, random_seed=1)
    assert np.all(narrow[2] - narrow[1] <= upper - lower + 1e-12)


# ---------------------------------------------------------------------- plots
@pytest.mark.parametrize("kind", ["ecdf_diff", "ecdf", "hist"])
def test_plot_sbc(result, kind):
    axes = abi.plot_sbc(result, kind=kind)
    assert len(axes) == 2
    assert len(axes[0].figure.axes) == 2  # unused grid cells are removed
    assert [ax.get_title() for ax in axes] == ["mu", "s"]  # free variables by default
    assert len(abi.plot_sbc(result, kind=kind, var_names=["mu", "s", "mu_plus_s"])) == 3
    if kind == "hist":
        edges = rank_bins(N_SIM, DRAWS)
        assert len(axes[0].patches) == len(edges) - 1
        assert sum(p.get_height() for p in axes[0].patches) == N_SIM
    else:
        assert axes[0].get_ylabel() == ("ECDF difference" if kind == "ecdf_diff" else "ECDF")
        assert len(axes[0].collections) >= 1  # the confidence band
        y = axes[0].lines[0].get_ydata()
        if kind == "ecdf_diff":
            assert np.abs(y).max() < 0.1
        else:
            assert y.min() >= 0 and y.max() <= 1
    assert len(abi.plot_sbc(result, kind=kind, var_names="s")) == 1


def test_plot_sbc_rejects_unknown(result):
    with pytest.raises(ValueError, match="kind"):
        abi.plot_sbc(result, kind="violin")
    with pytest.raises(ValueError, match="not in the SBC ranks"):
        abi.plot_sbc(result, var_names=["nope"])


def test_plot_z_score_contraction(result):
    axes = abi.plot_z_score_contraction(result)
    assert len(axes) == 2
    assert [ax.get_title() for ax in axes] == ["mu", "s_log__"]
    points = axes[1].collections[-1].get_offsets()
    assert points.shape == (N_SIM, 2)
    np.testing.assert_allclose(points[:, 0], result.sbc_stats["contraction"].values[0, :, 1])
    np.testing.assert_allclose(points[:, 1], result.sbc_stats["z_score"].values[0, :, 1])
    # a free variable selects its flat coordinate(s)
    assert [ax.get_title() for ax in abi.plot_z_score_contraction(result, var_names="s")] == [
        "s_log__"
    ]


@pytest.mark.parametrize("point_estimate", ["mean", "median"])
def test_plot_recovery(result, point_estimate):
    axes = abi.plot_recovery(result, point_estimate=point_estimate, error_bars=True)
    assert len(axes) == 2
    table = abi.calibration_metrics(result)
    for ax, name in zip(axes, ["mu", "s_log__"]):
        assert ax.get_title() == name
        texts = [t.get_text() for t in ax.texts]
        assert len(texts) == 1 and texts[0].startswith("$R^2$ = ")
        r2 = float(texts[0].split("= ")[1])
        assert r2 > 0.8
        if point_estimate == "mean":
            assert r2 == pytest.approx(table.loc[name, "r2"], abs=1e-3)
        points = [c for c in ax.collections if c.get_offsets().shape == (N_SIM, 2)]
        assert len(points) == 1
        np.testing.assert_allclose(
            points[0].get_offsets()[:, 0], result.sbc_stats["true_value"].sel(parameter=name)[0]
        )
        assert ax.lines  # the identity line
    with pytest.raises(ValueError, match="point_estimate"):
        abi.plot_recovery(result, point_estimate="mode")


# ---------------------------------------------------------------------- c2st
def test_c2st_arrays():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 2))
    b = rng.normal(size=(2000, 2))
    same = abi.c2st(a, b, random_seed=1)
    assert 0.44 < same < 0.56  # chance level; sd of the accuracy ~0.008
    assert abi.c2st(a, b, random_seed=1) == same  # seeded
    shifted = abi.c2st(a, b + [1.0, 0.0], random_seed=1)
    assert shifted > 0.62  # Bayes-optimal accuracy for a 1 SD shift: Phi(0.5) = 0.69
    assert abi.c2st(a[:, 0], b[:, 0] + 3.0, random_seed=1) > 0.9  # 1-D input, Phi(1.5)


def test_c2st_posteriors(amortizer):
    """Result and dict inputs: two amortized posteriors of one dataset are the same."""
    y = np.random.default_rng(5).normal(0.3, 0.8, 20)
    first = amortizer.sample({"y": y}, draws=375, random_seed=1)
    second = amortizer.sample({"y": y}, draws=375, random_seed=2)
    other = amortizer.sample({"y": y + 1.0}, draws=375, random_seed=3)
    assert abi.c2st(first, second, var_names=["mu", "s"], random_seed=0) < 0.56
    as_dict = {k: first.posterior[k].values.ravel() for k in ("mu", "s")}
    assert abi.c2st(as_dict, other, random_seed=0) > 0.95
    with pytest.raises(ValueError, match="missing"):
        abi.c2st(first, {"mu": np.zeros(10)}, var_names=["mu", "s"])


def test_c2st_warns_on_repeated_draws():
    """Importance-resampled draws repeat: a classifier memorizes them, biasing C2ST upward."""
    rng = np.random.default_rng(0)
    fresh = rng.normal(size=(1000, 2))
    resampled = fresh[rng.choice(1000, size=1000)]  # with replacement: ~37% repeats
    with pytest.warns(abi.PymcAbiWarning, match="repeats 3.% of its draws"):
        abi.c2st(rng.normal(size=(1000, 2)), resampled, max_epochs=5, random_seed=0)
