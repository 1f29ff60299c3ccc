"""Two-level amortization of multilevel models against NUTS, and against the flat amortizer.

Three studies, each printing a table:

1. **Eight schools** (non-centred and centred forms), trained once for 4 to 16 schools
   with their standard errors drawn per dataset; checked on the real data (8 schools) and
   on simulated datasets of 4 and 16 schools.
2. **A radon-like design**: varying intercepts and slopes (a floor covariate per house),
   centred and non-centred, trained once for 20 to 100 counties of 1 to 100 houses (sizes
   as skewed as in the Minnesota data: median 6);
   checked on simulated datasets of 85 counties and of 30.
3. **Groups and cost**: varying intercepts, the flat amortizer trained for 8, 16, 32 and
   64 groups (one network per size) against one two-level amortizer trained for 4 to 64.

Accuracy is against NUTS (4 chains x 1,000 draws, target_accept 0.95, the non-centred
form as the reference for both forms): for every coordinate of the globals and the locals
(constrained), the error of the posterior mean in NUTS posterior SDs and the ratio of the
SDs. "ok" counts the coordinates within the issue's targets (mean within 0.2 SD, SD within
15%), and in brackets the globals among them. Columns "raw" are the flow's own draws, "IS"
the importance-sampled ones that ``sample()`` returns by default.

Run: ``python benchmarks/multilevel.py [--quick] [--study 1 2 3] [--form centred]
[--save DIR]``; one torch thread.
"""

from __future__ import annotations

import argparse
import time
import types
import warnings

import numpy as np
import pymc as pm
import torch
import xarray as xr

import pymc_abi as abi

SCHOOLS_Y = np.array([28.0, 8, -3, 7, -1, 1, 18, 12])
SCHOOLS_SIGMA = np.array([15.0, 10, 16, 11, 9, 11, 10, 18])


# ---------------------------------------------------------------------- models
def eight_schools(n, y=None, sigma=None, centred=False):
    with pm.Model(coords={"school": range(n)}) as model:
        s = pm.Data("sigma", SCHOOLS_SIGMA[:n] if sigma is None else sigma, dims="school")
        mu = pm.Normal("mu", 0, 5)
        tau = pm.HalfCauchy("tau", 5)
        if centred:
            theta = pm.Normal("theta", mu, tau, dims="school")
        else:
            raw = pm.Normal("theta_raw", 0, 1, dims="school")
            theta = pm.Deterministic("theta", mu + tau * raw, dims="school")
        pm.Normal("y", theta, s, observed=np.zeros(n) if y is None else y, dims="school")
    return model


def draw_sigma(rng, n, lengths):
    return rng.uniform(5, 20, size=(n, lengths["school"]))


def radon(index, floor, y=None, centred=False, n_groups=None):
    n_groups = int(index.max()) + 1 if n_groups is None else n_groups
    with pm.Model(coords={"county": range(n_groups), "obs": range(len(index))}) as model:
        g = pm.Data("county_idx", index, dims="obs")
        x = pm.Data("floor", floor, dims="obs")
        mu_a = pm.Normal("mu_a", 1.5, 1)
        mu_b = pm.Normal("mu_b", -0.6, 0.5)
        sigma_a = pm.HalfNormal("sigma_a", 0.5)
        sigma_b = pm.HalfNormal("sigma_b", 0.3)
        if centred:
            a = pm.Normal("a", mu_a, sigma_a, dims="county")
            b = pm.Normal("b", mu_b, sigma_b, dims="county")
        else:
            za = pm.Normal("za", 0, 1, dims="county")
            zb = pm.Normal("zb", 0, 1, dims="county")
            a = pm.Deterministic("a", mu_a + sigma_a * za, dims="county")
            b = pm.Deterministic("b", mu_b + sigma_b * zb, dims="county")
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal(
            "log_radon",
            a[g] + b[g] * x,
            sigma,
            observed=np.zeros(len(index)) if y is None else y,
            dims="obs",
        )
    return model


def draw_floor(rng, n, lengths):
    return (rng.random((n, lengths["obs"])) < 0.3).astype(float)


def intercepts(index, y=None, n_groups=None):
    n_groups = int(index.max()) + 1 if n_groups is None else n_groups
    with pm.Model(coords={"group": range(n_groups), "obs": range(len(index))}) as model:
        g = pm.Data("g", index, dims="obs")
        mu = pm.Normal("mu", 0, 1)
        tau = pm.HalfNormal("tau", 1)
        a = pm.Normal("a", mu, tau, dims="group")
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", a[g], sigma, observed=np.zeros(len(index)) if y is None else y, dims="obs")
    return model


# ---------------------------------------------------------------------- comparison
def nuts(model, seed=1):
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pm.sample(
            1000, chains=4, target_accept=0.95, random_seed=seed, progressbar=False
        ).posterior


