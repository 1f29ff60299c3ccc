import math

import pytest
import torch
from torch import nn

from pymc_abi.networks import FlowMatching, InferenceNetwork, VectorField, build_inference_network

SMALL = {"hidden_features": 32, "blocks": 2}


class _LinearField(nn.Module):
    r""":math:`v(\theta, t, c) = a \theta + t c`, with a closed-form flow.

    :math:`\theta_1 = e^a \theta_0 + c\, (e^a - 1 - a) / a^2`, so
    :math:`q(\theta \mid c) = \mathcal{N}(c\, (e^a - 1 - a) / a^2, e^{2a} I)`.
    """

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, theta, t, context):
        return self.a * theta + t[:, None] * context

    def distribution(self, context):
        a = self.a
        loc = context * (math.exp(a) - 1 - a) / a**2
        return torch.distributions.Normal(loc, math.exp(a))


def _linear_flow(a: float = 0.7, **options) -> FlowMatching:
    net = FlowMatching(2, 2, **SMALL, **options)
    net.field = _LinearField(a)
    return net


@pytest.mark.parametrize("features", [1, 3])
def test_shapes_and_autograd_modes(features):
    torch.manual_seed(0)
    net = FlowMatching(features, 4, **SMALL, steps=10)
    assert isinstance(net, InferenceNetwork)
    assert isinstance(net.field, VectorField)
    context = torch.randn(5, 4)

    log_prob = net.log_prob(torch.randn(5, features), context)
    assert log_prob.shape == (5,)
    assert log_prob.requires_grad  # differentiable when gradients are enabled
    assert torch.isfinite(log_prob).all()
    with torch.no_grad():
        assert not net.log_prob(torch.randn(5, features), context).requires_grad

    samples = net.sample(7, context)
    assert samples.shape == (7, 5, features)
    assert not samples.requires_grad

    theta, log_q = net.sample_and_log_prob(7, context)
    assert theta.shape == (7, 5, features) and log_q.shape == (7, 5)
    assert not theta.requires_grad and not log_q.requires_grad
    assert torch.isfinite(log_q).all()

    loss = net.loss(theta[0], context)
    assert loss.shape == ()
    loss.backward()
    assert all(p.grad is not None for p in net.field.parameters())
    assert net.sample(0, context).shape == (0, 5, features)
    assert net.sample_and_log_prob(0, context)[1].shape == (0, 5)


def test_loss_is_conditional_flow_matching_on_the_linear_path():
    torch.manual_seed(0)
    net = FlowMatching(2, 3, **SMALL)
    theta, context = torch.randn(6, 2), torch.randn(6, 3)
    torch.manual_seed(1)
    loss = net.loss(theta, context)
    torch.manual_seed(1)
    theta_0 = torch.randn(6, 2)
    t = torch.rand(6)
    theta_t = (1 - t[:, None]) * theta_0 + t[:, None] * theta
    expected = (net.field(theta_t, t, context) - (theta - theta_0)).pow(2).sum(-1).mean()
    torch.testing.assert_close(loss, expected)
    # a fresh (t, theta_0) per call: the loss is random
    assert net.loss(theta, context).item() != loss.item()


