r"""The network of a model comparator: standardization, summaries, one logit per model.

Torch only: built from the summary inputs a :class:`~pymc_abi.data.spec.DataSpec` plans and from a
:class:`~pymc_abi.NetworkConfig`, it never sees the models.

A classifier trained by cross-entropy on simulations of :math:`M` models, an equal share
of every batch from each (the uniform prior :math:`\pi_m = 1/M`), minimizes

.. math::

    -\mathbb{E}_{m \sim \pi,\, y \sim p(y \mid m)} \log \operatorname{softmax}(f(y))_m
    = \mathbb{E}_{y}\,\mathrm{KL}\big[p(m \mid y) \,\|\, \operatorname{softmax}(f(y))\big]
    + C,

so at the optimum :math:`\operatorname{softmax}(f(y))_m = p(m \mid y)` under the uniform
prior, and the difference of two logits is the log Bayes factor,
:math:`f_a(y) - f_b(y) = \log p(y \mid a) - \log p(y \mid b)` (Radev et al., 2021,
"Amortized Bayesian model comparison with evidential deep learning"). Any other prior
follows by Bayes' rule without retraining:
:math:`p(m \mid y) \propto \operatorname{softmax}(f(y) / T)_m \, \pi_m`, where the
temperature :math:`T` (1 until calibrated; Guo et al., 2017, "On calibration of modern
neural networks") corrects over- or under-confidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from pymc_abi.core.config import NetworkConfig
from pymc_abi.networks import FusionSummary, Standardize
from pymc_abi.networks.posterior import build_summaries

__all__ = ["ComparisonNetwork", "fit_temperature"]


class ComparisonNetwork(nn.Module):
    """Standardization, summary network(s) and a classifier head, as one module.

    Parameters
    ----------
    features : dict of str to int
        Features per summary input (the last axis of a set or sequence, else the size).
    summaries : dict of str to nn.Module
        One summary network per input.
    summary_features : int
        Output size of the fusion of several summaries.
    num_models : int
        Number of models: the number of logits.
    hidden_features : sequence of int, default (128, 128)
        Hidden layer widths of the classifier head.

    Attributes
    ----------
    log_temperature : torch.Tensor
        A buffer (saved with the weights): the log of the temperature that divides the
        logits, 0 until :func:`fit_temperature` sets it.
    """

    def __init__(
        self,
        features: dict[str, int],
        summaries: dict[str, nn.Module],
        summary_features: int,
        num_models: int,
        hidden_features: Sequence[int] = (128, 128),
    ):
        super().__init__()
        if num_models < 2:
            raise ValueError(f"Model comparison needs at least two models, got {num_models}.")
        self.names = tuple(features)
        self.data_std = nn.ModuleList(
            Standardize(features[n], robust=True, squash="auto") for n in self.names
        )
        if len(self.names) == 1:
            self.summary = summaries[self.names[0]]
        else:
            self.summary = FusionSummary(summaries, summary_features)
        width = self.summary.output_features
        layers: list[nn.Module] = []
        for hidden in hidden_features:
            layers += [nn.Linear(width, int(hidden)), nn.GELU()]
            width = int(hidden)
        layers.append(nn.Linear(width, int(num_models)))
        self.head = nn.Sequential(*layers)
        self.num_models = int(num_models)
        self.register_buffer("log_temperature", torch.zeros(()))

    @classmethod
    def build(
        cls, inputs, pilot: Mapping[str, np.ndarray], config: NetworkConfig, num_models: int
    ) -> ComparisonNetwork:
        """Untrained networks for ``inputs`` (SummaryInput), sized on one ``pilot`` dataset.

        The summaries are chosen as for posteriors (:class:`~pymc_abi.NetworkConfig`'s
        ``summary_network``); ``summary_features`` defaults to 32 and ``hidden_features``
        sizes the classifier head.
        """
        summary_features = config.summary_width("comparison", 0)
        sizes, nets = build_summaries(inputs, pilot, config, summary_features)
        return cls(sizes, nets, summary_features, num_models, config.hidden_features)

    @property
    def temperature(self) -> float:
        return float(self.log_temperature.exp())

    def fit_standardization(self, data: Mapping[str, torch.Tensor]) -> None:
        """Standardization statistics from pilot simulations (of every model)."""
        for name, std in zip(self.names, self.data_std):
            std.fit(data[name])

    def context(self, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        std = {n: s(data[n]) for n, s in zip(self.names, self.data_std)}
        return self.summary(std[self.names[0]] if len(self.names) == 1 else std)

    def logits(self, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Raw logits ``[B, M]``, not divided by the temperature."""
        return self.head(self.context(data))

    def loss(self, batch) -> torch.Tensor:
        """Cross-entropy (nats) of a batch ``(labels [B], inputs)``."""
        labels, data = batch
        return nn.functional.cross_entropy(self.logits(data), labels)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    r"""The temperature :math:`T` that minimizes the held-out cross-entropy of
    :math:`\operatorname{softmax}(\text{logits} / T)`.

    One parameter, so it cannot overfit a few thousand simulations; a bounded scalar
    search over :math:`\log T \in [-3, 3]`.

    Parameters
    ----------
    logits : ndarray, shape (N, M)
    labels : ndarray of int, shape (N,)

    Returns
    -------
    float
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[rows, labels].mean())

    result = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(result.x))
