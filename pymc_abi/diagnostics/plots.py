"""Plots of an SBC run (matplotlib): rank ECDFs and histograms, z-score vs contraction,
parameter recovery."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from scipy import stats

from pymc_abi.core import _compat
from pymc_abi.core.seeds import RandomSeed
from pymc_abi.diagnostics.metrics import rank_bins, rank_ecdf_band
from pymc_abi.diagnostics.sbc import RANK_GROUP, STATS_GROUP, sbc_group

__all__ = ["plot_recovery", "plot_sbc", "plot_z_score_contraction"]

_KINDS = ("ecdf_diff", "ecdf", "hist")


# ---------------------------------------------------------------------- helpers
def _as_list(var_names: str | Sequence[str] | None) -> list[str] | None:
    if var_names is None:
        return None
    return [var_names] if isinstance(var_names, str) else list(var_names)


def _panels(n: int, ax, figsize, ncols: int = 4) -> np.ndarray:
    """``n`` axes: those given, or a new grid with the unused cells removed."""
    import matplotlib.pyplot as plt

    if ax is not None:
        axes = np.ravel(np.asarray(ax, dtype=object))
        if len(axes) < n:
            raise ValueError(f"The plot has {n} panels but {len(axes)} axes were given.")
        return axes[:n]
    ncols = max(1, min(n, ncols))
    nrows = -(-n // ncols)
    if figsize is None:
        figsize = (3.2 * ncols, 2.6 * nrows)
    fig, grid = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, layout="constrained")
    axes = grid.ravel()
    for extra in axes[n:]:
        fig.delaxes(extra)
    return axes[:n]


def _elements(ds: xr.Dataset, var_names: list[str] | None) -> list[tuple[str, np.ndarray]]:
    """(label, values over simulations) for every element of the selected variables."""
    names = list(ds.data_vars) if var_names is None else var_names
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        raise ValueError(f"{missing} are not in the SBC ranks (variables: {list(ds.data_vars)}).")
    out = []
    for name in names:
        da = ds[name]
        core = [d for d in da.dims if d not in ("chain", "draw")]
        values = da.transpose("chain", "draw", *core).values
        values = values.reshape(-1, *values.shape[2:])
        for idx in np.ndindex(*values.shape[1:]):
            label = name
            if idx:
                label += "[" + ", ".join(str(da[d].values[i]) for d, i in zip(core, idx)) + "]"
            out.append((label, values[(slice(None), *idx)]))
    return out


def _parameters(ds: xr.Dataset, var_names: list[str] | None) -> list[int]:
    """Indices along ``parameter`` of the selected variables or flat labels."""
    labels = [str(p) for p in ds["parameter"].values]
    if var_names is None:
        return list(range(len(labels)))
    variables = (
        [str(v) for v in ds["variable"].values] if "variable" in ds.coords else [None] * len(labels)
    )
    unknown = [n for n in var_names if n not in labels and n not in variables]
    if unknown:
        raise ValueError(
            f"{unknown} name neither a free variable nor a flat parameter (parameters: {labels})."
        )
    return [
        j for j, (p, v) in enumerate(zip(labels, variables)) if p in var_names or v in var_names
    ]


def _flat(ds: xr.Dataset, name: str) -> np.ndarray:
    """A (simulations, parameter) array of an ``sbc_stats`` variable."""
    return (
        ds[name].transpose("chain", "draw", "parameter").values.reshape(-1, ds.sizes["parameter"])
    )


# ---------------------------------------------------------------------- rank plots
def plot_sbc(
    sbc: _compat.Result,
    *,
    kind: str = "ecdf_diff",
    var_names: str | Sequence[str] | None = None,
    ci_prob: float = 0.95,
    bins: int | None = None,
    ax=None,
    figsize: tuple[float, float] | None = None,
    random_seed: RandomSeed = 0,
) -> np.ndarray:
    """Plot the SBC ranks of every element of the model's variables against uniformity.

    Parameters
    ----------
    sbc : az.InferenceData or xarray.DataTree
        The result of :func:`pymc_abi.sbc`.
    kind : {"ecdf_diff", "ecdf", "hist"}, default "ecdf_diff"
        ``"ecdf_diff"``: ECDF of the normalized ranks ``(r + 1/2) / (L + 1)`` minus the
        uniform CDF, with a simultaneous ``ci_prob`` confidence band
        (:func:`~pymc_abi.diagnostics.rank_ecdf_band`, Säilynoja et al., 2022);
        ``"ecdf"``: the same without the difference; ``"hist"``: rank histogram
        (bins of :func:`~pymc_abi.diagnostics.rank_bins`) with the central 99% band of
        each bin count under uniformity (binomial).
    var_names : str or list of str, optional
        Variables of the ``prior_sbc`` group to plot; by default the free variables (not
        the deterministics, which :func:`~pymc_abi.sbc` ranks too). Panels are titled with
        the model's coordinate labels (``beta[x1]``), as :func:`calibration_metrics` rows.
    ci_prob : float, default 0.95
        Probability of the ECDF band (simultaneous over the whole curve).
    bins : int, optional
        Bins of the histogram.
    ax : array of matplotlib Axes, optional
        One per panel; a new figure otherwise.
    figsize : tuple of float, optional
    random_seed : int, default 0
        Seeds the simulation of the ECDF band.

    Returns
    -------
    ndarray of matplotlib.axes.Axes
        One panel per element of each variable.

    Examples
    --------
    >>> import pymc as pm, pymc_abi as abi
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 1)
    ...     y = pm.Normal("y", mu, 1, observed=[0.1, -0.3, 0.5])
    >>> amortizer = abi.fit(model, steps=200, random_seed=1, progressbar=False)
    >>> result = abi.sbc(amortizer, num_simulations=200, draws=100, progressbar=False)
    >>> axes = abi.plot_sbc(result, kind="ecdf_diff")
    >>> len(axes)
    1
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")
    ds = sbc_group(sbc, RANK_GROUP)
    draws = int(ds.attrs["draws"])
    if var_names is None:
        free = sbc_group(sbc, STATS_GROUP)["variable"].values
        var_names = [n for n in ds.data_vars if n in set(free.astype(str))]
    elements = _elements(ds, _as_list(var_names))
    axes = _panels(len(elements), ax, figsize)
    rng = np.random.default_rng(random_seed)
    for axis, (label, ranks) in zip(axes, elements):
        if kind == "hist":
            _rank_hist(axis, ranks, draws, bins)
        else:
            _rank_ecdf(axis, ranks, draws, kind == "ecdf_diff", ci_prob, rng)
        axis.set_title(label)
    return axes


