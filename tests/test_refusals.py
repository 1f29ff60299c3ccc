"""Arguments that were truncated, ignored or met with an internal error are refused, naming
the argument (model comparison, two-level amortizers, loading and saving, devices)."""

import warnings

import numpy as np
import pymc as pm
import pytest
import xarray as xr

import pymc_abi as abi
from tests.test_comparison import SCALES, normal_mean
from tests.test_two_level import SIGMA, TAU, intercepts

INDEX = np.repeat(np.arange(4), 3)


@pytest.fixture(scope="module")
def comparator():
    models = {name: normal_mean(s) for name, s in SCALES.items()}
    return abi.ModelComparator(models, random_seed=0, _pilot=64)


@pytest.fixture(scope="module")
def two_level():
    return abi.TwoLevelAmortizer(intercepts(INDEX), groups="county", random_seed=0, _pilot=16)


# ---------------------------------------------------------------------- model comparison
@pytest.mark.parametrize(
    "counts, match",
    [
        ([5], "counts has 1 entries for 2 models"),
        ([5, 5, 5], "counts has 3 entries for 2 models"),
        ([0, 0], "counts are all 0"),
        ([-3, 5], "counts must be an integer >= 0, got -3"),
        ([2.7, 3.9], "counts must be an integer >= 0, got 2.7"),
    ],
)
def test_simulate_logits_counts_are_checked(comparator, counts, match):
    with pytest.raises(ValueError, match=match):
        comparator.simulate_logits(None, counts=counts)


def test_simulate_logits_refuses_what_it_cannot_hold(comparator):
    with pytest.raises(TypeError, match="one integer per model"):
        comparator.simulate_logits(None, counts={"narrow": 3, "wide": 3})
    with pytest.raises(ValueError, match="disagrees with counts"):
        comparator.simulate_logits(-5, counts=[2, 2])
    with pytest.raises(ValueError, match="exceed 100,000,000"):
        comparator.simulate_logits(2**40)
    logits, labels = comparator.simulate_logits(None, counts=[3, 2], random_seed=1)
    assert logits.shape == (5, 2) and labels.tolist() == [0, 0, 0, 1, 1]


def test_a_temperature_needs_enough_simulations(comparator):
    with pytest.raises(ValueError, match="too few to fit a temperature: give at least 50"):
        comparator.calibrate_temperature(2)
    with pytest.raises(ValueError, match="validation_simulations=10 is too few to calibrate"):
        comparator.fit(steps=1, validation_simulations=10, progressbar=False)


@pytest.mark.parametrize("value", [None, "1.5", True, 1e40, 1e-320, np.array([1.0, 2.0])])
def test_temperature_setter_refuses_non_numbers_and_float32_extremes(comparator, value):
    before = comparator.temperature
    with pytest.raises(ValueError, match="temperature must be"):
        comparator.temperature = value
    assert comparator.temperature == before


def test_prior_refuses_strings_and_bools_and_keeps_extreme_scales_finite(comparator):
    with pytest.raises(TypeError, match="prior probabilities must be numbers"):
        comparator.prior = {"narrow": "0.2", "wide": 0.8}
    with pytest.raises(TypeError, match="prior probabilities must be numbers"):
        comparator.prior = [True, 1.0]
    with pytest.raises(ValueError, match="needs the one dim 'model'"):
        comparator.prior = xr.DataArray([0.2, 0.8])
    comparator.prior = {"narrow": 1e308, "wide": 1e308}  # relative weights: uniform
    np.testing.assert_allclose(comparator.prior.values, [0.5, 0.5])
    comparator.prior = [1e-320, 1e-320]
    np.testing.assert_allclose(comparator.prior.values, [0.5, 0.5])
    with pytest.raises(ValueError, match="within a factor 1e300"):
        comparator.prior = [1e-320, 1e300]
    comparator.prior = None


def test_predict_refuses_data_that_overflow_the_network(comparator):
    with pytest.raises(ValueError, match="logits of the data are not finite"):
        comparator.predict({"y": np.full(12, 3e38)})


def test_a_variable_given_twice_is_refused(comparator):
    with pytest.raises(ValueError, match=r"\['y'\] given both in observed and in data"):
        comparator.predict({"y": np.zeros(12)}, data={"y": np.ones(12)})


