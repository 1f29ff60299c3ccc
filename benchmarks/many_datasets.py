"""Posteriors for many datasets on one machine: how close to the flow's own speed?

Run: ``python benchmarks/many_datasets.py [--sizes 10000x100,1000x1000] [--threads 2]``.

The quick-start model (``mu``, ``sigma``, 50 observations) with the default spline flow
(``"nsf"``), briefly trained (speed does not depend on training). For each size
(datasets x draws, one chain), measured in the same run:

* **flow**: the flow's draws alone (``sampling.draw``: summary network, flow, back to the
  unconstrained space), the floor for everything else;
* **one result**: ``sample(datasets, dataset_dim="dataset", importance_sampling=False)``,
  all datasets in one ``InferenceData``/``DataTree`` with a ``dataset`` dim;
* **list**: ``sample(datasets, importance_sampling=False)``, one result per dataset (what
  pymc-abi returned before ``dataset_dim``).

A second table times the spline flow's inversion, zuko's ``transform.inv.call_and_ladj``
against pymc-abi's ``_inverse_and_ladj``, which builds each layer's splines once fewer.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pymc as pm
import torch

import pymc_abi as abi
from pymc_abi.inference import sampling
from pymc_abi.networks.inference import _inverse_and_ladj


def model():
    with pm.Model(coords={"obs": range(50)}) as m:
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", mu, sigma, observed=np.zeros(50), dims="obs")
    return m


def timed(fn, repeats=1):
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000x100,1000x1000")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--list", action="store_true", help="also time the list of results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    amortizer = abi.fit(model(), steps=200, random_seed=0, progressbar=False)
    spec = amortizer.data_spec
    rng = np.random.default_rng(1)
    rows = []
    for size in args.sizes.split(","):
        k, draws = (int(v) for v in size.split("x"))
        data = [{"y": rng.normal(rng.normal(), 1.0, 50)} for _ in range(k)]
        checked, _ = spec.datasets(data, None)
        t_flow, _ = timed(lambda: amortizer._draw(checked, draws, 1))
        t_one, one = timed(
            lambda: amortizer.sample(
                data,
                draws=draws,
                chains=1,
                importance_sampling=False,
                dataset_dim="dataset",
                random_seed=1,
            )
        )
        assert one.posterior["mu"].shape == (1, draws, k)
        t_list = np.nan
        if args.list:
            t_list, _ = timed(
                lambda: amortizer.sample(
                    data, draws=draws, chains=1, importance_sampling=False, random_seed=1
                )
            )
        rows.append((k, draws, t_flow, t_one, t_list))
    print(f"torch threads: {args.threads}\n")
    print(
        "| datasets | draws | flow (s) | one result (s) | one result / flow | datasets / s "
        "| list (s) | list / one result |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, draws, t_flow, t_one, t_list in rows:
        print(
            f"| {k:,} | {draws:,} | {t_flow:.1f} | {t_one:.1f} | {t_one / t_flow:.2f} "
            f"| {k / t_one:,.0f} | {t_list:.1f} | {t_list / t_one:.1f} |"
        )

    # the spline inversion, old and new, on the same flow and draws
    net = amortizer.net
    some = checked[:250]
    context = sampling.context(net, spec, some, amortizer.device)
    with torch.no_grad():
        dist = net.inference.flow(context)
        shape = (4000 // len(some), len(some), amortizer.parameters.ndim)
        z = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        t_zuko, (a, la) = timed(lambda: dist.transform.inv.call_and_ladj(z), 3)
        t_ours, (b, lb) = timed(lambda: _inverse_and_ladj(dist.transform, z), 3)
    same = bool(torch.equal(a, b) and torch.equal(la, lb))
    print("\n| 4,000 rows through the inverse flow | seconds | speed-up |")
    print("|---|---:|---:|")
    print(f"| zuko `inv.call_and_ladj` | {t_zuko:.3f} | 1.00x |")
    print(
        f"| pymc-abi `_inverse_and_ladj` (identical results: {same}) | {t_ours:.3f} "
        f"| {t_zuko / t_ours:.2f}x |"
    )


if __name__ == "__main__":
    main()
