"""Posterior draws from the trained networks, in batched passes, and back to the model.

:func:`draw` runs the flow for many datasets at once (datasets of equal shapes share a
pass); :func:`constrained` maps the flat unconstrained draws to the model's variables and
deterministics; :func:`result` lays one dataset's draws out as what ``pm.sample`` returns.
"""

from __future__ import annotations

import numpy as np
import torch

from pymc_abi.core import _compat
from pymc_abi.core._memory import release_memory
from pymc_abi.core.seeds import torch_generator
from pymc_abi.data.spec import DataSpec
from pymc_abi.training.sources import to_tensors

__all__ = [
    "conditioning",
    "context",
    "constrained",
    "constrained_stacked",
    "draw",
    "in_passes",
    "result",
    "stacked_result",
]

# draws per pass through the flow: on a CPU, 4,096 rows run as fast as larger passes and
# keep the working memory of a pass near 60 MB (benchmarks/memory.py); a GPU wants large
# passes to fill its cores (256k rows of 128 features: ~134 MB a layer)
ROWS_PER_PASS = {"cpu": 4096, "cuda": 262144}


def in_passes(log_prob, rows: np.ndarray, device, step: int | None = None) -> np.ndarray:
    """``log_prob`` (a torch function of an array of rows) over ``rows`` in passes of at
    most ``step`` rows (``ROWS_PER_PASS`` by default), as float64 numpy: the working memory
    of a flow's density stays that of one pass whatever the number of rows."""
    step = step or ROWS_PER_PASS.get(device.type, ROWS_PER_PASS["cpu"])
    out = np.empty(len(rows))
    for start in range(0, len(rows), step):
        out[start : start + step] = log_prob(rows[start : start + step]).double().cpu().numpy()
    return out


def context(net, spec: DataSpec, datasets, device) -> torch.Tensor:
    """The flow's context for checked datasets of equal shapes."""
    return conditioning(net, spec, datasets, device)[0]


def conditioning(net, spec: DataSpec, datasets, device):
    """The flow's context and the datasets' affine maps (``None`` without a
    preconditioner) for checked datasets of equal shapes."""
    _, data = to_tensors(spec, np.zeros((len(datasets), 0)), spec.stack(datasets), device)
    return net.context(data), net.maps(data)


