r"""The refinement tier of the per-dataset ladder: a Laplace fit on the model's exact density.

When importance sampling from the flow is unreliable (Pareto :math:`\hat k > 0.7`), the
flow missed this dataset's posterior: most often, on informative data, because the
posterior is far narrower than the flow resolves. The model's exact log density still
knows the answer. From the flow's best draw, L-BFGS finds the mode :math:`m` of
:math:`\log p(z, y)` in the unconstrained space, and the negative Hessian at the mode

.. math:: A_{ij} = -\frac{\partial^2 \log p(z, y)}{\partial z_i \partial z_j}\Big|_{z=m}

is taken by central differences of the exact gradient (:math:`2D` gradient evaluations in
one batched call; the steps are scaled to the posterior's own widths, found in a first
pass). With :math:`A = L L^\top`, draws :math:`z = m + L^{-\top} u` have covariance
:math:`A^{-1}` for standard :math:`u`.

The proposal is a *defensive mixture* (Hesterberg, 1995) of the flow, the Laplace normal
and a Student-t of the same centre and scale:

.. math:: q(z) = \alpha_f\, q_{\text{flow}}(z \mid y) + \alpha_n\, \mathcal N(z; m, A^{-1})
          + \alpha_t\, t_\nu(z; m, A^{-1}),

so that the weights :math:`p / q` are bounded by :math:`p / (\alpha_n \mathcal N)` where the
posterior is nearly normal, by :math:`p / (\alpha_t\, t_\nu)` where its tails are heavier,
and where the Laplace fit is poor the flow's share keeps the proposal no worse than the flow
alone in the regions the flow covers. The mixture is then importance-sampled like the flow
(:mod:`pymc_abi.inference.importance`): its Pareto :math:`\hat k` says whether this tier answered.

This module speaks numpy (and scipy's L-BFGS) only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special
from scipy.linalg import solve_triangular

__all__ = ["Laplace", "MixtureProposal", "laplace_fit"]

#: shares of the flow, the Laplace normal and the Laplace Student-t in the mixture
SHARES = (0.2, 0.5, 0.3)
#: degrees of freedom of the Student-t component
NU = 4.0

ValueAndGrad = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Laplace:
    """A normal approximation :math:`\\mathcal N(m, A^{-1})` at the density's mode.

    Attributes
    ----------
    mean : ndarray, shape (D,)
        The mode :math:`m` of the log density.
    chol : ndarray, shape (D, D)
        Lower Cholesky factor :math:`L` of the negative Hessian :math:`A = L L^\\top`.
    log_p : float
        The log density at the mode.
    evaluations : int
        Gradient evaluations spent (optimizer and Hessian).
    """

    mean: np.ndarray
    chol: np.ndarray
    log_p: float
    evaluations: int

    @property
    def sd(self) -> np.ndarray:
        """Marginal standard deviations :math:`\\sqrt{\\operatorname{diag} A^{-1}}`."""
        return _marginal_sd(self.chol)

    def _to_z(self, u: np.ndarray) -> np.ndarray:
        # z = m + L^{-T} u, one triangular solve for all rows
        return self.mean + solve_triangular(self.chol, u.T, lower=True, trans="T").T

    def _to_u(self, z: np.ndarray) -> np.ndarray:
        return (z - self.mean) @ self.chol  # u = L^T (z - m), row-wise

    def _log_det(self) -> float:
        return float(np.sum(np.log(np.diag(self.chol))))

    def normal_log_prob(self, z: np.ndarray) -> np.ndarray:
        """Log density of :math:`\\mathcal N(m, A^{-1})` at rows ``z`` (n, D)."""
        u = self._to_u(z)
        d = len(self.mean)
        return -0.5 * np.sum(u**2, axis=1) - 0.5 * d * np.log(2 * np.pi) + self._log_det()

    def t_log_prob(self, z: np.ndarray, nu: float = NU) -> np.ndarray:
        """Log density of the multivariate Student-t :math:`t_\\nu(m, A^{-1})`."""
        u = self._to_u(z)
        d = len(self.mean)
        const = special.gammaln((nu + d) / 2) - special.gammaln(nu / 2) - d / 2 * np.log(nu * np.pi)
        return const - (nu + d) / 2 * np.log1p(np.sum(u**2, axis=1) / nu) + self._log_det()

    def sample_normal(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self._to_z(rng.standard_normal((n, len(self.mean))))

    def sample_t(self, n: int, rng: np.random.Generator, nu: float = NU) -> np.ndarray:
        g = rng.standard_normal((n, len(self.mean)))
        return self._to_z(g / np.sqrt(rng.chisquare(nu, size=(n, 1)) / nu))


def laplace_fit(
    value_and_grad: ValueAndGrad, start: np.ndarray, *, max_iter: int = 500
) -> Laplace | str:
    """Mode and negative Hessian of a log density, from one start.

    Parameters
    ----------
    value_and_grad : callable
        ``value_and_grad(z)`` for rows ``z`` (n, D) returns the log density (n,) and its
        gradient (n, D).
    start : ndarray, shape (D,)
        Where the optimizer starts (the flow's best draw).
    max_iter : int, default 500
        L-BFGS iterations at most.

    Returns
    -------
    Laplace or str
        The fit, or why there is none (a mode the optimizer could not find, a Hessian that
        is not positive definite).
    """
    start = np.asarray(start, dtype=float)
    calls = 0

    def objective(x):
        nonlocal calls
        calls += 1
        value, grad = value_and_grad(x[None])
        if not np.isfinite(value[0]) or not np.all(np.isfinite(grad)):
            return np.inf, np.zeros_like(x)
        return -float(value[0]), -grad[0]

    found = optimize.minimize(
        objective, start, jac=True, method="L-BFGS-B", options={"maxiter": max_iter}
    )
    mode = found.x
    log_p = -float(found.fun)
    if not np.isfinite(log_p):
        return "the optimizer found no point of finite density"
    # first pass: steps from L-BFGS's own curvature estimate; second: from the first
    # Hessian's widths, so that each step is a fixed fraction of the posterior's width
    scale = np.sqrt(np.clip(np.diag(found.hess_inv.todense()), 1e-300, None))
    hessian = None
    for _ in range(2):
        hessian = _hessian(value_and_grad, mode, 1e-3 * scale)
        calls += 2
        if hessian is None:
            return "the density's gradient is not finite near its mode"
        try:
            chol = np.linalg.cholesky(hessian)
        except np.linalg.LinAlgError:
            return "the density's Hessian at its mode is not positive definite (no mode?)"
        scale = _marginal_sd(chol)
    return Laplace(mean=mode, chol=chol, log_p=log_p, evaluations=calls)


def _marginal_sd(chol: np.ndarray) -> np.ndarray:
    """``sqrt(diag(A^{-1}))`` for ``A = L L^T``: the column norms of ``L^{-1}``."""
    inv = solve_triangular(chol, np.eye(len(chol)), lower=True)
    return np.sqrt(np.sum(inv**2, axis=0))


def _hessian(value_and_grad: ValueAndGrad, mode: np.ndarray, step: np.ndarray):
    """Negative Hessian by central differences of the gradient, symmetrized."""
    d = len(mode)
    offsets = np.diag(step)
    points = np.concatenate([mode + offsets, mode - offsets])
    _, grad = value_and_grad(points)
    if not np.all(np.isfinite(grad)):
        return None
    rows = -(grad[:d] - grad[d:]) / (2 * step[:, None])
    return 0.5 * (rows + rows.T)


@dataclass(frozen=True)
class MixtureProposal:
    """The defensive mixture of the flow and a Laplace fit (see the module docstring).

    Parameters
    ----------
    laplace : Laplace
    flow_propose : callable
        ``flow_propose(n, seed)`` returns ``n`` flow draws (n, D) and their flow log
        densities (n,).
    flow_log_q : callable
        ``flow_log_q(z)`` returns the flow's log density at rows ``z``.
    shares : tuple of float
        Shares of the flow, the normal and the Student-t.
    """

    laplace: Laplace
    flow_propose: Callable[[int, int], tuple[np.ndarray, np.ndarray]]
    flow_log_q: Callable[[np.ndarray], np.ndarray]
    shares: tuple[float, float, float] = SHARES

    def log_prob(self, z: np.ndarray, flow_log_q: np.ndarray | None = None) -> np.ndarray:
        """The mixture's log density at rows ``z`` (the flow's own, if known, reused)."""
        log_f = self.flow_log_q(z) if flow_log_q is None else flow_log_q
        a_f, a_n, a_t = np.log(self.shares)
        parts = [
            a_f + log_f,
            a_n + self.laplace.normal_log_prob(z),
            a_t + self.laplace.t_log_prob(z),
        ]
        return np.logaddexp.reduce(np.stack(parts), axis=0)

    def __call__(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws of the mixture and their log densities under it."""
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(n, self.shares)
        flow_z, flow_lq = self.flow_propose(int(counts[0]), int(rng.integers(2**31)))
        z = np.concatenate(
            [
                flow_z.reshape(-1, len(self.laplace.mean)),
                self.laplace.sample_normal(int(counts[1]), rng),
                self.laplace.sample_t(int(counts[2]), rng),
            ]
        )
        rest = z[counts[0] :]
        log_f = np.concatenate([flow_lq, self.flow_log_q(rest) if len(rest) else rest[:, 0]])
        order = rng.permutation(n)
        return z[order], self.log_prob(z, log_f)[order]
