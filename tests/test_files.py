"""Files: a changed model is refused, banks are never lost, half-written or damaged unnoticed,
saves are atomic and loads safe."""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pymc as pm
import pytest
import torch
import xarray as xr
from pymc.distributions.transforms import log

import pymc_abi as abi

ROOT = Path(__file__).parent.parent


def normal_model(n=20, loc=0.0, scale=1.0, noise=1.0):
    with pm.Model(coords={"obs": range(n)}) as model:
        mu = pm.Normal("mu", loc, scale)
        sigma = pm.HalfNormal("sigma", 1)
        # data with a spread: zeros would make the posterior improper (sigma -> 0)
        pm.Normal("y", mu, noise * sigma, observed=np.linspace(-1.0, 1.0, n), dims="obs")
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "model.abi"
    amortizer = abi.fit(
        normal_model(), steps=20, validation_simulations=64, random_seed=0, progressbar=False
    )
    amortizer.save(path)
    return amortizer, path


# ---------------------------------------------------------------------- the model signature
@pytest.mark.parametrize(
    ("changed", "match"),
    [
        (
            normal_model(loc=50.0, scale=100.0),
            r"'mu' changed: mu ~ Normal\(0, 1\) -> mu ~ Normal\(50, 100\)",
        ),
        (normal_model(noise=5.0), "'y' changed: .*other constants"),
        (normal_model(n=30), "length of dim 'obs': 20 -> 30"),
    ],
    ids=["prior", "likelihood", "data size"],
)
def test_a_changed_model_is_refused_naming_the_change(saved, changed, match):
    amortizer, path = saved
    with pytest.raises(ValueError, match=match):
        abi.Amortizer.load(path, model=changed)
    # reusing the weights is an explicit choice, and warns
    with pytest.warns(abi.ModelChangedWarning, match="for a changed model"):
        loaded = abi.Amortizer.load(path, model=changed, allow_model_change=True)
    assert loaded.history.step == amortizer.history.step


