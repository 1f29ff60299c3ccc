"""Draws -> the ArviZ result ``pm.sample`` gives, with the model's coords and dims.

``az.InferenceData`` with PyMC 5 / ArviZ 0.x, ``xarray.DataTree`` with PyMC 6 / ArviZ 1.x:
the arrays are handed to ArviZ's own converter (:mod:`pymc_abi.core._compat`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pymc as pm
import xarray as xr
from pymc.backends.arviz import coords_and_dims_for_inferencedata

from pymc_abi.core import _compat

__all__ = ["Layout"]


class Layout:
    """Coords and dims of a model, computed once and reused for every dataset.

    Coords are passed for a dim only where the data have the model's length along it; a
    dataset of another size (a varying dim) gets ArviZ's default integer coords there.
    """

    def __init__(self, model: pm.Model):
        coords, dims = coords_and_dims_for_inferencedata(model)
        self.coords = {k: np.asarray(v) for k, v in coords.items() if v is not None}
        self.dims = {k: list(v) for k, v in dims.items()}

    def _dims_and_coords(self, values: Mapping[str, np.ndarray], lead: int, batch=None):
        dims, coords = {}, {}
        for name, value in values.items():
            shape = np.shape(value)[lead:]
            outer = []
            if batch is not None and name not in batch[2]:  # a leading dataset dim
                outer, shape = [batch[0]], shape[1:]
                coords[batch[0]] = batch[1]
            # a pointwise log-likelihood has only the batch dims of a multivariate variable
            dims[name] = outer + self.dims.get(name, [])[: len(shape)]
            for dim, length in zip(dims[name][len(outer) :], shape):
                if dim in self.coords and len(self.coords[dim]) == length:
                    coords.setdefault(dim, self.coords[dim])
        return dims, coords

    def result(
        self,
        groups: Mapping[str, Mapping[str, np.ndarray]],
        *,
        attrs: Mapping[str, object] | None = None,
        extra: Mapping[str, xr.Dataset] | None = None,
        batch: tuple[str, np.ndarray, set] | None = None,
    ) -> _compat.Result:
        """The result for ``{group: {name: array}}``.

        Arrays lead with ``(chain, draw)``, except in ``*_data`` groups; ``extra`` adds groups
        that are datasets already. ``batch = (dim, coord, unbatched)``: after those, arrays
        lead with a dim ``dim`` (one entry per dataset, labelled ``coord``), except the
        variables named in ``unbatched`` (data shared by every dataset).
        """
        datasets = self.datasets(groups, attrs=attrs, batch=batch)
        datasets.update(extra or {})
        return _compat.from_datasets(datasets)

    def datasets(
        self,
        groups: Mapping[str, Mapping[str, np.ndarray]],
        *,
        attrs: Mapping[str, object] | None = None,
        batch: tuple[str, np.ndarray, set] | None = None,
    ) -> dict[str, xr.Dataset]:
        """One ``xarray.Dataset`` per group, as :meth:`result` builds them."""

        datasets = {}
        for group, values in groups.items():
            lead = () if group.endswith("_data") else ("chain", "draw")
            dims, coords = self._dims_and_coords(values, len(lead), batch)
            datasets[group] = _compat.to_dataset(
                values, sample_dims=lead, coords=coords, dims=dims, attrs=attrs or {}
            )
        return datasets
