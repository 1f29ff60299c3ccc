"""Compiled PyTensor functions that any thread may call.

A compiled PyTensor function reuses its input and output storage from call to call, and
PyMC's random generators are shared variables reseeded before a call: two threads must not
run one function at once. :class:`CompiledFunction` serializes its calls with a lock, and
:class:`CompileCache` compiles each variant of a function once, whichever thread asks first.
:func:`compile_batched` turns graphs of one draw into a function of a batch of draws (used
by :class:`~pymc_abi.ParameterSpace` and :class:`~pymc_abi.JointLogp`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

import pymc as pm
from pytensor.compile.ops import ViewOp
from pytensor.graph.basic import Variable
from pytensor.graph.replace import graph_replace
from pytensor.graph.traversal import ancestors

from pymc_abi.model._vectorize import vectorize_graph

if TYPE_CHECKING:
    from pymc_abi.model._model import ModelInputs

__all__ = ["CompileCache", "CompiledFunction", "compile_batched", "strip_views"]

#: held while any graph is built and compiled, in any cache: PyTensor's configuration is
#: global, and its rewrites switch flags with ``config.change_flags``, which is not thread
#: safe (two threads inside it at once can leave ``cxx`` set to "" for the whole process:
#: every later function then compiles without C, and PyTensor 2's "FAST_RUN" mode for that
#: case is a tuple that ``pytensor.function`` refuses)
BUILDING = threading.RLock()


class CompiledFunction:
    """``pm.pytensorf.compile(inputs, outputs, **kwargs)``, called under a lock.

    ``lock`` is public so that a caller can hold it over more than one step (reseeding the
    function's random generators, then calling it).
    """

    def __init__(self, inputs: Sequence, outputs, **kwargs: Any):
        self.fn = pm.pytensorf.compile(list(inputs), outputs, **kwargs)
        self.lock = threading.RLock()

    def __call__(self, *args: Any):
        with self.lock:
            return self.fn(*args)

    # copies (copy.deepcopy of an amortizer) get a lock of their own
    def __getstate__(self) -> dict:
        return {"fn": self.fn}

    def __setstate__(self, state: dict) -> None:
        self.fn = state["fn"]
        self.lock = threading.RLock()


class CompileCache:
    """Compiled functions by key, each built once by ``build(key)``."""

    def __init__(self, build: Callable[[Hashable], CompiledFunction]):
        self._build = build
        self._functions: dict[Hashable, CompiledFunction] = {}

    def __call__(self, key: Hashable) -> CompiledFunction:
        function = self._functions.get(key)
        if function is None:
            with BUILDING:
                function = self._functions.get(key)
                if function is None:
                    function = self._functions[key] = self._build(key)
        return function

    def __contains__(self, key: Hashable) -> bool:
        return key in self._functions

    def __getstate__(self) -> dict:
        return {"_build": self._build, "_functions": dict(self._functions)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self._functions)


def compile_batched(
    model_inputs: ModelInputs,
    outputs: Sequence[Variable],
    single_inputs: Sequence[Variable],
    batch_inputs: Sequence[Variable],
    batched: frozenset[str],
    *,
    shared_inputs: Sequence[Variable] = (),
    mode=None,
) -> CompiledFunction:
    """Compile graphs of one draw as a function of a batch of draws.

    The model's ``pm.Data`` containers and shared dim lengths become inputs (those named in
    ``batched`` with a leading batch axis), each ``single_inputs[i]`` is replaced by
    ``batch_inputs[i]`` (one more leading axis), and the graphs are vectorized over it.

    Parameters
    ----------
    model_inputs : ModelInputs
        The model's data containers and dim lengths.
    outputs : sequence of Variable
        Graphs of one draw.
    single_inputs, batch_inputs : sequence of Variable
        The inputs of one draw, and the batched inputs that replace them.
    batched : frozenset of str
        Data containers given one value per draw.
    shared_inputs : sequence of Variable
        Further inputs, the same for every draw of the batch.
    mode : pytensor Mode, optional
        PyTensor's default (C) mode unless given.

    Returns
    -------
    CompiledFunction
        Called with ``(*batch_inputs, *shared_inputs, *model input values)``, the values
        as :meth:`ModelInputs.resolve` returns them.
    """
    replace, model_vars = model_inputs.replacements()
    outputs = graph_replace(list(outputs), replace, strict=False)
    vec_replace = dict(zip(single_inputs, batch_inputs))
    final_inputs = []
    for var in model_vars:
        if var.name in batched:
            vec_replace[var] = model_inputs.data_input(var.name, batched=True)
        final_inputs.append(vec_replace.get(var, var))
    # a scan stays one scan over the batch (PyTensor's Blockwise(Scan) loops over its rows)
    outputs = vectorize_graph(strip_views(outputs), vec_replace, batch_inputs[0].shape[0])
    return CompiledFunction(
        [*batch_inputs, *shared_inputs, *final_inputs],
        outputs,
        on_unused_input="ignore",
        **({} if mode is None else {"mode": mode}),
    )


def strip_views(outputs: list[Variable]) -> list[Variable]:
    """Drop identity ``ViewOp`` nodes, which vectorize to a per-row Python loop."""
    views = {
        v: v.owner.inputs[0]
        for v in ancestors(outputs)
        if v.owner is not None and isinstance(v.owner.op, ViewOp)
    }
    return graph_replace(outputs, views, strict=False) if views else outputs
