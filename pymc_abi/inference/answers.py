"""The answers of :meth:`~pymc_abi.Amortizer.sample`, once the ladder has run: one result per
dataset, or every dataset stacked along a new dim, each dataset answered by its tier (the
flow's or the Laplace tier's importance-sampled draws, or NUTS where both were unreliable)
with its diagnostics in ``sample_stats``.
"""

from __future__ import annotations

import numpy as np

from pymc_abi.core import _compat
from pymc_abi.inference import sampling
from pymc_abi.inference.nuts import nuts

__all__ = ["per_dataset", "stacked"]


def per_dataset(
    spec,
    layout,
    density,
    datasets,
    z,
    stats,
    is_attrs,
    *,
    chains: int,
    draws: int,
    seed: int,
    attrs: dict,
    fallback,
    log_likelihood: bool,
) -> list:
    """One result per dataset: NUTS for a dataset the ladder left unreliable (with
    ``fallback="nuts"``), else its draws ``z[i]`` with their ``stats[i]`` and the ladder's
    diagnostics ``is_attrs[i]`` in ``sample_stats``."""
    values = sampling.constrained(spec, z, datasets)
    results = []
    for i, dataset in enumerate(datasets):
        if fallback == "nuts" and not is_attrs[i]["reliable"]:
            results.append(
                nuts(
                    spec,
                    dataset,
                    values[i],
                    z[i],
                    draws=draws,
                    chains=chains,
                    seed=seed + i,
                    attrs=is_attrs[i],
                    log_likelihood=log_likelihood,
                )
            )
            continue
        loglik = density.pointwise(z[i], dataset) if log_likelihood else None
        result = sampling.result(
            layout,
            spec,
            dataset,
            values[i],
            stats[i],
            chains,
            attrs=attrs,
            log_likelihood=loglik,
        )
        _compat.update_group_attrs(result, "sample_stats", is_attrs[i])
        results.append(result)
    return results


def stacked(
    spec,
    layout,
    density,
    datasets,
    z,
    stats,
    is_attrs,
    *,
    chains: int,
    draws: int,
    seed: int,
    attrs: dict,
    dim: str,
    fallback,
    log_likelihood: bool,
):
    """``sample(..., dataset_dim=dim)``: every dataset in one result, along ``dim``; the
    per-dataset diagnostics are arrays along it, and NUTS refits replace the draws of the
    datasets the ladder left unreliable."""
    total = chains * draws
    values = sampling.constrained_stacked(spec, z, datasets)
    stacked_stats = {n: np.stack([s[n] for s in stats]) for n in stats[0]}
    loglik = None
    if log_likelihood:
        per = [density.pointwise(z[i], d) for i, d in enumerate(datasets)]
        loglik = {n: np.stack([p[n] for p in per]) for n in per[0]}
    diagnostics = {}
    if is_attrs[0]:
        keys = [key for key in is_attrs[0] if key != "importance_sampling"]
        diagnostics = {key: np.array([a[key] for a in is_attrs]) for key in keys}
    if fallback == "nuts":
        refit = np.array([not a["reliable"] for a in is_attrs])
        diagnostics["fallback"] = refit
        diagnostics["tier"] = np.where(refit, "nuts", diagnostics["tier"])
        for i in np.flatnonzero(refit):
            one = {n: v[i] for n, v in values.items()}
            res = nuts(
                spec,
                datasets[i],
                one,
                z[i],
                draws=draws,
                chains=chains,
                seed=seed + int(i),
                attrs=is_attrs[i],
                log_likelihood=log_likelihood,
            )
            for n, v in values.items():
                v[i] = res.posterior[n].values.reshape(total, *v.shape[2:])
            for v in stacked_stats.values():
                v[i] = np.nan  # the flow's and model's densities of flow draws
            diagnostics["seconds"][i] = _compat.group(res, "sample_stats").attrs["seconds"]
            for n, v in (loglik or {}).items():
                v[i] = res.log_likelihood[n].values.reshape(total, *v.shape[2:])
    return sampling.stacked_result(
        layout,
        spec,
        datasets,
        values,
        stacked_stats,
        chains,
        dim=dim,
        attrs=attrs,
        per_dataset=diagnostics,
        log_likelihood=loglik,
    )
