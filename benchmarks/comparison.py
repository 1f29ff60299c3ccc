"""Amortized model comparison against exact answers, SMC, and by calibration.

Run: ``python benchmarks/comparison.py [--smc-datasets 6] [--steps 3000]`` (one torch
thread; about 10-15 minutes on one CPU core).

(a) Conjugate pairs with analytic marginal likelihoods: normal means with known variance
    under two priors, and a beta-binomial against a fixed-p binomial: the predicted log
    Bayes factors against the analytic ones over many prior-predictive datasets.
(b) A non-conjugate pair, Poisson against negative-binomial regression, against the
    log marginal likelihood of ``pm.sample_smc`` on a few datasets, with the time per dataset.
(c) Two ``pm.Simulator`` models (no likelihood), checked by calibration.

Each comparator's temperature and its calibration before (T = 1) and after are printed.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pymc as pm
import torch
from scipy.stats import binom, norm

import pymc_abi as abi

N = 12
SCALES = (1.0, 3.0)
N_BIN = 20
N_REG = 30
X = np.linspace(-1, 1, N_REG)
N_SIM = 20


def normal_mean(scale):
    with pm.Model(coords={"obs": range(N)}) as model:
        mu = pm.Normal("mu", 0, scale)
        pm.Normal("y", mu, 1, observed=np.zeros(N), dims="obs")
    return model


def binomials():
    with pm.Model() as fixed:
        pm.Binomial("k", n=N_BIN, p=0.5, observed=3)
    with pm.Model() as beta:
        p = pm.Beta("p", 1, 1)
        pm.Binomial("k", n=N_BIN, p=p, observed=3)
    return {"fixed_p": fixed, "beta_binomial": beta}


def count_regression(kind, y=None):
    y = np.zeros(N_REG, dtype=int) if y is None else y
    with pm.Model(coords={"obs": range(N_REG)}) as model:
        a = pm.Normal("a", 1, 0.5)
        b = pm.Normal("b", 0, 0.5)
        mu = pm.math.exp(a + b * X)
        if kind == "poisson":
            pm.Poisson("y", mu, observed=y, dims="obs")
        else:
            alpha = pm.Gamma("alpha", 2, 1)
            pm.NegativeBinomial("y", mu=mu, alpha=alpha, observed=y, dims="obs")
    return model


def simulators():
    def gauss(rng, mu, size=None):
        return mu + rng.normal(0, 1, size=size)

    def laplace(rng, mu, size=None):
        return mu + rng.laplace(0, 1 / np.sqrt(2), size=size)  # the same variance

    out = {}
    for name, fn in (("gaussian", gauss), ("laplace", laplace)):
        with pm.Model(coords={"obs": range(N_SIM)}) as model:
            mu = pm.Normal("mu", 0, 1)
            pm.Simulator("y", fn, mu, epsilon=1, observed=np.zeros(N_SIM), dims="obs")
        out[name] = model
    return out


def fit(models, steps, seed, **options):
    start = time.perf_counter()
    comparator = abi.fit_comparison(
        models, steps=steps, random_seed=seed, progressbar=False, **options
    )
    return comparator, time.perf_counter() - start


def calibration_rows(label, comparator, n=4000):
    before = abi.comparison_calibration(comparator, n, temperature=1.0, random_seed=11)
    after = abi.comparison_calibration(comparator, n, random_seed=11)
    return (
        f"| {label} | {comparator.temperature:.3f} | {float(before.ece_overall):.4f} | "
        f"{float(after.ece_overall):.4f} | {float(after.accuracy):.3f} |"
    )


def timed_lbf(comparator, datasets, a, b):
    comparator.log_bayes_factor(datasets[:10], a, b)  # warm up
    start = time.perf_counter()
    lbf = comparator.log_bayes_factor(datasets, a, b)
    return lbf, (time.perf_counter() - start) / len(datasets) * 1e3


def smc_log_ml(model, seed):
    """The last finite log marginal likelihood of each chain, averaged over chains."""
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = pm.sample_smc(draws=1000, chains=2, cores=1, random_seed=seed, progressbar=False)
    values = np.asarray(idata.sample_stats["log_marginal_likelihood"].values, dtype=object)
    per_chain = []
    for chain in values.reshape(values.shape[0], -1):
        flat = np.concatenate([np.ravel(np.asarray(v, dtype=float)) for v in chain])
        finite = flat[np.isfinite(flat)]
        per_chain.append(finite[-1])
    return float(np.mean(per_chain))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--datasets", type=int, default=500)
    parser.add_argument("--smc-datasets", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    calibration = []

    print("(a) Analytic log Bayes factors")
    print(
        "| pair | datasets | MAE log BF, all | MAE, abs(log BF) < 5 | correlation | "
        "ms per dataset | training s |"
    )
    print("|---|---|---|---|---|---|---|")
    comp, seconds = fit(
        {"narrow": normal_mean(SCALES[0]), "wide": normal_mean(SCALES[1])}, args.steps, 1
    )
    rng = np.random.default_rng(100)
    k = args.datasets
    mu = np.concatenate([rng.normal(0, s, k // 2) for s in SCALES])
    y = mu[:, None] + rng.normal(size=(len(mu), N))
    ybar = y.mean(axis=1)
    exact = norm.logpdf(ybar, 0, np.sqrt(SCALES[0] ** 2 + 1 / N)) - norm.logpdf(
        ybar, 0, np.sqrt(SCALES[1] ** 2 + 1 / N)
    )
    lbf, ms = timed_lbf(comp, [{"y": v} for v in y], "narrow", "wide")
    inside = np.abs(exact) < 5
    print(
        f"| normal mean, prior sd 1 vs 3, n={N} | {len(y)} | {np.abs(lbf - exact).mean():.3f} "
        f"| {np.abs(lbf - exact)[inside].mean():.3f} ({inside.sum()}) | "
        f"{np.corrcoef(lbf, exact)[0, 1]:.4f} | {ms:.3f} | {seconds:.0f} |"
    )
    calibration.append(calibration_rows("normal means", comp))

    comp, seconds = fit(binomials(), args.steps, 2, hidden_features=(64, 64))
    ks = np.arange(N_BIN + 1)
    exact = binom.logpmf(ks, N_BIN, 0.5) + np.log(N_BIN + 1)
    weights = 0.5 * binom.pmf(ks, N_BIN, 0.5) + 0.5 / (N_BIN + 1)  # prior predictive
    lbf, ms = timed_lbf(comp, [{"k": v} for v in ks], "fixed_p", "beta_binomial")
    inside = np.abs(exact) < 5
    err = np.abs(lbf - exact)
    print(
        f"| fixed p = 0.5 vs beta-binomial(1, 1), n={N_BIN} | all {N_BIN + 1} counts "
        f"(weighted by the prior predictive) | {np.sum(weights * err):.3f} | "
        f"{np.sum((weights * err)[inside]) / weights[inside].sum():.3f} | "
        f"{np.corrcoef(lbf, exact)[0, 1]:.4f} | {ms:.3f} | {seconds:.0f} |"
    )
    calibration.append(calibration_rows("binomials", comp))

    print()
    print("(b) Poisson vs negative-binomial regression against SMC")
    models = {"poisson": count_regression("poisson"), "negbin": count_regression("negbin")}
    comp, seconds = fit(models, args.steps, 3)
    calibration.append(calibration_rows("poisson vs negbin", comp))
    sims = {}
    for j, name in enumerate(models):
        draw = pm.draw(models[name]["y"], draws=args.smc_datasets // 2, random_seed=50 + j)
        sims[name] = np.atleast_2d(draw)
    print("| dataset | true model | SMC log BF | comparator log BF | SMC s | comparator ms |")
    print("|---|---|---|---|---|---|")
    smc_lbf, amortized, smc_s, amo_ms = [], [], [], []
    for name, ys in sims.items():
        for i, yi in enumerate(ys):
            start = time.perf_counter()
            lml = [smc_log_ml(count_regression(kind, yi), seed=i) for kind in models]
            smc_s.append(time.perf_counter() - start)
            smc_lbf.append(lml[0] - lml[1])
            start = time.perf_counter()
            amortized.append(comp.log_bayes_factor({"y": yi}, "poisson", "negbin"))
            amo_ms.append((time.perf_counter() - start) * 1e3)
            print(
                f"| {len(smc_lbf)} | {name} | {smc_lbf[-1]:.2f} | {amortized[-1]:.2f} | "
                f"{smc_s[-1]:.1f} | {amo_ms[-1]:.1f} |"
            )
    smc_lbf, amortized = np.array(smc_lbf), np.array(amortized)
    print(
        f"MAE {np.abs(smc_lbf - amortized).mean():.3f} log-BF units, correlation "
        f"{np.corrcoef(smc_lbf, amortized)[0, 1]:.3f}; SMC {np.mean(smc_s):.1f} s per dataset "
        f"(both models), comparator {np.mean(amo_ms):.1f} ms per single dataset; "
        f"training {seconds:.0f} s"
    )

    print()
    print("(c) pm.Simulator pair: Gaussian vs Laplace noise, same variance")
    comp, seconds = fit(simulators(), args.steps, 4)
    calibration.append(calibration_rows("simulators (gaussian vs laplace)", comp))
    print(f"training {seconds:.0f} s")

    print()
    print("Calibration on 4,000 held-out simulations, before (T = 1) and after temperature")
    print("| pair | temperature | ECE, T = 1 | ECE, fitted T | accuracy |")
    print("|---|---|---|---|---|")
    print("\n".join(calibration))


if __name__ == "__main__":
    main()
