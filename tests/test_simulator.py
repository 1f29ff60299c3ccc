import warnings

import numpy as np
import pymc as pm
import pytest
from pymc.distributions.transforms import log, ordered

import pymc_abi as abi
from tests import models

# (model factory, variables expected to fall back to the per-draw loop)
MODEL_KINDS = {
    "iid_normal": (models.iid_normal, set()),
    "vector_dims": (models.vector_dims, set()),
    "hierarchical": (models.hierarchical, set()),
    "hierarchical_noncentered": (lambda: models.hierarchical(centered=False), set()),
    "dirichlet": (models.dirichlet, set()),
    "lkj_mvnormal": (models.lkj_mvnormal, set()),
    "censored": (models.censored, set()),
    "binomial_logit": (models.binomial_logit, set()),
    "scale_batched": (models.scale_batched, set()),
    "random_walk": (models.random_walk, set()),
    "mixture": (models.mixture, set()),
    "normal_mixture": (models.normal_mixture, set()),
    "ar": (models.ar, set()),
    "ar2": (models.ar2, set()),
    "garch11": (models.garch11, set()),
    "ornstein_uhlenbeck": (models.ornstein_uhlenbeck, set()),
    "mv_random_walk": (models.mv_random_walk, set()),
    "user_scan": (models.user_scan, set()),
    "custom_dist_scan": (models.custom_dist_scan, set()),
    "simulator": (models.simulator, {"y"}),
    "custom_dist": (models.custom_dist, {"y"}),
    "regression": (models.regression, set()),
    "logistic_regression": (models.logistic_regression, set()),
}


def _assert_same_distribution(a, b, name):
    """Elementwise means within 5 standard errors, SDs within 15%."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    assert a.shape[1:] == b.shape[1:], name
    se = np.sqrt(a.var(0) / len(a) + b.var(0) / len(b)) + 1e-12
    z = np.abs(a.mean(0) - b.mean(0)) / se
    assert z.max() < 5, f"{name}: means differ by {z.max():.1f} standard errors"
    sd_a, sd_b = a.std(0), b.std(0)
    varying = sd_b > 1e-9
    np.testing.assert_allclose(sd_a[varying], sd_b[varying], rtol=0.15, err_msg=name)
    np.testing.assert_allclose(sd_a[~varying], 0, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_moments_match_pm_draw(kind):
    factory, expected_fallbacks = MODEL_KINDS[kind]
    model = factory()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sim = abi.ModelSimulator(model)
    batch = sim.sample(4000, random_seed=1)
    outputs = [*model.free_RVs, *model.deterministics, *model.observed_RVs]
    assert set(batch) == {v.name for v in outputs}
    reference = pm.draw(outputs, draws=1500, random_seed=2)
    for var, ref in zip(outputs, reference):
        assert batch[var.name].shape == (4000, *ref.shape[1:]), var.name
        _assert_same_distribution(batch[var.name], ref, f"{kind}:{var.name}")
    assert sim.fallback_variables == expected_fallbacks
    fallback_warnings = [w for w in caught if "Could not vectorize" in str(w.message)]
    if expected_fallbacks:
        # warned once, naming the variable
        assert len(fallback_warnings) == 1
        assert all(f"'{name}'" in str(fallback_warnings[0].message) for name in expected_fallbacks)
    else:
        assert not fallback_warnings


@pytest.mark.parametrize(
    "kind", ["ar", "ar2", "garch11", "ornstein_uhlenbeck", "user_scan", "custom_dist_scan"]
)
def test_scans_run_once_for_the_batch(kind):
    """A scan is batched into one scan over all simulations: no per-draw loop (PyTensor's
    ``Blockwise(Scan)``, our ``PerDrawLoop``) is left in the compiled simulator, and each
    simulation's series is its own (independent innovations)."""
    from pytensor.scan.op import Scan
    from pytensor.tensor.blockwise import Blockwise

    from pymc_abi.model._vectorize import PerDrawLoop

    sim = abi.ModelSimulator(MODEL_KINDS[kind][0]())
    nodes = sim._compiled(frozenset()).fn.fn.maker.fgraph.apply_nodes
    assert any(isinstance(node.op, Scan) for node in nodes)
    assert not any(isinstance(node.op, Blockwise | PerDrawLoop) for node in nodes)
    y = sim.sample(500, random_seed=4)["y"].reshape(500, -1)
    assert np.unique(y[:, -1]).size == 500
    # neighbouring simulations are independent series
    assert abs(np.corrcoef(y[::2, -1], y[1::2, -1])[0, 1]) < 0.2


def test_draws_are_independent_across_the_batch():
    sim = abi.ModelSimulator(models.hierarchical())
    batch = sim.sample(2000, random_seed=3)
    # different simulations differ, and theta's correlation with mu is the prior's
    assert np.unique(batch["mu"]).size == 2000
    assert np.unique(batch["y"][:, 0]).size == 2000
    corr = np.corrcoef(batch["y"][:, 0], batch["y"][:, 1])[0, 1]
    # y_0 and y_1 share theta_0: cov = var(mu) + E[tau^2] = 25 + 25; var = 50 + 100
    np.testing.assert_allclose(corr, 50 / 150, atol=0.06)


