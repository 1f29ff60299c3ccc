r"""Standardization of parameters and data: robust location and scale, and a squashing
transform for heavy tails, with its log-Jacobian.

A model's prior predictive can be anything: a Student-t likelihood whose degrees of
freedom come from the prior draws values of :math:`10^{14}` now and then, and a mean/SD
standardization fitted to such draws maps every ordinary dataset to about zero. The
statistics here are robust (median and interquartile range), and features whose
standardized pilot values have heavy tails are squashed by :math:`\operatorname{asinh}`,
which is the identity near zero and a logarithm far out. Both are bijections, so nothing
is lost, and the log-Jacobian is exact, so densities of parameters stay exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Standardize"]

# the largest |u| of standardized pilot values above which a feature is heavy-tailed: of
# 100,000 values, about 4.5 for a normal, 15 for an exponential, 60 and more for a
# Student-t with 4 degrees of freedom, and anything for a prior predictive that mixes
# scales (a Student-t whose degrees of freedom come from the prior reaches 1e14)
HEAVY_TAIL = 20.0
#: the interquartile range of a standard normal: IQR / 1.349 estimates its SD
IQR_NORMAL = 1.3489795


class Standardize(nn.Module):
    r"""Per-feature standardization, affine or squashed.

    .. math::

        u = (x - \mu) / \sigma, \qquad
        y = \begin{cases} \operatorname{asinh}(u) & \text{squashed features} \\
                          u & \text{otherwise.} \end{cases}

    ``mean`` :math:`\mu`, ``std`` :math:`\sigma` and ``squash`` (1 for squashed features,
    0 for affine ones) are buffers of the feature shape ``shape``: they follow
    :meth:`~torch.nn.Module.to` and are saved in the :meth:`~torch.nn.Module.state_dict`.
    Inputs have shape ``(*, *shape)``; :meth:`fit` reduces over all leading axes ``*`` and
    keeps the trailing ``shape``. For example, parameters ``(B, D)`` use ``shape=(D,)``;
    sets ``(B, N, F)`` standardized per feature use ``shape=(F,)``; ``shape=()`` uses one
    location and scale for all entries. Before :meth:`fit`, the map is the identity.

    The log-density of :math:`x` follows from that of :math:`y` by the change of
    variables,

    .. math:: \log p_x(x) = \log p_y(y) - \sum_i \log \sigma_i
        - \tfrac12 \sum_{i\ \text{squashed}} \log(1 + u_i^2).

    Parameters
    ----------
    shape : int or sequence of int
        Feature shape that is kept (not reduced over).
    robust : bool, default False
        Fit the location and scale by the median and the interquartile range (divided by
        1.349, the SD of a normal) instead of the mean and the SD.
    squash : bool or "auto", default False
        Squash every feature (``True``), none (``False``), or those whose standardized
        values fitted on have heavy tails (``"auto"``: the largest ``|u|`` above 20).

    Examples
    --------
    >>> theta = 3.0 + 2.0 * torch.randn(1000, 2)
    >>> standardize = Standardize(2).fit(theta)
    >>> z = standardize(theta)
    >>> torch.allclose(standardize.inverse(z), theta, atol=1e-5)
    True
    >>> bool(z.mean(dim=0).abs().max() < 1e-5)
    True
    >>> heavy = torch.distributions.StudentT(1.0).sample((5000, 1))
    >>> Standardize(1, robust=True, squash="auto").fit(heavy).squash.tolist()
    [1.0]
    """

    mean: Tensor
    std: Tensor
    squash: Tensor

    def __init__(
        self,
        shape: int | Sequence[int],
        *,
        robust: bool = False,
        squash: bool | str = False,
    ) -> None:
        super().__init__()
        if squash not in (True, False, "auto"):
            raise ValueError(f"squash must be True, False or 'auto', got {squash!r}")
        self.shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        self.robust = bool(robust)
        self.squash_rule = squash
        self.register_buffer("mean", torch.zeros(self.shape))
        self.register_buffer("std", torch.ones(self.shape))
        self.register_buffer("squash", torch.full(self.shape, float(squash is True)))

    def extra_repr(self) -> str:
        return f"shape={self.shape}, robust={self.robust}, squash={self.squash_rule!r}"

    @torch.no_grad()
    def fit(self, x: Tensor) -> Standardize:
        r"""Fit location, scale (and which features to squash) to a sample, in place.

        Statistics are computed in double precision over all leading axes, ignoring
        non-finite values. A degenerate scale (zero, or below the floating-point
        resolution of the location: a constant feature) becomes 1; a robust scale of zero
        (more than half the values tied, as in sparse counts) falls back to the SD.

        Parameters
        ----------
        x : Tensor
            Sample of shape ``(*, *shape)`` with at least one leading entry.

        Returns
        -------
        Standardize
            ``self``.

        Examples
        --------
        >>> x = torch.stack([torch.randn(500), torch.full((500,), 7.0)], dim=-1)
        >>> standardize = Standardize(2).fit(x)
        >>> standardize.mean[1].item(), standardize.std[1].item()
        (7.0, 1.0)
        """
        x = self._check(x)
        flat = x.reshape(-1, *self.shape).to(torch.float64)
        if flat.shape[0] == 0:
            raise ValueError("cannot fit Standardize on an empty sample")
        finite = torch.isfinite(flat)
        clean = torch.where(finite, flat, torch.nan)
        mean = torch.nanmean(clean, dim=0)
        std = torch.sqrt(torch.nanmean((clean - mean) ** 2, dim=0))
        # quantiles of at most ~1M rows (torch's quantile takes at most 16M elements)
        sample = clean[:: max(1, clean.shape[0] // 2**20)]
        if self.robust:
            q1, median, q3 = torch.nanquantile(
                sample, torch.tensor([0.25, 0.5, 0.75], dtype=clean.dtype), dim=0
            )
            iqr = (q3 - q1) / IQR_NORMAL
            mean = median
            std = torch.where(iqr > 0, iqr, std)
        mean = torch.where(torch.isfinite(mean), mean, 0.0)
        resolution = torch.finfo(x.dtype).eps * mean.abs() if x.is_floating_point() else 0.0
        degenerate = ~torch.isfinite(std) | (std <= resolution)
        std = torch.where(degenerate, 1.0, std)
        if self.squash_rule == "auto":
            u = ((clean - mean) / std).abs()
            tail = torch.where(torch.isnan(u), 0.0, u).amax(dim=0)
            squash = (tail > HEAVY_TAIL) & ~degenerate
        else:
            squash = torch.full_like(mean, float(self.squash_rule is True), dtype=torch.bool)
        self.mean.copy_(mean)
        self.std.copy_(std)
        self.squash.copy_(squash.to(self.squash.dtype))
        return self

    def forward(self, x: Tensor) -> Tensor:
        r"""Standardize: :math:`y = u` or :math:`\operatorname{asinh}(u)`,
        :math:`u = (x - \mu) / \sigma`.

        Parameters
        ----------
        x : Tensor
            Shape ``(*, *shape)``.

        Returns
        -------
        Tensor
            Same shape as ``x``.

        Examples
        --------
        >>> Standardize(3)(torch.ones(4, 3)).shape
        torch.Size([4, 3])
        """
        u = (self._check(x) - self.mean) / self.std
        return torch.where(self.squash > 0, torch.asinh(u), u)

    def inverse(self, y: Tensor) -> Tensor:
        r"""Undo the standardization: :math:`x = \mu + \sigma u`, :math:`u = y` or
        :math:`\sinh(y)`.

        Parameters
        ----------
        y : Tensor
            Shape ``(*, *shape)``, e.g. flow samples ``(n, B, D)``.

        Returns
        -------
        Tensor
            Same shape as ``y``.

        Examples
        --------
        >>> standardize = Standardize(2).fit(torch.randn(100, 2))
        >>> standardize.inverse(torch.zeros(10, 4, 2)).shape
        torch.Size([10, 4, 2])
        """
        y = self._check(y)
        u = torch.where(self.squash > 0, torch.sinh(y), y)
        return self.mean + self.std * u

    def log_abs_det_jacobian(self, x: Tensor | None = None) -> Tensor:
        r"""Log-absolute-determinant of the Jacobian of :meth:`forward`, per event.

        .. math:: \log \left| \det \frac{\partial y}{\partial x} \right|
            = -\sum_i \log \sigma_i - \tfrac12 \sum_{i\ \text{squashed}} \log(1 + u_i^2)

        so that :math:`\log p_x(x) = \log p_y(y) + \text{this}`.

        Parameters
        ----------
        x : Tensor, optional
            Points ``(*, *shape)``; needed when features are squashed (the Jacobian then
            depends on ``x``). Without it, the affine part alone (a scalar).

        Returns
        -------
        Tensor
            Shape ``(*,)``, or a scalar without ``x``.

        Examples
        --------
        >>> standardize = Standardize(2)
        >>> standardize.std.fill_(2.0)
        tensor([2., 2.])
        >>> standardize.log_abs_det_jacobian()
        tensor(-1.3863)
        """
        affine = -self.std.log().sum()
        if x is None:
            if bool((self.squash > 0).any()):
                raise ValueError("squashed features: give x, the Jacobian depends on it")
            return affine
        x = self._check(x)
        u = (x - self.mean) / self.std
        squashed = torch.where(self.squash > 0, -0.5 * torch.log1p(u.square()), 0.0)
        dims = tuple(range(x.ndim - len(self.shape), x.ndim))
        return affine + (squashed.sum(dim=dims) if dims else squashed)

    def _check(self, x: Tensor) -> Tensor:
        ndim = len(self.shape)
        if x.ndim < ndim or tuple(x.shape[x.ndim - ndim :]) != self.shape:
            raise ValueError(
                f"Standardize expects trailing shape {self.shape}, got {tuple(x.shape)}"
            )
        return x
