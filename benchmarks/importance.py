"""Importance sampling: how honest is the reliability flag, and how good are the draws?

Run: ``python benchmarks/importance.py [--seeds 4] [--datasets 25]``.

Two studies on Gaussian models whose posteriors are exact
(``theta ~ N(0, 0.1 I_d)``, ``x ~ N(theta, 0.1 I_d)``: posterior ``N(x / 2, 0.05 I_d)``):

1. **The flag.** Amortizers trained with different seeds give near-exact flows; the same
   flows with their output scale shrunk (x 0.5) or their location shifted (+1.5 posterior
   SDs) are deliberately bad ones. For each, importance sampling runs on many datasets and
   the flag is compared with the truth: a false alarm is a flag on a flow whose raw draws
   are right (mean within 0.2 and SD within 20% of the exact posterior, every
   coordinate); a miss is no flag while the *importance-sampled* draws are wrong (the
   same bounds). The old rule (k̂ > 0.7) and the new one (k̂ > 0.7 and weights not nearly
   uniform: ESS below 90% of the proposals) are both scored.
2. **The draws.** In 2 to 20 dimensions, raw flow draws and importance-sampled draws
   against exact posterior draws: C2ST and the fraction of distinct draws, for the
   resampling pymc-abi used before (multinomial, S draws from S proposals) and now
   (proposals added until their ESS is twice S, systematic resampling).
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pymc as pm
import torch

import pymc_abi as abi
from pymc_abi.core import _compat
from pymc_abi.inference.importance import K_MAX, NEARLY_UNIFORM


def gaussian(d: int):
    with pm.Model() as model:
        theta = pm.Normal("theta", 0, np.sqrt(0.1), shape=d)
        pm.Normal("x", theta, np.sqrt(0.1), observed=np.zeros(d))
    return model


def _exact(x, n, rng):
    return x / 2 + np.sqrt(0.05) * rng.normal(size=(n, len(x)))


def _right(draws, x):
    sd = np.sqrt(0.05)
    return bool(
        (np.abs(draws.mean(0) - x / 2) < 0.2 * sd).all()
        and (np.abs(draws.std(0) / sd - 1) < 0.2).all()
    )


def _spoil(amortizer, how):
    """A deliberately bad copy: shrunk (over-confident) or shifted draws."""
    import copy

    bad = copy.deepcopy(amortizer)
    with torch.no_grad():
        if how == "narrow":
            bad.net.theta_std.std.mul_(0.5)
        else:
            bad.net.theta_std.mean.add_(1.5 * np.sqrt(0.05))
    return bad


def flag_study(dims, seeds, datasets, steps):
    print(
        "| d | flow | evaluations | raw right | IS right | old rule: false alarms / misses "
        "| new rule: false alarms / misses |"
    )
    print("|---:|---|---:|---:|---:|---|---|")
    for d in dims:
        model = gaussian(d)
        amortizers = [
            abi.fit(model, steps=steps, random_seed=s, progressbar=False) for s in range(seeds)
        ]
        for label in ("trained", "narrow", "shifted"):
            rows = []
            for s, amortizer in enumerate(amortizers):
                flow = amortizer if label == "trained" else _spoil(amortizer, label)
                rng = np.random.default_rng(100 + s)
                for i in range(datasets):
                    x = rng.normal(0, np.sqrt(0.2), d)
                    raw = flow.sample({"x": x}, draws=500, importance_sampling=False, random_seed=i)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        checked = flow.sample(
                            {"x": x}, draws=500, importance_sampling=True, random_seed=i
                        )
                    attrs = checked.sample_stats.attrs
                    rows.append(
                        (
                            _right(raw.posterior["theta"].values.reshape(-1, d), x),
                            _right(checked.posterior["theta"].values.reshape(-1, d), x),
                            attrs["pareto_k"] > K_MAX,
                            not attrs["reliable"],
                        )
                    )
            rows = np.array(rows)
            raw_right, is_right, old, new = rows.T
            n = len(rows)

            def rates(flag):
                false_alarm = np.sum(flag & raw_right) / max(1, np.sum(raw_right))
                miss = np.sum(~flag & ~is_right) / max(1, np.sum(~is_right))
                return f"{false_alarm:.1%} / {miss:.1%} of {np.sum(~is_right)}"

            print(
                f"| {d} | {label} | {n} | {raw_right.mean():.0%} | {is_right.mean():.0%} "
                f"| {rates(old)} | {rates(new)} |"
            )


def _old_resample(amortizer, x, draws, seed):
    """What importance_sampling=True did before: S proposals, S multinomial draws."""
    [dataset] = amortizer.data_spec.datasets({"x": x})[0]
    z, log_q = amortizer.sample_unconstrained(
        {k: v[None] for k, v in dataset.items()}, draws=draws, random_seed=seed
    )
    logp = abi.JointLogp(amortizer.parameters)(z[0], {"x": x})
    smoothed, _ = _compat.psislw(logp - log_q[0])
    weights = np.exp(smoothed - np.logaddexp.reduce(smoothed))
    idx = np.random.default_rng(seed).choice(draws, size=draws, p=weights)
    return z[0][idx]


def draws_study(dims, datasets, steps):
    print(
        "\n| d | C2ST raw | C2ST IS before | C2ST IS now | distinct before | distinct now "
        "| proposals now (x draws) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for d in dims:
        model = gaussian(d)
        amortizer = abi.fit(model, steps=steps, random_seed=0, progressbar=False)
        rng = np.random.default_rng(7)
        scores = {"raw": [], "before": [], "now": [], "d_before": [], "d_now": [], "prop": []}
        for i in range(datasets):
            x = rng.normal(0, np.sqrt(0.2), d)
            exact = _exact(x, 2000, rng)
            raw = amortizer.sample({"x": x}, draws=500, importance_sampling=False, random_seed=i)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                now = amortizer.sample({"x": x}, draws=500, importance_sampling=True, random_seed=i)
                before = _old_resample(amortizer, x, 2000, i)
                c2st = {
                    "raw": abi.c2st(
                        raw.posterior["theta"].values.reshape(-1, d), exact, random_seed=i
                    ),
                    "before": abi.c2st(before, exact, random_seed=i),
                    "now": abi.c2st(
                        now.posterior["theta"].values.reshape(-1, d), exact, random_seed=i
                    ),
                }
            for k, v in c2st.items():
                scores[k].append(v)
            scores["d_before"].append(len(np.unique(before, axis=0)) / len(before))
            scores["d_now"].append(now.sample_stats.attrs["distinct_draws"])
            scores["prop"].append(now.sample_stats.attrs["proposals"] / 2000)
        med = {k: float(np.median(v)) for k, v in scores.items()}
        print(
            f"| {d} | {med['raw']:.3f} | {med['before']:.3f} | {med['now']:.3f} "
            f"| {med['d_before']:.2f} | {med['d_now']:.2f} | {med['prop']:.1f} |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--datasets", type=int, default=25)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print(
        f"reliability flag: k̂ > {K_MAX} (old), k̂ > {K_MAX} and ESS < {NEARLY_UNIFORM:.0%} "
        "of the proposals (new)\n"
    )
    flag_study([1, 10], args.seeds, args.datasets, args.steps)
    draws_study([2, 5, 10, 20], 5, args.steps)


if __name__ == "__main__":
    main()
