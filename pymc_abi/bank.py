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

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pymc as pm
import xarray as xr

from pymc_abi._arguments import positive
from pymc_abi._atomic import claim, partial_path, release, swap_in
from pymc_abi._progress import ProgressBar
from pymc_abi._signature import differences, model_signature
from pymc_abi.errors import DamagedFileError, IncompleteBankError, ModelChangedError
from pymc_abi.seeds import RandomSeed, seed_int
from pymc_abi.simulator import ModelSimulator

__all__ = ["open_bank", "simulate"]

BANK_FORMAT = 2
UNCONSTRAINED = "_unconstrained"
COMPLETE = "_chunk_complete"
SIM_DIM = "simulation"
CHUNK_DIM = "bank_chunk"
# largest storage chunk along the simulation axis (the unit of a checksum)
_STORAGE_ROWS = 4096


def _dims(name: str, value: np.ndarray) -> tuple[str, ...]:
    return (SIM_DIM, *(f"{name}_dim_{i}" for i in range(value.ndim - 1)))


def _chunk_dataset(sim: ModelSimulator, batch: dict[str, np.ndarray]) -> xr.Dataset:
    z = sim.parameters.to_unconstrained({k: batch[k] for k in sim.free_names})
    variables = {name: (_dims(name, v), v) for name, v in batch.items()}
    variables[UNCONSTRAINED] = ((SIM_DIM, "parameter"), z)
    return xr.Dataset(variables, coords={"parameter": sim.parameters.names})


class _Plan:
    """What a bank is meant to hold: its size, chunks, seeds and the model it comes from."""

    def __init__(self, model, n, chunk_size, entropy, dim_lengths, data):
        self.n = int(n)
        self.chunk_size = int(chunk_size)
        self.entropy = int(entropy)
        self.sizes = [min(self.chunk_size, self.n - s) for s in range(0, self.n, self.chunk_size)]
        self.dim_lengths = {k: int(v) for k, v in (dim_lengths or {}).items()}
        data = {k: np.asarray(v) for k, v in (data or {}).items()}
        batched = {k for k, v in data.items() if v.ndim == model[k].ndim + 1}
        fixed = {k: v for k, v in data.items() if k not in batched}
        self.signature = model_signature(
            model, covariates=batched, data=fixed, dim_lengths=self.dim_lengths
        )
        digest = hashlib.sha256()
        for name in sorted(data):
            digest.update(name.encode() + np.ascontiguousarray(data[name]).tobytes())
        self.data_digest = digest.hexdigest()[:16]

    @property
    def starts(self) -> list[int]:
        return [i * self.chunk_size for i in range(len(self.sizes))]

    def seed(self, i: int) -> int:
        """The seed of chunk ``i``: the ``i``-th child of the bank's seed sequence."""
        child = np.random.SeedSequence(self.entropy, spawn_key=(i,))
        return int(child.generate_state(1)[0])

    def attrs(self) -> dict:
        return {
            "pymc_abi_bank_format": BANK_FORMAT,
            "pymc_abi_signature": json.dumps(self.signature, sort_keys=True),
            "pymc_abi_simulations": self.n,
            "pymc_abi_chunk_size": self.chunk_size,
            "pymc_abi_seed": str(self.entropy),
            "pymc_abi_dim_lengths": json.dumps(self.dim_lengths, sort_keys=True),
            "pymc_abi_data": self.data_digest,
        }

    def check_resumable(self, attrs: Mapping, path: Path) -> None:
        mine = self.attrs()
        for key, label in (
            ("pymc_abi_simulations", "number of simulations"),
            ("pymc_abi_chunk_size", "chunk_size"),
            ("pymc_abi_dim_lengths", "dim_lengths"),
            ("pymc_abi_data", "data"),
        ):
            if str(attrs.get(key)) != str(mine[key]):
                raise ValueError(
                    f"Cannot resume {path}: its {label} ({attrs.get(key)}) differs from this "
                    f"call's ({mine[key]}). Resume with the arguments that started it."
                )
        saved = json.loads(attrs.get("pymc_abi_signature", "{}"))
        changed = differences(saved, self.signature)
        if changed:
            raise ValueError(
                f"Cannot resume {path}: it was started from another model ("
                + "; ".join(changed)
                + ")."
            )


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
        plan = _Plan(model, n, chunk_size, entropy, dim_lengths, data)
        chunks = [_simulate_chunk(sim, plan, i, dim_lengths, data) for i in range(len(plan.sizes))]
        ds = xr.concat(chunks, dim=SIM_DIM, data_vars="all")
        ds[COMPLETE] = ((CHUNK_DIM,), np.ones(len(plan.sizes), dtype="int8"))
        ds.attrs.update(plan.attrs())
        return ds

    path = Path(path)
    writer_class = _ZarrWriter if path.suffix == ".zarr" else _NetCDFWriter
    if resume:
        if not path.exists():
            raise FileNotFoundError(f"No bank at {path} to resume.")
        writer = writer_class.reopen(path)
        attrs = writer.attrs
        plan = _Plan(model, n, chunk_size, int(attrs["pymc_abi_seed"]), dim_lengths, data)
        plan.check_resumable(attrs, path)
        if client is not None:
            from pymc_abi._dask import simulate_on_cluster

            todo = writer.incomplete()
            writer.close()
            simulate_on_cluster(
                client, model, plan, path, todo, dim_lengths, data, progressbar, create=False
            )
        else:
            _write(sim, plan, writer, writer.incomplete(), dim_lengths, data, progressbar)
        return open_bank(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} exists. Pass overwrite=True to replace it, or resume=True to complete "
            "an interrupted bank."
        )
    plan = _Plan(model, n, chunk_size, entropy, dim_lengths, data)
    # a replaced bank is written beside the old one and swapped in once complete; a new
    # one is written in place (resume=True completes it there), on a path claimed first
    target = partial_path(path) if overwrite else path
    if not overwrite:
        claim(path, folder=path.suffix == ".zarr")
    try:
        if client is not None:
            from pymc_abi._dask import simulate_on_cluster

            every = range(len(plan.sizes))
            simulate_on_cluster(
                client, model, plan, target, every, dim_lengths, data, progressbar, create=True
            )
        else:
            first = _simulate_chunk(sim, plan, 0, dim_lengths, data)
            writer = writer_class.create(target, first, plan)
            rest = range(1, len(plan.sizes))
            _write(sim, plan, writer, rest, dim_lengths, data, progressbar, first)
    except BaseException:
        if not overwrite:
            release(path)  # nothing written yet: the path is free again
        raise
    if overwrite:
        swap_in(target, path, overwrite=True)
    return open_bank(path)