def test_the_signature_is_the_same_in_another_process():
    code = (
        "from tests.test_files import normal_model; from pymc_abi.model._signature import "
        "model_signature; import json; print(json.dumps(model_signature(normal_model())))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    from pymc_abi.model._signature import model_signature

    assert json.loads(out.strip().splitlines()[-1]) == model_signature(normal_model())


def test_the_same_model_rebuilt_loads(saved):
    amortizer, path = saved
    loaded = abi.Amortizer.load(path, model=normal_model())
    a = amortizer.sample(draws=20, random_seed=1).posterior["mu"].values
    np.testing.assert_array_equal(loaded.sample(draws=20, random_seed=1).posterior["mu"].values, a)


def test_fixed_data_are_part_of_the_model(tmp_path):
    def regression(X):
        with pm.Model() as model:
            x = pm.Data("X", X)
            beta = pm.Normal("beta", 0, 1, shape=2)
            pm.Normal("y", x @ beta, 1, observed=np.zeros(len(X)))
        return model

    X = np.random.default_rng(0).normal(size=(10, 2))
    abi.Amortizer(regression(X), random_seed=0, _pilot=32).save(tmp_path / "r.abi")
    with pytest.raises(ValueError, match="pm.Data 'X' changed"):
        abi.Amortizer.load(tmp_path / "r.abi", model=regression(X + 1))


def test_a_bank_of_a_changed_model_is_refused():
    bank = abi.simulate(normal_model(), n=300, random_seed=0, progressbar=False)
    amortizer = abi.Amortizer(normal_model(loc=50.0, scale=100.0), _pilot=16)
    with pytest.raises(
        abi.ModelChangedError, match=r"bank was made from another model: .*Normal\(50, 100\)"
    ):
        amortizer.fit(simulations=bank, batch_size=64, progressbar=False)


# ---------------------------------------------------------------------- banks
def test_simulate_never_overwrites_without_being_asked(tmp_path):
    model = normal_model(n=5)
    path = tmp_path / "notes.nc"
    path.write_text("my precious notes")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        abi.simulate(model, n=10, path=path, progressbar=False)
    assert path.read_text() == "my precious notes"
    bank = abi.simulate(model, n=10, path=path, overwrite=True, random_seed=0, progressbar=False)
    assert bank.sizes["simulation"] == 10
    assert not [p for p in tmp_path.iterdir() if p.name != "notes.nc"]  # no leftovers


_INTERRUPTED = """
import os, signal, sys
import numpy as np, pymc as pm, pymc_abi as abi

# a background job of a non-interactive shell (as CI runs pytest) starts with SIGINT
# ignored; a terminal's foreground process, which Ctrl-C reaches, has Python's handler
signal.signal(signal.SIGINT, signal.default_int_handler)
drawn = 0

def interrupting(rng, mu, size=None):
    # draws as _simulator_model's function does; once 40% of the bank is simulated, the
    # process sends itself SIGINT (what Ctrl-C sends): a real signal, at a known point
    global drawn
    drawn += int(np.prod(size or 1))
    if drawn > 4800:
        os.kill(os.getpid(), signal.SIGINT)
    return rng.normal(mu, 1.0, size=size)

with pm.Model() as model:
    mu = pm.Normal("mu", 0, 1)
    pm.Simulator("y", interrupting, mu, observed=np.zeros(3))
abi.simulate(model, n=12000, chunk_size=400, path=sys.argv[1], random_seed=7, progressbar=False)
print("finished", flush=True)
"""


def _simulator_model():
    def draw(rng, mu, size=None):
        return rng.normal(mu, 1.0, size=size)

    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        pm.Simulator("y", draw, mu, observed=np.zeros(3))
    return model


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_an_interrupted_bank_is_refused_then_resumed_identically(tmp_path, suffix):
    path = tmp_path / f"bank{suffix}"
    script = tmp_path / "interrupted.py"
    script.write_text(textwrap.dedent(_INTERRUPTED))
    done = subprocess.run(
        [sys.executable, str(script), str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert "finished" not in done.stdout
    assert "KeyboardInterrupt" in done.stderr, done.stderr[-2000:]
    assert path.exists()

    model = _simulator_model()
    amortizer = abi.Amortizer(model, _pilot=16)
    with pytest.raises(
        abi.IncompleteBankError, match=r"incomplete: [\d,]+ of 12,000 simulations .*resume=True"
    ):
        amortizer.fit(simulations=path, batch_size=64, progressbar=False)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the simulator's per-draw loop
        resumed = abi.simulate(
            model, n=12000, chunk_size=400, path=path, resume=True, progressbar=False
        )
        whole = abi.simulate(model, n=12000, chunk_size=400, random_seed=7, progressbar=False)
    assert resumed["_chunk_complete"].values.all()
    for name in ("mu", "y", "_unconstrained"):
        np.testing.assert_array_equal(resumed[name].values, whole[name].values)
    resumed.close()
    with pytest.raises(ValueError, match="chunk_size"):  # resumed only as it was started
        abi.simulate(model, n=12000, chunk_size=500, path=path, resume=True, progressbar=False)


def _corrupt_netcdf(path: Path, variable: str) -> None:
    import h5py

    with h5py.File(path, "r") as f:
        offset = f[variable].id.get_chunk_info(1).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 64] ^= 0xFF
    path.write_bytes(bytes(data))


def _corrupt_zarr(path: Path, variable: str) -> None:
    chunk = sorted(
        p for p in (path / variable).rglob("*") if p.is_file() and p.name != "zarr.json"
    )[1]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_a_damaged_bank_is_refused(tmp_path, suffix):
    model = normal_model(n=5)
    path = tmp_path / f"bank{suffix}"
    abi.simulate(model, n=9000, chunk_size=9000, path=path, random_seed=0, progressbar=False)
    (_corrupt_netcdf if suffix == ".nc" else _corrupt_zarr)(path, "y")
    amortizer = abi.Amortizer(model, _pilot=16)
    with pytest.raises(abi.DamagedFileError, match="the file is damaged"):
        amortizer.fit(simulations=path, batch_size=64, steps=5, chunk_size=9000, progressbar=False)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_two_writers_of_one_new_bank_path_cannot_both_succeed(tmp_path, suffix):
    """Two processes creating the same new bank: the path is claimed before anything is
    written, so one writes it and the other is refused; a write that fails before it begins
    leaves the path free."""
    from pymc_abi.core._atomic import claim

    model = normal_model(n=5)
    path = tmp_path / f"bank{suffix}"
    claim(path, folder=suffix == ".zarr")  # the other process got there first
    with pytest.raises(FileExistsError, match="exists"):
        abi.simulate(model, n=10, path=path, random_seed=0, progressbar=False)
    with pytest.raises(FileExistsError, match="created meanwhile"):
        claim(path, folder=suffix == ".zarr")  # what the later of two racing writers meets
    # a write that fails before it begins leaves no empty bank behind
    other = tmp_path / f"other{suffix}"

    with pm.Model() as impossible:  # its prior draws keep falling outside the support
        pm.Normal("s", -50.0, 1.0, transform=log)
        pm.Normal("y", 0, 1, observed=np.zeros(5))
    with pytest.raises(RuntimeError, match="outside the support"):
        abi.simulate(impossible, n=10, path=other, random_seed=0, progressbar=False)
    assert not other.exists()
    bank = abi.simulate(model, n=10, path=other, random_seed=0, progressbar=False)
    assert bank.sizes["simulation"] == 10


_RACER = """
import sys, time
from pathlib import Path
import numpy as np, pymc as pm
import pymc_abi as abi

path, go = Path(sys.argv[1]), Path(sys.argv[2])
with pm.Model() as model:
    mu = pm.Normal("mu", 0, 1)
    pm.Normal("y", mu, 1, observed=np.zeros(5))
abi.simulate(model, n=10, random_seed=0, progressbar=False)  # compiled before the start
Path(sys.argv[3]).touch()  # ready
while not go.exists():
    time.sleep(0.001)
try:
    abi.simulate(model, n=5000, chunk_size=500, path=path, random_seed=0, progressbar=False)
    print("wrote")
except FileExistsError as err:
    print("refused:", err)
"""


def test_two_processes_racing_for_one_new_bank(tmp_path):
    """Two real processes, released at once, simulate into the same new path: one writes
    the bank, the other is refused (neither replaces the other's bank)."""
    script, go, path = tmp_path / "racer.py", tmp_path / "go", tmp_path / "bank.zarr"
    script.write_text(_RACER)
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    racers = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), str(go), str(flag)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag in ready
    ]
    try:
        deadline = time.monotonic() + 600
        while not all(f.exists() for f in ready):
            assert time.monotonic() < deadline and all(r.poll() is None for r in racers), [
                r.communicate()[1][-2000:] for r in racers if r.poll() is not None
            ]
            time.sleep(0.05)
        go.touch()
        outs = [r.communicate(timeout=600) for r in racers]
    finally:
        for r in racers:
            r.kill()
    said = sorted(out.strip().splitlines()[-1].split(":")[0] for out, _ in outs)
    assert said == ["refused", "wrote"], outs
    bank = abi.open_bank(path)
    assert bank.sizes["simulation"] == 5000 and bank["_chunk_complete"].values.all()


