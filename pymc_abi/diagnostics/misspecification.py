r"""Model misspecification: is the observed data like anything the model simulates?

An amortized posterior is only trained on data the model can produce. Following Schmitt et
al. (2023, "Detecting model misspecification in amortized Bayesian inference with neural
networks"), the learned summary network :math:`h` maps data to the space where the
posterior network looks; the maximum mean discrepancy (MMD) between the embedding of the
observed data and embeddings of simulations from the model measures how atypical the data
are:

.. math::

    \widehat{\mathrm{MMD}}^2 = \overline{k(h_o, h_o')}
        + \frac{1}{M(M - 1)} \sum_{i \neq j} k(h_i, h_j)
        - \frac{2}{M N} \sum_{o, i} k(h_o, h_i),

with a Gaussian kernel whose bandwidth is the median distance between simulated
embeddings. The null distribution comes from simulations themselves: each of
``num_null`` fresh simulated datasets is scored like the observed data, and the p-value is
the fraction of them at least as discrepant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pymc_abi.core.seeds import seed_int

__all__ = ["MisspecificationResult", "check_misspecification", "plot_misspecification"]


@dataclass
class MisspecificationResult:
    """Outcome of :func:`check_misspecification`.

    Attributes
    ----------
    mmd : float
        Squared MMD between the observed embedding(s) and the reference simulations.
    p_value : float
        Fraction of null simulations (plus one) at least as discrepant.
    null : ndarray
        Squared MMD of each null simulation.
    observed_embedding, reference_embedding : ndarray
        Summary-network embeddings of the observed data and of the reference simulations.
    """

    mmd: float
    p_value: float
    null: np.ndarray
    observed_embedding: np.ndarray
    reference_embedding: np.ndarray

    @property
    def misspecified(self) -> bool:
        """True when ``p_value < 0.05``."""
        return self.p_value < 0.05

    def __repr__(self) -> str:
        return (
            f"MisspecificationResult(mmd={self.mmd:.4g}, p_value={self.p_value:.3g}, "
            f"null simulations={len(self.null)})"
        )


def _gaussian_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * bandwidth**2))


def _mmd2(obs: np.ndarray, ref: np.ndarray, k_ref_mean: float, bandwidth: float) -> float:
    k_oo = _gaussian_kernel(obs, obs, bandwidth).mean()
    k_or = _gaussian_kernel(obs, ref, bandwidth).mean()
    return float(k_oo + k_ref_mean - 2 * k_or)


def _embed(amortizer, datasets: list[dict[str, np.ndarray]], chunk: int = 1024) -> np.ndarray:
    parts = [amortizer.embed(datasets[i : i + chunk]) for i in range(0, len(datasets), chunk)]
    return np.concatenate(parts)


def check_misspecification(
    amortizer,
    observed: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    *,
    data: Mapping[str, Any] | None = None,
    num_simulations: int = 1000,
    num_null: int = 500,
    random_seed: int | None = None,
) -> MisspecificationResult:
    """Test whether observed data look like simulations from the model.

    Parameters
    ----------
    amortizer : Amortizer
        A trained amortizer; its summary network defines the embedding.
    observed : dict or list of dict, optional
        One dataset (or several, tested together); ``None`` uses the model's observed data.
    data : dict, optional
        Per-dataset covariates, as in :meth:`Amortizer.sample`.
    num_simulations : int, default 1000
        Reference simulations from the model.
    num_null : int, default 500
        Further simulations, each scored as if observed, for the null distribution.
    random_seed : int, optional

    Returns
    -------
    MisspecificationResult
        ``mmd``, ``p_value`` (small: the data are unlike the model's simulations),
        the null distribution and the embeddings; plot it with
        :func:`plot_misspecification`.

    Examples
    --------
    >>> result = abi.check_misspecification(amortizer, {"y": y})  # doctest: +SKIP
    >>> result.p_value  # doctest: +SKIP
    0.62
    """
    spec = amortizer.data_spec
    datasets, _ = spec.datasets(observed, data)
    total = num_simulations + num_null
    # simulate like the observed data: its sizes and covariates
    first = datasets[0]
    fixed = {c: np.broadcast_to(first[c], (total, *np.shape(first[c]))) for c in spec.covariates}
    sims = spec.simulate(
        total, seed_int(random_seed), dim_lengths=spec.dim_lengths_of(first), covariates=fixed
    )
    simulated = spec.unstack(sims.values)
    embedding = _embed(amortizer, simulated)
    reference, null_points = embedding[:num_simulations], embedding[num_simulations:]
    observed_embedding = _embed(amortizer, datasets)

    sub = reference[: min(num_simulations, 500)]
    distances = np.sqrt(((sub[:, None] - sub[None]) ** 2).sum(-1))
    bandwidth = float(np.median(distances[np.triu_indices(len(sub), 1)])) or 1.0
    k_ref = _gaussian_kernel(reference, reference, bandwidth)
    m = len(reference)
    k_ref_mean = float((k_ref.sum() - np.trace(k_ref)) / (m * (m - 1)))

    mmd = _mmd2(observed_embedding, reference, k_ref_mean, bandwidth)
    if len(datasets) == 1:
        null = np.array([_mmd2(p[None], reference, k_ref_mean, bandwidth) for p in null_points])
    else:  # as many null datasets per score as observed ones
        k = len(datasets)
        groups = [null_points[i : i + k] for i in range(0, len(null_points) - k + 1, k)]
        null = np.array([_mmd2(g, reference, k_ref_mean, bandwidth) for g in groups])
    p_value = float((1 + np.sum(null >= mmd)) / (1 + len(null)))
    return MisspecificationResult(mmd, p_value, null, observed_embedding, reference)


def plot_misspecification(result: MisspecificationResult, *, ax=None):
    """Histogram of the null MMD distribution with the observed value marked.

    Parameters
    ----------
    result : MisspecificationResult
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(result.null, bins=30, color="C0", alpha=0.6, label="simulations from the model")
    ax.axvline(result.mmd, color="C3", lw=2, label=f"observed (p = {result.p_value:.3f})")
    ax.set_xlabel("squared MMD of summary embeddings")
    ax.set_ylabel("count")
    ax.legend()
    return ax
