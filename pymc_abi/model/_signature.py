"""A model's signature: everything that changes its joint distribution, part by part.

An amortizer (or a simulation bank) is only valid for the model it was trained on. Names
and distribution types are not enough: ``Normal(0, 1)`` and ``Normal(50, 100)`` priors, a
likelihood scale of ``sigma`` or ``5 * sigma``, 20 rows of data or 30, give other
posteriors. The signature holds, per named variable (free, observed, deterministic,
potential), a digest of its graph down to the other named variables, with every constant's
value; the value transforms; the dim lengths; and the values of the ``pm.Data`` containers
the networks do not condition on. Two signatures are compared part by part, so a mismatch
names what differs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

import numpy as np
import pymc as pm
import pytensor
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.traversal import io_toposort
from pytensor.tensor.random.type import RandomType

from pymc_abi.model._model import observed_containers, observed_rvs

__all__ = ["differences", "model_signature"]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _value_digest(value) -> str:
    value = np.ascontiguousarray(value)
    if value.dtype.kind == "O":  # e.g. None (no size): the bytes would be pointers
        return _digest(repr(value.tolist()).encode())
    return _digest(f"{value.dtype.str}{value.shape}".encode() + value.tobytes())


def _op_text(op) -> str:
    props = getattr(op, "__props__", None)
    if props:
        return f"{type(op).__name__}{tuple(repr(getattr(op, p)) for p in props)}"
    return str(op)


def _graph_digest(var: Variable, leaves: Mapping[Variable, str]) -> str:
    """Digest of the graph of ``var`` down to the named ``leaves`` (referred to by name)."""
    if var.owner is None:
        return _digest(_leaf_text(var, leaves).encode())
    stop = [v for v in leaves if v is not var]
    nodes = io_toposort([*stop], [var])
    index: dict[Variable, str] = {}
    lines = []
    for k, node in enumerate(nodes):
        inputs = []
        for inp in node.inputs:
            if inp in index:
                inputs.append(index[inp])
            else:
                inputs.append(_leaf_text(inp, leaves))
        lines.append(f"{k}:{_op_text(node.op)}({','.join(inputs)})")
        for j, out in enumerate(node.outputs):
            index[out] = f"n{k}.{j}"
    lines.append(f"out:{index.get(var, _leaf_text(var, leaves))}")
    return _digest("\n".join(lines).encode())


def _leaf_text(var: Variable, leaves: Mapping[Variable, str]) -> str:
    if var in leaves:
        return f"<{leaves[var]}>"
    if isinstance(var.type, RandomType):
        return "<rng>"
    if isinstance(var, Constant):
        return f"const[{_value_digest(var.data)}]"
    if isinstance(var, SharedVariable):
        return f"shared:{var.name}[{_value_digest(var.get_value(borrow=True))}]"
    return f"input:{var.type}"


def model_signature(
    model: pm.Model,
    *,
    covariates: Iterable[str] = (),
    varying_dims: Iterable[str] = (),
    data: Mapping[str, np.ndarray] | None = None,
    dim_lengths: Mapping[str, int] | None = None,
) -> dict:
    """The signature of ``model``, as plain JSON-able data.

    Parameters
    ----------
    model : pm.Model
    covariates : iterable of str
        ``pm.Data`` the networks condition on: their values are not part of the model.
    varying_dims : iterable of str
        Dims whose length varies from dataset to dataset: their length is not part of it.
    data, dim_lengths : dict, optional
        Values of ``pm.Data`` and dim lengths that replace the model's own (a simulation
        bank drawn with other fixed data or sizes).

    Returns
    -------
    dict
        ``variables`` (name -> graph digest), ``describe`` (name -> PyMC's text of the
        variable, for messages), ``transforms``, ``dims`` (name -> length), ``data``
        (name -> digest of the value) and ``versions`` (PyMC and PyTensor).
    """
    covariates, varying_dims = set(covariates), set(varying_dims)
    observed = observed_rvs(model)
    named = [*model.free_RVs, *observed, *model.deterministics, *model.potentials]
    leaves: dict[Variable, str] = {v: v.name for v in named}
    leaves.update({v: f"data:{v.name}" for v in model.data_vars})
    leaves.update(
        {length: f"dim:{dim}" for dim, length in model.dim_lengths.items() if length.owner is None}
    )
    variables, describe = {}, {}
    for var in named:
        variables[var.name] = _graph_digest(var, leaves)
        describe[var.name] = _describe(var)
    containers = observed_containers(model)
    return {
        "variables": variables,
        "describe": describe,
        "transforms": {
            rv.name: _op_text(model.rvs_to_transforms[rv])
            for rv in model.free_RVs
            if model.rvs_to_transforms.get(rv) is not None
        },
        "dims": {
            dim: int((dim_lengths or {}).get(dim, _length(length)))
            for dim, length in model.dim_lengths.items()
            if dim not in varying_dims
        },
        "data": {
            v.name: _value_digest(np.asarray((data or {}).get(v.name, v.get_value()), v.dtype))
            for v in model.data_vars
            if v.name not in covariates and v.name not in containers
        },
        "versions": {"pymc": pm.__version__, "pytensor": pytensor.__version__},
    }


def _length(length: Variable) -> int:
    if isinstance(length, SharedVariable):
        return int(length.get_value())
    if isinstance(length, Constant):
        return int(length.data)
    return int(length.eval())


def _describe(var) -> str:
    try:
        return var.str_repr() if hasattr(var, "str_repr") else var.name
    except Exception:  # a text for messages only
        return var.name


def differences(saved: Mapping, current: Mapping) -> list[str]:
    """What differs between two signatures, one line per difference."""
    lines = []
    old_vars, new_vars = saved.get("variables", {}), current.get("variables", {})
    for name in sorted(old_vars.keys() - new_vars.keys()):
        lines.append(f"variable '{name}' is gone")
    for name in sorted(new_vars.keys() - old_vars.keys()):
        lines.append(f"variable '{name}' is new")
    for name in sorted(old_vars.keys() & new_vars.keys()):
        if old_vars[name] != new_vars[name]:
            old = saved.get("describe", {}).get(name, "?")
            new = current.get("describe", {}).get(name, "?")
            detail = f"{old} -> {new}" if old != new else f"{new}, with other constants or shapes"
            lines.append(f"variable '{name}' changed: {detail}")
    for key, what in (("transforms", "transform of"), ("dims", "length of dim")):
        old, new = saved.get(key, {}), current.get(key, {})
        for name in sorted(old.keys() | new.keys()):
            if old.get(name) != new.get(name):
                lines.append(f"{what} '{name}': {old.get(name)} -> {new.get(name)}")
    old, new = saved.get("data", {}), current.get("data", {})
    for name in sorted(old.keys() | new.keys()):
        if old.get(name) != new.get(name):
            change = "is new" if name not in old else "is gone" if name not in new else "changed"
            lines.append(f"pm.Data '{name}' {change}")
    if lines and saved.get("versions") != current.get("versions"):
        lines.append(
            f"(saved with {_versions(saved)}, loaded with {_versions(current)}: graphs can "
            "differ between versions of PyMC and PyTensor for the same model)"
        )
    return lines


def _versions(signature: Mapping) -> str:
    versions = signature.get("versions") or {}
    return ", ".join(f"{k} {v}" for k, v in versions.items()) or "unknown versions"


def to_json(signature: Mapping) -> str:
    """The signature as a JSON string (for file attributes)."""
    return json.dumps(signature, sort_keys=True)
