import math

import numpy as np
import pytest
import torch

from pymc_abi.networks import Standardize


def test_fit_statistics_and_round_trip():
    torch.manual_seed(0)
    x = torch.tensor([3.0, -1.0, 0.5]) + torch.tensor([2.0, 0.1, 10.0]) * torch.randn(2000, 3)
    standardize = Standardize(3).fit(x)
    np.testing.assert_allclose(standardize.mean.numpy(), x.numpy().mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(standardize.std.numpy(), x.numpy().std(0), rtol=1e-5)
    assert standardize.mean.dtype == torch.float32

    z = standardize(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, correction=0), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(standardize.inverse(z), x, atol=1e-5, rtol=1e-5)

    # any leading shape, e.g. flow samples (n, B, D)
    y = torch.randn(7, 4, 3)
    torch.testing.assert_close(standardize(standardize.inverse(y)), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        standardize.inverse(y)[2, 1], standardize.mean + standardize.std * y[2, 1]
    )


def test_identity_before_fit():
    x = torch.randn(5, 2)
    standardize = Standardize(2)
    torch.testing.assert_close(standardize(x), x)
    assert standardize.log_abs_det_jacobian().item() == 0.0


def test_set_reduces_over_batch_and_elements():
    torch.manual_seed(0)
    x = torch.tensor([1.0, -4.0]) + torch.tensor([0.5, 3.0]) * torch.randn(50, 40, 2)
    standardize = Standardize((2,)).fit(x)
    assert standardize.mean.shape == (2,)
    torch.testing.assert_close(standardize.mean, x.reshape(-1, 2).mean(0))
    torch.testing.assert_close(standardize.std, x.reshape(-1, 2).std(0, correction=0))

    # keeping (N, F) gives per-position statistics instead
    per_position = Standardize((40, 2)).fit(x)
    assert per_position.mean.shape == (40, 2)
    torch.testing.assert_close(per_position.mean, x.mean(0))

    # shape () pools everything
    pooled = Standardize(()).fit(x)
    assert pooled.mean.shape == ()
    assert pooled.std.item() == pytest.approx(x.std(correction=0).item(), rel=1e-5)


def test_degenerate_features_are_guarded():
    n = 1000
    x = torch.stack(
        [
            torch.randn(n),
            torch.full((n,), 0.1),  # constant: std rounding noise or 0
            torch.full((n,), 0.0),  # constant zero
            torch.cat([torch.randn(n - 1), torch.tensor([float("nan")])]),
            torch.cat([torch.randn(n - 1), torch.tensor([float("inf")])]),
        ],
        dim=-1,
    )
    standardize = Standardize(5).fit(x)
    assert torch.isfinite(standardize.mean).all() and torch.isfinite(standardize.std).all()
    assert standardize.std[0].item() == pytest.approx(x[:, 0].std(correction=0).item(), rel=1e-5)
    assert standardize.std[1:3].tolist() == [1.0, 1.0]
    assert standardize.mean[1].item() == pytest.approx(0.1)
    assert standardize.mean[2].item() == 0.0
    # a NaN or inf entry is left out of the statistics, not allowed to spoil them
    for j in (3, 4):
        finite = x[:-1, j]
        assert standardize.mean[j].item() == pytest.approx(finite.mean().item(), abs=1e-6)
        assert standardize.std[j].item() == pytest.approx(finite.std(correction=0).item(), rel=1e-5)
    z = standardize(x)
    assert torch.isfinite(z[:, :3]).all()
    torch.testing.assert_close(z[:, 1], torch.zeros(n), atol=1e-6, rtol=0)

    # a single observation has std 0 everywhere
    single = Standardize(2).fit(torch.tensor([[2.0, -3.0]]))
    assert single.std.tolist() == [1.0, 1.0]
    assert single.mean.tolist() == [2.0, -3.0]


def test_state_dict_round_trip():
    torch.manual_seed(0)
    fitted = Standardize((3, 2)).fit(5.0 + 3.0 * torch.randn(100, 3, 2))
    state = fitted.state_dict()
    assert set(state) == {"mean", "std", "squash"}

    fresh = Standardize((3, 2))
    x = torch.randn(4, 3, 2)
    assert not torch.allclose(fresh(x), fitted(x))
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(x), fitted(x))
    torch.testing.assert_close(fresh.log_abs_det_jacobian(), fitted.log_abs_det_jacobian())

    with pytest.raises(RuntimeError):
        Standardize(6).load_state_dict(state)


