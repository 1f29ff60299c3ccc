"""The store behind a simulation bank: its plan (sizes and seeds of the chunks), the
simulation of one chunk, and the writers that put chunks into netCDF or zarr.

Shared by :mod:`pymc_abi.banks.simulate` (one process) and :mod:`pymc_abi.banks.cluster` (a chunk per
worker), so that neither imports the other's internals.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from pymc_abi.core._progress import ProgressBar
from pymc_abi.model._signature import differences, model_signature
from pymc_abi.model.simulator import ModelSimulator

__all__ = [
    "BANK_FORMAT",
    "CHUNK_DIM",
    "COMPLETE",
    "NetCDFWriter",
    "Plan",
    "SIM_DIM",
    "UNCONSTRAINED",
    "Writer",
    "ZarrWriter",
    "chunk_data",
    "chunk_dataset",
    "simulate_chunk",
    "simulations_chunk",
    "write_chunks",
]

BANK_FORMAT = 2
UNCONSTRAINED = "_unconstrained"
COMPLETE = "_chunk_complete"
SIM_DIM = "simulation"
CHUNK_DIM = "bank_chunk"
# largest storage chunk along the simulation axis (the unit of a checksum)
_STORAGE_ROWS = 4096


def _dims(name: str, value: np.ndarray) -> tuple[str, ...]:
    return (SIM_DIM, *(f"{name}_dim_{i}" for i in range(value.ndim - 1)))


def chunk_dataset(sim: ModelSimulator, batch: dict[str, np.ndarray]) -> xr.Dataset:
    z = sim.parameters.to_unconstrained({k: batch[k] for k in sim.free_names})
    variables = {name: (_dims(name, v), v) for name, v in batch.items()}
    variables[UNCONSTRAINED] = ((SIM_DIM, "parameter"), z)
    return xr.Dataset(variables, coords={"parameter": sim.parameters.names})


class Plan:
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


def chunk_data(model, plan: Plan, i: int, data) -> dict[str, np.ndarray]:
    """The covariates of chunk ``i``: its rows of those given per simulation."""
    start, size = plan.starts[i], plan.sizes[i]
    return {
        k: (np.asarray(v)[start : start + size] if np.ndim(v) == model[k].ndim + 1 else v)
        for k, v in (data or {}).items()
    }


def simulate_chunk(sim, plan: Plan, i: int, dim_lengths, data, sliced=False) -> xr.Dataset:
    """Chunk ``i`` of the bank, from its own seed (``sliced``: ``data`` holds only its rows)."""
    rows = data if sliced else chunk_data(sim.model, plan, i, data)
    return simulations_chunk(sim, plan.sizes[i], plan.seed(i), dim_lengths, rows)


def simulations_chunk(sim, n: int, seed: int, dim_lengths, data) -> xr.Dataset:
    """``n`` simulations as a bank chunk, with the covariates given per simulation (they
    are part of each simulation: the networks read them)."""
    batch = sim.sample(n, random_seed=seed, dim_lengths=dim_lengths, data=data or None)
    for name, value in (data or {}).items():
        if np.ndim(value) == sim.model[name].ndim + 1:
            batch[name] = np.asarray(value)
    return chunk_dataset(sim, batch)


def write_chunks(sim, plan, writer, indices, dim_lengths, data, progressbar, first=None):
    indices = list(indices)
    progress = ProgressBar("Simulating", len(plan.sizes), progressbar)
    done = len(plan.sizes) - len(indices) - (first is not None)
    try:
        if first is not None:
            writer.mark(0)
            done += 1
            progress.update(done)
        for i in indices:
            chunk = simulate_chunk(sim, plan, i, dim_lengths, data)
            writer.write(chunk, plan.starts[i])
            writer.mark(i)
            done += 1
            progress.update(done)
    finally:
        progress.close()
        writer.close()


class Writer:
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


class NetCDFWriter(Writer):
    """netCDF-4 through h5netcdf: every variable at full length, written chunk by chunk."""

    def __init__(self, path: Path):
        import h5netcdf

        self.path = path
        self.file = h5netcdf.File(path, "a")
        self.attrs = dict(self.file.attrs)

    @classmethod
    def create(cls, path: Path, first: xr.Dataset, plan: Plan) -> NetCDFWriter:
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


class ZarrWriter(Writer):
    """zarr: arrays at full length, chunks written into their region."""

    what = "store"

    def __init__(self, path: Path):
        import zarr

        self.path = path
        self.group = zarr.open_group(str(path), mode="r+")
        self.attrs = dict(self.group.attrs)

    @classmethod
    def create(cls, path: Path, first: xr.Dataset, plan: Plan, rows=None) -> ZarrWriter:
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
