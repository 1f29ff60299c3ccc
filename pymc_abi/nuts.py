"""The NUTS fallback: ``pm.sample`` on one dataset, started from flow draws.

Used by ``Amortizer.sample(fallback="nuts")`` for datasets whose importance-sampled draws
are not reliable (Pareto k̂ too high).
"""

from __future__ import annotations

import numpy as np
import pymc as pm

from pymc_abi import _compat
from pymc_abi._model import observe
from pymc_abi.data_spec import DataSpec

__all__ = ["nuts"]


def nuts(spec: DataSpec, dataset, values, *, draws, chains, seed, attrs, log_likelihood):
    """NUTS on one dataset, its chains started at flow draws ``values`` (constrained)."""
    free = spec.simulator.parameters.free_names
    model = observe(spec.model, spec.observed_of(dataset))  # pm.observe refuses initval=
    starts = np.random.default_rng(seed).choice(len(values[free[0]]), size=chains, replace=False)
    initvals = [{name: values[name][j] for name in free} for j in starts]
    with model:
        # a dataset of another size than the model's: its dims and coords follow the data
        for dim, length in spec.dim_lengths_of(dataset).items():
            if model.dim_lengths[dim].eval() != length:
                model.set_dim(dim, length, coord_values=range(length))
        if spec.covariates:
            pm.set_data(spec.covariates_of(dataset))
        result = pm.sample(
            draws=draws, chains=chains, initvals=initvals, random_seed=seed, progressbar=False
        )
        if log_likelihood:
            result = pm.compute_log_likelihood(result, progressbar=False)
    result.attrs["fallback"] = "nuts"
    _compat.update_group_attrs(result, "sample_stats", {**attrs, "tier": "nuts"})
    return result