def _chunk_data(model, plan: _Plan, i: int, data) -> dict[str, np.ndarray]:
    """The covariates of chunk ``i``: its rows of those given per simulation."""
    start, size = plan.starts[i], plan.sizes[i]
    return {
        k: (np.asarray(v)[start : start + size] if np.ndim(v) == model[k].ndim + 1 else v)
        for k, v in (data or {}).items()
    }


def _simulate_chunk(sim, plan: _Plan, i: int, dim_lengths, data, sliced=False) -> xr.Dataset:
    """Chunk ``i`` of the bank, from its own seed (``sliced``: ``data`` holds only its rows)."""
    chunk_data = data if sliced else _chunk_data(sim.model, plan, i, data)
    return _simulations(sim, plan.sizes[i], plan.seed(i), dim_lengths, chunk_data)


def _simulations(sim, n: int, seed: int, dim_lengths, data) -> xr.Dataset:
    """``n`` simulations as a bank chunk, with the covariates given per simulation (they
    are part of each simulation: the networks read them)."""
    batch = sim.sample(n, random_seed=seed, dim_lengths=dim_lengths, data=data or None)
    for name, value in (data or {}).items():
        if np.ndim(value) == sim.model[name].ndim + 1:
            batch[name] = np.asarray(value)
    return _chunk_dataset(sim, batch)


def _write(sim, plan, writer, indices, dim_lengths, data, progressbar, first=None):
    indices = list(indices)
    progress = ProgressBar("Simulating", len(plan.sizes), progressbar)
    done = len(plan.sizes) - len(indices) - (first is not None)
    try:
        if first is not None:
            writer.mark(0)
            done += 1
            progress.update(done)
        for i in indices:
            chunk = _simulate_chunk(sim, plan, i, dim_lengths, data)
            writer.write(chunk, plan.starts[i])
            writer.mark(i)
            done += 1
            progress.update(done)
    finally:
        progress.close()
        writer.close()