def _rank_ecdf(axis, ranks, draws, difference, ci_prob, rng) -> None:
    ranks = np.asarray(ranks)
    x, lower, upper = rank_ecdf_band(len(ranks), draws, prob=ci_prob, random_seed=rng)
    # at x = m / (L + 1) the ECDF of the normalized ranks counts the ranks below m
    ecdf = np.searchsorted(np.sort(ranks), np.round(x * (draws + 1)), side="left") / len(ranks)
    shift = x if difference else 0.0
    axis.fill_between(x, lower - shift, upper - shift, step="post", color="C0", alpha=0.2, lw=0)
    axis.plot(x, ecdf - shift, drawstyle="steps-post", color="C0")
    if difference:
        axis.axhline(0, color="0.5", lw=0.8)
    axis.set_xlim(0, 1)
    axis.set_xlabel("normalized rank")
    axis.set_ylabel("ECDF difference" if difference else "ECDF")


def _rank_hist(axis, ranks, draws, bins) -> None:
    ranks = np.asarray(ranks)
    edges = rank_bins(len(ranks), draws, bins=bins)
    counts = np.histogram(ranks, bins=edges)[0]
    p = np.diff(edges) / (draws + 1)
    lo = stats.binom.ppf(0.005, len(ranks), p)
    hi = stats.binom.ppf(0.995, len(ranks), p)
    axis.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="C0", alpha=0.8)
    # the band and the expected count, over the bars
    axis.fill_between(
        edges,
        np.append(lo, lo[-1]),
        np.append(hi, hi[-1]),
        step="post",
        color="0.4",
        alpha=0.25,
        lw=0,
        zorder=3,
    )
    axis.plot(
        edges, np.append(p, p[-1]) * len(ranks), drawstyle="steps-post", color="0.3", lw=1, zorder=4
    )
    axis.set_xlim(0, draws + 1)
    axis.set_xlabel("rank")
    axis.set_ylabel("count")


