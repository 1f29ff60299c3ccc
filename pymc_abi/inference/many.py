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

import json
import os
import re
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np
import xarray as xr

from pymc_abi.core import _compat
from pymc_abi.core._arguments import flag, positive
from pymc_abi.core._atomic import partial_path, partials_of, swap_in
from pymc_abi.core._progress import ProgressBar
from pymc_abi.core.seeds import RandomSeed, seed_int

__all__ = ["sample_many"]

#: statistics written with ``summaries=True``
QUANTILES = (0.05, 0.5, 0.95)
_DIAGNOSTICS = ("pareto_k", "ess", "ess_fraction", "reliable")
_AMORTIZERS: OrderedDict[str, object] = OrderedDict()  # per worker process, by job
#: a partial store's record of its written chunks, and the attribute that describes the call
_DONE, _CHUNK_DIM, _CALL = "_chunks_done", "_chunk", "pymc_abi_sample_many"


def _amortizer(job: str, pickled: bytes):
    """This worker's amortizer for a job, unpickled on its first chunk."""
    import cloudpickle

    from pymc_abi.banks.cluster import per_job

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
    try:
        result = amortizer.sample(
            datasets,
            draws=options["draws"],
            chains=options["chains"],
            importance_sampling=options["importance_sampling"],
            dataset_dim=dim,
            random_seed=seed,
        )
    except (ValueError, TypeError) as err:
        # "Dataset i of n" counts within this chunk: name the dataset along `dim`
        message = re.sub(
            r"^Dataset (\d+) of \d+",
            lambda m: f"Dataset {dim}={start + int(m.group(1))}",
            str(err),
        )
        raise type(err)(message) from err
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


def _mark_done(path: str, index: int) -> None:
    """Record chunk ``index`` as written (its own storage chunk: writers never race)."""
    done = xr.Dataset({_DONE: ((_CHUNK_DIM,), np.ones(1, dtype="int8"))})
    done.to_zarr(path, region={_CHUNK_DIM: slice(index, index + 1)}, consolidated=False)


def _run_chunk(job, pickled, source, dim, read, write, options, seed, path, index) -> int:
    """On a worker: fit datasets ``read`` of ``source``, write them to region ``write``."""
    amortizer = _amortizer(job, pickled)
    result = _chunk_result(amortizer, source, dim, *read, options, seed)
    _write(result, path, dim, *write)
    _mark_done(path, index)
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
    resume: bool = False,
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
        Replace an existing store at ``path``. The new store is written beside it and
        swapped in only once complete: a call that fails leaves the old one as it was.
    resume : bool, default False
        Complete the partial store that an interrupted call with the same arguments left
        beside ``path`` (``.<name>.<random>.partial``): only the chunks it lacks are fitted,
        and the result is the one an uninterrupted call would have written, bit for bit.
    random_seed : int, optional
        Chunk ``i`` is fitted with the ``i``-th child of one seed sequence: the result does
        not depend on the number of workers or on the order in which chunks finish. A
        resumed call takes the seed of the call it completes.
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
    if path.exists() and not (overwrite or resume):
        raise FileExistsError(f"{path} exists. Pass overwrite=True to replace it.")
    if not isinstance(datasets, xr.Dataset):
        if Path(datasets).resolve() == path.resolve():
            raise ValueError(
                f"The datasets are read from {path}, the store to write: writing it would "
                "destroy them. Write the posteriors to another path."
            )
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
    chunk_size = positive("chunk_size", chunk_size)
    options = {
        "draws": positive("draws", draws),
        "chains": positive("chains", chains),
        "summaries": flag("summaries", summaries),
        "importance_sampling": importance_sampling,
    }
    starts = list(range(0, total, chunk_size))
    call = {
        **options,
        "datasets": total,
        "chunk_size": chunk_size,
        "dataset_dim": dataset_dim,
        "importance_sampling": repr(importance_sampling),
    }
    if resume:
        target, entropy, done = _resumable(path, call, random_seed)
    else:
        target, entropy, done = partial_path(path), seed_int(random_seed), set()
    root = np.random.SeedSequence(entropy)
    seeds = [int(s.generate_state(1)[0]) for s in root.spawn(len(starts))]
    if not resume:
        # the store's layout, from one dataset: every variable at full length, chunked by
        # chunk, and a record of the chunks written
        template = _chunk_result(amortizer, opened, dataset_dim, 0, 1, options, seeds[0])
        template.attrs[_CALL] = json.dumps({**call, "seed": str(entropy)})
        _create(template, str(target), dataset_dim, total, chunk_size, len(starts))
    todo = [i for i in range(len(starts)) if i not in done]

    progress = ProgressBar("Fitting", len(starts), progressbar)
    progress.update(len(done))
    try:
        if client is None:
            for count, i in enumerate(todo, start=len(done) + 1):
                start = starts[i]
                stop = min(start + chunk_size, total)
                ds = _chunk_result(amortizer, source, dataset_dim, start, stop, options, seeds[i])
                _write(ds, str(target), dataset_dim, start, stop)
                _mark_done(str(target), i)
                progress.update(count)
        else:
            from pymc_abi.banks.cluster import wait

            job = uuid.uuid4().hex
            pickled = cloudpickle.dumps(amortizer)
            futures = []
            for i in todo:
                start = starts[i]
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
                        str(target),
                        i,
                        pure=False,
                        retries=2,
                    )
                )
            wait(client, futures, progress)
    except BaseException as err:
        err.add_note(
            f"The chunks written so far are kept in {target}: call sample_many again with "
            "the same arguments and resume=True to fit only the rest."
        )
        raise
    finally:
        progress.close()
    _finish(target)
    swap_in(target, path, overwrite=overwrite or resume)
    return xr.open_zarr(path, consolidated=False)


