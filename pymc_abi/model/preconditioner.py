r"""Likelihood-informed preconditioning: a Laplace fit of every dataset, batched.

On informative data (many rows, small noise, a covariate far from zero) a posterior is
often a thousand times narrower than the prior. A flow trained on the prior's
simulations must then resolve a tiny region of its parameter space from a float32 summary
of the data, and it does not: its draws stay tens of times too wide. The model's exact
log density knows where that region is. For each dataset :math:`y`, a few damped Newton
steps on :math:`\log p(z, y)` (unconstrained :math:`z`) from the model's initial point give
a centre :math:`m(y)`, and the negative Hessian there :math:`A(y)` a scale
:math:`S(y) = A^{-1/2}` (its eigenvalues taken in absolute value, floored). The flow then
learns the distribution of

.. math:: u = S(y)^{-1} (z - m(y)),

near a standard normal when the posterior is near its Laplace approximation, whatever the
posterior's width, and draws are :math:`z = m + S u` with
:math:`\log q(z) = \log q(u) - \log\lvert\det S\rvert`.

The map is a deterministic function of the data (same start, same steps), computed the same
way for training simulations and for the data a user brings: the amortized posterior stays
exact in principle whether or not Newton found the mode. A dataset whose fit found no mode
keeps the identity map (:math:`m` the initial point, :math:`S = I`), as if not
preconditioned: its initial point has no density, its Hessian is not finite, or the steps
ran out or stalled far from a mode (a funnel, whose density grows without bound down its
neck: there the centre and scale would be wherever the steps stopped, and the flow would
have to learn draws a hundred thousand map widths away).

The Hessian is taken by central differences of the exact gradient, all datasets and
directions in one batched call (:meth:`pymc_abi.JointLogp.value_and_grad_rows`), with steps
scaled to each direction's conditional width from the previous Newton step.

This module speaks numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

__all__ = ["KEYS", "LaplaceMaps", "batched_laplace", "laplace_maps"]

#: the keys under which :meth:`pymc_abi.data.spec.DataSpec.network_inputs` passes the maps on
KEYS = ("laplace_mean", "laplace_scale", "laplace_inverse", "laplace_log_det")
#: Newton steps at most (most datasets stop after a few)
ITERATIONS = 40
#: step halvings tried by the line search, all in one batched call
HALVINGS = 12
#: stop once the Newton decrement (about twice the log density still to gain) is below this
DECREMENT = 1e-8
#: where no step gains any more, the fit counts as converged only if the decrement is below
#: this (the mode is then within the arithmetic's reach); above it, the steps are stuck
#: (a funnel's neck, where the density grows without bound) and the map is the identity
STALLED = 1e-3
#: datasets per batched call (bounds the rows of tiled data held at once)
CHUNK = 512

#: ``value_and_grad(z, rows)``: log density (R,) and gradient (R, D) of draws ``z`` (R, D),
#: row ``r`` given dataset ``rows[r]``
RowsValueAndGrad = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _finite_rows(f: np.ndarray, g: np.ndarray) -> np.ndarray:
    return np.isfinite(f) & np.all(np.isfinite(g), axis=1)


def _neg_hessian(value_and_grad: RowsValueAndGrad, z, rows, h, g=None) -> np.ndarray:
    """``-∇² log p`` at ``z`` (n, D) by differences of the gradient with steps ``h`` (n, D):
    forward differences from the gradient ``g`` at ``z`` where it is given (D rows a
    dataset), else central ones (2D rows)."""
    n, d = z.shape
    shifts = h[:, :, None] * np.eye(d)[None]  # [b, j, :] = h_bj e_j
    if g is None:
        points = np.concatenate([z[:, None] + shifts, z[:, None] - shifts], axis=1)
    else:
        points = z[:, None] + shifts
    k = points.shape[1]
    _, gp = value_and_grad(points.reshape(n * k, d), np.repeat(rows, k))
    gp = gp.reshape(n, k, d)
    if g is None:
        hess = (gp[:, :d] - gp[:, d:]) / (2 * h[:, :, None])  # [b, j, :] = d grad / d z_j
    else:
        hess = (gp - g[:, None, :]) / h[:, :, None]
    return -0.5 * (hess + hess.transpose(0, 2, 1))


def _eigen(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues in absolute value, floored, and eigenvectors of symmetric ``a``."""
    w, v = np.linalg.eigh(a)
    w = np.abs(w)
    floor = np.maximum(1e-10 * w.max(axis=-1, keepdims=True), 1e-10)
    return np.maximum(w, floor), v


