"""The last tier of the per-dataset ladder: ``pm.sample`` (NUTS) on one dataset.

Used by ``Amortizer.sample`` for datasets whose importance-sampled draws are not reliable
(Pareto k̂ too high after the flow and the Laplace tier). The chains start at distinct draws
of the best tier, and where those are many enough (``MIN_DISTINCT``) the mass matrix starts
at their variance in the unconstrained space, so tuning is shorter (``SHORT_TUNE`` steps
instead of PyMC's 1,000).
"""

from __future__ import annotations

import time

import numpy as np
import pymc as pm
from pymc.step_methods.hmc.quadpotential import QuadPotentialDiagAdapt

from pymc_abi.core import _compat
from pymc_abi.data.spec import DataSpec
from pymc_abi.model._model import observe

__all__ = ["nuts"]

#: distinct draws needed to take the mass matrix from them
MIN_DISTINCT = 50
#: tuning steps when the mass matrix starts from the draws (PyMC's default otherwise)
SHORT_TUNE = 500


def nuts(spec: DataSpec, dataset, values, z, *, draws, chains, seed, attrs, log_likelihood):
    """NUTS on one dataset, started at draws ``values`` (constrained; ``z`` unconstrained)."""
    start = time.perf_counter()
    parameters = spec.simulator.parameters
    free = parameters.free_names
    rng = np.random.default_rng(seed)
    distinct = np.unique(z, axis=0, return_index=True)[1]
    starts = rng.choice(distinct, size=chains, replace=len(distinct) < chains)
    initvals = [{name: values[name][j] for name in free} for j in starts]
    model = observe(spec.model, spec.observed_of(dataset))  # pm.observe refuses initval=
    with model:
        # a dataset of another size than the model's: its dims and coords follow the data
        for dim, length in spec.dim_lengths_of(dataset).items():
            if model.dim_lengths[dim].eval() != length:
                model.set_dim(dim, length, coord_values=range(length))
        if spec.covariates:
            pm.set_data(spec.covariates_of(dataset))
        step, tune = None, 1000
        if len(distinct) >= MIN_DISTINCT:
            picked = z[distinct]
            by_name = {v.name: v for v in model.value_vars}
            potential = QuadPotentialDiagAdapt(
                z.shape[1], picked.mean(0), np.maximum(picked.var(0), 1e-12), 10
            )
            vars_ = [by_name[name] for name in parameters.value_names]  # z's layout
            step, tune = pm.NUTS(vars_, potential=potential), SHORT_TUNE
        result = pm.sample(
            draws=draws,
            tune=tune,
            step=step,
            chains=chains,
            initvals=initvals,
            random_seed=seed,
            progressbar=False,
        )
        if log_likelihood:
            result = pm.compute_log_likelihood(result, progressbar=False)
    result.attrs["fallback"] = "nuts"
    seconds = attrs.get("seconds", 0.0) + time.perf_counter() - start  # the whole ladder
    _compat.update_group_attrs(
        result, "sample_stats", {**attrs, "tier": "nuts", "seconds": seconds}
    )
    return result
