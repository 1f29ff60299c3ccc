r"""Conditional density estimators :math:`q_\phi(\theta \mid x)` for amortized inference.

An inference network maps a batch of contexts (data embeddings) :math:`c = h(x)` to a
distribution over parameters :math:`\theta`. All networks share the interface of
:class:`InferenceNetwork`; :class:`FlowNetwork` wraps a conditional normalizing flow
from :mod:`zuko.flows` and :func:`build_inference_network` builds one by name.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import zuko
from torch import Tensor, nn
from torch.distributions import Independent, Normal
from zuko.lazy import LazyDistribution

from .base import InferenceNetwork
from .flow_matching import FlowMatching

__all__ = ["FlowNetwork", "InferenceNetwork", "build_inference_network"]


class FlowNetwork(InferenceNetwork):
    r"""Inference network wrapping a conditional normalizing flow from :mod:`zuko`.

    ``flow`` is a lazy distribution (e.g. any :mod:`zuko.flows` flow built with
    ``context=context_features``): called with contexts ``(B, C)``, it returns a
    distribution with batch shape ``(B,)`` and event shape ``(D,)``. The density is
    exact, by the change of variables through the flow's bijection :math:`f_c`,

    .. math:: \log q_\phi(\theta \mid c) = \log \mathcal{N}(f_c(\theta); 0, I)
        + \log \left| \det \partial f_c(\theta) / \partial \theta \right| .

    Parameters
    ----------
    flow : zuko.lazy.LazyDistribution
        Conditional flow with ``D`` features and ``C`` context features.
    features : int
        Number of parameters ``D``.
    context_features : int
        Number of context features ``C``.

    Examples
    --------
    >>> flow = zuko.flows.NSF(2, 3, transforms=2, passes=2)
    >>> net = FlowNetwork(flow, features=2, context_features=3)
    >>> context = torch.randn(4, 3)
    >>> theta, log_prob = net.sample_and_log_prob(5, context)
    >>> torch.allclose(net.log_prob(theta[0], context), log_prob[0], atol=1e-4)
    True
    """

    def __init__(self, flow: LazyDistribution, features: int, context_features: int) -> None:
        super().__init__(features, context_features)
        self.flow = flow

    def _log_prob(self, theta: Tensor, context: Tensor) -> Tensor:
        return self.flow(context).log_prob(theta)

    def _sample(self, n: int, context: Tensor, generator: torch.Generator | None) -> Tensor:
        return self._sample_and_log_prob(n, context, generator)[0]

    def _sample_and_log_prob(
        self, n: int, context: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        # zuko draws the base noise from torch's global generator; draw it here instead,
        # then push it through the flow exactly as zuko's rsample_and_log_prob does
        dist = self.flow(context)
        base = dist.base
        normal = base.base_dist if isinstance(base, Independent) else base
        if not isinstance(normal, Normal):
            if generator is not None:
                raise TypeError(
                    f"A generator needs a Gaussian base distribution; this flow's base is "
                    f"{type(normal).__name__}. Sample without a generator."
                )
            return dist.rsample_and_log_prob((n,))
        shape = (n, *base.batch_shape, *base.event_shape)
        eps = torch.randn(
            shape, generator=generator, dtype=normal.loc.dtype, device=normal.loc.device
        )
        z = normal.loc + normal.scale * eps
        theta, ladj = _inverse_and_ladj(dist.transform, z)
        if dist.reinterpreted:
            ladj = ladj.sum(dim=tuple(range(-dist.reinterpreted, 0)))
        return theta, base.log_prob(z) - ladj


def _inverse_and_ladj(transform, y: Tensor) -> tuple[Tensor, Tensor]:
    """``x = T^{-1}(y)`` and ``log |det dx/dy|``, as ``transform.inv.call_and_ladj(y)``.

    zuko inverts an autoregressive (or coupling) transform in ``passes`` passes, each
    building the univariate transforms from the current ``x``, and then builds them once
    more for the Jacobian. The last pass already has them right (each feature's parameters
    depend only on features fixed by the earlier passes), so the Jacobian is taken from it:
    one construction fewer per layer, which for spline flows is most of the sampling time.
    """
    if isinstance(transform, zuko.transforms.ComposedTransform):
        total = None
        for t in reversed(transform.transforms):
            y, ladj = _inverse_and_ladj(t, y)
            total = ladj if total is None else total + ladj
        return y, total
    if isinstance(transform, zuko.transforms.AutoregressiveTransform):
        x = torch.zeros_like(y)
        for _ in range(transform.passes - 1):
            x = transform.meta(x).inv(y)
        return transform.meta(x).inv.call_and_ladj(y)
    return transform.inv.call_and_ladj(y)


class _RQSTransform(zuko.transforms.MonotonicRQSTransform):
    """zuko's monotonic rational-quadratic spline, with its knots computed faster.

    The same parametrization (so trained weights mean the same): unconstrained widths and
    heights softly bounded by ``|log(slope)| / 2``, normalized over the bins, and summed
    into knots on ``[-bound, bound]``; derivatives softly bounded and exponentiated, 1 at
    both ends. The normalization is written as ``exp`` over its sum: the soft bound keeps
    the exponent within ±3.5, so no maximum needs subtracting, and on a CPU
    ``torch.softmax`` over a last dim of 8 bins takes five times as long.
    """

    def __init__(self, widths, heights, derivatives, bound: float = 5.0, slope: float = 1e-3):
        zuko.transforms.Transform.__init__(self)
        limit = math.log(slope)

        def knots(unconstrained: Tensor) -> Tensor:
            weights = torch.exp(unconstrained / (1 + abs(2 * unconstrained / limit)))
            fractions = nn.functional.pad(weights / weights.sum(-1, keepdim=True), (1, 0))
            return bound * (2 * torch.cumsum(fractions, dim=-1) - 1)

        self.horizontal = knots(widths)
        self.vertical = knots(heights)
        derivatives = derivatives / (1 + abs(derivatives / limit))
        self.derivatives = torch.exp(nn.functional.pad(derivatives, (1, 1)))


def _spline_flow(features: int, context: int, *, bins: int = 8, slope: float = 1e-3, **kwargs):
    """zuko's NSF with :class:`_RQSTransform` (the same modules and weights)."""
    return zuko.flows.MAF(
        features,
        context,
        univariate=functools.partial(_RQSTransform, slope=slope),
        shapes=[(bins,), (bins,), (bins - 1,)],
        **kwargs,
    )


