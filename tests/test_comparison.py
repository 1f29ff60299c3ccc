"""Amortized model comparison: Bayes factors against analytic ones, priors, calibration,
checks of the models and of the inputs, varying sizes, posteriors alongside."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pymc as pm
import pytest
import torch
import xarray as xr
from scipy.stats import binom, norm

import pymc_abi as abi
from tests.conftest import SEED, measure

N = 12
SCALES = {"narrow": 1.0, "wide": 3.0}


def normal_mean(scale, n=N, sigma=1.0, name="y", dims="obs", observed=None):
    """mu ~ N(0, scale), y_i ~ N(mu, sigma): the marginal of ybar is N(0, scale² + σ²/n)."""
    with pm.Model(coords={"obs": range(n)}) as model:
        mu = pm.Normal("mu", 0, scale)
        pm.Normal(
            name, mu, sigma, observed=np.zeros(n) if observed is None else observed, dims=dims
        )
    return model


def exact_log_bf(y):
    """log p(y | narrow) - log p(y | wide): only ybar differs between the two."""
    ybar = y.mean(axis=-1)
    a, b = (norm.logpdf(ybar, 0, np.sqrt(s**2 + 1 / N)) for s in SCALES.values())
    return a - b


def prior_predictive(k, seed):
    rng = np.random.default_rng(seed)
    mu = np.concatenate([rng.normal(0, s, k // 2) for s in SCALES.values()])
    return mu[:, None] + rng.normal(size=(len(mu), N))


@pytest.fixture(scope="module")
def trained():
    models = {name: normal_mean(s) for name, s in SCALES.items()}
    comparator = abi.fit_comparison(
        models,
        steps=1000,
        batch_size=256,
        hidden_features=(64, 64),
        summary_features=16,
        random_seed=SEED + 1,
        progressbar=False,
    )
    return models, comparator


@pytest.mark.statistical
def test_log_bayes_factors_match_analytic(trained):
    _, comparator = trained
    y = prior_predictive(200, SEED + 100)
    exact = exact_log_bf(y)
    lbf = comparator.log_bayes_factor([{"y": yi} for yi in y], "narrow", "wide")
    assert lbf.shape == (200,)
    # where the data can tell the models apart at all (|log BF| < 5, probabilities between
    # 0.7% and 99.3%): beyond, a classifier sees almost no simulations of the losing model
    # and its log BF saturates, while the probabilities stay right
    inside = np.abs(exact) < 5
    mae = np.abs(lbf - exact)[inside].mean()
    corr = np.corrcoef(lbf, exact)[0, 1]
    measure("mae_log_bf", mae, 0.2)
    measure("corr_log_bf", -corr, -0.97)
    assert mae < 0.2, mae
    assert corr > 0.97, corr
    # probabilities agree with the exact ones everywhere
    exact_p = 1 / (1 + np.exp(-exact))
    p = comparator.predict([{"y": yi} for yi in y]).sel(model="narrow").values
    error = np.abs(p - exact_p)
    measure("mean_probability_error", error.mean(), 0.03)
    measure("max_probability_error", error.max(), 0.2)
    assert error.mean() < 0.03 and error.max() < 0.2, (error.mean(), error.max())


def test_prior_change_is_bayes_rule(trained):
    _, comparator = trained
    y = {"y": prior_predictive(2, 5)[0]}
    uniform = comparator.predict(y)
    assert np.allclose(uniform.sum(), 1)
    prior = {"narrow": 0.2, "wide": 0.8}
    changed = comparator.predict(y, prior=prior)
    odds = changed.sel(model="narrow") / changed.sel(model="wide")
    bayes = uniform.sel(model="narrow") / uniform.sel(model="wide") * 0.2 / 0.8
    assert np.isclose(float(odds), float(bayes), rtol=1e-9)
    # stored prior: unnormalized weights are normalized; the prediction follows
    comparator.prior = [1, 4]
    try:
        assert np.allclose(comparator.prior.values, [0.2, 0.8])
        assert np.allclose(comparator.predict(y).values, changed.values)
    finally:
        comparator.prior = None
    assert np.allclose(comparator.predict(y).values, uniform.values)
    # the Bayes factor is free of the prior
    lbf = comparator.log_bayes_factor(y, "narrow", "wide")
    assert np.isclose(lbf, float(np.log(uniform.sel(model="narrow") / uniform.sel(model="wide"))))


def test_predict_one_and_many(trained):
    _, comparator = trained
    ys = prior_predictive(6, 7)
    one = comparator.predict({"y": ys[0]})
    assert one.name == "model_probability" and one.dims == ("model",)
    assert list(one["model"].values) == ["narrow", "wide"]
    many = comparator.predict([{"y": yi} for yi in ys])
    assert many.dims == ("dataset", "model") and many.shape == (6, 2)
    assert np.allclose(many.sum("model"), 1)
    assert np.allclose(many.isel(dataset=0), one)  # batched passes give the same answer
    assert isinstance(one.to_pandas(), pd.Series)
    frame = many.to_pandas()
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["narrow", "wide"]
    own = comparator.predict()  # the first model's own observed data (zeros)
    assert own.dims == ("model",) and float(own.sel(model="narrow")) > 0.5
    assert "ModelComparator" in repr(comparator)


def test_calibration_and_plot(trained):
    _, comparator = trained
    result = abi.comparison_calibration(comparator, 1000, bins=5, random_seed=SEED + 3)
    assert isinstance(result, xr.Dataset)
    assert result["mean_probability"].dims == ("model", "bin")
    assert result.sizes == {
        "model": 2,
        "bin": 5,
        "true_model": 2,
        "predicted_model": 2,
        "simulation": 1000,
    }
    assert int(result["confusion"].sum()) == 1000
    assert np.allclose(result["count"].sum("bin"), 1000)
    # a trained comparator of a clear pair is calibrated and mostly right
    measure("ece_overall", float(result["ece_overall"]), 0.06)
    assert float(result["ece_overall"]) < 0.06
    assert (result["ece"] < 0.06).all()
    assert float(result["accuracy"]) > 0.7
    assert 0.3 < comparator.temperature < 3
    axes = abi.plot_comparison_calibration(result)
    assert len(axes) == 2 and all(isinstance(a, plt.Axes) for a in axes)
    plt.close("all")
    # a prior other than uniform: simulations and probabilities follow it
    comparator.prior = {"narrow": 0.25, "wide": 0.75}
    try:
        skewed = abi.comparison_calibration(comparator, 400, random_seed=1)
        assert int((skewed["label"] == 0).sum()) == 100
    finally:
        comparator.prior = None


def test_errors(trained):
    models, comparator = trained
    y = {"y": np.zeros(N)}
    with pytest.raises(ValueError, match="'other'.*lacks observed variable.*'y'"):
        abi.ModelComparator({"a": models["narrow"], "other": normal_mean(1.0, name="z")})
    with pytest.raises(ValueError, match="'y' has shape \\(20,\\) in model 'long'"):
        abi.ModelComparator({"a": models["narrow"], "long": normal_mean(1.0, n=20)})
    with pm.Model() as no_dims:
        mu = pm.Normal("mu")
        pm.Normal("y", mu, 1, observed=np.zeros(N))
    with pytest.raises(ValueError, match="'y' has dims \\(\\) in model 'b'"):
        abi.ModelComparator({"a": models["narrow"], "b": no_dims})
    with pm.Model(coords={"obs": range(N)}) as counts:
        lam = pm.Exponential("lam", 1)
        pm.Poisson("y", lam, observed=np.zeros(N, dtype=int), dims="obs")
    with pytest.raises(ValueError, match="'y' is integer .* in model 'counts'"):
        abi.ModelComparator({"a": models["narrow"], "counts": counts})
    with pytest.raises(ValueError, match="at least two models"):
        abi.ModelComparator({"a": models["narrow"]})
    with pytest.raises(TypeError, match="dict of names"):
        abi.ModelComparator([models["narrow"], models["wide"]])
    with pytest.raises(ValueError, match="positive"):
        comparator.predict(y, prior={"narrow": -0.1, "wide": 1.1})
    with pytest.raises(ValueError, match="unknown name.*'medium'"):
        comparator.predict(y, prior={"narrow": 0.5, "medium": 0.5})
    with pytest.raises(ValueError, match="missing \\['wide'\\]"):
        comparator.prior = {"narrow": 1.0}
    with pytest.raises(ValueError, match="3 entries for 2 models"):
        comparator.prior = [0.2, 0.3, 0.5]
    with pytest.raises(ValueError, match="denominator='medium' is not one of the models"):
        comparator.log_bayes_factor(y, "narrow", "medium")
    with pytest.raises(ValueError, match="'y'"):  # data checked as for posteriors
        comparator.predict({"y": np.zeros(N + 1)})
    with pytest.raises(TypeError, match="unknown option"):
        comparator.fit(stepz=3)


def test_model_without_parameters_and_bank():
    """Beta-binomial against a fixed-p binomial (no free variable), offline on a bank."""
    n = 20
    with pm.Model() as fixed:
        pm.Binomial("k", n=n, p=0.5, observed=3)
    with pm.Model() as beta:
        p = pm.Beta("p", 1, 1)
        pm.Binomial("k", n=n, p=p, observed=3)
    comparator = abi.fit_comparison(
        {"fixed": fixed, "beta": beta},
        simulations=4000,
        epochs=20,
        hidden_features=(32, 32),
        random_seed=SEED + 2,
        progressbar=False,
    )
    k = np.arange(n + 1)
    exact = binom.logpmf(k, n, 0.5) - (-np.log(n + 1))  # the beta-binomial(1, 1) is uniform
    lbf = comparator.log_bayes_factor([{"k": ki} for ki in k], "fixed", "beta")
    inside = np.abs(exact) < 4
    mae = np.abs(lbf - exact)[inside].mean()
    measure("mae_log_bf_binomial", mae, 0.3)
    assert mae < 0.3, (lbf, exact)


def test_varying_sizes():
    models = {name: normal_mean(s, n=20, observed=np.zeros(20)) for name, s in SCALES.items()}
    comparator = abi.fit_comparison(
        models,
        dim_lengths={"obs": (4, 20)},
        steps=200,
        hidden_features=(32,),
        random_seed=SEED + 4,
        progressbar=False,
        calibrate=False,
    )
    assert comparator.temperature == 1.0
    rng = np.random.default_rng(0)
    datasets = [{"y": rng.normal(0, 1, size)} for size in (4, 9, 20, 9)]
    p = comparator.predict(datasets)
    assert p.shape == (4, 2) and np.allclose(p.sum("model"), 1)
    with pytest.raises(ValueError, match="'y'"):
        comparator.predict({"y": np.zeros(30)})
    with pytest.raises(ValueError, match="varying dim_lengths"):
        comparator.fit(simulations=1000, progressbar=False)


def test_sample_with_posteriors(trained):
    models, comparator = trained
    amortizer = abi.fit(models["narrow"], steps=200, random_seed=SEED + 5, progressbar=False)
    ys = [{"y": np.full(N, 0.1)}, {"y": np.full(N, 0.3)}]
    probs, posteriors = comparator.sample(ys, {"narrow": amortizer}, draws=50, chains=1)
    assert probs.dims == ("dataset", "model")
    assert len(posteriors) == 2 and all(set(p) == {"narrow"} for p in posteriors)
    assert posteriors[0]["narrow"].posterior["mu"].shape == (1, 50)
    one, post = comparator.sample(ys[0], {"narrow": amortizer}, which="all", draws=20, chains=1)
    assert one.dims == ("model",) and set(post) == {"narrow"}
    with pytest.raises(ValueError, match="most probable model.*'wide'"):
        comparator.sample({"y": np.full(N, 8.0)}, {"narrow": amortizer}, draws=10)
    with pytest.raises(ValueError, match="no model of that name"):
        comparator.sample(ys[0], {"robust": amortizer})
    other = abi.Amortizer(normal_mean(1.0, name="y", n=20), _pilot=0)
    with pytest.raises(ValueError, match="amortizer for 'narrow'.*shape"):
        comparator.sample(ys[0], {"narrow": other})
    # same data, another model: the wide model's amortizer under the narrow model's name
    wrong = abi.Amortizer(normal_mean(SCALES["wide"]), _pilot=0)
    with pytest.raises(
        abi.ModelChangedError, match="amortizers\\['narrow'\\] was trained on another model.*'mu'"
    ):
        comparator.sample(ys[0], {"narrow": wrong})


def test_data_outside_a_models_support_rule_it_out():
    """Negative data are impossible under a HalfNormal likelihood, whatever its network says:
    that model gets probability 0 (with a warning); data impossible under all are refused."""
    with pm.Model() as normal:
        mu = pm.Normal("mu", 0, 1)
        pm.Normal("y", mu, 1.0, observed=np.zeros(N))
    with pm.Model() as half:
        sigma = pm.HalfNormal("sigma", 1)
        pm.HalfNormal("y", sigma, observed=np.zeros(N))
    with pm.Model() as exponential:
        rate = pm.Gamma("rate", 2, 1)
        pm.Exponential("y", rate, observed=np.zeros(N))
    comparator = abi.fit_comparison(
        {"normal": normal, "half": half},
        steps=30,
        hidden_features=(16,),
        random_seed=SEED + 6,
        progressbar=False,
        calibrate=False,
    )
    y = np.abs(np.random.default_rng(0).normal(0, 1, N))
    y[3] = -0.5
    with pytest.warns(UserWarning, match="'half' gives the data zero density"):
        p = comparator.predict({"y": y})
    assert float(p.sel(model="half")) == 0.0 and float(p.sel(model="normal")) == 1.0
    with pytest.warns(UserWarning, match="'half' gives dataset 1 zero density"):
        many = comparator.predict([{"y": np.abs(y)}, {"y": y}])
    assert float(many[1].sel(model="half")) == 0.0 and float(many[0].sel(model="half")) > 0
    with pytest.warns(UserWarning, match="'half' gives the data zero density"):
        assert comparator.log_bayes_factor({"y": y}, "half", "normal") == -np.inf
    positive = abi.fit_comparison(
        {"half": half, "exponential": exponential},
        steps=30,
        hidden_features=(16,),
        random_seed=SEED + 7,
        progressbar=False,
        calibrate=False,
    )
    with pytest.raises(ValueError, match="zero density under every model"):
        positive.predict({"y": np.full(N, -1.0)})


# ---------------------------------------------------------------------- save and load
def test_save_and_load_round_trip(trained, tmp_path):
    _, comparator = trained
    path = tmp_path / "comparator.abi"
    comparator.prior = {"narrow": 0.3, "wide": 0.7}
    try:
        comparator.save(path)
    finally:
        comparator.prior = None
    # models rebuilt from the same code, given in another order: the saved order is kept
    loaded = abi.ModelComparator.load(
        path, {"wide": normal_mean(SCALES["wide"]), "narrow": normal_mean(SCALES["narrow"])}
    )
    assert loaded.names == comparator.names
    assert np.allclose(loaded.prior.values, [0.3, 0.7])
    assert loaded.temperature == comparator.temperature != 1.0
    assert loaded.history.to_dict() == comparator.history.to_dict()
    ys = [{"y": yi} for yi in prior_predictive(6, 11)]
    xr.testing.assert_identical(
        loaded.predict(ys, prior=None), comparator.predict(ys, prior=[0.3, 0.7])
    )
    np.testing.assert_array_equal(
        loaded.log_bayes_factor(ys, "narrow", "wide"),
        comparator.log_bayes_factor(ys, "narrow", "wide"),
    )
    assert loaded.config == {**comparator.config, "prior": [0.3, 0.7]}


def test_load_refuses_other_models(trained, tmp_path):
    models, comparator = trained
    path = tmp_path / "comparator.abi"
    comparator.save(path)
    with pytest.raises(ValueError, match=r"compares the models \['narrow', 'wide'\].*'broad'"):
        abi.ModelComparator.load(path, {"narrow": models["narrow"], "broad": models["wide"]})
    with pytest.raises(ValueError, match="compares the models.*missing \\['wide'\\]"):
        abi.ModelComparator.load(path, {"narrow": models["narrow"]})
    changed = {"narrow": models["narrow"], "wide": normal_mean(2.0)}
    with pytest.raises(
        ValueError, match=r"another model 'wide': variable 'mu' changed: .*Normal\(0, 2\)"
    ):
        abi.ModelComparator.load(path, changed)
    with pytest.warns(abi.ModelChangedWarning, match="changed model 'wide'"):
        loaded = abi.ModelComparator.load(path, changed, allow_model_change=True)
    assert loaded.history.step == comparator.history.step


def test_comparator_and_amortizer_files_name_their_loader(trained, tmp_path):
    models, comparator = trained
    comparator.save(tmp_path / "comparator.abi")
    with pytest.raises(ValueError, match="holds a model comparator.*ModelComparator.load"):
        abi.Amortizer.load(tmp_path / "comparator.abi", models["narrow"])
    abi.Amortizer(models["narrow"], _pilot=0).save(tmp_path / "amortizer.abi")
    with pytest.raises(ValueError, match="holds an amortizer.*with Amortizer.load"):
        abi.ModelComparator.load(tmp_path / "amortizer.abi", models)
    # files written before kinds were recorded hold amortizers
    blob = torch.load(tmp_path / "amortizer.abi", weights_only=True)
    assert blob["config"].pop("kind") == "amortizer"
    del blob["checksum"]  # nor checksums
    torch.save(blob, tmp_path / "old.abi")
    assert isinstance(abi.Amortizer.load(tmp_path / "old.abi", models["narrow"]), abi.Amortizer)
    with pytest.raises(ValueError, match="holds an amortizer.*with Amortizer.load"):
        abi.ModelComparator.load(tmp_path / "old.abi", models)