# ---------------------------------------------------------------------- saving and loading
def test_save_is_atomic_for_concurrent_readers(saved, tmp_path):
    amortizer, _ = saved
    path = tmp_path / "shared.abi"
    amortizer.save(path)
    failures, done = [], threading.Event()

    def read():
        while not done.is_set():
            try:
                abi.Amortizer.load(path, model=amortizer.model)
            except Exception as err:  # any failure is a half-written file
                failures.append(err)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    for _ in range(15):
        amortizer.save(path)
    done.set()
    for reader in readers:
        reader.join()
    assert not failures, failures[:3]
    assert [p.name for p in tmp_path.iterdir()] == ["shared.abi"]


def test_a_failed_save_keeps_the_previous_file(saved, tmp_path):
    amortizer, _ = saved
    path = tmp_path / "keep.abi"
    amortizer.save(path)
    before = path.read_bytes()
    amortizer.history.stops.append(lambda: None)  # cannot be pickled: the save fails midway
    try:
        with pytest.raises(Exception):  # noqa: B017 - torch's pickling error, whatever its type
            amortizer.save(path)
    finally:
        amortizer.history.stops.pop()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.abi"]


def test_load_refuses_crafted_and_foreign_files(saved, tmp_path):
    _, path = saved
    from pymc_abi.amortizers.persistence import _checksum

    blob = torch.load(path, weights_only=True)
    blob["config"]["hidden_features"] = [200_000, 200_000]  # would allocate ~40 GB
    torch.save(blob, tmp_path / "edited.abi")
    with pytest.raises(ValueError, match="checksum does not match"):
        abi.Amortizer.load(tmp_path / "edited.abi", model=normal_model())
    # crafted by someone who recomputes the checksum: the sizes are still bounded
    blob["checksum"] = _checksum(blob)
    torch.save(blob, tmp_path / "crafted.abi")
    with pytest.raises(ValueError, match="do not support"):
        abi.Amortizer.load(tmp_path / "crafted.abi", model=normal_model())
    blob = torch.load(path, weights_only=True)
    blob["config"]["hidden_features"] = [64] * 10_000  # deep, not wide
    blob["checksum"] = _checksum(blob)
    torch.save(blob, tmp_path / "deep.abi")
    with pytest.raises(ValueError, match="do not support"):
        abi.Amortizer.load(tmp_path / "deep.abi", model=normal_model())
    blob = torch.load(path, weights_only=True)
    name = next(k for k, v in blob["state"].items() if v.is_floating_point() and v.numel())
    blob["state"][name].view(-1)[0] = float("nan")
    blob["checksum"] = _checksum(blob)
    torch.save(blob, tmp_path / "nan.abi")
    with pytest.raises(ValueError, match=f"weight '{name}' holds NaN"):
        abi.Amortizer.load(tmp_path / "nan.abi", model=normal_model())
    blob = torch.load(path, weights_only=True)
    blob["config"] = ["not", "a", "dict"]
    torch.save(blob, tmp_path / "malformed.abi")
    with pytest.raises(abi.DamagedFileError, match="damaged pymc-abi amortizer file.*malformed"):
        abi.Amortizer.load(tmp_path / "malformed.abi", model=normal_model())

    (tmp_path / "junk.abi").write_bytes(b"PK\x03\x04 not a zip at all")
    with pytest.raises(abi.DamagedFileError, match="not a readable pymc-abi amortizer") as info:
        abi.Amortizer.load(tmp_path / "junk.abi", model=normal_model())
    assert "weights_only" not in str(info.value)

    # a pickle that runs code is never executed
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"format": "pymc-abi", "evil": Evil()}, tmp_path / "evil.abi")
    with pytest.raises(abi.DamagedFileError, match="not a readable pymc-abi amortizer"):
        abi.Amortizer.load(tmp_path / "evil.abi", model=normal_model())
    assert not (tmp_path / "pwned").exists()


