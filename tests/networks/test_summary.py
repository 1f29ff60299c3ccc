import math

import pytest
import torch
from torch import nn

from pymc_abi.networks import (
    DeepSet,
    FusionSummary,
    IdentitySummary,
    MLPSummary,
    SetTransformer,
    TimeSeriesSummary,
    build_summary_network,
)


def test_identity_summary():
    x = torch.randn(5, 3, 2)
    net = IdentitySummary((3, 2))
    assert net.output_features == 6
    torch.testing.assert_close(net(x), x.reshape(5, 6))
    torch.testing.assert_close(net(x)[1, 2:4], x[1, 1])

    scalar = IdentitySummary(())
    assert scalar.output_features == 1
    assert scalar(torch.randn(4)).shape == (4, 1)
    assert IdentitySummary(7)(torch.randn(2, 7)).shape == (2, 7)

    with pytest.raises(ValueError, match=r"\(B, 3, 2\)"):
        net(torch.randn(5, 2, 3))
    with pytest.raises(ValueError):
        net(torch.randn(3, 2))


def test_mlp_summary():
    torch.manual_seed(0)
    net = MLPSummary((4, 3), output_features=5, hidden_features=(16, 16))
    assert net.output_features == 5
    x = torch.randn(8, 4, 3, requires_grad=True)
    y = net(x)
    assert y.shape == (8, 5)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert isinstance(net.mlp[1], nn.SiLU)
    # row i of the output depends on row i of the input only
    x2 = x.detach().clone()
    x2[0] += 1.0
    y2 = net(x2)
    torch.testing.assert_close(y2[1:], y[1:].detach())
    assert not torch.allclose(y2[0], y[0])


def test_deepset_permutation_invariance():
    torch.manual_seed(0)
    net = DeepSet(in_features=3, output_features=6, hidden_features=32)
    x = torch.randn(4, 25, 3)
    y = net(x)
    assert y.shape == (4, 6)
    for _ in range(3):
        perm = torch.randperm(25)
        torch.testing.assert_close(net(x[:, perm]), y, atol=1e-5, rtol=1e-5)
    # permuting the features of each element, by contrast, changes the output
    assert not torch.allclose(net(x[:, :, [2, 0, 1]]), y, atol=1e-3)


def test_deepset_variable_set_size_and_log_n():
    torch.manual_seed(0)
    net = DeepSet(in_features=2, output_features=4, hidden_features=16, layers=1)
    for n in (1, 7, 200):
        out = net(torch.randn(3, n, 2))
        assert out.shape == (3, 4)
        assert torch.isfinite(out).all()
    # duplicating a set keeps the mean and sd of the element embeddings: only log N
    # changes, and the network sees it
    x = torch.randn(3, 10, 2)
    doubled = torch.cat([x, x], dim=1)
    assert not torch.allclose(net(doubled), net(x), atol=1e-4)
    h = net.phi(x)
    pooled = torch.cat([h.mean(1), torch.sqrt(h.var(1, correction=0) + 1e-6)], dim=-1)
    log_n = torch.full((3, 1), math.log(20))
    torch.testing.assert_close(net(doubled), net.rho(torch.cat([pooled, log_n], -1)))