def compare(result, reference, names):
    """Max error of the means (reference SDs), SD ratio range, share within targets."""
    errors, ratios, scalar = [], [], []
    for name in names:
        ref = reference[name].values.reshape(-1, *reference[name].shape[2:])
        got = result.posterior[name].values.reshape(-1, *result.posterior[name].shape[2:])
        sd = ref.std(0)
        errors.append(np.ravel(np.abs(got.mean(0) - ref.mean(0)) / sd))
        ratios.append(np.ravel(got.std(0) / sd))
        scalar.append(np.full(ratios[-1].size, ref.ndim == 1))
    errors, ratios, scalar = (np.concatenate(a) for a in (errors, ratios, scalar))
    ok = (errors < 0.2) & (np.abs(ratios - 1) < 0.15)
    # the globals apart: one global off moves every group's posterior
    summary = f"{ok.sum()}/{ok.size} ({ok[scalar].sum()}/{scalar.sum()})"
    return errors.max(), ratios.min(), ratios.max(), summary


def header():
    print(
        "| model | dataset | groups | draws | max mean err (SD) | SD ratio | ok (globals) | k̂ | "
        "fit (s) |\n|---|---|---|---|---|---|---|---|---|"
    )


def row(model, dataset, n_groups, amortizer, observed, reference, names):
    for label, importance in (("raw", False), ("IS", True)):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = amortizer.sample(observed, draws=1000, importance_sampling=importance)
        seconds = time.perf_counter() - start
        err, lo, hi, ok = compare(result, reference, names)
        k = result.sample_stats.attrs.get("pareto_k", float("nan"))
        print(
            f"| {model} | {dataset} | {n_groups} | {label} | {err:.2f} | {lo:.2f}-{hi:.2f} | "
            f"{ok} | {k:.2f} | {seconds:.2f} |",
            flush=True,
        )


@torch.no_grad()
def given_globals(amortizer, observed, reference):
    """The local flow's draws given the globals' NUTS draws, constrained (a posterior-like
    dataset): how good the local network is when the globals are right."""
    h, net = amortizer.hierarchy, amortizer.net
    [dataset], _ = amortizer.data_spec.datasets(observed, None)
    lengths = amortizer.data_spec.dim_lengths_of(dataset)
    n_groups = lengths[h.group_dim]
    names = amortizer.parameters.free_names
    values = {n: reference[n].values.reshape(-1, *reference[n].shape[2:]) for n in names}
    z_global, _ = h.split(
        amortizer.parameters.to_unconstrained(values, dim_lengths=lengths), n_groups
    )
    net.eval()
    _, summaries = net.summaries(amortizer._inputs(dataset))
    u_global = net.global_std(torch.as_tensor(z_global, dtype=torch.float32))
    z_local = net.sample_locals(u_global, summaries[0])[0].double().numpy()
    data = {name: dataset[name] for name in amortizer.data_spec.covariates}
    draws = amortizer.parameters.to_constrained(
        h.join(z_global, z_local), dim_lengths=lengths, data=data
    )
    dims = lambda n, v: ("chain", "draw", *[f"{n}_{i}" for i in range(v.ndim - 1)])  # noqa: E731
    return xr.Dataset({n: (dims(n, v), v[None]) for n, v in draws.items()})


def trained(what, amortizer_seconds, amortizer):
    print(
        f"\n{what}: trained in {amortizer_seconds:.0f} s, {amortizer.history.step[-1]} steps "
        f"({amortizer.history.stops[-1]})\n",
        flush=True,
    )


# ---------------------------------------------------------------------- studies
def both_forms(title, build, fit_options, tests, names, local_names, args):
    """Train one two-level amortizer per form (non-centred, centred) and print its table.

    ``build(centred)`` gives the model to train on; ``tests`` holds ``(label, n_groups,
    observed, reference)``, the NUTS reference computed once for both forms. A third row
    per dataset checks the local flow alone, given the globals' NUTS draws (its
    ``local_names``)."""
    for centred in args.forms:
        name = f"{title}, " + ("centred" if centred else "non-centred")
        start = time.perf_counter()
        amortizer = abi.fit(
            build(centred),
            steps=1000 if args.quick else None,
            random_seed=1,
            progressbar=False,
            **fit_options,
        )
        trained(name, time.perf_counter() - start, amortizer)
        if args.save:
            amortizer.save(f"{args.save}/{name.replace(', ', '_').replace(' ', '_')}.abi")
        header()
        for label, n_groups, observed, reference in tests:
            row(name, label, n_groups, amortizer, observed, reference, names)
            locals_only = types.SimpleNamespace(
                posterior=given_globals(amortizer, observed, reference)
            )
            err, lo, hi, ok = compare(locals_only, reference, local_names)
            print(
                f"| {name} | {label} | {n_groups} | locals given NUTS globals | {err:.2f} | "
                f"{lo:.2f}-{hi:.2f} | {ok} | — | — |",
                flush=True,
            )


