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

__all__ = [
    "DeepSet",
    "FusionSummary",
    "IdentitySummary",
    "MLPSummary",
    "build_summary_network",
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
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        hidden = (hidden_features,) * layers
        self.phi = MLP(in_features, hidden_features, hidden, activation=activation)
        self.rho = MLP(2 * hidden_features + 1, output_features, hidden, activation=activation)
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
        h = self.phi(x)
        mean = h.mean(dim=1)
        # eps keeps the gradient finite for N == 1 or identical elements
        std = torch.sqrt(h.var(dim=1, correction=0) + 1e-6)
        log_n = mean.new_full((x.shape[0], 1), math.log(x.shape[1]))
        return self.rho(torch.cat((mean, std, log_n), dim=-1))


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

    Parameters
    ----------
    name : str or nn.Module
        One of the names above, or an already-built module with an integer
        ``output_features`` attribute, returned as is.
    in_shape : int or sequence of int
        Shape of one observation, without the batch axis.
    output_features : int, optional
        Embedding size. Required for ``"mlp"`` and ``"deepset"``; if given for
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
    elif name in ("mlp", "deepset"):
        if output_features is None:
            raise ValueError(f"summary network {name!r} needs output_features")
        if name == "mlp":
            net = MLPSummary(in_shape, output_features, **options)
        elif len(in_shape) in (1, 2):
            in_features = in_shape[1] if len(in_shape) == 2 else 1
            net = DeepSet(in_features, output_features, **options)
        else:
            raise ValueError(f"'deepset' needs in_shape (N,) or (N, F), got {in_shape}")
    else:
        raise ValueError(
            f"unknown summary network {name!r}; choose from ['deepset', 'identity', 'mlp']"
        )
    out = _output_features(net)
    if output_features is not None and out != output_features:
        raise ValueError(f"summary network has output_features={out}, expected {output_features}")
    return net
