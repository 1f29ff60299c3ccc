r"""Calibration of posterior model probabilities, as SBC is for posteriors.

On held-out simulations (the model drawn from the comparator's prior, the data from that
model), probabilities are calibrated when, among datasets given probability :math:`p` for
model :math:`m`, a fraction :math:`p` came from :math:`m`. Binned, per model:

.. math::

    \mathrm{ECE}_m = \sum_b \frac{n_b}{N}\,
        \Big|\,\overline{\mathbb{1}[m_i = m]}_b - \overline{p_m(y_i)}_b\Big|,

and overall the top-label expected calibration error (Guo et al., 2017): the same sum for
the confidence :math:`\max_m p_m(y_i)` against the accuracy of the most probable model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from pymc_abi.core.config import positive
from pymc_abi.core.seeds import RandomSeed

if TYPE_CHECKING:
    from pymc_abi.amortizers.comparison import ModelComparator

__all__ = ["comparison_calibration", "expected_calibration_error", "plot_comparison_calibration"]


def _binned(p: np.ndarray, hit: np.ndarray, bins: int):
    """Mean probability, observed frequency and count per bin of ``p`` in [0, 1]."""
    index = np.clip((p * bins).astype(int), 0, bins - 1)
    count = np.bincount(index, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(index, weights=p, minlength=bins) / count
        freq = np.bincount(index, weights=hit.astype(float), minlength=bins) / count
    return mean_p, freq, count


def expected_calibration_error(p: np.ndarray, hit: np.ndarray, bins: int = 10) -> float:
    """Binned expected calibration error of probabilities ``p`` for events ``hit``."""
    mean_p, freq, count = _binned(np.asarray(p, float), np.asarray(hit, bool), bins)
    seen = count > 0
    return float(np.sum(count[seen] / count.sum() * np.abs(freq[seen] - mean_p[seen])))


def comparison_calibration(
    comparator: ModelComparator,
    num_simulations: int = 2000,
    *,
    bins: int = 10,
    temperature: float | None = None,
    random_seed: RandomSeed = None,
) -> xr.Dataset:
    """Calibration of a comparator's model probabilities on fresh simulations.

    The simulations are split between the models in proportion to the comparator's
    :attr:`~pymc_abi.ModelComparator.prior` (equal shares by default), and the
    probabilities are computed under that prior, so the check is of the probabilities a
    user gets.

    Parameters
    ----------
    comparator : ModelComparator
    num_simulations : int, default 2000
    bins : int, default 10
        Equal-width probability bins of the calibration curves.
    temperature : float, optional
        Evaluate at this temperature instead of the comparator's (``1.0``: the network's
        own calibration, before temperature scaling).
    random_seed : int, optional

    Returns
    -------
    xarray.Dataset
        ``mean_probability``, ``observed_frequency`` and ``count`` (dims ``model, bin``):
        the calibration curve of each model; ``ece`` (``model``), ``ece_overall`` (top
        label), ``accuracy``, ``brier`` (mean squared error of the probability vectors),
        ``confusion`` (dims ``true_model, predicted_model``: counts of the most probable
        model), and per simulation ``probability`` (``simulation, model``) and ``label``
        (the index of the model that made it). Attributes: ``temperature``, ``prior``.

    Examples
    --------
    >>> result = abi.comparison_calibration(comparator, 2000)  # doctest: +SKIP
    >>> float(result.ece_overall)  # doctest: +SKIP
    """
    n = positive("num_simulations", num_simulations)
    bins = positive("bins", bins)
    names = comparator.names
    prior = comparator.prior.values
    counts = np.floor(prior * n).astype(int)
    counts[np.argsort(-(prior * n - counts))[: n - counts.sum()]] += 1
    logits, labels = comparator.simulate_logits(n, counts=counts, random_seed=random_seed)
    t = comparator.temperature if temperature is None else float(temperature)
    p = comparator._probabilities(logits / t, prior)
    m = len(names)
    mean_p = np.empty((m, bins))
    freq = np.empty((m, bins))
    count = np.empty((m, bins))
    ece = np.empty(m)
    for k in range(m):
        mean_p[k], freq[k], count[k] = _binned(p[:, k], labels == k, bins)
        ece[k] = expected_calibration_error(p[:, k], labels == k, bins)
    predicted = p.argmax(axis=1)
    confusion = np.zeros((m, m), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    onehot = np.eye(m)[labels]
    edges = np.linspace(0, 1, bins + 1)
    return xr.Dataset(
        {
            "mean_probability": (("model", "bin"), mean_p),
            "observed_frequency": (("model", "bin"), freq),
            "count": (("model", "bin"), count),
            "ece": (("model",), ece),
            "ece_overall": (
                (),
                expected_calibration_error(p.max(axis=1), predicted == labels, bins),
            ),
            "accuracy": ((), float(np.mean(predicted == labels))),
            "brier": ((), float(np.mean(np.sum((p - onehot) ** 2, axis=1)))),
            "confusion": (("true_model", "predicted_model"), confusion),
            "probability": (("simulation", "model"), p),
            "label": (("simulation",), labels),
        },
        coords={
            "model": names,
            "true_model": names,
            "predicted_model": names,
            "bin": 0.5 * (edges[:-1] + edges[1:]),
        },
        attrs={"temperature": t, "prior": prior.tolist(), "bins": bins},
    )


def plot_comparison_calibration(result: xr.Dataset, *, ax=None, figsize=None) -> np.ndarray:
    """Calibration curves of every model (against the diagonal) and the confusion matrix.

    Parameters
    ----------
    result : xarray.Dataset
        From :func:`comparison_calibration`.
    ax : sequence of two matplotlib axes, optional
    figsize : tuple, optional

    Returns
    -------
    ndarray of two matplotlib axes
        The calibration curves, then the confusion matrix (row-normalized: the fraction of
        each true model's datasets given to each model).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(1, 2, figsize=figsize or (10, 4.2))
    axes = np.ravel(np.asarray(ax, dtype=object))
    if len(axes) < 2:
        raise ValueError("plot_comparison_calibration draws two panels: give two axes.")
    curves, matrix = axes[0], axes[1]
    curves.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    for name in result["model"].values:
        one = result.sel(model=name)
        seen = one["count"].values > 0
        curves.plot(
            one["mean_probability"].values[seen],
            one["observed_frequency"].values[seen],
            marker="o",
            markersize=4,
            label=f"{name} (ECE {float(one['ece']):.3f})",
        )
    curves.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="predicted probability",
        ylabel="observed frequency",
        title=f"Calibration (overall ECE {float(result['ece_overall']):.3f})",
    )
    curves.set_aspect("equal")
    curves.legend(fontsize="small", loc="upper left")
    conf = result["confusion"].values.astype(float)
    rows = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    names = [str(n) for n in result["model"].values]
    matrix.imshow(rows, vmin=0, vmax=1, cmap="Blues")
    for i in range(len(names)):
        for j in range(len(names)):
            matrix.text(
                j,
                i,
                f"{rows[i, j]:.2f}",
                ha="center",
                va="center",
                color="white" if rows[i, j] > 0.5 else "black",
            )
    matrix.set_xticks(range(len(names)), names, rotation=30, ha="right")
    matrix.set_yticks(range(len(names)), names)
    matrix.set(
        xlabel="most probable model",
        ylabel="true model",
        title=f"Confusion (accuracy {float(result['accuracy']):.2f})",
    )
    return axes[:2]