def study_schools(args):
    rng = np.random.default_rng(0)
    datasets = [("real data", SCHOOLS_Y, SCHOOLS_SIGMA)]
    for n in (4, 16):
        sigma = rng.uniform(5, 20, n)
        theta = rng.normal(4, 5, n)
        datasets.append(("simulated", rng.normal(theta, sigma), sigma))
    tests = [
        (label, len(y), {"y": y, "sigma": sigma}, nuts(eight_schools(len(y), y, sigma)))
        for label, y, sigma in datasets
    ]
    both_forms(
        "eight schools",
        lambda centred: eight_schools(8, centred=centred),
        {
            "groups": "school",
            "covariates": {"sigma": draw_sigma},
            "dim_lengths": {"school": (4, 16)},
        },
        tests,
        ["mu", "tau", "theta"],
        ["theta"],
        args,
    )


def radon_sizes(rng, n_groups):
    """Houses per county as skewed as in the Minnesota radon data: median 6, 1 to 100."""
    return np.clip(np.round(np.exp(rng.normal(1.8, 1.1, n_groups))), 1, 100).astype(int)


def radon_design(rng, n_groups):
    sizes = radon_sizes(rng, n_groups)
    index = np.repeat(np.arange(n_groups), sizes)
    return index, (rng.random(len(index)) < 0.3).astype(float)


def study_radon(args):
    rng = np.random.default_rng(1)
    tests = []
    for n_groups in (85, 30):
        index, floor = radon_design(rng, n_groups)
        a = rng.normal(1.5, 0.35, n_groups)
        b = rng.normal(-0.6, 0.2, n_groups)
        y = rng.normal(a[index] + b[index] * floor, 0.75)
        observed = {"log_radon": y, "county_idx": index, "floor": floor}
        tests.append((f"{len(y)} houses", n_groups, observed, nuts(radon(index, floor, y))))
    index, floor = tests[0][2]["county_idx"], tests[0][2]["floor"]
    both_forms(
        "radon-like",
        lambda centred: radon(index, floor, centred=centred),
        {
            "groups": "county",
            "group_sizes": radon_sizes,
            "covariates": {"floor": draw_floor},
            "dim_lengths": {"county": (20, 100)},
        },
        tests,
        ["mu_a", "mu_b", "sigma_a", "sigma_b", "sigma", "a", "b"],
        ["a", "b"],
        args,
    )


def study_groups(args):
    rng = np.random.default_rng(2)
    sizes = (8, 16, 32, 64)
    data = {}
    for n in sizes:  # all four drawn, so that each size gets the same data whichever run
        index = np.repeat(np.arange(n), 5)
        a = rng.normal(0.3, 0.7, n)
        data[n] = (index, rng.normal(a[index], 1.0))
    steps = 1000 if args.quick else None
    start = time.perf_counter()
    two = abi.fit(
        intercepts(np.repeat(np.arange(8), 5)),
        groups="group",
        group_sizes=(5, 5),
        dim_lengths={"group": (4, 64)},
        steps=steps,
        random_seed=1,
        progressbar=False,
    )
    two_seconds = time.perf_counter() - start
    print(
        "\n| groups | amortizer | trained (s) | steps | max mean err (SD) raw | SD ratio raw | "
        "ok raw (globals) | k̂ |\n|---|---|---|---|---|---|---|---|"
    )
    for n in args.groups:
        index, y = data[n]
        reference = nuts(intercepts(index, y))
        start = time.perf_counter()
        flat = abi.fit(intercepts(index), steps=steps, random_seed=1, progressbar=False)
        flat_seconds = time.perf_counter() - start
        for label, amortizer, seconds in (
            ("flat, trained for this size", flat, flat_seconds),
            ("two-level, one for 4-64", two, two_seconds),
        ):
            # the flat amortizer is trained for this design: the index is fixed data there
            observed = {"y": y, "g": index} if amortizer is two else {"y": y}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                raw = amortizer.sample(observed, draws=1000, importance_sampling=False)
                checked = amortizer.sample(observed, draws=1000)
            err, lo, hi, ok = compare(raw, reference, ["mu", "tau", "sigma", "a"])
            k = checked.sample_stats.attrs["pareto_k"]
            print(
                f"| {n} | {label} | {seconds:.0f} | {amortizer.history.step[-1]} | {err:.2f} | "
                f"{lo:.2f}-{hi:.2f} | {ok} | {k:.2f} |",
                flush=True,
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 training steps each")
    parser.add_argument("--study", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument(
        "--form",
        choices=["non-centred", "centred"],
        nargs="*",
        default=["non-centred", "centred"],
        help="the forms of studies 1 and 2",
    )
    parser.add_argument("--save", help="a folder to save the amortizers of studies 1 and 2 in")
    parser.add_argument(
        "--groups",
        type=int,
        nargs="*",
        choices=[8, 16, 32, 64],
        default=[8, 16, 32, 64],
        help="the numbers of groups of study 3",
    )
    args = parser.parse_args()
    args.forms = [form == "centred" for form in args.form]
    torch.set_num_threads(1)
    for study in args.study:
        {1: study_schools, 2: study_radon, 3: study_groups}[study](args)


if __name__ == "__main__":
    main()
