"""Simulations per second: ModelSimulator vs pm.sample_prior_predictive vs hand-written numpy.

Run: ``python benchmarks/simulator.py [--n 10000] [--repeats 3]``.
All three are measured in this process, on the same models, at the same batch size.
Compile time is reported apart; pm.sample_prior_predictive compiles inside every call,
so its time includes it, as a user would pay it.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pymc as pm

import pymc_abi as abi

RNG = np.random.default_rng(0)
N_OBS = 50
GROUPS, PER_GROUP = 8, 20
N_COV, N_REG = 5, 100
STEPS = 100
X = RNG.normal(size=(N_REG, N_COV))
GROUP_IDX = np.repeat(np.arange(GROUPS), PER_GROUP)


def iid_normal():
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", mu, sigma, observed=np.zeros(N_OBS))

    def numpy_sim(n, rng):
        mu = rng.normal(0, 1, n)
        sigma = np.abs(rng.normal(0, 1, n))
        return rng.normal(mu[:, None], sigma[:, None], (n, N_OBS))

    return model, numpy_sim


def eight_schools():
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 5)
        tau = pm.HalfNormal("tau", 5)
        theta = pm.Normal("theta", mu, tau, shape=GROUPS)
        pm.Normal("y", theta[GROUP_IDX], 10.0, observed=np.zeros(GROUPS * PER_GROUP))

    def numpy_sim(n, rng):
        mu = rng.normal(0, 5, n)
        tau = np.abs(rng.normal(0, 5, n))
        theta = rng.normal(mu[:, None], tau[:, None], (n, GROUPS))
        return rng.normal(theta[:, GROUP_IDX], 10.0)

    return model, numpy_sim


def logistic_regression():
    with pm.Model() as model:
        x = pm.Data("X", X)
        alpha = pm.Normal("alpha", 0, 1)
        beta = pm.Normal("beta", 0, 1, shape=N_COV)
        pm.Bernoulli("y", logit_p=alpha + x @ beta, observed=np.zeros(N_REG, dtype=int))

    def numpy_sim(n, rng):
        alpha = rng.normal(0, 1, n)
        beta = rng.normal(0, 1, (n, N_COV))
        p = 1 / (1 + np.exp(-(alpha[:, None] + beta @ X.T)))
        return rng.binomial(1, p)

    return model, numpy_sim


def random_walk():
    with pm.Model() as model:
        sigma = pm.HalfNormal("sigma", 0.5)
        pm.GaussianRandomWalk(
            "y",
            mu=0.0,
            sigma=sigma,
            init_dist=pm.Normal.dist(0, 1),
            steps=STEPS - 1,
            observed=np.zeros(STEPS),
        )

    def numpy_sim(n, rng):
        sigma = np.abs(rng.normal(0, 0.5, n))
        steps = rng.normal(0, 1, (n, STEPS)) * np.concatenate(
            [np.ones((n, 1)), np.broadcast_to(sigma[:, None], (n, STEPS - 1))], axis=1
        )
        return np.cumsum(steps, axis=1)

    return model, numpy_sim


MODELS = {
    f"iid normal ({N_OBS} obs)": iid_normal,
    f"8 schools ({GROUPS}x{PER_GROUP} obs)": eight_schools,
    f"logistic regression ({N_COV}x{N_REG})": logistic_regression,
    f"Gaussian random walk ({STEPS})": random_walk,
}


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000, help="batch size")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.n

    rows = []
    for name, factory in MODELS.items():
        model, numpy_sim = factory()
        start = time.perf_counter()
        sim = abi.ModelSimulator(model, random_seed=0)
        sim.sample(10)  # compiles lazily built helpers too
        compile_s = time.perf_counter() - start
        ours = best_time(lambda: sim.sample(n), args.repeats)
        rng = np.random.default_rng(1)
        numpy_s = best_time(lambda: numpy_sim(n, rng), args.repeats)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pymc_s = best_time(
                lambda: pm.sample_prior_predictive(
                    draws=n, model=model, random_seed=1, return_inferencedata=False
                ),
                1,
            )
        rows.append((name, compile_s, n / ours, n / pymc_s, n / numpy_s, sim.fallback_variables))

    print(f"batch size {n}; simulations per second (best of {args.repeats}; pymc: 1 run)\n")
    header = (
        "| model | ModelSimulator | pm.sample_prior_predictive | numpy by hand "
        "| vs PyMC | vs numpy | compile (s) | fallback |"
    )
    print(header)
    print("|" + "---|" * 8)
    for name, compile_s, ours, pymc_rate, numpy_rate, fallback in rows:
        print(
            f"| {name} | {ours:,.0f} | {pymc_rate:,.0f} | {numpy_rate:,.0f} "
            f"| {ours / pymc_rate:,.0f}x | {ours / numpy_rate:.2f}x | {compile_s:.1f} "
            f"| {', '.join(sorted(fallback)) or 'none'} |"
        )


if __name__ == "__main__":
    main()
