"""A GARCH(1,1) fitted with defaults, against NUTS on the same datasets, in one run.

Run: ``python benchmarks/time_series.py [--datasets 3] [--steps 200]``.

``abi.fit(model)`` with every default (the time-series summary network is chosen for
``pm.GARCH11`` on its own), timed; then, for datasets simulated from fixed parameters, the
default ``sample()`` (the ladder: flow, importance sampling, and the tiers after it) and NUTS
(``pm.sample`` defaults, 4 chains, one core, compilation excluded by a warm-up run). Mean
error: the largest ``|mean - NUTS mean| / NUTS SD`` over the parameters; SD ratio: the range
of ``SD / NUTS SD``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pymc as pm
import torch

import pymc_abi as abi

TRUTHS = [
    {"omega": 0.2, "alpha": 0.25, "beta": 0.4},
    {"omega": 0.5, "alpha": 0.1, "beta": 0.3},
    {"omega": 0.1, "alpha": 0.35, "beta": 0.45},
]


def garch(y):
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
            steps=len(y) - 1,
            observed=y,
        )
    return model


def simulate(truth, steps, rng):
    y, vol = np.empty(steps), 1.0
    y[0] = rng.normal(0, vol)
    for t in range(1, steps):
        vol = np.sqrt(truth["omega"] + truth["alpha"] * y[t - 1] ** 2 + truth["beta"] * vol**2)
        y[t] = rng.normal(0, vol)
    return y


def nuts(model, seed):
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.sample(draws=50, tune=50, chains=1, progressbar=False, random_seed=seed)  # compile
        start = time.perf_counter()
        idata = pm.sample(progressbar=False, random_seed=seed, cores=1)
        return idata, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    data = [simulate(TRUTHS[i % len(TRUTHS)], args.steps, rng) for i in range(args.datasets)]
    model = garch(np.zeros(args.steps))
    start = time.perf_counter()
    amortizer = abi.fit(model, random_seed=0, progressbar=False)
    fit_s = time.perf_counter() - start
    print(f"GARCH(1,1), {args.steps} steps: abi.fit with defaults in {fit_s:.0f} s")
    history = amortizer.history
    print(
        f"summary network: {type(amortizer.net.summary).__name__}; "
        f"{history.step[-1] if history.step else 0} steps, stopped by {history.stops}; "
        f"validation losses (every {history.step[1] - history.step[0] if len(history.step) > 1 else 0} "
        f"steps): {', '.join(f'{v:.3f}' for v in history.val_loss)}\n"
    )
    print(
        "| dataset | flow alone: mean err / SD ratio | default: mean err / SD ratio | tier "
        "| flow k̂ | default (s) | NUTS (s) | default / NUTS |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|")
    names = ["omega", "alpha", "beta"]
    for i, y in enumerate(data):
        reference, nuts_s = nuts(garch(y), seed=i)
        ref = reference.posterior
        rows = {}
        for label, kwargs in [("flow", {"importance_sampling": False}), ("default", {})]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                amortizer.sample({"y": y}, random_seed=i, **kwargs)  # warm
                start = time.perf_counter()
                result = amortizer.sample({"y": y}, random_seed=i, **kwargs)
                seconds = time.perf_counter() - start
            post = result.posterior
            err = max(
                abs(float(post[n].mean() - ref[n].mean())) / float(ref[n].std()) for n in names
            )
            ratios = [float(post[n].std() / ref[n].std()) for n in names]
            rows[label] = (err, min(ratios), max(ratios), seconds, result.sample_stats.attrs)
        f, d = rows["flow"], rows["default"]
        print(
            f"| {i} | {f[0]:.2f} / {f[1]:.2f}-{f[2]:.2f} | {d[0]:.2f} / {d[1]:.2f}-{d[2]:.2f} "
            f"| {d[4].get('tier', '-')} | {float(d[4].get('flow_pareto_k', np.nan)):.2f} "
            f"| {d[3]:.2f} | {nuts_s:.1f} | {d[3] / nuts_s:.2f} |"
        )


if __name__ == "__main__":
    main()
