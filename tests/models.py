"""Small PyMC models shared by the tests: one for each kind of model users write."""

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pymc.pytensorf import collect_default_updates

RNG = np.random.default_rng(0)


def iid_normal(n_obs=50):
    with pm.Model(coords={"obs": range(n_obs)}) as model:
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", mu, sigma, observed=np.zeros(n_obs), dims="obs")
    return model


def vector_dims():
    with pm.Model(coords={"k": ["a", "b", "c"], "obs": range(10)}) as model:
        beta = pm.Normal("beta", [0.0, 1.0, -1.0], 0.5, dims="k")
        tau = pm.Exponential("tau", 2.0)
        pm.Deterministic("beta_sum", beta.sum())
        pm.Normal("y", beta[np.arange(10) % 3], tau, observed=np.zeros(10), dims="obs")
    return model


def hierarchical(n_groups=8, per_group=20, centered=True):
    group = np.repeat(np.arange(n_groups), per_group)
    with pm.Model(coords={"group": range(n_groups), "obs": range(group.size)}) as model:
        mu = pm.Normal("mu", 0, 5)
        tau = pm.HalfNormal("tau", 5)
        if centered:
            theta = pm.Normal("theta", mu, tau, dims="group")
        else:
            z = pm.Normal("z", 0, 1, dims="group")
            theta = pm.Deterministic("theta", mu + tau * z, dims="group")
        pm.Normal("y", theta[group], 10.0, observed=np.zeros(group.size), dims="obs")
    return model


def dirichlet():
    with pm.Model() as model:
        w = pm.Dirichlet("w", a=np.array([1.0, 2.0, 3.0]))
        pm.Categorical("y", p=w, observed=np.zeros(20, dtype=int))
    return model


def lkj_mvnormal():
    with pm.Model(coords={"d": range(3), "obs": range(15)}) as model:
        chol, _, _ = pm.LKJCholeskyCov(
            "chol", n=3, eta=2.0, sd_dist=pm.Exponential.dist(1.0, shape=3)
        )
        mu = pm.Normal("mu", 0, 1, dims="d")
        pm.MvNormal("y", mu, chol=chol, observed=np.zeros((15, 3)), dims=("obs", "d"))
    return model


def censored():
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        pm.Censored("y", pm.Normal.dist(mu, 1.0), lower=-0.5, upper=1.0, observed=np.zeros(30))
    return model


def binomial_logit():
    x = np.linspace(-1, 1, 12)
    with pm.Model() as model:
        beta = pm.Normal("beta", 0, 1, shape=2)
        pm.Binomial("y", n=10, logit_p=beta[0] + beta[1] * x, observed=np.zeros(12, dtype=int))
    return model


def scale_batched():
    with pm.Model() as model:
        sigma = pm.HalfNormal("sigma", 1, shape=3)
        pm.Normal("y", 0, sigma, size=(4, 3), observed=np.zeros((4, 3)))
    return model


def random_walk(steps=100):
    with pm.Model() as model:
        sigma = pm.HalfNormal("sigma", 0.5)
        pm.GaussianRandomWalk(
            "y",
            mu=0.1,
            sigma=sigma,
            init_dist=pm.Normal.dist(0, 1),
            steps=steps - 1,
            observed=np.zeros(steps),
        )
    return model


def mixture():
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(2))
        mu = pm.Normal("mu", [-2.0, 2.0], 0.5, shape=2)
        comps = pm.Normal.dist(mu, 1.0, shape=2)
        pm.Mixture("y", w=w, comp_dists=comps, observed=np.zeros(25))
    return model


def normal_mixture():
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(2))
        mu = pm.Normal("mu", [-2.0, 2.0], 0.5, shape=2)
        pm.NormalMixture("y", w=w, mu=mu, sigma=1.0, observed=np.zeros(25))
    return model


def ar():
    with pm.Model() as model:
        rho = pm.Uniform("rho", -0.9, 0.9)
        sigma = pm.HalfNormal("sigma", 1.0)
        pm.AR(
            "y",
            rho=[rho],
            sigma=sigma,
            init_dist=pm.Normal.dist(0, 1),
            steps=29,
            observed=np.zeros(30),
        )
    return model


def ar2(steps=40):
    """AR(2) with a constant, coefficients drawn per simulation."""
    with pm.Model() as model:
        rho = pm.Uniform("rho", -0.45, 0.45, shape=3)
        sigma = pm.HalfNormal("sigma", 1.0)
        pm.AR(
            "y",
            rho=rho,
            sigma=sigma,
            constant=True,
            init_dist=pm.Normal.dist(0, 1, shape=2),
            steps=steps - 2,
            observed=np.zeros(steps),
        )
    return model


def garch11(steps=40):
    with pm.Model() as model:
        omega = pm.HalfNormal("omega", 0.5)
        alpha = pm.Uniform("alpha", 0, 0.4)
        beta = pm.Uniform("beta", 0, 0.5)
        pm.GARCH11(
            "y",
            omega=omega,
            alpha_1=alpha,
            beta_1=beta,
            initial_vol=1.0,
            steps=steps - 1,
            observed=np.zeros(steps),
        )
    return model


