"""What pymc-abi needs to know about a PyMC model: checks, data containers and dim lengths.

The simulator and the parameter space compile graphs in which the model's ``pm.Data``
containers and shared dim lengths are explicit inputs, so that new data or new dim
lengths never need a recompilation and never touch the model's own shared state.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pymc.distributions.continuous import FlatRV, HalfFlatRV
from pymc.distributions.custom import CustomDistRV
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Variable
from pytensor.graph.traversal import ancestors

from pymc_abi.core.errors import PotentialIgnoredWarning

__all__ = [
    "ModelInputs",
    "check_imputation",
    "check_model",
    "fingerprint",
    "observed_containers",
    "observed_rvs",
]


def observed_rvs(model: pm.Model) -> list:
    """The model's observed random variables, each once.

    PyMC 5.28's ``sample_posterior_predictive`` appends an observed variable to
    ``model.observed_RVs`` a second time when the trace holds ``observed_data``; a user's
    workflow (fit, sample, PPC, importance sampling) must not trip over it.
    """
    return list(dict.fromkeys(model.observed_RVs))


def observe(model: pm.Model, data) -> pm.Model:
    """``pm.observe(model, data)``, also for models with initial values (``initval=``),
    which ``pm.observe`` refuses. They are set aside while the model is copied; the copy
    has none (the NUTS fallback starts from flow draws anyway)."""
    saved = dict(model.rvs_to_initial_values)
    try:
        for rv in saved:
            model.rvs_to_initial_values[rv] = None
        return pm.observe(model, data)
    finally:
        model.rvs_to_initial_values.update(saved)


def observed_containers(model: pm.Model) -> set[str]:
    """Names of the ``pm.Data`` containers that hold observed values.

    ``pm.Data("y_obs", counts)`` passed as ``observed=`` is read through the expression PyMC
    builds (a cast for a discrete likelihood); the container holds data, not a covariate.
    """
    data = {v: v.name for v in model.data_vars}
    values = [model.rvs_to_values[rv] for rv in observed_rvs(model)]
    return {data[v] for v in ancestors(values) if v in data}


def check_model(model: pm.Model) -> None:
    """Raise or warn about model features that amortized inference cannot handle.

    Raises
    ------
    ValueError
        For discrete free variables, Flat/HalfFlat priors and models without observed data.
    """
    if not observed_rvs(model):
        raise ValueError(
            "The model has no observed random variable, so there is no data to condition on. "
            "Give the likelihood an `observed=` argument (any placeholder array of the right "
            "shape will do: pymc-abi simulates the data)."
        )
    for rv in model.free_RVs:
        if isinstance(rv.owner.op, FlatRV | HalfFlatRV):
            kind = type(rv.owner.op).__name__.removesuffix("RV")
            raise ValueError(
                f"Free variable '{rv.name}' has a {kind} prior, which cannot be simulated: "
                "amortized inference learns from draws of the prior. Give it a proper prior "
                "(e.g. pm.Normal('...', 0, 10) or pm.HalfNormal('...', 10))."
            )
        if rv.dtype.startswith(("int", "uint", "bool")):
            raise ValueError(
                f"Free variable '{rv.name}' is discrete ({rv.dtype}). Normalizing flows model "
                "continuous parameters only. Marginalize it out, e.g. with "
                f"`pymc_extras.marginalize(model, ['{rv.name}'])`, or make it continuous."
            )
    for rv in [*model.free_RVs, *observed_rvs(model)]:
        if _lacks_random(rv.owner.op):
            raise ValueError(
                f"'{rv.name}' is a CustomDist without a random function, so the model cannot "
                "be simulated, and amortized inference learns from simulations. Give it "
                f"random=... (a function drawing '{rv.name}' from its parameters), or build it "
                "from other distributions with dist=...."
            )
    if model.potentials:
        names = ", ".join(repr(p.name) for p in model.potentials)
        warnings.warn(
            f"The model has Potentials ({names}). Forward simulation ignores them, so the "
            "amortized posterior is learned without their terms. Write them as priors or "
            "likelihood terms if they matter, or correct the posterior with importance sampling.",
            PotentialIgnoredWarning,
            stacklevel=3,
        )


def _lacks_random(op) -> bool:
    """A CustomDist built with ``logp`` only: PyMC gives it a random method that raises."""
    if not isinstance(op, CustomDistRV):
        return False
    fn = getattr(op, "_random_fn", None)
    fn = getattr(fn, "__func__", fn)
    return fn is None or "default_not_implemented" in getattr(fn, "__qualname__", "")


class ModelInputs:
    """The ``pm.Data`` containers and shared dim lengths of a model, as explicit graph inputs.

    Parameters
    ----------
    model
        The PyMC model.
    varying_parameter_dims : iterable of str, optional
        Dims of free variables that may change length (the group dim of a two-level
        amortizer); other dims of free variables are fixed by the parameter layout.
    """

    def __init__(self, model: pm.Model, varying_parameter_dims=()):
        self.model = model
        self.varying_parameter_dims = frozenset(varying_parameter_dims)
        self.data_vars: dict[str, SharedVariable] = {v.name: v for v in model.data_vars}
        self.dim_vars: dict[str, SharedVariable] = {
            name: length
            for name, length in model.dim_lengths.items()
            if isinstance(length, SharedVariable)
        }
        self.dim_inputs = {name: pt.scalar(f"{name}_len", dtype="int64") for name in self.dim_vars}
        self.parameter_dims = {
            dim
            for rv in model.free_RVs
            for dim in model.named_vars_to_dims.get(rv.name, ()) or ()
            if dim is not None
        }

    def data_input(self, name: str, batched: bool) -> Variable:
        var = self.data_vars[name]
        ndim = var.ndim + int(batched)
        return pt.tensor(name, dtype=var.dtype, shape=(None,) * ndim)

    def replacements(self, batched: frozenset[str] = frozenset()):
        """Map the model's shared variables to fresh inputs. Returns ``(replace, inputs)``."""
        replace: dict[Variable, Variable] = {}
        inputs: list[Variable] = []
        for name, var in self.dim_vars.items():
            replace[var] = self.dim_inputs[name]
            inputs.append(self.dim_inputs[name])
        for name, var in self.data_vars.items():
            new = self.data_input(name, name in batched)
            replace[var] = new
            inputs.append(new)
        return replace, inputs

    def resolve(
        self,
        n: int | None,
        data: Mapping[str, np.ndarray] | None,
        dim_lengths: Mapping[str, int] | None,
        *,
        allow_parameter_change: bool = False,
    ) -> tuple[frozenset[str], list[np.ndarray]]:
        """Check user data and dim lengths; return the batched names and the input values.

        ``n`` is the batch size a per-dataset array must lead with (``None`` disallows it).
        """
        data = dict(data or {})
        dim_lengths = dict(dim_lengths or {})
        self._check_names(data, dim_lengths)
        batched = set()
        values: dict[str, np.ndarray] = {}
        implied: dict[str, tuple[int, str]] = {}
        for name, value in data.items():
            var = self.data_vars[name]
            value = np.asarray(value)
            if value.ndim == var.ndim + 1 and n is not None:
                if value.shape[0] != n:
                    raise ValueError(
                        f"Data '{name}' has a leading batch axis of length {value.shape[0]}, "
                        f"but {n} simulations were asked for. Give one array per simulation "
                        "or one array for all of them."
                    )
                batched.add(name)
            elif value.ndim != var.ndim:
                extra = " (or one per simulation, with a leading batch axis)" if n else ""
                raise ValueError(
                    f"Data '{name}' must have {var.ndim} dimensions{extra}; got shape "
                    f"{value.shape}."
                )
            # aligned: PyTensor's C code refuses arrays that are not (Dask unpickles such)
            values[name] = np.require(_cast(name, value, var.dtype), requirements="A")
            core_shape = value.shape[1:] if name in batched else value.shape
            for axis, dim in enumerate(self.model.named_vars_to_dims.get(name, ()) or ()):
                if dim in self.dim_vars:
                    length = core_shape[axis]
                    if dim in implied and implied[dim][0] != length:
                        raise ValueError(
                            f"Data '{name}' gives dim '{dim}' length {length}, but data "
                            f"'{implied[dim][1]}' gives it length {implied[dim][0]}."
                        )
                    implied[dim] = (length, name)
        for dim, (length, name) in implied.items():
            if dim in dim_lengths and int(dim_lengths[dim]) != length:
                raise ValueError(
                    f"dim_lengths['{dim}'] = {dim_lengths[dim]} contradicts data '{name}', "
                    f"whose '{dim}' axis has length {length}."
                )
            if dim not in dim_lengths and length != int(self.dim_vars[dim].get_value()):
                dim_lengths[dim] = length

        lengths = []
        for dim, var in self.dim_vars.items():
            length = int(dim_lengths.get(dim, var.get_value()))
            if length < 0:
                raise ValueError(f"dim_lengths['{dim}'] must be non-negative, got {length}.")
            if (
                not allow_parameter_change
                and dim in self.parameter_dims
                and dim not in self.varying_parameter_dims
                and length != int(var.get_value())
            ):
                raise ValueError(
                    f"dim '{dim}' is a dimension of a free variable; the parameter space has a "
                    "fixed size, so only dims of observed variables and data may vary. Change "
                    "the model's coords to simulate another number of parameters."
                )
            lengths.append(np.asarray(length, dtype="int64"))
        data_values = [
            values[name] if name in values else var.get_value(borrow=True)
            for name, var in self.data_vars.items()
        ]
        return frozenset(batched), lengths + data_values

    def _check_names(self, data: Mapping, dim_lengths: Mapping) -> None:
        """Refuse names that are not ``pm.Data`` containers, or not dims whose length can
        be set (a dim that follows a container's shape is set through the container)."""
        for name in data:
            if name not in self.data_vars:
                known = ", ".join(sorted(self.data_vars)) or "none"
                raise ValueError(
                    f"'{name}' is not a pm.Data container of the model (containers: {known})."
                )
        for name in dim_lengths:
            if name not in self.model.dim_lengths:
                known = ", ".join(sorted(self.model.dim_lengths)) or "none"
                raise ValueError(f"'{name}' is not a dim of the model (dims: {known}).")
            if name not in self.dim_vars:
                raise ValueError(
                    f"The length of dim '{name}' follows the shape of a pm.Data container; "
                    "pass new data with `data={...}` instead of `dim_lengths`."
                )


