r"""The interface shared by every inference network: :class:`InferenceNetwork`.

Its own module so that the networks (:mod:`.inference`, :mod:`.flow_matching`) import it
and :func:`~pymc_abi.networks.build_inference_network` imports them, without a cycle.
"""

from __future__ import annotations

import abc
import operator

import torch
from torch import Tensor, nn

__all__ = ["InferenceNetwork"]


class InferenceNetwork(nn.Module, abc.ABC):
    r"""Base class of conditional density estimators :math:`q_\phi(\theta \mid c)`.

    Parameters are ``theta`` of shape ``(B, D)`` and contexts ``context`` of shape
    ``(B, C)``, with ``D = features`` and ``C = context_features``. Samples follow the
    :mod:`torch.distributions` convention: sample shape first, ``(n, B, D)``.

    The public methods validate shapes and set the autograd mode; subclasses implement
    the hooks :meth:`_log_prob` and :meth:`_sample` (and optionally
    :meth:`_sample_and_log_prob`, which defaults to sampling then evaluating the
    density). :meth:`sample` and :meth:`sample_and_log_prob` always run under
    :func:`torch.no_grad`. :meth:`loss` defaults to the negative log-likelihood and may
    be overridden by estimators trained otherwise (e.g. flow matching).

    Parameters
    ----------
    features : int
        Number of parameters ``D``.
    context_features : int
        Number of context features ``C``.

    Examples
    --------
    >>> class DiagGaussian(InferenceNetwork):
    ...     def __init__(self, features, context_features):
    ...         super().__init__(features, context_features)
    ...         self.linear = nn.Linear(context_features, 2 * features)
    ...
    ...     def _distribution(self, context):
    ...         loc, log_scale = self.linear(context).chunk(2, dim=-1)
    ...         return torch.distributions.Normal(loc, log_scale.exp())
    ...
    ...     def _log_prob(self, theta, context):
    ...         return self._distribution(context).log_prob(theta).sum(-1)
    ...
    ...     def _sample(self, n, context, generator):
    ...         loc, log_scale = self.linear(context).chunk(2, dim=-1)
    ...         eps = torch.randn((n, *loc.shape), generator=generator)
    ...         return loc + log_scale.exp() * eps
    >>> net = DiagGaussian(2, 3)
    >>> net.sample(10, torch.randn(4, 3)).shape
    torch.Size([10, 4, 2])
    """

    def __init__(self, features: int, context_features: int) -> None:
        super().__init__()
        if features < 1 or context_features < 1:
            raise ValueError(
                f"features and context_features must be >= 1, got {features} and {context_features}"
            )
        self.features = int(features)
        self.context_features = int(context_features)

    def extra_repr(self) -> str:
        return f"features={self.features}, context_features={self.context_features}"

    def log_prob(self, theta: Tensor, context: Tensor) -> Tensor:
        r"""Log-density :math:`\log q_\phi(\theta_i \mid c_i)` of each pair.

        Parameters
        ----------
        theta : Tensor
            Parameters, shape ``(B, D)``.
        context : Tensor
            Contexts, shape ``(B, C)``.

        Returns
        -------
        Tensor
            Log-densities, shape ``(B,)``. Differentiable with respect to the network
            parameters.

        Examples
        --------
        >>> from pymc_abi.networks import build_inference_network
        >>> net = build_inference_network("nsf", 2, 3)
        >>> net.log_prob(torch.randn(4, 2), torch.randn(4, 3)).shape
        torch.Size([4])
        """
        self._check_pairs(theta, context)
        return self._log_prob(theta, context)

    def sample(
        self, n: int, context: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""Draw ``n`` samples :math:`\theta \sim q_\phi(\theta \mid c_i)` per context.

        Runs under :func:`torch.no_grad`: the result never requires grad.

        Parameters
        ----------
        n : int
            Number of samples per context.
        context : Tensor
            Contexts, shape ``(B, C)``.
        generator : torch.Generator, optional
            The source of randomness (on the context's device); ``None`` uses torch's
            global generator. With a generator of its own, each call is reproducible and
            safe to run from several threads at once.

        Returns
        -------
        Tensor
            Samples, shape ``(n, B, D)``.

        Examples
        --------
        >>> from pymc_abi.networks import build_inference_network
        >>> net = build_inference_network("nsf", 2, 3)
        >>> net.sample(100, torch.randn(4, 3)).shape
        torch.Size([100, 4, 2])
        """
        n = self._check_n(n)
        self._check_context(context)
        with torch.no_grad():
            return self._sample(n, context, generator)

    def sample_and_log_prob(
        self, n: int, context: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""Draw ``n`` samples per context together with their log-densities.

        Runs under :func:`torch.no_grad`: the results never require grad.

        Parameters
        ----------
        n : int
            Number of samples per context.
        context : Tensor
            Contexts, shape ``(B, C)``.
        generator : torch.Generator, optional
            As in :meth:`sample`.

        Returns
        -------
        theta : Tensor
            Samples, shape ``(n, B, D)``.
        log_prob : Tensor
            :math:`\log q_\phi(\theta \mid c)` of each sample, shape ``(n, B)``.

        Examples
        --------
        >>> from pymc_abi.networks import build_inference_network
        >>> net = build_inference_network("nsf", 2, 3)
        >>> theta, log_prob = net.sample_and_log_prob(100, torch.randn(4, 3))
        >>> theta.shape, log_prob.shape
        (torch.Size([100, 4, 2]), torch.Size([100, 4]))
        """
        n = self._check_n(n)
        self._check_context(context)
        with torch.no_grad():
            return self._sample_and_log_prob(n, context, generator)

    def loss(self, theta: Tensor, context: Tensor) -> Tensor:
        r"""Neural posterior estimation (NPE) loss: the mean negative log-likelihood.

        With :math:`(\theta, x) \sim p(\theta) p(x \mid \theta)` and :math:`c = h(x)`,

        .. math::

            \mathbb{E}_{p(x)} \mathrm{KL}\big(p(\theta \mid x) \,\|\, q_\phi(\theta \mid x)\big)
            = \mathbb{E}_{p(\theta, x)} \log p(\theta \mid x)
              - \mathbb{E}_{p(\theta, x)} \log q_\phi(\theta \mid x).

        The first term does not depend on :math:`\phi`, so minimizing the expected KL
        divergence is minimizing :math:`-\mathbb{E}_{p(\theta, x)} \log q_\phi(\theta
        \mid x)`, estimated on a batch of simulations by

        .. math:: \ell(\phi) = -\frac{1}{B} \sum_{i=1}^B \log q_\phi(\theta_i \mid c_i).

        Subclasses trained with another objective override this method.

        Parameters
        ----------
        theta : Tensor
            Parameters, shape ``(B, D)``.
        context : Tensor
            Contexts, shape ``(B, C)``.

        Returns
        -------
        Tensor
            Scalar loss.

        Examples
        --------
        >>> from pymc_abi.networks import build_inference_network
        >>> net = build_inference_network("nsf", 2, 3)
        >>> net.loss(torch.randn(4, 2), torch.randn(4, 3)).shape
        torch.Size([])
        """
        return -self.log_prob(theta, context).mean()

    @abc.abstractmethod
    def _log_prob(self, theta: Tensor, context: Tensor) -> Tensor:
        """Log-densities ``(B,)`` of validated ``theta (B, D)`` given ``context (B, C)``."""

    @abc.abstractmethod
    def _sample(self, n: int, context: Tensor, generator: torch.Generator | None) -> Tensor:
        """Samples ``(n, B, D)`` given a validated ``context (B, C)``; called under no_grad.

        All randomness comes from ``generator`` (torch's global one when ``None``)."""

    def _sample_and_log_prob(
        self, n: int, context: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """Samples ``(n, B, D)`` and log-densities ``(n, B)``; called under no_grad."""
        theta = self._sample(n, context, generator)
        batch = context.shape[0]
        log_prob = self._log_prob(theta.reshape(n * batch, self.features), context.repeat(n, 1))
        return theta, log_prob.reshape(n, batch)

    def _check_pairs(self, theta: Tensor, context: Tensor) -> None:
        self._check_context(context)
        if theta.ndim != 2 or theta.shape[1] != self.features:
            raise ValueError(
                f"theta must have shape (B, {self.features}), got {tuple(theta.shape)}"
            )
        if theta.shape[0] != context.shape[0]:
            raise ValueError(
                f"theta and context batch sizes differ: {theta.shape[0]} != {context.shape[0]}"
            )

    def _check_context(self, context: Tensor) -> None:
        if context.ndim != 2 or context.shape[1] != self.context_features:
            raise ValueError(
                f"context must have shape (B, {self.context_features}), got {tuple(context.shape)}"
            )

    @staticmethod
    def _check_n(n: int) -> int:
        n = operator.index(n)
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        return n
