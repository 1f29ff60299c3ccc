"""Batch a PyMC forward graph over a leading simulation axis.

Every random variable of the model gets a new leading axis of length ``n`` and every
deterministic node between them is vectorized with :func:`pytensor.graph.replace.vectorize_node`.

Random variables are batched here, not by pytensor's ``vectorize_graph``:

* pytensor infers the number of new batch dimensions of a ``RandomVariable`` from its
  first parameter only, so ``Binomial(n=10, p=batched)`` or ``Normal(0, batched_sigma,
  size=...)`` fail there.  We always prepend ``n`` to the size and expand every batched
  parameter to the full batch rank.
* PyMC's ``SymbolicRandomVariable`` (Censored, Mixture, GaussianRandomWalk, LKJCholeskyCov,
  ``CustomDist(dist=...)``) are inlined and their inner graphs batched recursively.
* Nodes that cannot be batched (a ``Scan`` that draws random numbers, as in ``AR``; a random
  function written in Python, as in ``pm.Simulator`` and ``CustomDist(random=...)``) are
  replaced by :class:`PerDrawLoop`, which calls the original node once per draw: slower but
  exact.  The caller is told which variables forced it.

This module speaks pytensor only; it never imports torch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import pytensor
import pytensor.tensor as pt
from pymc.distributions.custom import CustomDistRV
from pymc.distributions.distribution import SymbolicRandomVariable
from pymc.distributions.simulator import SimulatorRV
from pytensor.compile.ops import ViewOp
from pytensor.graph.basic import Apply, Variable
from pytensor.graph.replace import _vectorize_node
from pytensor.graph.traversal import graph_inputs, io_toposort
from pytensor.tensor.random.op import RandomVariable, RNGConsumerOp
from pytensor.tensor.random.type import RandomType
from pytensor.tensor.shape import Shape, Shape_i
from pytensor.tensor.type import TensorType
from pytensor.tensor.type_other import NoneTypeT

__all__ = ["PerDrawLoop", "batch_graph"]

# Random variables whose draws come from user Python code: it may not broadcast over a
# batch of parameters, and a wrong broadcast would be silent, so they are always looped.
_PYTHON_RV_TYPES = (SimulatorRV, CustomDistRV)


class PerDrawLoop(RNGConsumerOp):
    """Evaluate one random node once per draw of a batch, in a Python loop.

    The fallback for nodes that cannot be vectorized. Inputs are the node's inputs, each
    either with a leading batch axis (``batched[i]``) or shared by all draws, followed by
    the batch size. Random generator outputs are threaded through the loop, so draws are
    independent and reproducible.
    """

    def __init__(self, node: Apply, batched: Sequence[bool], label: str):
        self.label = label
        self.batched = tuple(batched)
        self.rng_in = [i for i, inp in enumerate(node.inputs) if isinstance(inp.type, RandomType)]
        self.rng_out = [i for i, out in enumerate(node.outputs) if isinstance(out.type, RandomType)]
        self.out_types = [out.type for out in node.outputs]
        inputs = [inp.type() for inp in node.inputs]
        outputs = node.op.make_node(*inputs).outputs
        self._fn = pytensor.function(inputs, outputs, mode="FAST_RUN")
        super().__init__()

    def __str__(self) -> str:
        return f"PerDrawLoop{{{self.label}}}"

    def make_node(self, *inputs):
        *inputs, n = inputs
        n = pt.as_tensor_variable(n, dtype="int64")
        out_types = [
            t if isinstance(t, RandomType) else TensorType(t.dtype, shape=(None, *t.shape))
            for t in self.out_types
        ]
        return Apply(self, [*inputs, n], [t() for t in out_types])

    def update(self, node: Apply) -> dict[Variable, Variable]:
        return {node.inputs[i]: node.outputs[j] for i, j in zip(self.rng_in, self.rng_out)}

    def perform(self, node, inputs, outputs):
        *inputs, n = inputs
        n = int(n)
        args = list(inputs)
        for i in self.rng_in:
            args[i] = copy.deepcopy(args[i])
        draws: list[list[np.ndarray]] = [[] for _ in self.out_types]
        for d in range(n):
            call = [x[d] if b else x for x, b in zip(args, self.batched)]
            result = self._fn(*call)
            for i, j in zip(self.rng_in, self.rng_out):
                args[i] = result[j]
            for j, value in enumerate(result):
                if j not in self.rng_out:
                    draws[j].append(value)
        for j, t in enumerate(self.out_types):
            if j in self.rng_out:
                outputs[j][0] = args[self.rng_in[self.rng_out.index(j)]]
            elif n:
                outputs[j][0] = np.stack(draws[j]).astype(t.dtype, copy=False)
            else:
                outputs[j][0] = np.empty((0, *(s or 0 for s in t.shape)), dtype=t.dtype)


class _CannotBatch(Exception):
    """Raised inside :func:`batch_graph` when a node has to fall back to the loop."""


def _is_random(node: Apply) -> bool:
    return isinstance(node.op, RandomVariable | SymbolicRandomVariable)


def _has_rng_input(node: Apply) -> bool:
    return any(isinstance(inp.type, RandomType) for inp in node.inputs)


def batch_graph(
    outputs: Sequence[Variable],
    replace: dict[Variable, Variable],
    n: Variable,
    *,
    label: Callable[[Apply], str] = lambda node: str(node.op),
    on_fallback: Callable[[str], None] = lambda name: None,
    after_rv: Callable[[Variable, Variable], Variable] | None = None,
) -> list[Variable]:
    """Return ``outputs`` with every random variable drawn ``n`` times along a new axis 0.

    Parameters
    ----------
    outputs
        Variables of the original (single draw) graph.
    replace
        Original variable -> new variable. A new variable with one more dimension than the
        original is taken to carry the batch axis already (per-draw data).
    n
        Symbolic batch size (int64 scalar).
    label
        Names a node for messages (the model variable it draws).
    on_fallback
        Called with the label of each node that had to be looped draw by draw.
    after_rv
        Called as ``after_rv(original, batched)`` for every random variable output; may return
        a replacement for downstream use (used to project draws into a transform's support).
    """
    memo: dict[Variable, Variable] = dict(replace)
    _batch_nodes(outputs, memo, n, label, on_fallback, after_rv)
    return [memo.get(out, out) for out in outputs]


def _batched(old: Variable, new: Variable) -> bool:
    return getattr(new, "ndim", None) is not None and new.ndim == old.ndim + 1


def _batch_nodes(outputs, memo, n, label, on_fallback, after_rv, inputs=None):
    for node in io_toposort(inputs or [], list(outputs)) if inputs else _toposort(outputs):
        new_inputs = [memo.get(inp, inp) for inp in node.inputs]
        if _is_random(node):
            new_outputs = _batch_random_node(node, new_inputs, n, label, on_fallback, after_rv)
        elif isinstance(node.op, ViewOp):
            # identity views (e.g. around deterministics): pytensor would wrap them in a
            # per-draw Blockwise loop
            new_outputs = new_inputs
        elif isinstance(node.op, Shape | Shape_i) and _batched(node.inputs[0], new_inputs[0]):
            # every simulation has the same shape: keep shapes unbatched
            core = new_inputs[0].shape[1:]
            new_outputs = [core if isinstance(node.op, Shape) else core[node.op.i]]
        elif _has_rng_input(node):
            # e.g. a Scan that draws random numbers: only the loop is exact
            new_outputs = _loop(node, new_inputs, n, label(node), on_fallback)
        elif all(new is old for new, old in zip(new_inputs, node.inputs)):
            if hasattr(node, "clone_with_new_inputs"):
                continue
            # a frozen node of an inner graph (PyTensor 3) cannot enter the outer graph
            new_outputs = node.op.make_node(*new_inputs).outputs
        elif not any(_batched(o, v) for o, v in zip(node.inputs, new_inputs)):
            # rebuilt by its op (the inner graphs of PyTensor 3 hold frozen nodes)
            new_outputs = node.op.make_node(*new_inputs).outputs
        else:
            new_outputs = _vectorize_outputs(node, new_inputs)
        for old, new in zip(node.outputs, new_outputs):
            memo[old] = new


def _vectorize_outputs(node: Apply, new_inputs: list[Variable]) -> list[Variable]:
    result = _vectorize_node(node.op, node, *new_inputs)
    return list(result.outputs if isinstance(result, Apply) else result)


def _toposort(outputs):
    return io_toposort(list(graph_inputs(outputs)), list(outputs))


def _batch_random_node(node, new_inputs, n, label, on_fallback, after_rv):
    op = node.op
    try:
        if isinstance(op, _PYTHON_RV_TYPES):
            raise _CannotBatch
        if isinstance(op, RandomVariable):
            new_outputs = _batch_rv(node, new_inputs, n)
        else:
            new_outputs = _batch_symbolic_rv(node, new_inputs, n, label, on_fallback)
    except _CannotBatch:
        new_outputs = _loop(node, new_inputs, n, label(node), on_fallback)
    except Exception as err:  # vectorization failed for a graph we do not know: stay exact
        new_outputs = _loop(
            node, new_inputs, n, f"{label(node)} ({type(err).__name__})", on_fallback
        )
    if after_rv is not None:
        new_outputs = [
            after_rv(old, new) if not isinstance(old.type, RandomType) else new
            for old, new in zip(node.outputs, new_outputs)
        ]
    return new_outputs


def _loop(node, new_inputs, n, name, on_fallback):
    on_fallback(name)
    batched = [_batched(o, v) for o, v in zip(node.inputs, new_inputs)]
    return PerDrawLoop(node, batched, name)(*new_inputs, n, return_list=True)


def _batch_rv(node: Apply, new_inputs: list[Variable], n: Variable) -> list[Variable]:
    """Batch a plain ``RandomVariable`` node: size ``(n, *batch_shape)``."""
    op: RandomVariable = node.op
    rng, size, *params = new_inputs
    old_params = op.dist_params(node)
    old_out = node.outputs[1]
    batch_ndim = old_out.ndim - op.ndim_supp

    if isinstance(size.type, NoneTypeT):
        # batch shape implied by the (unbatched part of the) parameters
        # (max over parameters is numpy broadcasting for consistent shapes; inconsistent
        # ones fail in the draw itself, as they would have without batching)
        batch_shape = [pt.constant(1, dtype="int64")] * batch_ndim
        for old, new, core in zip(old_params, params, op.ndims_params):
            shape = tuple(new.shape)[1:] if _batched(old, new) else tuple(new.shape)
            shape = shape[: len(shape) - core]
            offset = batch_ndim - len(shape)
            for i, length in enumerate(shape):
                batch_shape[offset + i] = pt.maximum(batch_shape[offset + i], length)
        size = pt.as_tensor_variable([n, *batch_shape], dtype="int64")
    else:
        size = pt.concatenate([pt.as_tensor_variable([n], dtype="int64"), size.astype("int64")])

    new_params = []
    for old, new, core in zip(old_params, params, op.ndims_params):
        if _batched(old, new):
            missing = batch_ndim - (old.ndim - core)
            if missing:
                new = pt.expand_dims(new, tuple(range(1, 1 + missing)))
        new_params.append(new)
    new_node = op.make_node(rng, size, *new_params)
    if new_node.outputs[1].ndim != old_out.ndim + 1:
        raise _CannotBatch
    return new_node.outputs


def _batch_symbolic_rv(node, new_inputs, n, label, on_fallback):
    """Inline a ``SymbolicRandomVariable`` and batch its inner graph."""
    op = node.op
    inner_inputs = op.inner_inputs
    inner_outputs = op.inner_outputs
    memo = dict(zip(inner_inputs, new_inputs))
    for inner in inner_inputs:
        memo.setdefault(inner, inner)
    _batch_nodes(
        inner_outputs,
        memo,
        n,
        label=lambda _: label(node),
        on_fallback=_raise_cannot,
        after_rv=None,
        inputs=inner_inputs,
    )
    new_outputs = [memo.get(out, out) for out in inner_outputs]
    for old, new in zip(node.outputs, new_outputs):
        if isinstance(old.type, RandomType):
            continue
        if new.ndim != old.ndim + 1:
            raise _CannotBatch
    return new_outputs


def _raise_cannot(name: str) -> None:
    raise _CannotBatch