def test_log_abs_det_jacobian_numeric():
    torch.manual_seed(0)
    standardize = Standardize(3).fit(torch.randn(500, 3) * torch.tensor([0.2, 1.5, 7.0]))
    x = torch.randn(3)
    jacobian = torch.autograd.functional.jacobian(standardize, x)
    _, logabsdet = torch.linalg.slogdet(jacobian)
    torch.testing.assert_close(standardize.log_abs_det_jacobian(), logabsdet, atol=1e-5, rtol=0)
    expected = -sum(math.log(s) for s in standardize.std.tolist())
    assert standardize.log_abs_det_jacobian().item() == pytest.approx(expected, rel=1e-6)

    # change of variables: a standard normal in standardized space is N(mean, std^2)
    theta = torch.randn(10, 3) * 4.0
    normal = torch.distributions.Normal(0.0, 1.0)
    log_q = normal.log_prob(standardize(theta)).sum(-1) + standardize.log_abs_det_jacobian()
    reference = torch.distributions.Normal(standardize.mean, standardize.std)
    torch.testing.assert_close(log_q, reference.log_prob(theta).sum(-1), atol=1e-5, rtol=1e-5)


def test_float64_and_validation():
    x = torch.randn(200, 2, dtype=torch.float64) * 1e-3 + 1e3
    standardize = Standardize(2).double().fit(x)
    assert standardize.std.dtype == torch.float64
    torch.testing.assert_close(standardize.std, x.std(0, correction=0))
    torch.testing.assert_close(standardize.inverse(standardize(x)), x)

    with pytest.raises(ValueError, match="trailing shape"):
        standardize(torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="trailing shape"):
        Standardize((3, 2))(torch.randn(2))
    with pytest.raises(ValueError, match="empty"):
        Standardize(2).fit(torch.empty(0, 2))


def test_robust_statistics_ignore_outliers():
    torch.manual_seed(0)
    x = torch.randn(10_000, 1)
    x[:10] = 1e12  # a prior predictive with a few enormous draws
    moments = Standardize(1).fit(x)
    robust = Standardize(1, robust=True).fit(x)
    assert moments.std.item() > 1e9  # every ordinary value maps to about zero
    assert robust.mean.item() == pytest.approx(0.0, abs=0.05)
    assert robust.std.item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(
    ("sample", "squashed"),
    [
        (lambda: torch.randn(20_000), False),
        (lambda: torch.distributions.Exponential(1.0).sample((20_000,)), False),
        (lambda: torch.distributions.StudentT(1.0).sample((20_000,)), True),
        (lambda: torch.randn(20_000) * torch.exp(3 * torch.randn(20_000)), True),
    ],
    ids=["normal", "exponential", "cauchy", "scale mixture"],
)
def test_heavy_tails_are_squashed_automatically(sample, squashed):
    torch.manual_seed(0)
    standardize = Standardize(1, robust=True, squash="auto").fit(sample()[:, None])
    assert bool(standardize.squash.item()) is squashed


def test_squash_is_a_bijection_with_its_jacobian():
    torch.manual_seed(0)
    standardize = Standardize(2, robust=True, squash=True).fit(torch.randn(500, 2) * 3 + 1)
    x = torch.randn(50, 2, dtype=torch.float64) * 100
    standardize = standardize.double()
    torch.testing.assert_close(standardize.inverse(standardize(x)), x)
    # the log-Jacobian against autograd, row by row
    jac = torch.autograd.functional.jacobian(lambda v: standardize(v[None])[0], x[0])
    expected = torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(standardize.log_abs_det_jacobian(x[:1])[0], expected)
    assert standardize.log_abs_det_jacobian(x).shape == (50,)
    with pytest.raises(ValueError, match="give x"):
        standardize.log_abs_det_jacobian()
