r"""Importance sampling of an amortized posterior with the model's exact density.

Draws :math:`\theta_j \sim q(\theta \mid y)` from the flow are weighed by

.. math:: \log w_j = \log p(\theta_j, y) - \log q(\theta_j \mid y),

the weights are Pareto-smoothed (PSIS, Vehtari et al., 2024) and the draws resampled by
them. Two choices make the result honest:

* **Enough proposals.** Resampling ``S`` draws from ``S`` weighted proposals repeats the
  heavy ones and loses the rest: in ten dimensions a third of the draws were repeats.
  Proposals are cheap, so more are drawn until their effective sample size is ``oversample``
  times the draws asked for (at most ``max_proposals`` times), and ``S`` draws are taken by
  systematic resampling, which gives each proposal ``floor`` or ``ceil`` of its expected
  number of copies: with near-uniform weights, almost every draw is a distinct proposal.
* **An honest reliability flag.** Pareto :math:`\hat k > 0.7` says the weights' tail is too
  heavy for the estimate to be trusted. When the weights are nearly uniform (an effective
  sample size above 90% of the proposals), the proposal already is the posterior and the
  tail fit is meaningless: a near-exact flow gave :math:`\hat k = 1.13` with weights
  within 1.4 times their mean. Such draws are reliable whatever :math:`\hat k` says.

This module speaks numpy only; the amortizer supplies the flow and the model's density.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pymc_abi import _compat

__all__ = ["ImportanceResult", "importance_resample", "K_MAX", "NEARLY_UNIFORM"]

#: Pareto k̂ above which importance sampling is not to be trusted (Vehtari et al., 2024).
K_MAX = 0.7
#: Relative effective sample size above which the weights are nearly uniform.
NEARLY_UNIFORM = 0.9


@dataclass(frozen=True)
class ImportanceResult:
    """Resampled draws and the diagnostics of their weights.

    Attributes
    ----------
    z : ndarray, shape (S, D)
        The resampled draws.
    log_q, log_p : ndarray, shape (S,)
        Flow and model log densities of each draw.
    pareto_k : float
        Pareto k̂ of the weights of all proposals; -inf when the largest weights are all
        equal (no tail), nan when the tail fit fails (then ``reliable`` rests on the ESS).
    ess : float
        Effective sample size of all proposals, ``1 / sum(w**2)``.
    proposals : int
        Proposals drawn.
    distinct : float
        Fraction of the ``S`` draws that are distinct proposals.
    """

    z: np.ndarray
    log_q: np.ndarray
    log_p: np.ndarray
    pareto_k: float
    ess: float
    proposals: int
    distinct: float

    @property
    def ess_fraction(self) -> float:
        """Effective sample size per proposal: 1 for uniform weights."""
        return self.ess / self.proposals

    @property
    def reliable(self) -> bool:
        """k̂ at most 0.7, or weights nearly uniform (ESS above 90% of the proposals)."""
        return self.pareto_k <= K_MAX or self.ess_fraction >= NEARLY_UNIFORM

    def attrs(self) -> dict:
        """The diagnostics, as attributes of the ``sample_stats`` group."""
        return {
            "importance_sampling": 1,
            "pareto_k": self.pareto_k,
            "ess": self.ess,
            "ess_fraction": self.ess_fraction,
            "proposals": self.proposals,
            "distinct_draws": self.distinct,
            "reliable": int(self.reliable),
        }


def importance_resample(
    propose: Callable[[int], tuple[np.ndarray, np.ndarray]],
    log_density: Callable[[np.ndarray], np.ndarray],
    draws: int,
    rng: np.random.Generator,
    *,
    first: tuple[np.ndarray, np.ndarray] | None = None,
    oversample: float = 2.0,
    max_proposals: int = 16,
    min_proposals: int = 1000,
    give_up_k: float | None = None,
) -> ImportanceResult:
    """Importance-resample ``draws`` draws from a proposal, with PSIS weights.

    Parameters
    ----------
    propose : callable
        ``propose(n)`` returns ``n`` proposals ``z (n, D)`` and their log densities
        ``log_q (n,)``.
    log_density : callable
        ``log_density(z)`` returns the target's log density ``(n,)`` (unnormalized).
    draws : int
        Draws to return, ``S``.
    rng : numpy.random.Generator
        For the resampling.
    first : tuple of ndarray, optional
        Proposals already drawn, used before any new ones.
    oversample : float, default 2.0
        Proposals are added until their effective sample size reaches
        ``oversample * draws``.
    max_proposals : int, default 16
        ... but never more than ``max_proposals * draws`` proposals.
    min_proposals : int, default 1000
        ... and never fewer than this, however few draws are asked for: Pareto k̂ and the
        ESS need enough weights to mean anything.
    give_up_k : float, optional
        Stop adding proposals once the weights' Pareto k̂ exceeds this (and they are not
        nearly uniform): k̂ estimates the shape of the weights' tail, which more of the same
        proposals do not mend. The ladder sets it where a better proposal comes next.

    Returns
    -------
    ImportanceResult

    Raises
    ------
    RuntimeError
        If every proposal has zero density under the target.
    """
    z, log_q = first if first is not None else propose(draws)
    parts_z, parts_q, parts_p = [z], [log_q], [log_density(z)]
    if len(z) < min_proposals:
        more_z, more_q = propose(min_proposals - len(z))
        parts_z.append(more_z)
        parts_q.append(more_q)
        parts_p.append(log_density(more_z))
    limit = max(max_proposals * draws, min_proposals)
    while True:
        z, log_q, log_p = (np.concatenate(p) for p in (parts_z, parts_q, parts_p))
        log_w = np.where(np.isfinite(log_p), log_p - log_q, -np.inf)
        if not np.isfinite(log_w).any():
            raise RuntimeError(
                "Every amortized draw has zero density under the model; the amortized "
                "posterior is unusable for this dataset."
            )
        smoothed, pareto_k = _compat.psislw(log_w)
        weights = np.exp(smoothed - np.logaddexp.reduce(smoothed))
        ess = float(1.0 / np.sum(weights**2))
        room = limit - len(z)
        target = oversample * draws * (1 - 1e-6)  # ESS of uniform weights: up to rounding
        hopeless = give_up_k is not None and pareto_k > give_up_k and ess < NEARLY_UNIFORM * len(z)
        if ess >= target or room <= 0 or hopeless:
            break
        # as many more as the current efficiency says are missing (at least one batch)
        wanted = int(np.ceil((target - ess) * len(z) / ess)) if ess > 0 else room
        new_z, new_q = propose(min(room, max(draws, wanted)))
        parts_z.append(new_z)
        parts_q.append(new_q)
        parts_p.append(log_density(new_z))
    idx = rng.permutation(_systematic(weights, draws, rng))
    return ImportanceResult(
        z=z[idx],
        log_q=log_q[idx],
        log_p=log_p[idx],
        pareto_k=float(pareto_k),
        ess=ess,
        proposals=len(z),
        distinct=len(np.unique(idx)) / draws,
    )


def _systematic(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Systematic resampling: proposal ``j`` is taken ``floor`` or ``ceil`` of ``n w_j``
    times, in one pass with one uniform offset."""
    cumulative = np.cumsum(weights)
    cumulative[-1] = 1.0
    points = (rng.random() + np.arange(n)) / n
    return np.searchsorted(cumulative, points, side="right")
