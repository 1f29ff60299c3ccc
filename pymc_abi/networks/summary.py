r"""Summary networks :math:`h_\psi(x)`: fixed-size embeddings of observed data.

Every summary network maps a float tensor with a leading batch axis ``B`` to an
embedding of shape ``(B, S)`` and exposes ``S`` as its ``output_features`` attribute.
:class:`FusionSummary` combines one summary network per observed variable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from zuko.nn import MLP

from pymc_abi.networks.standardize import IQR_NORMAL

__all__ = [
    "DeepSet",
    "FusionSummary",
    "IdentitySummary",
    "MLPSummary",
    "SetTransformer",
    "TimeSeriesSummary",
    "build_summary_network",
    "summary_kinds",
]


def _as_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)


def _check_shape(x: Tensor, in_shape: tuple[int, ...], name: str) -> None:
    if tuple(x.shape[1:]) != in_shape or x.ndim < 1:
        raise ValueError(
            f"{name} expects input of shape (B, {', '.join(map(str, in_shape))}), "
            f"got {tuple(x.shape)}"
        )


class IdentitySummary(nn.Module):
    r"""Flatten the data: :math:`(B, *\mathrm{shape}) \to (B, \prod \mathrm{shape})`.

    Suited to low-dimensional data of fixed shape, or to data that are already summary
    statistics.

    Parameters
    ----------
    in_shape : int or sequence of int
        Shape of one observation, without the batch axis. ``()`` maps ``(B,)`` to
        ``(B, 1)``.

    Examples
    --------
    >>> net = IdentitySummary((3, 2))
    >>> net(torch.randn(5, 3, 2)).shape, net.output_features
    (torch.Size([5, 6]), 6)
    """

    def __init__(self, in_shape: int | Sequence[int]) -> None:
        super().__init__()
        self.in_shape = _as_shape(in_shape)
        self.output_features = math.prod(self.in_shape)

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, output_features={self.output_features}"

    def forward(self, x: Tensor) -> Tensor:
        _check_shape(x, self.in_shape, type(self).__name__)
        return x.reshape(x.shape[0], self.output_features)


class MLPSummary(nn.Module):
    r"""Flatten the data, then apply a multi-layer perceptron.

    Parameters
    ----------
    in_shape : int or sequence of int
        Shape of one observation, without the batch axis.
    output_features : int
        Embedding size ``S``.
    hidden_features : sequence of int, default (128, 128)
        Widths of the hidden layers.
    activation : callable, default torch.nn.SiLU
        Activation constructor.

    Examples
    --------
    >>> net = MLPSummary((10,), output_features=4, hidden_features=(32,))
    >>> net(torch.randn(5, 10)).shape
    torch.Size([5, 4])
    """

    def __init__(
        self,
        in_shape: int | Sequence[int],
        output_features: int,
        hidden_features: Sequence[int] = (128, 128),
        activation: Callable[[], nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        self.flatten = IdentitySummary(in_shape)
        self.mlp = MLP(
            self.flatten.output_features,
            output_features,
            hidden_features=tuple(hidden_features),
            activation=activation,
        )
        self.output_features = int(output_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.flatten(x))


class DeepSet(nn.Module):
    r"""Exchangeable summary of a set of ``N`` elements with ``F`` features each.

    Each element is embedded by :math:`\phi`, the embeddings are pooled by their mean
    and standard deviation over the set, and :math:`\rho` maps the pooled statistics,
    together with :math:`\log N`, to the output:

    .. math:: h(x) = \rho\Big(\frac{1}{N} \sum_{j=1}^N \phi(x_j),\
        \mathrm{sd}_{j}\,\phi(x_j),\ \log N\Big).

    With ``normalize=True`` the set is also described in its own units: each element
    enters :math:`\phi` with :math:`r_j = \operatorname{asinh}((x_j - m) / s)` beside
    :math:`x_j`, for the set's median :math:`m` and robust scale :math:`s` (interquartile
    range / 1.349, or the SD where that is zero), and :math:`m`, :math:`\log s` and the
    quantiles of the :math:`r_j` (0, 2, 10, 25, 75, 90, 98 and 100%) enter :math:`\rho`.
    The shape of the data's distribution (its tails, say) then needs no learning apart
    from its location and scale, and no element can swamp the pooled statistics.

    The output is invariant to permutations of the elements (exactly, up to
    floating-point rounding) and ``N`` may differ between calls; both pooling
    statistics are size-robust and :math:`\log N` tells :math:`\rho` the sample size,
    which sets the posterior's width. All sets of one batch share ``N`` (no padding).

    Parameters
    ----------
    in_features : int
        Features ``F`` per element. If 1, inputs of shape ``(B, N)`` are accepted too.
    output_features : int
        Embedding size ``S``.
    hidden_features : int, default 128
        Width of the hidden layers of :math:`\phi` and :math:`\rho` and size of the
        element embeddings.
    layers : int, default 2
        Number of hidden layers of :math:`\phi` and of :math:`\rho` each.
    activation : callable, default torch.nn.SiLU
        Activation constructor.
    normalize : bool, default False
        Describe each set also in its own location and scale (see above).

    Examples
    --------
    >>> net = DeepSet(in_features=2, output_features=8, hidden_features=32)
    >>> net(torch.randn(5, 100, 2)).shape, net(torch.randn(5, 7, 2)).shape
    (torch.Size([5, 8]), torch.Size([5, 8]))
    """

    def __init__(
        self,
        in_features: int,
        output_features: int,
        hidden_features: int = 128,
        layers: int = 2,
        activation: Callable[[], nn.Module] = nn.SiLU,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        hidden = (hidden_features,) * layers
        self.normalize = bool(normalize)
        extra = in_features if normalize else 0
        self.phi = MLP(in_features + extra, hidden_features, hidden, activation=activation)
        shape = (2 + len(_SHAPE_QUANTILES)) * extra  # location, log scale, quantiles
        self.rho = MLP(
            2 * hidden_features + 1 + shape, output_features, hidden, activation=activation
        )
        self.in_features = int(in_features)
        self.output_features = int(output_features)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 2 and self.in_features == 1:
            x = x.unsqueeze(-1)
        if x.ndim != 3 or x.shape[-1] != self.in_features or x.shape[1] < 1:
            raise ValueError(
                f"DeepSet expects input of shape (B, N, {self.in_features}) with N >= 1, "
                f"got {tuple(x.shape)}"
            )
        pooled = []
        if self.normalize:
            location, scale = _robust_location_scale(x)
            r = torch.asinh((x - location[:, None]) / scale[:, None])
            quantiles = torch.quantile(r, _SHAPE_QUANTILES.to(r), dim=1)  # (Q, B, F)
            x = torch.cat((x, r), dim=-1)
            pooled = [location, scale.log(), quantiles.permute(1, 0, 2).flatten(1)]
        h = self.phi(x)
        mean = h.mean(dim=1)
        # eps keeps the gradient finite for N == 1 or identical elements
        std = torch.sqrt(h.var(dim=1, correction=0) + 1e-6)
        log_n = mean.new_full((x.shape[0], 1), math.log(x.shape[1]))
        return self.rho(torch.cat((mean, std, log_n, *pooled), dim=-1))


# quantiles of a set's elements in its own units, the shape of its distribution (its tails
# and skew) for rho
_SHAPE_QUANTILES = torch.tensor([0.0, 0.02, 0.1, 0.25, 0.75, 0.9, 0.98, 1.0])


def _robust_location_scale(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per set and feature of ``x (B, N, F)``: the median and a robust scale (IQR / 1.349,
    or the SD where the IQR is zero, at least 1e-3)."""
    with torch.no_grad():  # statistics of the data, not of parameters
        q = torch.quantile(
            x, torch.tensor([0.25, 0.5, 0.75], dtype=x.dtype, device=x.device), dim=1
        )
        scale = (q[2] - q[0]) / IQR_NORMAL
        scale = torch.where(scale > 0, scale, x.std(dim=1, correction=0))
        return q[1], scale.clamp_min(1e-3)


