"""What one dataset is: the data description shared by training, sampling and diagnostics.

A :class:`DataSpec` says which arrays make one dataset of a model (its observed variables
and the covariates drawn per dataset), which dims vary in length and over what range, and
which arrays feed which summary network (:class:`SummaryInput`). It is the one path for
the three things everything else needs:

* **check** a user's dataset(s): :meth:`DataSpec.datasets` (names the variable at fault);
* **simulate** a batch of datasets with their true parameters: :meth:`DataSpec.simulate`;
* **assemble** what the networks see: :meth:`DataSpec.network_inputs` (numpy, float32).

This module speaks numpy; the amortizer turns its arrays into torch tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pymc as pm
from pymc.pytensorf import extract_obs_data

from pymc_abi.data._dataset_checks import check_shape, check_values, split_datasets
from pymc_abi.data.summary_inputs import (
    SEQUENCE_KINDS,
    Planner,
    SummaryInput,
    check_covariates,
    dim_ranges,
)
from pymc_abi.model._model import observed_containers, observed_rvs
from pymc_abi.model._signature import model_signature
from pymc_abi.model.simulator import ModelSimulator

__all__ = ["SEQUENCE_KINDS", "DataSpec", "Simulation", "SummaryInput"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Simulation:
    """A batch of simulated datasets with their true parameters.

    Attributes
    ----------
    values : dict of str to ndarray
        Every free variable, deterministic and observed variable, and the covariates,
        each with leading axis ``n``.
    z : ndarray, shape (n, D)
        The free variables, flat and unconstrained.
    lengths : dict of str to int
        The lengths of the varying dims in this batch.
    finite : ndarray of bool, shape (n,)
        Simulations the networks can take: finite in float32, the precision they see.
    """

    values: dict[str, np.ndarray]
    z: np.ndarray
    lengths: dict[str, int]
    finite: np.ndarray

    @property
    def dropped(self) -> int:
        """Simulations that are not finite in float32."""
        return int(len(self.finite) - self.finite.sum())

    def finite_only(self) -> Simulation:
        """The same batch without the simulations that are not finite."""
        if self.finite.all():
            return self
        keep = self.finite
        values = {k: v[keep] for k, v in self.values.items()}
        return Simulation(values, self.z[keep], self.lengths, keep[keep])


def float32_finite(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (B, P) that are finite once cast to float32."""
    x = np.asarray(x)
    if x.dtype.kind not in "fc":
        return np.ones(len(x), dtype=bool)
    with np.errstate(invalid="ignore"):
        return (np.abs(x) <= _FLOAT32_MAX).all(axis=1)  # NaN compares False


