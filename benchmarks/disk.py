"""Peak memory of training from a simulation bank on disk vs from the bank held in memory.

Run: ``python benchmarks/disk.py [--n 200000] [--obs 200]``.

A bank of ``n`` simulations of an iid normal model with ``obs`` observations is written to
netCDF with ``abi.simulate``. Each variant then trains for one epoch in a fresh process,
which reports its peak resident memory above what the imports alone take:

* ``disk``: ``abi.fit(simulations=path, chunk_size=8192)`` reads the bank chunk by chunk;
* ``memory``: the bank loaded into memory first (``xr.load_dataset``), then trained on.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import resource, sys, time
import numpy as np, pymc as pm, torch, xarray as xr
import pymc_abi as abi
torch.set_num_threads(2)
path, variant, obs = sys.argv[1], sys.argv[2], int(sys.argv[3])
with pm.Model() as model:
    mu = pm.Normal("mu", 0, 1)
    sigma = pm.HalfNormal("sigma", 1)
    pm.Normal("y", mu, sigma, observed=np.zeros(obs))
amortizer = abi.Amortizer(model, random_seed=0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
bank = path if variant == "disk" else xr.load_dataset(path, engine="h5netcdf")
start = time.perf_counter()
amortizer.fit(simulations=bank, epochs=1, batch_size=512, chunk_size=8192, progressbar=False)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{(peak - base) / 1024:.0f} {seconds:.1f}")
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--obs", type=int, default=200)
    args = parser.parse_args()

    import numpy as np
    import pymc as pm

    import pymc_abi as abi

    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", mu, sigma, observed=np.zeros(args.obs))

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bank.nc")
        start = time.perf_counter()
        abi.simulate(
            model, n=args.n, path=path, chunk_size=20_000, random_seed=0, progressbar=False
        )
        write_s = time.perf_counter() - start
        size_mb = os.path.getsize(path) / 2**20
        own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"bank: {args.n:,} simulations x {args.obs} observations, {size_mb:,.0f} MB on "
            f"disk, written in {write_s:.1f} s (writer peak RSS {own_peak:,.0f} MB)\n"
        )
        print("| training from | peak memory above imports (MB) | one epoch (s) |")
        print("|---|---:|---:|")
        for variant in ("disk", "memory"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, path, variant, str(args.obs)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            print(f"| {variant} | {float(out[0]):,.0f} | {out[1]} |")


if __name__ == "__main__":
    main()