def test_sample_needs_a_dict_of_amortizers_and_no_dataset_dim(comparator):
    y = {"y": np.zeros(12)}
    with pytest.raises(TypeError, match="amortizers must be a dict of model names"):
        comparator.sample(y, [abi.Amortizer(normal_mean(1.0), _pilot=0)])
    amortizers = {"narrow": abi.Amortizer(comparator.models["narrow"], _pilot=0)}
    with pytest.raises(ValueError, match="dataset_dim= does not apply here"):
        comparator.sample([y, y], amortizers, dataset_dim="d")


@pytest.mark.parametrize("value", ["no", "false", None, 1])
def test_flags_refuse_strings(comparator, value):
    with pytest.raises(ValueError, match="calibrate must be True or False"):
        comparator.fit(steps=1, calibrate=value, progressbar=False)


def test_configurations_must_be_configs(comparator):
    with pytest.raises(TypeError, match=r"training must be a TrainingConfig .*got dict"):
        comparator.fit(training={"steps": 1}, progressbar=False)
    with pytest.raises(TypeError, match=r"network must be a NetworkConfig .*got dict"):
        abi.Amortizer(normal_mean(1.0), network={"summary_features": 8}, _pilot=0)
    with pytest.raises(ValueError, match="min_delta must be non-negative"):
        abi.TrainingConfig(min_delta=-1.0)


def test_models_are_distinct_and_named(comparator):
    narrow = comparator.models["narrow"]
    with pytest.raises(ValueError, match=r"models\['a'\] and models\['b'\] are the same model"):
        abi.ModelComparator({"a": narrow, "b": narrow}, _pilot=0)
    with pytest.raises(ValueError, match="must not be blank"):
        abi.ModelComparator({" ": narrow, "b": comparator.models["wide"]}, _pilot=0)


# ---------------------------------------------------------------------- devices, files
@pytest.mark.parametrize("device", ["nodevice", 3.5])
def test_device_is_checked(device):
    with pytest.raises(ValueError, match="device must be a torch device"):
        abi.Amortizer(normal_mean(1.0), device=device, _pilot=0)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA machine")
def test_cuda_without_cuda_is_refused():
    with pytest.raises(ValueError, match="this torch has no CUDA device"):
        abi.Amortizer(normal_mean(1.0), device="cuda", _pilot=0)


def test_save_and_load_paths_are_checked(tmp_path):
    amortizer = abi.Amortizer(normal_mean(1.0), _pilot=16)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        amortizer.save(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"directory .*missing does not exist"):
        amortizer.save(tmp_path / "missing" / "a.abi")
    for bad in ("", None):
        with pytest.raises(TypeError, match="path must be a file path"):
            amortizer.save(bad)
        with pytest.raises(TypeError, match="path must be a file path"):
            abi.Amortizer.load(bad, normal_mean(1.0))
    with pytest.raises(IsADirectoryError, match="is a directory, not a saved"):
        abi.Amortizer.load(tmp_path, normal_mean(1.0))
    assert not list(tmp_path.iterdir())  # nothing was left behind
    path = tmp_path / "a.abi"
    amortizer.save(path)
    with pytest.raises(ValueError, match=r"covariates names \['nope'\], which .* was not trained"):
        abi.Amortizer.load(path, normal_mean(1.0), covariates={"nope": lambda rng, n, d: None})


def test_load_refuses_string_flags(tmp_path):
    path = tmp_path / "a.abi"
    abi.Amortizer(normal_mean(1.0), _pilot=16).save(path)
    with pytest.raises(ValueError, match="allow_model_change must be True or False"):
        abi.Amortizer.load(path, normal_mean(3.0), allow_model_change="no")


# ---------------------------------------------------------------------- two-level
@pytest.mark.parametrize("sizes", [(1.5, 4.9), ("1", "4"), 5, (1, 2, 3), {"low": 1}, (1, 10**12)])
def test_group_sizes_are_ranges_of_integers(sizes):
    with pytest.raises(ValueError, match="group_sizes must be"):
        abi.TwoLevelAmortizer(intercepts(INDEX), groups="county", group_sizes=sizes, _pilot=0)


@pytest.mark.parametrize("lengths", [3.7, "5", (2, 6, 9), (2, 10**9)])
def test_numbers_of_groups_are_ranges_of_integers(lengths):
    with pytest.raises(ValueError, match=r"dim_lengths\['county'\] must be"):
        abi.TwoLevelAmortizer(
            intercepts(INDEX), groups="county", dim_lengths={"county": lengths}, _pilot=0
        )


