"""The public data description, configuration, training sources and seeds (issue 13)."""

import copy
import dataclasses

import numpy as np
import pymc as pm
import pytest
import torch

import pymc_abi as abi
from pymc_abi.core.seeds import SeedTree
from pymc_abi.data.spec import DataSpec
from pymc_abi.training.loop import History
from pymc_abi.training.sources import BankSource, DropCounter, MemorySource, OnlineSource


def normal_model(n=20):
    with pm.Model(coords={"obs": range(n)}) as model:
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Normal("y", mu, sigma, observed=np.zeros(n), dims="obs")
    return model


def regression_model():
    with pm.Model(coords={"obs": range(15)}) as model:
        X = pm.Data("X", np.zeros(15), dims="obs")
        b = pm.Normal("b", 0, 1)
        pm.Normal("y", b * X, 1, observed=np.zeros(15), dims="obs")
    return model


@pytest.fixture(scope="module")
def spec():
    return DataSpec.from_model(abi.ModelSimulator(normal_model()), dim_lengths={"obs": (5, 30)})


# ---------------------------------------------------------------------- DataSpec
def test_spec_describes_the_dataset(spec):
    assert spec.observed == ("y",)
    assert spec.dim_ranges == {"obs": (5, 30)}
    assert [(i.name, i.variables, i.kind, i.varying) for i in spec.inputs] == [
        ("y", ["y"], "deepset", "obs")
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.time_dim = "obs"


@pytest.mark.parametrize(
    "observed, match",
    [
        ({"y": np.zeros(40)}, "'y' has 40 entries along dim 'obs', outside the range"),
        ({"y": np.zeros((10, 2))}, "'y' has shape \\(10, 2\\)"),
        ({"y": np.r_[np.zeros(9), np.nan]}, "'y' holds NaN or inf"),
        ({"z": np.zeros(10)}, "\\['z'\\] are not observed variables"),
        ({}, "lacks observed variable\\(s\\) \\['y'\\]"),
    ],
)
def test_spec_validation_names_the_variable(spec, observed, match):
    with pytest.raises(ValueError, match=match):
        spec.datasets(observed)


def test_spec_validation_names_the_dataset_in_a_list(spec):
    with pytest.raises(ValueError, match="Dataset 1 of 2: 'y' has 3 entries"):
        spec.datasets([{"y": np.zeros(10)}, {"y": np.zeros(3)}])
    datasets, single = spec.datasets([{"y": np.zeros(10)}, {"y": np.ones(12)}])
    assert not single and [spec.dim_lengths_of(d) for d in datasets] == [{"obs": 10}, {"obs": 12}]


def test_spec_simulates_shapes_and_flags_non_finite_rows():
    with pm.Model() as model:
        x = pm.Normal("x", 0, 1)
        pm.Normal("y", 0, pm.math.sqrt(x + 1), observed=np.zeros(3))  # NaN when x < -1
    spec = DataSpec.from_model(abi.ModelSimulator(model))
    sim = spec.simulate(500, 1)
    assert sim.z.shape == (500, 1) and sim.values["y"].shape == (500, 3)
    assert 0 < sim.dropped < 250 and sim.dropped == int((~sim.finite).sum())
    kept = sim.finite_only()
    assert kept.dropped == 0 and len(kept.z) == 500 - sim.dropped
    assert np.isfinite(kept.values["y"]).all()
    # the same seed, the same batch
    np.testing.assert_array_equal(spec.simulate(500, 1).z, sim.z)


def test_spec_simulates_varying_lengths_and_covariates():
    spec = DataSpec.from_model(
        abi.ModelSimulator(regression_model()),
        dim_lengths={"obs": (5, 15)},
        covariates={"X": lambda rng, n, lengths: rng.normal(size=(n, lengths["obs"]))},
    )
    assert [i.variables for i in spec.inputs] == [["y", "X"]]
    sim = spec.simulate(8, 3, dim_lengths={"obs": 7})
    assert sim.lengths == {"obs": 7}
    assert sim.values["y"].shape == (8, 7) and sim.values["X"].shape == (8, 7)
    inputs = spec.network_inputs(sim.values, 8)
    assert inputs["y"].shape == (8, 7, 2) and inputs["y"].dtype == np.float32
    drawn = spec.simulate(4, 5)
    assert 5 <= drawn.lengths["obs"] <= 15


def test_spec_refuses_bad_descriptions():
    sim = abi.ModelSimulator(regression_model())
    with pytest.raises(ValueError, match="pm.Data 'X' has that dim"):
        DataSpec.from_model(sim, dim_lengths={"obs": (5, 15)})
    with pytest.raises(ValueError, match="'Z' is not a pm.Data container"):
        DataSpec.from_model(sim, covariates={"Z": None})
    with pytest.raises(ValueError, match="time_dim='t' is not a dim"):
        DataSpec.from_model(sim, time_dim="t")


# ---------------------------------------------------------------------- configuration
def test_configs_validate_and_are_the_single_source_of_defaults():
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        abi.TrainingConfig(batch_size=0)
    with pytest.raises(ValueError, match="hidden_features must be a sequence"):
        abi.NetworkConfig(hidden_features=64)
    with pytest.raises(ValueError, match="flow matching has none"):
        abi.NetworkConfig(inference_network="flow_matching", transforms=2)
    with pytest.raises(TypeError, match="Unknown option"):
        abi.fit(normal_model(), stepz=3)
    with pytest.raises(TypeError, match="unknown option"):
        abi.Amortizer(normal_model(), steps=3, _pilot=0)


def test_every_kinds_defaults_come_from_the_configs():
    network, training = abi.NetworkConfig(), abi.TrainingConfig()
    # summary sizes: a posterior's grows with its parameters, a comparison's does not
    assert [network.summary_width("posterior", d) for d in (1, 8, 20)] == [16, 16, 40]
    assert [network.summary_width("two_level", d) for d in (3, 20)] == [32, 40]
    assert network.summary_width("comparison", 50) == 32
    assert abi.NetworkConfig(summary_features=5).summary_width("two_level", 40) == 5
    assert training.min_delta_for("posterior", 6) == pytest.approx(0.03)
    assert training.min_delta_for("two_level", 6) == 0.001
    assert training.min_delta_for("comparison", 6) == 0.005
    assert abi.TrainingConfig(min_delta=0.2).min_delta_for("posterior", 6) == 0.2
    with pytest.raises(ValueError, match="kind must be one of"):
        network.summary_width("flat", 2)
    # the budget: online 10,000 steps validated every 100; offline epochs of the bank
    assert training.budget(None) == (10_000, 100)
    assert abi.TrainingConfig(epochs=3).budget(40) == (120, 40)
    assert abi.TrainingConfig(steps=7, validate_every=2).budget(40) == (7, 2)
    # the objects read them: a built amortizer's saved summary size is the posterior default
    assert abi.Amortizer(normal_model(), _pilot=16).config["summary_features"] == 16
    with pytest.raises(ValueError, match=r"anneal must be in \(0, 1\)"):
        abi.TrainingConfig(anneal=1.0)
    with pytest.raises(ValueError, match="clip_norm must be positive"):
        abi.TrainingConfig(clip_norm=0.0)
    with pytest.raises(ValueError, match="warmup must be a positive integer"):
        abi.TrainingConfig(warmup=0)


def test_training_knobs_reach_the_loop():
    """``warmup``, ``clip_norm`` and ``anneal`` are TrainingConfig fields that fit passes on:
    their defaults given explicitly train bit-identically, other values differently. Every
    run starts from the same untrained weights and seed (one amortizer, one compilation)."""
    amortizer = abi.Amortizer(normal_model(), hidden_features=(16, 16), random_seed=0, _pilot=64)
    untrained = copy.deepcopy(amortizer.net.state_dict())

    def losses(**options):
        amortizer.net.load_state_dict(untrained)
        amortizer.history = History()
        amortizer.fit(
            steps=40,
            validate_every=10,
            batch_size=32,
            validation_simulations=32,
            patience=None,
            random_seed=0,
            progressbar=False,
            **options,
        )
        return amortizer.history.loss

    default = losses()
    assert losses(warmup=200, clip_norm=1.5, anneal=0.3) == default
    for knob in ({"warmup": 1}, {"clip_norm": 1e-3}, {"anneal": 0.9}):
        assert losses(**knob) != default, knob


def test_covariate_functions_are_named_covariates_and_data_still_works(tmp_path):
    """``covariates=`` names the functions that draw covariates while training; the old
    ``data=`` still works, with a FutureWarning that points at the caller's line."""

    def draw(rng, n, lengths):
        return rng.normal(size=(n, 15))

    new = abi.Amortizer(regression_model(), covariates={"X": draw}, random_seed=0, _pilot=16)
    with pytest.warns(FutureWarning, match=r"data= is renamed covariates=") as caught:
        old = abi.Amortizer(regression_model(), data={"X": draw}, random_seed=0, _pilot=16)
    assert caught[0].filename == __file__
    assert new.data_spec.covariates == old.data_spec.covariates == {"X": draw}
    assert new.config == old.config
    with pytest.raises(TypeError, match="Give covariates= only"):
        abi.Amortizer(regression_model(), covariates={"X": draw}, data={"X": draw})
    path = tmp_path / "r.abi"
    new.save(path)
    with pytest.warns(FutureWarning, match=r"data= is renamed covariates="):
        loaded = abi.Amortizer.load(path, regression_model(), data={"X": draw})
    assert loaded.data_spec.covariates == {"X": draw}
    with pytest.warns(FutureWarning, match=r"data= is renamed covariates=") as caught:
        abi.fit(
            regression_model(),
            data={"X": draw},
            steps=2,
            batch_size=16,
            validation_simulations=16,
            progressbar=False,
        )
    assert caught[0].filename == __file__


def test_network_config_round_trips_through_save_and_load(tmp_path):
    model = normal_model()
    network = abi.NetworkConfig(hidden_features=(32, 32), summary_features=8, transforms=2)
    amortizer = abi.fit(
        model,
        network=network,
        training=abi.TrainingConfig(steps=5, validation_simulations=32, batch_size=64),
        random_seed=0,
        progressbar=False,
    )
    assert amortizer.network_config == network
    amortizer.save(tmp_path / "a.abi")
    loaded = abi.Amortizer.load(tmp_path / "a.abi", model=model)
    assert loaded.config == amortizer.config
    assert loaded.network_config.hidden_features == (32, 32)
    assert loaded.network_config.transforms == 2
    assert loaded.network_config.summary_features == 8


# ---------------------------------------------------------------------- training sources
@pytest.fixture(scope="module")
def quick_spec():
    return DataSpec.from_model(abi.ModelSimulator(normal_model()))


def _check_batches(source, batch_size, generator):
    theta, data = next(source.batches(generator))
    assert theta.shape == (batch_size, 2) and theta.dtype == torch.float32
    assert data["y"].shape == (batch_size, 20, 1)
    return theta, data


def test_online_source_yields_fresh_batches(quick_spec):
    source = OnlineSource(
        quick_spec, SeedTree(1), DropCounter(), batch_size=16, n_val=32, device="cpu"
    )
    theta_val, _ = source.validation()
    assert theta_val.shape == (32, 2) and source.steps_per_epoch is None
    batches = source.batches(torch.Generator().manual_seed(0))
    a, b = next(batches)[0], next(batches)[0]
    assert a.shape == (16, 2) and not torch.equal(a, b)


def test_memory_and_disk_banks_give_the_same_batches(quick_spec, tmp_path):
    """A bank simulated in memory and the same bank on disk train on identical batches."""
    n = 200
    path = tmp_path / "bank.nc"
    abi.simulate(quick_spec.model, n=n, path=path, random_seed=3, progressbar=False)
    disk = BankSource(
        quick_spec, path, DropCounter(), batch_size=32, n_val=20, chunk=10_000, device="cpu"
    )
    theta, data = disk.chunk_at(0, n)  # the same simulations, held in memory
    memory = MemorySource(
        (theta[180:], {k: v[180:] for k, v in data.items()}),
        (theta[:180], {k: v[:180] for k, v in data.items()}),
        batch_size=32,
    )
    assert disk.steps_per_epoch == memory.steps_per_epoch == 5
    torch.testing.assert_close(disk.validation()[0], memory.validation()[0])
    got_disk = _check_batches(disk, 32, torch.Generator().manual_seed(4))
    got_memory = _check_batches(memory, 32, torch.Generator().manual_seed(4))
    torch.testing.assert_close(got_disk[0], got_memory[0])
    torch.testing.assert_close(got_disk[1]["y"], got_memory[1]["y"])


def test_memory_source_splits_validation_first(quick_spec):
    source = MemorySource.simulate(
        quick_spec, SeedTree(2), DropCounter(), n=300, batch_size=64, n_val=30, device="cpu"
    )
    theta_val, data_val = source.validation()
    assert theta_val.shape == (30, 2) and data_val["y"].shape == (30, 20, 1)
    assert source.steps_per_epoch == 270 // 64
    _check_batches(source, 64, torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------- seeds
def test_sample_with_a_seed_ignores_the_call_history():
    model = normal_model()
    amortizer = abi.fit(
        model, steps=10, validation_simulations=32, random_seed=0, progressbar=False
    )
    first = amortizer.sample(draws=20, chains=2, random_seed=5, importance_sampling=False)
    amortizer.sample(draws=7, random_seed=None, importance_sampling=False)
    abi.sbc(amortizer, num_simulations=10, draws=5, random_seed=1, progressbar=False)
    torch.manual_seed(123)
    again = amortizer.sample(draws=20, chains=2, random_seed=5, importance_sampling=False)
    np.testing.assert_array_equal(first.posterior["mu"].values, again.posterior["mu"].values)
    amortizer.fit(steps=1, validation_simulations=32, progressbar=False)  # a new fit changes
    assert amortizer.dropped_simulations == 0  # counted per fit


def test_dropped_simulations_count_per_fit():
    with pm.Model() as model:
        x = pm.Normal("x", 0, 1)
        pm.Normal("y", 0, pm.math.sqrt(x + 2), observed=np.zeros(2))
    amortizer = abi.Amortizer(model, random_seed=0, _pilot=64)
    counts = []
    for _ in range(2):
        with pytest.warns(UserWarning, match="simulations held NaN"):
            amortizer.fit(
                steps=20, batch_size=64, validation_simulations=64, progressbar=False, random_seed=1
            )
        counts.append(amortizer.dropped_simulations)
    assert counts[0] > 0 and counts[0] == counts[1]  # the same run, counted afresh