@dataclass(frozen=True)
class DataSpec:
    """The description of one dataset of a model, as an amortizer conditions on it.

    Build it with :meth:`from_model`; :class:`~pymc_abi.Amortizer` holds one as
    ``amortizer.data_spec``.

    Attributes
    ----------
    simulator : ModelSimulator
        Simulates the model (and holds it: ``simulator.model``).
    observed : tuple of str
        The observed variables.
    covariates : mapping of str to callable or None
        ``pm.Data`` containers drawn per dataset, by ``fn(rng, n, dim_lengths)``
        (``None`` where the function is not known, e.g. after loading).
    dim_ranges : mapping of str to (int, int)
        Dims whose length varies, with the inclusive range trained on.
    time_dim : str or None
        A dim that is time.
    inputs : tuple of SummaryInput
        What feeds each summary network.
    shapes : mapping of str to tuple
        The shape of each observed variable and covariate at the model's sizes.
    """

    simulator: ModelSimulator
    observed: tuple[str, ...]
    covariates: Mapping[str, Callable | None]
    dim_ranges: Mapping[str, tuple[int, int]]
    time_dim: str | None
    inputs: tuple[SummaryInput, ...]
    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str] = field(repr=False)
    fixed_data: Mapping[str, np.ndarray] = field(repr=False)
    containers: frozenset[str] = field(repr=False)
    #: ``fn(values) -> dict``: the affine maps of a batch of datasets (the flow's
    #: preconditioner, :mod:`pymc_abi.model.preconditioner`), passed to the networks beside the
    #: summary inputs; ``None`` without one
    preconditioner: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]] | None = field(
        default=None, repr=False, compare=False
    )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(
        cls,
        simulator: ModelSimulator,
        *,
        dim_lengths: Mapping[str, int | tuple[int, int]] | None = None,
        covariates: Mapping[str, Callable | None] | None = None,
        time_dim: str | None = None,
        summary_kinds: str | Mapping[str, str] | None = None,
    ) -> DataSpec:
        """Describe the datasets of ``simulator.model``.

        Parameters
        ----------
        simulator : ModelSimulator
        dim_lengths : dict, optional
            ``{"obs": (10, 200)}`` varies the length of dim ``obs`` in that range; an int
            fixes it.
        covariates : dict, optional
            ``{"X": fn}``: ``pm.Data`` drawn per dataset by ``fn(rng, n, dim_lengths)``.
        time_dim : str, optional
            A dim that is time.
        summary_kinds : str or dict, optional
            One summary kind for every input, or one per input name (``"custom"`` for a
            module the caller supplies); the rest get the default kind.

        Examples
        --------
        >>> import numpy as np, pymc as pm, pymc_abi as abi
        >>> from pymc_abi.data.spec import DataSpec
        >>> with pm.Model(coords={"obs": range(20)}) as model:
        ...     mu = pm.Normal("mu")
        ...     y = pm.Normal("y", mu, 1, observed=np.zeros(20), dims="obs")
        >>> spec = DataSpec.from_model(abi.ModelSimulator(model), dim_lengths={"obs": (5, 50)})
        >>> [(i.name, i.kind, i.varying) for i in spec.inputs]
        [('y', 'deepset', 'obs')]
        """
        model = simulator.model
        if time_dim is not None and time_dim not in model.dim_lengths:
            raise ValueError(
                f"time_dim={time_dim!r} is not a dim of the model (dims: "
                f"{sorted(model.dim_lengths) or 'none'})."
            )
        ranges = dim_ranges(simulator, dim_lengths)
        covariates = check_covariates(model, covariates, ranges)
        observed = {
            rv.name: np.asarray(extract_obs_data(model.rvs_to_values[rv]))
            for rv in observed_rvs(model)
        }
        containers = frozenset(observed_containers(model))
        values = {v.name: v.get_value() for v in model.data_vars}
        shapes = {
            n: tuple(np.shape(observed[n] if n in observed else values[n]))
            for n in [*simulator.observed_names, *covariates]
        }
        plan = Planner(model, simulator.observed_names, ranges, time_dim, observed, values)
        inputs = plan.inputs(covariates, summary_kinds)
        return cls(
            simulator=simulator,
            observed=tuple(simulator.observed_names),
            covariates=dict(covariates),
            dim_ranges=dict(ranges),
            time_dim=time_dim,
            inputs=tuple(inputs),
            shapes=dict(shapes),
            dtypes=dict(
                {
                    **{rv.name: rv.dtype for rv in observed_rvs(model)},
                    **{n: model[n].dtype for n in covariates},
                }
            ),
            # pm.Data the networks are trained with as they are: a change is refused
            fixed_data=dict(
                {
                    v.name: np.array(v.get_value(), copy=True)
                    for v in model.data_vars
                    if v.name not in covariates and v.name not in containers
                }
            ),
            containers=containers,
        )

    @property
    def model(self) -> pm.Model:
        return self.simulator.model

    @property
    def variables(self) -> list[str]:
        """Every array of one dataset the networks see, in input order."""
        return [v for inp in self.inputs for v in inp.variables]

    def signature(self) -> dict:
        """The model's signature as the networks see it (covariates and varying dims are
        inputs, not part of the model)."""
        return model_signature(self.model, covariates=self.covariates, varying_dims=self.dim_ranges)

    def dims(self, name: str) -> tuple:
        return tuple(self.model.named_vars_to_dims.get(name, ()) or ())

    # ------------------------------------------------------------------ (a) check
    def datasets(self, observed=None, data=None) -> tuple[list[dict[str, np.ndarray]], bool]:
        """Check one dataset or a list of them.

        Parameters
        ----------
        observed : dict, list of dict or None
            Observed variables (and covariates) per dataset; ``None`` is the model's own.
        data : dict or list of dict, optional
            Covariates, for every dataset or one per dataset.

        Returns
        -------
        datasets : list of dict
            Every observed variable and covariate of each dataset, as arrays.
        single : bool
            Whether one dataset was given (not a list).
        """
        return split_datasets(observed, data, self.dataset)

    def dataset(self, observed=None, data=None) -> dict[str, np.ndarray]:
        """One dataset, checked: every observed variable and every covariate."""
        for label, part in (("observed", observed), ("data", data)):
            if part is not None and not isinstance(part, Mapping):
                raise TypeError(
                    f"Each dataset's {label} must be a dict of variable names to arrays; got "
                    f"{type(part).__name__}."
                )
        both = sorted(set(data or {}) & set(observed or {}))
        if both:
            raise ValueError(
                f"{both} given both in observed and in data: give each variable once "
                "(observed variables in observed, covariates in either)."
            )
        given = {**(data or {}), **(observed or {})}
        names = list(self.observed)
        fixed = {v.name for v in self.model.data_vars} - set(self.covariates)
        unknown = set(given) - set(names) - set(self.covariates)
        if unknown & fixed:
            raise ValueError(
                f"{sorted(unknown & fixed)} were fixed while training, so the amortizer does "
                "not condition on them; train with covariates={name: fn} to vary them per dataset."
            )
        if unknown:
            raise ValueError(
                f"{sorted(unknown)} are not observed variables or covariates of the model "
                f"(observed: {names}; covariates: {list(self.covariates)})."
            )
        if observed is not None:
            missing = [n for n in names if n not in observed]
            if missing:
                raise ValueError(
                    f"The dataset lacks observed variable(s) {missing}: give every observed "
                    f"variable the amortizer conditions on ({names})."
                )
        self.check_fixed_data()
        out = {}
        model_obs = self.model_observed() if observed is None else {}
        for name in [*names, *self.covariates]:
            if name in given:
                value = given[name]
            elif name in model_obs:
                value = model_obs[name]
            else:  # a covariate the dataset does not give: the model's current value
                value = self.model[name].get_value()
            out[name] = check_values(
                name, value, self.dtypes.get(name), self.dims(name), self.model.coords
            )
        lengths: dict[str, tuple[int, str]] = {}
        taken = [n for n in self.covariates if n not in given and observed is not None]
        try:
            for inp in self.inputs:
                rng = self.dim_ranges.get(inp.varying) if inp.varying else None
                for name in inp.variables:
                    check_shape(name, out[name], self.shapes[name], inp.varying, rng, lengths)
        except ValueError as err:
            if not taken:
                raise
            raise ValueError(
                f"{err} The covariate(s) {taken} were not given with the data, so the "
                "model's current values were used: give each dataset's own."
            ) from None
        return out

    def check_fixed_data(self) -> None:
        """Refuse pm.Data trained with fixed values that changed since (pm.set_data)."""
        for name, trained in self.fixed_data.items():
            current = self.model[name].get_value()
            if np.shape(current) != np.shape(trained) or not np.array_equal(current, trained):
                raise ValueError(
                    f"pm.Data '{name}' has changed since the amortizer was trained (pm.set_data?), "
                    f"but the amortizer learned the posterior for its training value only. "
                    f"Restore it, or train with covariates={{'{name}': fn}} to condition on it per "
                    "dataset."
                )

    def model_observed(self) -> dict[str, np.ndarray]:
        """The model's current observed values, through whatever expression PyMC built."""
        return {
            rv.name: np.asarray(extract_obs_data(self.model.rvs_to_values[rv]))
            for rv in observed_rvs(self.model)
        }

    def dim_lengths_of(self, dataset: Mapping[str, np.ndarray]) -> dict[str, int]:
        """The lengths of the varying dims in a (checked) dataset."""
        return {
            inp.varying: int(np.shape(dataset[inp.name])[0]) for inp in self.inputs if inp.varying
        }

    def observed_of(self, dataset: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The observed variables of a dataset."""
        return {n: dataset[n] for n in self.observed}

    def covariates_of(self, dataset: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The covariates of a dataset, or ``None`` when there are none."""
        return {c: dataset[c] for c in self.covariates} or None

    # ------------------------------------------------------------------ (b) simulate
    def draw_lengths(self, rng: np.random.Generator) -> dict[str, int]:
        """Lengths of the varying dims, uniform in their ranges."""
        return {d: int(rng.integers(lo, hi + 1)) for d, (lo, hi) in self.dim_ranges.items()}

    def draw_covariates(self, rng, n: int, lengths: Mapping[str, int], functions=None):
        """``n`` draws of every covariate (with ``functions``, of those only), checked."""
        out = {}
        for name, fn in (self.covariates if functions is None else functions).items():
            if fn is None:
                raise ValueError(
                    f"Training needs the function that draws covariate '{name}': pass "
                    f"covariates={{'{name}': fn}} (functions are not saved with an amortizer)."
                )
            value = np.asarray(fn(rng, n, dict(lengths)))
            expected = (n, *self.covariate_shape(name, lengths))
            if value.shape != expected:
                raise ValueError(
                    f"covariates['{name}'] returned shape {value.shape} for dim lengths "
                    f"{dict(lengths) or 'of the model'}; it must return {n} values of "
                    f"'{name}' stacked along a leading axis, shape {expected}."
                )
            out[name] = value
        return out

    def covariate_shape(self, name: str, lengths: Mapping[str, int]) -> tuple[int, ...]:
        """One dataset's covariate shape: the model's, with varying dims at ``lengths``."""
        shape = list(np.shape(self.model[name].get_value()))
        for axis, dim in enumerate(self.dims(name)):
            if dim in lengths:
                shape[axis] = int(lengths[dim])
        return tuple(shape)

    def simulate(
        self,
        n: int,
        seed: int,
        *,
        dim_lengths: Mapping[str, int] | None = None,
        covariates: Mapping[str, np.ndarray] | None = None,
    ) -> Simulation:
        """Simulate ``n`` datasets with their true parameters.

        Parameters
        ----------
        n : int
        seed : int
            Seeds the lengths, the covariates and the simulator.
        dim_lengths : dict, optional
            Lengths of varying dims; those not given are drawn from their ranges.
        covariates : dict, optional
            Covariate values (leading axis ``n``) to use instead of drawing them.

        Returns
        -------
        Simulation
            All ``n`` simulations, with the mask of those finite in float32.
        """
        rng = np.random.default_rng(seed)
        given = dict(dim_lengths or {})
        if len(given) < len(self.dim_ranges):
            drawn = {d: r for d, r in self.dim_ranges.items() if d not in given}
            given = {**{d: int(rng.integers(lo, hi + 1)) for d, (lo, hi) in drawn.items()}, **given}
        lengths = {d: int(v) for d, v in given.items()}
        if covariates is None:
            covariates = self.draw_covariates(rng, n, lengths)
        sims = self.simulator.sample(
            n, random_seed=seed, dim_lengths=lengths or None, data=dict(covariates) or None
        )
        sims.update(covariates)
        return self._simulation(n, sims, lengths)

    def _simulation(self, n: int, sims: dict, lengths: dict[str, int]) -> Simulation:
        """Simulated values with their unconstrained parameters and the float32-finite
        mask (a simulation is kept only where its parameters and data all are)."""
        parameters = self.simulator.parameters
        if not parameters.ndim:
            z = np.zeros((n, 0))
        elif parameters.leading:  # per-group parameters at this design's number of groups
            z = parameters.to_unconstrained(sims, dim_lengths=lengths)
        else:
            z = parameters.to_unconstrained(sims)
        finite = float32_finite(z)
        for name in self.variables:
            finite &= float32_finite(np.asarray(sims[name]).reshape(len(z), -1))
        return Simulation(sims, z, lengths, finite)

    def pilot(self) -> dict[str, np.ndarray]:
        """One simulation at the smallest sizes: the shapes the networks are built for."""
        lengths = {d: r[0] for d, r in self.dim_ranges.items()}
        data = self.pilot_covariates(1, lengths)
        sims = self.simulator.sample(1, random_seed=0, dim_lengths=lengths, data=data)
        sims.update(data)
        return sims

    def pilot_covariates(
        self, n: int, lengths: Mapping[str, int], skip: Sequence[str] = ()
    ) -> dict[str, np.ndarray]:
        """Covariates for ``n`` pilot simulations (only their shapes matter): drawn where a
        function is known, else the model's own value (an amortizer loaded without the
        function), its varying first dim cut or repeated to the pilot length."""
        drawable = {
            name: fn for name, fn in self.covariates.items() if fn is not None and name not in skip
        }
        data = self.draw_covariates(np.random.default_rng(0), n, lengths, drawable)
        for name in self.covariates.keys() - drawable.keys() - set(skip):
            value = np.asarray(self.model[name].get_value())
            dims = self.dims(name)
            if dims and dims[0] in lengths:
                value = np.resize(value, (lengths[dims[0]], *value.shape[1:]))
            data[name] = np.repeat(value[None], n, axis=0)
        return data

    # ------------------------------------------------------------------ (c) assemble
    def network_inputs(self, values: Mapping[str, np.ndarray], batch: int) -> dict[str, Any]:
        """What the summary networks see, per input: float32 ``[B, N, F]`` or ``[B, P]``;
        with a :attr:`preconditioner`, also each dataset's affine map (float64)."""
        inputs = {inp.name: inp.assemble(values, batch) for inp in self.inputs}
        if self.preconditioner is not None:
            inputs.update(self.preconditioner(values))
        return inputs

    def stack(self, datasets: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Datasets of equal shapes stacked along a new leading axis."""
        return {n: np.stack([d[n] for d in datasets]) for n in self.variables}

    def groups(self, datasets: Sequence[Mapping], size: int) -> list[list[int]]:
        """Datasets of equal shapes, in groups of at most ``size``, to be passed together."""
        groups: dict[tuple, list[int]] = {}
        for i, d in enumerate(datasets):
            key = tuple(np.shape(d[n]) for n in self.variables)
            groups.setdefault(key, []).append(i)
        return [g[j : j + size] for g in groups.values() for j in range(0, len(g), size)]

    def unstack(self, values: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """A batch with leading axis ``K`` (as the simulator returns it) as ``K`` datasets."""
        missing = [n for n in self.variables if n not in values]
        if missing:
            raise ValueError(f"simulations lack {missing}.")
        arrays = {n: np.asarray(values[n]) for n in self.variables}
        leading = {n: a.shape[0] if a.ndim else None for n, a in arrays.items()}
        if None in leading.values() or len(set(leading.values())) != 1:
            raise ValueError(
                f"simulations need one leading batch axis on every variable (K datasets), "
                f"got shapes { ({n: a.shape for n, a in arrays.items()}) }; for one dataset, "
                "add the axis: {name: value[None]}."
            )
        return [{n: a[i] for n, a in arrays.items()} for i in range(next(iter(leading.values())))]