def test_flat_dim_lengths_are_not_truncated():
    with pytest.raises(ValueError, match=r"dim_lengths\['obs'\] must be .*got 7.5"):
        abi.Amortizer(normal_mean(1.0), dim_lengths={"obs": 7.5}, _pilot=0)
    with pytest.raises(TypeError, match="dim_lengths must be a dict"):
        abi.Amortizer(normal_mean(1.0), dim_lengths=[("obs", 5)], _pilot=0)


def test_a_group_size_function_returning_fractions_is_refused():
    amortizer = abi.TwoLevelAmortizer(
        intercepts(INDEX),
        groups="county",
        group_sizes=lambda rng, n: np.full(n, 2.5),
        _pilot=0,
    )
    with pytest.raises(ValueError, match="group_sizes returned"):
        amortizer.hierarchy.draw_design(np.random.default_rng(0), 3)


@pytest.mark.parametrize(
    "option, match",
    [
        ({"preconditioner": "laplace"}, "preconditioner= applies to the flat Amortizer"),
        ({"inference_network": abi.networks.FlowNetwork}, "by name; give inference_network"),
        ({"summary_network": "deepset"}, "builds its own summaries"),
    ],
)
def test_two_level_network_options_it_does_not_take_are_refused(option, match):
    with pytest.raises(ValueError, match=match):
        abi.TwoLevelAmortizer(intercepts(INDEX), groups="county", _pilot=0, **option)


def test_the_group_index_is_not_drawn_by_a_function():
    with pytest.raises(
        ValueError, match=r"covariates\['g'\]: the group index is set by the design"
    ):
        abi.TwoLevelAmortizer(
            intercepts(INDEX), groups="county", covariates={"g": lambda rng, n, d: None}, _pilot=0
        )


def test_load_keeps_the_trained_group_sizes(two_level, tmp_path):
    path = tmp_path / "two.abi"
    two_level.save(path)
    with pytest.raises(ValueError, match="group_sizes= at load takes the function"):
        abi.Amortizer.load(path, intercepts(INDEX), group_sizes=(1, 100))
    with pytest.raises(ValueError, match="not drawn by a function: load it without"):
        abi.Amortizer.load(path, intercepts(INDEX), group_sizes=lambda rng, n: np.ones(n))
    loaded = abi.Amortizer.load(path, intercepts(INDEX))
    assert loaded.hierarchy.group_sizes == two_level.hierarchy.group_sizes


def test_amortizer_sample_checks_dataset_dim(two_level):
    y = {"y": np.zeros(12)}
    for bad in (5, "chain", "county"):
        with pytest.raises(ValueError, match="dataset_dim must be a new dim name"):
            two_level.sample([y], draws=10, dataset_dim=bad, importance_sampling=False)


def test_whole_number_floats_are_the_models_integers(two_level):
    """A group index read from a table as floats (pandas) is cast, not refused by bincount;
    fractions are refused."""
    y = np.zeros(12)
    as_ints = two_level.sample(
        {"y": y, "g": INDEX}, draws=20, importance_sampling=False, random_seed=1
    )
    as_floats = two_level.sample(
        {"y": y, "g": INDEX.astype(float)}, draws=20, importance_sampling=False, random_seed=1
    )
    np.testing.assert_array_equal(as_floats.posterior["a"].values, as_ints.posterior["a"].values)
    with pytest.raises(ValueError, match="'g' is a discrete variable .* non-integer"):
        two_level.sample({"y": y, "g": INDEX + 0.5}, draws=20, importance_sampling=False)


def test_sample_unconstrained_needs_a_batch_axis():
    amortizer = abi.Amortizer(normal_mean(1.0), _pilot=16)
    with pytest.raises(ValueError, match="one leading batch axis on every variable"):
        amortizer.sample_unconstrained({"y": np.float64(1.0)}, draws=5)
    z, log_q = amortizer.sample_unconstrained({"y": np.zeros((2, 12))}, draws=5, random_seed=0)
    assert z.shape == (2, 5, 1) and log_q.shape == (2, 5)


