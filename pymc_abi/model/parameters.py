"""The flat unconstrained parameter space in which the flows live.

PyMC samples free variables on an unconstrained space defined by their value transforms
(``sigma`` is sampled as ``sigma_log__``, a Dirichlet weight vector as ``w_simplex__``).
:class:`ParameterSpace` lays those unconstrained values out as one flat vector per draw,
in the order of ``model.initial_point()``, and maps batches of such vectors back and forth:

.. math::

    \\theta_{\\text{constrained}} = T^{-1}(z), \\qquad
    \\log p_Z(z) = \\log p_\\Theta(T^{-1}(z)) + \\log \\left| \\det J_{T^{-1}}(z) \\right|

Every function is compiled once per kind of data input and works on a whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pytensor.graph.replace import graph_replace

from pymc_abi.model._compile import CompileCache, CompiledFunction, compile_batched
from pymc_abi.model._model import ModelInputs

__all__ = ["ParameterSpace"]


class ParameterSpace:
    """Flat unconstrained layout of a model's free random variables.

    Parameters
    ----------
    model
        A PyMC model; ``None`` takes the model from the context.
    varying_dims : iterable of str, optional
        Dims of free variables whose length may change (the group dim of a two-level
        amortizer): each must be the leading dim of the variables that have it. The flat
        layout then depends on the lengths (:meth:`ndim_for`); every method takes
        ``dim_lengths``. By default every free variable has a fixed size.

    Attributes
    ----------
    names : list of str
        A label for each flat coordinate, e.g. ``"sigma_log__"``, ``"beta[x1]"`` (the
        model's coordinate labels, as ArviZ shows them) or ``"beta[2]"`` (without coords).
    ndim : int
        Number of flat coordinates ``D``.
    value_names : list of str
        Names of the unconstrained value variables, in layout order.
    free_names, deterministic_names : list of str
        Model variables returned by :meth:`to_constrained`.

    Examples
    --------
    >>> import pymc as pm, pymc_abi as abi
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 1)
    ...     sigma = pm.HalfNormal("sigma", 1)
    ...     y = pm.Normal("y", mu, sigma, observed=[0.1, -0.3])
    >>> space = abi.ParameterSpace(model)
    >>> space.names
    ['mu', 'sigma_log__']
    >>> z = space.to_unconstrained({"mu": [0.5], "sigma": [2.0]})
    >>> space.to_constrained(z)["sigma"]
    array([2.])
    """

    def __init__(self, model: pm.Model | None = None, *, varying_dims=()):
        model = pm.modelcontext(model)
        self.model = model
        self.varying_dims = frozenset(varying_dims)
        self._inputs = ModelInputs(model, self.varying_dims)
        point = model.initial_point()
        values = {v.name: v for v in model.value_vars}
        self.value_names = list(point)
        self._value_vars = [values[name] for name in self.value_names]
        self._free_rvs = [model.values_to_rvs[v] for v in self._value_vars]
        self.free_names = [rv.name for rv in self._free_rvs]
        self.deterministic_names = [d.name for d in model.deterministics]
        self.shapes = {name: tuple(point[name].shape) for name in self.value_names}
        self.rv_shapes: dict[str, tuple[int, ...]] = {}
        self.slices: dict[str, slice] = {}
        self.names: list[str] = []
        start = 0
        for name, rv in zip(self.value_names, self._free_rvs):
            size = int(np.prod(self.shapes[name], dtype=int))
            self.slices[name] = slice(start, start + size)
            self.names.extend(_labels(name, self.shapes[name], self._axis_labels(rv, name)))
            start += size
        self.ndim = start
        # value -> its varying leading dim (the per-group variables of a two-level model)
        self.leading: dict[str, str] = {}
        for name, rv in zip(self.value_names, self._free_rvs):
            dims = tuple(model.named_vars_to_dims.get(rv.name) or ())
            varying = [d for d in dims if d in self.varying_dims]
            if not varying:
                continue
            if dims[0] not in self.varying_dims or len(varying) > 1:
                raise ValueError(
                    f"'{rv.name}' has dims {dims}: a dim whose length varies ({varying[0]!r}) "
                    "must be its first dim, and appear once."
                )
            if len(self.shapes[name]) != len(dims) or self.shapes[name][0] != int(
                model.dim_lengths[dims[0]].eval()
            ):
                raise ValueError(
                    f"The transformed value of '{rv.name}' does not keep dim {dims[0]!r} as its "
                    "first axis, so its length cannot vary."
                )
            self.leading[name] = dims[0]
        self.transforms = {rv.name: model.rvs_to_transforms.get(rv) for rv in self._free_rvs}
        self._cache = CompileCache(lambda key: getattr(self, f"_build_{key[0]}")(key[1]))

    def _axis_labels(self, rv, value_name: str) -> list[list[str] | None]:
        """The model's coordinate values along each axis of a value, where they fit."""
        shape = self.shapes[value_name]
        dims = self.model.named_vars_to_dims.get(rv.name) or ()
        labels = []
        for axis, length in enumerate(shape):
            dim = dims[axis] if len(dims) == len(shape) else None
            coords = self.model.coords.get(dim) if dim is not None else None
            fits = coords is not None and len(coords) == length
            labels.append([str(c) for c in coords] if fits else None)
        return labels

    def __repr__(self) -> str:
        return f"ParameterSpace(ndim={self.ndim}, values={self.value_names})"

    # ------------------------------------------------------------------ graphs
    def unpack(self, x: pt.TensorVariable) -> dict:
        """Each unconstrained value variable of the model as its slice of a flat symbolic
        vector ``x`` of one draw (a replacement mapping for the model's graphs).

        With varying dims, the slices follow the model's (symbolic) dim lengths, which the
        compiled functions take as inputs."""
        if not self.leading:
            return {
                var: x[self.slices[name]].reshape(self.shapes[name]).astype(var.dtype)
                for name, var in zip(self.value_names, self._value_vars)
            }
        out, start = {}, 0
        for name, var in zip(self.value_names, self._value_vars):
            shape = self.shapes[name]
            if name in self.leading:
                shape = (self.model.dim_lengths[self.leading[name]], *shape[1:])
            size = int(np.prod(self.shapes[name][1:], dtype=int)) * shape[0] if shape else 1
            out[var] = x[start : start + size].reshape(shape).astype(var.dtype)
            start = start + size
        return out

    def coordinates(self, dim_lengths: Mapping[str, int] | None = None):
        """The label and the free variable of each flat coordinate at the given lengths of
        the varying dims (:attr:`names` at the model's)."""
        labels, variables = [], []
        for name, rv in zip(self.value_names, self._free_rvs):
            shape = self.shapes[name]
            if name in self.leading and dim_lengths and self.leading[name] in dim_lengths:
                shape = (int(dim_lengths[self.leading[name]]), *shape[1:])
            if shape == self.shapes[name]:
                labels.extend(self.names[self.slices[name]])
            else:
                labels.extend(_labels(name, shape, [None] * len(shape)))
            variables.extend([rv.name] * int(np.prod(shape, dtype=int)))
        return labels, variables

    def ndim_for(self, dim_lengths: Mapping[str, int] | None = None) -> int:
        """Length of the flat vector for the given lengths of the varying dims."""
        if not self.leading or not dim_lengths:
            return self.ndim
        total = 0
        for name in self.value_names:
            shape = self.shapes[name]
            if name in self.leading:
                shape = (int(dim_lengths.get(self.leading[name], shape[0])), *shape[1:])
            total += int(np.prod(shape, dtype=int))
        return total

    def _compile(self, kind: str, batched: frozenset[str]) -> CompiledFunction:
        return self._cache((kind, batched))

    def _build_constrained(self, batched):
        x = pt.vector("x", dtype=pytensor.config.floatX)
        outputs = self.model.replace_rvs_by_values([*self._free_rvs, *self.model.deterministics])
        outputs = graph_replace(outputs, self.unpack(x), strict=False)
        return compile_batched(self._inputs, outputs, [x], [pt.matrix("X", dtype=x.dtype)], batched)

    def _build_logjac(self, batched):
        x = pt.vector("x", dtype=pytensor.config.floatX)
        terms = []
        for rv, value in zip(self._free_rvs, self._value_vars):
            transform = self.model.rvs_to_transforms.get(rv)
            if transform is not None:
                terms.append(pt.sum(transform.log_jac_det(value, *rv.owner.inputs)))
        total = pt.sum(pt.stack(terms)) if terms else pt.zeros((), dtype=x.dtype)
        [total] = self.model.replace_rvs_by_values([total])
        [total] = graph_replace([total], self.unpack(x), strict=False)
        return compile_batched(self._inputs, [total], [x], [pt.matrix("X", dtype=x.dtype)], batched)

    def _constrained_inputs(self):
        single = [rv.type(f"{rv.name}_value") for rv in self._free_rvs]
        batch = [
            pt.tensor(f"{rv.name}_batch", dtype=rv.dtype, shape=(None, *rv.type.shape))
            for rv in self._free_rvs
        ]
        return single, batch

    def _forward(self, single):
        """Unconstrained value of each free RV, given constrained values of all of them."""
        to_value = dict(zip(self._free_rvs, single))
        forwards = []
        for rv, c in zip(self._free_rvs, single):
            transform = self.model.rvs_to_transforms.get(rv)
            forwards.append(c if transform is None else transform.forward(c, *rv.owner.inputs))
        return graph_replace(forwards, to_value, strict=False)

    def _build_unconstrained(self, batched):
        single, batch = self._constrained_inputs()
        forwards = self._forward(single)
        flat = (
            pt.concatenate([f.astype(pytensor.config.floatX).reshape((-1,)) for f in forwards])
            if forwards
            else pt.zeros((0,), dtype=pytensor.config.floatX)
        )
        return compile_batched(self._inputs, [flat], single, batch, batched)

    def _build_support(self, batched):
        """Per-draw, per-variable check that a constrained draw lies in the transform's image."""
        single, batch = self._constrained_inputs()
        forwards = self._forward(single)
        to_value = dict(zip(self._free_rvs, single))
        checks = []
        for rv, c, z in zip(self._free_rvs, single, forwards):
            transform = self.model.rvs_to_transforms.get(rv)
            if transform is None:
                checks.append(pt.all(_finite(c)))
                continue
            [back] = graph_replace(
                [transform.backward(z, *rv.owner.inputs)], to_value, strict=False
            )
            close = pt.abs(back - c) <= 1e-6 * (1.0 + pt.abs(c))
            checks.append(pt.all(_finite(z)) & pt.all(close))
        return compile_batched(self._inputs, [pt.stack(checks)], single, batch, batched)

    # ------------------------------------------------------------------ public
    def _model_values(self, n, data, dim_lengths):
        return self._inputs.resolve(n, data, dim_lengths)

    def to_constrained(
        self,
        x: np.ndarray,
        *,
        data: Mapping[str, np.ndarray] | None = None,
        dim_lengths: Mapping[str, int] | None = None,
    ) -> dict[str, np.ndarray]:
        """Map flat unconstrained draws to constrained free variables and deterministics.

        Parameters
        ----------
        x : ndarray, shape (B, D)
            Flat unconstrained draws.
        data : dict, optional
            New values for ``pm.Data`` containers, used by deterministics; an array with a
            leading axis ``B`` gives one per draw.
        dim_lengths : dict, optional
            New lengths for dims of data.

        Returns
        -------
        dict of str to ndarray
            Each free variable and deterministic with leading axis ``B``.
        """
        x = self.check_flat(x, dim_lengths)
        batched, values = self._model_values(x.shape[0], data, dim_lengths)
        out = self._compile("constrained", batched)(x, *values)
        return dict(zip([*self.free_names, *self.deterministic_names], out))

    def to_unconstrained(
        self, values: Mapping[str, np.ndarray], *, dim_lengths: Mapping[str, int] | None = None
    ) -> np.ndarray:
        """Map constrained values of the free variables to flat unconstrained draws.

        Parameters
        ----------
        values : dict of str to ndarray
            One entry per free variable, each with a leading batch axis ``B``.
        dim_lengths : dict, optional
            Lengths of the varying dims of the values (default: the model's).

        Returns
        -------
        ndarray, shape (B, D)
        """
        arrays = self._check_values(values)
        _, model_values = self._model_values(None, None, self._lengths_of(values, dim_lengths))
        return self._compile("unconstrained", frozenset())(*arrays, *model_values)[0]

    def _lengths_of(self, values, dim_lengths):
        """Lengths of the varying dims: given, or read off the values' leading axes."""
        if not self.leading:
            return dim_lengths
        lengths = dict(dim_lengths or {})
        for name, rv in zip(self.value_names, self._free_rvs):
            if name in self.leading and rv.name in values:
                dim, given = self.leading[name], int(np.shape(values[rv.name])[1])
                if lengths.setdefault(dim, given) != given:
                    raise ValueError(
                        f"'{rv.name}' has {given} entries along dim '{dim}', but the dataset "
                        f"has {lengths[dim]}: give values for the dataset's {dim} (draws of "
                        "another dataset belong with that dataset)."
                    )
        return lengths

    def log_jacobian(
        self, x: np.ndarray, *, dim_lengths: Mapping[str, int] | None = None
    ) -> np.ndarray:
        """Log absolute determinant of the Jacobian of the map to constrained space.

        ``log p(z) = log p(θ(z)) + log_jacobian(z)`` for a density ``p`` over constrained
        values, exactly as PyMC adds it when ``jacobian=True``.

        Parameters
        ----------
        x : ndarray, shape (B, D)

        Returns
        -------
        ndarray, shape (B,)
        """
        x = self.check_flat(x, dim_lengths)
        _, model_values = self._model_values(None, None, dim_lengths)
        return self._compile("logjac", frozenset())(x, *model_values)[0]

    def in_support(self, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """Whether each draw lies where the value transforms can represent it.

        Forward simulation ignores transforms: ``transform=ordered`` does not order the
        draws, and a ``log`` transform on a Normal does not make it positive. A draw is in
        support when its unconstrained value is finite and maps back to it exactly.

        Parameters
        ----------
        values : dict of str to ndarray
            Constrained values of the free variables, each with a leading batch axis ``B``,
            as :meth:`ModelSimulator.sample` returns them.

        Returns
        -------
        ndarray of bool, shape (B, number of free variables)
        """
        arrays = self._check_values(values)
        _, model_values = self._model_values(None, None, self._lengths_of(values, None))
        return self._compile("support", frozenset())(*arrays, *model_values)[0]

    def check_flat(self, x, dim_lengths: Mapping[str, int] | None = None) -> np.ndarray:
        """``x`` as an array of flat unconstrained draws, shape ``(B, D)``, or a ValueError."""
        x = np.asarray(x, dtype=pytensor.config.floatX)
        ndim = self.ndim_for(dim_lengths)
        if x.ndim != 2 or x.shape[1] != ndim:
            names = self.names if ndim == self.ndim else f"of dim lengths {dict(dim_lengths)}"
            raise ValueError(
                f"Expected flat unconstrained draws of shape (B, {ndim}) for the "
                f"coordinates {names}; got shape {x.shape}."
            )
        return x

    def _check_values(self, values: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        missing = [name for name in self.free_names if name not in values]
        if missing:
            raise ValueError(f"Missing values for free variables {missing}.")
        arrays = [np.asarray(values[rv.name], dtype=rv.dtype) for rv in self._free_rvs]
        sizes = {a.shape[0] if a.ndim else None for a in arrays}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(
                "Every free variable needs the same leading batch axis; got shapes "
                + ", ".join(f"{n}: {a.shape}" for n, a in zip(self.free_names, arrays))
            )
        return arrays


def _finite(x):
    return ~(pt.isnan(x) | pt.isinf(x))


def _labels(name: str, shape: tuple[int, ...], axis_labels: list[list[str] | None]) -> list[str]:
    """``name[i, j]`` per element, with coordinate labels on the axes that have them."""
    if not shape:
        return [name]
    out = []
    for idx in np.ndindex(*shape):
        parts = [str(i) if lab is None else lab[i] for i, lab in zip(idx, axis_labels)]
        out.append(f"{name}[{', '.join(parts)}]")
    return out
