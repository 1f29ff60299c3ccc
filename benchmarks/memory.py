"""Memory of ``Amortizer.sample``: peak resident memory against the size of the result.

Run: ``python benchmarks/memory.py`` (the flow's draws), or
``python benchmarks/memory.py --importance`` (the default path, importance sampling on,
against the flow alone, in the same run).

Each case runs in a fresh process: it loads a trained amortizer (8-schools-like model, 10
parameters and 2 deterministics), samples once with few draws to warm up (compiled
functions, torch kernels), records the resident memory as the baseline, then samples the
case and records the peak (``ru_maxrss``). The result size is the bytes of every array in
the returned groups. The ratio ``(peak - baseline) / result`` is what ``sample`` needs beyond
what it returns: it must stay a small constant for any number of draws and datasets.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = [  # (datasets, draws per chain), 4 chains
    (1, 2_500),
    (1, 25_000),
    (1, 250_000),
    (10, 25_000),
    (1_000, 250),
]

_CHILD = """
import json, resource, sys
import numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
import pymc_abi as abi
from benchmarks.memory import build, datasets_of

model = build()
amortizer = abi.Amortizer.load({path!r}, model=model)
k, draws = {k}, {draws}
data = datasets_of(k)
amortizer.sample(data[0] if k == 1 else data[:2], draws=10, importance_sampling=False, random_seed=0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open("/proc/self/status") as f:
    rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
result = amortizer.sample(data[0] if k == 1 else data, draws=draws, importance_sampling=False, random_seed=1)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
results = [result] if k == 1 else result
size = 0
for r in results:
    for group in ("posterior", "sample_stats", "observed_data", "constant_data"):
        try:
            ds = r[group]
        except KeyError:
            continue
        size += sum(np.asarray(v.values).nbytes for v in ds.data_vars.values())
print(json.dumps({{"baseline_kb": rss, "peak_kb": max(peak, base), "result_bytes": size}}))
"""


_CHILD_IS = """
import json, resource, sys, time, warnings
import numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
import pymc_abi as abi
from benchmarks.memory import build_normal

model = build_normal()
amortizer = abi.Amortizer.load({path!r}, model=model)
amortizer.warm_up()
y = {{"y": np.random.default_rng(1).normal(0.3, 1.2, 20)}}
amortizer.sample(y, draws=10, importance_sampling={importance}, random_seed=0)
with open("/proc/self/status") as f:
    rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
start = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    result = amortizer.sample(y, draws={draws}, importance_sampling={importance}, random_seed=1)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
size = sum(
    np.asarray(v.values).nbytes
    for v in result["posterior"].data_vars.values()
)
attrs = result.sample_stats.attrs
print(json.dumps({{"baseline_kb": rss, "peak_kb": peak, "result_bytes": size, "seconds": seconds,
                  "proposals": int(attrs.get("proposals", 0)),
                  "ess": float(attrs.get("ess", 0)), "tier": str(attrs.get("tier", "-"))}}))
"""


def build_normal():
    """The issue's model: a normal with unknown mean and scale, 20 rows."""
    import numpy as np
    import pymc as pm

    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", mu, sigma, observed=np.zeros(20))
    return model


def _run(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def importance(root: str, draws_list: list[int], saved: str | None = None) -> None:
    """Peak memory and time of the default path against the flow alone (4 chains).

    ``saved``: an amortizer file of :func:`build_normal`, fitted and saved there if missing.
    """
    import pymc_abi as abi

    with tempfile.TemporaryDirectory() as tmp:
        path = saved or str(Path(tmp) / "normal.abi")
        if not Path(path).exists():
            abi.fit(build_normal(), random_seed=0, progressbar=False).save(path)
        print("importance sampling on (default) against off, 4 chains, a trained amortizer;")
        print("result: the posterior group (as in the issue)\n")
        print(
            "| draws per chain | result (MB) | flow alone: s | flow alone: extra MB | "
            "default: s | default: extra MB | proposals | ESS | time ratio | "
            "extra / (8 x result + 200 MB) |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for draws in draws_list:
            rows = {
                flag: _run(_CHILD_IS.format(root=root, path=path, draws=draws, importance=flag))
                for flag in (False, True)
            }
            off, on = rows[False], rows[True]
            result = on["result_bytes"] / 2**20
            extra = {k: (r["peak_kb"] - r["baseline_kb"]) / 1024 for k, r in rows.items()}
            print(
                f"| {draws:,} | {result:,.1f} | {off['seconds']:.1f} | {extra[False]:,.0f} | "
                f"{on['seconds']:.1f} | {extra[True]:,.0f} | {on['proposals']:,} | "
                f"{on['ess']:,.0f} | {on['seconds'] / off['seconds']:.2f} | "
                f"{extra[True] / (8 * result + 200):.2f} |"
            )


def build():
    import numpy as np
    import pymc as pm

    group = np.repeat(np.arange(8), 10)
    with pm.Model(coords={"school": range(8), "obs": range(80)}) as model:
        mu = pm.Normal("mu", 0, 5)
        tau = pm.HalfNormal("tau", 5)
        z = pm.Normal("z", 0, 1, dims="school")
        theta = pm.Deterministic("theta", mu + tau * z, dims="school")
        pm.Deterministic("tau2", tau**2)
        pm.Normal("y", theta[group], 5.0, observed=np.zeros(80), dims="obs")
    return model


def datasets_of(k):
    import numpy as np

    rng = np.random.default_rng(0)
    return [{"y": rng.normal(rng.normal(0, 5), 5.0, 80)} for _ in range(k)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--importance", action="store_true")
    parser.add_argument("--draws", default="10000,100000,1000000")
    parser.add_argument(
        "--amortizer", help="with --importance: a saved amortizer to reuse (fitted if missing)"
    )
    args = parser.parse_args()
    import pymc_abi as abi

    root = str(Path(__file__).resolve().parent.parent)
    if args.importance:
        importance(root, [int(d) for d in args.draws.split(",")], args.amortizer)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "memory.abi")
        abi.fit(build(), steps=args.steps, random_seed=0, progressbar=False).save(path)
        print(f"peak memory of Amortizer.sample (4 chains), {args.steps}-step amortizer\n")
        print(
            "| datasets | draws per chain | result (MB) | baseline RSS (MB) | peak RSS (MB) "
            "| extra / result |"
        )
        print("|---:|---:|---:|---:|---:|---:|")
        for k, draws in CASES:
            code = _CHILD.format(root=root, path=path, k=k, draws=draws)
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            ).stdout
            row = json.loads(out.strip().splitlines()[-1])
            result = row["result_bytes"] / 2**20
            base, peak = row["baseline_kb"] / 1024, row["peak_kb"] / 1024
            print(
                f"| {k:,} | {draws:,} | {result:,.1f} | {base:,.0f} | {peak:,.0f} | "
                f"{(peak - base) / result:.1f} |"
            )


if __name__ == "__main__":
    main()