# ---------------------------------------------------------------------- summaries
def plot_z_score_contraction(
    sbc: _compat.Result,
    *,
    var_names: str | Sequence[str] | None = None,
    ax=None,
    figsize: tuple[float, float] | None = None,
) -> np.ndarray:
    """Scatter the posterior z-score against the posterior contraction, per parameter.

    One point per simulation: ``contraction = 1 - posterior var / prior var`` (x; near 1:
    the data are informative) and ``z = (posterior mean - true value) / posterior sd`` (y;
    mostly within ±2 for a calibrated posterior). Points far outside ±2 reveal overconfident
    or biased posteriors; contraction near 0 means the data teach little about the
    parameter (Schad et al., 2021). Flat unconstrained coordinates (``sbc_stats``).

    Parameters
    ----------
    sbc : az.InferenceData or xarray.DataTree
        The result of :func:`pymc_abi.sbc`.
    var_names : str or list of str, optional
        Free variables or flat parameter labels (e.g. ``"sigma_log__"``); all by default.
    ax : array of matplotlib Axes, optional
    figsize : tuple of float, optional

    Returns
    -------
    ndarray of matplotlib.axes.Axes
        One panel per flat parameter.

    Examples
    --------
    >>> import pymc as pm, pymc_abi as abi
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 1)
    ...     y = pm.Normal("y", mu, 1, observed=[0.1, -0.3, 0.5])
    >>> amortizer = abi.fit(model, steps=200, random_seed=1, progressbar=False)
    >>> result = abi.sbc(amortizer, num_simulations=200, draws=100, progressbar=False)
    >>> axes = abi.plot_z_score_contraction(result)
    """
    ds = sbc_group(sbc, STATS_GROUP)
    params = _parameters(ds, _as_list(var_names))
    z = _flat(ds, "z_score")
    contraction = _flat(ds, "contraction")
    labels = [str(p) for p in ds["parameter"].values]
    axes = _panels(len(params), ax, figsize)
    for axis, j in zip(axes, params):
        axis.axhspan(-2, 2, color="0.92", lw=0, zorder=0)
        axis.axhline(0, color="0.5", lw=0.8, zorder=1)
        axis.scatter(contraction[:, j], z[:, j], s=6, alpha=0.5, color="C0", lw=0, zorder=2)
        axis.set_xlim(-0.05, 1.05)
        axis.set_xlabel("posterior contraction")
        axis.set_ylabel("posterior z-score")
        axis.set_title(labels[j])
    return axes


def plot_recovery(
    sbc: _compat.Result,
    *,
    point_estimate: str = "mean",
    var_names: str | Sequence[str] | None = None,
    error_bars: bool = False,
    ax=None,
    figsize: tuple[float, float] | None = None,
) -> np.ndarray:
    """Plot posterior point estimates against the true values, per parameter.

    Each panel shows the true value (x) against the posterior mean or median (y) of every
    simulation, the identity line, and ``R² = 1 - Σ(estimate - truth)² / Σ(truth - mean
    truth)²`` (the fraction of the prior variance of the parameter that the estimate
    recovers). Flat unconstrained coordinates (``sbc_stats``).

    Parameters
    ----------
    sbc : az.InferenceData or xarray.DataTree
        The result of :func:`pymc_abi.sbc`.
    point_estimate : {"mean", "median"}, default "mean"
    var_names : str or list of str, optional
        Free variables or flat parameter labels; all by default.
    error_bars : bool, default False
        Draw ± one posterior SD around each estimate.
    ax : array of matplotlib Axes, optional
    figsize : tuple of float, optional

    Returns
    -------
    ndarray of matplotlib.axes.Axes
        One panel per flat parameter.

    Examples
    --------
    >>> import pymc as pm, pymc_abi as abi
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 1)
    ...     y = pm.Normal("y", mu, 1, observed=[0.1, -0.3, 0.5])
    >>> amortizer = abi.fit(model, steps=200, random_seed=1, progressbar=False)
    >>> result = abi.sbc(amortizer, num_simulations=200, draws=100, progressbar=False)
    >>> axes = abi.plot_recovery(result, point_estimate="median")
    """
    if point_estimate not in ("mean", "median"):
        raise ValueError(f"point_estimate must be 'mean' or 'median', got {point_estimate!r}.")
    ds = sbc_group(sbc, STATS_GROUP)
    params = _parameters(ds, _as_list(var_names))
    truth = _flat(ds, "true_value")
    estimate = _flat(ds, f"posterior_{point_estimate}")
    sd = _flat(ds, "posterior_sd")
    labels = [str(p) for p in ds["parameter"].values]
    axes = _panels(len(params), ax, figsize)
    for axis, j in zip(axes, params):
        x, y = truth[:, j], estimate[:, j]
        if error_bars:
            axis.errorbar(x, y, yerr=sd[:, j], fmt="none", ecolor="C0", alpha=0.2, lw=0.8)
        axis.scatter(x, y, s=6, alpha=0.5, color="C0", lw=0, zorder=2)
        finite = np.isfinite(x) & np.isfinite(y)
        lo = float(min(x[finite].min(), y[finite].min()))
        hi = float(max(x[finite].max(), y[finite].max()))
        axis.plot([lo, hi], [lo, hi], color="0.4", ls="--", lw=1, zorder=3)
        r2 = _r2(x[finite], y[finite])
        axis.text(
            0.04,
            0.96,
            f"$R^2$ = {r2:.3f}",
            transform=axis.transAxes,
            ha="left",
            va="top",
        )
        axis.set_xlabel("true value")
        axis.set_ylabel(f"posterior {point_estimate}")
        axis.set_title(labels[j])
    return axes


def _r2(truth: np.ndarray, estimate: np.ndarray) -> float:
    total = np.sum((truth - truth.mean()) ** 2)
    if total == 0:
        return float("nan")
    return float(1.0 - np.sum((estimate - truth) ** 2) / total)
