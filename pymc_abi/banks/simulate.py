"""Simulation banks: simulations written through xarray to netCDF or zarr, read chunk by chunk.

A bank holds, per simulation, every free variable (constrained), deterministic and observed
variable of the model, plus the flat unconstrained parameters ``_unconstrained`` that the
flows are trained on, all along a leading ``simulation`` dimension. Its attributes hold the
signature of the model it came from (so that a bank is never used with another model), the
number of simulations it was meant to hold and the seed of every chunk; ``_chunk_complete``
marks the chunks that were written in full. An interrupted bank is refused for training and
can be resumed: chunk ``i`` always comes from the ``i``-th child of one ``SeedSequence``, so
a resumed bank is identical to an uninterrupted one. Data are stored with the storage
layer's own checksums (HDF5's Fletcher-32 filter, zarr's CRC32C codec), so damaged chunks
are refused when read, not used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pymc as pm
import xarray as xr

from pymc_abi.banks.store import (
    BANK_FORMAT,
    CHUNK_DIM,
    COMPLETE,
    SIM_DIM,
    UNCONSTRAINED,
    NetCDFWriter,
    Plan,
    ZarrWriter,
    simulate_chunk,
    write_chunks,
)
from pymc_abi.core._arguments import positive
from pymc_abi.core._atomic import claim, partial_path, release, swap_in
from pymc_abi.core.errors import DamagedFileError, IncompleteBankError, ModelChangedError
from pymc_abi.core.seeds import RandomSeed, seed_int
from pymc_abi.model._signature import differences
from pymc_abi.model.simulator import ModelSimulator

__all__ = [
    "BANK_FORMAT",
    "CHUNK_DIM",
    "COMPLETE",
    "SIM_DIM",
    "UNCONSTRAINED",
    "check_bank",
    "open_bank",
    "simulate",
]


def simulate(
    model: pm.Model | None = None,
    *,
    n: int,
    path: str | os.PathLike | None = None,
    chunk_size: int = 10_000,
    random_seed: RandomSeed = None,
    dim_lengths: Mapping[str, int] | None = None,
    data: Mapping[str, np.ndarray] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    client=None,
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
        Simulations drawn and written at a time; peak memory is about one chunk. Chunk ``i``
        is drawn from its own seed, so the bank does not depend on how it was written.
    random_seed : int, optional
        Makes the bank reproducible.
    dim_lengths, data : dict, optional
        Passed to :meth:`ModelSimulator.sample`.
    overwrite : bool, default False
        Replace an existing file at ``path``. The new bank is written beside it and takes
        its place only once complete, so an interruption leaves the old one intact.
    resume : bool, default False
        Complete an interrupted bank at ``path``: only its unfinished chunks are simulated,
        with the seeds they would have had, so the result is identical to an uninterrupted
        run. Give the arguments that started it (``n``, ``chunk_size``, ``dim_lengths``,
        ``data``; the seed is read from the file).
    client : dask.distributed.Client, optional
        Simulate on a Dask cluster: each chunk is simulated on a worker (which compiles the
        model once per call) and written by that worker straight into the ``.zarr`` store at
        ``path``, which every worker must be able to reach (a shared filesystem); nothing
        is gathered on the client. The bank is identical, bit for bit, to the one simulated
        here, whatever the number of workers or the order in which chunks finish. A chunk
        whose worker dies is simulated again elsewhere; an interrupted job is completed
        with ``resume=True`` (with a client or without). Needs ``pip install
        "pymc-abi[distributed]"``.
    progressbar : bool, default True

    Returns
    -------
    xarray.Dataset
        The bank, opened lazily when written to disk. Train on it with
        ``abi.fit(simulations=bank_or_path)``; reuse it across fits and architectures.

    Raises
    ------
    FileExistsError
        If ``path`` exists and neither ``overwrite`` nor ``resume`` is set.

    Examples
    --------
    >>> with model:  # doctest: +SKIP
    ...     abi.simulate(n=200_000, path="bank.nc", random_seed=1)
    ...     amortizer = abi.fit(simulations="bank.nc", epochs=20)
    """
    model = pm.modelcontext(model)
    n, chunk_size = positive("n", n), positive("chunk_size", chunk_size)
    if overwrite and resume:
        raise ValueError("overwrite=True replaces a bank, resume=True completes it: choose one.")
    if client is not None and (path is None or Path(path).suffix != ".zarr"):
        raise ValueError(
            "With client=, the workers write their chunks straight into a zarr store: give a "
            "path ending in .zarr that every worker can reach."
        )
    sim = ModelSimulator(model) if client is None else None  # the workers compile their own
    entropy = seed_int(random_seed)
    if path is None:
        if resume:
            raise ValueError("resume=True completes a bank on disk: give its path.")
        plan = Plan(model, n, chunk_size, entropy, dim_lengths, data)
        chunks = [simulate_chunk(sim, plan, i, dim_lengths, data) for i in range(len(plan.sizes))]
        ds = xr.concat(chunks, dim=SIM_DIM, data_vars="all")
        ds[COMPLETE] = ((CHUNK_DIM,), np.ones(len(plan.sizes), dtype="int8"))
        ds.attrs.update(plan.attrs())
        return ds

    path = Path(path)
    writer_class = ZarrWriter if path.suffix == ".zarr" else NetCDFWriter
    if resume:
        if not path.exists():
            raise FileNotFoundError(f"No bank at {path} to resume.")
        writer = writer_class.reopen(path)
        attrs = writer.attrs
        plan = Plan(model, n, chunk_size, int(attrs["pymc_abi_seed"]), dim_lengths, data)
        plan.check_resumable(attrs, path)
        if client is not None:
            from pymc_abi.banks.cluster import simulate_on_cluster

            todo = writer.incomplete()
            writer.close()
            simulate_on_cluster(
                client, model, plan, path, todo, dim_lengths, data, progressbar, create=False
            )
        else:
            write_chunks(sim, plan, writer, writer.incomplete(), dim_lengths, data, progressbar)
        return open_bank(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} exists. Pass overwrite=True to replace it, or resume=True to complete "
            "an interrupted bank."
        )
    plan = Plan(model, n, chunk_size, entropy, dim_lengths, data)
    # a replaced bank is written beside the old one and swapped in once complete; a new
    # one is written in place (resume=True completes it there), on a path claimed first
    target = partial_path(path) if overwrite else path
    if not overwrite:
        claim(path, folder=path.suffix == ".zarr")
    try:
        if client is not None:
            from pymc_abi.banks.cluster import simulate_on_cluster

            every = range(len(plan.sizes))
            simulate_on_cluster(
                client, model, plan, target, every, dim_lengths, data, progressbar, create=True
            )
        else:
            first = simulate_chunk(sim, plan, 0, dim_lengths, data)
            writer = writer_class.create(target, first, plan)
            rest = range(1, len(plan.sizes))
            write_chunks(sim, plan, writer, rest, dim_lengths, data, progressbar, first)
    except BaseException:
        if not overwrite:
            release(path)  # nothing written yet: the path is free again
        raise
    if overwrite:
        swap_in(target, path, overwrite=True)
    return open_bank(path)


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
        If the file cannot be read as netCDF or zarr. Whether it is a complete bank of the
        right model is checked when training on it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No simulation bank at {path}.")
    try:
        if path.suffix == ".zarr":
            return xr.open_zarr(path, consolidated=False)
        return xr.open_dataset(path, engine="h5netcdf")
    except Exception as err:
        raise DamagedFileError(f"{path} is not a readable simulation bank: {err}") from err


