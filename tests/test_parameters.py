import numpy as np
import pymc as pm
import pytest
from pymc.distributions.transforms import ordered

import pymc_abi as abi
from tests import models


def _log_model():
    with pm.Model() as model:
        sigma = pm.HalfNormal("sigma", 1, shape=2)
        pm.Normal("y", 0, sigma, observed=np.zeros((3, 2)))
    return model


def _logodds_model():
    with pm.Model() as model:
        p = pm.Beta("p", 2, 3)
        pm.Binomial("y", 10, p, observed=[3, 4])
    return model


def _interval_model():
    with pm.Model() as model:
        a = pm.Normal("a", 0, 1)
        width = pm.HalfNormal("width", 1)
        u = pm.Uniform("u", lower=a, upper=a + 1 + width)
        pm.Deterministic("u_rel", (u - a) / (1 + width))
        pm.Normal("y", u, 1, observed=[0.0, 1.0])
    return model


def _simplex_model():
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(4))
        pm.Multinomial("y", 20, w, observed=[5, 5, 5, 5])
    return model


def _ordered_model():
    with pm.Model() as model:
        c = pm.Normal("c", 0, 2, shape=4, transform=ordered)
        pm.OrderedLogistic("y", eta=0.0, cutpoints=c, observed=[0, 1, 2])
    return model


def _zerosum_model():
    with pm.Model(coords={"g": range(5)}) as model:
        z = pm.ZeroSumNormal("z", sigma=1.0, dims="g")
        pm.Normal("y", z, 1, observed=np.zeros(5), dims="g")
    return model


TRANSFORM_MODELS = {
    "log": (_log_model, ["sigma_log__[0]", "sigma_log__[1]"]),
    "logodds": (_logodds_model, ["p_logodds__"]),
    "interval": (_interval_model, ["a", "width_log__", "u_interval__"]),
    "simplex": (_simplex_model, [f"w_simplex__[{i}]" for i in range(3)]),
    "ordered": (_ordered_model, [f"c_ordered__[{i}]" for i in range(4)]),
    "zerosum": (_zerosum_model, [f"z_zerosum__[{i}]" for i in range(4)]),
    "cholesky": (models.lkj_mvnormal, None),
}


@pytest.mark.parametrize("kind", list(TRANSFORM_MODELS))
def test_round_trip_and_jacobian(kind):
    factory, names = TRANSFORM_MODELS[kind]
    model = factory()
    sim = abi.ModelSimulator(model)
    space = sim.parameters
    batch = sim.sample(500, random_seed=1)

    point = model.initial_point()
    assert space.value_names == list(point)
    assert space.ndim == sum(v.size for v in point.values()) == len(space.names)
    if names is not None:
        assert space.names == names

    z = space.to_unconstrained(batch)
    assert z.shape == (500, space.ndim) and np.all(np.isfinite(z))
    back = space.to_constrained(z)
    for name in space.free_names:
        np.testing.assert_allclose(back[name], batch[name], rtol=1e-8, atol=1e-10, err_msg=name)
    for name in space.deterministic_names:
        np.testing.assert_allclose(back[name], batch[name], rtol=1e-8, atol=1e-10, err_msg=name)
    np.testing.assert_allclose(space.to_unconstrained(back), z, rtol=1e-8, atol=1e-10)

    # the Jacobian term is the one PyMC adds to the log density
    logp_jac = model.compile_logp(vars=model.free_RVs, jacobian=True)
    logp_raw = model.compile_logp(vars=model.free_RVs, jacobian=False)
    jac = space.log_jacobian(z[:20])
    for i in range(20):
        p = {
            name: z[i, space.slices[name]].reshape(space.shapes[name]) for name in space.value_names
        }
        np.testing.assert_allclose(jac[i], logp_jac(p) - logp_raw(p), rtol=1e-8, atol=1e-8)


def test_in_support():
    space = abi.ParameterSpace(_ordered_model())
    ok = space.in_support({"c": np.array([[0.0, 1.0, 2.0, 3.0], [0.0, 2.0, 1.0, 3.0]])})
    np.testing.assert_array_equal(ok[:, 0], [True, False])
    space = abi.ParameterSpace(_zerosum_model())
    ok = space.in_support({"z": np.array([[1.0, -1.0, 0, 0, 0], [1.0, 0, 0, 0, 0]])})
    np.testing.assert_array_equal(ok[:, 0], [True, False])


def test_deterministics_follow_new_data():
    model = models.regression(n_obs=10, n_cov=2)
    space = abi.ParameterSpace(model)
    z = np.random.default_rng(0).normal(size=(4, space.ndim))
    X = np.ones((3, 2))
    out = space.to_constrained(z, data={"X": X})
    np.testing.assert_allclose(out["mu"], out["alpha"][:, None] + out["beta"] @ X.T)
    Xs = np.random.default_rng(1).normal(size=(4, 6, 2))
    out = space.to_constrained(z, data={"X": Xs})
    np.testing.assert_allclose(
        out["mu"], out["alpha"][:, None] + np.einsum("bnk,bk->bn", Xs, out["beta"])
    )


def test_shape_errors():
    space = abi.ParameterSpace(models.iid_normal())
    with pytest.raises(ValueError, match=r"shape \(B, 2\).*\['mu', 'sigma_log__'\]"):
        space.to_constrained(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="Missing values for free variables \\['sigma'\\]"):
        space.to_unconstrained({"mu": np.zeros(3)})