def test_random_seed_reproducible():
    sim = abi.ModelSimulator(models.iid_normal())
    a = sim.sample(100, random_seed=7)
    b = sim.sample(100, random_seed=7)
    c = sim.sample(100, random_seed=8)
    np.testing.assert_array_equal(a["y"], b["y"])
    assert not np.allclose(a["y"], c["y"])
    # the constructor seed makes unseeded calls reproducible too
    s1 = abi.ModelSimulator(models.iid_normal(), random_seed=5).sample(10)
    s2 = abi.ModelSimulator(models.iid_normal(), random_seed=5).sample(10)
    np.testing.assert_array_equal(s1["y"], s2["y"])


def test_fallback_loop_is_reproducible():
    sim = abi.ModelSimulator(models.simulator())
    np.testing.assert_array_equal(
        sim.sample(50, random_seed=1)["y"], sim.sample(50, random_seed=1)["y"]
    )


def test_dim_lengths_without_recompiling():
    model = models.iid_normal(n_obs=50)
    sim = abi.ModelSimulator(model)
    fn = sim._compiled(frozenset())
    batch = sim.sample(500, dim_lengths={"obs": 73}, random_seed=1)
    assert batch["y"].shape == (500, 73)
    assert sim._compiled(frozenset()) is fn and len(sim._compiled) == 1
    # the model's own dim length is unchanged
    assert model.dim_lengths["obs"].get_value() == 50
    assert sim.sample(5)["y"].shape == (5, 50)
    # y's mean given mu is mu
    np.testing.assert_allclose(batch["y"].mean(1), batch["mu"], atol=5 * 3 / np.sqrt(73))


def test_dim_lengths_of_parameters_rejected():
    sim = abi.ModelSimulator(models.hierarchical())
    with pytest.raises(ValueError, match="'group' is a dimension of a free variable"):
        sim.sample(5, dim_lengths={"group": 4})
    with pytest.raises(ValueError, match="'nope' is not a dim"):
        sim.sample(5, dim_lengths={"nope": 4})


def test_data_for_all_and_per_simulation():
    model = models.regression(n_obs=100, n_cov=5)
    sim = abi.ModelSimulator(model)
    rng = np.random.default_rng(0)

    # one design matrix for the whole batch, with another number of rows
    X = rng.normal(size=(30, 5))
    batch = sim.sample(300, data={"X": X}, random_seed=1)
    assert batch["y"].shape == (300, 30)
    np.testing.assert_allclose(batch["mu"], batch["alpha"][:, None] + batch["beta"] @ X.T)

    # one design matrix per simulation
    Xs = rng.normal(size=(300, 20, 5))
    batch = sim.sample(300, data={"X": Xs}, random_seed=1)
    assert batch["y"].shape == (300, 20)
    expected = batch["alpha"][:, None] + np.einsum("bnk,bk->bn", Xs, batch["beta"])
    np.testing.assert_allclose(batch["mu"], expected)
    resid = (batch["y"] - batch["mu"]) / batch["sigma"][:, None]
    assert abs(resid.mean()) < 0.05 and abs(resid.std() - 1) < 0.05

    # the model's own data is untouched
    assert model["X"].get_value().shape == (100, 5)


def test_bad_data_errors():
    sim = abi.ModelSimulator(models.regression())
    with pytest.raises(ValueError, match="'Z' is not a pm.Data container"):
        sim.sample(5, data={"Z": np.zeros(3)})
    with pytest.raises(ValueError, match="Data 'X' must have 2 dimensions"):
        sim.sample(5, data={"X": np.zeros(3)})
    with pytest.raises(ValueError, match="leading batch axis of length 4"):
        sim.sample(5, data={"X": np.zeros((4, 10, 5))})
    with pytest.raises(ValueError, match="contradicts data 'X'"):
        sim.sample(5, data={"X": np.zeros((10, 5))}, dim_lengths={"obs": 11})


def test_ordered_exchangeable_is_sorted_exactly():
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1, shape=3, transform=ordered)
        pm.Normal("y", mu, 0.1, observed=np.zeros(3))
    sim = abi.ModelSimulator(model)
    batch = sim.sample(20000, random_seed=1)
    assert np.all(np.diff(batch["mu"], axis=1) > 0)
    # y is simulated from the ordered values, not from the unsorted draws
    assert np.abs(batch["y"] - batch["mu"]).max() < 1.0
    # the order statistics of 3 standard normals: E[max] = 3 / (2 sqrt(pi))
    np.testing.assert_allclose(batch["mu"][:, 2].mean(), 3 / (2 * np.sqrt(np.pi)), atol=0.03)
    assert sim._compile(frozenset()).sorted_names == ["mu"]


