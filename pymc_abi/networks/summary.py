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

from pymc_abi.networks.sequence import SetTransformer, TimeSeriesSummary
from pymc_abi.networks.standardize import IQR_NORMAL

__all__ = [
    "DeepSet",
    "FusionSummary",
    "IdentitySummary",
    "MLPSummary",
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
