r"""Flow matching posterior estimation (FMPE): a continuous normalizing flow whose vector
field is regressed, not fitted by maximum likelihood.

A vector field :math:`v_\phi(\theta, t, c)` transports the standard normal
:math:`p_0 = \mathcal{N}(0, I)` at :math:`t = 0` to :math:`q_\phi(\theta \mid c)` at
:math:`t = 1` along the ODE :math:`\mathrm{d}\theta_t / \mathrm{d}t = v_\phi(\theta_t, t,
c)`. It is trained by conditional flow matching (Lipman et al., 2023) on the linear,
rectified-flow path (Liu et al., 2023), which needs no ODE solve, and evaluated by
integrating the ODE with a fixed-step solver. FMPE for simulation-based inference is
due to Dax et al. (2023).

References
----------
Lipman, Chen, Ben-Hamu, Nickel and Le (2023). Flow matching for generative modeling.
ICLR. Liu, Gong and Liu (2023). Flow straight and fast: learning to generate and
transfer data with rectified flow. ICLR. Dax, Wildberger, Buchholz, Green, Macke and
Schölkopf (2023). Flow matching for scalable simulation-based inference. NeurIPS.
Chen, Rubanova, Bettencourt and Duvenaud (2018). Neural ordinary differential
equations. NeurIPS. Grathwohl, Chen, Bettencourt, Sutskever and Duvenaud (2019).
FFJORD: free-form continuous dynamics for scalable reversible generative models. ICLR.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .base import InferenceNetwork

__all__ = ["FlowMatching", "VectorField"]

# fixed-step ODE solvers: y(t + h) from y(t) for dy/dt = f(t, y)
_Dynamics = Callable[[float, Tensor], Tensor]


def _euler(f: _Dynamics, t: float, y: Tensor, h: float) -> Tensor:
    return y + h * f(t, y)


def _midpoint(f: _Dynamics, t: float, y: Tensor, h: float) -> Tensor:
    k1 = f(t, y)
    return y + h * f(t + h / 2, y + (h / 2) * k1)


def _rk4(f: _Dynamics, t: float, y: Tensor, h: float) -> Tensor:
    k1 = f(t, y)
    k2 = f(t + h / 2, y + (h / 2) * k1)
    k3 = f(t + h / 2, y + (h / 2) * k2)
    k4 = f(t + h, y + h * k3)
    return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


_SOLVERS: dict[str, Callable[[_Dynamics, float, Tensor, float], Tensor]] = {
    "euler": _euler,
    "midpoint": _midpoint,
    "rk4": _rk4,
}
_DIVERGENCES = ("exact", "hutchinson")
# an ODE solver setting: (method, steps)
_Solver = tuple[str, int]


class _ResidualBlock(nn.Module):
    r""":math:`h + W_2\, a(W_1\, a(\mathrm{LN}(h)) + U e)` with conditioning :math:`e`."""

    def __init__(
        self,
        hidden_features: int,
        condition_features: int,
        layer_norm: bool,
        activation: Callable[[], nn.Module],
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_features) if layer_norm else nn.Identity()
        self.linear1 = nn.Linear(hidden_features, hidden_features)
        self.condition = nn.Linear(condition_features, hidden_features)
        self.linear2 = nn.Linear(hidden_features, hidden_features)
        self.activation = activation()

    def forward(self, h: Tensor, condition: Tensor) -> Tensor:
        r = self.linear1(self.activation(self.norm(h))) + self.condition(condition)
        return h + self.linear2(self.activation(r))


class VectorField(nn.Module):
    r"""Residual MLP :math:`v_\phi(\theta, t, c)` with Fourier features of time.

    Time enters through the embedding

    .. math:: e(t) = \big(\cos(\pi k t), \sin(\pi k t)\big)_{k = 1, \dots, K},

    smooth on :math:`[0, 1]` (the highest frequency has period :math:`2 / K`, which a
    fixed-step solver with tens of steps resolves). The input layer maps
    :math:`(\theta, e(t), c)` to ``hidden_features`` units; each residual block adds
    :math:`W_2\, a(W_1\, a(\mathrm{LN}(h)) + U (e(t), c))`, so the time and the context
    condition every block; the output layer maps :math:`a(\mathrm{LN}(h))` to
    :math:`\mathbb{R}^D`.

    Parameters
    ----------
    features : int
        Number of parameters ``D``.
    context_features : int
        Number of context features ``C``.
    hidden_features : int, default 128
        Width of the residual stream.
    blocks : int, default 3
        Number of residual blocks (0 gives a one-hidden-layer MLP).
    frequencies : int, default 4
        Number ``K`` of Fourier frequencies of the time embedding (``2K`` features).
    layer_norm : bool, default True
        Layer-normalize the residual stream before each block and the output layer.
    activation : callable, default torch.nn.SiLU
        Activation constructor.

    Examples
    --------
    >>> field = VectorField(2, 3, hidden_features=32, blocks=2)
    >>> field(torch.randn(5, 2), torch.rand(5), torch.randn(5, 3)).shape
    torch.Size([5, 2])
    """

    def __init__(
        self,
        features: int,
        context_features: int,
        hidden_features: int = 128,
        blocks: int = 3,
        frequencies: int = 4,
        layer_norm: bool = True,
        activation: Callable[[], nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        if hidden_features < 1 or blocks < 0 or frequencies < 1:
            raise ValueError(
                "need hidden_features >= 1, blocks >= 0 and frequencies >= 1, got "
                f"{hidden_features}, {blocks} and {frequencies}"
            )
        self.register_buffer(
            "omega", math.pi * torch.arange(1, frequencies + 1, dtype=torch.float32)
        )
        condition = 2 * frequencies + context_features
        self.input = nn.Linear(features + condition, hidden_features)
        self.blocks = nn.ModuleList(
            _ResidualBlock(hidden_features, condition, layer_norm, activation)
            for _ in range(blocks)
        )
        self.norm = nn.LayerNorm(hidden_features) if layer_norm else nn.Identity()
        self.activation = activation()
        self.output = nn.Linear(hidden_features, features)

    def embed_time(self, t: Tensor) -> Tensor:
        """Fourier features ``(B, 2K)`` of times ``t`` of shape ``(B,)``."""
        angle = t.unsqueeze(-1) * self.omega.to(t.dtype)
        return torch.cat((angle.cos(), angle.sin()), dim=-1)

    def forward(self, theta: Tensor, t: Tensor, context: Tensor) -> Tensor:
        """Velocities ``(B, D)`` at ``theta (B, D)``, times ``t (B,)``, ``context (B, C)``."""
        condition = torch.cat((self.embed_time(t), context), dim=-1)
        h = self.input(torch.cat((theta, condition), dim=-1))
        for block in self.blocks:
            h = block(h, condition)
        return self.output(self.activation(self.norm(h)))


class FlowMatching(InferenceNetwork):
    r"""Continuous normalizing flow trained by conditional flow matching.

    **Model.** With :math:`\theta_0 \sim \mathcal{N}(0, I)` and the ODE
    :math:`\mathrm{d}\theta_t / \mathrm{d}t = v_\phi(\theta_t, t, c)`, the density
    :math:`q_\phi(\theta \mid c)` is the law of :math:`\theta_1`. Sampling integrates the
    ODE from :math:`t = 0` to :math:`t = 1` with a fixed-step solver (``method``,
    ``steps``): ``"rk4"`` (4 network evaluations per step, accurate, the default),
    ``"midpoint"`` (2) or ``"euler"`` (1, fast, first-order accurate).

    **Loss.** Conditional flow matching on the linear (rectified-flow, optimal-transport)
    path: for a pair :math:`(\theta_1, c) = (\theta, c)` from the simulations, a base draw
    :math:`\theta_0 \sim \mathcal{N}(0, I)` and :math:`t \sim \mathcal{U}(0, 1)`,

    .. math:: \theta_t = (1 - t)\, \theta_0 + t\, \theta_1, \qquad
        u = \frac{\mathrm{d}\theta_t}{\mathrm{d}t} = \theta_1 - \theta_0 .

    The marginal field :math:`u_t(\theta \mid c) = \mathbb{E}[\theta_1 - \theta_0 \mid
    \theta_t = \theta, c]` transports :math:`\mathcal{N}(0, I)` to the true posterior
    :math:`p(\theta \mid c)` (its flow reproduces the marginals of :math:`\theta_t`). It
    is not tractable, but it is the regression function of :math:`u` on
    :math:`(\theta_t, t, c)`, so

    .. math:: \mathcal{L}(\phi) = \mathbb{E}_{t, \theta_0, (\theta_1, c)}
        \big\| v_\phi(\theta_t, t, c) - (\theta_1 - \theta_0) \big\|^2
        = \mathbb{E} \big\| v_\phi(\theta_t, t, c) - u_t(\theta_t \mid c) \big\|^2
        + \mathbb{E} \big\| u_t(\theta_t \mid c) - (\theta_1 - \theta_0) \big\|^2 ,

    (the cross term vanishes by the tower property) and the second term does not depend
    on :math:`\phi`: minimizing the tractable loss regresses :math:`v_\phi` on the
    marginal field. :meth:`loss` estimates :math:`\mathcal{L}` with one :math:`(t,
    \theta_0)` per pair; no ODE is solved during training.

    The loss is **not a log-likelihood**: its minimum is the conditional variance of
    :math:`\theta_1 - \theta_0`, not an entropy, and it is a noisy (random :math:`t`,
    :math:`\theta_0`) estimate. Validation losses of flow matching are therefore not
    comparable with the negative log-likelihoods of the normalizing flows of
    :func:`~pymc_abi.networks.build_inference_network`; compare :meth:`log_prob` on
    held-out pairs instead.

    **Density.** By the continuity equation :math:`\partial_t p_t + \nabla \cdot (p_t
    v) = 0`, along a trajectory

    .. math:: \frac{\mathrm{d}}{\mathrm{d}t} \log p_t(\theta_t)
        = -\nabla_\theta \cdot v_\phi(\theta_t, t, c),
        \qquad
        \log q_\phi(\theta_1 \mid c) = \log \mathcal{N}(\theta_0; 0, I)
        - \int_0^1 \nabla_\theta \cdot v_\phi(\theta_t, t, c)\, \mathrm{d}t .

    :meth:`log_prob` integrates :math:`(\theta_t, \int \nabla \cdot v)` backwards from
    :math:`t = 1` to :math:`t = 0`; :meth:`sample_and_log_prob` integrates
    :math:`(\theta_t, \log p_t(\theta_t))` forwards. Both are exact up to the solver's
    discretization error, and they agree up to it (they integrate in opposite
    directions). The divergence is computed by autograd: ``"exact"`` takes one backward
    pass per parameter (``D`` per network evaluation), ``"hutchinson"`` one in total,
    estimating :math:`\nabla \cdot v = \mathbb{E}[\varepsilon^\top (\partial v / \partial
    \theta)\, \varepsilon]` with one Rademacher probe :math:`\varepsilon` per trajectory
    (Grathwohl et al., 2019): unbiased for the log-density but noisy, for large ``D``
    only. Density evaluation enables autograd locally, so it works under
    :func:`torch.no_grad` (then keeping no graph across steps, bounded memory) and
    :func:`torch.inference_mode`; with gradients enabled, :meth:`log_prob` is
    differentiable with respect to the network parameters (backpropagating through the
    solver, memory linear in ``steps``).

    Parameters
    ----------
    features : int
        Number of parameters ``D``.
    context_features : int
        Number of context features ``C``.
    hidden_features : int, default 128
        Width of the vector field network (see :class:`VectorField`).
    blocks : int, default 3
        Residual blocks of the vector field network.
    frequencies : int, default 4
        Fourier frequencies of the time embedding.
    layer_norm : bool, default True
        Layer normalization in the vector field network.
    activation : callable, default torch.nn.SiLU
        Activation constructor.
    method : {"rk4", "midpoint", "euler"}, default "rk4"
        ODE solver. Settable as an attribute, or per call of :meth:`sample`,
        :meth:`sample_and_log_prob` and :meth:`log_prob`.
    steps : int, default 50
        Number of solver steps on :math:`[0, 1]`. Settable likewise.
    divergence : {"exact", "hutchinson"}, default "exact"
        How :meth:`log_prob` and :meth:`sample_and_log_prob` compute the divergence.

    Examples
    --------
    >>> net = FlowMatching(2, 3, hidden_features=32, blocks=2)
    >>> context = torch.randn(4, 3)
    >>> net.loss(torch.randn(4, 2), context).shape
    torch.Size([])
    >>> net.sample(10, context).shape
    torch.Size([10, 4, 2])
    >>> net.sample(10, context, method="euler", steps=20).shape
    torch.Size([10, 4, 2])
    >>> theta, log_q = net.sample_and_log_prob(5, context)
    >>> torch.allclose(net.log_prob(theta[0], context), log_q[0], atol=1e-3)
    True
    """

    def __init__(
        self,
        features: int,
        context_features: int,
        hidden_features: int = 128,
        blocks: int = 3,
        frequencies: int = 4,
        layer_norm: bool = True,
        activation: Callable[[], nn.Module] = nn.SiLU,
        method: str = "rk4",
        steps: int = 50,
        divergence: str = "exact",
    ) -> None:
        super().__init__(features, context_features)
        self.field = VectorField(
            features,
            context_features,
            hidden_features=hidden_features,
            blocks=blocks,
            frequencies=frequencies,
            layer_norm=layer_norm,
            activation=activation,
        )
        self.method, self.steps = self._check_solver(method, steps)
        if divergence not in _DIVERGENCES:
            raise ValueError(f"divergence must be one of {_DIVERGENCES}, got {divergence!r}")
        self.divergence = divergence

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, method={self.method!r}, steps={self.steps}, "
            f"divergence={self.divergence!r}"
        )

    # ------------------------------------------------------------------ public API
    def loss(self, theta: Tensor, context: Tensor) -> Tensor:
        r"""Conditional flow matching loss on the linear path (see the class docstring).

        .. math:: \ell(\phi) = \frac{1}{B} \sum_{i=1}^B \big\| v_\phi\big((1 - t_i)
            \theta_{0,i} + t_i \theta_i,\ t_i,\ c_i\big) - (\theta_i - \theta_{0,i})
            \big\|^2, \quad t_i \sim \mathcal{U}(0, 1),\ \theta_{0,i} \sim
            \mathcal{N}(0, I).

        Random (a fresh :math:`t_i, \theta_{0,i}` per call) and not a negative
        log-likelihood.

        Parameters
        ----------
        theta : Tensor
            Parameters :math:`\theta_1`, shape ``(B, D)``.
        context : Tensor
            Contexts, shape ``(B, C)``.

        Returns
        -------
        Tensor
            Scalar loss.

        Examples
        --------
        >>> net = FlowMatching(2, 3, hidden_features=16, blocks=1)
        >>> net.loss(torch.randn(8, 2), torch.randn(8, 3)).shape
        torch.Size([])
        """
        self._check_pairs(theta, context)
        theta_0 = torch.randn_like(theta)
        t = torch.rand(theta.shape[0], dtype=theta.dtype, device=theta.device)
        theta_t = (1 - t[:, None]) * theta_0 + t[:, None] * theta
        velocity = self.field(theta_t, t, context)
        return (velocity - (theta - theta_0)).square().sum(-1).mean()

    def log_prob(
        self,
        theta: Tensor,
        context: Tensor,
        *,
        method: str | None = None,
        steps: int | None = None,
    ) -> Tensor:
        """Log-density of each pair by backward ODE integration.

        See :meth:`InferenceNetwork.log_prob`; ``method`` and ``steps`` override the
        solver for this call.

        Examples
        --------
        >>> net = FlowMatching(1, 2, hidden_features=16, blocks=1)
        >>> net.log_prob(torch.randn(4, 1), torch.randn(4, 2), steps=10).shape
        torch.Size([4])
        """
        solver = self._solver(method, steps)
        self._check_pairs(theta, context)
        return self._log_prob(theta, context, solver)

    def sample(
        self,
        n: int,
        context: Tensor,
        *,
        method: str | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw ``n`` samples per context by forward ODE integration.

        See :meth:`InferenceNetwork.sample`; ``method`` and ``steps`` override the
        solver for this call, ``generator`` draws the base noise.

        Examples
        --------
        >>> net = FlowMatching(2, 3, hidden_features=16, blocks=1)
        >>> net.sample(100, torch.randn(4, 3), method="euler", steps=10).shape
        torch.Size([100, 4, 2])
        """
        solver = self._solver(method, steps)
        n = self._check_n(n)
        self._check_context(context)
        with torch.no_grad():
            return self._sample(n, context, generator, solver)

    def sample_and_log_prob(
        self,
        n: int,
        context: Tensor,
        *,
        method: str | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw ``n`` samples per context with their log-densities, integrated jointly.

        See :meth:`InferenceNetwork.sample_and_log_prob`; ``method`` and ``steps``
        override the solver for this call, ``generator`` draws the base noise.

        Examples
        --------
        >>> net = FlowMatching(2, 3, hidden_features=16, blocks=1)
        >>> theta, log_q = net.sample_and_log_prob(100, torch.randn(4, 3), steps=10)
        >>> theta.shape, log_q.shape
        (torch.Size([100, 4, 2]), torch.Size([100, 4]))
        """
        solver = self._solver(method, steps)
        n = self._check_n(n)
        self._check_context(context)
        with torch.no_grad():
            return self._sample_and_log_prob(n, context, generator, solver)

    # ------------------------------------------------------------------ hooks
    # (``solver=None`` integrates with the ``method`` and ``steps`` attributes)
    def _log_prob(self, theta: Tensor, context: Tensor, solver: _Solver | None = None) -> Tensor:
        # backwards from t = 1, state (theta_t, l_t) with l_1 = 0 and dl/dt = -div v:
        # l_0 = int_0^1 div v dt, so log q(theta) = log N(theta_0) - l_0
        differentiable = torch.is_grad_enabled()
        dynamics = self._dynamics(context, self._probe(theta), differentiable)
        state = torch.cat((theta, theta.new_zeros(theta.shape[0], 1)), dim=-1)
        state = self._integrate(dynamics, state, 1.0, 0.0, solver)
        theta_0, integral = state[:, :-1], state[:, -1]
        return self._base_log_prob(theta_0) - integral

    def _sample(
        self,
        n: int,
        context: Tensor,
        generator: torch.Generator | None,
        solver: _Solver | None = None,
    ) -> Tensor:
        batch = context.shape[0]
        context = context.repeat(n, 1)
        theta_0 = self._noise(context, generator)

        def velocity(t: float, theta: Tensor) -> Tensor:
            return self.field(theta, theta.new_full(theta.shape[:1], t), context)

        theta = self._integrate(velocity, theta_0, 0.0, 1.0, solver)
        return theta.reshape(n, batch, self.features)

    def _sample_and_log_prob(
        self,
        n: int,
        context: Tensor,
        generator: torch.Generator | None,
        solver: _Solver | None = None,
    ) -> tuple[Tensor, Tensor]:
        # forwards from t = 0, state (theta_t, log p_t(theta_t)), d log p_t / dt = -div v
        batch = context.shape[0]
        context = context.repeat(n, 1)
        theta_0 = self._noise(context, generator)
        dynamics = self._dynamics(context, self._probe(theta_0, generator), differentiable=False)
        state = torch.cat((theta_0, self._base_log_prob(theta_0)[:, None]), dim=-1)
        state = self._integrate(dynamics, state, 0.0, 1.0, solver)
        theta, log_prob = state[:, :-1], state[:, -1]
        return theta.reshape(n, batch, self.features), log_prob.reshape(n, batch)

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _check_solver(method: str, steps: int) -> _Solver:
        if method not in _SOLVERS:
            raise ValueError(f"method must be one of {sorted(_SOLVERS)}, got {method!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        return method, steps

    def _solver(self, method: str | None, steps: int | None) -> _Solver:
        """The checked solver of one call: ``method`` and ``steps``, or the attributes where
        ``None`` (the network itself is not changed, so calls with different solvers can
        run at once)."""
        return self._check_solver(
            self.method if method is None else method, self.steps if steps is None else steps
        )

    def _noise(self, context: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.randn(
            context.shape[0],
            self.features,
            dtype=context.dtype,
            device=context.device,
            generator=generator,
        )

    def _integrate(
        self, f: _Dynamics, state: Tensor, t0: float, t1: float, solver: _Solver | None
    ) -> Tensor:
        method, steps = self._solver(None, None) if solver is None else solver
        step, h = _SOLVERS[method], (t1 - t0) / steps
        for k in range(steps):
            state = step(f, t0 + k * h, state, h)
        return state

    def _base_log_prob(self, theta_0: Tensor) -> Tensor:
        return -0.5 * theta_0.square().sum(-1) - 0.5 * self.features * math.log(2 * math.pi)

    def _probe(self, like: Tensor, generator: torch.Generator | None = None) -> Tensor | None:
        if self.divergence == "exact":
            return None
        # Rademacher probe, fixed along each trajectory
        probe = torch.randint(
            0, 2, like.shape, generator=generator, dtype=like.dtype, device=like.device
        )
        return probe.mul_(2).sub_(1)

    def _dynamics(self, context: Tensor, probe: Tensor | None, differentiable: bool) -> _Dynamics:
        r"""Dynamics of the augmented state :math:`(\theta_t, l_t)`: :math:`(v, -\nabla
        \cdot v)`."""
        if not differentiable:
            context = context.detach()

        def f(t: float, state: Tensor) -> Tensor:
            velocity, divergence = self._velocity_and_divergence(
                state[:, :-1], t, context, probe, differentiable
            )
            return torch.cat((velocity, -divergence[:, None]), dim=-1)

        return f

    def _velocity_and_divergence(
        self,
        theta: Tensor,
        t: float,
        context: Tensor,
        probe: Tensor | None,
        differentiable: bool,
    ) -> tuple[Tensor, Tensor]:
        # autograd is needed even under no_grad / inference_mode; inference tensors
        # cannot be saved for backward, so they are cloned into normal tensors
        with torch.inference_mode(False), torch.enable_grad():
            if not (differentiable and theta.requires_grad):
                theta = theta.clone() if theta.is_inference() else theta.detach()
                theta.requires_grad_(True)
            if context.is_inference():
                context = context.clone()
            velocity = self.field(theta, theta.new_full(theta.shape[:1], t), context)
            if probe is None:
                divergence = theta.new_zeros(theta.shape[0])
                for i in range(self.features):
                    (grad,) = torch.autograd.grad(
                        velocity[:, i].sum(),
                        theta,
                        create_graph=differentiable,
                        retain_graph=differentiable or i < self.features - 1,
                    )
                    divergence = divergence + grad[:, i]
            else:
                (grad,) = torch.autograd.grad(
                    (velocity * probe).sum(), theta, create_graph=differentiable
                )
                divergence = (grad * probe).sum(-1)
        if not differentiable:
            velocity, divergence = velocity.detach(), divergence.detach()
        return velocity, divergence