def test_a_flipped_bit_in_the_weights_is_caught(saved, tmp_path):
    """A single bit flipped anywhere in the stored weights changes the checksum."""
    _, path = saved
    blob = torch.load(path, weights_only=True)
    name = next(k for k, v in blob["state"].items() if v.is_floating_point() and v.numel() > 3)
    raw = blob["state"][name].view(-1).view(torch.int32)
    raw[3] ^= 1 << 7  # one mantissa bit: a finite weight, slightly changed
    torch.save(blob, tmp_path / "flipped.abi")
    with pytest.raises(ValueError, match="checksum does not match"):
        abi.Amortizer.load(tmp_path / "flipped.abi", model=normal_model())


def test_save_never_writes_through_a_planted_link(saved, tmp_path, monkeypatch):
    """The partial file is created exclusively: a symlink at its name makes save fail, and
    the file it points to is untouched."""
    from pymc_abi.amortizers import persistence

    amortizer, _ = saved
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    planted = tmp_path / ".model.abi.planted.partial"
    planted.symlink_to(victim)
    monkeypatch.setattr(persistence, "partial_path", lambda path: planted)
    with pytest.raises(OSError):
        amortizer.save(tmp_path / "model.abi")
    assert victim.read_text() == "precious" and not (tmp_path / "model.abi").exists()


