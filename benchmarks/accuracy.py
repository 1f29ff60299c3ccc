"""Accuracy with default settings, against NUTS (or exact posteriors where they exist).

Run: ``python benchmarks/accuracy.py [--models studentt,bimodal] [--datasets 3]``
(all models take about an hour on 2 CPU cores; split them over processes with
``--models`` and gather the JSON lines with ``--table results*.jsonl``).

For every model, datasets are drawn from its prior predictive distribution (a fixed seed),
or, for the models of informative data (``informative_regression`` and after), made from a
fixed truth as real data are; each is fitted by

- the amortizer trained **online** with default settings (``abi.fit()``), and
- the amortizer trained **offline** on 10,000 simulations (``abi.fit(simulations=10_000)``),
- either with the flow preconditioned by each dataset's Laplace map (regimes
  ``online laplace`` and ``offline 10k laplace``: ``preconditioner="laplace"``),

each as the raw flow (``importance_sampling=False``) and as ``sample()`` returns it by default:
the per-dataset ladder (importance sampling, the Laplace tier, NUTS), called twice, the
first call after ``fit`` reported apart. Warm NUTS as a user runs it (``pm.sample()``
defaults, one core, its sampling time without compilation) is timed on the same data in the
same run. The reference is NUTS (4 chains x 1,000 draws after 1,000
tuning steps, ``target_accept=0.95``), or exact draws where the posterior is known (the
Dirichlet-multinomial; the bimodal model, on a grid, because NUTS chains stay in one mode).
Scores, per dataset, over every element of every free variable:

- mean error: ``|mean - reference mean| / reference SD``, the largest over elements;
- SD ratio: ``SD / reference SD``, the range over elements;
- C2ST (``abi.c2st``): accuracy of a classifier telling 2,000 draws from 2,000 reference
  draws apart (0.5: indistinguishable; ~0.51 +- 0.01 for two exact samples);
- Pareto k̂ and the reliability flag of importance sampling.

A raw posterior counts as **wrong** when its mean error exceeds 0.5 reference SDs or an SD
ratio leaves [0.7, 1.4]; it is **caught** when importance sampling flags it unreliable. The
second table scores the targets of the accuracy issue (flow alone within 0.2 SDs and 15%,
the default within 0.1 SDs and 10%, its time at most a tenth of NUTS's).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pymc as pm
import torch
from scipy import interpolate

import pymc_abi as abi

RNG = np.random.default_rng(20261130)


@dataclass
class Case:
    """A model: ``build(observed)`` returns it with the given observed data."""

    name: str
    what: str
    build: Callable[[dict | None], pm.Model]
    exact: Callable[[pm.Model, dict, np.random.Generator], dict] | None = None
    fit: dict = field(default_factory=dict)
    covariates: dict = field(default_factory=dict)  # pm.Data drawn per dataset: name -> fn
    # real-like data instead of prior-predictive draws: rng -> one observed dict
    real: Callable[[np.random.Generator], dict] | None = None


def _observed(model, values):
    return values or {rv.name: np.zeros(rv.type.shape) for rv in model.observed_RVs}


# ---------------------------------------------------------------------- the models
X_REG = RNG.normal(size=(30, 2))
X_COLL = np.column_stack([X_REG[:, 0], 0.95 * X_REG[:, 0] + np.sqrt(1 - 0.95**2) * X_REG[:, 1]])
X_LOGIT = RNG.normal(size=(60, 3))
X_POIS = RNG.normal(size=(40, 3)) * 0.5
X_ORD = RNG.normal(size=60)
X_LINE = np.linspace(-2, 2, 30)
SCHOOL_SD = np.array([15.0, 10, 16, 11, 9, 11, 10, 18])
GROUPS = np.repeat(np.arange(12), 5)
_x = np.linspace(0, 1, 40)
_knots = np.r_[[0.0] * 3, np.linspace(0, 1, 6), [1.0] * 3]
SPLINE = np.column_stack(
    [interpolate.BSpline(_knots, np.eye(8)[i], 3)(_x) for i in range(8)]
)  # 40 x 8 cubic B-spline basis


def studentt(obs=None):
    with pm.Model(coords={"obs": range(50)}) as m:
        mu = pm.Normal("mu", 0, 10)
        sigma = pm.HalfNormal("sigma", 5)
        nu = pm.Gamma("nu", 2, 0.1)
        pm.StudentT("y", nu=nu, mu=mu, sigma=sigma, observed=np.zeros(50), dims="obs")
    return pm.observe(m, obs) if obs else m


def cauchy_regression(obs=None):
    with pm.Model() as m:
        a = pm.Normal("a", 0, 5)
        b = pm.Normal("b", 0, 5)
        s = pm.HalfNormal("s", 2)
        pm.Cauchy("y", a + b * X_LINE, s, observed=np.zeros(30))
    return pm.observe(m, obs) if obs else m


def eight_schools_centered(obs=None):
    with pm.Model(coords={"school": range(8)}) as m:
        mu = pm.Normal("mu", 0, 5)
        tau = pm.HalfCauchy("tau", 5)
        theta = pm.Normal("theta", mu, tau, dims="school")
        pm.Normal("y", theta, SCHOOL_SD, observed=np.zeros(8), dims="school")
    return pm.observe(m, obs) if obs else m


def bimodal(obs=None):
    with pm.Model() as m:
        theta = pm.Normal("theta", 0, 2)
        pm.Normal("y", theta**2, 1.0, observed=np.zeros(5))
    return pm.observe(m, obs) if obs else m


def _bimodal_exact(model, obs, rng, n=4000):
    grid = np.linspace(-8, 8, 40001)
    y = obs["y"]
    logp = -0.5 * (grid / 2) ** 2 - 0.5 * ((y[:, None] - grid**2) ** 2).sum(0)
    p = np.exp(logp - logp.max())
    cdf = np.cumsum(p) / p.sum()
    return {"theta": np.interp(rng.random(n), cdf, grid)}


def correlated_regression(obs=None):
    with pm.Model(coords={"coef": ["x1", "x2"]}) as m:
        beta = pm.Normal("beta", 0, 1, dims="coef")
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", X_COLL @ beta, sigma, observed=np.zeros(30))
    return pm.observe(m, obs) if obs else m


def varying_intercepts(obs=None):
    with pm.Model(coords={"group": range(12)}) as m:
        mu = pm.Normal("mu", 0, 2)
        tau = pm.HalfNormal("tau", 1)
        z = pm.Normal("z", 0, 1, dims="group")
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", (mu + tau * z)[GROUPS], sigma, observed=np.zeros(60))
    return pm.observe(m, obs) if obs else m


def logistic_regression(obs=None):
    with pm.Model(coords={"coef": range(3)}) as m:
        beta = pm.Normal("beta", 0, 1, dims="coef")
        pm.Bernoulli("y", logit_p=X_LOGIT @ beta, observed=np.zeros(60, dtype=int))
    return pm.observe(m, obs) if obs else m


def poisson_regression(obs=None):
    with pm.Model(coords={"coef": range(3)}) as m:
        x = pm.Data("X", X_POIS)
        beta = pm.Normal("beta", 0, 1, dims="coef")
        intercept = pm.Normal("intercept", 1, 1)
        pm.Poisson("y", pm.math.exp(intercept + x @ beta), observed=np.zeros(40, dtype=int))
    return pm.observe(m, obs) if obs else m


def ordinal(obs=None):
    with pm.Model() as m:
        slope = pm.Normal("slope", 0, 1)
        cut = pm.Normal(
            "cutpoints",
            mu=[-1.0, 0.0, 1.0],
            sigma=1.0,
            transform=pm.distributions.transforms.ordered,
            initval=[-1.0, 0.0, 1.0],
        )
        y = obs["y"] if obs else np.zeros(60, dtype=int)  # pm.observe refuses initval
        pm.OrderedLogistic("y", eta=slope * X_ORD, cutpoints=cut, observed=y)
    return m


def dirichlet_multinomial(obs=None):
    with pm.Model() as m:
        w = pm.Dirichlet("w", a=np.ones(4))
        pm.Multinomial("y", n=50, p=w, observed=np.zeros(4, dtype=int))
    return pm.observe(m, obs) if obs else m


def _dirichlet_exact(model, obs, rng, n=4000):
    return {"w": rng.dirichlet(1.0 + obs["y"], size=n)}


def spline(obs=None):
    with pm.Model(coords={"basis": range(8)}) as m:
        coef = pm.Normal("coef", 0, 1, dims="basis")
        sigma = pm.HalfNormal("sigma", 0.5)
        pm.Normal("y", SPLINE @ coef, sigma, observed=np.zeros(40))
    return pm.observe(m, obs) if obs else m


# --- informative data, as users bring it (a fixed truth, not a prior-predictive draw)
X_INF = RNG.normal(size=(100, 4))
YEARS = np.arange(1950.0, 2021.0)
X_ROWS = RNG.normal(size=(500, 3))
X_LOGIT_1000 = RNG.normal(size=(1000, 4))
X_GP = np.linspace(0, 10, 40)
X_GLM = RNG.normal(size=(200, 2))
EXPOSURE = RNG.uniform(100, 10_000, size=200)


def informative_regression(obs=None):
    with pm.Model(coords={"coef": range(4)}) as m:
        a = pm.Normal("a", 0, 10)
        b = pm.Normal("b", 0, 10, dims="coef")
        s = pm.HalfNormal("s", 10)
        pm.Normal("y", a + X_INF @ b, s, observed=np.zeros(100))
    return pm.observe(m, obs) if obs else m


def _informative_data(rng):  # noise 1/100 of the prior scale: posterior SDs ~1/1000 of it
    return {"y": 1.0 + X_INF @ np.array([0.5, -1.0, 2.0, 0.3]) + rng.normal(0, 0.1, 100)}


def calendar_years(obs=None):
    with pm.Model() as m:
        a = pm.Normal("a", 0, 50)
        b = pm.Normal("b", 0, 0.1)
        s = pm.HalfNormal("s", 1)
        pm.Normal("y", a + b * YEARS, s, observed=np.zeros(len(YEARS)))
    return pm.observe(m, obs) if obs else m


def _years_data(rng):  # a warming trend of 0.015 a year, the covariate about 2,000
    return {"y": -0.3 + 0.015 * (YEARS - 1950) + rng.normal(0, 0.1, len(YEARS))}


def many_rows(obs=None):
    with pm.Model(coords={"coef": range(3)}) as m:
        a = pm.Normal("a", 0, 5)
        b = pm.Normal("b", 0, 5, dims="coef")
        s = pm.HalfNormal("s", 5)
        pm.Normal("y", a + X_ROWS @ b, s, observed=np.zeros(500))
    return pm.observe(m, obs) if obs else m


def _rows_data(rng):
    return {"y": 2.0 + X_ROWS @ np.array([1.0, -0.5, 0.25]) + rng.normal(0, 1.0, 500)}


def logistic_1000(obs=None):
    with pm.Model(coords={"coef": range(4)}) as m:
        beta = pm.Normal("beta", 0, 2.5, dims="coef")
        pm.Bernoulli("y", logit_p=X_LOGIT_1000 @ beta, observed=np.zeros(1000, dtype=int))
    return pm.observe(m, obs) if obs else m


def _logistic_1000_data(rng):
    p = 1 / (1 + np.exp(-X_LOGIT_1000 @ np.array([0.5, -1.0, 0.8, 0.2])))
    return {"y": rng.binomial(1, p)}


def gp_regression(obs=None):
    with pm.Model() as m:
        ls = pm.Gamma("ls", 2, 1)
        eta = pm.HalfNormal("eta", 2)
        sigma = pm.HalfNormal("sigma", 1)
        cov = eta**2 * pm.gp.cov.ExpQuad(1, ls)
        pm.gp.Marginal(cov_func=cov).marginal_likelihood(
            "y", X_GP[:, None], np.zeros(len(X_GP)), sigma=sigma
        )
    return pm.observe(m, obs) if obs else m


def _gp_data(rng):
    return {"y": np.sin(X_GP) + rng.normal(0, 0.2, len(X_GP))}


def poisson_offset(obs=None):
    with pm.Model(coords={"coef": range(2)}) as m:
        a = pm.Normal("a", -4, 2)
        b = pm.Normal("b", 0, 1, dims="coef")
        rate = pm.math.exp(np.log(EXPOSURE) + a + X_GLM @ b)
        pm.Poisson("y", rate, observed=np.zeros(200, dtype=int))
    return pm.observe(m, obs) if obs else m


def _poisson_offset_data(rng):
    return {"y": rng.poisson(EXPOSURE * np.exp(-5.0 + X_GLM @ np.array([0.3, -0.2])))}


def _design(rng, n, dim_lengths):
    return rng.normal(size=(n, 30, 2)) * rng.uniform(0.3, 2.0, size=(n, 1, 2))


def regression_covariates(obs=None):
    with pm.Model(coords={"obs": range(30), "coef": range(2)}) as m:
        x = pm.Data("X", np.ones((30, 2)), dims=("obs", "coef"))
        beta = pm.Normal("beta", 0, 1, dims="coef")
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", x @ beta, sigma, observed=np.zeros(30), dims="obs")
    return pm.observe(m, obs) if obs else m


def _simulate_normal(rng, mu, sigma, size=None):
    return rng.normal(mu, sigma, size=size)


def simulator(obs=None):
    with pm.Model() as m:
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Simulator("y", _simulate_normal, mu, sigma, observed=np.zeros(20))
    return pm.observe(m, obs) if obs else m


def _simulator_reference(obs):  # the same model with its exact likelihood, for NUTS
    with pm.Model() as m:
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", mu, sigma, observed=obs["y"])
    return m


CASES = {
    c.name: c
    for c in [
        Case("studentt", "Student-t likelihood, nu ~ Gamma(2, 0.1)", studentt),
        Case("cauchy_regression", "Cauchy noise, line", cauchy_regression),
        Case("eight_schools_centered", "funnel: centred 8 schools", eight_schools_centered),
        Case("bimodal", "bimodal: y ~ N(theta^2, 1)", bimodal, exact=_bimodal_exact),
        Case("correlated_regression", "correlated coefficients (r = 0.95)", correlated_regression),
        Case("varying_intercepts", "15 parameters, 12 groups, non-centred", varying_intercepts),
        Case("logistic_regression", "binary data, 3 coefficients", logistic_regression),
        Case("poisson_regression", "counts, covariates in pm.Data", poisson_regression),
        Case("ordinal", "ordered cutpoints", ordinal),
        Case("dirichlet_multinomial", "simplex", dirichlet_multinomial, exact=_dirichlet_exact),
        Case("spline", "cubic spline regression, 9 parameters", spline),
        Case(
            "regression_covariates",
            "a design matrix per dataset, noise SD unknown",
            regression_covariates,
            fit={"covariates": {"X": _design}},
            covariates={"X": _design},
        ),
        Case("simulator", "pm.Simulator vs its exact likelihood", simulator),
        Case(
            "informative_regression",
            "100 rows, noise 1/100 of the prior scale",
            informative_regression,
            real=_informative_data,
        ),
        Case("calendar_years", "a trend on years 1950-2020", calendar_years, real=_years_data),
        Case("many_rows", "linear regression, 500 rows", many_rows, real=_rows_data),
        Case(
            "logistic_1000",
            "logistic regression, 1,000 rows",
            logistic_1000,
            real=_logistic_1000_data,
        ),
        Case("gp_regression", "marginal GP, 40 points", gp_regression, real=_gp_data),
        Case(
            "poisson_offset",
            "Poisson GLM with an exposure offset",
            poisson_offset,
            real=_poisson_offset_data,
        ),
    ]
}


# ---------------------------------------------------------------------- scoring
def _flat(draws: dict, names: list[str]) -> np.ndarray:
    return np.column_stack([np.asarray(draws[n]).reshape(len(draws[n]), -1) for n in names])


def _from_result(result, names):
    post = result.posterior
    return {n: post[n].values.reshape(-1, *post[n].shape[2:]) for n in names}


def _reference(case, model, obs, seed, data):
    rng = np.random.default_rng(seed)
    if case.exact is not None:
        return case.exact(model, obs, rng)
    nuts_model = _simulator_reference(obs) if case.name == "simulator" else model
    with nuts_model:
        if data:
            pm.set_data(data)
        idata = pm.sample(
            1000,
            tune=1000,
            chains=4,
            cores=1,
            target_accept=0.95,
            progressbar=False,
            random_seed=seed,
            compute_convergence_checks=False,
        )
    names = [rv.name for rv in nuts_model.free_RVs]
    return _from_result(idata, names)


def _nuts_seconds(case, model, obs, seed, data):
    """Warm NUTS as a user runs it (``pm.sample()`` defaults, one core): its sampling time,
    compilation excluded, as ``pm.sample`` reports it."""
    if case.name == "simulator":
        model = _simulator_reference(obs)
    with model:
        if data:
            pm.set_data(data)
        idata = pm.sample(cores=1, progressbar=False, random_seed=seed)
    return float(idata.posterior.attrs["sampling_time"])


def _score(draws, reference, names, seed):
    a, b = _flat(draws, names), _flat(reference, names)
    mean_err = float((np.abs(a.mean(0) - b.mean(0)) / b.std(0)).max())
    ratio = a.std(0) / b.std(0)
    n = min(2000, len(a), len(b))
    rng = np.random.default_rng(seed)
    pick_a = a[rng.choice(len(a), n, replace=False)]
    pick_b = b[rng.choice(len(b), n, replace=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score = abi.c2st(pick_a, pick_b, random_seed=seed)
    return {
        "mean_err": mean_err,
        "sd_ratio_min": float(ratio.min()),
        "sd_ratio_max": float(ratio.max()),
        "c2st": score,
    }


def run_case(case: Case, datasets: int, regimes: list[str], seed: int = 0) -> list[dict]:
    model = case.build(None)
    names = [rv.name for rv in model.free_RVs]
    rng = np.random.default_rng(seed)
    data = [{k: fn(rng, 1, {})[0] for k, fn in case.covariates.items()} for _ in range(datasets)]
    if case.real is not None:
        observed = [case.real(rng) for _ in range(datasets)]
    else:
        sims = abi.ModelSimulator(model, random_seed=seed).sample(
            datasets, data={k: np.stack([d[k] for d in data]) for k in case.covariates} or None
        )
        observed = [
            {rv.name: sims[rv.name][i] for rv in model.observed_RVs} for i in range(datasets)
        ]
    references = [
        _reference(case, case.build(o), o, seed + i, d)
        for i, (o, d) in enumerate(zip(observed, data))
    ]
    nuts_seconds = [
        _nuts_seconds(case, case.build(o), o, seed + i, d)
        for i, (o, d) in enumerate(zip(observed, data))
    ]
    rows = []
    for regime in regimes:
        options = {"simulations": 10_000} if regime.startswith("offline 10k") else {}
        if regime.endswith("laplace"):  # the flow preconditioned by Laplace maps
            options["preconditioner"] = "laplace"
        start = time.perf_counter()
        amortizer = abi.fit(model, random_seed=seed, progressbar=False, **options, **case.fit)
        train_s = time.perf_counter() - start
        for i, (obs, ref, covs) in enumerate(zip(observed, references, data)):
            raw = amortizer.sample(
                obs, data=covs or None, draws=1000, importance_sampling=False, random_seed=i
            )
            row = {
                "model": case.name,
                "what": case.what,
                "regime": regime,
                "dataset": i,
                "train_s": train_s,
                "steps": amortizer.history.step[-1],
                "stop": amortizer.history.stops[-1],
                "raw": _score(_from_result(raw, names), ref, names, seed + i),
            }
            if case.name != "simulator":
                with warnings.catch_warnings(record=True):
                    warnings.simplefilter("always")
                    times = []
                    for _ in range(2):  # the first call after fit, then a warm one
                        start = time.perf_counter()
                        checked = amortizer.sample(
                            obs, data=covs or None, draws=1000, random_seed=i
                        )
                        times.append(time.perf_counter() - start)
                first_s, is_s = times
                attrs = dict(checked.sample_stats.attrs)
                row["is"] = _score(_from_result(checked, names), ref, names, seed + i)
                row["is"].update(
                    {
                        "pareto_k": float(attrs["pareto_k"]),
                        "ess_fraction": float(attrs["ess_fraction"]),
                        "proposals": int(attrs["proposals"]),
                        "distinct": float(attrs["distinct_draws"]),
                        "reliable": bool(attrs["reliable"]),
                        "seconds": is_s,
                        "first_seconds": first_s,
                        "tier": str(attrs["tier"]),
                        "flow_pareto_k": float(attrs["flow_pareto_k"]),
                        "nuts_seconds": nuts_seconds[i],
                    }
                )
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _wrong(score):
    return score["mean_err"] > 0.5 or score["sd_ratio_min"] < 0.7 or score["sd_ratio_max"] > 1.4


def table(rows: list[dict]) -> str:
    """One Markdown row per model and regime, aggregated over datasets: the raw flow
    (``importance_sampling=False``) and the default, importance-sampled posterior."""
    lines = [
        "| model | regime | train (s) | steps | raw: mean err (SD) | raw: SD ratio | raw: C2ST "
        "| IS: mean err (SD) | IS: SD ratio | IS: C2ST | k̂ max | ESS / proposals | distinct "
        "| IS (s) | wrong raw | wrong IS / flagged |",
        "|---|---|---:|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    keys = sorted(
        {(r["model"], r["regime"]) for r in rows}, key=lambda k: (list(CASES).index(k[0]), k[1])
    )

    def scores(group):
        err = f"{max(s['mean_err'] for s in group):.2f}"
        ratio = (
            f"{min(s['sd_ratio_min'] for s in group):.2f}–"
            f"{max(s['sd_ratio_max'] for s in group):.2f}"
        )
        return err, ratio, f"{np.median([s['c2st'] for s in group]):.3f}"

    for model, regime in keys:
        group = [r for r in rows if r["model"] == model and r["regime"] == regime]
        raw = [r["raw"] for r in group]
        cells = [model, regime, f"{group[0]['train_s']:.0f}", str(group[0]["steps"])]
        cells += scores(raw)
        if "is" in group[0]:
            checked = [r["is"] for r in group]
            wrong = [s for s in checked if _wrong(s)]
            cells += scores(checked)
            cells += [
                f"{max(s['pareto_k'] for s in checked):.2f}",
                f"{min(s['ess_fraction'] for s in checked):.2f}",
                f"{np.median([s['distinct'] for s in checked]):.2f}",
                f"{np.median([s['seconds'] for s in checked]):.1f}",
                f"{sum(_wrong(s) for s in raw)} of {len(raw)}",
                f"{len(wrong)} / {sum(not s['reliable'] for s in wrong)}",
            ]
        else:  # no density: the flow's draws are what sample() returns
            cells += ["n/a"] * 7 + [f"{sum(_wrong(s) for s in raw)} of {len(raw)}", "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _within(score, mean_tol, sd_tol):
    return (
        score["mean_err"] <= mean_tol
        and score["sd_ratio_min"] >= 1 - sd_tol
        and score["sd_ratio_max"] <= 1 + sd_tol
    )


def ladder_table(rows: list[dict]) -> str:
    """The issue-22 targets per model and regime: the flow alone within 0.2 SDs and SD ratios
    in [0.85, 1.15]; the default ``sample()`` (the whole ladder) within 0.1 SDs and 10%, and
    its warm time per dataset against warm NUTS (``pm.sample()`` defaults, compilation
    excluded) measured in the same run."""
    lines = [
        "| model | regime | flow alone: mean err / SD ratio | flow ok | default: mean err / SD "
        "ratio | default ok | tiers | flow k̂ | first (s) | default (s) | NUTS (s) | ratio |",
        "|---|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    keys = sorted(
        {(r["model"], r["regime"]) for r in rows if "is" in r},
        key=lambda k: (list(CASES).index(k[0]), k[1]),
    )
    for model, regime in keys:
        group = [r for r in rows if r["model"] == model and r["regime"] == regime]
        raw, checked = [r["raw"] for r in group], [r["is"] for r in group]

        def cell(scores):
            return (
                f"{max(x['mean_err'] for x in scores):.2f} / "
                f"{min(x['sd_ratio_min'] for x in scores):.2f}–"
                f"{max(x['sd_ratio_max'] for x in scores):.2f}"
            )

        tiers = sorted({x["tier"] for x in checked})
        default_s = max(x["seconds"] for x in checked)
        nuts_s = min(x["nuts_seconds"] for x in checked)
        cells = [
            model,
            regime,
            cell(raw),
            f"{sum(_within(x, 0.2, 0.15) for x in raw)}/{len(raw)}",
            cell(checked),
            f"{sum(_within(x, 0.1, 0.1) for x in checked)}/{len(checked)}",
            ", ".join(tiers),
            f"{max(x['flow_pareto_k'] for x in checked):.2f}",
            f"{max(x['first_seconds'] for x in checked):.1f}",
            f"{default_s:.2f}",
            f"{nuts_s:.1f}",
            f"{max(x['seconds'] / x['nuts_seconds'] for x in checked):.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--datasets", type=int, default=3)
    parser.add_argument(
        "--regimes",
        default="online default,offline 10k",
        help="comma-separated: 'online default', 'offline 10k', and either with the flow "
        "preconditioned by Laplace maps: 'online laplace', 'offline 10k laplace'",
    )
    parser.add_argument("--table", nargs="*", help="JSON-lines files to tabulate instead")
    args = parser.parse_args()
    if args.table:
        rows = [
            json.loads(line)
            for f in args.table
            for line in Path(f).read_text().splitlines()
            if line.startswith("{")
        ]
        print(table(rows))
        print()
        print(ladder_table(rows))
        return
    torch.set_num_threads(1)
    logging.getLogger("pymc").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    rows = []
    for name in args.models.split(","):
        rows += run_case(CASES[name], args.datasets, args.regimes.split(","))
    print(table(rows), file=sys.stderr)
    print(ladder_table(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