def _resumable(path: Path, call: dict, random_seed) -> tuple[Path, int, set[int]]:
    """The newest partial store of ``path`` left by a call like ``call``: its path, its
    seed and the chunks it holds."""
    mismatched = []
    for partial in partials_of(path):
        try:
            stored = xr.open_zarr(partial, consolidated=False)
            saved = json.loads(stored.attrs[_CALL])
            done = set(np.flatnonzero(stored[_DONE].values).tolist())
        except Exception:  # not one of ours, or unreadable
            continue
        entropy = int(saved.pop("seed"))
        if saved != call:
            mismatched.append(partial)
            continue
        if random_seed is not None and seed_int(random_seed) != entropy:
            raise ValueError(
                f"{partial} was written with another random_seed: pass the same one (or none) "
                "to resume it."
            )
        return partial, entropy, done
    why = (
        f" ({len(mismatched)} partial store(s) from calls with other arguments: draws, chains, "
        "summaries, chunk_size and the datasets must be the same)"
        if mismatched
        else ""
    )
    raise FileNotFoundError(f"No interrupted sample_many to resume beside {path}{why}.")


def _finish(target: Path) -> None:
    """Check that every chunk was written, and drop the record of them."""
    import zarr

    stored = xr.open_zarr(target, consolidated=False)
    missing = np.flatnonzero(stored[_DONE].values == 0)
    if missing.size:
        raise RuntimeError(
            f"Chunks {missing.tolist()} of {target} were not written; call sample_many again "
            "with resume=True."
        )
    group = zarr.open_group(str(target), mode="a")
    del group[_DONE]


def _create(template: xr.Dataset, path: str, dim: str, total: int, chunk: int, n_chunks) -> None:
    """An empty store for ``total`` datasets, storage chunks of ``chunk`` datasets, with a
    record of the ``n_chunks`` chunks written (none yet)."""
    import dask.array as da

    variables = {}
    for name, var in template.data_vars.items():
        shape = (total, *var.shape[1:])
        chunks = (chunk, *var.shape[1:])
        variables[name] = (var.dims, da.zeros(shape, chunks=chunks, dtype=var.dtype))
    coords = {c: template.coords[c] for c in template.coords if dim not in template[c].dims}
    variables[_DONE] = ((_CHUNK_DIM,), da.zeros(n_chunks, chunks=1, dtype="int8"))
    empty = xr.Dataset(variables, coords={**coords, dim: np.arange(total)})
    empty.attrs.update(template.attrs)
    empty.to_zarr(path, mode="w-", compute=False, consolidated=False)
