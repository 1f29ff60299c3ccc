"""SBC speed: amortized (abi.sbc) vs NUTS-based SBC (one pm.sample per simulated dataset).

Run: ``python benchmarks/sbc.py [--simulations 1000] [--draws 500] [--nuts-runs 5]``.

Model: mu ~ N(0, 1), sigma ~ HalfNormal(1), 50 iid normal observations. The amortizer is
trained once (timed separately); ``abi.sbc`` then ranks ``simulations`` true values among
``draws`` posterior draws each. NUTS-based SBC, as simuk does it, runs ``pm.sample`` once per
simulated dataset (``draws`` draws after as many tuning steps, 1 chain, compile included);
it is timed on ``nuts-runs`` datasets and extrapolated to ``simulations``.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np
import pymc as pm
import torch

import pymc_abi as abi


def build(y=None):
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", mu, sigma, observed=np.zeros(50) if y is None else y)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulations", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--nuts-runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("pymc").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore")

    model = build()
    start = time.perf_counter()
    amortizer = abi.fit(model, steps=args.steps, random_seed=0, progressbar=False)
    train_s = time.perf_counter() - start

    start = time.perf_counter()
    result = abi.sbc(
        amortizer,
        num_simulations=args.simulations,
        draws=args.draws,
        random_seed=1,
        progressbar=False,
    )
    sbc_s = time.perf_counter() - start
    metrics = abi.calibration_metrics(result)

    sims = abi.ModelSimulator(model).sample(args.nuts_runs, random_seed=2)
    nuts = []
    for i in range(args.nuts_runs):
        start = time.perf_counter()
        with build(sims["y"][i]):
            pm.sample(
                draws=args.draws,
                tune=args.draws,
                chains=1,
                cores=1,
                progressbar=False,
                random_seed=i,
                compute_convergence_checks=False,
            )
        nuts.append(time.perf_counter() - start)
    nuts_s = float(np.mean(nuts)) * args.simulations

    print(f"{args.simulations} simulations x {args.draws} draws\n")
    print("| | time (s) |")
    print("|---|---:|")
    print(f"| pymc-abi: training (once) | {train_s:.1f} |")
    print(f"| pymc-abi: `abi.sbc` | {sbc_s:.1f} |")
    print(f"| pymc-abi: total | {train_s + sbc_s:.1f} |")
    print(
        f"| NUTS-based SBC (extrapolated from {args.nuts_runs} runs, "
        f"{np.mean(nuts):.2f} s each) | {nuts_s:,.0f} |"
    )
    print(
        f"\nspeed-up: {nuts_s / sbc_s:,.0f}x for the SBC itself, "
        f"{nuts_s / (train_s + sbc_s):,.0f}x including training"
    )
    print("\ncalibration of the trained amortizer:")
    columns = ["calibration_error", "z_score_mean", "z_score_sd", "uniformity_pvalue"]
    print(metrics[columns].round(3).to_string())


if __name__ == "__main__":
    main()
