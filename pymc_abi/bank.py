"""Simulation banks: simulations written through xarray to netCDF or zarr, read chunk by chunk.

A bank holds, per simulation, every free variable (constrained), deterministic and observed
variable of the model, plus the flat unconstrained parameters ``_unconstrained`` that the
flows are trained on, all along a leading ``simulation`` dimension. Its attributes name the
model structure it came from, so that a bank is never used with another model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pymc as pm
import xarray as xr

from pymc_abi._model import fingerprint
from pymc_abi._progress import ProgressBar
from pymc_abi.simulator import ModelSimulator, RandomSeed, _seed_int

__all__ = ["open_bank", "simulate"]

BANK_FORMAT = 1
UNCONSTRAINED = "_unconstrained"
SIM_DIM = "simulation"


def _dims(name: str, value: np.ndarray) -> tuple[str, ...]:
    return (SIM_DIM, *(f"{name}_dim_{i}" for i in range(value.ndim - 1)))


def _chunk_dataset(sim: ModelSimulator, batch: dict[str, np.ndarray]) -> xr.Dataset:
    z = sim.parameters.to_unconstrained({k: batch[k] for k in sim.free_names})
    variables = {name: (_dims(name, v), v) for name, v in batch.items()}
    variables[UNCONSTRAINED] = ((SIM_DIM, "parameter"), z)
    return xr.Dataset(variables, coords={"parameter": sim.parameters.names})


def simulate(
    model: pm.Model | None = None,
    *,
    n: int,
    path: str | os.PathLike | None = None,
    chunk_size: int = 10_000,
    random_seed: RandomSeed = None,
    dim_lengths: Mapping[str, int] | None = None,
    data: Mapping[str, np.ndarray] | None = None,
    progressbar: bool = True,
) -> xr.Dataset:
    """Simulate a bank of ``n`` prior-predictive simulations, optionally written to disk.

    Parameters
    ----------
    model : pm.Model, optional
        ``None`` takes the model from the context.
    n : int
        Number of simulations.
    path : str or path, optional
        Where to write the bank: a ``.zarr`` path writes zarr (needs the ``zarr`` package),
        any other path netCDF-4 (through h5netcdf). ``None`` keeps the bank in memory.
    chunk_size : int, default 10_000
        Simulations drawn and written at a time; peak memory is about one chunk.
    random_seed : int, optional
    dim_lengths, data : dict, optional
        Passed to :meth:`ModelSimulator.sample`.
    progressbar : bool, default True

    Returns
    -------
    xarray.Dataset
        The bank, opened lazily when written to disk. Train on it with
        ``abi.fit(simulations=bank_or_path)``; reuse it across fits and architectures.

    Examples
    --------
    >>> with model:  # doctest: +SKIP
    ...     abi.simulate(n=200_000, path="bank.nc", random_seed=1)
    ...     amortizer = abi.fit(simulations="bank.nc", epochs=20)
    """
    model = pm.modelcontext(model)
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be positive, got {n}.")
    chunk_size = max(1, int(chunk_size))
    sim = ModelSimulator(model)
    seeds = np.random.SeedSequence(_seed_int(random_seed, np.random.default_rng()))
    attrs = {
        "pymc_abi_bank_format": BANK_FORMAT,
        "pymc_abi_fingerprint": fingerprint(model),
    }
    sizes = [min(chunk_size, n - start) for start in range(0, n, chunk_size)]
    chunks = (
        _chunk_dataset(
            sim,
            sim.sample(
                size,
                random_seed=int(child.generate_state(1)[0]),
                dim_lengths=dim_lengths,
                data=data,
            ),
        )
        for size, child in zip(sizes, seeds.spawn(len(sizes)))
    )
    progress = ProgressBar("Simulating", len(sizes), progressbar)
    try:
        if path is None:
            ds = xr.concat(list(progress.wrap(chunks)), dim=SIM_DIM, data_vars="all")
            ds.attrs.update(attrs)
            return ds
        path = Path(path)
        if path.suffix == ".zarr":
            _write_zarr(path, progress.wrap(chunks), attrs)
        else:
            _write_netcdf(path, progress.wrap(chunks), attrs)
    finally:
        progress.close()
    return open_bank(path)


def _write_netcdf(path: Path, chunks: Iterator[xr.Dataset], attrs: dict) -> None:
    """First chunk through xarray (unlimited simulation dim), the rest appended in place."""
    import h5netcdf

    chunks = iter(chunks)
    first = next(chunks)
    first.attrs.update(attrs)
    encoding = {
        name: {"chunksizes": (min(first.sizes[SIM_DIM], 4096), *var.shape[1:])}
        for name, var in first.data_vars.items()
    }
    first.to_netcdf(path, engine="h5netcdf", unlimited_dims=[SIM_DIM], encoding=encoding)
    start = first.sizes[SIM_DIM]
    with h5netcdf.File(path, "a") as f:
        for chunk in chunks:
            stop = start + chunk.sizes[SIM_DIM]
            f.resize_dimension(SIM_DIM, stop)
            for name, var in chunk.data_vars.items():
                f.variables[name][start:stop] = var.values
            start = stop


def _write_zarr(path: Path, chunks: Iterator[xr.Dataset], attrs: dict) -> None:
    try:
        import zarr  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "Writing a .zarr bank needs the zarr package (pip install zarr); or give a .nc path."
        ) from err
    for i, chunk in enumerate(chunks):
        if i == 0:
            chunk.attrs.update(attrs)
            chunk.to_zarr(path, mode="w")
        else:
            chunk.to_zarr(path, append_dim=SIM_DIM)


def open_bank(path: str | os.PathLike) -> xr.Dataset:
    """Open a bank written by :func:`simulate`, lazily (nothing is read until used).

    Parameters
    ----------
    path : str or path
        A netCDF file or a ``.zarr`` folder written by :func:`simulate`.

    Returns
    -------
    xarray.Dataset
        One variable per free, deterministic and observed variable, and
        ``_unconstrained``, along the dim ``simulation``. Pass it (or the path) to
        ``abi.fit(simulations=...)``.

    Raises
    ------
    FileNotFoundError
        If there is nothing at ``path``.
    ValueError
        If the file cannot be read as netCDF or zarr. Whether it is a bank of the right
        model is checked when training on it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No simulation bank at {path}.")
    try:
        if path.suffix == ".zarr":
            return xr.open_zarr(path)
        return xr.open_dataset(path, engine="h5netcdf")
    except Exception as err:
        raise ValueError(f"{path} is not a readable simulation bank: {err}") from err


def check_bank(bank: xr.Dataset, model: pm.Model, needed: list[str], shapes: dict) -> None:
    """Raise a clear error if a bank does not belong to ``model`` or lacks variables."""
    if bank.attrs.get("pymc_abi_bank_format") != BANK_FORMAT:
        raise ValueError(
            "The simulations are not a pymc-abi bank of a known format (made by abi.simulate); "
            f"found format {bank.attrs.get('pymc_abi_bank_format')!r}."
        )
    if bank.attrs.get("pymc_abi_fingerprint") != fingerprint(model):
        raise ValueError(
            "The simulation bank was made from a model with another structure (variables, "
            "distributions, shapes or transforms). Simulate a new bank for this model."
        )
    missing = [name for name in [UNCONSTRAINED, *needed] if name not in bank.variables]
    if missing:
        raise ValueError(f"The simulation bank lacks the variables {missing}; it is incomplete.")
    for name, shape in shapes.items():
        got = tuple(bank[name].shape[1:])
        if got != tuple(shape):
            raise ValueError(
                f"Bank variable '{name}' has shape {got} per simulation; the amortizer expects "
                f"{tuple(shape)}."
            )
