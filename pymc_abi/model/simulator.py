"""A PyMC model as a fast, batched prior-predictive simulator.

:class:`ModelSimulator` compiles the model's forward graph once, with every random
variable given a leading simulation axis (see :mod:`pymc_abi.model._vectorize`), the batch size,
dim lengths and ``pm.Data`` containers as inputs. One call of the compiled function draws
``n`` complete simulations, instead of the ``n`` calls that ``pm.sample_prior_predictive``
makes.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pymc.distributions.transforms import Ordered
from pymc.pytensorf import collect_default_updates, replace_rng_nodes, reseed_rngs
from pytensor.tensor.random.op import RandomVariable

from pymc_abi.core._arguments import positive
from pymc_abi.core.errors import UnvectorizedWarning
from pymc_abi.core.seeds import RandomSeed, seed_int
from pymc_abi.model._compile import CompileCache, CompiledFunction
from pymc_abi.model._model import ModelInputs, check_model, observed_rvs
from pymc_abi.model._vectorize import batch_graph
from pymc_abi.model.parameters import ParameterSpace

__all__ = ["ModelSimulator"]

_log = logging.getLogger("pymc_abi")


class _Compiled:
    """One compiled batched forward function (per set of per-simulation data inputs).

    Built by :meth:`ModelSimulator._build`, which returns it whole: the function, its random
    generators, the free-variable columns whose in-support flags it appends to its outputs,
    and the free variables whose draws it sorts.
    """

    def __init__(self, fn: CompiledFunction, rngs, mask_columns, sorted_names):
        self.fn = fn
        self.rngs = rngs
        self.mask_columns = mask_columns
        self.sorted_names = sorted_names

    def __call__(self, seed: int, n: int, *inputs) -> tuple[list[np.ndarray], list]:
        """Return the outputs and, per checked free variable, its column and in-support flags."""
        with self.fn.lock:  # the generators are shared: reseed and draw in one step
            reseed_rngs(self.rngs, seed)
            out = self.fn(n, *inputs)
        n_out = len(out) - len(self.mask_columns)
        return out[:n_out], list(zip(self.mask_columns, out[n_out:]))


class ModelSimulator:
    """Batched prior-predictive simulator of a PyMC model.

    Parameters
    ----------
    model : pm.Model, optional
        The model; ``None`` takes it from the context.
    random_seed : int, optional
        Seeds the simulator's own generator, used by calls to :meth:`sample` that pass no
        ``random_seed``.
    varying_dims : iterable of str, optional
        Dims of free variables whose length may change in :meth:`sample` (the group dim of
        a two-level model, see :class:`ParameterSpace`); by default only dims of observed
        variables and data may.

    Attributes
    ----------
    parameters : ParameterSpace
        The flat unconstrained layout of the free variables.
    free_names, deterministic_names, observed_names : list of str
        The model variables that :meth:`sample` returns.
    fallback_variables : set of str
        Variables that could not be vectorized and are drawn one simulation at a time
        (filled as functions are compiled).

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_abi as abi
    >>> with pm.Model(coords={"obs": range(50)}) as model:
    ...     mu = pm.Normal("mu", 0, 1)
    ...     sigma = pm.HalfNormal("sigma", 1)
    ...     y = pm.Normal("y", mu, sigma, observed=np.zeros(50), dims="obs")
    ...     sim = abi.ModelSimulator()
    >>> batch = sim.sample(1000, random_seed=1)
    >>> batch["y"].shape
    (1000, 50)
    >>> sim.sample(10, dim_lengths={"obs": 73})["y"].shape
    (10, 73)
    """

    def __init__(
        self, model: pm.Model | None = None, *, random_seed: RandomSeed = None, varying_dims=()
    ):
        model = pm.modelcontext(model)
        check_model(model)
        self.model = model
        self.parameters = ParameterSpace(model, varying_dims=varying_dims)
        self._inputs = ModelInputs(model, self.parameters.varying_dims)
        self._rng = np.random.default_rng(random_seed)
        self.free_names = [rv.name for rv in model.free_RVs]
        self.deterministic_names = [d.name for d in model.deterministics]
        self.observed_names = [rv.name for rv in observed_rvs(model)]
        self.fallback_variables: set[str] = set()
        self._compiled = CompileCache(self._build)
        self._names = {rv.owner: rv.name for rv in [*model.free_RVs, *observed_rvs(model)]}
        ip = self.parameters.to_constrained(
            np.concatenate([np.ravel(v) for v in model.initial_point().values()])[None]
            if self.parameters.ndim
            else np.zeros((1, 0))
        )
        self._initial = {name: ip[name][0] for name in self.free_names}
        self._compile(frozenset())

    def __repr__(self) -> str:
        return (
            f"ModelSimulator(free={self.free_names}, observed={self.observed_names}, "
            f"deterministics={self.deterministic_names}, parameters={self.parameters.ndim})"
        )

    # ------------------------------------------------------------------ compile
    def _project(self, rv, new):
        """Keep draws of a free variable inside the support its value transform defines.

        Returns the value for the downstream graph and how it was kept: ``"sorted"``, a
        boolean in-support flag per simulation, or ``None`` (nothing to do).

        Forward sampling ignores transforms. Exchangeable draws of a variable with an
        ``ordered`` transform are sorted: for iid components, the order statistics are
        exactly the ordered-restricted distribution the model's density defines. Otherwise
        each draw is checked (its unconstrained value must be finite); a failing draw is
        replaced by the model's initial point for the downstream graph, so that the
        simulation does not crash, and the whole simulation is rejected and redrawn.
        """
        if rv not in self.model.free_RVs:
            return new, None
        transform = self.model.rvs_to_transforms.get(rv)
        if transform is None or not isinstance(new.owner.op, RandomVariable):
            return new, None
        if isinstance(transform, Ordered) and _is_exchangeable(rv):
            return pt.sort(new, axis=-1), "sorted"
        z = transform.forward(new, *new.owner.inputs)
        ok = (
            pt.all(~(pt.isnan(z) | pt.isinf(z)), axis=tuple(range(1, z.ndim)))
            if z.ndim > 1
            else ~(pt.isnan(z) | pt.isinf(z))
        )
        initial = self._initial[rv.name]
        if self.model.rvs_to_values[rv].name in self.parameters.leading:
            initial = initial[0]  # one group's: it broadcasts to any number of groups
        safe = pt.as_tensor_variable(initial.astype(new.dtype))
        return pt.switch(pt.shape_padright(ok, new.ndim - 1), new, safe), ok

    def _compile(self, batched: frozenset[str]) -> _Compiled:
        return self._compiled(batched)

    def _build(self, batched: frozenset[str]) -> _Compiled:
        model = self.model
        outputs = [*model.free_RVs, *model.deterministics, *observed_rvs(model)]
        # shared data and dim lengths become inputs; per-simulation data carry the batch axis
        replace, inputs = self._inputs.replacements(batched)
        n = pt.scalar("n", dtype="int64")
        fallbacks: list[str] = []
        checks: list[tuple[str, object]] = []  # (free variable, its in-support flags)
        sorted_names: list[str] = []

        def project(rv, new):
            value, how = self._project(rv, new)
            if isinstance(how, str):
                sorted_names.append(rv.name)
            elif how is not None:
                checks.append((rv.name, how))
            return value

        batched_outputs = batch_graph(
            outputs,
            replace,
            n,
            label=lambda node: self._names.get(node, str(node.op)),
            on_fallback=fallbacks.append,
            after_rv=project,
        )
        batched_outputs = replace_rng_nodes([*batched_outputs, *(ok for _, ok in checks)])
        updates = collect_default_updates(batched_outputs)
        fn = CompiledFunction(
            [n, *inputs], batched_outputs, on_unused_input="ignore", updates=updates
        )
        new = sorted(set(fallbacks) - self.fallback_variables)
        if new:
            warnings.warn(
                f"Could not vectorize the draws of {', '.join(map(repr, new))}; they are drawn "
                "one simulation at a time (exact, but slower).",
                UnvectorizedWarning,
                stacklevel=5,
            )
            self.fallback_variables.update(fallbacks)
        return _Compiled(
            fn,
            list(updates),
            mask_columns=[self.free_names.index(name) for name, _ in checks],
            sorted_names=sorted_names,
        )

    # ------------------------------------------------------------------ sample
    def sample(
        self,
        n: int,
        *,
        random_seed: RandomSeed = None,
        dim_lengths: Mapping[str, int] | None = None,
        data: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """Draw ``n`` simulations from the prior predictive distribution.

        Parameters
        ----------
        n : int
            Number of simulations.
        random_seed : int, optional
            Makes the draws reproducible.
        dim_lengths : dict of str to int, optional
            New lengths for dims of observed variables (e.g. ``{"obs": 73}``), without
            recompiling. Dims of free variables cannot change.
        data : dict of str to ndarray, optional
            New values for ``pm.Data`` containers: an array shaped like the container is used
            for every simulation; one with an extra leading axis of length ``n`` gives each
            simulation its own. Dims that follow the data's shape change with it.

        Returns
        -------
        dict of str to ndarray
            Every free variable (constrained values), deterministic and observed variable,
            each with leading axis ``n``. Free-variable draws always lie in the support that
            the model's value transforms define (``ordered``, ``log``, ...).
        """
        n = positive("n", n, minimum=0)
        batched, values = self._inputs.resolve(n, data, dim_lengths)
        fn = self._compile(batched)
        seeds = np.random.SeedSequence(seed_int(random_seed, self._rng))
        names = self.output_names

        out, valid = self._draw(fn, seeds, n, values)
        bad = ~valid.all(axis=1)
        rounds = 0
        while bad.any():
            rounds += 1
            if rounds > 100 or (rounds >= 10 and bad.mean() > 0.999):
                worst = self.free_names[int(np.argmin(valid.sum(axis=0)))]
                raise RuntimeError(
                    f"Draws of '{worst}' keep falling outside the support of its transform "
                    f"({type(self.parameters.transforms[worst]).__name__}); after {rounds} "
                    "rounds of rejection some simulations are still invalid. Use a prior whose "
                    "draws satisfy the constraint (e.g. a positive prior for a log transform)."
                )
            idx = np.flatnonzero(bad)
            sub_values = [
                v[idx] if name in batched else v for name, v in zip(self._input_names(), values)
            ]
            redraw, ok = self._draw(fn, seeds, len(idx), sub_values)
            good = ok.all(axis=1)
            for name in names:
                out[name][idx[good]] = redraw[name][good]
            valid[idx] = ok
            bad[idx[good]] = False
        if rounds:
            _log.debug("Redrew %d rounds of simulations to respect transform supports", rounds)
        return out

    def check_dim_lengths(self, dim_lengths: Mapping[str, int]) -> None:
        """Refuse dim lengths :meth:`sample` cannot use: unknown dims, or dims of free
        variables (their sizes are fixed by the parameter layout)."""
        self._inputs.resolve(1, None, dim_lengths)

    @property
    def output_names(self) -> list[str]:
        """Names of the arrays :meth:`sample` returns: free, deterministic, observed."""
        return [*self.free_names, *self.deterministic_names, *self.observed_names]

    def _draw(self, fn, seeds, n, values):
        """One call of the compiled function; returns outputs and in-support flags [n, free]."""
        try:
            outputs, checks = fn(seeds.spawn(1)[0].generate_state(1)[0], n, *values)
        except NotImplementedError as err:  # a random function that is missing
            raise ValueError(f"The model cannot be simulated: {str(err).splitlines()[0]}") from None
        out = dict(zip(self.output_names, outputs))
        if self.free_names:
            valid = self.parameters.in_support({k: out[k] for k in self.free_names})
        else:  # a model without parameters (e.g. a fixed-p binomial, for model comparison)
            valid = np.ones((n, 0), dtype=bool)
        for column, flags in checks:
            valid[:, column] &= flags
        return out, valid

    def _input_names(self) -> list[str]:
        return [*(f"dim:{d}" for d in self._inputs.dim_vars), *self._inputs.data_vars]


def _is_exchangeable(rv) -> bool:
    """True when a univariate RV's components along the last axis are iid."""
    node = rv.owner
    op = node.op
    if not isinstance(op, RandomVariable) or op.ndim_supp != 0 or rv.ndim == 0:
        return False
    for param in op.dist_params(node):
        if param.ndim == rv.ndim and param.type.shape[-1] != 1:
            return False
    return True