def test_in_memory_bank_records_its_plan():
    bank = abi.simulate(normal_model(n=5), n=25, chunk_size=10, random_seed=3, progressbar=False)
    assert isinstance(bank, xr.Dataset)
    assert bank.attrs["pymc_abi_simulations"] == 25
    assert bank["_chunk_complete"].values.tolist() == [1, 1, 1]


def test_files_saved_before_recurrent_steps_read_every_step(tmp_path):
    """The time-series summary's GRU pools long series by default (recurrent_steps=64);
    a file saved before the option existed loads with its GRU reading every step, as it was
    trained."""
    from pymc_abi.amortizers.persistence import _checksum

    with pm.Model() as model:
        sigma = pm.HalfNormal("sigma", 1)
        pm.GaussianRandomWalk(
            "y", sigma=sigma, init_dist=pm.Normal.dist(0, 1), steps=99, observed=np.zeros(100)
        )
    default = abi.Amortizer(model, _pilot=8)
    assert default.net.summary.gru.hidden_size == 32  # max(32, 2 * 16) for one parameter
    assert default.config["time_series_features"] == 32
    # the width of the files saved before these options
    amortizer = abi.fit(model, steps=5, time_series_features=64, random_seed=0, progressbar=False)
    assert amortizer.net.summary.recurrent_steps == 64
    assert amortizer.config["recurrent_steps"] == 64
    assert amortizer.config["full_resolution_layers"] == 1
    amortizer.save(tmp_path / "new.abi")
    blob = torch.load(tmp_path / "new.abi", weights_only=True)
    del blob["config"]["recurrent_steps"], blob["config"]["full_resolution_layers"]
    del blob["config"]["time_series_features"]
    blob["checksum"] = _checksum(blob)
    torch.save(blob, tmp_path / "old.abi")
    old = abi.Amortizer.load(tmp_path / "old.abi", model=model)
    assert old.net.summary.recurrent_steps is None
    new = abi.Amortizer.load(tmp_path / "new.abi", model=model)
    assert new.net.summary.recurrent_steps == 64
    assert new.net.summary.full_resolution_layers == 1
    # saved between the two options: windows averaged after every convolution
    blob = torch.load(tmp_path / "new.abi", weights_only=True)
    del blob["config"]["full_resolution_layers"], blob["config"]["time_series_features"]
    blob["checksum"] = _checksum(blob)
    torch.save(blob, tmp_path / "between.abi")
    between = abi.Amortizer.load(tmp_path / "between.abi", model=model)
    assert between.net.summary.recurrent_steps == 64
    assert between.net.summary.full_resolution_layers is None
    y = {"y": np.cumsum(np.random.default_rng(0).normal(size=100))}
    a = amortizer.sample(y, draws=50, importance_sampling=False, random_seed=1)
    b = new.sample(y, draws=50, importance_sampling=False, random_seed=1)
    np.testing.assert_array_equal(a.posterior["sigma"].values, b.posterior["sigma"].values)
