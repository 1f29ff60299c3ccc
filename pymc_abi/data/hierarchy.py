"""The two-level structure of a multilevel PyMC model, found in its graph.

A multilevel model factors as

.. math::

    p(\\theta_g, \\theta_1, \\dots, \\theta_J \\mid y)
    = p(\\theta_g \\mid y) \\prod_{j=1}^J p(\\theta_j \\mid \\theta_g, y_j)

when its group-level ("local") parameters :math:`\\theta_j` are conditionally independent
across groups given the global ones :math:`\\theta_g`, and each observation belongs to one
group. In a PyMC model this is written down: the group dim marks the local variables, the
other free variables are global, and the observations of group ``j`` are either the
``j``-th entry along the group dim or the rows whose integer index (a ``pm.Data``) is
``j``. :func:`find_hierarchy` reads it off the graph; :class:`Hierarchy` draws training
designs (numbers of groups and of observations per group), splits the flat parameter
vector into global and per-group parts, and assembles what the two-level networks see.

This module speaks numpy; :mod:`pymc_abi.networks.two_level` holds the torch side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pymc as pm
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.traversal import ancestors

from pymc_abi.core._arguments import int_range
from pymc_abi.core.errors import NotHierarchicalError
from pymc_abi.data.spec import DataSpec, Simulation
from pymc_abi.model._model import observed_rvs

__all__ = ["GroupedDataSpec", "Hierarchy", "NotHierarchical", "find_hierarchy"]


#: the old name of :class:`pymc_abi.NotHierarchicalError`
NotHierarchical = NotHierarchicalError


def _dims(model, name) -> tuple:
    return tuple(model.named_vars_to_dims.get(name) or ())


def candidate_group_dims(model) -> list[str]:
    """Mutable dims that lead the dims of some free variable."""
    out = []
    for rv in model.free_RVs:
        dims = _dims(model, rv.name)
        if dims and isinstance(model.dim_lengths.get(dims[0]), SharedVariable):
            if dims[0] not in out:
                out.append(dims[0])
    return out


def find_hierarchy(
    model: pm.Model,
    groups: str,
    covariates: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The two-level structure of ``model`` along dim ``groups`` (``"auto"`` finds it).

    Returns
    -------
    dict
        ``group_dim``, ``local`` and ``global_`` (free variable names), ``index`` (the
        ``pm.Data`` of group indices or ``None``), ``row_dim``, ``row_names`` and
        ``group_names`` (observed variables and covariates per row and per group).

    Raises
    ------
    NotHierarchicalError
        Saying why the model does not factor.
    """
    covariates = dict(covariates or {})
    if groups == "auto":
        found = candidate_group_dims(model)
        if len(found) != 1:
            raise NotHierarchicalError(
                "no dim of the free variables looks like a group dim"
                if not found
                else f"several dims could be the group dim ({found}); pass groups='<dim>'"
            )
        groups = found[0]
    if groups not in model.dim_lengths:
        raise NotHierarchicalError(
            f"groups={groups!r} is not a dim of the model (dims: {sorted(model.dim_lengths)})"
        )
    if not isinstance(model.dim_lengths[groups], SharedVariable):
        raise NotHierarchicalError(
            f"the length of dim {groups!r} follows the shape of a pm.Data container or is fixed; "
            f"give it as a coord (pm.Model(coords={{{groups!r}: ...}})) so that it can vary"
        )
    local, global_ = [], []
    for rv in model.free_RVs:
        dims = _dims(model, rv.name)
        if groups not in dims:
            global_.append(rv.name)
            continue
        if dims[0] != groups:
            raise NotHierarchicalError(
                f"'{rv.name}' has dims {dims}: the group dim must be its first dim"
            )
        if rv.ndim - rv.owner.op.ndim_supp < 1:
            raise NotHierarchicalError(
                f"'{rv.name}' ({type(rv.owner.op).__name__}) couples the groups in one "
                "multivariate draw, so they are not conditionally independent"
            )
        local.append(rv.name)
    if not local:
        raise NotHierarchicalError(f"no free variable has the dim {groups!r}")
    if not global_:
        raise NotHierarchicalError(
            "every free variable is per group: there are no global parameters to pool the "
            "groups (fit the groups separately)"
        )
    local_rvs = [model[n] for n in local]
    index, row_dim, row_names, group_names = None, None, [], []
    data = {v.name: v for v in model.data_vars}
    for rv in observed_rvs(model):
        dims = _dims(model, rv.name)
        if not dims:
            raise NotHierarchicalError(
                f"observed '{rv.name}' has no dims, so its values cannot be assigned to groups"
            )
        if dims[0] == groups:
            group_names.append(rv.name)
            continue
        if not any(a in local_rvs for a in ancestors([rv])):
            raise NotHierarchicalError(
                f"observed '{rv.name}' does not depend on the per-group variables"
            )
        found = [
            name
            for name, var in data.items()
            if var.ndim == 1
            and var.dtype.startswith(("int", "uint"))
            and _dims(model, name)[:1] == dims[:1]
            and var in ancestors([rv])
        ]
        if len(found) != 1:
            raise NotHierarchicalError(
                f"observed '{rv.name}' is neither along dim {groups!r} nor indexed by one "
                f"integer pm.Data along its dim {dims[0]!r} (found {found or 'none'})"
            )
        if index not in (None, found[0]) or row_dim not in (None, dims[0]):
            raise NotHierarchicalError(
                "the observed variables are indexed by different group indices or dims"
            )
        index, row_dim = found[0], dims[0]
        row_names.append(rv.name)
    for name in data:
        if name == index:
            continue
        dims = _dims(model, name)
        if dims[:1] == (groups,):
            group_names.append(name)
        elif row_dim is not None and dims[:1] == (row_dim,):
            row_names.append(name)
    for name in [*row_names, *group_names]:
        if name in data and name not in covariates:
            raise NotHierarchicalError(
                f"pm.Data '{name}' is per {'group' if name in group_names else 'row'}: give "
                f"covariates={{'{name}': fn}} to draw it for any number of groups"
            )
    return dict(
        group_dim=groups,
        local=local,
        global_=global_,
        index=index,
        row_dim=row_dim,
        row_names=row_names,
        group_names=group_names,
    )