def test_deepset_gradient_finite_for_single_element():
    net = DeepSet(in_features=1, output_features=2, hidden_features=8)
    x = torch.randn(4, 1, requires_grad=True)  # (B, N) accepted when in_features == 1
    net(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_deepset_input_validation():
    net = DeepSet(in_features=2, output_features=4, hidden_features=8)
    with pytest.raises(ValueError, match=r"\(B, N, 2\)"):
        net(torch.randn(3, 5, 3))
    with pytest.raises(ValueError):
        net(torch.randn(3, 5))  # (B, N) only when in_features == 1
    with pytest.raises(ValueError):
        net(torch.randn(3, 0, 2))
    with pytest.raises(ValueError, match="layers"):
        DeepSet(2, 4, layers=0)


def test_deepset_learns_location_and_scale():
    # regress (mu, log sigma) from sets x_j ~ N(mu, sigma^2) of varying size N
    torch.manual_seed(0)
    net = DeepSet(in_features=1, output_features=2, hidden_features=32)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)

    def simulate(batch, n):
        mu = 4.0 * torch.rand(batch, 1) - 2.0
        log_sigma = torch.rand(batch, 1) - 0.5
        x = mu + log_sigma.exp() * torch.randn(batch, n)
        return x, torch.cat([mu, log_sigma], dim=-1)

    for step in range(300):
        x, target = simulate(128, n=10 + step % 41)
        loss = (net(x) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        for n in (20, 50):
            x, target = simulate(2000, n)
            mse = (net(x) - target).pow(2).mean(0)
            # reference: the sufficient statistics (sample mean, log sample sd); the
            # prior variances of the targets are 4/3 and 1/12
            stats = torch.stack([x.mean(1), x.std(1).log()], dim=-1)
            reference = (stats - target).pow(2).mean(0)
            assert (mse < 1.5 * reference).all()


@pytest.mark.parametrize("inducing_points", [16, None])  # ISAB, SAB
def test_set_transformer_permutation_invariance(inducing_points):
    torch.manual_seed(0)
    net = SetTransformer(3, 6, hidden_features=32, inducing_points=inducing_points)
    assert len(net.blocks) == 2 and net.output_features == 6
    x = torch.randn(4, 25, 3)
    y = net(x)
    assert y.shape == (4, 6)
    for _ in range(3):
        perm = torch.randperm(25)
        torch.testing.assert_close(net(x[:, perm]), y, atol=1e-5, rtol=1e-5)
    # permuting the features of each element, by contrast, changes the output
    assert not torch.allclose(net(x[:, :, [2, 0, 1]]), y, atol=1e-3)
    # each set is summarized on its own
    x2 = x.clone()
    x2[0, 3] += 1.0
    y2 = net(x2)
    torch.testing.assert_close(y2[1:], y[1:])
    assert not torch.allclose(y2[0], y[0], atol=1e-4)


def test_set_transformer_variable_set_size():
    torch.manual_seed(0)
    net = SetTransformer(1, 4, hidden_features=16, heads=2, inducing_points=4, blocks=1)
    for n in (1, 7, 200):
        out = net(torch.randn(3, n))  # (B, N) accepted when in_features == 1
        assert out.shape == (3, 4)
        assert torch.isfinite(out).all()
    # attention pooling of a duplicated set is unchanged: only log N changes, and the
    # network sees it
    x = torch.randn(3, 10, 1)
    assert not torch.allclose(net(torch.cat([x, x], dim=1)), net(x), atol=1e-4)
    plain = SetTransformer(1, 4, hidden_features=16, heads=2, blocks=0, log_size=False)
    torch.testing.assert_close(plain(torch.cat([x, x], dim=1)), plain(x), atol=1e-5, rtol=1e-5)

    # gradients reach the input and every parameter
    x = torch.randn(3, 5, 1, requires_grad=True)
    net(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


def test_set_transformer_input_validation():
    net = SetTransformer(2, 4, hidden_features=8, heads=2)
    with pytest.raises(ValueError, match=r"\(B, N, 2\)"):
        net(torch.randn(3, 5, 3))
    with pytest.raises(ValueError):
        net(torch.randn(3, 5))  # (B, N) only when in_features == 1
    with pytest.raises(ValueError):
        net(torch.randn(3, 0, 2))
    with pytest.raises(ValueError, match="multiple of heads"):
        SetTransformer(2, 4, hidden_features=10, heads=4)
    with pytest.raises(ValueError, match="inducing_points"):
        SetTransformer(2, 4, inducing_points=0)


def test_time_series_summary_shapes_and_order():
    torch.manual_seed(0)
    net = TimeSeriesSummary(2, 5, hidden_features=16, kernel_size=3)
    assert net.output_features == 5
    x = torch.randn(4, 30, 2)
    y = net(x)
    assert y.shape == (4, 5)
    for t in (1, 4, 100):  # T may vary between calls, also below the kernel size
        assert net(torch.randn(3, t, 2)).shape == (3, 5)
    # the order of the time steps matters
    assert not torch.allclose(net(x.flip(1)), y, atol=1e-3)
    assert not torch.allclose(net(x[:, torch.randperm(30)]), y, atol=1e-3)
    # each sequence is summarized on its own, and early steps reach the output (through
    # the time average; the fresh GRU's memory fades within ~10 steps)
    x2 = x.clone()
    x2[0, 3] += 1.0
    y2 = net(x2)
    torch.testing.assert_close(y2[1:], y[1:])
    assert not torch.allclose(y2[0], y[0], atol=1e-4)

    scalar = TimeSeriesSummary(1, 3, hidden_features=8, conv_layers=0, skip=False)
    assert scalar(torch.randn(4, 20)).shape == (4, 3)  # (B, T) when in_features == 1
    assert scalar.rho[0].in_features == 8 + 1 + 1  # GRU state, mean of x and log T
    assert net.rho[0].in_features == 16 + 16 + 16 + 1  # GRU state, skip, mean, log T
    no_length = TimeSeriesSummary(1, 3, hidden_features=8, pool=False, log_length=False)
    assert no_length.rho[0].in_features == 8 + 8

    with pytest.raises(ValueError, match=r"\(B, T, 2\)"):
        net(torch.randn(3, 10, 1))
    with pytest.raises(ValueError):
        net(torch.randn(3, 10))
    with pytest.raises(ValueError, match="conv_layers"):
        TimeSeriesSummary(1, 3, conv_layers=-1)


@pytest.mark.parametrize(
    "length, recurrent_steps, full_resolution_layers",
    # every step; the GRU reading 50 windows of 4 steps; only the first convolution at
    # every step, the second and the GRU on the windows
    [(50, None, None), (200, 64, None), (200, 64, 1)],
)
def test_time_series_summary_learns_ar1_coefficient(
    length, recurrent_steps, full_resolution_layers
):
    # regress rho from stationary AR(1) sequences x_t = rho x_{t-1} + eps_t
    torch.manual_seed(0)
    net = TimeSeriesSummary(
        1,
        1,
        hidden_features=32,
        recurrent_steps=recurrent_steps,
        full_resolution_layers=full_resolution_layers,
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)

    def simulate(batch, length=length):
        rho = 1.8 * torch.rand(batch) - 0.9
        eps = torch.randn(batch, length)
        x = [eps[:, 0] / torch.sqrt(1 - rho**2)]
        for t in range(1, length):
            x.append(rho * x[-1] + eps[:, t])
        return torch.stack(x, dim=1), rho

    for _ in range(200):
        x, rho = simulate(128)
        loss = (net(x)[:, 0] - rho).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        x, rho = simulate(2000)
        mse = (net(x)[:, 0] - rho).pow(2).mean().item()
    # the prior variance of rho is 0.27; least squares reaches ~0.016 at T = 50
    least_squares = (x[:, 1:] * x[:, :-1]).sum(1) / x[:, :-1].pow(2).sum(1)
    reference = (least_squares - rho).pow(2).mean().item()
    assert mse < 0.1 * rho.var().item()
    # pooled, as accurate as reading every step (3 seeds at T = 200: 1.21-1.35x least
    # squares, against 1.25-1.38x without pooling; 4 seeds with only the first
    # convolution at every step: 1.15-1.42x, against 1.21-1.36x pooling after both)
    assert mse < 1.5 * reference


def test_time_series_recurrent_steps_pool_only_long_series():
    torch.manual_seed(0)
    full = TimeSeriesSummary(1, 3, hidden_features=8)
    pooled = TimeSeriesSummary(1, 3, hidden_features=8, recurrent_steps=16)
    pooled.load_state_dict(full.state_dict())  # no weights of its own
    short, long = torch.randn(4, 16), torch.randn(4, 50)
    torch.testing.assert_close(pooled(short), full(short))  # 16 steps: read as they are
    assert not torch.allclose(pooled(long), full(long))
    # 50 steps in windows of 4: 13 GRU steps, the last window of 2 steps averaged as it is
    z = pooled.conv(long[:, None, :]).transpose(1, 2)
    windows = [z[:, i : i + 4].mean(1) for i in range(0, 50, 4)]
    _, state = pooled.gru(torch.stack(windows, 1))
    features = [state[-1], z[:, -1], z.mean(1), z.new_full((4, 1), math.log(50))]
    torch.testing.assert_close(pooled(long), pooled.rho(torch.cat(features, -1)))
    with pytest.raises(ValueError, match="recurrent_steps"):
        TimeSeriesSummary(1, 3, recurrent_steps=0)


def test_time_series_full_resolution_layers_run_before_the_windows():
    torch.manual_seed(0)
    late = TimeSeriesSummary(1, 3, hidden_features=8, recurrent_steps=16)
    early = TimeSeriesSummary(1, 3, hidden_features=8, recurrent_steps=16, full_resolution_layers=1)
    early.load_state_dict(late.state_dict())  # the same weights, used in another order
    short, long = torch.randn(4, 16), torch.randn(4, 50)
    torch.testing.assert_close(early(short), late(short))  # 16 steps: no windows
    # 50 steps: the first convolution at every step, windows of 4, the second on them
    first = early.conv[:2](long[:, None, :])
    windows = torch.stack([first[..., i : i + 4].mean(-1) for i in range(0, 50, 4)], -1)
    z = early.conv[2:](windows).transpose(1, 2)  # (4, 13, 8)
    _, state = early.gru(z)
    features = [state[-1], z[:, -1], z.mean(1), z.new_full((4, 1), math.log(50))]
    torch.testing.assert_close(early(long), early.rho(torch.cat(features, -1)))
    assert not torch.allclose(early(long), late(long))
    with pytest.raises(ValueError, match="full_resolution_layers"):
        TimeSeriesSummary(1, 3, recurrent_steps=4, full_resolution_layers=-1)


def test_fusion_summary():
    torch.manual_seed(0)
    summaries = {
        "y.obs": IdentitySummary((3, 2)),  # names may contain '.'
        "z": DeepSet(in_features=2, output_features=5, hidden_features=16),
    }
    net = FusionSummary(summaries, output_features=7, hidden_features=(32,))
    assert net.output_features == 7
    assert net.names == ("y.obs", "z")
    x = {"z": torch.randn(4, 30, 2), "y.obs": torch.randn(4, 3, 2)}
    out = net(x)
    assert out.shape == (4, 7)
    assert net.mlp[0].in_features == 6 + 5

    # each variable reaches the output, in the order of the summaries mapping
    expected = net.mlp(torch.cat([x["y.obs"].reshape(4, 6), summaries["z"](x["z"])], -1))
    torch.testing.assert_close(out, expected)
    # and the DeepSet branch keeps permutation invariance
    torch.testing.assert_close(
        net({"z": x["z"][:, torch.randperm(30)], "y.obs": x["y.obs"]}), out, atol=1e-5, rtol=1e-5
    )

    with pytest.raises(ValueError, match="expects variables"):
        net({"z": x["z"]})
    with pytest.raises(ValueError, match="expects variables"):
        net({**x, "w": torch.randn(4, 1)})
    with pytest.raises(ValueError, match="at least one"):
        FusionSummary({}, output_features=3)
    with pytest.raises(TypeError, match="output_features"):
        FusionSummary({"a": nn.Linear(3, 2)}, output_features=3)

    # parameters of every branch are registered, and saved in the state dict
    state = net.state_dict()
    assert any(key.startswith("summaries.1.phi") for key in state)
    clone = FusionSummary(
        {
            "y.obs": IdentitySummary((3, 2)),
            "z": DeepSet(in_features=2, output_features=5, hidden_features=16),
        },
        output_features=7,
        hidden_features=(32,),
    )
    clone.load_state_dict(state)
    torch.testing.assert_close(clone(x), out)


def test_build_summary_network():
    identity = build_summary_network("identity", (3, 2))
    assert isinstance(identity, IdentitySummary) and identity.output_features == 6
    assert build_summary_network("identity", (3, 2), 6).output_features == 6
    with pytest.raises(ValueError, match="output_features=6"):
        build_summary_network("identity", (3, 2), 5)
    with pytest.raises(TypeError):
        build_summary_network("identity", (3, 2), hidden_features=(8,))

    mlp = build_summary_network("mlp", (3, 2), 4, hidden_features=(8,))
    assert isinstance(mlp, MLPSummary)
    assert mlp(torch.randn(5, 3, 2)).shape == (5, 4)

    sets = build_summary_network("deepset", (50, 2), 8, hidden_features=16)
    assert isinstance(sets, DeepSet) and sets.in_features == 2
    assert sets(torch.randn(5, 13, 2)).shape == (5, 8)
    scalars = build_summary_network("deepset", 50, 8, hidden_features=16)
    assert scalars.in_features == 1
    assert scalars(torch.randn(5, 50)).shape == (5, 8)
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, F\)"):
        build_summary_network("deepset", (5, 4, 3), 8)
    with pytest.raises(ValueError, match="needs output_features"):
        build_summary_network("mlp", (3,))

    attention = build_summary_network("set_transformer", (50, 2), 8, hidden_features=16)
    assert isinstance(attention, SetTransformer) and attention.in_features == 2
    assert attention(torch.randn(5, 13, 2)).shape == (5, 8)
    assert build_summary_network("set_transformer", 50, 8, heads=2).in_features == 1
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, F\)"):
        build_summary_network("set_transformer", (5, 4, 3), 8)
    series = build_summary_network("time_series", (100, 3), 8, hidden_features=16)
    assert isinstance(series, TimeSeriesSummary) and series.in_features == 3
    assert series(torch.randn(5, 60, 3)).shape == (5, 8)
    scalar_series = build_summary_network("time_series", 100, 8, kernel_size=3)
    assert scalar_series.in_features == 1 and scalar_series(torch.randn(2, 100)).shape == (2, 8)
    with pytest.raises(ValueError, match=r"\(T,\) or \(T, F\)"):
        build_summary_network("time_series", (5, 4, 3), 8)
    with pytest.raises(ValueError, match="needs output_features"):
        build_summary_network("time_series", (100,))
    with pytest.raises(ValueError, match="unknown summary network.*time_series"):
        build_summary_network("transformer", (3,), 4)

    assert build_summary_network(sets, (50, 2), 8) is sets
    assert build_summary_network(sets, (50, 2)) is sets
    with pytest.raises(ValueError, match="expected 4"):
        build_summary_network(sets, (50, 2), 4)
    with pytest.raises(TypeError, match="built network"):
        build_summary_network(sets, (50, 2), 8, layers=3)
    with pytest.raises(TypeError, match="output_features"):
        build_summary_network(nn.Linear(3, 2), (3,))