@torch.no_grad()
def draw(net, spec: DataSpec, datasets, draws: int, seed: int, device, conditioned=None):
    """Unconstrained draws (K, draws, D) and their flow log densities (K, draws).

    The flow runs in passes of at most ``ROWS_PER_PASS`` rows (several datasets, or a part
    of one dataset's draws), so memory stays near the size of the result. All randomness
    comes from one torch generator seeded by ``seed``: the same seed gives the same draws
    whatever ran before, in any thread. ``conditioned``, the :func:`conditioning` of
    ``datasets`` computed before, spares recomputing it (the Laplace maps of a
    preconditioned flow are a Newton fit per dataset); it needs datasets of one shape.
    """
    net.eval()
    generator = torch_generator(seed, device)
    k = len(datasets)
    z = np.empty((k, draws, spec.simulator.parameters.ndim))
    log_q = np.empty((k, draws))
    rows = ROWS_PER_PASS.get(device.type, ROWS_PER_PASS["cpu"])
    if conditioned is None:
        groups = spec.groups(datasets, max(1, rows // max(draws, 1)))
    else:
        groups = [list(range(k))]
    for group in groups:
        chosen = [datasets[i] for i in group]
        ctx, maps = conditioned or conditioning(net, spec, chosen, device)
        step = max(1, rows // len(group))
        for start in range(0, draws, step):
            n = min(step, draws - start)
            zg, lq = net.sample_and_log_prob(n, ctx, maps, generator=generator)
            z[group, start : start + n] = zg.double().cpu().numpy().transpose(1, 0, 2)
            log_q[group, start : start + n] = lq.double().cpu().numpy().T
            del zg, lq
            release_memory()  # or the freed working memory of each pass piles up
    return z, log_q


def constrained(spec: DataSpec, z: np.ndarray, datasets) -> list[dict[str, np.ndarray]]:
    """Free variables and deterministics of draws ``z`` (K, L, D), per dataset."""
    parameters = spec.simulator.parameters
    k = len(z)  # a list where datasets differ in their number of parameters (groups)
    if spec.covariates or spec.dim_ranges:  # deterministics may depend on the dataset
        return [
            parameters.to_constrained(
                z[i],
                data=spec.covariates_of(datasets[i]),
                dim_lengths=spec.dim_lengths_of(datasets[i]) or None,
            )
            for i in range(k)
        ]
    total = z.shape[1]
    flat = parameters.to_constrained(z.reshape(k * total, -1))
    return [{n: v[i * total : (i + 1) * total] for n, v in flat.items()} for i in range(k)]


def constrained_stacked(spec: DataSpec, z: np.ndarray, datasets) -> dict[str, np.ndarray]:
    """Free variables and deterministics of draws ``z`` (K, L, D), stacked: (K, L, ...)."""
    if spec.covariates or spec.dim_ranges:
        per = constrained(spec, z, datasets)
        return {n: np.stack([values[n] for values in per]) for n in per[0]}
    k, total, _ = z.shape
    flat = spec.simulator.parameters.to_constrained(z.reshape(k * total, -1))
    return {n: v.reshape(k, total, *v.shape[1:]) for n, v in flat.items()}


def stacked_result(
    layout,
    spec: DataSpec,
    datasets,
    values,
    stats,
    chains,
    *,
    dim: str,
    attrs,
    per_dataset,
    log_likelihood=None,
):
    """Many datasets' draws as one result, with a dim ``dim`` after ``(chain, draw)``.

    ``values``, ``stats`` and ``log_likelihood`` map names to ``(K, chains * draws, ...)``
    arrays; ``per_dataset`` maps names to ``(K,)`` arrays, stored in ``sample_stats`` along
    ``dim`` alone (Pareto k̂ and the like). One conversion for all datasets: no per-dataset
    objects are built.
    """
    k = len(datasets)
    names = [*spec.observed, *spec.covariates]
    shapes = {tuple(np.shape(d[n]) for n in names) for d in datasets}
    if len(shapes) > 1:
        raise ValueError(
            f"dataset_dim='{dim}' stacks the datasets into one result, which needs datasets "
            "of one shape; these differ in size. Sample them without dataset_dim (a list of "
            "results), or in groups of equal sizes."
        )

    def lay(a):  # (K, chains * draws, ...) -> (chain, draw, K, ...)
        a = np.moveaxis(np.asarray(a), 0, 1)
        return a.reshape(chains, -1, *a.shape[1:])

    model = spec.model
    shared = {v.name: v.get_value() for v in model.data_vars if v.name not in spec.containers}
    shared = {n: v for n, v in shared.items() if n not in spec.covariates}
    covariates = {c: np.stack([d[c] for d in datasets]) for c in spec.covariates}
    groups = {
        "posterior": {n: lay(v) for n, v in values.items()},
        "sample_stats": {n: lay(v) for n, v in stats.items()},
        "observed_data": {n: np.stack([d[n] for d in datasets]) for n in spec.observed},
        "constant_data": {**shared, **covariates},
    }
    if not groups["constant_data"]:
        del groups["constant_data"]
    if log_likelihood is not None:
        groups["log_likelihood"] = {n: lay(v) for n, v in log_likelihood.items()}
    parts = layout.datasets(groups, attrs=attrs, batch=(dim, np.arange(k), set(shared)))
    for name, value in per_dataset.items():
        parts["sample_stats"][name] = ((dim,), np.asarray(value))
    return _compat.from_datasets(parts)


def _chains(values: np.ndarray, chains: int) -> np.ndarray:
    """Independent draws (chains * draws, ...) laid out as (chains, draws, ...)."""
    return values.reshape(chains, -1, *values.shape[1:])


def result(layout, spec: DataSpec, dataset, values, stats, chains, *, attrs, log_likelihood=None):
    """One dataset's draws as what ``pm.sample`` returns (``chains`` chains)."""
    model = spec.model
    model_data = {v.name: v.get_value() for v in model.data_vars if v.name not in spec.containers}
    groups = {
        "posterior": values,
        "sample_stats": stats,
        "observed_data": spec.observed_of(dataset),
        "constant_data": {**model_data, **(spec.covariates_of(dataset) or {})},
    }
    if not groups["constant_data"]:
        del groups["constant_data"]
    if log_likelihood is not None:
        groups["log_likelihood"] = log_likelihood
    groups = {
        g: {n: (v if g.endswith("_data") else _chains(v, chains)) for n, v in vs.items()}
        for g, vs in groups.items()
    }
    return layout.result(groups, attrs=attrs)


def update_stats_attrs(result, attrs) -> None:
    _compat.update_group_attrs(result, "sample_stats", attrs)