def _cast(name: str, value: np.ndarray, dtype: str) -> np.ndarray:
    if np.dtype(dtype).kind in "iub" and value.dtype.kind == "f":
        if not np.all(np.isfinite(value)) or np.any(value != np.round(value)):
            raise ValueError(f"Data '{name}' must hold integers ({dtype}); got non-integer values.")
    return value.astype(dtype, copy=False)


def fingerprint(model: pm.Model) -> str:
    """A hash of the model's structure: variables, distributions, shapes and transforms."""
    point = model.initial_point()
    desc = {
        "free": [
            (
                rv.name,
                type(rv.owner.op).__name__,
                type(model.rvs_to_transforms.get(rv)).__name__,
                list(point[model.rvs_to_values[rv].name].shape),
            )
            for rv in model.free_RVs
        ],
        "observed": [(rv.name, type(rv.owner.op).__name__, rv.ndim) for rv in observed_rvs(model)],
        "deterministics": [d.name for d in model.deterministics],
        "data": [d.name for d in model.data_vars],
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def check_imputation(model) -> None:
    """Refuse models in which PyMC imputes missing observations as free variables."""
    observed = {rv.name for rv in observed_rvs(model)}
    for rv in model.free_RVs:
        base = rv.name.removesuffix("_unobserved")
        if base != rv.name and f"{base}_observed" in observed:
            raise ValueError(
                f"The observed data of '{base}' hold NaN, so PyMC imputes them as the free "
                f"variable '{rv.name}': the amortizer would learn missing data as parameters. "
                "Give complete placeholder data (any values of the right shape: pymc-abi "
                "simulates the data) and drop or impute missing values before sampling."
            )