def check_bank(
    bank: xr.Dataset, signature: Mapping, needed: Iterable[str], shapes: Mapping
) -> None:
    """Raise a clear error if a bank is incomplete, belongs to another model or lacks data.

    Parameters
    ----------
    bank : xarray.Dataset
    signature : dict
        The signature of the model (and covariates, varying dims) to train.
    needed : iterable of str
        Variables the networks read.
    shapes : dict
        Expected shape per simulation of fixed-size variables.
    """
    found = bank.attrs.get("pymc_abi_bank_format")
    if found != BANK_FORMAT:
        raise ValueError(
            "The simulations are not a pymc-abi bank of this format (made by abi.simulate, "
            f"format {BANK_FORMAT}); found format {found!r}. Simulate the bank again."
        )
    saved = json.loads(bank.attrs.get("pymc_abi_signature", "{}"))
    changed = differences(saved, signature)
    if changed:
        raise ModelChangedError(
            "The simulation bank was made from another model: "
            + "; ".join(changed)
            + ". Simulate a new bank for this model."
        )
    if COMPLETE not in bank.variables:
        raise IncompleteBankError(
            f"The simulation bank lacks '{COMPLETE}'; it is not a complete bank."
        )
    flags = np.asarray(bank[COMPLETE].values)
    total = int(bank.attrs.get("pymc_abi_simulations", bank.sizes[SIM_DIM]))
    if not flags.all():
        chunk = int(bank.attrs.get("pymc_abi_chunk_size", 1))
        sizes = [min(chunk, total - s) for s in range(0, total, chunk)]
        done = int(sum(s for s, f in zip(sizes, flags) if f))
        raise IncompleteBankError(
            f"The simulation bank is incomplete: {done:,} of {total:,} simulations "
            f"({int(flags.sum())} of {len(flags)} chunks) were written; it was interrupted. "
            "Complete it with abi.simulate(..., path=..., resume=True) and the same arguments."
        )
    if bank.sizes[SIM_DIM] != total:
        raise DamagedFileError(
            f"The simulation bank holds {bank.sizes[SIM_DIM]:,} simulations but was meant to "
            f"hold {total:,}; it is damaged."
        )
    missing = [name for name in [UNCONSTRAINED, *needed] if name not in bank.variables]
    if missing:
        raise IncompleteBankError(
            f"The simulation bank lacks the variables {missing}; it is incomplete."
        )
    for name, shape in shapes.items():
        got = tuple(bank[name].shape[1:])
        if got != tuple(shape):
            raise ValueError(
                f"Bank variable '{name}' has shape {got} per simulation; the amortizer expects "
                f"{tuple(shape)}."
            )
