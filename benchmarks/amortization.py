"""Amortization pay-off: pymc-abi (train once, sample many) vs NUTS (one run per dataset).

Run: ``python benchmarks/amortization.py [--steps 3000] [--nuts-datasets 8] [--draws 1000]
[--inference-network nsf]``.

Model: a non-centered hierarchical 8-schools-like model, 8 groups x 10 observations
(10 parameters: mu, tau, z[8]; theta = mu + tau * z is a deterministic).
1,000 datasets are simulated from the prior with ``abi.ModelSimulator``. pymc-abi is
trained once (timed) and then samples 1, 100 and 1,000 datasets (the last in one batched
call). NUTS (``pm.sample``, 2 chains, 1 core) runs on a fresh model per dataset, compile
time included, on a subset of K datasets; its per-dataset time is extrapolated to 100 and
1,000 datasets. On those K datasets the two posteriors are compared: standardized
differences of posterior means and ratios of posterior SDs, for mu, tau and theta[8].
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

GROUPS, PER_GROUP = 8, 10
GROUP_IDX = np.repeat(np.arange(GROUPS), PER_GROUP)
N_OBS = GROUPS * PER_GROUP
VARIABLES = ["mu", "tau", *(f"theta[{g}]" for g in range(GROUPS))]


def build_model(y: np.ndarray | None = None) -> pm.Model:
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 5)
        tau = pm.HalfNormal("tau", 5)
        z = pm.Normal("z", 0, 1, shape=GROUPS)
        theta = pm.Deterministic("theta", mu + tau * z)
        pm.Normal("y", theta[GROUP_IDX], 10, observed=np.zeros(N_OBS) if y is None else y)
    return model


def summarize(posterior) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and SDs of mu, tau, theta[0..7], each of shape (10,)."""
    draws = np.concatenate(
        [
            posterior["mu"].values.reshape(-1, 1),
            posterior["tau"].values.reshape(-1, 1),
            posterior["theta"].values.reshape(-1, GROUPS),
        ],
        axis=1,
    )
    return draws.mean(axis=0), draws.std(axis=0, ddof=1)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_nuts(y: np.ndarray, draws: int, tune: int, seed: int):
    """A fresh model per dataset, compile included, as a user would pay it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        with build_model(y):
            idata = pm.sample(
                draws=draws,
                tune=tune,
                chains=2,
                cores=1,
                progressbar=False,
                random_seed=seed,
            )
        elapsed = time.perf_counter() - start
    return idata, elapsed


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f}" if seconds < 100 else f"{seconds:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=1000, help="datasets simulated")
    parser.add_argument("--steps", type=int, default=3000, help="pymc-abi training steps")
    parser.add_argument("--batch-size", type=int, default=256, help="pymc-abi batch size")
    parser.add_argument("--draws", type=int, default=1000, help="posterior draws per dataset")
    parser.add_argument("--tune", type=int, default=1000, help="NUTS tuning steps per chain")
    parser.add_argument("--nuts-datasets", type=int, default=8, help="K datasets run by NUTS")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the 1-dataset timing")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--inference-network", default="nsf", help="nsf (default), coupling, maf, nsf_ar"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    for name in ("pymc", "pytensor", "pymc_abi"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", category=FutureWarning)

    n_data = args.datasets
    model = build_model()

    # ---------------------------------------------------------------- datasets
    sims = abi.ModelSimulator(model).sample(n_data, random_seed=args.seed)
    datasets = [{"y": sims["y"][i]} for i in range(n_data)]
    truth = {"mu": sims["mu"], "tau": sims["tau"], "theta": sims["theta"]}
    print(
        f"# {n_data} prior datasets; true tau median {np.median(truth['tau']):.2f}, "
        f"range [{truth['tau'].min():.2f}, {truth['tau'].max():.2f}]",
        flush=True,
    )

    # ---------------------------------------------------------------- pymc-abi
    amortizer, t_train = timed(
        lambda: abi.fit(
            model,
            steps=args.steps,
            batch_size=args.batch_size,
            random_seed=args.seed + 1,
            inference_network=args.inference_network,
            progressbar=False,
        )
    )
    print(f"# trained in {t_train:.1f} s: {amortizer!r}", flush=True)

    # warm-up (first call pays one-time costs), then the timings
    amortizer.sample(datasets[0], draws=args.draws, importance_sampling=False, random_seed=0)
    single = []
    for r in range(args.repeats):
        _, t = timed(
            lambda: amortizer.sample(
                datasets[0], draws=args.draws, importance_sampling=False, random_seed=r
            )
        )
        single.append(t)
    t_one = min(single)
    sizes = [1, 100, n_data]
    t_sample = {1: t_one}
    for n in sizes[1:]:
        _, t_sample[n] = timed(
            lambda: amortizer.sample(
                datasets[:n], draws=args.draws, importance_sampling=False, random_seed=10 + n
            )
        )
    print("# pymc-abi sampling timed", flush=True)

    # ---------------------------------------------------------------- NUTS
    k = min(args.nuts_datasets, n_data)
    nuts_times, divergences = [], []
    nuts_stats = []
    for i in range(k):
        idata, t = run_nuts(datasets[i]["y"], args.draws, args.tune, seed=100 + i)
        nuts_times.append(t)
        divergences.append(int(idata.sample_stats["diverging"].values.sum()))
        nuts_stats.append(summarize(idata.posterior))
        print(f"# NUTS dataset {i}: {t:.1f} s, {divergences[-1]} divergences", flush=True)
    t_nuts_per = float(np.mean(nuts_times))

    # ---------------------------------------------------------------- agreement
    amortized = amortizer.sample(
        datasets[:k], draws=args.draws, importance_sampling=False, random_seed=7
    )
    if k == 1:
        amortized = [amortized]
    z_diff, sd_ratio = [], []
    for (m_nuts, s_nuts), idata in zip(nuts_stats, amortized):
        m_abi, s_abi = summarize(idata.posterior)
        z_diff.append(np.abs(m_abi - m_nuts) / s_nuts)
        sd_ratio.append(s_abi / s_nuts)
    z_diff, sd_ratio = np.array(z_diff), np.array(sd_ratio)  # (k, 10)

    # ---------------------------------------------------------------- report
    print()
    print(
        "| datasets | pymc-abi train (s) | pymc-abi sample (s) | pymc-abi total (s) "
        "| NUTS (s) | speed-up (NUTS / pymc-abi total) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    speedups = {}
    for n in sizes:
        label = f"{n:,} dataset" + ("s" if n > 1 else "")
        total = t_train + t_sample[n]
        if n <= k:
            t_nuts = float(np.sum(nuts_times[:n]))
            how = "measured"
        else:
            t_nuts = t_nuts_per * n
            how = f"extrapolated from {k}"
        speedups[n] = t_nuts / total
        print(
            f"| {label} | {fmt_s(t_train)} | {fmt_s(t_sample[n])} | {fmt_s(total)} "
            f"| {fmt_s(t_nuts)} ({how}) | {speedups[n]:.2f}x |"
        )
    print()
    print(
        f"Single dataset x {args.draws} draws: {t_one * 1e3:.1f} ms "
        f"(best of {args.repeats}; all: {', '.join(f'{t * 1e3:.1f}' for t in single)} ms)"
    )
    print(
        f"NUTS per dataset: {t_nuts_per:.2f} s mean over {k} "
        f"(min {min(nuts_times):.2f}, max {max(nuts_times):.2f}), compile included; "
        f"divergences total {sum(divergences)} over {k} datasets x 2 chains "
        f"(per dataset: {divergences})"
    )
    print(
        f"Agreement on {k} datasets, |mean(abi) - mean(NUTS)| / sd(NUTS) over mu, tau, "
        f"theta[8]: median {np.median(z_diff):.3f}, max {z_diff.max():.3f} "
        f"(at {VARIABLES[int(np.argmax(z_diff.max(axis=0)))]})"
    )
    print(
        "  per variable median: "
        + ", ".join(f"{v} {m:.2f}" for v, m in zip(VARIABLES, np.median(z_diff, axis=0)))
    )
    print(
        f"SD ratio sd(abi) / sd(NUTS): median {np.median(sd_ratio):.3f}, "
        f"range [{sd_ratio.min():.3f}, {sd_ratio.max():.3f}]"
    )
    print(
        f"  tau: median {np.median(sd_ratio[:, 1]):.3f}, "
        f"range [{sd_ratio[:, 1].min():.3f}, {sd_ratio[:, 1].max():.3f}]; "
        f"mu: median {np.median(sd_ratio[:, 0]):.3f}, "
        f"range [{sd_ratio[:, 0].min():.3f}, {sd_ratio[:, 0].max():.3f}]"
    )
    print()
    big = sizes[-1]
    checks = [
        (f"1 dataset x {args.draws} draws < 50 ms", t_one < 0.05, f"{t_one * 1e3:.1f} ms"),
        (
            f"{big:,} datasets x {args.draws} draws < 10 s",
            t_sample[big] < 10,
            f"{t_sample[big]:.2f} s",
        ),
        (
            f"{big:,} datasets: >= 10x faster than NUTS",
            speedups[big] >= 10,
            f"{speedups[big]:.1f}x",
        ),
    ]
    print("Targets:")
    for name, ok, value in checks:
        print(f"- {name}: {'PASS' if ok else 'FAIL'} ({value})")


if __name__ == "__main__":
    main()
