"""Calibration and accuracy metrics of an SBC run, one row per flat parameter."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from pymc_abi.core import _compat
from pymc_abi.core.seeds import RandomSeed, seed_int
from pymc_abi.diagnostics.sbc import STATS_GROUP, sbc_group

__all__ = ["calibration_metrics", "rank_bins", "rank_ecdf_band"]

# coverage levels of the calibration error, as BayesFlow's ``calibration_error``
_COVERAGE_LEVELS = np.linspace(0.005, 0.995, 20)


def rank_bins(num_simulations: int, draws: int, *, bins: int | None = None) -> np.ndarray:
    """Integer bin edges of a rank histogram over ranks ``0, ..., draws``.

    Every bin holds a whole number of possible ranks, as evenly as possible, so the
    expected count of a bin under uniformity is ``num_simulations * width / (draws + 1)``.

    Parameters
    ----------
    num_simulations : int
        Number of ranks (SBC simulations).
    draws : int
        Largest possible rank.
    bins : int, optional
        Number of bins; by default ``min(20, draws + 1, max(2, num_simulations // 10))``,
        at least 10 expected counts per bin (25 with 500 simulations).

    Returns
    -------
    ndarray of int
        ``bins + 1`` edges; bin ``j`` holds ranks ``edges[j] <= r < edges[j + 1]``.

    Examples
    --------
    >>> from pymc_abi.diagnostics import rank_bins
    >>> rank_bins(500, 99).tolist()[:4]
    [0, 5, 10, 15]
    """
    if bins is None:
        bins = min(20, draws + 1, max(2, num_simulations // 10))
    bins = int(bins)
    if not 1 <= bins <= draws + 1:
        raise ValueError(f"bins must lie in [1, draws + 1 = {draws + 1}], got {bins}.")
    return np.unique(np.round(np.linspace(0, draws + 1, bins + 1)).astype(int))


def rank_ecdf_band(
    num_simulations: int,
    draws: int,
    *,
    prob: float = 0.95,
    max_points: int = 100,
    trials: int = 1000,
    random_seed: RandomSeed = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Simultaneous confidence band for the ECDF of uniform SBC ranks.

    Ranks of a calibrated posterior are uniform on ``0, ..., L`` (``L = draws``). At the
    points :math:`x_m = m / (L + 1)` the ECDF of the normalized ranks
    :math:`(r + 1/2) / (L + 1)` counts the ranks below ``m``, and its count is
    :math:`\mathrm{Binomial}(N, x_m)` for ``N`` ranks. The band is the pointwise binomial
    band whose level :math:`\gamma` is raised until ``prob`` of simulated uniform ECDFs
    lie inside it at every point at once (the simulation method of Säilynoja, Bürkner and
    Vehtari, 2022, "Graphical test for discrete uniformity and its applications in
    goodness-of-fit evaluation and multiple sample comparison").

    Parameters
    ----------
    num_simulations : int
        Number of ranks ``N``.
    draws : int
        Largest possible rank ``L``.
    prob : float, default 0.95
        Probability that the ECDF of uniform ranks lies inside the band everywhere.
    max_points : int, default 100
        At most this many evaluation points (plus the ends).
    trials : int, default 1000
        Simulated uniform ECDFs.
    random_seed : int, default 0

    Returns
    -------
    x, lower, upper : ndarray
        Evaluation points in ``[0, 1]`` and the band of the ECDF there.

    Examples
    --------
    >>> from pymc_abi.diagnostics import rank_ecdf_band
    >>> x, lower, upper = rank_ecdf_band(200, 99)
    >>> bool(((lower <= x) & (x <= upper)).all())
    True
    """
    if not 0 < prob < 1:
        raise ValueError(f"prob must lie in (0, 1), got {prob}.")
    n, ranks = int(num_simulations), int(draws) + 1
    x = np.unique(np.round(np.linspace(0, ranks, min(ranks, int(max_points)) + 1))) / ranks
    inner = x[1:-1]
    rng = np.random.default_rng(seed_int(random_seed))
    # counts below each inner point, for uniform ranks: multinomial over the gaps
    counts = rng.multinomial(n, np.diff(x), size=int(trials)).cumsum(axis=1)[:, :-1]
    lower_tail = stats.binom.cdf(counts, n, inner)
    upper_tail = stats.binom.sf(counts - 1, n, inner)
    gamma = 1 - 2 * np.minimum(lower_tail, upper_tail).min(axis=1)
    level = float(np.quantile(gamma, prob))
    lower = stats.binom.ppf((1 - level) / 2, n, inner) / n
    upper = stats.binom.ppf(1 - (1 - level) / 2, n, inner) / n
    return x, np.concatenate([[0.0], lower, [1.0]]), np.concatenate([[0.0], upper, [1.0]])


def _uniformity_test(ranks: np.ndarray, draws: int, bins: int | None) -> tuple[float, float]:
    """Chi-square statistic and p-value of ranks against the discrete uniform."""
    edges = rank_bins(len(ranks), draws, bins=bins)
    observed = np.histogram(ranks, bins=edges)[0]
    expected = len(ranks) * np.diff(edges) / (draws + 1)
    if len(observed) < 2:
        return 0.0, 1.0
    result = stats.chisquare(observed, expected)
    return float(result.statistic), float(result.pvalue)


def _calibration_error(ranks: np.ndarray, draws: int) -> float:
    """Median absolute coverage error of central credible intervals over coverage levels."""
    u = (ranks + 0.5) / (draws + 1)
    lower = (1 - _COVERAGE_LEVELS) / 2
    covered = (u[:, None] > lower) & (u[:, None] < 1 - lower)
    return float(np.median(np.abs(covered.mean(axis=0) - _COVERAGE_LEVELS)))


def calibration_metrics(sbc: _compat.Result, *, bins: int | None = None) -> pd.DataFrame:
    """Calibration and recovery metrics of an SBC run, one row per flat parameter.

    Parameters
    ----------
    sbc : az.InferenceData or xarray.DataTree
        The result of :func:`pymc_abi.sbc`.
    bins : int, optional
        Bins of the rank histogram of the uniformity test (see :func:`rank_bins`).

    Returns
    -------
    pandas.DataFrame
        Indexed by flat unconstrained coordinate (``amortizer.parameters.names``), with
        columns

        - ``variable``: the free variable of the coordinate;
        - ``calibration_error``: for coverage levels ``α`` in 20 steps from 0.005 to 0.995,
          the fraction ``c(α)`` of simulations whose true value lies in the central
          ``α`` credible interval of the draws (normalized rank ``(r + 1/2) / (L + 1)``
          within ``(1 ± α) / 2``); the median of ``|c(α) - α|`` (as BayesFlow's
          calibration error; 0 is perfect; for exactly uniform ranks it averages
          ``0.27 / sqrt(num_simulations)`` and stays below ``0.57 / sqrt(num_simulations)``
          in 95% of runs);
        - ``nrmse``: the root mean squared error of the posterior mean against the true
          value, divided by the standard deviation of the true values (1: no better than
          the prior mean; for a calibrated posterior about ``sqrt(1 - contraction)``);
        - ``r2``: coefficient of determination of the posterior mean, ``1 - nrmse**2`` up to
          the ``ddof`` of the SD;
        - ``contraction``: mean posterior contraction ``1 - posterior var / prior var``;
        - ``z_score_mean``, ``z_score_sd``: mean and SD of the posterior z-scores
          ``(mean - truth) / sd``; about 0 and 1 for a calibrated, nearly Gaussian
          posterior (SD > 1: overconfident, < 1: underconfident);
        - ``chi2``, ``uniformity_pvalue``: Pearson's chi-square test of the rank
          histogram (bins of :func:`rank_bins`) against the discrete uniform
          distribution on ``0, ..., L`` (``scipy.stats.chisquare``). A p-value below,
          say, 0.001 flags miscalibration; with many parameters, mind multiple testing.

    Examples
    --------
    >>> import pymc as pm, pymc_abi as abi
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 1)
    ...     y = pm.Normal("y", mu, 1, observed=[0.1, -0.3, 0.5])
    >>> amortizer = abi.fit(model, steps=200, random_seed=1, progressbar=False)
    >>> result = abi.sbc(amortizer, num_simulations=200, draws=100, random_seed=2,
    ...                  progressbar=False)
    >>> table = abi.calibration_metrics(result)
    >>> bool(table.loc["mu", "uniformity_pvalue"] > 0.001)
    True
    """
    ds = sbc_group(sbc, STATS_GROUP)
    draws = int(ds.attrs["draws"])

    def flat(name):
        return ds[name].stack(sample=("chain", "draw")).transpose("sample", ...).values

    rank, truth, mean = flat("rank"), flat("true_value"), flat("posterior_mean")
    z, contraction = flat("z_score"), flat("contraction")
    truth_sd = truth.std(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        nrmse = np.sqrt(np.mean((mean - truth) ** 2, axis=0)) / truth_sd
        r2 = 1.0 - np.sum((mean - truth) ** 2, axis=0) / np.sum(
            (truth - truth.mean(axis=0)) ** 2, axis=0
        )
    rows = []
    for j in range(rank.shape[1]):
        chi2, pvalue = _uniformity_test(rank[:, j], draws, bins)
        rows.append(
            {
                "calibration_error": _calibration_error(rank[:, j], draws),
                "nrmse": nrmse[j],
                "r2": r2[j],
                "contraction": np.nanmean(contraction[:, j]),
                "z_score_mean": np.nanmean(z[:, j]),
                "z_score_sd": np.nanstd(z[:, j], ddof=1),
                "chi2": chi2,
                "uniformity_pvalue": pvalue,
            }
        )
    table = pd.DataFrame(rows, index=pd.Index(ds["parameter"].values.tolist(), name="parameter"))
    if "variable" in ds.coords:
        table.insert(0, "variable", ds["variable"].values.astype(str))
    return table
