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
* A ``Scan`` (``pm.AR``, ``pm.GARCH11``, ``pm.EulerMaruyama``, a user's ``pytensor.scan``)
  becomes one scan over all draws: its states, sequences and non-sequences carry the batch
  axis, its inner graph is batched by these same rules (random variables inside it draw
  ``n`` values per step from one generator threaded through the steps), so ``T`` steps run
  once for the whole batch.  PyTensor's own ``vectorize_graph`` turns it into a
  ``Blockwise(Scan)``, a Python loop over the batch.
* Nodes that cannot be batched (a scan that stops on a condition, ``until``; a random
  function written in Python, as in ``pm.Simulator`` and ``CustomDist(random=...)``) are
  replaced by :class:`PerDrawLoop`, which calls the original node once per draw: slower but
  exact.  The caller is told which variables forced it, and why.

This module speaks pytensor only; it never imports torch.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pytensor
import pytensor.graph.replace
import pytensor.tensor as pt
from pymc.distributions.custom import CustomDistRV
from pymc.distributions.distribution import SymbolicRandomVariable
from pymc.distributions.simulator import SimulatorRV
from pytensor.compile.mode import Mode
from pytensor.compile.ops import ViewOp
from pytensor.graph.basic import Apply, Constant, Variable
from pytensor.graph.replace import _vectorize_node
from pytensor.graph.traversal import applys_between, graph_inputs, io_toposort
from pytensor.scan.op import Scan
from pytensor.tensor.basic import Join
from pytensor.tensor.random.op import RandomVariable, RNGConsumerOp
from pytensor.tensor.random.type import RandomType
from pytensor.tensor.shape import Shape, Shape_i
from pytensor.tensor.type import TensorType
from pytensor.tensor.type_other import NoneTypeT

__all__ = ["PerDrawLoop", "batch_graph", "vectorize_graph"]

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
        # FAST_RUN spelled out: PyTensor 2 resolves "FAST_RUN" without a C compiler to a
        # tuple of modes, which pytensor.function refuses
        linker = "cvm" if pytensor.config.cxx else "vm"
        self._fn = pytensor.function(inputs, outputs, mode=Mode(linker, "fast_run"))
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
    """Raised inside :func:`batch_graph` when a node has to fall back to the loop.

    Its message, where it has one, says why (it is shown to the user).
    """


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
        elif isinstance(node.op, Scan) and any(
            _batched(o, v) for o, v in zip(node.inputs, new_inputs)
        ):
            try:
                new_outputs = _batch_scan(node, new_inputs, n, label)
            except Exception as err:  # a scan we cannot batch: stay exact
                why = str(err) if isinstance(err, _CannotBatch) else type(err).__name__
                if not _has_rng_input(node):
                    # exact either way: PyTensor's per-draw Blockwise loop
                    new_outputs = _vectorize_outputs(node, new_inputs)
                else:
                    name = f"{label(node)} ({why})" if str(why) else label(node)
                    new_outputs = _loop(node, new_inputs, n, name, on_fallback)
        elif (
            isinstance(node.op, Join)
            and _join_axis(node) is not None
            and any(_batched(o, v) for o, v in zip(node.inputs, new_inputs))
        ):
            # PyTensor vectorizes a join as Blockwise(Join), a loop over the batch
            new_outputs = [_batch_join(node, new_inputs, n)]
        elif _has_rng_input(node):
            # a node that draws random numbers and is none of the above: only the loop is exact
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


def _join_axis(node: Apply) -> int | None:
    """The axis of a join: an op property (PyTensor 3) or a constant first input."""
    if isinstance(getattr(node.op, "axis", None), int):
        return node.op.axis
    first = node.inputs[0]
    return int(first.data) if isinstance(first, Constant) else None


def _batch_join(node: Apply, new_inputs: list[Variable], n: Variable) -> Variable:
    """A join along a fixed axis: every part gets the batch axis, the join moves one axis."""
    axis = _join_axis(node)
    offset = 0 if isinstance(getattr(node.op, "axis", None), int) else 1
    parts = []
    for old, new in zip(node.inputs[offset:], new_inputs[offset:]):
        if not _batched(old, new):
            new = pt.alloc(new, n, *new.shape)
        parts.append(new)
    return pt.join(axis + 1 if axis >= 0 else axis, *parts)


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


def vectorize_graph(
    outputs: Sequence[Variable],
    replace: dict[Variable, Variable],
    n: Variable | None = None,
) -> list[Variable]:
    """PyTensor's ``vectorize_graph``, except that a ``Scan`` stays one scan.

    For deterministic graphs (log-densities). ``replace`` maps inputs to new ones: with one
    more leading axis of length ``n`` where batched, or the same rank (new static shapes).
    PyTensor wraps a scan with a changed input in ``Blockwise(Scan)``, a Python loop over the
    batch rows (or over nothing, where none was added): here a scan runs its steps once for
    the whole batch (used for log-densities that hold a scan, as ``pm.GARCH11``'s). Graphs
    without a scan go to PyTensor's.
    """
    outputs = list(outputs)
    if not any(
        isinstance(node.op, Scan) for node in applys_between(graph_inputs(outputs), outputs)
    ):
        return pytensor.graph.replace.vectorize_graph(outputs, replace=replace)
    if n is None:
        batched = [new for old, new in replace.items() if _batched(old, new)]
        # nothing batched: the graph is rebuilt on the new inputs, n is never used
        n = batched[0].shape[0] if batched else pt.constant(1, dtype="int64")
    return batch_graph(outputs, replace, n)


def _batch_scan(node: Apply, new_inputs: list[Variable], n: Variable, label) -> list[Variable]:
    """One ``Scan`` over ``n`` draws: every traced state and output carries the batch axis.

    Outer inputs are ``n_steps, sequences, mit-mot, mit-sot, sit-sot, untraced sit-sot,
    nit-sot lengths, non-sequences``; inner inputs ``sequences, mit-mot taps, mit-sot taps,
    sit-sot, untraced sit-sot, non-sequences``; inner outputs ``mit-mot, mit-sot, sit-sot,
    nit-sot, untraced sit-sot``. In the new scan a batched sequence or state is laid out
    ``(time, batch, ...)`` outside and ``(batch, ...)`` inside; a batched non-sequence keeps
    its ``(batch, ...)``. ``n`` enters the inner graph as one more non-sequence, for the
    random variables drawn inside it.
    """
    op: Scan = node.op
    info = op.info
    if info.as_while:
        raise _CannotBatch("a scan that stops on a condition")
    if info.n_mit_mot:
        raise _CannotBatch("a scan of a gradient")
    if _batched(node.inputs[0], new_inputs[0]):
        raise _CannotBatch("a number of steps that differs between draws")

    n_seqs, n_untraced, n_nit = info.n_seqs, info.n_untraced_sit_sot, info.n_nit_sot
    state_taps = [len(taps) for taps in info.mit_sot_in_slices] + [1] * info.n_sit_sot
    n_states = len(state_taps)
    outer = list(new_inputs[1:])
    old_outer = list(node.inputs[1:])
    seqs, outer = outer[:n_seqs], outer[n_seqs:]
    old_seqs, old_outer = old_outer[:n_seqs], old_outer[n_seqs:]
    states, outer = outer[:n_states], outer[n_states:]
    old_states, old_outer = old_outer[:n_states], old_outer[n_states:]
    untraced, outer = outer[:n_untraced], outer[n_untraced:]
    nit_lengths, non_seqs = outer[:n_nit], outer[n_nit:]
    old_nit_lengths = old_outer[n_untraced : n_untraced + n_nit]
    old_non_seqs = old_outer[n_untraced + n_nit :]
    if any(not isinstance(u.type, RandomType) for u in untraced):
        raise _CannotBatch("an untraced state that is not a random generator")
    if any(_batched(o, v) for o, v in zip(old_nit_lengths, nit_lengths)):
        raise _CannotBatch("an output length that differs between draws")

    inner = list(op.inner_inputs)
    memo: dict[Variable, Variable] = {}
    new_inner: list[Variable] = []
    new_outer: list[Variable] = [new_inputs[0]]

    def batched_inner(old: Variable) -> Variable:
        return TensorType(old.type.dtype, shape=(None, *old.type.shape))()

    # sequences: (batch, time, ...) -> (time, batch, ...)
    for old_seq, seq, inner_seq in zip(old_seqs, seqs, inner[:n_seqs]):
        if _batched(old_seq, seq):
            new_outer.append(pt.moveaxis(seq, 0, 1))
            memo[inner_seq] = batched_inner(inner_seq)
        else:
            new_outer.append(seq)
            memo[inner_seq] = inner_seq.type()
        new_inner.append(memo[inner_seq])
    position = n_seqs
    # traced states, always batched: their buffers (taps + steps, ...) -> (.., batch, ...)
    for old_state, state, taps in zip(old_states, states, state_taps):
        if _batched(old_state, state):
            new_outer.append(pt.moveaxis(state, 0, 1))
        else:
            new_outer.append(
                pt.alloc(pt.expand_dims(state, 1), state.shape[0], n, *state.shape[1:])
            )
        for inner_tap in inner[position : position + taps]:
            memo[inner_tap] = batched_inner(inner_tap)
            new_inner.append(memo[inner_tap])
        position += taps
    for u, inner_u in zip(untraced, inner[position : position + n_untraced]):
        new_outer.append(u)
        memo[inner_u] = inner_u.type()
        new_inner.append(memo[inner_u])
    position += n_untraced
    new_outer.extend(nit_lengths)
    for old_ns, ns, inner_ns in zip(old_non_seqs, non_seqs, inner[position:]):
        new_outer.append(ns)
        memo[inner_ns] = batched_inner(inner_ns) if _batched(old_ns, ns) else inner_ns.type()
        new_inner.append(memo[inner_ns])
    inner_n = pt.scalar("n", dtype="int64")
    new_inner.append(inner_n)
    new_outer.append(pt.as_tensor_variable(n, dtype="int64"))

    inner_outputs = list(op.inner_outputs)
    _batch_nodes(
        inner_outputs,
        memo,
        inner_n,
        label=lambda _: label(node),
        on_fallback=_raise_cannot,
        after_rv=None,
        inputs=list(op.inner_inputs),
    )
    n_traced = n_states + n_nit
    new_inner_outputs = []
    for i, old_out in enumerate(inner_outputs):
        out = memo.get(old_out, old_out)
        if i < n_traced:
            if not _batched(old_out, out):
                out = pt.alloc(out, inner_n, *out.shape)
            out = out.astype(old_out.type.dtype)
        new_inner_outputs.append(out)

    new_info = dataclasses.replace(info, n_non_seqs=info.n_non_seqs + 1)
    new_op = Scan(
        new_inner,
        new_inner_outputs,
        new_info,
        mode=op.mode,
        truncate_gradient=op.truncate_gradient,
        name=op.name,
        profile=op.profile,
        allow_gc=op.allow_gc,
        strict=op.strict,
    )
    outputs = new_op(*new_outer, return_list=True)
    # traced outputs (time, batch, ...) -> (batch, time, ...)
    return [pt.moveaxis(out, 1, 0) if i < n_traced else out for i, out in enumerate(outputs)]