SizesArg = tuple[int, int] | Callable[[np.random.Generator, int], np.ndarray]


@dataclass(frozen=True)
class Hierarchy:
    """A model's two-level structure and the training designs.

    Attributes
    ----------
    group_dim : str
        The dim of the groups.
    local_values, global_values : tuple of str
        Unconstrained value variables (the flat layout of :class:`ParameterSpace`) per group
        and global.
    index : str or None
        The ``pm.Data`` that assigns rows to groups (``None`` when every observed variable
        has the group dim first).
    row_dim : str or None
        The dim of the rows.
    row_names, group_names : tuple of str
        Observed variables and covariates per row and per group.
    n_groups : (int, int)
        The range of the number of groups trained on.
    group_sizes : (int, int) or callable
        Observations per group: a range (uniform) or ``fn(rng, n_groups)`` returning the
        sizes.
    """

    group_dim: str
    local_values: tuple[str, ...]
    global_values: tuple[str, ...]
    index: str | None
    row_dim: str | None
    row_names: tuple[str, ...]
    group_names: tuple[str, ...]
    n_groups: tuple[int, int]
    group_sizes: Any
    value_names: tuple[str, ...]
    shapes: Mapping[str, tuple[int, ...]]

    @classmethod
    def from_model(
        cls,
        parameters,
        found: Mapping[str, Any],
        n_groups: tuple[int, int],
        group_sizes: SizesArg | None,
    ) -> Hierarchy:
        model = parameters.model
        to_value = {rv.name: model.rvs_to_values[rv].name for rv in model.free_RVs}
        if found["row_dim"] is not None and group_sizes is None:
            counts = np.bincount(np.asarray(model[found["index"]].get_value()))
            group_sizes = (max(1, int(counts.min())), int(counts.max()))
        if group_sizes is not None and not callable(group_sizes):
            if np.ndim(group_sizes) == 0:
                raise ValueError(
                    f"group_sizes must be a range (low, high) of observations per group or a "
                    f"function fn(rng, n_groups), got {group_sizes!r}."
                )
            group_sizes = int_range("group_sizes", group_sizes, low=0)
        return cls(
            group_dim=found["group_dim"],
            local_values=tuple(to_value[n] for n in found["local"]),
            global_values=tuple(to_value[n] for n in found["global_"]),
            index=found["index"],
            row_dim=found["row_dim"],
            row_names=tuple(found["row_names"]),
            group_names=tuple(found["group_names"]),
            n_groups=tuple(int(v) for v in n_groups),
            group_sizes=group_sizes,
            value_names=tuple(parameters.value_names),
            shapes=dict(parameters.shapes),
        )

    # ------------------------------------------------------------------ layout
    def _size(self, name: str) -> int:
        """Per-group size of a local value, or the size of a global one."""
        shape = self.shapes[name]
        return int(np.prod(shape[1:] if name in self.local_values else shape, dtype=int))

    @property
    def global_ndim(self) -> int:
        return sum(self._size(n) for n in self.global_values)

    @property
    def local_ndim(self) -> int:
        return sum(self._size(n) for n in self.local_values)

    def split(self, z: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
        """Flat draws ``(B, D)`` as global ``(B, Dg)`` and per-group ``(B, J, Dl)`` parts."""
        b = z.shape[0]
        glob, loc, start = [], [], 0
        for name in self.value_names:
            size = self._size(name)
            if name in self.local_values:
                loc.append(z[:, start : start + n_groups * size].reshape(b, n_groups, size))
                start += n_groups * size
            else:
                glob.append(z[:, start : start + size])
                start += size
        if start != z.shape[1]:
            raise ValueError(f"draws of {z.shape[1]} coordinates do not fit {n_groups} groups.")
        return np.concatenate(glob, axis=1), np.concatenate(loc, axis=2)

    def join(self, z_global: np.ndarray, z_local: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`split`: flat draws ``(B, D)`` in the model's layout."""
        b, n_groups, _ = z_local.shape
        parts, g, lo = [], 0, 0
        for name in self.value_names:
            size = self._size(name)
            if name in self.local_values:
                parts.append(z_local[:, :, lo : lo + size].reshape(b, n_groups * size))
                lo += size
            else:
                parts.append(z_global[:, g : g + size])
                g += size
        return np.concatenate(parts, axis=1)

    # ------------------------------------------------------------------ designs
    def draw_design(self, rng: np.random.Generator, n_groups: int | None = None):
        """A design: the number of groups and, with rows, the group index of each row."""
        if n_groups is None:
            n_groups = int(rng.integers(self.n_groups[0], self.n_groups[1] + 1))
        if self.row_dim is None:
            return n_groups, None
        if callable(self.group_sizes):
            given = np.asarray(self.group_sizes(rng, n_groups))
            sizes = given.astype(int) if given.dtype.kind in "iuf" else np.array([-1])
            if (
                sizes.shape != (n_groups,)
                or np.any(sizes != given)  # 2.5 observations: refused, not truncated
                or (sizes < 0).any()
                or sizes.sum() < 1
            ):
                raise ValueError(
                    f"group_sizes returned {sizes!r}; it must return {n_groups} non-negative "
                    "group sizes (at least one observation in all)."
                )
        else:
            sizes = rng.integers(self.group_sizes[0], self.group_sizes[1] + 1, size=n_groups)
            if sizes.sum() == 0:
                sizes[0] = 1
        return n_groups, np.repeat(np.arange(n_groups), sizes)

    def lengths(self, n_groups: int, index: np.ndarray | None) -> dict[str, int]:
        out = {self.group_dim: int(n_groups)}
        if self.row_dim is not None:
            out[self.row_dim] = len(index)
        return out

    def n_groups_of(self, dataset: Mapping[str, np.ndarray]) -> int:
        """The number of groups of a (checked) dataset."""
        if self.group_names:
            return int(np.shape(dataset[self.group_names[0]])[0])
        index = np.asarray(dataset[self.index])
        return int(index.max()) + 1 if index.size else 0

    def check(self, dataset: Mapping[str, np.ndarray]) -> None:
        """Refuse group indices outside ``0 .. J - 1`` and a number of groups outside the
        range trained on."""
        n_groups = self.n_groups_of(dataset)
        if self.index is not None:
            index = np.asarray(dataset[self.index])
            if index.size and index.min() < 0:
                raise ValueError(f"'{self.index}' holds negative group indices.")
            if index.size and self.group_names and index.max() >= n_groups:
                raise ValueError(
                    f"'{self.index}' holds group index {int(index.max())}, but "
                    f"'{self.group_names[0]}' has {n_groups} groups."
                )
        # the number of groups before anything is sized by it (an index of 10**12 must not
        # allocate an array of that length)
        lo, hi = self.n_groups
        if not lo <= n_groups <= hi:
            raise ValueError(
                f"The dataset has {n_groups} groups along '{self.group_dim}', outside the range "
                f"[{lo}, {hi}] the amortizer was trained on. Train on a range that includes it "
                f"(dim_lengths={{'{self.group_dim}': (low, high)}})."
            )
        if self.index is not None and not callable(self.group_sizes):
            sizes = np.bincount(np.asarray(dataset[self.index]), minlength=n_groups)
            low, high = self.group_sizes
            outside = np.flatnonzero((sizes < low) | (sizes > high))
            if outside.size:
                j = int(outside[0])
                raise ValueError(
                    f"Group {j} of '{self.group_dim}' has {int(sizes[j])} observations "
                    f"({outside.size} group(s) outside the range), outside the range "
                    f"[{low}, {high}] the amortizer was trained on (group_sizes). Train on a "
                    "range that includes it."
                )

    # ------------------------------------------------------------------ network inputs
    def network_inputs(
        self, values: Mapping[str, np.ndarray], batch: int, n_groups: int, index
    ) -> dict[str, np.ndarray]:
        """What the two-level networks see, for ``batch`` datasets of one design.

        ``rows`` ``[B, N, F]`` (the observed values and covariates of each row), ``index``
        ``[N]`` (the group of each row), ``counts`` ``[J]``, ``groups`` ``[B, J, G]`` (the
        values per group), float32; the parts a model lacks are left out.
        """
        out: dict[str, np.ndarray] = {}
        if self.row_names:
            cols = [np.asarray(values[n]).reshape(batch, len(index), -1) for n in self.row_names]
            out["rows"] = np.concatenate(cols, axis=2).astype(np.float32)
            out["index"] = np.array(index, dtype=np.int64)  # a copy: torch wants it writable
            out["counts"] = np.bincount(index, minlength=n_groups).astype(np.float32)
        if self.group_names:
            cols = [np.asarray(values[n]).reshape(batch, n_groups, -1) for n in self.group_names]
            out["groups"] = np.concatenate(cols, axis=2).astype(np.float32)
        return out


@dataclass(frozen=True)
class GroupedDataSpec(DataSpec):
    """A :class:`DataSpec` whose datasets have any number of groups (two-level models).

    Datasets are checked as for a flat amortizer, and also for their group indices; their
    dim lengths include the number of groups; :meth:`simulate` draws a design (the number
    of groups, the observations per group) per call.
    """

    hierarchy: Hierarchy | None = None

    @classmethod
    def wrap(cls, spec: DataSpec, hierarchy: Hierarchy) -> GroupedDataSpec:
        fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(DataSpec)}
        return cls(**fields, hierarchy=hierarchy)

    def dataset(self, observed=None, data=None) -> dict[str, np.ndarray]:
        out = super().dataset(observed, data)
        self.hierarchy.check(out)
        return out

    def dim_lengths_of(self, dataset: Mapping[str, np.ndarray]) -> dict[str, int]:
        lengths = super().dim_lengths_of(dataset)
        lengths[self.hierarchy.group_dim] = self.hierarchy.n_groups_of(dataset)
        return lengths

    def design_of(self, dataset: Mapping[str, np.ndarray]):
        """``(n_groups, index)`` of a checked dataset."""
        h = self.hierarchy
        index = None if h.index is None else np.asarray(dataset[h.index], dtype=np.int64)
        return h.n_groups_of(dataset), index

    def simulate(
        self,
        n: int,
        seed: int,
        *,
        dim_lengths: Mapping[str, int] | None = None,
        covariates: Mapping[str, np.ndarray] | None = None,
        design: tuple[int, np.ndarray | None] | None = None,
    ) -> Simulation:
        """Simulate ``n`` datasets of one design, drawn from the training ranges (or with
        ``dim_lengths[group_dim]`` groups), with their true parameters.

        ``design = (n_groups, index)`` (see :meth:`Hierarchy.draw_design`) gives it."""
        h = self.hierarchy
        rng = np.random.default_rng(seed)
        if design is None:
            design = h.draw_design(rng, (dim_lengths or {}).get(h.group_dim))
        n_groups, index = design
        lengths = h.lengths(n_groups, index)
        drawn = {k: v for k, v in self.covariates.items() if k != h.index}
        if covariates is None:
            covariates = self.draw_covariates(rng, n, lengths, drawn)
        data = dict(covariates)
        if h.index is not None:
            data[h.index] = index  # one design for the whole batch
        sims = self.simulator.sample(n, random_seed=seed, dim_lengths=lengths, data=data)
        sims.update(covariates)
        if h.index is not None:
            sims[h.index] = np.broadcast_to(index, (n, len(index)))
        return self._simulation(n, sims, lengths)
