"""Threads and memory: a service that serves posteriors calls sample, log_prob and sbc from
many threads at once; each call must be right, and exactly reproducible from its seed."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pymc as pm
import pytest
import torch

import pymc_abi as abi
from pymc_abi.inference import sampling as sampling_module


@pytest.fixture(scope="module")
def amortizer():
    with pm.Model(coords={"obs": range(15)}) as model:
        mu = pm.Normal("mu", 0, 1)
        sigma = pm.HalfNormal("sigma", 1)
        pm.Deterministic("scale", 2 * sigma)
        # data with a spread: zeros would make the posterior improper (sigma -> 0)
        pm.Normal("y", mu, sigma, observed=np.linspace(-1.0, 1.0, 15), dims="obs")
    return abi.fit(model, steps=40, validation_simulations=64, random_seed=0, progressbar=False)


def _datasets(k):
    rng = np.random.default_rng(1)
    return [{"y": rng.normal(rng.normal(), 1.0, 15)} for _ in range(k)]


def test_sample_is_seed_exact_whatever_ran_before(amortizer):
    a = amortizer.sample(draws=50, random_seed=11).posterior["mu"].values
    amortizer.sample(draws=50)  # unseeded calls in between change nothing
    torch.manual_seed(123)  # nor does torch's global generator
    b = amortizer.sample(draws=50, random_seed=11).posterior["mu"].values
    np.testing.assert_array_equal(a, b)


def test_a_deep_copy_has_locks_of_its_own(amortizer):
    """copy.deepcopy of a used amortizer (compiled functions and their locks included)."""
    import copy

    data = {"y": np.linspace(-1.0, 1.0, 15)}
    before = amortizer.sample(data, draws=20, importance_sampling=True, random_seed=3)
    twin = copy.deepcopy(amortizer)
    assert twin.parameters is not amortizer.parameters
    again = twin.sample(data, draws=20, importance_sampling=True, random_seed=3)
    np.testing.assert_array_equal(again.posterior["mu"].values, before.posterior["mu"].values)
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(
            pool.map(
                lambda a: a.log_prob({"mu": np.zeros(3), "sigma": np.ones(3)}), [amortizer, twin]
            )
        )
    np.testing.assert_array_equal(done[0], done[1])


def test_sample_log_prob_and_sbc_from_many_threads(amortizer):
    datasets = _datasets(6)
    calls = [(d, seed) for seed in range(8) for d in range(len(datasets))]

    def draw(call):
        d, seed = call
        result = amortizer.sample(datasets[d], draws=40, random_seed=seed)
        values = {k: result.posterior[k].values for k in ("mu", "sigma", "scale")}
        log_q = amortizer.log_prob(result, datasets[d])
        return values, log_q

    expected = [draw(call) for call in calls]  # one thread
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(draw, calls))
        sbc = list(
            pool.map(
                lambda s: abi.sbc(
                    amortizer, num_simulations=30, draws=20, random_seed=s, progressbar=False
                ),
                [5, 5, 6],
            )
        )
    for (values, log_q), (want, want_log_q) in zip(got, expected):
        for name in values:
            np.testing.assert_array_equal(values[name], want[name])
        np.testing.assert_allclose(log_q, want_log_q, rtol=1e-6)
    np.testing.assert_array_equal(sbc[0].sbc_stats["rank"].values, sbc[1].sbc_stats["rank"].values)
    assert not np.array_equal(sbc[0].prior["mu"].values, sbc[2].prior["mu"].values)


def test_many_draws_are_made_in_bounded_passes(amortizer, monkeypatch):
    """Draws beyond one pass are split: the flow never sees more rows than a pass holds."""
    seen = []
    inner = amortizer.net.inference.sample_and_log_prob

    def counting(n, context, **kwargs):
        seen.append(n * context.shape[0])
        return inner(n, context, **kwargs)

    monkeypatch.setattr(sampling_module, "ROWS_PER_PASS", {"cpu": 256, "cuda": 256})
    monkeypatch.setattr(amortizer.net.inference, "sample_and_log_prob", counting)
    # the flow alone: importance sampling would add proposals to the count
    result = amortizer.sample(_datasets(3), draws=250, importance_sampling=False)
    assert max(seen) <= 256 and sum(seen) == 3 * 1000
    for idata in result:
        draws = idata.posterior["mu"].values
        assert draws.shape == (4, 250) and np.isfinite(draws).all()
        # no pass repeated another's draws (a repeat would cost 256 of 1,000; float32
        # draws of a narrow posterior coincide by chance now and then)
        assert len(np.unique(draws)) > 0.98 * draws.size
