"""Amortizer files: what :meth:`Amortizer.save` writes and :meth:`Amortizer.load` reads.

One file per amortizer, written by :func:`torch.save` and read with ``weights_only=True``
(weights and plain data, never code)::

    {"format": "pymc-abi", "version": FORMAT_VERSION,
     "signature": the model's signature (what the amortizer was trained on),
     "config": Amortizer.config (networks and data description, plain data),
     "state": the networks' state_dict (on the CPU),
     "history": History.to_dict()}

:func:`write` writes one atomically; :func:`read` reads one back and checks it (a pymc-abi
file, of this format version, whose configuration its weights support, for this model).
Rebuilding the amortizer from what :func:`read` returns is :meth:`Amortizer.load`'s job.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pymc as pm
import torch

from pymc_abi._signature import differences, model_signature

__all__ = ["FORMAT_VERSION", "SavedAmortizer", "read", "write"]

FORMAT_VERSION = 2  # 2: the model signature replaces the structural fingerprint

# a saved configuration may ask for layers this wide even if its weights look smaller
_SMALL_WIDTH = 1024


class SavedAmortizer(NamedTuple):
    """The checked contents of an amortizer file."""

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
    """Write an amortizer file; see :meth:`Amortizer.save`.

    The file is written beside ``path`` and moved into place once complete, so a reader
    never sees half a file and an interrupted save leaves the previous file intact.
    """
    if config["inference_network"] is None or "custom" in config.get("summary_kinds", {}).values():
        raise ValueError(
            "Only amortizers built from named networks can be saved; save a custom "
            "module's state_dict yourself."
        )
    blob = {
        "format": "pymc-abi",
        "version": FORMAT_VERSION,
        "signature": signature,
        "config": config,
        "state": {k: v.cpu() for k, v in state.items()},
        "history": history,
    }
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        torch.save(blob, partial)
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
    _check_saved_sizes(config, blob["state"], path)
    _check_model(blob["signature"], config, model, path, allow_model_change)
    return SavedAmortizer(config, blob["state"], blob["history"])


def _read_blob(path) -> dict:
    try:
        # weights and plain data only: never code (torch >= 2.6 makes this safe)
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(
            f"{path} is not a readable pymc-abi amortizer file ({type(err).__name__}): it "
            "is damaged or not an amortizer. pymc-abi reads weights and plain data only."
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != "pymc-abi":
        raise ValueError(f"{path} is not a pymc-abi amortizer file.")
    if blob.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} was saved in format version {blob.get('version')}; this pymc-abi "
            f"reads version {FORMAT_VERSION}. Retrain, or load it with the version that "
            "saved it."
        )
    return blob


def _check_saved_sizes(config: Mapping, state: Mapping, path) -> None:
    """Refuse a saved configuration that asks for more than its weights hold, before any
    network is built (a crafted file must not make ``load`` allocate gigabytes)."""
    widest = max((max(t.shape, default=1) for t in state.values()), default=1)
    limit = max(widest, _SMALL_WIDTH)
    sizes = [*config.get("hidden_features", []), config.get("summary_features") or 1]
    transforms = config.get("transforms") or 1
    if (
        any(not isinstance(v, int) or not 1 <= v <= limit for v in sizes)
        or not isinstance(transforms, int)
        or not 1 <= transforms <= len(state)
    ):
        raise ValueError(
            f"{path} holds a network configuration ({dict(config)}) that its saved weights "
            "do not support: the file is damaged or was altered."
        )


def _check_model(saved_signature, config, model, path, allow_model_change: bool) -> None:
    """Refuse (or, with ``allow_model_change``, warn about) a model other than the saved one."""
    current = model_signature(
        model, covariates=config["covariates"], varying_dims=config["dim_lengths"]
    )
    changed = differences(saved_signature, current)
    if not changed:
        return
    listing = "; ".join(changed)
    if not allow_model_change:
        raise ValueError(
            f"{path} was trained on another model: {listing}. Load it with the model "
            "it was trained on, or pass allow_model_change=True to reuse its weights "
            "as a start for training on this one."
        )
    warnings.warn(
        f"Loading {path} for a changed model ({listing}): its posterior is that of the "
        "old model until it is trained on this one.",
        UserWarning,
        stacklevel=4,  # the caller of Amortizer.load
    )
