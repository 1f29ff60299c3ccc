r"""Two-level amortized posteriors: one network for the globals, one shared by all groups.

For a multilevel model whose group parameters are conditionally independent given the
global ones,

.. math::

    q(\theta_g, \theta_{1:J} \mid y) = q_g(\theta_g \mid c(y))
        \prod_{j=1}^J q_l(\theta_j \mid \theta_g, h_j(y_j)),

with :math:`h_j` a summary of group :math:`j`'s data (a set of rows, each observation with
its covariates, pooled by mean and standard deviation of an embedding, with the group's
size and its group-level values) and :math:`c` a summary of the set of group summaries
and of all rows of the dataset (Habermann et al. 2024). One local flow serves every
group, so the networks' size and the cost per group do not grow with the number of
groups; any number of groups, each with any number of rows, can be fit. Torch only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from zuko.nn import MLP

from pymc_abi.networks.inference import build_inference_network
from pymc_abi.networks.standardize import Standardize

__all__ = ["TwoLevelNetwork"]

# rows with at most this many features (observed values and covariates) enter with the
# pairwise products of their centred values
MAX_PRODUCTS = 8


def _segment_moments(h: Tensor, index: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and SD of rows ``h`` ``[B, N, H]`` per group (``index`` ``[N]``), ``[B, J, H]``;
    an empty group gets zeros."""
    b, _, width = h.shape
    n_groups = counts.shape[0]
    total = h.new_zeros(b, n_groups, width).index_add_(1, index, h)
    squares = h.new_zeros(b, n_groups, width).index_add_(1, index, h * h)
    n = counts.clamp(min=1.0)[None, :, None]
    mean = total / n
    var = (squares / n - mean * mean).clamp(min=0.0)
    return mean, torch.sqrt(var + 1e-6)


