import math

import pytest
import torch
import zuko
from torch import nn

from pymc_abi.networks import FlowNetwork, InferenceNetwork, build_inference_network

NAMES = ["nsf", "coupling", "maf", "nsf_ar"]
SMALL = {"transforms": 2, "hidden_features": (32, 32)}


class _DiagGaussian(InferenceNetwork):
    """Minimal subclass implementing only the required hooks."""

    def __init__(self, features: int, context_features: int) -> None:
        super().__init__(features, context_features)
        self.linear = nn.Linear(context_features, 2 * features)

    def _distribution(self, context):
        loc, log_scale = self.linear(context).chunk(2, dim=-1)
        return torch.distributions.Normal(loc, log_scale.exp())

    def _log_prob(self, theta, context):
        return self._distribution(context).log_prob(theta).sum(-1)

    def _sample(self, n, context, generator):
        dist = self._distribution(context)
        eps = torch.randn((n, *dist.loc.shape), generator=generator)
        return dist.loc + dist.scale * eps


@pytest.mark.parametrize("features", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_consistency(name, features):
    torch.manual_seed(0)
    net = build_inference_network(name, features, 4, **SMALL)
    assert isinstance(net, FlowNetwork)
    assert (net.features, net.context_features) == (features, 4)
    context = torch.randn(5, 4)

    log_prob = net.log_prob(torch.randn(5, features), context)
    assert log_prob.shape == (5,)
    assert log_prob.requires_grad  # training needs the graph
    assert torch.isfinite(log_prob).all()

    samples = net.sample(7, context)
    assert samples.shape == (7, 5, features)
    assert not samples.requires_grad

    theta, log_q = net.sample_and_log_prob(7, context)
    assert theta.shape == (7, 5, features)
    assert log_q.shape == (7, 5)
    assert not theta.requires_grad and not log_q.requires_grad

    # the density of each sample, recomputed by log_prob, matches
    recomputed = net.log_prob(theta.reshape(35, features), context.repeat(7, 1)).reshape(7, 5)
    torch.testing.assert_close(recomputed.detach(), log_q, atol=1e-4, rtol=1e-4)

    loss = net.loss(theta[0], context)
    assert loss.shape == ()
    torch.testing.assert_close(loss.detach(), -log_q[0].mean(), atol=1e-4, rtol=1e-4)


def test_batch_rows_are_independent():
    # with the same base noise, a row's samples depend on its own context only
    torch.manual_seed(0)
    net = build_inference_network("nsf", 2, 1, **SMALL)
    torch.manual_seed(1)
    a = net.sample(200, torch.tensor([[-3.0], [3.0]]))
    torch.manual_seed(1)
    b = net.sample(200, torch.tensor([[-3.0], [-3.0]]))
    torch.testing.assert_close(a[:, 0], b[:, 0])
    assert not torch.allclose(a[:, 1], b[:, 1], atol=1e-2)


@pytest.mark.parametrize("name", NAMES)
def test_density_normalized_1d(name):
    torch.manual_seed(0)
    net = build_inference_network(name, 1, 2, **SMALL)
    grid = torch.linspace(-15.0, 15.0, 6001)
    for context in torch.randn(3, 2):
        with torch.no_grad():
            density = net.log_prob(grid[:, None], context.expand(len(grid), 2)).exp()
        total = torch.trapezoid(density, grid).item()
        assert total == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_density_normalized_2d(name):
    torch.manual_seed(0)
    net = build_inference_network(name, 2, 1, **SMALL)
    axis = torch.linspace(-9.0, 9.0, 361)
    grid = torch.cartesian_prod(axis, axis)
    context = torch.full((len(grid), 1), 0.7)
    with torch.no_grad():
        density = net.log_prob(grid, context).exp().reshape(361, 361)
    total = torch.trapezoid(torch.trapezoid(density, axis), axis).item()
    assert total == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("name", ["nsf", "coupling"])
def test_learns_conditional_gaussian(name):
    # theta | c ~ N(2c, 0.5^2 I), D = 2, C = 1
    torch.manual_seed(0)
    net = build_inference_network(name, 2, 1, transforms=3, hidden_features=(64, 64))
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

    # held-out NLL is close to the entropy of the true posterior (KL = NLL - H >= 0)
    theta, c = simulate(4096)
    with torch.no_grad():
        nll = net.loss(theta, c).item()
    entropy = 2 * 0.5 * math.log(2 * math.pi * math.e * 0.25)
    assert entropy - 0.06 < nll < entropy + 0.1  # the estimate has sd ~0.016

    context = torch.tensor([[-1.0], [0.0], [1.0]])
    samples = net.sample(4000, context)
    mean, std = samples.mean(0), samples.std(0)
    torch.testing.assert_close(mean, 2.0 * context.expand(3, 2), atol=0.1, rtol=0.0)
    torch.testing.assert_close(std, torch.full((3, 2), 0.5), atol=0.0, rtol=0.2)

    # the trained flow (a non-trivial map of the base) still gives a normalized density
    axis = torch.linspace(-2.0, 4.0, 241)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        density = net.log_prob(grid, torch.full((len(grid), 1), 0.5)).exp().reshape(241, 241)
    total = torch.trapezoid(torch.trapezoid(density, axis), axis).item()
    assert total == pytest.approx(1.0, abs=5e-3)


def test_base_class_is_abstract():
    with pytest.raises(TypeError):
        InferenceNetwork(2, 3)


def test_default_sample_and_log_prob_and_loss():
    torch.manual_seed(0)
    net = _DiagGaussian(2, 3)
    context = torch.randn(4, 3)
    theta, log_q = net.sample_and_log_prob(6, context)
    assert theta.shape == (6, 4, 2) and log_q.shape == (6, 4)
    assert not theta.requires_grad and not log_q.requires_grad  # rsample, yet no graph
    expected = net._distribution(context).log_prob(theta).sum(-1)
    torch.testing.assert_close(log_q, expected.detach())

    # the default loss is the mean negative log-likelihood, and it is differentiable
    target = torch.randn(4, 2)
    loss = net.loss(target, context)
    torch.testing.assert_close(loss, -net._distribution(context).log_prob(target).sum(-1).mean())
    loss.backward()
    assert net.linear.weight.grad is not None


def test_input_validation():
    net = build_inference_network("nsf", 2, 3, **SMALL)
    with pytest.raises(ValueError, match="theta"):
        net.log_prob(torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="batch sizes"):
        net.log_prob(torch.randn(5, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match="context"):
        net.sample(3, torch.randn(4, 2))
    with pytest.raises(ValueError, match="context"):
        net.sample(3, torch.randn(3))
    with pytest.raises(ValueError, match="non-negative"):
        net.sample_and_log_prob(-1, torch.randn(4, 3))
    with pytest.raises(TypeError):
        net.sample(2.5, torch.randn(4, 3))
    with pytest.raises(ValueError, match=">= 1"):
        _DiagGaussian(0, 3)


def test_factory_options_and_passthrough():
    net = build_inference_network("nsf", 3, 2, transforms=3, hidden_features=(16,), bins=5)
    locate, *transforms = net.flow.transform.transforms
    # first a location and scale per parameter from the context alone (one pass)
    assert locate.passes == 1 and locate.hyper[-1].out_features == 3 * 2
    assert len(transforms) == 3
    assert all(t.passes == 2 for t in transforms)  # coupling
    assert transforms[0].hyper[0].out_features == 16
    # spline parameters per feature: widths (5) + heights (5) + inner derivatives (4)
    assert transforms[0].hyper[-1].out_features == 3 * 14

    maf = build_inference_network("maf", 3, 2)
    assert len(maf.flow.transform.transforms) == 6
    assert all(t.passes == 3 for t in maf.flow.transform.transforms)  # autoregressive
    assert build_inference_network("nsf_ar", 3, 2).flow.transform.transforms[1].passes == 3
    assert build_inference_network("coupling", 3, 2).flow.transform.transforms[0].passes == 2

    assert build_inference_network(net, 3, 2) is net
    with pytest.raises(ValueError, match="features"):
        build_inference_network(net, 2, 2)
    with pytest.raises(TypeError, match="built network"):
        build_inference_network(net, 3, 2, transforms=2)
    with pytest.raises(ValueError, match="unknown inference network"):
        build_inference_network("realnvp", 3, 2)
    with pytest.raises(TypeError, match="bins"):
        build_inference_network("coupling", 3, 2, bins=8)
    with pytest.raises(TypeError, match="hidden"):
        build_inference_network("nsf", 3, 2, hidden=(8,))


def test_flow_network_wraps_any_zuko_flow():
    torch.manual_seed(0)
    net = FlowNetwork(zuko.flows.NICE(2, 3, transforms=2), features=2, context_features=3)
    context = torch.randn(4, 3)
    theta, log_q = net.sample_and_log_prob(5, context)
    recomputed = net.log_prob(theta.reshape(20, 2), context.repeat(5, 1)).reshape(5, 4)
    torch.testing.assert_close(recomputed.detach(), log_q, atol=1e-4, rtol=1e-4)
    state = net.state_dict()
    clone = FlowNetwork(zuko.flows.NICE(2, 3, transforms=2), features=2, context_features=3)
    clone.load_state_dict(state)
    torch.testing.assert_close(clone.log_prob(theta[0], context), net.log_prob(theta[0], context))


@pytest.mark.parametrize("name", ["nsf", "coupling", "maf", "nsf_ar"])
def test_inversion_builds_each_layer_once_fewer_with_identical_results(name):
    """pymc-abi's inversion reuses the last pass's transforms for the Jacobian: the same
    numbers as zuko's ``inv.call_and_ladj``, bit for bit."""
    from pymc_abi.networks.inference import _inverse_and_ladj

    torch.manual_seed(0)
    net = build_inference_network(name, 3, 5)
    with torch.no_grad():
        for p in net.parameters():  # away from the identity at initialization
            p.add_(0.1 * torch.randn_like(p))
        dist = net.flow(torch.randn(6, 5))
        z = torch.randn(40, 6, 3)
        expected, expected_ladj = dist.transform.inv.call_and_ladj(z)
        got, ladj = _inverse_and_ladj(dist.transform, z)
    assert torch.equal(got, expected) and torch.equal(ladj, expected_ladj)


@pytest.mark.parametrize("passes", [2, None])
def test_spline_flow_is_zukos_nsf_with_faster_knots(passes):
    """The same modules and weights as zuko's NSF, and the same densities (to float32
    rounding): the knots are normalized with exp and a sum instead of torch.softmax."""
    from pymc_abi.networks.inference import _spline_flow

    torch.manual_seed(0)
    reference = zuko.flows.NSF(3, 4, transforms=3, passes=passes)
    ours = _spline_flow(3, 4, transforms=3, passes=passes)
    assert list(ours.state_dict()) == list(reference.state_dict())
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
        ours.load_state_dict(reference.state_dict())
        context, theta = torch.randn(500, 4), 2 * torch.randn(500, 3)
        expected = reference(context).log_prob(theta)
        got = ours(context).log_prob(theta)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
