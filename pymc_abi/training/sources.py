"""Where training simulations come from: fresh (online), a bank in memory, a bank on disk.

Every source has one interface: :meth:`validation` (a held-out batch, or a list of them),
:meth:`batches` (an endless iterator of ``(theta, inputs)`` minibatches) and
``steps_per_epoch`` (``None`` online). A batch is what the networks take: ``theta`` the
flat unconstrained parameters ``[B, D]`` (float32) and ``inputs`` a dict of tensors, one
per summary input (:meth:`pymc_abi.data.spec.DataSpec.network_inputs`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import xarray as xr

from pymc_abi.banks.simulate import SIM_DIM, UNCONSTRAINED, check_bank, open_bank
from pymc_abi.core.errors import DamagedFileError
from pymc_abi.core.seeds import SeedTree
from pymc_abi.data.spec import DataSpec, Simulation, float32_finite
from pymc_abi.training._distributed import Ranks, shard

__all__ = ["BankSource", "DropCounter", "MemorySource", "OnlineSource", "to_tensors"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def to_tensors(spec: DataSpec, z: np.ndarray, values, device) -> tuple[torch.Tensor, dict]:
    """``(theta, inputs)`` on ``device`` from flat parameters and per-dataset arrays."""
    inputs = spec.network_inputs(values, z.shape[0])
    data = {k: torch.as_tensor(v, device=device) for k, v in inputs.items()}
    # float64 beside affine maps (a preconditioner): u = S^-1 (z - m) needs the precision
    dtype = torch.float32 if spec.preconditioner is None else torch.float64
    return torch.as_tensor(z, dtype=dtype, device=device), data


class DropCounter:
    """Counts simulations dropped for NaN, inf or float32 overflow; fails if most are."""

    def __init__(self):
        self.count = 0

    def keep(self, z: np.ndarray, values, finite: np.ndarray):
        dropped = len(z) - int(finite.sum())
        if dropped:
            self.count += dropped
            if dropped > len(z) // 2:
                raise RuntimeError(
                    f"{dropped} of {len(z)} simulations hold NaN, inf or values beyond float32 "
                    f"(|x| > {_FLOAT32_MAX:.3g}). Check the priors: values they allow make the "
                    "likelihood degenerate or its draws overflow."
                )
            z, values = z[finite], {k: v[finite] for k, v in values.items()}
        return z, values

    def batch(self, spec: DataSpec, sim: Simulation, device):
        """The finite simulations of ``sim`` as tensors."""
        z, values = self.keep(sim.z, sim.values, sim.finite)
        return to_tensors(spec, z, values, device)


def _shuffled(theta, data, batch_size: int, generator: torch.Generator) -> Iterator:
    order = torch.randperm(theta.shape[0], generator=generator)
    for start in range(0, theta.shape[0] - batch_size + 1, batch_size):
        idx = order[start : start + batch_size].to(theta.device)
        yield theta[idx], {k: v[idx] for k, v in data.items()}


class OnlineSource:
    """Fresh simulations at every step; with varying sizes, each batch draws its lengths.

    Validation: ``validation_simulations`` held-out simulations; with varying sizes, a
    third each at the low, middle and high end of the ranges. Training batches take their
    seeds from ``batch_seeds`` (default ``seeds``): under data-parallel training each rank
    has its own, so that ranks never draw the same simulations, while the validation
    simulations, from the shared ``seeds``, are the same on every rank.
    """

    steps_per_epoch = None

    def __init__(
        self,
        spec,
        seeds: SeedTree,
        dropped: DropCounter,
        *,
        batch_size,
        n_val,
        device,
        batch_seeds: SeedTree | None = None,
    ):
        self.spec, self.seeds, self.dropped = spec, seeds, dropped
        self.batch_size, self.n_val, self.device = batch_size, n_val, device
        self.batch_seeds = seeds if batch_seeds is None else batch_seeds

    def _simulate(self, n, lengths=None, seeds=None):
        seeds = self.seeds if seeds is None else seeds
        sim = self.spec.simulate(n, seeds.child(), dim_lengths=lengths)
        return self.dropped.batch(self.spec, sim, self.device)

    def validation(self):
        if not self.spec.dim_ranges:
            return self._simulate(self.n_val)
        sets = []
        for q in (0.0, 0.5, 1.0):
            lengths = {
                d: int(round(lo + q * (hi - lo))) for d, (lo, hi) in self.spec.dim_ranges.items()
            }
            sets.append(self._simulate(max(1, self.n_val // 3), lengths))
        return sets

    def batches(self, generator: torch.Generator) -> Iterator:
        while True:
            yield self._simulate(self.batch_size, seeds=self.batch_seeds)


class MemorySource:
    """A bank held in memory: a validation batch and training tensors, reshuffled every
    epoch. :meth:`simulate` makes one from fresh simulations."""

    def __init__(self, validation, bank, *, batch_size: int):
        self._validation, self.bank, self.batch_size = validation, bank, batch_size
        self.steps_per_epoch = bank[0].shape[0] // batch_size

    @classmethod
    def simulate(
        cls,
        spec,
        seeds: SeedTree,
        dropped,
        *,
        n,
        batch_size,
        n_val,
        device,
        ranks: Ranks | None = None,
        rank_seeds: SeedTree | None = None,
    ):
        """``n`` simulations, the first ``min(n_val, n // 10)`` held out for validation.

        With ``ranks`` (data-parallel training), the validation simulations come from
        ``seeds`` (the same on every rank) and each rank simulates only its own shard of
        the training part, from ``rank_seeds``.
        """
        if spec.dim_ranges:
            raise ValueError(
                "An in-memory bank has one size per simulation; with varying dim_lengths "
                "train online (simulations=None)."
            )
        n_val = min(n_val, max(1, n // 10))
        if ranks is not None:
            start, stop = shard(n - n_val, ranks.rank, ranks.world)
            if stop - start < batch_size:
                raise ValueError(
                    f"simulations={n} leaves {stop - start} training simulations to rank "
                    f"{ranks.rank} of {ranks.world}, fewer than batch_size={batch_size} (per "
                    "rank); simulate more."
                )
            validation = dropped.batch(spec, spec.simulate(n_val, seeds.child()), device)
            sim = spec.simulate(stop - start, (rank_seeds or seeds).child())
            return cls(validation, dropped.batch(spec, sim, device), batch_size=batch_size)
        if n - n_val < batch_size:
            raise ValueError(
                f"simulations={n} leaves fewer than batch_size={batch_size} "
                "training simulations after the validation split; simulate more."
            )
        theta, data = dropped.batch(spec, spec.simulate(n, seeds.child()), device)
        validation = (theta[:n_val], {k: v[:n_val] for k, v in data.items()})
        bank = (theta[n_val:], {k: v[n_val:] for k, v in data.items()})
        return cls(validation, bank, batch_size=batch_size)

    def validation(self):
        return self._validation

    def batches(self, generator: torch.Generator) -> Iterator:
        while True:
            yield from _shuffled(*self.bank, self.batch_size, generator)


class BankSource:
    """A bank written by :func:`pymc_abi.simulate` (a path or a dataset), read lazily
    ``chunk`` simulations at a time; the last ``validation`` simulations are held out.

    With ``ranks`` (data-parallel training), each rank trains on its own contiguous shard
    of the training part (:attr:`start` to :attr:`stop`; the shards are disjoint and cover
    it) and validates on the same held-out simulations as every other rank.
    """

    def __init__(
        self, spec, bank, dropped, *, batch_size, n_val, chunk, device, ranks: Ranks | None = None
    ):
        bank = bank if isinstance(bank, xr.Dataset) else open_bank(bank)
        shapes = {}
        for inp in spec.inputs:
            if not inp.varying:
                shapes.update({v: spec.shapes[v] for v in inp.variables})
        check_bank(bank, spec.signature(), spec.variables, shapes)
        total = bank.sizes[SIM_DIM]
        n_val = min(n_val, max(1, total // 10))
        self.n_train = total - n_val
        self.start, self.stop = 0, self.n_train
        if ranks is not None:
            self.start, self.stop = shard(self.n_train, ranks.rank, ranks.world)
        if self.stop - self.start < batch_size:
            raise ValueError(
                f"The bank's {total} simulations leave fewer than batch_size={batch_size} "
                "for training after the validation split"
                + ("" if ranks is None else f" in the shard of rank {ranks.rank}")
                + "; simulate more."
            )
        self.spec, self.bank, self.dropped, self.device = spec, bank, dropped, device
        self.batch_size, self.chunk, self.total = batch_size, chunk, total
        self.steps_per_epoch = (self.stop - self.start) // batch_size

    def chunk_at(self, start: int, stop: int):
        """Simulations ``start`` to ``stop`` of the bank, finite ones only, as tensors."""
        names = [UNCONSTRAINED, *self.spec.variables]
        part = self.bank[names].isel({SIM_DIM: slice(start, stop)})
        try:
            values = {k: np.asarray(v) for k, v in part.load().data_vars.items()}
        except (OSError, ValueError) as err:  # HDF5's and zarr's checksum failures
            raise DamagedFileError(
                f"Simulations {start:,} to {stop:,} of the bank cannot be read ({err}): the "
                "file is damaged (a checksum failed, or it was truncated). Simulate the bank "
                "again."
            ) from err
        z = values.pop(UNCONSTRAINED)
        finite = float32_finite(z)
        for name in self.spec.variables:
            finite &= float32_finite(values[name].reshape(len(z), -1))
        z, values = self.dropped.keep(z, values, finite)
        return to_tensors(self.spec, z, values, self.device)

    def validation(self):
        return self.chunk_at(self.n_train, self.total)

    def batches(self, generator: torch.Generator) -> Iterator:
        starts = list(range(self.start, self.stop, self.chunk))
        while True:
            for i in torch.randperm(len(starts), generator=generator).tolist():
                stop = min(starts[i] + self.chunk, self.stop)
                theta, data = self.chunk_at(starts[i], stop)
                yield from _shuffled(theta, data, min(self.batch_size, len(theta)), generator)
