"""Bad input gets a clear error, and the model forms users write just work.

Each test here failed on the code before the hardening (issue 11): a crash, a wrong
posterior without a word, or a raw error from deep inside PyTensor or torch.
"""

import warnings

import numpy as np
import pymc as pm
import pytest

import pymc_abi as abi
from tests.conftest import group_names

RNG = np.random.default_rng(0)


def normal_model(n=20, y=None):
    with pm.Model(coords={"obs": range(n)}) as model:
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", mu, sigma, observed=np.zeros(n) if y is None else y, dims="obs")
    return model


@pytest.fixture(scope="module")
def quick():
    """A briefly trained amortizer: enough for every error path."""
    model = normal_model()
    return model, abi.fit(
        model, steps=30, validation_simulations=64, random_seed=0, progressbar=False
    )


# ---------------------------------------------------------------------- model forms
def _logistic(form):
    X = RNG.normal(size=(40, 3))
    y = RNG.integers(0, 2, 40)
    with pm.Model(coords={"obs": range(40)}) as model:
        if form == "cast pm.Data":  # PyMC casts the int container: Cast{int64}(y_obs)
            observed = pm.Data("y_obs", y)
        elif form == "pm.Data with dims":
            observed = pm.Data("y_obs", y, dims="obs")
        elif form == "float pm.Data":
            observed = pm.Data("y_obs", y.astype(float))
        else:
            observed = y
        beta = pm.Normal("beta", 0, 1, shape=3)
        pm.Bernoulli("y", logit_p=X @ beta, observed=observed, dims="obs")
    return model, y


@pytest.mark.parametrize("form", ["cast pm.Data", "pm.Data with dims", "float pm.Data", "array"])
def test_observed_data_in_every_form_pymc_builds(form):
    model, y = _logistic(form)
    amortizer = abi.fit(model, steps=5, validation_simulations=32, random_seed=0, progressbar=False)
    idata = amortizer.sample(draws=10, random_seed=1)
    np.testing.assert_array_equal(idata.observed_data["y"].values, y)
    assert idata.posterior["beta"].shape == (4, 10, 3)
    # the observed container is data, not a covariate: not listed in constant_data
    assert "constant_data" not in group_names(idata)


def test_pm_set_data_on_the_observed_container_is_used():
    model, y = _logistic("cast pm.Data")
    amortizer = abi.fit(model, steps=5, validation_simulations=32, random_seed=0, progressbar=False)
    new = 1 - y
    pm.set_data({"y_obs": new}, model=model)
    np.testing.assert_array_equal(amortizer.sample(draws=5).observed_data["y"].values, new)


def test_pm_set_data_on_fixed_data_is_refused():
    X = RNG.normal(size=(20, 2))
    with pm.Model() as model:
        x = pm.Data("X", X)
        beta = pm.Normal("beta", 0, 1, shape=2)
        pm.Normal("y", x @ beta, 1, observed=np.zeros(20))
    amortizer = abi.Amortizer(model, random_seed=0, _pilot=64)
    amortizer.sample(draws=2)  # unchanged: fine
    pm.set_data({"X": X + 1}, model=model)
    with pytest.raises(ValueError, match=r"pm.Data 'X' has changed since.*covariates=\{'X': fn\}"):
        amortizer.sample(draws=2)


