"""The model's exact joint log density, batched over flat unconstrained draws.

What simulator-only tools cannot do: because we hold the PyMC model, every amortized draw can
be weighed by ``log p(θ, y) - log q(θ | y)`` and the approximation checked and corrected by
Pareto-smoothed importance sampling.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytensor.tensor as pt
from pymc.distributions.simulator import SimulatorRV
from pymc.logprob.utils import local_check_parameter_to_ninf_switch
from pytensor.compile.mode import Mode
from pytensor.graph.fg import FunctionGraph
from pytensor.graph.replace import graph_replace
from pytensor.graph.rewriting.basic import in2out

from pymc_abi.core.errors import NoDensityError
from pymc_abi.model._compile import CompileCache, CompiledFunction, compile_batched
from pymc_abi.model._model import ModelInputs, observed_rvs
from pymc_abi.model._vectorize import vectorize_graph
from pymc_abi.model.parameters import ParameterSpace

__all__ = ["JointLogp", "NoDensityError"]


# The gradient serves the ladder's Laplace tier: tens of calls per unreliable dataset. Its C
# compilation took 25 s on a cold cache (new ops for every model) against 1.7 s for
# PyTensor's full rewrites (numerical stabilization included) on the Python linker, which
# costs 1 ms a call; fusion is left out, since fused loops run element by element there.
# The gradient with a dataset per row ("grad_rows") serves the flow's preconditioner, tens
# of calls for every training batch: there the C linker's lower cost per call (3x less
# time per batch of 256 datasets, measured) repays its compilation, once per amortizer.
_GRAD_MODE = Mode(linker="py", optimizer="fast_run").excluding("fusion")


class JointLogp:
    """``log p(θ, y)`` of a model, with the Jacobian of the value transforms.

    Evaluated on flat unconstrained draws ``z`` (the layout of :class:`ParameterSpace`), so
    that ``log p(z, y) - log q(z | y)`` is a proper log importance weight.

    Parameters
    ----------
    parameters : ParameterSpace
        The model's parameter space.

    Raises
    ------
    NoDensityError
        For models whose density is not available: ``pm.Simulator`` (its "likelihood" is
        an ABC kernel, not a density) or a ``CustomDist`` without ``logp``.
    """

    def __init__(self, parameters: ParameterSpace):
        self.parameters = parameters
        model = parameters.model
        self._inputs = ModelInputs(model, parameters.varying_dims)
        observed = observed_rvs(model)
        for rv in [*model.free_RVs, *observed]:
            if isinstance(rv.owner.op, SimulatorRV):
                raise NoDensityError(
                    f"'{rv.name}' is a pm.Simulator: the model has no exact density, so "
                    "importance sampling with it is impossible. Use the amortized posterior "
                    "as it is, and check it with SBC."
                )
        try:
            self._outputs = {
                "joint": [model.logp(vars=[*model.free_RVs, *observed, *model.potentials])],
                "pointwise": model.logp(vars=observed, jacobian=True, sum=False),
            }
        except NotImplementedError as err:
            raise NoDensityError(
                "The model's log density cannot be derived (a CustomDist without logp?), so "
                f"importance sampling is impossible: {err}"
            ) from err
        self._outputs = {k: _checks_as_switches(v) for k, v in self._outputs.items()}
        self._observed = {rv.name: model.rvs_to_values[rv] for rv in observed}
        self._cache = CompileCache(lambda key: self._compile(*key))

    def _compile(self, kind: str, batched: frozenset[str]) -> CompiledFunction:
        space = self.parameters
        x = pt.vector("x", dtype="float64")
        obs_inputs = {
            name: pt.tensor(f"{name}_obs", dtype=value.dtype, shape=(None,) * value.ndim)
            for name, value in self._observed.items()
        }
        replace = {self._observed[name]: obs_inputs[name] for name in obs_inputs}
        # rebuilt, not swapped: static shapes of the placeholder data must not survive, or
        # data of another length (a varying dim) fail shape checks
        gradient = kind in ("grad", "grad_rows")
        logp = vectorize_graph(self._outputs["joint" if gradient else kind], replace=replace)
        logp = graph_replace(logp, space.unpack(x), strict=False)
        if gradient:  # the joint density and its gradient in the flat layout
            logp = [logp[0], pt.grad(logp[0], x)]
        X = pt.matrix("X", dtype="float64")
        single, batch, shared = [x], [X], list(obs_inputs.values())
        if kind == "grad_rows":  # every row its own dataset: the observed values batched too
            single += shared
            batch += [
                pt.tensor(v.name, dtype=v.dtype, shape=(None,) * (v.ndim + 1)) for v in shared
            ]
            shared = []
        return compile_batched(
            self._inputs,
            logp,
            single,
            batch,
            batched,
            shared_inputs=shared,
            mode=_GRAD_MODE if kind == "grad" else None,
        )

    def _evaluate(self, kind, z, observed, data, dim_lengths) -> list[np.ndarray]:
        z = self.parameters.check_flat(z, dim_lengths)
        missing = [name for name in self._observed if name not in observed]
        if missing:
            raise ValueError(f"Missing observed data for {missing}.")
        obs = [np.asarray(observed[name], dtype=var.dtype) for name, var in self._observed.items()]
        for name, value in zip(self._observed, obs):
            if kind == "grad_rows" and value.shape[:1] != z.shape[:1]:
                raise ValueError(
                    f"value_and_grad_rows takes one dataset per row: '{name}' leads with "
                    f"{value.shape[:1]}, the draws with {z.shape[0]}."
                )
        batched, values = self._inputs.resolve(z.shape[0], data, dim_lengths)
        return self._cache((kind, batched))(z, *obs, *values)

    def value_and_grad_rows(
        self,
        z: np.ndarray,
        observed: Mapping[str, np.ndarray],
        *,
        data: Mapping[str, np.ndarray] | None = None,
        dim_lengths: Mapping[str, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Joint log density and its gradient, each row of ``z`` (B, D) given its own
        dataset: ``observed`` values (and per-dataset ``data``) with a leading axis ``B``.

        What a batched local fit of many datasets at once needs
        (:mod:`pymc_abi.model.preconditioner`). The datasets of one call share their sizes.

        Returns
        -------
        logp : ndarray, shape (B,)
        grad : ndarray, shape (B, D)
        """
        logp, grad = self._evaluate("grad_rows", z, observed, data, dim_lengths)
        return logp, grad

    def __call__(
        self,
        z: np.ndarray,
        observed: Mapping[str, np.ndarray],
        *,
        data: Mapping[str, np.ndarray] | None = None,
        dim_lengths: Mapping[str, int] | None = None,
    ) -> np.ndarray:
        """Joint log density of draws ``z`` (B, D) for one dataset.

        Parameters
        ----------
        z : ndarray, shape (B, D)
        observed : dict
            The dataset: a value for every observed variable.
        data, dim_lengths : dict, optional
            ``pm.Data`` values and dim lengths of this dataset.

        Returns
        -------
        ndarray, shape (B,)
        """
        [logp] = self._evaluate("joint", z, observed, data, dim_lengths)
        return logp

    def value_and_grad(
        self,
        z: np.ndarray,
        observed: Mapping[str, np.ndarray],
        *,
        data: Mapping[str, np.ndarray] | None = None,
        dim_lengths: Mapping[str, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Joint log density of draws ``z`` (B, D) and its gradient with respect to ``z``.

        Parameters
        ----------
        z : ndarray, shape (B, D)
        observed : dict
            The dataset: a value for every observed variable.
        data, dim_lengths : dict, optional
            ``pm.Data`` values and dim lengths of this dataset.

        Returns
        -------
        logp : ndarray, shape (B,)
        grad : ndarray, shape (B, D)
        """
        logp, grad = self._evaluate("grad", z, observed, data, dim_lengths)
        return logp, grad

    def pointwise(
        self,
        z: np.ndarray,
        observed: Mapping[str, np.ndarray],
        *,
        data: Mapping[str, np.ndarray] | None = None,
        dim_lengths: Mapping[str, int] | None = None,
    ) -> dict[str, np.ndarray]:
        """Pointwise log-likelihood of each observed variable at draws ``z`` (B, D).

        The terms of the ``log_likelihood`` group (as ``pm.compute_log_likelihood`` gives
        them): one per element of each observed variable, or per row of a multivariate one.

        Parameters
        ----------
        z : ndarray, shape (B, D)
        observed : dict
            The dataset: a value for every observed variable.
        data, dim_lengths : dict, optional
            ``pm.Data`` values and dim lengths of this dataset.

        Returns
        -------
        dict of str to ndarray
            Each observed variable's terms, with leading axis ``B``.
        """
        terms = self._evaluate("pointwise", z, observed, data, dim_lengths)
        return dict(zip(self._observed, terms))


def _checks_as_switches(outputs: list) -> list:
    """PyMC's parameter checks (``sigma > 0``) as ``switch(check, logp, -inf)``, in the
    graph of one draw.

    PyMC's own rewrite, which its compiled functions apply anyway, run before the graph is
    vectorized: vectorized first, a check would become one condition over the whole batch
    (PyTensor's vectorization of ``CheckAndRaise``), and one draw outside the support (a
    scale that underflows to 0) would give every draw of the batch ``-inf``. The graph is
    cloned with its inputs kept, so the value variables still name the parameters.
    """
    fgraph = FunctionGraph(outputs=list(outputs), clone=True, copy_inputs=False, copy_orphans=False)
    in2out(local_check_parameter_to_ninf_switch).rewrite(fgraph)
    return list(fgraph.outputs)
