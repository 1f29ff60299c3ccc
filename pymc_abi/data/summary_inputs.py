"""Which arrays feed which summary network: the planning behind :class:`DataSpec`.

Observed variables are the inputs; a covariate whose first dim is an observed variable's
is summarized with it, row by row; other covariates are inputs of their own. The default
summary kind follows from the distribution, the time dim and the exchangeability of rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from pymc.distributions.timeseries import (
    GARCH11RV,
    AutoRegressiveRV,
    EulerMaruyamaRV,
    RandomWalkRV,
)
from pytensor.tensor.random.op import RandomVariable

from pymc_abi.core._arguments import int_range

__all__ = ["SEQUENCE_KINDS", "SummaryInput", "check_covariates", "dim_ranges", "Planner"]

_TIME_SERIES_RVS = (RandomWalkRV, AutoRegressiveRV, GARCH11RV, EulerMaruyamaRV)
#: Summary kinds that take ``[B, N, F]`` with ``N`` free (sets and sequences).
SEQUENCE_KINDS = ("deepset", "set_transformer", "time_series")


@dataclass(frozen=True)
class SummaryInput:
    """One input of the summary network: an observed variable with its row-aligned
    covariates, or a covariate on its own.

    Attributes
    ----------
    name : str
        The input's name (its first variable).
    variables : list of str
        The arrays concatenated feature-wise into this input.
    kind : str
        The summary network: ``"identity"``, ``"mlp"``, ``"deepset"``,
        ``"set_transformer"``, ``"time_series"`` or ``"custom"``.
    shape : tuple of int
        Per dataset, of the first variable, at the model's sizes.
    varying : str or None
        The dim along the first axis whose length varies.
    """

    name: str
    variables: list[str]
    kind: str
    shape: tuple[int, ...]
    varying: str | None = None

    @property
    def sequence(self) -> bool:
        """Fed as [B, N, F]: set and sequence networks, and custom modules for varying N."""
        return self.kind in SEQUENCE_KINDS or (self.kind == "custom" and bool(self.varying))

    def assemble(self, values: Mapping[str, np.ndarray], batch: int) -> np.ndarray:
        """Per-dataset arrays -> float32 ``[B, N, F]`` for sets and sequences, else ``[B, P]``."""
        parts = []
        for name in self.variables:
            a = np.asarray(values[name], dtype=np.float32)
            if self.sequence:
                n = a.shape[1] if a.ndim > 1 else 1
                parts.append(a.reshape(batch, n, -1))
            else:
                parts.append(a.reshape(batch, -1))
        return np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]


def dim_ranges(simulator, dim_lengths) -> dict[str, tuple[int, int]]:
    ranges = {}
    if dim_lengths is not None and not isinstance(dim_lengths, Mapping):
        raise TypeError(
            f"dim_lengths must be a dict of dim names to lengths or (low, high) ranges, got "
            f"{type(dim_lengths).__name__}."
        )
    for dim, value in (dim_lengths or {}).items():
        ranges[dim] = int_range(f"dim_lengths['{dim}']", value)
    if ranges:  # unknown dims and parameter dims fail here
        simulator.check_dim_lengths({d: r[0] for d, r in ranges.items()})
    return ranges


def check_covariates(model, covariates, ranges) -> dict[str, Callable | None]:
    covariates = dict(covariates or {})
    known = {v.name for v in model.data_vars}
    for name, fn in covariates.items():
        if name not in known:
            raise ValueError(
                f"'{name}' is not a pm.Data container of the model (containers: "
                f"{sorted(known) or 'none'})."
            )
        if fn is not None and not callable(fn):
            raise TypeError(
                f"covariates['{name}'] must be a function fn(rng, n, dim_lengths) that draws "
                "covariates per dataset; a fixed array belongs in the model (pm.set_data)."
            )
    for dim in ranges:
        for var in model.data_vars:
            if dim in (model.named_vars_to_dims.get(var.name) or ()) and var.name not in covariates:
                raise ValueError(
                    f"dim '{dim}' varies during training, and pm.Data '{var.name}' has that "
                    f"dim: give covariates={{'{var.name}': fn}} to draw it at each size."
                )
    return covariates


class Planner:
    """Which variables feed which summary network, and the default kinds."""

    def __init__(self, model, observed_names, ranges, time_dim, observed, data_values):
        self.model, self.observed_names, self.ranges = model, list(observed_names), ranges
        self.time_dim, self.observed, self.data_values = time_dim, observed, data_values

    def dims(self, name) -> tuple:
        return tuple(self.model.named_vars_to_dims.get(name, ()) or ())

    def inputs(self, covariates, choice) -> list[SummaryInput]:
        aligned: dict[str, list[str]] = {name: [] for name in self.observed_names}
        alone = []
        for cov in covariates:
            target = self.aligned_observed(cov)
            (aligned[target].append(cov) if target else alone.append(cov))
        names = [*self.observed_names, *alone]
        if isinstance(choice, Mapping):
            unknown = sorted(set(choice) - set(names))
            if unknown:
                raise ValueError(
                    f"summary_network names {unknown}, which are not inputs of the summary "
                    f"networks; give one per observed variable or stand-alone covariate: "
                    f"{names}."
                )
        return [self.input(name, choice, aligned.get(name, [])) for name in names]

    def input(self, name, choice, aligned) -> SummaryInput:
        value = self.observed[name] if name in self.observed else self.data_values[name]
        shape = tuple(np.shape(value))
        dims = self.dims(name)
        varying = dims[0] if dims and dims[0] in self.ranges else None
        for axis, dim in enumerate(dims[1:], start=1):
            if dim in self.ranges:
                raise ValueError(
                    f"dim '{dim}' varies, but it is axis {axis} of '{name}'; only the first "
                    "axis of a variable can vary (it is summarized as a set or sequence)."
                )
        pick = choice.get(name) if isinstance(choice, Mapping) else choice
        kind = pick if pick is not None else self.default_kind(name, shape, bool(aligned), varying)
        if varying and kind not in SEQUENCE_KINDS and kind != "custom":
            raise ValueError(
                f"dim '{varying}' varies, so '{name}' needs a summary network that takes "
                f"sets or sequences of any length ({', '.join(SEQUENCE_KINDS)}), not "
                f"'{kind}'."
            )
        return SummaryInput(name, [name, *aligned], kind, shape, varying)

    def aligned_observed(self, cov) -> str | None:
        cov_dims, value = self.dims(cov), self.data_values[cov]
        for name in self.observed_names:
            obs_dims = self.dims(name)
            if cov_dims and obs_dims:
                if cov_dims[0] is not None and cov_dims[0] == obs_dims[0]:
                    return name
            elif np.ndim(value) >= 1 and np.ndim(self.observed[name]) >= 1:
                if np.shape(value)[0] == np.shape(self.observed[name])[0]:
                    return name
        return None

    def default_kind(self, name, shape, aligned, varying) -> str:
        dims = self.dims(name)
        rv = self.model[name] if name in self.observed_names else None
        if rv is not None and isinstance(rv.owner.op, _TIME_SERIES_RVS):
            return "time_series"
        if self.time_dim is not None and dims and dims[0] == self.time_dim:
            return "time_series"
        if rv is not None and shape and (shape[0] > 1 or varying):
            if _exchangeable_rows(rv, aligned):
                return "deepset"
        if varying:
            raise ValueError(
                f"dim '{varying}' varies, but the rows of '{name}' are not exchangeable and it "
                "is not a time series: choose its summary_network, or name the time dim with "
                "time_dim=."
            )
        return "identity" if int(np.prod(shape, dtype=int)) <= 8 else "mlp"


def _exchangeable_rows(rv, aligned: bool = False) -> bool:
    """True when an observed RV's entries along its first axis are iid given the parameters.

    With row-aligned covariates (``aligned``), rows of (observation, covariates) are
    exchangeable for any elementwise likelihood.
    """
    node = rv.owner
    op = node.op
    if not isinstance(op, RandomVariable):
        return False
    batch_ndim = rv.ndim - op.ndim_supp
    if batch_ndim < 1:
        return False
    if aligned:
        return True
    for param, core in zip(op.dist_params(node), op.ndims_params):
        param_batch = param.ndim - core
        if param_batch == batch_ndim and param.type.shape[0] != 1:
            return False
    return True
