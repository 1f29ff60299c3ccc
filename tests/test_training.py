import itertools
import math

import numpy as np
import pymc as pm
import pytest
import torch

import pymc_abi as abi
from pymc_abi.training import History, train


def _gaussian_problem():
    torch.manual_seed(0)
    module = torch.nn.Linear(1, 1)

    def loss_fn(batch):
        x, y = batch
        return ((module(x) - y) ** 2).mean()

    def batches():
        while True:
            x = torch.randn(64, 1)
            yield x, 3 * x

    val = (torch.ones(8, 1), 3 * torch.ones(8, 1))
    return module, loss_fn, batches(), val


def test_train_learns_and_records_history():
    module, loss_fn, batches, val = _gaussian_problem()
    history = train(
        module,
        loss_fn,
        batches,
        val,
        steps=300,
        validate_every=50,
        history=History(),
        learning_rate=0.05,
        progressbar=False,
    )
    assert history.step == [50, 100, 150, 200, 250, 300]
    assert history.val_loss[-1] < 1e-3
    assert module.weight.item() == pytest.approx(3, abs=0.05)
    # a second run continues the step count
    train(
        module,
        loss_fn,
        batches,
        val,
        steps=100,
        validate_every=50,
        history=history,
        progressbar=False,
    )
    assert history.step[-2:] == [350, 400]


def test_keyboard_interrupt_keeps_best_weights():
    module, loss_fn, batches, val = _gaussian_problem()

    def interrupted():
        for i, batch in enumerate(batches):
            if i == 150:
                raise KeyboardInterrupt
            yield batch

    with pytest.warns(UserWarning, match=r"Training interrupted \(Ctrl-C\) at step 150"):
        history = train(
            module,
            loss_fn,
            interrupted(),
            val,
            steps=1000,
            validate_every=50,
            history=History(),
            learning_rate=0.05,
            progressbar=False,
        )
    assert history.step == [50, 100, 150]
    assert history.stops == ["interrupted at step 150"]
    best = min(history.val_loss)
    assert loss_fn(val).item() == pytest.approx(best, rel=1e-5)


def test_early_stopping_and_non_finite_batches():
    module, loss_fn, batches, val = _gaussian_problem()

    def poisoned():
        for i, (x, y) in enumerate(batches):
            if i % 10 == 0:
                x = x.clone()
                x[0] = math.nan
            yield x, y

    with pytest.warns(UserWarning, match="skipped because they held NaN"):
        history = train(
            module,
            loss_fn,
            poisoned(),
            val,
            steps=5000,
            validate_every=10,
            history=History(),
            learning_rate=0.0,
            patience=3,
            progressbar=False,
        )
    # learning rate 0: never improves. The first validation sets the best; then two
    # plateaus of `patience` validations each lower the learning rate, and a third stops
    assert history.step == list(range(10, 110, 10))
    assert history.skipped == 10
    assert history.stops[0].startswith("converged: the validation loss improved by less than")
    assert history.stops[0].endswith("(step 100)")


def test_plateau_schedule_lowers_the_rate_then_stops():
    from pymc_abi.training import Plateau

    plateau = Plateau(patience=2, min_delta=0.1, reductions=2, smoothing=1.0)
    losses = [5.0, 4.0, 3.95, 3.9, 3.0, 2.99, 2.98, 2.97, 2.96]
    reasons = [plateau.update(v) for v in losses]
    # 4.0 improves; 3.95, 3.9 do not by 0.1: halved; 3.0 improves; then two flat: halved
    # again; two more flat: stop
    assert plateau.scale == 0.25
    assert reasons[:-1] == [None] * 8 and reasons[-1].startswith("converged")
    smooth = Plateau(patience=2, min_delta=0.0, reductions=3, smoothing=0.5)
    smooth.update(1.0)
    smooth.update(3.0)  # one noisy jump moves the average half way
    assert smooth.smoothed == 2.0


def test_most_batches_non_finite_is_an_error():
    module, loss_fn, _, val = _gaussian_problem()
    bad = itertools.repeat((torch.full((4, 1), math.nan), torch.zeros(4, 1)))
    with pytest.raises(RuntimeError, match="held NaN or inf"):
        train(
            module,
            loss_fn,
            bad,
            val,
            steps=100,
            validate_every=10,
            history=History(),
            progressbar=False,
        )


@pytest.mark.slow
def test_gaussian_linear_10d():
    """theta ~ N(0, 0.1 I), x ~ N(theta, 0.1 I): posterior N(x / 2, 0.05 I)."""
    d = 10
    with pm.Model() as model:
        theta = pm.Normal("theta", 0, np.sqrt(0.1), shape=d)
        pm.Normal("x", theta, np.sqrt(0.1), observed=np.zeros(d))
    amortizer = abi.fit(model, steps=1500, random_seed=0, progressbar=False)
    assert amortizer.config["summary_kinds"] == {"x": "mlp"}
    rng = np.random.default_rng(1)
    sd = np.sqrt(0.05)
    for _ in range(3):
        x = rng.normal(0, np.sqrt(0.2), d)
        draws = amortizer.sample({"x": x}, draws=1000, random_seed=2).posterior["theta"]
        draws = draws.values.reshape(-1, d)
        # every coordinate: mean within 0.25 posterior SDs, SD within 15%
        np.testing.assert_array_less(np.abs(draws.mean(0) - x / 2), 0.25 * sd)
        np.testing.assert_allclose(draws.std(0), sd, rtol=0.15)
