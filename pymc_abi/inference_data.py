"""Posterior draws -> ``az.InferenceData`` with the model's coords and dims."""

from __future__ import annotations

from collections.abc import Mapping

import arviz as az
import numpy as np
import pymc as pm
import xarray as xr
from pymc.backends.arviz import coords_and_dims_for_inferencedata

__all__ = ["to_inference_data"]


class _Layout:
    """Coords and dims of a model, computed once and reused for every dataset."""

    def __init__(self, model: pm.Model):
        coords, dims = coords_and_dims_for_inferencedata(model)
        self.coords = {k: np.asarray(v) for k, v in coords.items() if v is not None}
        self.dims = {k: list(v) for k, v in dims.items()}

    def variable(self, name: str, value: np.ndarray, lead: tuple[str, ...]) -> xr.Variable:
        core = value.ndim - len(lead)
        dims = self.dims.get(name, [])
        dims = [d if d is not None else f"{name}_dim_{i}" for i, d in enumerate(dims)]
        dims += [f"{name}_dim_{i}" for i in range(len(dims), core)]
        return xr.Variable((*lead, *dims[:core]), value)

    def dataset(self, values: Mapping[str, np.ndarray], lead: tuple[str, ...], attrs) -> xr.Dataset:
        variables = {name: self.variable(name, np.asarray(v), lead) for name, v in values.items()}
        coords = {}
        for var in variables.values():
            for dim, length in zip(var.dims, var.shape):
                if dim in lead:
                    coords.setdefault(dim, np.arange(length))
                elif dim in self.coords and len(self.coords[dim]) == length:
                    coords.setdefault(dim, self.coords[dim])
                else:  # a dim whose length differs from the model's coords (new data size)
                    coords.setdefault(dim, np.arange(length))
        return xr.Dataset(variables, coords=coords, attrs=dict(attrs))


def to_inference_data(
    layout: _Layout,
    posterior: Mapping[str, np.ndarray],
    *,
    observed_data: Mapping[str, np.ndarray],
    constant_data: Mapping[str, np.ndarray],
    sample_stats: Mapping[str, np.ndarray],
    attrs: Mapping[str, object],
) -> az.InferenceData:
    """Build InferenceData from one chain of draws (arrays with a leading draw axis)."""
    lead = ("chain", "draw")
    groups = {
        "posterior": layout.dataset({k: v[None] for k, v in posterior.items()}, lead, attrs),
        "sample_stats": layout.dataset({k: v[None] for k, v in sample_stats.items()}, lead, attrs),
        "observed_data": layout.dataset(observed_data, (), attrs),
    }
    if constant_data:
        groups["constant_data"] = layout.dataset(constant_data, (), attrs)
    return az.InferenceData(**groups)