class _FlowSpec(NamedTuple):
    flow: Callable[..., zuko.flows.MAF]
    passes: int | None
    transforms: int
    spline: bool


# name -> (zuko class, passes, default number of transforms, spline)
_FLOW_SPECS: dict[str, _FlowSpec] = {
    "nsf": _FlowSpec(_spline_flow, 2, 4, True),
    "coupling": _FlowSpec(zuko.flows.MAF, 2, 6, False),
    "maf": _FlowSpec(zuko.flows.MAF, None, 6, False),
    "nsf_ar": _FlowSpec(_spline_flow, None, 4, True),
}


def build_inference_network(
    name: str | InferenceNetwork,
    features: int,
    context_features: int,
    **options: Any,
) -> InferenceNetwork:
    r"""Build an inference network by name, or check and pass through an instance.

    ``"nsf"``
        Neural spline flow in **coupling** form (:class:`zuko.flows.NSF` with
        ``passes=2``): monotonic rational-quadratic splines, two passes to sample,
        preceded by a conditional affine layer (a location and scale per parameter from
        the context) so that the splines work near the origin and stray draws in the
        tails are rare. Recommended default.
    ``"coupling"``
        Affine coupling flow, RealNVP-style (:class:`zuko.flows.MAF` with ``passes=2``):
        each transform maps one half of the features by an affine map whose parameters
        are functions of the other half and the context (the first half by an affine map
        of the context only), two passes to sample.
    ``"maf"``
        Masked autoregressive affine flow (:class:`zuko.flows.MAF`, fully
        autoregressive): density in one pass, ``D`` sequential passes to sample.
    ``"nsf_ar"``
        Autoregressive neural spline flow (:class:`zuko.flows.NSF`, fully
        autoregressive, with the same conditional affine layer first): the most
        flexible, ``D`` sequential passes to sample.
    ``"flow_matching"``
        Continuous normalizing flow trained by conditional flow matching
        (:class:`~pymc_abi.networks.FlowMatching`): a free-form residual vector field,
        no invertibility constraint and a regression loss that is not a log-likelihood;
        sampling and densities solve an ODE (``steps`` network evaluations per draw,
        times 4 for ``"rk4"``; densities need ``D`` extra backward passes per
        evaluation).

    Successive transforms alternate the feature order, so every feature is transformed
    conditionally on the others. For ``D == 1`` coupling and autoregressive forms
    coincide: zuko builds element-wise transforms whose parameters are functions of the
    context only, so every name works with one parameter.

    Spline transforms act on :math:`[-5, 5]` and are the identity outside that
    interval: standardize the parameters (see :class:`~pymc_abi.networks.Standardize`)
    before using ``"nsf"`` or ``"nsf_ar"``.

    Parameters
    ----------
    name : str or InferenceNetwork
        One of the names above, or an already-built network, returned as is after
        checking its ``features`` and ``context_features``.
    features : int
        Number of parameters ``D``.
    context_features : int
        Number of context features ``C``.
    **options
        For the flows: ``transforms`` (int; 4 for ``"nsf"``/``"nsf_ar"``, 6 for
        ``"coupling"``/``"maf"``), ``hidden_features`` (sequence of int, default
        ``(128, 128)``), ``activation`` (module constructor, default
        :class:`torch.nn.ReLU`) and, for splines only, ``bins`` (int, default 8).
        For ``"flow_matching"``: the keyword arguments of
        :class:`~pymc_abi.networks.FlowMatching` (``hidden_features``, ``blocks``,
        ``frequencies``, ``layer_norm``, ``activation``, ``method``, ``steps``,
        ``divergence``); ``hidden_features`` may also be a sequence of int, as the
        flows take it, whose maximum is then the width.

    Returns
    -------
    InferenceNetwork

    Raises
    ------
    ValueError
        Unknown name, or an instance whose dimensions do not match.
    TypeError
        Unknown option, or options given along with an instance.

    Examples
    --------
    >>> net = build_inference_network("coupling", 3, 8, transforms=4, hidden_features=(64,))
    >>> net.sample(10, torch.randn(2, 8)).shape
    torch.Size([10, 2, 3])
    >>> build_inference_network(net, 3, 8) is net
    True
    >>> fm = build_inference_network("flow_matching", 3, 8, hidden_features=32, steps=20)
    >>> fm.sample(10, torch.randn(2, 8)).shape
    torch.Size([10, 2, 3])
    """
    if isinstance(name, InferenceNetwork):
        if options:
            raise TypeError(f"options {sorted(options)} cannot be applied to a built network")
        if (name.features, name.context_features) != (features, context_features):
            raise ValueError(
                f"inference network has features={name.features} and "
                f"context_features={name.context_features}, expected {features} and "
                f"{context_features}"
            )
        return name
    if name == "flow_matching":
        hidden = options.get("hidden_features")
        if hidden is not None and not isinstance(hidden, int):
            options["hidden_features"] = max(int(h) for h in hidden)
        allowed = set(inspect.signature(FlowMatching).parameters) - {
            "features",
            "context_features",
        }
        unknown = set(options) - allowed
        if unknown:
            raise TypeError(
                f"unknown options {sorted(unknown)} for {name!r}; allowed: {sorted(allowed)}"
            )
        return FlowMatching(features, context_features, **options)
    if name not in _FLOW_SPECS:
        raise ValueError(
            f"unknown inference network {name!r}; choose from "
            f"{sorted([*_FLOW_SPECS, 'flow_matching'])}"
        )
    spec = _FLOW_SPECS[name]
    allowed = {"transforms", "hidden_features", "activation"} | ({"bins"} if spec.spline else set())
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(
            f"unknown options {sorted(unknown)} for {name!r}; allowed: {sorted(allowed)}"
        )
    hidden_features: Sequence[int] = tuple(options.pop("hidden_features", (128, 128)))
    flow = spec.flow(
        features,
        context_features,
        transforms=options.pop("transforms", spec.transforms),
        passes=spec.passes,
        hidden_features=hidden_features,
        **options,
    )
    if spec.spline:
        # a location and scale per parameter from the context first: the splines then
        # shape a distribution near the origin, and the base's tails reach the
        # posterior's own scale instead of the splines' rarely trained outer bins
        locate = zuko.flows.MaskedAutoregressiveTransform(
            features,
            context_features,
            adjacency=torch.eye(features, dtype=torch.bool),
            hidden_features=hidden_features,
        )
        flow = zuko.flows.Flow([locate, *flow.transform.transforms], flow.base)
    return FlowNetwork(flow, features, context_features)
