"""Amortizer and comparator files: what :meth:`Amortizer.save` and
:meth:`ModelComparator.save` write and their ``load`` read.

One file per amortizer (or comparator), written by :func:`torch.save` and read with
``weights_only=True`` (weights and plain data, never code)::

    {"format": "pymc-abi", "version": FORMAT_VERSION,
     "signature": the model's signature (what the amortizer was trained on); for a
                  comparator, one per model: {model name: signature},
     "config": Amortizer.config or ModelComparator.config (networks and data description,
               plain data); config["kind"] is "amortizer" (flat or two-level; files
               written before kinds existed have none) or "comparator",
     "state": the networks' state_dict (on the CPU),
     "history": History.to_dict()}

:func:`write` writes one atomically; :func:`read` (an amortizer) and :func:`read_comparator`
read one back and check it (a pymc-abi file of this kind and format version, whose
configuration its weights support, for these models). Rebuilding the amortizer or
comparator from what they return is the job of its ``load``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pymc as pm
import torch

from pymc_abi.core._arguments import flag
from pymc_abi.core._atomic import partial_path
from pymc_abi.core.errors import DamagedFileError, ModelChangedError, ModelChangedWarning
from pymc_abi.model._signature import differences, model_signature

__all__ = [
    "FORMAT_VERSION",
    "SavedAmortizer",
    "SavedComparator",
    "read",
    "read_comparator",
    "write",
]

FORMAT_VERSION = 2  # 2: the model signature replaces the structural fingerprint

# a saved configuration may ask for layers this wide even if its weights look smaller
_SMALL_WIDTH = 1024


# config["kind"]: what the file holds, and the loader that reads it
_LOADERS = {"amortizer": "Amortizer.load", "comparator": "ModelComparator.load"}
_WHAT = {"amortizer": "amortizer", "comparator": "model comparator"}
_A = {"amortizer": "an amortizer", "comparator": "a model comparator"}


class SavedAmortizer(NamedTuple):
    """The checked contents of an amortizer file."""

    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    history: dict[str, Any]


class SavedComparator(NamedTuple):
    """The checked contents of a comparator file."""

    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    history: dict[str, Any]


def write(
    path: str | Path,
    *,
    config: Mapping,
    signature: Mapping,
    state: Mapping[str, torch.Tensor],
    history: Mapping,
) -> None:
    """Write an amortizer or comparator file; see :meth:`Amortizer.save` and
    :meth:`ModelComparator.save`.

    ``config["kind"]`` says which (``"amortizer"`` if absent); a comparator's ``signature``
    is ``{model name: signature}``. The file is written beside ``path`` and moved into
    place once complete, so a reader never sees half a file and an interrupted save leaves
    the previous file intact.
    """
    config = {**config, "kind": config.get("kind", "amortizer")}
    if (
        config.get("inference_network", "") is None
        or "custom" in config.get("summary_kinds", {}).values()
    ):
        raise ValueError(
            f"Only {_WHAT.get(config['kind'], config['kind'])}s built from named networks can "
            "be saved; save a custom module's state_dict yourself."
        )
    blob = {
        "format": "pymc-abi",
        "version": FORMAT_VERSION,
        "signature": signature,
        "config": config,
        "state": {k: v.detach().cpu() for k, v in state.items()},
        "history": history,
    }
    blob["checksum"] = _checksum(blob)
    path = _file_path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory: save to a file path in it.")
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"The directory {path.parent} does not exist: create it first, then save there."
        )
    partial = partial_path(path)
    try:
        # created here, exclusively, never through a link planted at the partial name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(partial, flags, 0o644), "wb") as file:
            torch.save(blob, file)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def read(path: str | Path, model: pm.Model, *, allow_model_change: bool = False) -> SavedAmortizer:
    """Read an amortizer file and check it; see :meth:`Amortizer.load`.

    Raises
    ------
    ValueError
        If the file is not a pymc-abi amortizer, comes from an incompatible version, holds
        a configuration its weights do not support, or was trained on another model (unless
        ``allow_model_change``, which warns instead).
    """
    blob = _read_blob(path)
    config = blob["config"]
    _check_kind(config, "amortizer", path)
    _check_saved_sizes(config, blob["state"], path)
    _check_model(
        blob["signature"], config, model, path, flag("allow_model_change", allow_model_change)
    )
    return SavedAmortizer(config, blob["state"], blob["history"])


def read_comparator(
    path: str | Path, models: Mapping[str, pm.Model], *, allow_model_change: bool = False
) -> SavedComparator:
    """Read a comparator file and check it; see :meth:`ModelComparator.load`.

    Raises
    ------
    ValueError
        If the file is not a pymc-abi comparator, comes from an incompatible version, holds
        a configuration its weights do not support, compares models of other names, or one
        of its models differs from the one given by that name (unless
        ``allow_model_change``, which warns instead).
    """
    if not isinstance(models, Mapping):
        raise TypeError(
            "models must be a dict of the names to the PyMC models the comparator was "
            f"trained on; got {type(models).__name__}."
        )
    blob = _read_blob(path, "comparator")
    config = blob["config"]
    _check_kind(config, "comparator", path)
    _check_saved_sizes(config, blob["state"], path)
    saved = list(config["names"])
    if set(models) != set(saved):
        missing = [n for n in saved if n not in models]
        unknown = [n for n in models if n not in saved]
        detail = [f"missing {missing}"] * bool(missing) + [f"unknown {unknown}"] * bool(unknown)
        raise ValueError(
            f"{path} compares the models {saved}; got {list(models)} ({'; '.join(detail)}). "
            "Give the models it was trained on, by the names they had."
        )
    allow_model_change = flag("allow_model_change", allow_model_change)
    for name in saved:
        _check_model(blob["signature"][name], config, models[name], path, allow_model_change, name)
    return SavedComparator(config, blob["state"], blob["history"])


def check_saved_covariates(covariates, config: Mapping, path) -> None:
    """Refuse ``load(covariates=...)`` that is not a dict, or names a covariate the saved
    object was not trained to draw (it would be ignored)."""
    if covariates is None:
        return
    if not isinstance(covariates, Mapping):
        raise TypeError(
            f"covariates must be a dict of covariate names to the functions that drew them, "
            f"got {type(covariates).__name__}."
        )
    unknown = sorted(set(covariates) - set(config.get("covariates", ())))
    if unknown:
        raise ValueError(
            f"covariates names {unknown}, which {path} was not trained to draw per dataset "
            f"(its covariates: {list(config.get('covariates', ())) or 'none'})."
        )


def _check_kind(config: Mapping, expected: str, path) -> None:
    """Refuse a file of another kind, naming the loader that reads it."""
    kind = config.get("kind", "amortizer") if isinstance(config, Mapping) else None
    if kind == expected:
        return
    if kind in _LOADERS:
        raise ValueError(
            f"{path} holds {_A[kind]}, not {_A[expected]}: load it with {_LOADERS[kind]}."
        )
    raise ValueError(f"{path} holds a pymc-abi file of unknown kind {kind!r}.")


def _file_path(path) -> Path:
    """``path`` as a Path, refusing what is no file name (``None``, ``""``, a number)."""
    if not isinstance(path, str | os.PathLike) or not str(path).strip():
        raise TypeError(f"path must be a file path (a str or a pathlib.Path), got {path!r}.")
    return Path(path)


def _read_blob(path, kind: str = "amortizer") -> dict:
    path = _file_path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a saved pymc-abi file.")
    try:
        # weights and plain data only: never code (torch >= 2.6 makes this safe)
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise DamagedFileError(
            f"{path} is not a readable pymc-abi {_WHAT[kind]} file ({type(err).__name__}): "
            f"it is damaged or not {_A[kind]}. pymc-abi reads weights and plain data only."
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != "pymc-abi":
        raise ValueError(f"{path} is not a pymc-abi {_WHAT[kind]} file.")
    if blob.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} was saved in format version {blob.get('version')}; this pymc-abi "
            f"reads version {FORMAT_VERSION}. Retrain, or load it with the version that "
            "saved it."
        )
    _check_contents(blob, path, kind)
    return blob


def _checksum(blob: Mapping) -> str:
    """SHA-256 over the configuration, the model signature and every weight's bytes."""
    digest = hashlib.sha256()
    digest.update(json.dumps(blob["config"], sort_keys=True, default=repr).encode())
    digest.update(json.dumps(blob["signature"], sort_keys=True, default=repr).encode())
    for name in sorted(blob["state"]):
        tensor = blob["state"][name].contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _check_contents(blob: Mapping, path, kind: str) -> None:
    """Refuse a file whose fields are malformed, whose checksum does not match (a flipped
    bit, an edited field) or whose weights are not finite, before anything is built."""
    damaged = f"{path} is a damaged pymc-abi {_WHAT[kind]} file"
    config, state = blob.get("config"), blob.get("state")
    if (
        not isinstance(config, dict)
        or not isinstance(state, dict)
        or not isinstance(blob.get("signature"), dict)
        or not isinstance(blob.get("history"), dict)
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise DamagedFileError(f"{damaged}: its configuration or weights are malformed.")
    if "checksum" in blob:  # files of pymc-abi before checksums have none
        try:
            expected = _checksum(blob)
        except Exception:
            expected = None
        if blob["checksum"] != expected:
            raise DamagedFileError(
                f"{damaged}: its checksum does not match its contents (a corrupted copy, or "
                "an edited file). Save it again from the amortizer, or retrain."
            )
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise DamagedFileError(f"{damaged}: weight '{name}' holds NaN or inf. Retrain.")


def _check_saved_sizes(config: Mapping, state: Mapping, path) -> None:
    """Refuse a saved configuration that asks for more than its weights hold, before any
    network is built (a crafted file must not make ``load`` allocate gigabytes)."""
    widest = max((max(t.shape, default=1) for t in state.values()), default=1)
    limit = max(widest, _SMALL_WIDTH)
    hidden = config.get("hidden_features", [])
    sizes = [*hidden, config.get("summary_features") or 1] if isinstance(hidden, list) else [0]
    transforms = config.get("transforms") or 1
    if (
        len(sizes) > len(state) + 1  # depth is bounded by the weights too
        or any(not isinstance(v, int) or not 1 <= v <= limit for v in sizes)
        or not isinstance(transforms, int)
        or not 1 <= transforms <= len(state)
    ):
        raise DamagedFileError(
            f"{path} holds a network configuration ({dict(config)}) that its saved weights "
            "do not support: the file is damaged or was altered."
        )


def _check_model(
    saved_signature, config, model, path, allow_model_change: bool, name: str | None = None
) -> None:
    """Refuse (or, with ``allow_model_change``, warn about) a model other than the saved one;
    ``name``: the model's name in a comparator."""
    current = model_signature(
        model, covariates=config["covariates"], varying_dims=config["dim_lengths"]
    )
    changed = differences(saved_signature, current)
    if not changed:
        return
    listing = "; ".join(changed)
    if name is None:
        subject, result = "was trained on another model", "its posterior is that of the old model"
    else:
        subject = f"was trained on another model '{name}'"
        result = "its probabilities are those of the old models"
    if not allow_model_change:
        raise ModelChangedError(
            f"{path} {subject}: {listing}. Load it with the model "
            "it was trained on, or pass allow_model_change=True to reuse its weights "
            "as a start for training on this one."
        )
    warnings.warn(
        f"Loading {path} for a changed model{'' if name is None else f' {name!r}'} "
        f"({listing}): {result} until it is trained on this one.",
        ModelChangedWarning,
        stacklevel=4,  # the caller of Amortizer.load (or ModelComparator.load)
    )