def test_a_covariate_left_out_is_named_when_the_shapes_disagree(two_level):
    """Observations of 6 rows without their group index: the model's 12-row index was
    used, and the error says so (it blamed the index alone)."""
    with pytest.raises(ValueError, match=r"\['g'\] were not given with the data"):
        two_level.sample({"y": np.zeros(6)}, draws=10, importance_sampling=False)


def test_log_prob_jacobian_is_a_flag(two_level):
    y = {"y": np.zeros(12), "g": INDEX}
    draws = two_level.sample(y, draws=5, importance_sampling=False, random_seed=0)
    with pytest.raises(ValueError, match="jacobian must be True or False"):
        two_level.log_prob(draws, y, jacobian="no")


def test_chunk_size_applies_to_banks_on_disk_only(comparator):
    with pytest.raises(ValueError, match="chunk_size= sets how many simulations are read"):
        comparator.fit(steps=1, chunk_size=5, progressbar=False)
    amortizer = abi.Amortizer(normal_mean(1.0), _pilot=16)
    for simulations in (None, 100):
        with pytest.raises(ValueError, match="this fit simulates its own"):
            amortizer.fit(simulations=simulations, steps=1, chunk_size=5, progressbar=False)


def test_log_prob_refuses_draws_of_another_number_of_groups():
    two_level = abi.TwoLevelAmortizer(
        intercepts(INDEX), groups="county", dim_lengths={"county": (3, 4)}, _pilot=16
    )
    y = {"y": np.zeros(12), "g": INDEX}
    draws = two_level.sample(y, draws=5, importance_sampling=False, random_seed=0)
    three = {"y": np.zeros(9), "g": np.repeat(np.arange(3), 3)}
    with pytest.raises(
        ValueError, match="'a' has 4 entries along dim 'county', but the dataset has 3"
    ):
        two_level.log_prob(draws, three)


def test_load_reads_the_file_once_and_builds_its_kind(two_level, tmp_path):
    path = tmp_path / "two.abi"
    two_level.save(path)
    with pm.Model(coords={"county": range(4), "obs": range(12)}) as changed:
        g = pm.Data("g", INDEX, dims="obs")
        mu = pm.Normal("mu", 0, 2)  # the prior changed
        a = pm.Normal("a", mu, TAU, dims="county")
        pm.Normal("y", a[g], SIGMA, observed=np.zeros(12), dims="obs")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = abi.Amortizer.load(path, changed, allow_model_change=True)
    assert isinstance(loaded, abi.TwoLevelAmortizer)
    # one read of the file: one warning (the two-level loader read it a second time)
    changes = [w for w in caught if issubclass(w.category, abi.ModelChangedWarning)]
    assert len(changes) == 1, [str(w.message) for w in caught]
    flat = tmp_path / "flat.abi"
    abi.Amortizer(normal_mean(1.0), _pilot=0).save(flat)
    with pytest.raises(ValueError, match="holds a flat amortizer: load it with Amortizer.load"):
        abi.TwoLevelAmortizer.load(flat, normal_mean(1.0))


def test_sbc_refuses_dims_the_amortizer_did_not_vary(two_level):
    with pytest.raises(ValueError, match=r"dim_lengths names \['nope'\], which the amortizer"):
        abi.sbc(two_level, num_simulations=2, dim_lengths={"nope": 3}, progressbar=False)


def test_embed_checks_its_datasets(two_level):
    with pytest.raises(ValueError, match="lacks observed variable"):
        two_level.embed([{"g": INDEX}])
    one = two_level.embed({"y": np.zeros(12), "g": INDEX})
    assert one.shape[0] == 1 and np.isfinite(one).all()
    with pytest.raises(ValueError):
        two_level.embed([])


def test_comparator_refuses_disk_banks_and_data_parallel_training(comparator, monkeypatch):
    with pytest.raises(ValueError, match="banks on disk are for Amortizer.fit so far"):
        comparator.fit(simulations="bank.zarr")
    for name, value in {
        "RANK": "0",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="ModelComparator.fit trains in one process"):
        comparator.fit(steps=1)


def test_comparator_load_refuses_unknown_covariates(comparator, tmp_path):
    path = tmp_path / "comp.abi"
    comparator.save(path)
    with pytest.raises(ValueError, match=r"covariates names \['nope'\], which .* was not trained"):
        abi.ModelComparator.load(path, comparator.models, covariates={"nope": lambda rng, n, d: 0})
