"""Posteriors for collections of datasets too large for one machine, written to zarr.

:func:`sample_many` reads datasets chunk by chunk from an ``xarray.Dataset`` (or a zarr
store) with a dataset dim, fits each chunk with :meth:`Amortizer.sample`
(``dataset_dim=``, one batched pass per chunk), and writes the chunk's posterior draws, or
only their summaries, into its region of one zarr store. With a Dask client the chunks run
on the workers: each loads the amortizer once, reads its own datasets (straight from the
store when a path is given) and writes its own region, so nothing is gathered on the
client and a worker's memory is bounded by one chunk.
"""

from __future__ import annotations

import os
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np
import xarray as xr

from pymc_abi import _compat
from pymc_abi._progress import ProgressBar
from pymc_abi.seeds import RandomSeed, seed_int

__all__ = ["sample_many"]

#: statistics written with ``summaries=True``
QUANTILES = (0.05, 0.5, 0.95)
_DIAGNOSTICS = ("pareto_k", "ess", "ess_fraction", "reliable")
_AMORTIZERS: OrderedDict[str, object] = OrderedDict()  # per worker process, by job


def _amortizer(job: str, pickled: bytes):
    """This worker's amortizer for a job, unpickled on its first chunk."""
    import cloudpickle

    from pymc_abi._dask import per_job

    return per_job(_AMORTIZERS, job, lambda: cloudpickle.loads(pickled), keep=2)


def _open(datasets):
    if isinstance(datasets, xr.Dataset):
        return datasets
    return xr.open_zarr(datasets, consolidated=None)


def _chunk_result(amortizer, source, dim, start, stop, options, seed):
    """Fit datasets ``start:stop``: one xarray.Dataset along ``dim`` (draws or summaries)."""
    part = _open(source).isel({dim: slice(start, stop)}).load()
    names = list(part.data_vars)
    datasets = [{n: part[n].values[i] for n in names} for i in range(stop - start)]
    result = amortizer.sample(
        datasets,
        draws=options["draws"],
        chains=options["chains"],
        importance_sampling=options["importance_sampling"],
        dataset_dim=dim,
        random_seed=seed,
    )
    posterior = _compat.group(result, "posterior")
    out = {}
    for name, var in posterior.data_vars.items():
        if options["summaries"]:
            draws = var.stack(_sample=("chain", "draw"))
            stats = [draws.mean("_sample"), draws.std("_sample")]
            stats += [draws.quantile(q, "_sample").drop_vars("quantile") for q in QUANTILES]
            labels = ["mean", "sd", *(f"q{int(100 * q):02d}" for q in QUANTILES)]
            stacked = xr.concat(stats, dim=xr.DataArray(labels, dims="statistic"))
            out[name] = stacked.transpose(dim, "statistic", ...)
        else:
            out[name] = var.transpose(dim, ...)
    stats = _compat.group(result, "sample_stats")
    for name in _DIAGNOSTICS:
        if name in stats:
            out[name] = stats[name]
    return xr.Dataset(out)


def _write(ds: xr.Dataset, path: str, dim: str, start: int, stop: int) -> None:
    keep = [n for n in ds.data_vars if dim in ds[n].dims]
    region = ds[keep].drop_vars([c for c in ds.coords], errors="ignore")
    region.to_zarr(path, region={dim: slice(start, stop)}, consolidated=False)


def _run_chunk(job, pickled, source, dim, read, write, options, seed, path) -> int:
    """On a worker: fit datasets ``read`` of ``source``, write them to region ``write``."""
    amortizer = _amortizer(job, pickled)
    result = _chunk_result(amortizer, source, dim, *read, options, seed)
    _write(result, path, dim, *write)
    return write[0]


