"""Choosing an inference network: affine coupling vs spline coupling vs flow matching.

Run: ``python benchmarks/networks.py [--steps 2000] [--threads 2]``.

Three models with a reference posterior:

* ``gaussian 10-d``: theta ~ N(0, 0.1 I), x ~ N(theta, 0.1 I); posterior N(x / 2, 0.05 I).
  Accuracy: the largest |mean error| and |SD ratio - 1| over coordinates, in posterior SDs.
* ``bimodal``: theta ~ N(0, 1), y_i ~ N(theta^2, 0.3^2), 10 observations of a positive
  theta^2: two modes at +-sqrt(mean y). Reference by quadrature on a grid.
* ``banana``: theta ~ N(0, I2), y_i ~ N(theta_1 + theta_2^2, 0.3^2), 5 observations: a
  curved ridge. Reference by quadrature on a 2-D grid.

For the grid references, accuracy is the Wasserstein-1 distance between 4,000 draws and the
reference, per coordinate, divided by the reference SD (0 is perfect). Every network trains
online with the same budget and seed; sampling time is 1,000 draws for one dataset.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np
import pymc as pm
import torch
from scipy.stats import wasserstein_distance

import pymc_abi as abi

NETWORKS = ["coupling", "nsf", "flow_matching"]
RNG = np.random.default_rng(0)


def gaussian():
    with pm.Model() as model:
        theta = pm.Normal("theta", 0, np.sqrt(0.1), shape=10)
        pm.Normal("x", theta, np.sqrt(0.1), observed=np.zeros(10))
    x = RNG.normal(0, np.sqrt(0.2), 10)

    def score(draws):
        d = draws["theta"]
        sd = np.sqrt(0.05)
        mean_err = np.abs(d.mean(0) - x / 2).max() / sd
        sd_err = np.abs(d.std(0) / sd - 1).max()
        return f"mean {mean_err:.2f} SD, sd {sd_err:.0%}"

    return model, {"x": x}, score


def _grid_reference(logp, grids):
    mesh = np.meshgrid(*grids, indexing="ij")
    lp = logp(*mesh)
    p = np.exp(lp - lp.max())
    p /= p.sum()
    idx = RNG.choice(p.size, size=20000, p=p.ravel())
    coords = np.unravel_index(idx, p.shape)
    step = [g[1] - g[0] for g in grids]
    return np.stack(
        [g[c] + RNG.uniform(-s / 2, s / 2, len(c)) for g, c, s in zip(grids, coords, step)],
        axis=1,
    )


def _w1_score(reference):
    def score(draws):
        d = np.column_stack([v.reshape(len(v), -1) for v in draws.values()])
        w = [
            wasserstein_distance(d[:, j], reference[:, j]) / reference[:, j].std()
            for j in range(reference.shape[1])
        ]
        return "W1 " + ", ".join(f"{x:.3f}" for x in w)

    return score


def bimodal():
    with pm.Model() as model:
        theta = pm.Normal("theta", 0, 1)
        pm.Normal("y", theta**2, 0.3, observed=np.zeros(10))
    y = RNG.normal(1.0, 0.3, 10)
    grid = np.linspace(-3, 3, 3001)

    def logp(t):
        return -0.5 * t**2 - 0.5 * (((y[None] - t[..., None] ** 2) / 0.3) ** 2).sum(-1)

    return model, {"y": y}, _w1_score(_grid_reference(logp, [grid]))


def banana():
    with pm.Model() as model:
        theta = pm.Normal("theta", 0, 1, shape=2)
        pm.Normal("y", theta[0] + theta[1] ** 2, 0.3, observed=np.zeros(5))
    y = RNG.normal(1.0, 0.3, 5)
    g = np.linspace(-4, 4, 801)

    def logp(a, b):
        mu = a + b**2
        return -0.5 * (a**2 + b**2) - 0.5 * (((y - mu[..., None]) / 0.3) ** 2).sum(-1)

    return model, {"y": y}, _w1_score(_grid_reference(logp, [g, g]))


MODELS = {"gaussian 10-d": gaussian, "bimodal": bimodal, "banana": banana}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("pymc").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    print("| model | network | train (s) | sample 1,000 draws (ms) | accuracy |")
    print("|---|---|---:|---:|---|")
    for model_name, factory in MODELS.items():
        model, observed, score = factory()
        for network in NETWORKS:
            start = time.perf_counter()
            amortizer = abi.fit(
                model,
                inference_network=network,
                steps=args.steps,
                random_seed=args.seed,
                progressbar=False,
            )
            train_s = time.perf_counter() - start
            amortizer.sample(
                observed, draws=1000, importance_sampling=False, random_seed=0
            )  # warm-up
            times = []
            for r in range(3):
                start = time.perf_counter()
                amortizer.sample(observed, draws=1000, importance_sampling=False, random_seed=r)
                times.append(time.perf_counter() - start)
            idata = amortizer.sample(observed, draws=4000, importance_sampling=False, random_seed=9)
            draws = {
                name: idata.posterior[name].values.reshape(4000, *idata.posterior[name].shape[2:])
                for name in amortizer.parameters.free_names
            }
            print(
                f"| {model_name} | {network} | {train_s:.0f} | {min(times) * 1e3:.0f} "
                f"| {score(draws)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
