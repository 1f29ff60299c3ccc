"""Simulation banks on a real Dask cluster (a LocalCluster of 2 worker processes)."""

import logging
import os
import warnings

import numpy as np
import pymc as pm
import pytest
import xarray as xr
import zarr

import pymc_abi as abi
from pymc_abi.banks.simulate import COMPLETE

distributed = pytest.importorskip("distributed")  # the test extra installs it


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def regression():
    with pm.Model() as model:
        x = pm.Data("X", np.ones(5))
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", mu * x, sigma, observed=np.zeros(5))
    return model


def _bank(path, **kwargs):
    bank = abi.simulate(path=path, random_seed=3, progressbar=False, **kwargs)
    return bank.load()


def test_bank_on_workers_equals_the_bank_of_one_process(client, tmp_path):
    model = regression()
    covariates = np.random.default_rng(0).normal(size=(50, 5))  # one design per simulation
    options = {"model": model, "n": 50, "chunk_size": 10, "data": {"X": covariates}}
    here = _bank(tmp_path / "here.zarr", **options)
    there = _bank(tmp_path / "there.zarr", client=client, **options)
    xr.testing.assert_identical(here, there)
    assert there[COMPLETE].values.all()
    # each simulation's design is stored with it, and the bank trains like any other
    np.testing.assert_array_equal(there["X"].values, covariates)

    def designs(rng, n, lengths):
        return rng.normal(size=(n, 5))

    amortizer = abi.fit(
        model,
        simulations=tmp_path / "there.zarr",
        covariates={"X": designs},
        steps=20,
        batch_size=16,
        progressbar=False,
    )
    assert amortizer.history.step[-1] == 20


def test_client_needs_a_zarr_store(client, tmp_path):
    with pytest.raises(ValueError, match="path ending in .zarr"):
        abi.simulate(regression(), n=10, path=tmp_path / "bank.nc", client=client)
    with pytest.raises(ValueError, match="path ending in .zarr"):
        abi.simulate(regression(), n=10, client=client)


def _dies_once(marker):
    """A simulator whose first call on a worker kills that worker's process."""

    def simulate(rng, mu, size=None):
        try:
            distributed.get_worker()
        except ValueError:  # in this process: simulate
            pass
        else:
            try:
                with open(marker, "x"):
                    pass
            except FileExistsError:
                pass
            else:
                os._exit(1)  # the worker dies in the middle of a chunk
        return rng.normal(mu, 1, size=size)

    return simulate


def test_a_worker_that_dies_loses_only_its_chunk(client, tmp_path):
    marker = tmp_path / "died"
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        pm.Simulator("y", _dies_once(str(marker)), params=(mu,), observed=np.zeros(4))
    options = {"model": model, "n": 40, "chunk_size": 8}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the simulator cannot be vectorized
        here = _bank(tmp_path / "here.zarr", **options)
        there = _bank(tmp_path / "there.zarr", client=client, **options)
    assert marker.exists()  # a worker did die
    xr.testing.assert_identical(here, there)


def test_an_interrupted_job_resumes_on_the_workers(client, tmp_path):
    model = regression()
    options = {"model": model, "n": 60, "chunk_size": 12}
    here = _bank(tmp_path / "here.zarr", **options)
    path = tmp_path / "there.zarr"
    _bank(path, client=client, **options)
    # what an interruption leaves: chunks 1 and 3 never finished (half written, not marked)
    group = zarr.open_group(str(path), mode="r+")
    for i in (1, 3):
        group[COMPLETE][i] = 0
        group["y"][12 * i : 12 * i + 6] = np.nan
    with pytest.raises(abi.IncompleteBankError, match="incomplete: 36 of 60"):
        abi.fit(model, simulations=path, steps=5, progressbar=False)
    resumed = abi.simulate(path=path, resume=True, client=client, progressbar=False, **options)
    xr.testing.assert_identical(here, resumed.load())
    amortizer = abi.fit(model, simulations=path, steps=20, batch_size=16, progressbar=False)
    assert amortizer.history.step[-1] == 20


def test_a_store_written_in_one_process_is_not_resumed_on_workers(client, tmp_path):
    model = regression()
    path = tmp_path / "bank.zarr"
    # one chunk of 4,200 simulations, stored in storage chunks of 4,096 rows
    options = {"n": 4200, "chunk_size": 4200}
    abi.simulate(model, path=path, random_seed=1, progressbar=False, **options)
    zarr.open_group(str(path), mode="r+")[COMPLETE][0] = 0
    with pytest.raises(ValueError, match="Resume it without client="):
        abi.simulate(model, path=path, resume=True, client=client, **options)


def test_posteriors_for_many_datasets_on_workers(client, tmp_path):
    """sample_many: chunks fitted on the workers and written to zarr equal those fitted
    here, whether the workers get their datasets from memory or read them from a store."""
    with pm.Model(coords={"obs": range(12)}) as model:
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", mu, sigma, observed=np.zeros(12), dims="obs")
    amortizer = abi.fit(model, steps=50, random_seed=0, progressbar=False)
    rng = np.random.default_rng(1)
    datasets = xr.Dataset({"y": (("dataset", "obs"), rng.normal(size=(23, 12)))})
    datasets.to_zarr(tmp_path / "datasets.zarr")
    options = {"draws": 40, "chunk_size": 10, "random_seed": 2, "progressbar": False}
    here = abi.sample_many(amortizer, datasets, tmp_path / "here.zarr", **options).load()
    assert here["mu"].dims == ("dataset", "chain", "draw") and here["mu"].shape == (23, 1, 40)
    from_memory = abi.sample_many(
        amortizer, datasets, tmp_path / "memory.zarr", client=client, **options
    )
    from_store = abi.sample_many(
        amortizer, tmp_path / "datasets.zarr", tmp_path / "store.zarr", client=client, **options
    )
    xr.testing.assert_identical(here, from_memory.load())
    xr.testing.assert_identical(here, from_store.load())
    # the same draws as sample() gives chunk by chunk, with the chunk's seed
    seed = int(np.random.SeedSequence(2).spawn(3)[1].generate_state(1)[0])
    second = amortizer.sample(
        [{"y": y} for y in datasets["y"].values[10:20]],
        draws=40,
        chains=1,
        importance_sampling=False,
        dataset_dim="dataset",
        random_seed=seed,
    )
    np.testing.assert_array_equal(
        here["mu"].values[10:20], second.posterior["mu"].values.transpose(2, 0, 1)
    )
    # summaries instead of draws, and the importance-sampling diagnostics
    summary = abi.sample_many(
        amortizer,
        datasets,
        tmp_path / "summary.zarr",
        summaries=True,
        importance_sampling=True,
        client=client,
        **options,
    ).load()
    assert summary["mu"].dims == ("dataset", "statistic")
    assert list(summary["statistic"].values) == ["mean", "sd", "q05", "q50", "q95"]
    assert summary["pareto_k"].dims == ("dataset",) and summary["reliable"].shape == (23,)
    assert (summary["mu"].sel(statistic="q05") < summary["mu"].sel(statistic="q95")).all()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        abi.sample_many(amortizer, datasets, tmp_path / "here.zarr", **options)
    with pytest.raises(ValueError, match="lack \\['y'\\]"):
        abi.sample_many(amortizer, datasets.rename(y="x"), tmp_path / "x.zarr", **options)
