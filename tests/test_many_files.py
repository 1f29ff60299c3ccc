"""sample_many never loses data: failures keep the old store, interruptions (a real process
killed by a signal) resume to the result an uninterrupted call writes, bit for bit."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pymc as pm
import pytest
import xarray as xr

import pymc_abi as abi
from pymc_abi.core._atomic import partials_of

pytest.importorskip("dask")
pytest.importorskip("zarr")

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = {"draws": 30, "chunk_size": 5, "random_seed": 3, "progressbar": False}


def model():
    with pm.Model(coords={"obs": range(8)}) as m:
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", mu, sigma, observed=np.zeros(8), dims="obs")
    return m


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    amortizer = abi.fit(model(), steps=30, random_seed=0, progressbar=False)
    amortizer.save(root / "normal.abi")
    rng = np.random.default_rng(1)
    datasets = xr.Dataset({"y": (("dataset", "obs"), rng.normal(size=(60, 8)))})
    datasets.to_zarr(root / "datasets.zarr")
    return root, amortizer, datasets


def test_a_failing_overwrite_keeps_the_old_store(saved, tmp_path):
    _, amortizer, datasets = saved
    good = abi.sample_many(amortizer, datasets, tmp_path / "out.zarr", **OPTIONS).load()
    bad = datasets.copy(deep=True)
    bad["y"][42, 3] = np.nan  # chunk 8 of 12 fails
    with pytest.raises(ValueError, match="Dataset dataset=42.*NaN") as info:
        abi.sample_many(amortizer, bad, tmp_path / "out.zarr", overwrite=True, **OPTIONS)
    assert "resume=True" in "".join(getattr(info.value, "__notes__", []))
    xr.testing.assert_identical(
        good, xr.open_zarr(tmp_path / "out.zarr", consolidated=False).load()
    )
    assert len(partials_of(tmp_path / "out.zarr")) == 1  # the chunks done so far, kept


def test_the_input_store_is_never_the_output(saved):
    root, amortizer, _ = saved
    with pytest.raises(ValueError, match="destroy them"):
        abi.sample_many(
            amortizer, root / "datasets.zarr", root / "datasets.zarr", overwrite=True, **OPTIONS
        )
    assert xr.open_zarr(root / "datasets.zarr")["y"].shape == (60, 8)


def test_nothing_to_resume_says_so(saved, tmp_path):
    _, amortizer, datasets = saved
    with pytest.raises(FileNotFoundError, match="No interrupted sample_many"):
        abi.sample_many(amortizer, datasets, tmp_path / "none.zarr", resume=True, **OPTIONS)


# the child computes as the tests do (one torch thread: the same float reductions)
_CHILD = """
import sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
import pymc_abi as abi
from tests.test_many_files import OPTIONS, model
amortizer = abi.Amortizer.load({path!r}, model=model())
abi.sample_many(amortizer, {datasets!r}, {out!r}, **OPTIONS)
"""


def test_killed_midway_resumes_to_the_uninterrupted_result(saved, tmp_path):
    root, amortizer, _ = saved
    out = tmp_path / "out.zarr"
    code = _CHILD.format(
        root=str(ROOT),
        path=str(root / "normal.abi"),
        datasets=str(root / "datasets.zarr"),
        out=str(out),
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 300
    done = 0
    while time.monotonic() < deadline and child.poll() is None:
        partials = partials_of(out)
        if partials:
            try:
                done = int(xr.open_zarr(partials[0], consolidated=False)["_chunks_done"].sum())
            except Exception:  # being created
                done = 0
            if done >= 3:
                break
        time.sleep(0.05)
    assert child.poll() is None, "the child finished before it could be interrupted"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not out.exists() and len(partials_of(out)) == 1
    resumed = abi.sample_many(amortizer, root / "datasets.zarr", out, resume=True, **OPTIONS).load()
    assert not partials_of(out) and "_chunks_done" not in resumed
    whole = abi.sample_many(amortizer, root / "datasets.zarr", tmp_path / "whole.zarr", **OPTIONS)
    xr.testing.assert_identical(resumed, whole.load())
