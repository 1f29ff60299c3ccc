r"""Affine standardization of parameters and data, with its log-Jacobian."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Standardize"]


class Standardize(nn.Module):
    r"""Per-feature affine standardization :math:`y = (x - \mu) / \sigma`.

    ``mean`` :math:`\mu` and ``std`` :math:`\sigma` are buffers of the feature shape
    ``shape``: they follow :meth:`~torch.nn.Module.to` and are saved in the
    :meth:`~torch.nn.Module.state_dict`. Inputs have shape ``(*, *shape)``; :meth:`fit`
    reduces over all leading axes ``*`` and keeps the trailing ``shape``. For example,
    parameters ``(B, D)`` use ``shape=(D,)``; sets ``(B, N, F)`` standardized per
    feature use ``shape=(F,)`` (reducing over ``B`` and ``N``); ``shape=()`` uses one
    mean and one standard deviation for all entries. Before :meth:`fit`, the map is
    the identity.

    The log-density of :math:`x` follows from that of :math:`y` by the change of
    variables, with :math:`d = \prod \mathrm{shape}` entries per event,

    .. math:: \log p_x(x) = \log p_y\big((x - \mu) / \sigma\big) - \sum_{i=1}^d \log \sigma_i.

    Parameters
    ----------
    shape : int or sequence of int
        Feature shape that is kept (not reduced over).

    Examples
    --------
    >>> theta = 3.0 + 2.0 * torch.randn(1000, 2)
    >>> standardize = Standardize(2).fit(theta)
    >>> z = standardize(theta)
    >>> torch.allclose(standardize.inverse(z), theta, atol=1e-5)
    True
    >>> bool(z.mean(dim=0).abs().max() < 1e-5)
    True
    """

    mean: Tensor
    std: Tensor

    def __init__(self, shape: int | Sequence[int]) -> None:
        super().__init__()
        self.shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        self.register_buffer("mean", torch.zeros(self.shape))
        self.register_buffer("std", torch.ones(self.shape))

    def extra_repr(self) -> str:
        return f"shape={self.shape}"

    @torch.no_grad()
    def fit(self, x: Tensor) -> Standardize:
        r"""Set ``mean`` and ``std`` to the statistics of a sample, in place.

        Statistics are computed in double precision over all leading axes. A
        non-finite mean is replaced by 0; a non-finite or degenerate standard deviation
        (zero, or below the floating-point resolution of its mean, i.e. a constant
        feature) by 1.

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
        mean = flat.mean(dim=0)
        std = flat.std(dim=0, correction=0)
        mean = torch.where(torch.isfinite(mean), mean, 0.0)
        resolution = torch.finfo(x.dtype).eps * mean.abs() if x.is_floating_point() else 0.0
        degenerate = ~torch.isfinite(std) | (std <= resolution)
        std = torch.where(degenerate, 1.0, std)
        self.mean.copy_(mean)
        self.std.copy_(std)
        return self

    def forward(self, x: Tensor) -> Tensor:
        r"""Standardize: :math:`y = (x - \mu) / \sigma`.

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
        return (self._check(x) - self.mean) / self.std

    def inverse(self, y: Tensor) -> Tensor:
        r"""Undo the standardization: :math:`x = \mu + \sigma y`.

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
        return self.mean + self.std * self._check(y)

    def log_abs_det_jacobian(self) -> Tensor:
        r"""Log-absolute-determinant of the Jacobian of :meth:`forward` for one event.

        .. math:: \log \left| \det \frac{\partial y}{\partial x} \right|
            = -\sum_{i=1}^d \log \sigma_i

        so that :math:`\log p_x(x) = \log p_y(y) + \text{this}`.

        Returns
        -------
        Tensor
            Scalar.

        Examples
        --------
        >>> standardize = Standardize(2)
        >>> standardize.std.fill_(2.0)
        tensor([2., 2.])
        >>> standardize.log_abs_det_jacobian()
        tensor(-1.3863)
        """
        return -self.std.log().sum()

    def _check(self, x: Tensor) -> Tensor:
        ndim = len(self.shape)
        if x.ndim < ndim or tuple(x.shape[x.ndim - ndim :]) != self.shape:
            raise ValueError(
                f"Standardize expects trailing shape {self.shape}, got {tuple(x.shape)}"
            )
        return x