def _steps(a: np.ndarray) -> np.ndarray:
    """Difference steps: a thousandth of each direction's conditional width."""
    diag = np.abs(np.diagonal(a, axis1=1, axis2=2))
    return np.clip(1e-3 / np.sqrt(np.maximum(diag, 1e-12)), 1e-9, 1e-3)


class LaplaceMaps(dict):
    """The affine maps of a batch of datasets, under the names of :data:`KEYS`:
    ``laplace_mean`` (B, D), ``laplace_scale`` :math:`S` and ``laplace_inverse``
    :math:`S^{-1}` (B, D, D), ``laplace_log_det`` :math:`\\log\\lvert\\det S\\rvert` (B,);
    ``converged`` (B,) says which fits stopped at a mode."""

    converged: np.ndarray


@np.errstate(all="ignore")  # trial steps may overflow: their densities are refused
def batched_laplace(
    value_and_grad: RowsValueAndGrad, start: np.ndarray, *, iterations: int = ITERATIONS
) -> LaplaceMaps:
    """Damped Newton on many datasets at once, from ``start`` (B, D).

    Parameters
    ----------
    value_and_grad : callable
        ``value_and_grad(z, rows)``: the log density (R,) and its gradient (R, D) at draws
        ``z`` (R, D), row ``r`` given dataset ``rows[r]`` (an index into the batch).
    start : ndarray, shape (B, D)
        Where each dataset's steps start (the same for every dataset, so the result is a
        function of the data alone).
    iterations : int
        Newton steps at most.

    Returns
    -------
    LaplaceMaps
    """
    b, d = start.shape
    everyone = np.arange(b)
    z = np.array(start, dtype=np.float64)
    f, g = value_and_grad(z, everyone)
    ok = _finite_rows(f, g)
    active = ok.copy()
    converged = np.zeros(b, dtype=bool)
    h = np.full((b, d), 1e-5)
    alphas = 0.5 ** np.arange(HALVINGS)
    for _ in range(iterations):
        idx = np.flatnonzero(active)
        if not idx.size:
            break
        idx, a = _finite_hessians(value_and_grad, z, idx, h, g)
        active &= np.isin(everyone, idx)
        if not idx.size:
            break
        h[idx] = _steps(a)
        w, v = _eigen(a)
        step = np.einsum("bij,bj->bi", v, np.einsum("bji,bj->bi", v, g[idx]) / w)
        decrement = np.einsum("bi,bi->b", g[idx], step)
        done = decrement < DECREMENT
        converged[idx[done]] = True
        active[idx[done]] = False
        idx, step, decrement = idx[~done], step[~done], decrement[~done]
        # the full Newton step for every dataset first; the halvings only where it fails
        for trials in (alphas[:1], alphas[1:]):
            if not idx.size:
                break
            found = _line_search(value_and_grad, z, f, g, idx, step, decrement, trials)
            idx, step, decrement = idx[~found], step[~found], decrement[~found]
        # no step gains: as close to the mode as the arithmetic allows, or stuck
        converged[idx[decrement < STALLED]] = True
        active[idx] = False

    # a fit that found no mode (the iterations ran out: a density without a maximum, as in
    # a funnel, or one far away) keeps the identity map, as if not preconditioned: its
    # centre and scale would otherwise be wherever the steps stopped
    converged &= ok
    mean = np.where(converged[:, None], z, start)
    scale = np.tile(np.eye(d), (b, 1, 1))
    inverse = scale.copy()
    log_det = np.zeros(b)
    idx = np.flatnonzero(converged)
    if idx.size:
        idx, a = _finite_hessians(value_and_grad, z, idx, h)  # central differences
        w, v = _eigen(a)
        scale[idx] = np.einsum("bij,bj,bkj->bik", v, w**-0.5, v)
        inverse[idx] = np.einsum("bij,bj,bkj->bik", v, w**0.5, v)
        log_det[idx] = -0.5 * np.log(w).sum(axis=1)
        converged &= np.isin(everyone, idx)
        mean[~converged] = start[~converged]  # no finite Hessian at the mode
    maps = LaplaceMaps(
        laplace_mean=mean, laplace_scale=scale, laplace_inverse=inverse, laplace_log_det=log_det
    )
    maps.converged = converged
    return maps