def _as_sequence_input(x: Tensor, in_features: int, name: str, axis: str) -> Tensor:
    """``(B, L, F)`` from ``(B, L, F)`` or, when ``F == 1``, ``(B, L)``; ``L >= 1``."""
    if x.ndim == 2 and in_features == 1:
        x = x.unsqueeze(-1)
    if x.ndim != 3 or x.shape[-1] != in_features or x.shape[1] < 1:
        raise ValueError(
            f"{name} expects input of shape (B, {axis}, {in_features}) with {axis} >= 1, "
            f"got {tuple(x.shape)}"
        )
    return x


class _MAB(nn.Module):
    r"""Pre-norm multihead attention block of queries :math:`X` on a set :math:`Y`,

    .. math:: H = X + \mathrm{MHA}(\mathrm{LN}(X), \mathrm{LN}(Y), \mathrm{LN}(Y)),
        \qquad \mathrm{MAB}(X, Y) = H + \mathrm{rFF}(\mathrm{LN}(H)),

    with a row-wise feed-forward network :math:`\mathrm{rFF}`. Equivariant to
    permutations of :math:`X`, invariant to permutations of :math:`Y`.
    """

    def __init__(self, features: int, heads: int, activation: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.norm_query = nn.LayerNorm(features)
        self.norm_key = nn.LayerNorm(features)
        self.attention = nn.MultiheadAttention(features, heads, batch_first=True)
        self.norm_ff = nn.LayerNorm(features)
        self.ff = nn.Sequential(
            nn.Linear(features, features), activation(), nn.Linear(features, features)
        )

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        key = self.norm_key(y)
        h = x + self.attention(self.norm_query(x), key, key, need_weights=False)[0]
        return h + self.ff(self.norm_ff(h))


class _ISAB(nn.Module):
    r"""Induced set attention block: :math:`\mathrm{MAB}(X, \mathrm{MAB}(I, X))` with
    ``m`` learned inducing points :math:`I`, in :math:`O(N m)` instead of
    :math:`O(N^2)`."""

    def __init__(
        self, features: int, heads: int, inducing: int, activation: Callable[[], nn.Module]
    ) -> None:
        super().__init__()
        self.inducing = nn.Parameter(torch.randn(inducing, features) / math.sqrt(features))
        self.summarize = _MAB(features, heads, activation)
        self.broadcast = _MAB(features, heads, activation)

    def forward(self, x: Tensor) -> Tensor:
        h = self.summarize(self.inducing.expand(x.shape[0], -1, -1), x)
        return self.broadcast(x, h)


class _SAB(nn.Module):
    r"""Set attention block :math:`\mathrm{MAB}(X, X)`, in :math:`O(N^2)`."""

    def __init__(self, features: int, heads: int, activation: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.block = _MAB(features, heads, activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x, x)


class SetTransformer(nn.Module):
    r"""Exchangeable summary of a set by attention (Set Transformer, Lee et al., 2019).

    The elements are embedded by a linear map, interact through ``blocks`` induced set
    attention blocks (ISAB, each costing :math:`O(N m)` for ``m`` inducing points; or
    set attention blocks, SAB, :math:`O(N^2)`, when ``inducing_points`` is ``None``),
    and are pooled by multihead attention with one learned seed :math:`s` (PMA):

    .. math:: h(x) = \rho\Big(\mathrm{LN}\big(\mathrm{MAB}(s, Z)\big),\ \log N\Big),
        \qquad Z = \mathrm{ISAB}_m \circ \dots \circ \mathrm{ISAB}_m(W x + b),

    with :math:`\mathrm{MAB}(X, Y) = H + \mathrm{rFF}(\mathrm{LN}(H))`, :math:`H = X +
    \mathrm{MHA}(\mathrm{LN}(X), \mathrm{LN}(Y), \mathrm{LN}(Y))` (pre-norm residual
    blocks) and an MLP :math:`\rho`. The blocks are permutation equivariant and the
    pooling is invariant, so the output is invariant to permutations of the elements
    (up to floating-point rounding); unlike :class:`DeepSet`, the elements interact
    before pooling. ``N`` may differ between calls; all sets of one batch share ``N``
    (no padding). Like :class:`DeepSet`, :math:`\log N` is appended to the pooled
    embedding, since attention pooling is a weighted mean and does not see the size.

    Parameters
    ----------
    in_features : int
        Features ``F`` per element. If 1, inputs of shape ``(B, N)`` are accepted too.
    output_features : int
        Embedding size ``S``.
    hidden_features : int, default 64
        Width of the attention blocks; a multiple of ``heads``.
    heads : int, default 4
        Number of attention heads.
    inducing_points : int or None, default 16
        Inducing points ``m`` of each ISAB; ``None`` uses SAB blocks instead.
    blocks : int, default 2
        Number of ISAB (or SAB) blocks.
    log_size : bool, default True
        Append :math:`\log N` to the pooled embedding.
    activation : callable, default torch.nn.SiLU
        Activation constructor.

    Examples
    --------
    >>> net = SetTransformer(in_features=2, output_features=8, hidden_features=32)
    >>> net(torch.randn(5, 100, 2)).shape, net(torch.randn(5, 7, 2)).shape
    (torch.Size([5, 8]), torch.Size([5, 8]))
    """

    def __init__(
        self,
        in_features: int,
        output_features: int,
        hidden_features: int = 64,
        heads: int = 4,
        inducing_points: int | None = 16,
        blocks: int = 2,
        log_size: bool = True,
        activation: Callable[[], nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        if hidden_features < 1 or heads < 1 or hidden_features % heads:
            raise ValueError(
                f"hidden_features must be a positive multiple of heads, got {hidden_features} "
                f"and {heads}"
            )
        if blocks < 0:
            raise ValueError(f"blocks must be >= 0, got {blocks}")
        if inducing_points is not None and inducing_points < 1:
            raise ValueError(f"inducing_points must be >= 1 or None, got {inducing_points}")
        self.embed = nn.Linear(in_features, hidden_features)
        self.blocks = nn.ModuleList(
            _SAB(hidden_features, heads, activation)
            if inducing_points is None
            else _ISAB(hidden_features, heads, inducing_points, activation)
            for _ in range(blocks)
        )
        self.seed = nn.Parameter(torch.randn(1, hidden_features) / math.sqrt(hidden_features))
        self.pool = _MAB(hidden_features, heads, activation)
        self.norm = nn.LayerNorm(hidden_features)
        self.rho = MLP(
            hidden_features + int(log_size),
            output_features,
            (hidden_features,),
            activation=activation,
        )
        self.in_features = int(in_features)
        self.output_features = int(output_features)
        self.log_size = bool(log_size)

    def forward(self, x: Tensor) -> Tensor:
        x = _as_sequence_input(x, self.in_features, type(self).__name__, "N")
        z = self.embed(x)
        for block in self.blocks:
            z = block(z)
        pooled = self.norm(self.pool(self.seed.expand(x.shape[0], -1, -1), z)[:, 0])
        if self.log_size:
            log_n = pooled.new_full((x.shape[0], 1), math.log(x.shape[1]))
            pooled = torch.cat((pooled, log_n), dim=-1)
        return self.rho(pooled)


class TimeSeriesSummary(nn.Module):
    r"""Summary of a sequence of ``T`` time steps with ``F`` features each (LSTNet-like).

    After Lai et al. (2018): 1-D convolutions over time extract local patterns, a GRU
    reads their sequence, and an MLP :math:`\rho` maps the GRU's final hidden state,
    optionally with the convolutional features of the last time step (a skip
    connection), their average over time and :math:`\log T`, to the output:

    .. math:: z_{1:T} = \mathrm{conv}(x_{1:T}), \qquad g_T = \mathrm{GRU}(z_{1:T}),
        \qquad h(x) = \rho\Big(g_T,\ z_T,\ \frac{1}{T} \sum_{t=1}^T z_t,\ \log T\Big).

    The time average gives :math:`\rho` direct access to every time step: a GRU's memory
    of early steps fades (at initialization, after about ten steps), and summaries such
    as the moments or autocorrelations of a stationary series are averages over time.

    Each convolution has ``kernel_size`` taps, ``"same"`` zero padding and an
    activation. The summary depends on the order of the time steps (it is not
    permutation invariant) and ``T`` may differ between calls; all sequences of one
    batch share ``T`` (no padding). The GRU runs sequentially over time: the cost is
    linear in ``T`` but not parallel over it. With ``recurrent_steps``, the GRU reads the
    convolutional features averaged over windows of ``ceil(T / recurrent_steps)`` steps, at
    most ``recurrent_steps`` of them: on a CPU, a GRU of 64 units over 200 steps costs 0.65 s
    per batch of 256 (forward and backward), over 50 steps 0.12 s. With
    ``full_resolution_layers`` as well, only the first convolutions see every step; the
    windows are averaged after them, and the later convolutions, the GRU, the skip
    connection and the average read the windows (a convolution of 64 channels costs
    0.2 s per batch of 256 over 200 steps, 0.07 s over 64).

    Parameters
    ----------
    in_features : int
        Features ``F`` per time step. If 1, inputs of shape ``(B, T)`` are accepted too.
    output_features : int
        Embedding size ``S``.
    hidden_features : int, default 64
        Channels of the convolutions, size of the GRU state and width of :math:`\rho`.
        pymc-abi's default network sets ``max(32, 2 * output_features)``.
    kernel_size : int, default 5
        Taps of each convolution.
    conv_layers : int, default 2
        Number of convolutions (0 feeds the raw sequence to the GRU).
    skip : bool, default True
        Pass the last time step's convolutional features to :math:`\rho`.
    pool : bool, default True
        Pass the time average of the convolutional features to :math:`\rho`.
    log_length : bool, default True
        Pass :math:`\log T` to :math:`\rho`.
    activation : callable, default torch.nn.SiLU
        Activation constructor.
    recurrent_steps : int, optional
        The most time steps the GRU reads (windows of the convolutional features averaged
        to fit); ``None``: every step. pymc-abi's default network sets 64.
    full_resolution_layers : int, optional
        With ``recurrent_steps``: the convolutions that run at every time step before the
        windows are averaged (the rest run on the windows). ``None``: all of them.
        pymc-abi's default network sets 1.

    Examples
    --------
    >>> net = TimeSeriesSummary(in_features=1, output_features=4, hidden_features=16)
    >>> net(torch.randn(5, 50)).shape, net(torch.randn(5, 80, 1)).shape
    (torch.Size([5, 4]), torch.Size([5, 4]))
    """

    def __init__(
        self,
        in_features: int,
        output_features: int,
        hidden_features: int = 64,
        kernel_size: int = 5,
        conv_layers: int = 2,
        skip: bool = True,
        pool: bool = True,
        log_length: bool = True,
        activation: Callable[[], nn.Module] = nn.SiLU,
        recurrent_steps: int | None = None,
        full_resolution_layers: int | None = None,
    ) -> None:
        super().__init__()
        if hidden_features < 1 or kernel_size < 1 or conv_layers < 0:
            raise ValueError(
                "need hidden_features >= 1, kernel_size >= 1 and conv_layers >= 0, got "
                f"{hidden_features}, {kernel_size} and {conv_layers}"
            )
        if recurrent_steps is not None and int(recurrent_steps) < 1:
            raise ValueError(f"recurrent_steps must be positive, got {recurrent_steps}")
        if full_resolution_layers is not None and int(full_resolution_layers) < 0:
            raise ValueError(f"full_resolution_layers must be >= 0, got {full_resolution_layers}")
        self.recurrent_steps = None if recurrent_steps is None else int(recurrent_steps)
        self.full_resolution_layers = (
            None if full_resolution_layers is None else int(full_resolution_layers)
        )
        layers: list[nn.Module] = []
        channels = in_features
        for _ in range(conv_layers):
            layers += [
                nn.Conv1d(channels, hidden_features, kernel_size, padding="same"),
                activation(),
            ]
            channels = hidden_features
        self.conv = nn.Sequential(*layers)
        self.gru = nn.GRU(channels, hidden_features, batch_first=True)
        self.rho = MLP(
            hidden_features + channels * (int(skip) + int(pool)) + int(log_length),
            output_features,
            (hidden_features,),
            activation=activation,
        )
        self.in_features = int(in_features)
        self.output_features = int(output_features)
        self.skip = bool(skip)
        self.pool = bool(pool)
        self.log_length = bool(log_length)

    def forward(self, x: Tensor) -> Tensor:
        x = _as_sequence_input(x, self.in_features, type(self).__name__, "T")
        steps = x.shape[1]
        z = x.transpose(1, 2)  # (B, channels, T)
        if self.recurrent_steps is None or steps <= self.recurrent_steps:
            z = self.conv(z).transpose(1, 2)
            _, state = self.gru(z)
        elif self.full_resolution_layers is not None:
            # the first convolutions at every step, the rest (and the GRU) on the windows
            split = 2 * self.full_resolution_layers  # each layer: a convolution, an activation
            z = self._windows(self.conv[:split](z), steps)
            z = self.conv[split:](z).transpose(1, 2)
            _, state = self.gru(z)
        else:
            z = self.conv(z)
            _, state = self.gru(self._windows(z, steps).transpose(1, 2))
            z = z.transpose(1, 2)
        features = [state[-1]]
        if self.skip:
            features.append(z[:, -1])
        if self.pool:
            features.append(z.mean(dim=1))
        if self.log_length:
            features.append(z.new_full((x.shape[0], 1), math.log(x.shape[1])))
        return self.rho(torch.cat(features, dim=-1))

    def _windows(self, z: Tensor, steps: int) -> Tensor:
        """``(B, C, T)`` averaged over windows of ``ceil(T / recurrent_steps)`` steps; the
        last, shorter window averages what it has."""
        window = math.ceil(steps / self.recurrent_steps)
        return nn.functional.avg_pool1d(z, window, window, ceil_mode=True, count_include_pad=False)


class FusionSummary(nn.Module):
    r"""Summarize several observed variables jointly.

    Each variable is summarized by its own network, the embeddings are concatenated in
    the order of ``summaries`` and mapped to the output by a small MLP.

    Parameters
    ----------
    summaries : mapping of str to nn.Module
        One summary network (with an ``output_features`` attribute) per variable name.
        Names may be any strings.
    output_features : int
        Embedding size ``S``.
    hidden_features : sequence of int, default (128,)
        Widths of the hidden layers of the fusion MLP.
    activation : callable, default torch.nn.SiLU
        Activation constructor.

    Examples
    --------
    >>> net = FusionSummary(
    ...     {"y": IdentitySummary(3), "z": DeepSet(2, output_features=4, hidden_features=16)},
    ...     output_features=8,
    ... )
    >>> net({"y": torch.randn(5, 3), "z": torch.randn(5, 20, 2)}).shape
    torch.Size([5, 8])
    """

    def __init__(
        self,
        summaries: Mapping[str, nn.Module],
        output_features: int,
        hidden_features: Sequence[int] = (128,),
        activation: Callable[[], nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        if not summaries:
            raise ValueError("FusionSummary needs at least one summary network")
        # a ModuleList, not a ModuleDict: variable names may contain '.'
        self.names = tuple(summaries)
        self.summaries = nn.ModuleList(summaries.values())
        total = sum(_output_features(net) for net in self.summaries)
        self.mlp = MLP(total, output_features, tuple(hidden_features), activation=activation)
        self.output_features = int(output_features)

    def extra_repr(self) -> str:
        return f"names={self.names}"

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        if set(x) != set(self.names):
            raise ValueError(f"FusionSummary expects variables {self.names}, got {tuple(x)}")
        embeddings = [net(x[name]) for name, net in zip(self.names, self.summaries, strict=True)]
        return self.mlp(torch.cat(embeddings, dim=-1))


def _output_features(net: nn.Module) -> int:
    out = getattr(net, "output_features", None)
    if not isinstance(out, int):
        raise TypeError(f"{type(net).__name__} has no integer 'output_features' attribute")
    return out


# networks over the first axis of an observation, in_shape (L,) or (L, F)
_SEQUENCE_SUMMARIES: dict[str, type[nn.Module]] = {
    "deepset": DeepSet,
    "set_transformer": SetTransformer,
    "time_series": TimeSeriesSummary,
}
_SUMMARY_NAMES = ("mlp", *_SEQUENCE_SUMMARIES)


def build_summary_network(
    name: str | nn.Module,
    in_shape: int | Sequence[int],
    output_features: int | None = None,
    **options: Any,
) -> nn.Module:
    r"""Build a summary network by name, or check and pass through an instance.

    ``"identity"``
        :class:`IdentitySummary`; ``output_features`` is ``prod(in_shape)``.
    ``"mlp"``
        :class:`MLPSummary` on the flattened data.
    ``"deepset"``
        :class:`DeepSet` over the first axis of an observation: ``in_shape`` is
        ``(N,)`` for a set of scalars or ``(N, F)`` for a set of vectors; ``N`` may
        then vary between calls.
    ``"set_transformer"``
        :class:`SetTransformer`, with ``in_shape`` as for ``"deepset"``.
    ``"time_series"``
        :class:`TimeSeriesSummary` over the first axis of an observation: ``in_shape``
        is ``(T,)`` for a scalar series or ``(T, F)`` for a multivariate one; ``T`` may
        then vary between calls.

    Parameters
    ----------
    name : str or nn.Module
        One of the names above, or an already-built module with an integer
        ``output_features`` attribute, returned as is.
    in_shape : int or sequence of int
        Shape of one observation, without the batch axis.
    output_features : int, optional
        Embedding size. Required for every name but ``"identity"``; if given for
        ``"identity"`` or an instance, it must match.
    **options
        Keyword arguments of the network's constructor.

    Returns
    -------
    nn.Module

    Examples
    --------
    >>> net = build_summary_network("deepset", (50, 2), 16, hidden_features=32)
    >>> net(torch.randn(4, 50, 2)).shape
    torch.Size([4, 16])
    >>> build_summary_network(net, (50, 2), 16) is net
    True
    >>> series = build_summary_network("time_series", (100,), 8, hidden_features=16)
    >>> series(torch.randn(4, 100)).shape
    torch.Size([4, 8])
    """
    in_shape = _as_shape(in_shape)
    if isinstance(name, nn.Module):
        if options:
            raise TypeError(f"options {sorted(options)} cannot be applied to a built network")
        net = name
    elif name == "identity":
        if options:
            raise TypeError(f"'identity' takes no options, got {sorted(options)}")
        net = IdentitySummary(in_shape)
    elif name in _SUMMARY_NAMES:
        if output_features is None:
            raise ValueError(f"summary network {name!r} needs output_features")
        if name == "mlp":
            net = MLPSummary(in_shape, output_features, **options)
        elif len(in_shape) in (1, 2):
            in_features = in_shape[1] if len(in_shape) == 2 else 1
            net = _SEQUENCE_SUMMARIES[name](in_features, output_features, **options)
        else:
            axis = "T" if name == "time_series" else "N"
            raise ValueError(f"{name!r} needs in_shape ({axis},) or ({axis}, F), got {in_shape}")
    else:
        raise ValueError(
            f"unknown summary network {name!r}; choose from {sorted(['identity', *_SUMMARY_NAMES])}"
        )
    out = _output_features(net)
    if output_features is not None and out != output_features:
        raise ValueError(f"summary network has output_features={out}, expected {output_features}")
    return net


def summary_kinds(choice) -> str | dict | None:
    """The summary choice with modules named ``"custom"`` (DataSpec plans by kind)."""
    if isinstance(choice, Mapping):
        return {k: "custom" if isinstance(v, nn.Module) else v for k, v in choice.items()}
    return "custom" if isinstance(choice, nn.Module) else choice