def sample_many(
    amortizer,
    datasets: xr.Dataset | str | os.PathLike,
    path: str | os.PathLike,
    *,
    dataset_dim: str = "dataset",
    draws: int = 1000,
    chains: int = 1,
    summaries: bool = False,
    importance_sampling: bool | None = False,
    chunk_size: int = 1000,
    client=None,
    overwrite: bool = False,
    random_seed: RandomSeed = None,
    progressbar: bool = True,
) -> xr.Dataset:
    """Fit every dataset of a large collection and write the posteriors to a zarr store.

    Parameters
    ----------
    amortizer : Amortizer
        A trained amortizer.
    datasets : xarray.Dataset or path
        The datasets: one variable per observed variable (and per covariate the amortizer
        conditions on), each with ``dataset_dim`` as its first dim, followed by that
        variable's own dims. A path opens a zarr store lazily; with a client the workers
        read their chunks straight from it.
    path : str or path
        The zarr store to write (every worker must reach it with a client).
    dataset_dim : str, default "dataset"
    draws, chains : int
        Posterior draws per dataset: ``chains * draws`` (one chain by default: the draws
        are independent).
    summaries : bool, default False
        Write, per variable, the mean, SD and the 5%, 50% and 95% quantiles of its draws
        (a ``statistic`` dim) instead of the draws: for when the draws would be too large.
    importance_sampling : bool, optional
        As in :meth:`Amortizer.sample`, but off by default here (the flow's draws, at the
        flow's speed); ``None`` turns it on wherever the model has a density. The
        per-dataset Pareto k̂, ESS and reliability flag are then written too.
    chunk_size : int, default 1000
        Datasets fitted (and written) at a time; memory per worker is about one chunk's
        draws.
    client : dask.distributed.Client, optional
        Run the chunks on a Dask cluster (each worker unpickles the amortizer once per
        call). Without one, the chunks run here, one after the other.
    overwrite : bool, default False
        Replace an existing store at ``path``.
    random_seed : int, optional
        Chunk ``i`` is fitted with the ``i``-th child of one seed sequence: the result does
        not depend on the number of workers or on the order in which chunks finish.
    progressbar : bool, default True

    Returns
    -------
    xarray.Dataset
        The store, opened lazily: each posterior variable with dims ``(dataset_dim, chain,
        draw, ...)``, or ``(dataset_dim, statistic, ...)`` with ``summaries=True``.

    Examples
    --------
    >>> store = abi.sample_many(amortizer, "datasets.zarr", "posteriors.zarr",  # doctest: +SKIP
    ...                         summaries=True, client=client)
    >>> store["mu"].sel(statistic="mean")  # doctest: +SKIP
    """
    import cloudpickle

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists. Pass overwrite=True to replace it.")
    source = datasets if isinstance(datasets, xr.Dataset) else str(datasets)
    opened = _open(source)
    if dataset_dim not in opened.dims:
        raise ValueError(
            f"The datasets have no dim '{dataset_dim}' (dims: {sorted(opened.dims)}): give "
            "each variable a leading dataset dim, or name it with dataset_dim=."
        )
    needed = [*amortizer.data_spec.observed, *amortizer.data_spec.covariates]
    missing = [n for n in needed if n not in opened.data_vars]
    if missing:
        raise ValueError(f"The datasets lack {missing}: the amortizer conditions on {needed}.")
    for name in needed:
        if opened[name].dims[0] != dataset_dim:
            raise ValueError(
                f"'{name}' has dims {opened[name].dims}; its first dim must be '{dataset_dim}'."
            )
    opened = opened[needed]
    if isinstance(source, xr.Dataset):
        source = opened
    total = opened.sizes[dataset_dim]
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    options = {
        "draws": int(draws),
        "chains": int(chains),
        "summaries": bool(summaries),
        "importance_sampling": importance_sampling,
    }
    starts = list(range(0, total, chunk_size))
    root = np.random.SeedSequence(seed_int(random_seed))
    seeds = [int(s.generate_state(1)[0]) for s in root.spawn(len(starts))]

    # the store's layout, from one dataset: every variable at full length, chunked by chunk
    template = _chunk_result(amortizer, opened, dataset_dim, 0, 1, options, seeds[0])
    _create(template, str(path), dataset_dim, total, chunk_size, overwrite)

    progress = ProgressBar("Fitting", len(starts), progressbar)
    try:
        if client is None:
            for i, start in enumerate(starts):
                stop = min(start + chunk_size, total)
                ds = _chunk_result(amortizer, source, dataset_dim, start, stop, options, seeds[i])
                _write(ds, str(path), dataset_dim, start, stop)
                progress.update(i + 1)
        else:
            from pymc_abi._dask import wait

            job = uuid.uuid4().hex
            pickled = cloudpickle.dumps(amortizer)
            futures = []
            for i, start in enumerate(starts):
                stop = min(start + chunk_size, total)
                if isinstance(source, str):  # the worker reads its datasets from the store
                    part, read = source, (start, stop)
                else:  # datasets in memory here: each task carries its own
                    part, read = source.isel({dataset_dim: slice(start, stop)}), (0, stop - start)
                futures.append(
                    client.submit(
                        _run_chunk,
                        job,
                        pickled,
                        part,
                        dataset_dim,
                        read,
                        (start, stop),
                        options,
                        seeds[i],
                        str(path),
                        pure=False,
                        retries=2,
                    )
                )
            wait(client, futures, progress)
    finally:
        progress.close()
    return xr.open_zarr(path, consolidated=False)


def _create(template: xr.Dataset, path: str, dim: str, total: int, chunk: int, overwrite) -> None:
    """An empty store for ``total`` datasets, storage chunks of ``chunk`` datasets."""
    import dask.array as da

    variables = {}
    for name, var in template.data_vars.items():
        shape = (total, *var.shape[1:])
        chunks = (chunk, *var.shape[1:])
        variables[name] = (var.dims, da.zeros(shape, chunks=chunks, dtype=var.dtype))
    coords = {c: template.coords[c] for c in template.coords if dim not in template[c].dims}
    empty = xr.Dataset(variables, coords={**coords, dim: np.arange(total)})
    empty.attrs.update(template.attrs)
    empty.to_zarr(path, mode="w" if overwrite else "w-", compute=False, consolidated=False)