class _Writer:
    """Opens an existing bank for resuming (subclasses: one storage format each)."""

    what = "file"

    @classmethod
    def reopen(cls, path: Path):
        try:
            return cls(path)
        except Exception as err:
            raise ValueError(
                f"Cannot resume {path}: the {cls.what} cannot be read ({err}). Simulate it "
                "again with overwrite=True."
            ) from err


class _NetCDFWriter(_Writer):
    """netCDF-4 through h5netcdf: every variable at full length, written chunk by chunk."""

    def __init__(self, path: Path):
        import h5netcdf

        self.path = path
        self.file = h5netcdf.File(path, "a")
        self.attrs = dict(self.file.attrs)

    @classmethod
    def create(cls, path: Path, first: xr.Dataset, plan: _Plan) -> _NetCDFWriter:
        ds = first.copy()
        ds[COMPLETE] = ((CHUNK_DIM,), np.zeros(len(plan.sizes), dtype="int8"))
        ds.attrs.update(plan.attrs())
        rows = min(first.sizes[SIM_DIM], _STORAGE_ROWS)
        encoding = {
            name: {
                "fletcher32": True,
                "chunksizes": (rows, *var.shape[1:]) if SIM_DIM in var.dims else var.shape,
            }
            for name, var in ds.data_vars.items()
        }
        ds.to_netcdf(path, engine="h5netcdf", unlimited_dims=[SIM_DIM], encoding=encoding)
        writer = cls(path)
        writer.file.resize_dimension(SIM_DIM, plan.n)
        return writer

    def incomplete(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(np.asarray(self.file.variables[COMPLETE][:]) == 0)]

    def write(self, chunk: xr.Dataset, start: int) -> None:
        stop = start + chunk.sizes[SIM_DIM]
        for name, var in chunk.data_vars.items():
            self.file.variables[name][start:stop] = var.values
        self.file.flush()

    def mark(self, i: int) -> None:
        self.file.variables[COMPLETE][i] = 1
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class _ZarrWriter(_Writer):
    """zarr: arrays at full length, chunks written into their region."""

    what = "store"

    def __init__(self, path: Path):
        import zarr

        self.path = path
        self.group = zarr.open_group(str(path), mode="r+")
        self.attrs = dict(self.group.attrs)

    @classmethod
    def create(cls, path: Path, first: xr.Dataset, plan: _Plan, rows=None) -> _ZarrWriter:
        """A store at full length from the first chunk. ``rows`` per storage chunk (default:
        the first chunk's, at most 4096); writers in several processes need one storage chunk
        per bank chunk, ``rows=plan.chunk_size``. Completion flags are stored one per storage
        chunk, so that workers marking their chunks never write the same one."""
        try:
            from zarr.codecs import Crc32cCodec, ZstdCodec
        except ImportError as err:
            raise ImportError(
                "Writing a .zarr bank needs zarr 3 (pip install 'zarr>=3'); or give a .nc path."
            ) from err
        ds = first.copy()
        ds[COMPLETE] = ((CHUNK_DIM,), np.zeros(len(plan.sizes), dtype="int8"))
        ds.attrs.update(plan.attrs())
        rows = rows or min(first.sizes[SIM_DIM], _STORAGE_ROWS)
        encoding = {
            name: {
                "compressors": [ZstdCodec(), Crc32cCodec()],
                "chunks": (rows, *var.shape[1:]) if SIM_DIM in var.dims else var.shape,
            }
            for name, var in ds.data_vars.items()
        }
        encoding[COMPLETE]["chunks"] = (1,)
        ds.to_zarr(path, mode="w", encoding=encoding, consolidated=False)
        writer = cls(path)
        for name, var in ds.data_vars.items():
            if SIM_DIM in var.dims:
                writer.group[name].resize((plan.n, *var.shape[1:]))
        return writer

    def incomplete(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(np.asarray(self.group[COMPLETE][:]) == 0)]

    def write(self, chunk: xr.Dataset, start: int) -> None:
        stop = start + chunk.sizes[SIM_DIM]
        for name, var in chunk.data_vars.items():
            self.group[name][start:stop] = var.values

    def mark(self, i: int) -> None:
        self.group[COMPLETE][i] = 1

    def close(self) -> None:
        pass


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
