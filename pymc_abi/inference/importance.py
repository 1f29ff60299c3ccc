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
  Oversampling is for few draws: beyond the first ``OVERSAMPLED`` (20,000) draws, one more
  unit of ESS per draw is asked for, and at most 4 proposals per draw are drawn, so that a
  million draws cost about what the flow's own million draws cost.
* **Bounded memory.** The target density is evaluated ``CHUNK`` rows at a time, and the
  proposals stay in the parts they were drawn in: only their log weights are joined, and
  only the resampled draws are gathered.
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

from pymc_abi.core import _compat

__all__ = ["ImportanceResult", "importance_resample", "K_MAX", "NEARLY_UNIFORM"]

#: Pareto k̂ above which importance sampling is not to be trusted (Vehtari et al., 2024).
K_MAX = 0.7
#: Relative effective sample size above which the weights are nearly uniform.
NEARLY_UNIFORM = 0.9
#: Draws up to which proposals are oversampled (see :func:`ess_target`).
OVERSAMPLED = 20_000
#: Rows per call of the target's log density.
CHUNK = 65_536


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
    gave_up : bool
        Whether proposals stopped early (``give_up_k``, ``give_up_efficiency``), short of
        the ESS target and the proposal cap.
    """

    z: np.ndarray
    log_q: np.ndarray
    log_p: np.ndarray
    pareto_k: float
    ess: float
    proposals: int
    distinct: float
    gave_up: bool = False

    @property
    def ess_fraction(self) -> float:
        """Effective sample size per proposal: 1 for uniform weights."""
        return self.ess / self.proposals

    @property
    def reliable(self) -> bool:
        """k̂ at most 0.7, or weights nearly uniform (ESS above 90% of the proposals)."""
        return self.pareto_k <= K_MAX or self.ess_fraction >= NEARLY_UNIFORM

    def better_than(self, other: ImportanceResult) -> bool:
        """Reliable over unreliable; then the larger ESS, or, both unreliable, the
        smaller k̂."""
        if self.reliable != other.reliable:
            return self.reliable
        return self.ess > other.ess if self.reliable else self.pareto_k < other.pareto_k

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
    give_up_efficiency: float | None = None,
) -> ImportanceResult:
    """Importance-resample ``draws`` draws from a proposal, with PSIS weights.

    Parameters
    ----------
    propose : callable
        ``propose(n)`` returns ``n`` proposals ``z (n, D)`` and their log densities
        ``log_q (n,)``.
    log_density : callable
        ``log_density(z)`` returns the target's log density ``(n,)`` (unnormalized). It is
        called on at most ``CHUNK`` rows at a time, so its working memory stays bounded
        whatever the number of draws.
    draws : int
        Draws to return, ``S``.
    rng : numpy.random.Generator
        For the resampling.
    first : tuple of ndarray, optional
        Proposals already drawn, used before any new ones.
    oversample : float, default 2.0
        Proposals are added until their effective sample size reaches ``oversample`` times
        the draws, for the first ``OVERSAMPLED`` draws, plus one per draw beyond them (see
        :func:`ess_target`).
    max_proposals : int, default 16
        ... but never more than ``max_proposals`` proposals per draw for the first
        ``OVERSAMPLED`` draws, plus 4 per draw beyond them (:func:`proposal_limit`).
    min_proposals : int, default 1000
        ... and never fewer than this, however few draws are asked for: Pareto k̂ and the
        ESS need enough weights to mean anything.
    give_up_k : float, optional
        Stop adding proposals once the weights' Pareto k̂ exceeds this (and they are not
        nearly uniform): k̂ estimates the shape of the weights' tail, which more of the same
        proposals do not mend. The ladder sets it where a better proposal comes next.
    give_up_efficiency : float, optional
        Stop adding proposals once the ESS per proposal is below this: the proposal is
        far wider than the target, and a better one (the ladder's next tier) costs less than
        the many more that this one needs. The result then says ``gave_up``.

    Returns
    -------
    ImportanceResult

    Raises
    ------
    RuntimeError
        If every proposal has zero density under the target.
    """
    parts = _Proposals(log_density)
    parts.add(*(first if first is not None else propose(draws)))
    if parts.size < min_proposals:
        parts.add(*propose(min_proposals - parts.size))
    limit = max(proposal_limit(draws, max_proposals), min_proposals)
    target = ess_target(draws, oversample) * (1 - 1e-6)  # ESS of uniform weights: rounding
    while True:
        log_w = parts.log_weights()
        if not np.isfinite(log_w).any():
            raise RuntimeError(
                "Every amortized draw has zero (or underflowing) density under the model; "
                "the amortized posterior is unusable for this dataset. The data (or the "
                "covariates given with them) are likely far outside what the model produces: "
                "check them for extreme values (wrong units, a stray huge value)."
            )
        smoothed, pareto_k = _compat.psislw(log_w)
        del log_w
        # in place: at 10^6 draws every temporary copy is tens of megabytes
        weights = np.subtract(smoothed, np.logaddexp.reduce(smoothed), out=smoothed)
        np.exp(weights, out=weights)
        ess = float(1.0 / np.dot(weights, weights))
        room = limit - parts.size
        hopeless = (
            give_up_k is not None and pareto_k > give_up_k and ess < NEARLY_UNIFORM * parts.size
        ) or (give_up_efficiency is not None and ess < give_up_efficiency * parts.size)
        if ess >= target or room <= 0 or hopeless:
            break
        # as many more as the current efficiency says are missing, at least a quarter of
        # the draws, up to OVERSAMPLED/4 of them: a near-exact proposal whose estimate fell
        # short by a few dozen (ESS 7,990 of 8,000) gets 1,000 more, not another 4,000; a
        # million draws short of their ESS target by 1% get about 20,000 more, not a million
        wanted = int(np.ceil((target - ess) * parts.size / ess)) if ess > 0 else room
        parts.add(*propose(min(room, max(min(draws, OVERSAMPLED) // 4, 1, wanted))))
    idx = _systematic(weights, draws, rng)
    del weights, smoothed
    rng.shuffle(idx)
    z, log_q, log_p = parts.take(idx)
    return ImportanceResult(
        z=z,
        log_q=log_q,
        log_p=log_p,
        pareto_k=float(pareto_k),
        ess=ess,
        proposals=parts.size,
        distinct=len(np.unique(idx)) / draws,
        gave_up=bool(hopeless and ess < target and room > 0),
    )


def ess_target(draws: int, oversample: float = 2.0) -> float:
    """The effective sample size that proposals are drawn for: ``oversample`` per draw for
    the first ``OVERSAMPLED`` draws, one per draw beyond them.

    Oversampling buys distinct draws and a stable tail fit where draws are few; at 10^6
    draws, an ESS of twice the draws buys neither (the Monte Carlo error of an ESS of 10^6 is
    already 0.001 posterior SDs) and doubles the time and memory.
    """
    return oversample * min(draws, OVERSAMPLED) + max(draws - OVERSAMPLED, 0)


def proposal_limit(draws: int, max_proposals: int = 16) -> int:
    """Proposals drawn at most: ``max_proposals`` per draw for the first ``OVERSAMPLED``
    draws, 4 per draw beyond them (memory stays a few times the result's)."""
    return max_proposals * min(draws, OVERSAMPLED) + 4 * max(draws - OVERSAMPLED, 0)


class _Proposals:
    """Proposals kept in the parts they were drawn in, with their log densities: the
    weights are one array, the draws are gathered only for the resampled indices."""

    def __init__(self, log_density):
        self._log_density = log_density
        self._z: list[np.ndarray] = []
        self._log_q: list[np.ndarray] = []
        self._log_p: list[np.ndarray] = []
        self.size = 0

    def add(self, z: np.ndarray, log_q: np.ndarray) -> None:
        log_p = np.concatenate(
            [self._log_density(z[i : i + CHUNK]) for i in range(0, len(z), CHUNK)] or [[]]
        )
        self._z.append(z)
        self._log_q.append(np.asarray(log_q, dtype=float))
        self._log_p.append(np.asarray(log_p, dtype=float))
        self.size += len(z)

    def log_weights(self) -> np.ndarray:
        log_w = np.concatenate(self._log_p)
        impossible = ~np.isfinite(log_w)
        log_w -= np.concatenate(self._log_q)
        log_w[impossible] = -np.inf
        return log_w

    def take(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        starts = np.cumsum([0] + [len(z) for z in self._z])
        part = np.searchsorted(starts, idx, side="right") - 1
        z = np.empty((len(idx), self._z[0].shape[1]))
        log_q, log_p = np.empty(len(idx)), np.empty(len(idx))
        for j in np.unique(part):
            rows = part == j
            local = idx[rows] - starts[j]
            z[rows] = self._z[j][local]
            log_q[rows] = self._log_q[j][local]
            log_p[rows] = self._log_p[j][local]
        return z, log_q, log_p


def _systematic(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Systematic resampling: proposal ``j`` is taken ``floor`` or ``ceil`` of ``n w_j``
    times, in one pass with one uniform offset."""
    cumulative = np.cumsum(weights)
    cumulative[-1] = 1.0
    points = np.arange(n, dtype=float)
    points += rng.random()
    points /= n
    return np.searchsorted(cumulative, points, side="right")
