"""Scaling out with Dask: simulations and posteriors per second with 1 and 2 workers.

Run: ``python benchmarks/distributed.py [--n 2000] [--chunk-size 100] [--workers 1,2]``.

A ``pm.Simulator`` model whose Python simulator costs about 10 ms of CPU per draw (a busy
loop, not a sleep: the workers must really compute) is simulated into a zarr bank by
``abi.simulate(..., client=client)`` on a ``distributed.LocalCluster`` of 1 and of 2 worker
processes (one thread each), and in this process without a client, all in the same run.
Each cluster is started, and each worker compiles the model, before the clock starts (one
warm-up bank), as on a long-running cluster. The banks are checked to be identical.

Then posteriors for many datasets (the quick-start model, the flow's own draws): a plain
Python loop of ``amortizer.sample`` calls, one dataset at a time, against
``abi.sample_many`` (chunks of datasets, one batched pass each, written to zarr) in this
process and on 1 and 2 workers. One torch thread per process throughout.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pymc as pm
import xarray as xr

import pymc_abi as abi

COST_S = 0.010  # CPU seconds per simulated dataset


def _busy_simulator(rng, mu, sigma, size=None):
    """A slow simulator: ~10 ms of CPU per dataset, then 20 normal draws."""
    datasets = int(np.prod(size[:-1])) if size is not None and len(size) > 1 else 1
    for _ in range(datasets):
        stop = time.process_time() + COST_S
        while time.process_time() < stop:
            pass
    return rng.normal(mu, sigma, size=size)


def model():
    with pm.Model() as m:
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Simulator("y", _busy_simulator, params=(mu, sigma), observed=np.zeros(20))
    return m


def _bank(path, m, n, chunk_size, client):
    start = time.perf_counter()
    bank = abi.simulate(
        m,
        n=n,
        chunk_size=chunk_size,
        path=path,
        random_seed=1,
        client=client,
        overwrite=True,
        progressbar=False,
    )
    return time.perf_counter() - start, bank


def quick_start_amortizer():
    with pm.Model(coords={"obs": range(50)}) as m:
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", mu, sigma, observed=np.zeros(50), dims="obs")
    return abi.fit(m, steps=200, random_seed=0, progressbar=False)


def _fit_many(amortizer, datasets, path, args, client):
    start = time.perf_counter()
    abi.sample_many(
        amortizer,
        datasets,
        path,
        draws=args.draws,
        chunk_size=args.dataset_chunk,
        random_seed=1,
        client=client,
        overwrite=True,
        progressbar=False,
    )
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--datasets", type=int, default=4000)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--dataset-chunk", type=int, default=500)
    args = parser.parse_args()
    # this script is named like Dask's `distributed`: keep its folder off the import path
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    import distributed
    import torch

    torch.set_num_threads(1)  # one core per worker process, and here
    warnings.filterwarnings("ignore")
    logging.getLogger("distributed").setLevel(logging.ERROR)
    m = model()
    amortizer = quick_start_amortizer()
    rng = np.random.default_rng(2)
    datasets = xr.Dataset({"y": (("dataset", "obs"), rng.normal(size=(args.datasets, 50)))})
    sims, fits = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _bank(tmp / "warm.zarr", m, args.chunk_size, args.chunk_size, None)
        seconds, here = _bank(tmp / "here.zarr", m, args.n, args.chunk_size, None)
        sims.append(("this process, no client", seconds))
        here = here.load()
        # posteriors: a plain loop of sample() calls, one dataset at a time (on a part)
        part = min(200, args.datasets)
        start = time.perf_counter()
        for i in range(part):
            amortizer.sample(
                {"y": datasets["y"].values[i]},
                draws=args.draws,
                chains=1,
                importance_sampling=False,
                random_seed=i,
            )
        fits.append(("plain loop of sample(), this process", (time.perf_counter() - start) / part))
        seconds = _fit_many(amortizer, datasets, tmp / "fit.zarr", args, None)
        fits.append(("sample_many, this process", seconds / args.datasets))
        for k in [int(w) for w in args.workers.split(",")]:
            with (
                distributed.LocalCluster(
                    n_workers=k,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                ) as cluster,
                distributed.Client(cluster) as client,
            ):
                label = f"{k} worker{'s' if k > 1 else ''}"
                # every worker compiles the model before the clock starts
                _bank(tmp / "warm.zarr", m, args.chunk_size * k * 2, args.chunk_size, client)
                seconds, there = _bank(tmp / f"w{k}.zarr", m, args.n, args.chunk_size, client)
                xr.testing.assert_identical(here, there.load())
                sims.append((label, seconds))
                warm = datasets.isel(dataset=slice(0, 2 * k * args.dataset_chunk))
                _fit_many(amortizer, warm, tmp / "warm_fit.zarr", args, client)
                seconds = _fit_many(amortizer, datasets, tmp / f"fit{k}.zarr", args, client)
                fits.append((f"sample_many, {label}", seconds / args.datasets))
    base = sims[1][1] if len(sims) > 1 else sims[0][1]
    print(
        f"{args.n} simulations in chunks of {args.chunk_size}, ~{1000 * COST_S:.0f} ms CPU "
        "each; banks identical\n"
    )
    print("| where | seconds | simulations / s | vs 1 worker |")
    print("|---|---:|---:|---:|")
    for label, seconds in sims:
        print(f"| {label} | {seconds:.1f} | {args.n / seconds:.1f} | {base / seconds:.2f}x |")
    print(
        f"\n{args.datasets:,} datasets x {args.draws} draws (quick-start model, default flow, "
        f"flow's draws), chunks of {args.dataset_chunk}\n"
    )
    print("| how | datasets / s | vs plain loop |")
    print("|---|---:|---:|")
    for label, per in fits:
        print(f"| {label} | {1 / per:,.0f} | {fits[0][1] / per:.1f}x |")


if __name__ == "__main__":
    main()
