"""Simulation banks on a Dask cluster: every chunk simulated and written by a worker.

The client plans the bank (its size, chunks and the seed of each chunk, as
:func:`pymc_abi.simulate` does in one process), creates the zarr store at full length and
hands out chunk indices. A worker compiles the model once per call (a per-process cache),
simulates its chunk from the chunk's own seed and writes it into its region of the store,
then marks the chunk complete. Only chunk indices travel back to the client. Storage chunks
coincide with bank chunks, so no two workers ever write the same storage chunk, and a chunk
whose worker died can be simulated again anywhere: the result is the same.

Imported only when ``client=`` is given; Dask is an optional dependency.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from pathlib import Path

import cloudpickle
import numpy as np

from pymc_abi.banks.store import (
    COMPLETE,
    Plan,
    ZarrWriter,
    chunk_data,
    simulate_chunk,
    simulations_chunk,
)
from pymc_abi.core._progress import ProgressBar
from pymc_abi.model.simulator import ModelSimulator

__all__ = ["simulate_on_cluster"]

# compiled simulators of this worker process, by job; a few jobs at most
_SIMULATORS: OrderedDict[str, ModelSimulator] = OrderedDict()
_KEEP = 4


def _distributed():
    try:
        import distributed
    except ImportError as err:
        raise ImportError(
            "client= needs Dask's distributed scheduler: pip install 'pymc-abi[distributed]' "
            "(or 'dask[distributed]')."
        ) from err
    return distributed


def per_job(cache: OrderedDict, job: str, build, keep: int = _KEEP):
    """``cache[job]``, built by ``build()`` on a worker's first task of the job; only the
    ``keep`` latest jobs are kept."""
    value = cache.get(job)
    if value is None:
        while len(cache) >= keep:
            cache.popitem(last=False)
        value = cache[job] = build()
    return value


def wait(client, futures, progress, done: int = 0) -> None:
    """Wait for ``futures`` in the order they finish, counting them on ``progress`` from
    ``done``; the first that failed on every try raises, and the others are cancelled."""
    distributed = _distributed()
    try:
        for future in distributed.as_completed(futures):
            future.result()
            done += 1
            progress.update(done)
    except BaseException:
        client.cancel(futures)
        raise


def _simulator(job: str, pickled: bytes) -> ModelSimulator:
    """This worker's simulator for a job, unpickled and compiled on its first chunk."""
    return per_job(_SIMULATORS, job, lambda: ModelSimulator(cloudpickle.loads(pickled)))


def _template(job: str, pickled: bytes, plan: Plan, dim_lengths, data):
    """One simulation of chunk 0's seed: the variables, shapes and dtypes of the store."""
    sim = _simulator(job, pickled)
    first = {k: (v[:1] if np.ndim(v) == sim.model[k].ndim + 1 else v) for k, v in data.items()}
    return simulations_chunk(sim, 1, plan.seed(0), dim_lengths, first)


def _run_chunk(job: str, pickled: bytes, plan: Plan, i: int, dim_lengths, data, path: str):
    """Simulate chunk ``i`` and write it into its region of the store."""
    chunk = simulate_chunk(_simulator(job, pickled), plan, i, dim_lengths, data, sliced=True)
    writer = ZarrWriter(Path(path))
    writer.write(chunk, plan.starts[i])
    writer.mark(i)
    return i


def _check_layout(path: Path, plan: Plan) -> None:
    """Refuse to resume on workers a store whose storage chunks straddle bank chunks (one
    written in a single process): two workers would write the same storage chunk."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    for name, array in group.arrays():
        rows = array.chunks[0]
        shared_flags = name == COMPLETE and rows != 1
        straddles = bool(array.ndim) and array.shape[0] == plan.n and plan.chunk_size % rows
        if shared_flags or straddles:
            raise ValueError(
                f"{path} was written in one process, with storage chunks that several workers "
                f"would share ('{name}': {rows} rows). Resume it without client=."
            )


def simulate_on_cluster(
    client, model, plan: Plan, path: Path, indices, dim_lengths, data, progressbar, create
) -> None:
    """Simulate the chunks ``indices`` of a bank on the workers, each written into the zarr
    store at ``path`` by its worker; ``create`` first makes the store at full length."""
    _distributed()
    job = uuid.uuid4().hex
    # the model travels with every task (a few tens of kB), not scattered once: scattered
    # data dies with the worker that holds it, a task's arguments can be sent again
    model_bytes = cloudpickle.dumps(model)
    if not create:
        _check_layout(path, plan)
    else:
        first = chunk_data(model, plan, 0, data)
        template = client.submit(
            _template, job, model_bytes, plan, dim_lengths, first, pure=False, retries=2
        ).result()
        ZarrWriter.create(path, template, plan, rows=plan.chunk_size).close()
    indices = list(indices)
    futures = [
        client.submit(
            _run_chunk,
            job,
            model_bytes,
            plan,
            i,
            dim_lengths,
            chunk_data(model, plan, i, data),
            str(path),
            pure=False,
            retries=2,
        )
        for i in indices
    ]
    progress = ProgressBar("Simulating", len(plan.sizes), progressbar)
    try:
        wait(client, futures, progress, done=len(plan.sizes) - len(indices))
    finally:
        progress.close()
