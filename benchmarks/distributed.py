"""Scaling out with Dask: simulations per second with 1 and 2 workers.

Run: ``python benchmarks/distributed.py [--n 400] [--chunk-size 25] [--workers 1,2]``.

A ``pm.Simulator`` model whose Python simulator costs about 10 ms of CPU per draw (a busy
loop, not a sleep: the workers must really compute) is simulated into a zarr bank by
``abi.simulate(..., client=client)`` on a ``distributed.LocalCluster`` of 1 and of 2 worker
processes (one thread each), and in this process without a client, all in the same run.
Each cluster is started, and each worker compiles the model, before the clock starts (one
warm-up bank), as on a long-running cluster. The banks are checked to be identical.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--chunk-size", type=int, default=25)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    # this script is named like Dask's `distributed`: keep its folder off the import path
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    import distributed

    warnings.filterwarnings("ignore")
    logging.getLogger("distributed").setLevel(logging.ERROR)
    m = model()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _bank(tmp / "warm.zarr", m, args.chunk_size, args.chunk_size, None)
        seconds, here = _bank(tmp / "here.zarr", m, args.n, args.chunk_size, None)
        rows.append(("this process, no client", seconds))
        here = here.load()
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
                # every worker compiles the model before the clock starts
                _bank(tmp / "warm.zarr", m, args.chunk_size * k * 2, args.chunk_size, client)
                seconds, there = _bank(tmp / f"w{k}.zarr", m, args.n, args.chunk_size, client)
                xr.testing.assert_identical(here, there.load())
                rows.append((f"{k} worker{'s' if k > 1 else ''}", seconds))
    base = rows[1][1] if len(rows) > 1 else rows[0][1]
    print(
        f"{args.n} simulations in chunks of {args.chunk_size}, ~{1000 * COST_S:.0f} ms CPU each; "
        "banks identical\n"
    )
    print("| where | seconds | simulations / s | vs 1 worker |")
    print("|---|---:|---:|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.1f} | {args.n / seconds:.1f} | {base / seconds:.2f}x |")


if __name__ == "__main__":
    main()