def test_linear_field_closed_form_density_and_sign():
    # a = 0.7 > 0 spreads the base: log q = log N(theta_0) - int div v, div v = a D
    torch.manual_seed(0)
    net = _linear_flow(0.7)
    context = torch.tensor([[1.0, -2.0], [0.0, 3.0]]).repeat(50, 1)
    truth = net.field.distribution(context)
    theta = truth.sample()

    expected = truth.log_prob(theta).sum(-1)
    torch.testing.assert_close(net.log_prob(theta, context), expected, atol=1e-5, rtol=0)
    # the wrong sign of the divergence term would be off by 2 a D = 2.8
    base = torch.distributions.Normal(0.0, 1.0)
    theta_0 = (theta - truth.loc) / math.exp(0.7)
    wrong = base.log_prob(theta_0).sum(-1) + 0.7 * 2
    assert (net.log_prob(theta, context) - wrong).abs().min() > 2.0

    # sampling and the joint forward integration agree with the closed form
    draws, log_q = net.sample_and_log_prob(2000, context[:2])
    truth = net.field.distribution(context[:2])
    torch.testing.assert_close(log_q, truth.log_prob(draws).sum(-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(draws.mean(0), truth.loc, atol=0.15, rtol=0)
    torch.testing.assert_close(draws.std(0), torch.full((2, 2), math.exp(0.7)), atol=0, rtol=0.05)

    # Euler is first order: close with many steps, and per-call options are honoured
    euler = net.log_prob(theta, context, method="euler", steps=1000)
    torch.testing.assert_close(euler, expected, atol=1e-2, rtol=0)
    assert (net.log_prob(theta, context, method="euler", steps=5) - expected).abs().max() > 0.05


def test_score_through_the_solver():
    # with gradients enabled, log_prob backpropagates through the ODE solve
    torch.manual_seed(0)
    net = _linear_flow(-0.4)
    context = torch.randn(8, 2)
    theta = torch.randn(8, 2, requires_grad=True)
    log_q = net.log_prob(theta, context, steps=20)
    (score,) = torch.autograd.grad(log_q.sum(), theta)
    truth = net.field.distribution(context)
    expected = -(theta.detach() - truth.loc) / truth.scale**2
    torch.testing.assert_close(score, expected, atol=1e-4, rtol=1e-4)


def test_log_prob_differentiable_in_parameters():
    torch.manual_seed(0)
    net = FlowMatching(2, 3, **SMALL, steps=8)
    theta, context = torch.randn(6, 2), torch.randn(6, 3)
    log_q = net.log_prob(theta, context)
    (-log_q.mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with torch.no_grad():
        torch.testing.assert_close(net.log_prob(theta, context), log_q.detach())

    # finite-difference check of one parameter's gradient
    weight = net.field.output.bias
    direction = torch.tensor([1.0, -0.5])
    with torch.no_grad():
        eps = 1e-2
        weight += eps * direction
        up = -net.log_prob(theta, context).mean()
        weight -= 2 * eps * direction
        down = -net.log_prob(theta, context).mean()
        weight += eps * direction
    finite_difference = (up - down) / (2 * eps)
    assert (weight.grad @ direction).item() == pytest.approx(finite_difference.item(), rel=2e-2)


def test_log_prob_matches_sample_and_log_prob():
    # forward (joint) and backward integrations agree up to the discretization error
    torch.manual_seed(0)
    net = FlowMatching(2, 3, **SMALL)
    context = torch.randn(4, 3)
    theta, log_q = net.sample_and_log_prob(50, context)
    recomputed = net.log_prob(theta.reshape(200, 2), context.repeat(50, 1)).reshape(50, 4)
    torch.testing.assert_close(recomputed.detach(), log_q, atol=1e-3, rtol=0)
    # the recomputation runs in the same row order as the samples
    torch.testing.assert_close(
        net.log_prob(theta[3], context).detach(), log_q[3], atol=1e-3, rtol=0
    )
    # the density is not the base density: the fresh field is not trivial
    base = torch.distributions.Normal(0.0, 1.0).log_prob(theta).sum(-1)
    assert (base - log_q).abs().max() > 0.1


def test_inference_mode():
    torch.manual_seed(0)
    net = FlowMatching(2, 3, **SMALL, steps=10)
    theta, context = torch.randn(5, 2), torch.randn(5, 3)
    with torch.no_grad():
        expected = net.log_prob(theta, context)
    with torch.inference_mode():
        log_q = net.log_prob(theta, context)
        draws, log_q_draws = net.sample_and_log_prob(3, context)
    torch.testing.assert_close(log_q, expected)
    assert draws.shape == (3, 5, 2) and torch.isfinite(log_q_draws).all()


def test_density_normalized_1d():
    torch.manual_seed(0)
    net = FlowMatching(1, 2, **SMALL)
    with torch.no_grad():
        net.field.output.weight.mul_(4.0)  # a stronger, more non-linear field
    grid = torch.linspace(-10.0, 10.0, 2001)
    for context in torch.randn(2, 2):
        with torch.no_grad():
            log_q = net.log_prob(grid[:, None], context.expand(len(grid), 2))
        total = torch.trapezoid(log_q.exp(), grid).item()
        assert total == pytest.approx(1.0, abs=2e-3)
        # a non-trivial map of the base: the density is not N(0, 1)
        base = torch.distributions.Normal(0.0, 1.0).log_prob(grid)
        assert (log_q - base)[900:1100].abs().max() > 0.1


def test_hutchinson_divergence():
    # one Rademacher probe is exact for a linear field with a multiple of I as Jacobian
    torch.manual_seed(0)
    net = _linear_flow(0.5, divergence="hutchinson")
    context, theta = torch.randn(6, 2), torch.randn(6, 2)
    expected = net.field.distribution(context).log_prob(theta).sum(-1)
    torch.testing.assert_close(net.log_prob(theta, context), expected, atol=1e-5, rtol=0)

    # for a general field it is an unbiased, noisy estimate of the exact log-density
    torch.manual_seed(0)
    net = FlowMatching(2, 1, **SMALL, steps=10, divergence="hutchinson")
    theta, context = torch.randn(1, 2).expand(4000, 2), torch.zeros(4000, 1)
    with torch.no_grad():
        estimates = net.log_prob(theta, context)
        net.divergence = "exact"
        exact = net.log_prob(theta[:1], context[:1])
    assert estimates.std() > 1e-4  # random
    assert estimates.mean().item() == pytest.approx(
        exact.item(), abs=4 * estimates.std().item() / 60
    )


def test_solver_options_and_evaluation_counts():
    torch.manual_seed(0)
    net = FlowMatching(2, 3, **SMALL)
    assert (net.method, net.steps) == ("rk4", 50)
    calls = []
    net.field.register_forward_hook(lambda *args: calls.append(1))
    context = torch.randn(2, 3)
    for method, steps, evaluations in [("rk4", 5, 20), ("midpoint", 3, 6), ("euler", 7, 7)]:
        calls.clear()
        net.sample(4, context, method=method, steps=steps)
        assert len(calls) == evaluations
    assert (net.method, net.steps) == ("rk4", 50)  # per-call options are restored

    net.method, net.steps = "euler", 4  # attributes set the defaults
    calls.clear()
    net.sample(4, context)
    net.sample_and_log_prob(4, context)
    net.log_prob(torch.randn(2, 2), context)
    assert len(calls) == 12

    with pytest.raises(ValueError, match="method"):
        net.sample(4, context, method="dopri5")
    with pytest.raises(ValueError, match="steps"):
        net.log_prob(torch.randn(2, 2), context, steps=0)
    assert (net.method, net.steps) == ("euler", 4)
    with pytest.raises(ValueError, match="method"):
        FlowMatching(2, 3, method="heun")
    with pytest.raises(ValueError, match="divergence"):
        FlowMatching(2, 3, divergence="skilling")


def test_batch_rows_are_independent():
    torch.manual_seed(0)
    net = FlowMatching(2, 1, **SMALL, steps=10)
    torch.manual_seed(1)
    a = net.sample(100, torch.tensor([[-3.0], [3.0]]))
    torch.manual_seed(1)
    b = net.sample(100, torch.tensor([[-3.0], [-3.0]]))
    torch.testing.assert_close(a[:, 0], b[:, 0])
    assert not torch.allclose(a[:, 1], b[:, 1], atol=1e-2)


def test_input_validation():
    net = FlowMatching(2, 3, **SMALL)
    with pytest.raises(ValueError, match="theta"):
        net.loss(torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="batch sizes"):
        net.loss(torch.randn(5, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match="context"):
        net.loss(torch.randn(4, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="theta"):
        net.log_prob(torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="context"):
        net.sample(3, torch.randn(3))
    with pytest.raises(ValueError, match="blocks"):
        VectorField(2, 3, blocks=-1)


def test_factory():
    net = build_inference_network("flow_matching", 3, 2, hidden_features=16, blocks=1, steps=9)
    assert isinstance(net, FlowMatching)
    assert (net.features, net.context_features, net.steps) == (3, 2, 9)
    assert net.field.input.out_features == 16 and len(net.field.blocks) == 1
    # the flows' sequence form of hidden_features is accepted: its maximum is the width
    wide = build_inference_network("flow_matching", 3, 2, hidden_features=(64, 64))
    assert wide.field.input.out_features == 64 and len(wide.field.blocks) == 3
    assert build_inference_network(net, 3, 2) is net
    with pytest.raises(TypeError, match="transforms"):
        build_inference_network("flow_matching", 3, 2, transforms=4)
    with pytest.raises(ValueError, match="flow_matching"):
        build_inference_network("cnf", 3, 2)


def test_learns_conditional_gaussian():
    # theta | c ~ N(2c, 0.5^2 I), D = 2, C = 1
    torch.manual_seed(0)
    net = FlowMatching(2, 1, hidden_features=64, blocks=2)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=400)

    def simulate(batch):
        c = 3.0 * torch.rand(batch, 1) - 1.5
        return 2.0 * c + 0.5 * torch.randn(batch, 2), c

    for _ in range(400):
        theta, c = simulate(256)
        loss = net.loss(theta, c)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()

    context = torch.tensor([[-1.0], [0.0], [1.0]])
    samples = net.sample(2000, context)
    mean, std = samples.mean(0), samples.std(0)
    torch.testing.assert_close(mean, 2.0 * context.expand(3, 2), atol=0.1, rtol=0.0)
    torch.testing.assert_close(std, torch.full((3, 2), 0.5), atol=0.0, rtol=0.1)

    # held-out NLL is close to the entropy of the true posterior (KL = NLL - H >= 0)
    theta, c = simulate(1000)
    with torch.no_grad():
        nll = -net.log_prob(theta, c, steps=20).mean().item()
    entropy = 2 * 0.5 * math.log(2 * math.pi * math.e * 0.25)
    assert entropy - 0.1 < nll < entropy + 0.1  # the estimate has sd ~0.03

    # the trained field gives a normalized density
    axis = torch.linspace(-1.5, 3.5, 81)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        log_q = net.log_prob(grid, torch.full((len(grid), 1), 0.5), steps=20)
    total = torch.trapezoid(torch.trapezoid(log_q.exp().reshape(81, 81), axis), axis).item()
    assert total == pytest.approx(1.0, abs=1e-2)


def test_learns_bimodal_posterior():
    # theta | c = +-(1 + c) + 0.1 eps with equal probabilities, c ~ U(0, 1), D = 1
    torch.manual_seed(0)
    net = FlowMatching(1, 1, hidden_features=64, blocks=2)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=600)

    def simulate(batch):
        c = torch.rand(batch, 1)
        sign = 2.0 * torch.randint(0, 2, (batch, 1)) - 1.0
        return sign * (1.0 + c) + 0.1 * torch.randn(batch, 1), c

    for _ in range(600):
        theta, c = simulate(256)
        loss = net.loss(theta, c)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()

    grid = torch.linspace(-4.0, 4.0, 801)  # spacing 0.01
    for c in (0.2, 0.8):
        mode = 1.0 + c
        samples = net.sample(2000, torch.tensor([[c]]))[:, 0, 0]
        near_plus = ((samples - mode).abs() < 0.4).float().mean().item()
        near_minus = ((samples + mode).abs() < 0.4).float().mean().item()
        assert 0.3 < near_plus < 0.7 and 0.3 < near_minus < 0.7
        assert near_plus + near_minus > 0.95  # little mass between the modes

        with torch.no_grad():
            density = net.log_prob(grid[:, None], torch.full((len(grid), 1), c)).exp()
        assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-2)
        # bimodal: two peaks near +-(1 + c), each of mass ~1/2, and a trough at 0
        index = round(100 * mode)
        left, right = density[: 400 - index + 40], density[400 + index - 40 :]
        peak_left, peak_right = grid[left.argmax()], grid[400 + index - 40 + right.argmax()]
        assert peak_left.item() == pytest.approx(-mode, abs=0.1)
        assert peak_right.item() == pytest.approx(mode, abs=0.1)
        assert torch.trapezoid(density[400:], grid[400:]).item() == pytest.approx(0.5, abs=0.1)
        assert density[400] < 0.01 * min(left.max(), right.max())
