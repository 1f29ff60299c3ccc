"""The networks of an amortizer as one module: standardization, summaries, the flow.

Torch only: it is built from the summary inputs a :class:`~pymc_abi.data.spec.DataSpec` plans and
from a :class:`~pymc_abi.NetworkConfig`, and never sees the model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from pymc_abi.core.config import NetworkConfig
from pymc_abi.model.preconditioner import KEYS
from pymc_abi.networks import (
    FusionSummary,
    InferenceNetwork,
    Standardize,
    build_inference_network,
    build_summary_network,
)

__all__ = ["PosteriorNetwork", "build_summaries"]


def build_summaries(
    inputs,
    pilot: Mapping[str, np.ndarray],
    config: NetworkConfig,
    summary_features: int,
) -> tuple[dict[str, int], dict[str, nn.Module]]:
    """One untrained summary network per summary input, sized on one ``pilot`` dataset.

    Shared by every network that summarizes datasets (posteriors, model comparison).

    Parameters
    ----------
    inputs : sequence of SummaryInput
        What feeds each summary network, as a :class:`~pymc_abi.data.spec.DataSpec` plans it.
    pilot : dict of str to ndarray
        One dataset (leading axis 1) at the smallest sizes.
    config : NetworkConfig
        Its ``summary_network`` (a module is used as it is; otherwise each input gets the
        network of its planned kind), and the options of time-series summaries
        (``recurrent_steps``, ``full_resolution_layers``, ``time_series_features``).
    summary_features : int
        Output size of each summary (the identity keeps its input size).

    Returns
    -------
    sizes : dict of str to int
        Features per input (the last axis of a set or sequence, else the size), for
        standardization.
    nets : dict of str to nn.Module
    """
    nets, sizes = {}, {}
    choice = config.summary_network
    for inp in inputs:
        in_shape = inp.assemble(pilot, 1).shape[1:]
        sizes[inp.name] = in_shape[-1] if inp.sequence else int(np.prod(in_shape))
        pick = choice.get(inp.name) if isinstance(choice, Mapping) else choice
        if isinstance(pick, nn.Module):
            nets[inp.name] = build_summary_network(pick, in_shape)
            continue
        options = {"hidden_features": 64, "normalize": True} if inp.kind == "deepset" else {}
        if inp.kind == "time_series":
            options["hidden_features"] = config.time_series_width(summary_features)
            if config.recurrent_steps is not None:
                options["recurrent_steps"] = config.recurrent_steps
                options["full_resolution_layers"] = config.full_resolution_layers
        nets[inp.name] = build_summary_network(
            inp.kind, in_shape, None if inp.kind == "identity" else summary_features, **options
        )
    return sizes, nets


class PosteriorNetwork(nn.Module):
    """Standardization, summary network(s) and inference network, as one module.

    Parameters
    ----------
    features : dict of str to int
        Features per summary input (the last axis of a set or sequence, else the size).
    summaries : dict of str to nn.Module
        One summary network per input.
    inference : InferenceNetwork
    summary_features : int
        Output size of the fusion of several summaries.
    ndim : int
        Number of parameters.
    preconditioned : bool, default False
        Whether the flow learns each posterior relative to its dataset's affine map
        :math:`z = m + S u` (the inputs then hold the maps under
        :data:`~pymc_abi.model.preconditioner.KEYS`; the flow's context gets the centre and log
        widths of the map). Draws and densities are those of :math:`z` either way.
    """

    def __init__(
        self,
        features: dict[str, int],
        summaries: dict[str, nn.Module],
        inference: InferenceNetwork,
        summary_features: int,
        ndim: int,
        preconditioned: bool = False,
    ):
        super().__init__()
        self.preconditioned = bool(preconditioned)
        # the centre and log widths of each dataset's map, as context
        self.map_std = Standardize(2 * ndim, robust=True) if preconditioned else None
        self.names = tuple(features)
        # robust location and scale; heavy-tailed features squashed (chosen on the pilot)
        self.theta_std = Standardize(ndim, robust=True, squash="auto")
        self.data_std = nn.ModuleList(
            Standardize(features[n], robust=True, squash="auto") for n in self.names
        )
        if len(self.names) == 1:
            self.summary = summaries[self.names[0]]
        else:
            self.summary = FusionSummary(summaries, summary_features)
        self.inference = inference

    @classmethod
    def build(cls, inputs, pilot: Mapping[str, np.ndarray], config: NetworkConfig, ndim: int):
        """Untrained networks for ``inputs`` (SummaryInput), sized on one ``pilot`` dataset."""
        summary_features = config.summary_width("posterior", ndim)
        sizes, nets = build_summaries(inputs, pilot, config, summary_features)
        context = next(iter(nets.values())).output_features if len(nets) == 1 else summary_features
        preconditioned = config.preconditioner is not None
        inference = build_inference_network(
            config.inference_network,
            ndim,
            context + (2 * ndim if preconditioned else 0),
            **config.flow_options(),
        )
        return cls(sizes, nets, inference, summary_features, ndim, preconditioned)

    def fit_standardization(self, theta: torch.Tensor, data: Mapping[str, torch.Tensor]) -> None:
        """Standardization statistics from pilot simulations."""
        self.theta_std.fit(self.to_flow(theta, data))
        for name, std in zip(self.names, self.data_std):
            std.fit(data[name])
        if self.map_std is not None:
            self.map_std.fit(_map_features(data))

    def context(self, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The flow's context: the summaries of the data (and the maps' features)."""
        std = {n: s(data[n]) for n, s in zip(self.names, self.data_std)}
        context = self.summary(std[self.names[0]] if len(self.names) == 1 else std)
        if self.map_std is None:
            return context
        return torch.cat([context, self.map_std(_map_features(data))], dim=-1)

    def to_flow(self, theta: torch.Tensor, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Parameters ``theta`` (B, D) in the flow's space, float32: ``u = S^{-1} (z - m)``
        with each dataset's map where the network is preconditioned, else ``theta``."""
        if not self.preconditioned:
            return theta.float()
        centred = theta.double() - data[KEYS[0]]
        return (data[KEYS[2]] @ centred.unsqueeze(-1)).squeeze(-1).float()

    def loss(self, batch) -> torch.Tensor:
        theta, data = batch
        return self.inference.loss(self.theta_std(self.to_flow(theta, data)), self.context(data))

    def maps(self, data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """The datasets' affine maps in ``data`` (None where not preconditioned)."""
        return {k: data[k] for k in KEYS} if self.preconditioned else None

    def sample_and_log_prob(
        self, n: int, context: torch.Tensor, maps, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws per dataset (n, K, D) and their log densities (n, K), for the
        contexts (K, C) and maps (:meth:`maps`) of ``K`` datasets; float64 where
        preconditioned (the map's centre needs it), else float32."""
        z_std, log_q = self.inference.sample_and_log_prob(n, context, generator=generator)
        u = self.theta_std.inverse(z_std)
        log_q = log_q + self.theta_std.log_abs_det_jacobian(u)
        if maps is None:
            return u, log_q
        theta = maps[KEYS[0]] + (maps[KEYS[1]] @ u.double().unsqueeze(-1)).squeeze(-1)
        return theta, log_q.double() - maps[KEYS[3]]

    def log_prob(self, theta: torch.Tensor, context: torch.Tensor, maps) -> torch.Tensor:
        """Log density of draws ``theta`` (N, D) given contexts (N, C) and maps
        (:meth:`maps`, leading axis N or 1)."""
        u = self.to_flow(theta, maps or {})
        log_q = self.inference.log_prob(self.theta_std(u), context)
        log_q = log_q + self.theta_std.log_abs_det_jacobian(u)
        return log_q if maps is None else log_q.double() - maps[KEYS[3]]


def _map_features(data: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Each map's centre and the log widths of its scale (B, 2D), float32."""
    scale = data[KEYS[1]]
    log_width = 0.5 * torch.log((scale**2).sum(dim=-1))
    return torch.cat([data[KEYS[0]], log_width], dim=-1).float()