class TwoLevelNetwork(nn.Module):
    """Standardization, group and global summaries, and the global and local flows.

    Parameters
    ----------
    row_features : int
        Features per row (observed values and covariates); 0 when there are no rows.
    group_features : int
        Values per group (observed or covariates along the group dim); 0 when none.
    global_ndim, local_ndim : int
        Global parameters, and parameters per group.
    inference_network : str
        The flow of both levels (see :func:`~pymc_abi.networks.build_inference_network`).
    summary_features : int
        Size of each group's summary and of the global summary.
    hidden_features : int, default 64
        Width of the summary networks.
    flow_options : dict, optional
        Keyword arguments of the flows (``hidden_features``, ``transforms``).
    """

    def __init__(
        self,
        row_features: int,
        group_features: int,
        global_ndim: int,
        local_ndim: int,
        *,
        inference_network: str = "nsf",
        summary_features: int = 32,
        hidden_features: int = 64,
        flow_options: Mapping | None = None,
    ):
        super().__init__()
        if row_features + group_features < 1:
            raise ValueError("the groups have no data: row_features + group_features < 1")
        width = int(hidden_features)
        self.row_features, self.group_features = int(row_features), int(group_features)
        self.global_ndim, self.local_ndim = int(global_ndim), int(local_ndim)
        self.global_std = Standardize(global_ndim, robust=True, squash="auto")
        self.local_std = Standardize(local_ndim, robust=True, squash="auto")
        group_in = self.group_features
        row_width = 32
        if row_features:
            # rows are many and have few features: a narrow embedding keeps the cost per
            # row low, so that batches can hold many datasets
            # each row enters beside itself centred on its group's mean: within-group
            # contrasts (a slope, a noise scale) then need no product of large numbers,
            # whatever the spread between groups; the group's mean and SD join the pooled
            # statistics
            # with the pairwise products of the centred values (up to MAX_PRODUCTS
            # features): the within-group second moments, which carry a common slope and
            # the noise scale, are then averages of inputs, not products an MLP must learn
            self.row_std = Standardize(row_features, robust=True, squash="auto")
            self._products = row_features <= MAX_PRODUCTS
            row_in = 2 * row_features
            if self._products:
                pairs = torch.triu_indices(row_features, row_features)
                self.register_buffer("_pairs", pairs, persistent=False)
                row_in += pairs.shape[1]
            self.phi = MLP(row_in, row_width, (row_width, row_width), activation=nn.SiLU)
            group_in += 2 * row_width + 1 + 2 * row_features
            # the global summary also pools all rows of the dataset through an embedding of
            # its own: pooled within-group contrasts (a common slope, the noise scale) are
            # then learned for the globals, not squeezed through the groups' summaries,
            # which the local posteriors shape
            self.phi_global = MLP(row_in, row_width, (row_width, row_width), activation=nn.SiLU)
        if group_features:
            self.group_std = Standardize(group_features, robust=True, squash="auto")
        self.group_net = MLP(group_in, summary_features, (width, width), activation=nn.SiLU)
        # the global summary sees each group's summary and its raw pooled statistics (the
        # within-group spread informs global scales, which the local posteriors take as given)
        self.psi = MLP(summary_features + group_in, width, (width, width), activation=nn.SiLU)
        # pooled over groups: mean, SD, the mean weighted by group size (the pooled within-
        # group statistics), log J and, with rows, log N
        self.rho = MLP(
            (3 * width + 2 * row_width + 2) if row_features else (2 * width + 1),
            summary_features,
            (width, width),
            activation=nn.SiLU,
        )
        options = dict(flow_options or {})
        self.global_flow = build_inference_network(
            inference_network, global_ndim, summary_features, **options
        )
        self.local_flow = build_inference_network(
            inference_network, local_ndim, summary_features + global_ndim, **options
        )

    # ------------------------------------------------------------------ standardization
    @torch.no_grad()
    def fit_standardization(self, z_global: Tensor, z_local: Tensor, data: Mapping) -> None:
        """Statistics from pilot simulations: parameters ``[B, Dg]``, ``[B, J, Dl]``."""
        self.global_std.fit(z_global)
        self.local_std.fit(z_local.reshape(-1, self.local_ndim))
        if self.row_features:
            self.row_std.fit(data["rows"].reshape(-1, self.row_features))
        if self.group_features:
            self.group_std.fit(data["groups"].reshape(-1, self.group_features))

    # ------------------------------------------------------------------ summaries
    def summaries(self, data: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The global context ``[B, S]`` and the group summaries ``[B, J, S]``."""
        parts, pooled_rows = [], []
        if self.row_features:
            index, counts = data["index"], data["counts"]
            std_rows = self.row_std(data["rows"])
            location, spread = _segment_moments(std_rows, index, counts)
            centred = std_rows - location[:, index]
            features = [std_rows, centred]
            if self._products:
                features.append(centred[..., self._pairs[0]] * centred[..., self._pairs[1]])
            features = torch.cat(features, dim=-1)
            rows = self.phi(features)
            mean, sd = _segment_moments(rows, index, counts)
            every = self.phi_global(features)
            pooled_rows = [
                every.mean(dim=1),
                torch.sqrt(every.var(dim=1, correction=0) + 1e-6),
            ]
            size = torch.log1p(counts)[None, :, None].expand(mean.shape[0], -1, 1)
            parts += [mean, sd, size, location, torch.log(spread)]
        if self.group_features:
            parts.append(self.group_std(data["groups"]))
        stats = torch.cat(parts, dim=-1)
        h = self.group_net(stats)
        g = self.psi(torch.cat((h, stats), dim=-1))
        b = h.shape[0]
        pooled = [
            g.mean(dim=1),
            torch.sqrt(g.var(dim=1, correction=0) + 1e-6),
            h.new_full((b, 1), math.log(h.shape[1])),
        ]
        if self.row_features:
            counts = data["counts"]
            weights = (counts / counts.sum().clamp(min=1.0))[None, :, None]
            pooled += [(g * weights).sum(dim=1), torch.log1p(counts.sum()).expand(b, 1)]
        return self.rho(torch.cat(pooled + pooled_rows, dim=-1)), h

    def _local_context(self, u_global: Tensor, h: Tensor) -> Tensor:
        """``[rows, J, S + Dg]``: each group's summary beside the (standardized) globals."""
        n_groups = h.shape[-2]
        u = u_global.unsqueeze(-2).expand(*u_global.shape[:-1], n_groups, -1)
        return torch.cat((h.expand(*u.shape[:-1], -1), u), dim=-1)

    # ------------------------------------------------------------------ densities
    def log_prob(self, z_global: Tensor, z_local: Tensor, data: Mapping) -> Tensor:
        """``log q(θ_g, θ_1..J | y)`` of ``[B, Dg]``, ``[B, J, Dl]`` (with the Jacobian of
        the standardization), ``[B]``."""
        context, h = self.summaries(data)
        return self._log_prob(z_global, z_local, context, h)

    def _log_prob(self, z_global, z_local, context, h) -> Tensor:
        lq_global, lq_local = self._log_probs(z_global, z_local, context, h)
        return lq_global + lq_local

    def _log_probs(self, z_global, z_local, context, h) -> tuple[Tensor, Tensor]:
        """``log q`` of the globals and of all groups' locals, ``[B]`` each."""
        b, n_groups, _ = z_local.shape
        u_global = self.global_std(z_global)
        lq = self.global_flow.log_prob(u_global, context)
        lq = lq + self.global_std.log_abs_det_jacobian(z_global)
        u_local = self.local_std(z_local).reshape(b * n_groups, -1)
        ctx = self._local_context(u_global, h).reshape(b * n_groups, -1)
        lql = self.local_flow.log_prob(u_local, ctx)
        lql = lql + self.local_std.log_abs_det_jacobian(z_local.reshape(b * n_groups, -1))
        return lq, lql.reshape(b, n_groups).sum(dim=1)

    def loss(self, batch) -> Tensor:
        """Negative log-likelihood of the simulated parameters per parameter (nats): batches
        of any number of groups weigh alike, and the validation loss of small and large
        designs is on one scale."""
        (z_global, z_local), data = batch
        context, h = self.summaries(data)
        lq_global, lq_local = self._log_probs(z_global, z_local, context, h)
        n_groups = z_local.shape[1]
        return -0.5 * (
            lq_global.mean() / self.global_ndim + lq_local.mean() / (n_groups * self.local_ndim)
        )

    @torch.no_grad()
    def sample_and_log_prob(
        self, n: int, context: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``n`` draws for one dataset (``context`` ``[1, S]``, ``h`` ``[1, J, S]``):
        globals ``[n, Dg]``, locals ``[n, J, Dl]`` and ``log q`` ``[n]``."""
        u_global, lq = self.global_flow.sample_and_log_prob(n, context, generator=generator)
        u_global, lq = u_global[:, 0], lq[:, 0]
        z_global = self.global_std.inverse(u_global)
        lq = lq + self.global_std.log_abs_det_jacobian(z_global)
        z_local, lq_local = self.sample_locals(u_global, h[0], generator)
        return z_global, z_local, lq + lq_local

    @torch.no_grad()
    def sample_locals(
        self, u_global: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Every group's locals ``[n, J, Dl]`` given ``n`` standardized global draws
        ``u_global`` ``[n, Dg]`` and one dataset's group summaries ``h`` ``[J, S]``, with
        their ``log q`` summed over the groups ``[n]``."""
        n, n_groups = u_global.shape[0], h.shape[0]
        ctx = self._local_context(u_global, h).reshape(n * n_groups, -1)
        u_local, lq = self.local_flow.sample_and_log_prob(1, ctx, generator=generator)
        z_local = self.local_std.inverse(u_local[0])
        lq = lq[0] + self.local_std.log_abs_det_jacobian(z_local)
        return z_local.reshape(n, n_groups, -1), lq.reshape(n, n_groups).sum(dim=1)