def test_missing_values_are_refused_not_imputed():
    y = np.array([0.1, np.nan, 0.3, 0.2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyMC's imputation warning
        with pm.Model() as model:
            mu = pm.Normal("mu", 0, 1)
            pm.Normal("y", mu, 1, observed=y)
    with pytest.raises(ValueError, match="imputes them as the free variable 'y_unobserved'"):
        abi.Amortizer(model, _pilot=16)


def test_custom_dist_without_random_says_so():
    def logp(value, mu):
        return pm.logp(pm.Normal.dist(mu, 1), value)

    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        pm.CustomDist("y", mu, logp=logp, observed=np.zeros(5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no misleading 'one simulation at a time' first
        with pytest.raises(ValueError, match="'y' is a CustomDist without a random function"):
            abi.ModelSimulator(model)


# ---------------------------------------------------------------------- datasets
def test_every_observed_variable_must_be_given():
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        pm.Normal("y1", mu, 1, observed=np.zeros(5))
        pm.Normal("y2", mu, 1, observed=np.zeros(5))
    amortizer = abi.Amortizer(model, random_seed=0, _pilot=64)
    with pytest.raises(ValueError, match=r"lacks observed variable\(s\) \['y2'\]"):
        amortizer.sample({"y1": np.full(5, 4.0)})


def test_data_outside_the_likelihood_support():
    with pm.Model() as model:
        lam = pm.Gamma("lam", 2, 1)
        pm.Poisson("y", lam, observed=np.ones(6, dtype=int))
    amortizer = abi.Amortizer(model, random_seed=0, _pilot=64)
    with pytest.raises(ValueError, match="discrete variable .* non-integer"):
        amortizer.sample({"y": np.array([1, 2, -2.5, 0, 1, 3])})
    with pytest.raises(ValueError, match=r"zero density .* y\[2\] = -2: outside"):
        amortizer.sample({"y": np.array([1, 2, -2, 0, 1, 3])})
    amortizer.sample({"y": np.array([1, 2, 2, 0, 1, 3])}, draws=5)  # valid data pass


def test_impossible_data_name_the_covariates_that_may_cause_it():
    """y = 3 of n = 1 trials: the count or the covariate is wrong; the error names both."""
    with pm.Model() as model:
        n = pm.Data("n", np.full(6, 10))
        p = pm.Beta("p", 1, 1)
        pm.Binomial("y", n=n, p=p, observed=np.zeros(6, dtype=int))
    amortizer = abi.Amortizer(
        model,
        covariates={"n": lambda rng, k, lengths: rng.integers(5, 20, size=(k, 6))},
        random_seed=0,
        _pilot=64,
    )
    with pytest.raises(
        ValueError, match=r"y\[2\] = 3: .*covariates given with the data \(\['n'\]\)"
    ):
        amortizer.sample({"y": np.arange(1, 7)}, data={"n": np.array([10, 10, 1, 10, 10, 10])})


def test_data_possible_only_where_the_flow_does_not_reach_are_not_refused():
    """y ~ Uniform(0, t): y = 2.5 needs t > 2.5, where an untrained flow puts no draw. The
    data are valid (some prior draws allow them), so the ladder answers, with t > 2.5; a
    value on the bound of a distribution whose density is zero there is refused as such."""
    with pm.Model() as model:
        t = pm.HalfNormal("t", 1)
        pm.Uniform("y", 0, t, observed=np.full(5, 0.5))
    amortizer = abi.Amortizer(model, random_seed=0, _pilot=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the untrained flow is flagged, and corrected
        result = amortizer.sample({"y": np.array([0.1, 2.5, 0.3, 0.2, 1.0])}, draws=50)
    assert result.posterior["t"].values.min() > 2.5
    with pm.Model() as beta:
        b = pm.HalfNormal("b", 1)
        pm.Beta("y", 2, b + 1, observed=np.full(5, 0.5))  # density 0 at y = 1
    amortizer = abi.Amortizer(beta, random_seed=0, _pilot=64)
    with pytest.raises(ValueError, match=r"y\[2\] = 1.0: .* at a bound where its density is"):
        amortizer.sample({"y": np.array([0.5, 0.2, 1.0, 0.3, 0.4])})


def test_values_beyond_float32(quick):
    _, amortizer = quick
    with pytest.raises(ValueError, match="beyond what float32"):
        amortizer.sample({"y": np.full(20, 1e39)})


def test_masked_arrays_are_refused_unless_nothing_is_masked(quick):
    _, amortizer = quick
    y = np.ma.masked_array(RNG.normal(size=20), mask=np.arange(20) == 3)
    with pytest.raises(ValueError, match="'y' is a masked array with 1 masked value"):
        amortizer.sample({"y": y}, importance_sampling=False)
    unmasked = np.ma.masked_array(y.data, mask=False)
    a = amortizer.sample({"y": unmasked}, draws=20, importance_sampling=False, random_seed=1)
    b = amortizer.sample({"y": y.data}, draws=20, importance_sampling=False, random_seed=1)
    np.testing.assert_array_equal(a.posterior["mu"].values, b.posterior["mu"].values)


def test_labelled_inputs_are_read_by_their_dims():
    """An xarray.DataArray is read by its dims, not by position; wrong dims are refused."""
    import xarray as xr

    coords = {"obs": range(6), "item": range(3)}
    with pm.Model(coords=coords) as model:
        mu = pm.Normal("mu", 0, 1, dims="item")
        pm.Normal("y", mu, 1.0, observed=np.zeros((6, 3)), dims=("obs", "item"))
    spec = abi.Amortizer(model, _pilot=0).data_spec
    y = RNG.normal(size=(6, 3))
    labelled = xr.DataArray(y.T, dims=("item", "obs"))  # the other order
    (checked,), _ = spec.datasets({"y": labelled})
    np.testing.assert_array_equal(checked["y"], y)
    with pytest.raises(ValueError, match="labelled with dims \\('row', 'item'\\)"):
        spec.datasets({"y": xr.DataArray(y, dims=("row", "item"))})
    (by_position,), _ = spec.datasets({"y": xr.DataArray(y)})  # unnamed dims: by position
    np.testing.assert_array_equal(by_position["y"], y)


def test_dataframe_columns_are_read_by_the_models_coords():
    """A DataFrame's columns are read by name (the coords of the second dim), whatever
    their order; named columns that are not the coords are refused; unnamed ones are read
    by position."""
    import pandas as pd

    coords = {"obs": range(6), "item": ["a", "b", "c"]}
    with pm.Model(coords=coords) as model:
        mu = pm.Normal("mu", 0, 1, dims="item")
        pm.Normal("y", mu, 1.0, observed=np.zeros((6, 3)), dims=("obs", "item"))
    spec = abi.Amortizer(model, _pilot=0).data_spec
    y = RNG.normal(size=(6, 3))
    shuffled = pd.DataFrame(y, columns=["a", "b", "c"])[["c", "a", "b"]]
    (checked,), _ = spec.datasets({"y": shuffled})
    np.testing.assert_array_equal(checked["y"], y)
    with pytest.raises(ValueError, match="columns \\['a', 'b', 'x'\\].*coords of its dim 'item'"):
        spec.datasets({"y": pd.DataFrame(y, columns=["a", "b", "x"])})
    (by_position,), _ = spec.datasets({"y": pd.DataFrame(y)})
    np.testing.assert_array_equal(by_position["y"], y)


def test_bad_datasets_name_their_index(quick):
    _, amortizer = quick
    good = {"y": np.zeros(20)}
    with pytest.raises(ValueError, match=r"Dataset 1 of 3: .*shape \(19,\)"):
        amortizer.sample([good, {"y": np.zeros(19)}, good])
    with pytest.raises(ValueError, match=r"Dataset 2 of 3: 'y' holds NaN"):
        amortizer.sample([good, good, {"y": np.full(20, np.nan)}])
    with pytest.raises(TypeError, match="Dataset 1 of 2 is None"):
        amortizer.sample([good, None])
    with pytest.raises(TypeError, match="observed must be a dict .* got str"):
        amortizer.sample("y")
    with pytest.raises(ValueError, match="empty list"):
        amortizer.sample([])
    with pytest.raises(TypeError, match="'y' must hold numbers"):
        amortizer.sample({"y": ["a"] * 20})
    with pytest.raises(ValueError, match="draws must be a positive integer"):
        amortizer.sample(draws=0)


# ---------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"steps": -5}, "steps must be a positive integer"),
        ({"simulations": 2000, "epochs": 0}, "epochs must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"validation_simulations": 0}, "validation_simulations must be a positive integer"),
        ({"learning_rate": 0.0}, "learning_rate must be positive"),
        ({"simulations": 0}, "simulations must be a positive integer"),
        ({"transforms": 0}, "transforms must be a positive integer"),
        ({"summary_features": -1}, "summary_features must be a positive integer"),
        ({"hidden_features": 64}, "hidden_features must be a sequence"),
        ({"summary_network": {"yy": "mlp"}}, r"summary_network names \['yy'\]"),
        ({"time_dim": "tim"}, "time_dim='tim' is not a dim of the model"),
        # not truncated, not read as true: refused
        ({"steps": 10.5}, "steps must be a positive integer"),
        ({"simulations": 100.5}, r"simulations must be None .* got 100.5"),
        ({"transforms": 2.5}, "transforms must be a positive integer"),
        ({"recurrent_steps": True}, "recurrent_steps must be a positive integer"),
        ({"learning_rate": "1e-3"}, "learning_rate must be a number"),
        ({"random_seed": 1.5}, "random_seed must be None, an integer"),
    ],
)
def test_arguments_are_checked_up_front(options, match):
    with pytest.raises(ValueError, match=match):
        abi.fit(normal_model(), progressbar=False, **options)


def test_counts_and_switches_are_refused_rather_than_converted(quick):
    """int(2.7) is 2 and bool("no") is true: every public count and switch refuses what it
    would have to convert, naming the argument."""
    model, amortizer = quick
    y = {"y": np.zeros(20)}
    cases = [
        (lambda: amortizer.sample(y, draws=2.7), "draws must be a positive integer, got 2.7"),
        (lambda: amortizer.sample(y, chains=True), "chains must be a positive integer"),
        (lambda: amortizer.sample(y, importance_sampling="no"), "importance_sampling must be"),
        (lambda: amortizer.sample(y, log_likelihood=2), "log_likelihood must be True or False"),
        (lambda: amortizer.sample(y, random_seed="a"), "random_seed must be None"),
        (lambda: abi.sbc(amortizer, num_simulations=10.5), "num_simulations must be an integer"),
        (lambda: abi.simulate(model, n=10.5), "n must be a positive integer"),
        (lambda: abi.simulate(model, n=10, chunk_size=2.5), "chunk_size must be a positive"),
        (lambda: abi.ModelSimulator(model).sample(True), "n must be an integer >= 0"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


def test_covariate_function_of_the_wrong_length():
    with pm.Model(coords={"obs": range(20)}) as model:
        X = pm.Data("X", np.ones((20, 2)), dims=("obs", "f"))
        beta = pm.Normal("beta", 0, 1, shape=2)
        pm.Normal("y", X @ beta, 1, observed=np.zeros(20), dims="obs")

    def short(rng, n, lengths):
        return rng.normal(size=(n, 19, 2))

    with pytest.raises(
        ValueError, match=r"covariates\['X'\] returned shape \(\d+, 19, 2\).*\(\d+, 20, 2\)"
    ):
        abi.Amortizer(model, covariates={"X": short}, _pilot=16)


# ---------------------------------------------------------------------- float32
def test_simulations_that_overflow_float32_are_dropped_not_fatal():
    """sigma = exp(exp(z)): some draws are finite in float64 but not in float32."""
    with pm.Model() as model:
        z = pm.Normal("z", 0, 3)
        pm.Normal("y", 0, pm.math.exp(pm.math.exp(z)), observed=np.zeros(3))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="overflow encountered")
        warnings.filterwarnings("ignore", message=".*simulations held NaN or inf")
        amortizer = abi.fit(
            model,
            steps=20,
            batch_size=128,
            validation_simulations=128,
            random_seed=0,
            progressbar=False,
        )
    assert amortizer.dropped_simulations > 0
    assert amortizer.history.skipped == 0  # dropped rows, not skipped batches