def _finite_hessians(value_and_grad, z, idx, h, g=None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_neg_hessian` of datasets ``idx`` (forward differences from their gradients
    ``g`` where given), keeping only the datasets whose Hessian is finite."""
    a = _neg_hessian(value_and_grad, z[idx], idx, h[idx], None if g is None else g[idx])
    good = np.all(np.isfinite(a), axis=(1, 2))
    return idx[good], a[good]


def _line_search(value_and_grad, z, f, g, idx, step, decrement, alphas) -> np.ndarray:
    """Move each dataset ``idx`` to the largest step ``alphas`` that gains enough (Armijo);
    ``z``, ``f``, ``g`` are updated in place. Returns which datasets moved."""
    n, d = step.shape
    k = len(alphas)
    trial = z[idx, None, :] + alphas[None, :, None] * step[:, None, :]
    ft, gt = value_and_grad(trial.reshape(n * k, d), np.repeat(idx, k))
    ft = np.where(_finite_rows(ft, gt), ft, -np.inf).reshape(n, k)
    accept = ft >= f[idx, None] + 1e-4 * alphas[None, :] * decrement[:, None]
    found = accept.any(axis=1)
    first = np.argmax(accept, axis=1)[found]
    moved = idx[found]
    z[moved] = trial[found, first]
    f[moved] = ft[found, first]
    g[moved] = gt.reshape(n, k, d)[found, first]
    return found


def laplace_maps(
    logp,
    start: np.ndarray,
    observed: Mapping[str, np.ndarray],
    covariates: Mapping[str, np.ndarray] | None,
    dim_lengths: Mapping[str, int] | None,
) -> LaplaceMaps:
    """:func:`batched_laplace` for datasets with a leading axis ``B``, in chunks of
    :data:`CHUNK` datasets.

    Parameters
    ----------
    logp : JointLogp
        The model's density (its :meth:`~pymc_abi.JointLogp.value_and_grad_rows`).
    start : ndarray, shape (D,)
        The start of every fit (the model's initial point, unconstrained and flat).
    observed, covariates : dict of str to ndarray
        Each dataset's observed values and per-dataset covariates, leading axis ``B``.
    dim_lengths : dict, optional
        The lengths of the varying dims, shared by the datasets.
    """
    b = len(next(iter(observed.values())))
    parts = []
    for lo in range(0, b, CHUNK):
        obs = {k: np.asarray(v[lo : lo + CHUNK]) for k, v in observed.items()}
        cov = {k: np.asarray(v[lo : lo + CHUNK]) for k, v in (covariates or {}).items()}

        def value_and_grad(z, rows, obs=obs, cov=cov):
            return logp.value_and_grad_rows(
                z,
                {k: v[rows] for k, v in obs.items()},
                data={k: v[rows] for k, v in cov.items()} or None,
                dim_lengths=dim_lengths,
            )

        n = len(next(iter(obs.values())))
        parts.append(batched_laplace(value_and_grad, np.tile(start, (n, 1))))
    maps = LaplaceMaps({k: np.concatenate([p[k] for p in parts]) for k in KEYS})
    maps.converged = np.concatenate([p.converged for p in parts])
    return maps
