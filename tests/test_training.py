import itertools
import math

import numpy as np
import pymc as pm
import pytest
import torch

import pymc_abi as abi
from pymc_abi.training.loop import History, train
from tests.conftest import SEED, measure


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

    with pytest.warns(
        abi.TrainingInterruptedWarning, match=r"Training interrupted \(Ctrl-C\) at step 150"
    ):
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

    with pytest.warns(abi.DroppedSimulationsWarning, match="skipped because they held NaN"):
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
    # learning rate 0: never improves. The first validation sets the best; three more
    # without improvement make a plateau at step 40; the rate then decays over
    # max(200, 3/7 * 40) steps, and training stops at step 240
    assert history.step == list(range(10, 250, 10))
    assert history.skipped == 24
    assert history.stops[0].startswith("converged: the validation loss improved by less than")
    assert "at step 40; the learning rate then decayed to zero over 200 steps" in history.stops[0]
    assert history.stops[0].endswith("(step 240)")


def test_plateau_then_anneal_schedule():
    from pymc_abi.training.loop import Plateau

    plateau = Plateau(patience=2, min_delta=0.1, anneal=0.3, min_anneal=10)
    plateau.begin(steps=10_000)
    losses = [5.0, 4.0, 3.95, 3.0, 2.99, 2.98]
    reasons = [plateau.update(v, 100 * (i + 1)) for i, v in enumerate(losses)]
    # 4.0 and 3.0 improve by more than 0.1; 3.95 alone is no plateau; 2.99, 2.98 are
    assert reasons == [None] * 6
    assert (plateau.anneal_start, plateau.anneal_steps) == (600, 258)  # 3/7 of 600
    assert plateau.scale(600) == 1.0 and plateau.scale(599) == 1.0
    assert plateau.scale(729) == pytest.approx(0.5)
    assert plateau.scale(858) == pytest.approx(0.0)
    # the loss during the decay no longer matters; the decay's end stops training
    assert plateau.update(10.0, 800) is None
    assert plateau.update(1.0, 858).startswith("converged")

    # no plateau: the decay takes the last 30% of the budget, and no early stop
    budget = Plateau(patience=None, min_delta=0.0)
    budget.begin(steps=1000)
    assert budget.scale(700) == 1.0 and budget.scale(850) == pytest.approx(0.5)
    assert all(budget.update(1.0 - i / 100, i) is None for i in range(0, 1001, 100))

    # a plateau near the budget's end decays over what is left of it
    late = Plateau(patience=1, min_delta=0.0, min_anneal=400)
    late.begin(steps=1000)
    late.update(1.0, 600)
    late.update(1.0, 680)
    assert (late.anneal_start, late.anneal_steps) == (680, 320)
    # once the budget's decay has begun, a plateau changes nothing
    decaying = Plateau(patience=1, min_delta=0.0)
    decaying.begin(steps=1000)
    decaying.scale(750)
    decaying.update(1.0, 800)
    assert decaying.update(1.0, 900) is None
    assert (decaying.anneal_start, decaying.anneal_steps) == (700, 300)

    smooth = Plateau(patience=2, min_delta=0.0, smoothing=0.5)
    smooth.begin(steps=100)
    smooth.update(1.0, 10)
    smooth.update(3.0, 20)  # one noisy jump moves the average half way
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
@pytest.mark.statistical
def test_gaussian_linear_10d():
    """theta ~ N(0, 0.1 I), x ~ N(theta, 0.1 I): posterior N(x / 2, 0.05 I)."""
    d = 10
    with pm.Model() as model:
        theta = pm.Normal("theta", 0, np.sqrt(0.1), shape=d)
        pm.Normal("x", theta, np.sqrt(0.1), observed=np.zeros(d))
    amortizer = abi.fit(model, steps=1500, random_seed=SEED, progressbar=False)
    assert amortizer.config["summary_kinds"] == {"x": "mlp"}
    rng = np.random.default_rng(SEED + 1)
    sd = np.sqrt(0.05)
    for _ in range(3):
        x = rng.normal(0, np.sqrt(0.2), d)
        draws = amortizer.sample({"x": x}, draws=1000, random_seed=2).posterior["theta"]
        draws = draws.values.reshape(-1, d)
        # every coordinate: mean within 0.35 posterior SDs, SD within 15% (the worst of
        # 30 coordinates over 3 seeds was 0.25 SDs)
        measure("mean error (SD)", (np.abs(draws.mean(0) - x / 2) / sd).max(), 0.35)
        measure("SD error", np.abs(draws.std(0) / sd - 1).max(), 0.15)
        np.testing.assert_array_less(np.abs(draws.mean(0) - x / 2), 0.35 * sd)
        np.testing.assert_allclose(draws.std(0), sd, rtol=0.15)
