"""Compiled PyTensor functions that any thread may call.

A compiled PyTensor function reuses its input and output storage from call to call, and
PyMC's random generators are shared variables reseeded before a call: two threads must not
run one function at once. :class:`CompiledFunction` serializes its calls with a lock, and
:class:`CompileCache` compiles each variant of a function once, whichever thread asks first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import pymc as pm

__all__ = ["CompileCache", "CompiledFunction"]


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
        self._lock = threading.Lock()

    def __call__(self, key: Hashable) -> CompiledFunction:
        function = self._functions.get(key)
        if function is None:
            with self._lock:
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
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._functions)