def _ou_drift(x, theta, sigma):
    return -theta * x, sigma


def ornstein_uhlenbeck(steps=40):
    """An Ornstein-Uhlenbeck SDE by Euler-Maruyama."""
    with pm.Model() as model:
        theta = pm.HalfNormal("theta", 1.0)
        sigma = pm.HalfNormal("sigma", 0.5)
        pm.EulerMaruyama(
            "y",
            dt=0.1,
            sde_fn=_ou_drift,
            sde_pars=(theta, sigma),
            init_dist=pm.Normal.dist(0, 1),
            steps=steps - 1,
            observed=np.zeros(steps),
        )
    return model


def mv_random_walk(steps=20):
    with pm.Model() as model:
        drift = pm.Normal("drift", 0, 0.3, shape=2)
        pm.MvGaussianRandomWalk(
            "y",
            mu=drift,
            cov=np.array([[1.0, 0.5], [0.5, 1.0]]),
            init_dist=pm.MvNormal.dist(np.zeros(2), np.eye(2)),
            steps=steps - 1,
            observed=np.zeros((steps, 2)),
        )
    return model


def user_scan(steps=30):
    """A user's ``pytensor.scan``: a sequence, two lags of one state, a second state, and a
    deterministic output (a GARCH-like volatility driven by a covariate)."""
    x = np.sin(np.arange(steps) / 3.0)
    with pm.Model() as model:
        a = pm.Uniform("a", 0, 0.5, shape=2)
        b = pm.Normal("b", 0, 0.5)
        s0 = pm.HalfNormal("s0", 1.0)
        covariate = pm.Data("x", x)

        def step(x_t, m_2, m_1, s_1, a, b):
            m = a[0] * m_1 + a[1] * m_2 + b * x_t
            s = pt.sqrt(0.5 + 0.3 * s_1**2 + 0.1 * m**2)
            return m, s, m * s

        level, scale, product = pytensor.scan(
            step,
            sequences=[covariate],
            outputs_info=[{"initial": pt.as_tensor(np.zeros(2)), "taps": [-2, -1]}, s0, None],
            non_sequences=[a, b],
            return_updates=False,
        )
        pm.Deterministic("product", product)
        pm.Normal("y", level, scale, observed=np.zeros(steps))
    return model


def _ar1_dist(rho, sigma, size):
    def step(y_1, rho, sigma):
        y = pm.Normal.dist(rho * y_1, sigma)
        return y, collect_default_updates([y])

    ys, _ = pytensor.scan(
        step, outputs_info=[pt.zeros(())], non_sequences=[rho, sigma], n_steps=25, strict=True
    )
    return ys


def custom_dist_scan():
    """A ``CustomDist`` whose ``dist`` draws in a ``pytensor.scan`` (PyMC's documented
    pattern for a time series it does not ship)."""
    with pm.Model() as model:
        rho = pm.Uniform("rho", -0.9, 0.9)
        sigma = pm.HalfNormal("sigma", 1.0)
        pm.CustomDist("y", rho, sigma, dist=_ar1_dist, observed=np.zeros(25))
    return model


def _normal_sim(rng, mu, sigma, size=None):
    return rng.normal(mu, sigma, size=size)


def simulator():
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Simulator("y", _normal_sim, params=(mu, sigma), observed=np.zeros(20))
    return model


def _laplace_random(mu, b, rng=None, size=None):
    return rng.laplace(mu, b, size=size)


def custom_dist():
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        b = pm.HalfNormal("b", 1)
        pm.CustomDist("y", mu, b, random=_laplace_random, observed=np.zeros(20))
    return model


def regression(n_obs=100, n_cov=5):
    X = RNG.normal(size=(n_obs, n_cov))
    with pm.Model(coords={"obs": range(n_obs), "cov": range(n_cov)}) as model:
        x = pm.Data("X", X, dims=("obs", "cov"))
        alpha = pm.Normal("alpha", 0, 1)
        beta = pm.Normal("beta", 0, 1, dims="cov")
        sigma = pm.HalfNormal("sigma", 1)
        mu = pm.Deterministic("mu", alpha + x @ beta, dims="obs")
        pm.Normal("y", mu, sigma, observed=np.zeros(n_obs), dims="obs", shape=x.shape[0])
    return model


def logistic_regression(n_obs=100, n_cov=5):
    X = RNG.normal(size=(n_obs, n_cov))
    with pm.Model(coords={"obs": range(n_obs), "cov": range(n_cov)}) as model:
        x = pm.Data("X", X, dims=("obs", "cov"))
        alpha = pm.Normal("alpha", 0, 1)
        beta = pm.Normal("beta", 0, 1, dims="cov")
        pm.Bernoulli(
            "y",
            logit_p=alpha + x @ beta,
            observed=np.zeros(n_obs, dtype=int),
            dims="obs",
            shape=x.shape[0],
        )
    return model
