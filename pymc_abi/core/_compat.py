"""The one place that knows PyMC 5 / ArviZ 0.x from PyMC 6 / ArviZ 1.x.

pymc-abi hands back what ``pm.sample`` hands back where it runs: ``arviz.InferenceData``
with PyMC 5 and ArviZ 0.x (Python 3.11), ``xarray.DataTree`` with PyMC 6 and ArviZ 1.x
(Python >= 3.12). Everything else in the package builds results from plain dicts of
arrays through :func:`to_dataset` and :func:`from_datasets` and reads them through :func:`group` and
:func:`group_names`, and never asks which generation it runs on.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import arviz as az
import numpy as np
import xarray as xr

__all__ = [
    "ARVIZ_1",
    "Result",
    "from_datasets",
    "group",
    "group_names",
    "is_result",
    "psislw",
    "to_dataset",
    "add_groups",
    "update_group_attrs",
]

#: True with ArviZ 1.x (PyMC 6), False with ArviZ 0.x (PyMC 5).
ARVIZ_1 = int(az.__version__.split(".")[0]) >= 1

if ARVIZ_1:
    from arviz_base import dict_to_dataset as _dict_to_dataset
    from arviz_stats.base import array_stats as _array_stats

    #: The type ``pm.sample`` returns here.
    Result = xr.DataTree
else:
    Result = az.InferenceData


def to_dataset(
    values: Mapping[str, np.ndarray],
    *,
    sample_dims: Sequence[str],
    coords: Mapping[str, Any],
    dims: Mapping[str, Sequence[str | None]],
    attrs: Mapping[str, Any],
) -> xr.Dataset:
    """One group from plain arrays, by ArviZ's own converter (``dict_to_dataset``).

    ArviZ names the unnamed dims as ``pm.sample`` does in each generation. A scalar stays a
    scalar, as PyMC keeps it (ArviZ 0.x would add a dim of length 1).
    """
    if ARVIZ_1:
        ds = _dict_to_dataset(
            values, coords=coords, dims=dims, sample_dims=list(sample_dims), attrs=dict(attrs)
        )
    else:
        ds = az.dict_to_dataset(
            values,
            coords=coords,
            dims=dims,
            default_dims=None if list(sample_dims) == ["chain", "draw"] else list(sample_dims),
            attrs=dict(attrs),
        )
    squeeze = [
        f"{k}_dim_0" for k, v in values.items() if np.ndim(v) == 0 and f"{k}_dim_0" in ds.dims
    ]
    return ds.squeeze(squeeze, drop=True) if squeeze else ds


def from_datasets(groups: Mapping[str, xr.Dataset]) -> Result:
    """Gather ready datasets as the groups of one result."""
    if ARVIZ_1:
        return xr.DataTree.from_dict(dict(groups))
    with warnings.catch_warnings():  # groups outside ArviZ 0.x's schema (SBC's) are fine
        warnings.filterwarnings("ignore", message=".*group is not defined in the InferenceData")
        return az.InferenceData(**groups)


def is_result(obj: Any) -> bool:
    """Whether ``obj`` is an ``InferenceData`` (ArviZ 0.x) or a ``DataTree`` (ArviZ 1.x)."""
    return isinstance(obj, Result)


def group_names(result: Result) -> list[str]:
    """The names of the groups of a result (``posterior``, ``sample_stats``, ...)."""
    if isinstance(result, xr.DataTree):
        return list(result.children)
    return list(result.groups())


def group(result: Result, name: str) -> xr.Dataset:
    """One group of a result, as an ``xarray.Dataset``."""
    if isinstance(result, xr.DataTree):
        return result[name].to_dataset()
    return result[name]


def update_group_attrs(result: Result, name: str, attrs: Mapping[str, Any]) -> None:
    """Add attributes to one group of a result, in place."""
    result[name].attrs.update(attrs)


def add_groups(result: Result, groups: Mapping[str, xr.Dataset]) -> None:
    """Add groups to a result, in place."""
    if isinstance(result, xr.DataTree):
        for name, ds in groups.items():
            result[name] = xr.DataTree(ds)
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*group is not defined in the InferenceData")
            result.add_groups(dict(groups))


def psislw(log_weights: np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed log weights (normalized) and the Pareto k̂ of a 1-d sample.

    When the largest weights are all equal there is no tail to fit (ArviZ 1 raises, ArviZ
    0.x reports inf): the weights are returned as they are with k̂ = -inf. A k̂ the fit
    cannot estimate (or fewer than 25 weights, too few for a tail fit) comes back as nan,
    with the weights unsmoothed.
    """
    log_weights = np.asarray(log_weights, dtype=float)
    finite = np.sort(log_weights[np.isfinite(log_weights)])
    tail = int(min(0.2 * log_weights.size, 3 * np.sqrt(log_weights.size))) + 1
    top = finite[-tail:]
    if top.size == 0 or top[-1] - top[0] <= 1e-12 * max(1.0, abs(top[-1])):
        return log_weights - np.logaddexp.reduce(log_weights), -np.inf
    if tail < 5:  # too few weights for a tail fit (ArviZ 1 raises, 0.x warns)
        return log_weights - np.logaddexp.reduce(log_weights), float("nan")
    if ARVIZ_1:
        # arviz-stats takes log-likelihood values, as LOO does (log weights = -log lik)
        smoothed, khat = _array_stats.psislw(-log_weights)
    else:
        smoothed, khat = az.psislw(log_weights)
    if np.isnan(khat):
        return log_weights - np.logaddexp.reduce(log_weights), float("nan")
    return np.asarray(smoothed), float(khat)