def test_ordered_non_exchangeable_is_rejected_and_redrawn():
    with pm.Model() as model:
        mu = pm.Normal("mu", [-1.0, 1.0], 1.0, transform=ordered)
        pm.Normal("y", mu, 0.1, observed=np.zeros(2))
    sim = abi.ModelSimulator(model)
    batch = sim.sample(20000, random_seed=1)
    assert np.all(np.diff(batch["mu"], axis=1) > 0)
    assert np.abs(batch["y"] - batch["mu"]).max() < 1.0
    # exact: compare with rejection done by hand on pm.draw
    ref = pm.draw(mu, draws=40000, random_seed=2)
    ref = ref[ref[:, 0] < ref[:, 1]]
    _assert_same_distribution(batch["mu"], ref, "mu")


def test_log_transform_on_unbounded_prior_rejects():
    with pm.Model() as model:
        s = pm.Normal("s", 1.0, 1.0, transform=log)
        pm.Normal("y", 0, s, observed=np.zeros(3))
    batch = abi.ModelSimulator(model).sample(5000, random_seed=1)
    assert batch["s"].min() > 0


def test_impossible_support_raises():
    with pm.Model() as model:
        pm.Normal("s", -50.0, 1.0, transform=log)
        pm.Normal("y", 0, 1, observed=np.zeros(3))
    sim = abi.ModelSimulator(model)
    with pytest.raises(RuntimeError, match="'s' keep falling outside the support"):
        sim.sample(10, random_seed=1)


def test_discrete_free_rv_error():
    with pm.Model() as model:
        k = pm.Poisson("k", 3)
        pm.Normal("y", k, 1, observed=np.zeros(3))
    with pytest.raises(ValueError, match=r"'k' is discrete.*marginalize"):
        abi.ModelSimulator(model)


def test_no_observed_error():
    with pm.Model() as model:
        pm.Normal("x", 0, 1)
    with pytest.raises(ValueError, match="no observed random variable"):
        abi.ModelSimulator(model)


@pytest.mark.parametrize("dist", [pm.Flat, pm.HalfFlat])
def test_flat_prior_error(dist):
    with pm.Model() as model:
        x = dist("x")
        pm.Normal("y", x, 1, observed=np.zeros(3))
    with pytest.raises(ValueError, match=r"'x' has a (Half)?Flat prior.*proper prior"):
        abi.ModelSimulator(model)


def test_potential_warns():
    with pm.Model() as model:
        x = pm.Normal("x", 0, 1)
        pm.Potential("pen", -(x**2))
        pm.Normal("y", x, 1, observed=np.zeros(3))
    with pytest.warns(abi.PotentialIgnoredWarning, match=r"Potentials \('pen'\).*ignores them"):
        sim = abi.ModelSimulator(model)
    assert sim.sample(3)["y"].shape == (3, 3)


def test_model_from_context_and_repr():
    with models.iid_normal():
        sim = abi.ModelSimulator()
    assert "mu" in repr(sim) and "y" in repr(sim)
    assert sim.sample(0)["y"].shape == (0, 50)


def test_scan_with_until_falls_back_naming_why():
    """A scan that stops on a condition cannot be one scan over the batch: each simulation
    would stop at its own step. It is looped per draw, and the reason is given."""
    import pytensor
    import pytensor.tensor as pt
    from pymc.pytensorf import collect_default_updates
    from pytensor.scan.utils import until

    from pymc_abi.model._vectorize import batch_graph

    mu = pm.Normal.dist(0, 1)

    def step(x_1, mu):
        x = pm.Normal.dist(x_1 + mu, 1.0)
        return x, collect_default_updates([x], inputs=[x_1, mu]), until(x > 100.0)

    xs, _ = pytensor.scan(step, outputs_info=[pt.zeros(())], non_sequences=[mu], n_steps=10)
    reasons = []
    (batched,) = batch_graph([xs], {}, pt.constant(3, dtype="int64"), on_fallback=reasons.append)
    assert reasons and "stops on a condition" in reasons[0]
    assert batched.eval().shape == (3, 10)


def test_draws_that_loop_compile_without_a_c_compiler():
    """PyTensor 2 resolves the "FAST_RUN" mode to a tuple when it has no C compiler (cxx
    empty: a machine without one, or a flag left so by concurrent rewrites); the per-draw
    loop spells its mode out, so it compiles either way."""
    import pytensor

    def draw(rng, mu, size=None):
        return rng.normal(mu, 1.0, size=size)

    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        pm.Simulator("y", draw, mu, observed=np.zeros(3))
    with pytensor.config.change_flags(cxx=""), pytest.warns(abi.UnvectorizedWarning):
        draws = abi.ModelSimulator(model, random_seed=0).sample(20)
    assert draws["y"].shape == (20, 3) and np.isfinite(draws["y"]).all()
