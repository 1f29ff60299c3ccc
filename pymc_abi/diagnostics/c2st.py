"""Classifier two-sample test (C2ST), as sbibm uses it to score posterior approximations."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from pymc_abi.core import _compat
from pymc_abi.core.errors import PymcAbiWarning
from pymc_abi.core.seeds import RandomSeed, seed_int

__all__ = ["c2st"]

# above this fraction of repeated draws (NUTS repeats a few, resampling about a third), warn
_MAX_REPEATED = 0.1

Samples = np.ndarray | Mapping[str, np.ndarray] | xr.Dataset | _compat.Result


def c2st(
    samples_a: Samples,
    samples_b: Samples,
    *,
    folds: int = 5,
    var_names: str | Sequence[str] | None = None,
    hidden_features: int | None = None,
    max_epochs: int = 1000,
    batch_size: int = 200,
    random_seed: RandomSeed = None,
) -> float:
    """Classifier two-sample test accuracy between two sets of samples.

    Follows sbibm's ``c2st``: both sets are standardized with the mean and SD of
    ``samples_a``, an MLP classifier (two hidden ReLU layers of ``10 * D`` units, Adam with
    learning rate 1e-3, L2 penalty 1e-4, minibatches of 200, stopped when the training loss
    improves by less than 1e-4 for 10 epochs in a row: scikit-learn's ``MLPClassifier``
    defaults, written in torch) learns to tell them apart, and the accuracy on held-out
    samples is averaged over ``folds`` stratified cross-validation folds. All folds are
    trained at once, as one batched ensemble.

    0.5 means the classifier cannot tell the samples apart; 1.0 means they do not overlap.
    With ``n`` samples per set, accuracy of a classifier that has learned nothing scatters
    around 0.5 by about ``0.5 / sqrt(2 n)``.

    Parameters
    ----------
    samples_a, samples_b : ndarray, dict of ndarray, xarray.Dataset, InferenceData or DataTree
        Arrays of shape ``(n, D)`` (or ``(n,)``); dicts of arrays with a leading sample
        axis; datasets, or results of ``pm.sample`` or ``Amortizer.sample`` (their
        ``posterior`` group), with ``chain`` and ``draw`` dims, which are stacked. Variables are flattened and concatenated in the
        order of ``var_names`` (default: the variables of ``samples_a``), so a
        ``pm.sample`` result and an amortized posterior can be compared directly. The
        larger set is randomly subsampled to the size of the smaller one, so that 0.5 is
        chance level.
    folds : int, default 5
        Number of cross-validation folds.
    var_names : str or list of str, optional
        Variables to compare, for dict, dataset or result inputs.
    hidden_features : int, optional
        Units of each hidden layer; ``10 * D`` by default.
    max_epochs : int, default 1000
    batch_size : int, default 200
    random_seed : int, optional
        Seeds the subsampling, the folds, the initialization and the minibatches.

    Returns
    -------
    float
        Mean held-out classification accuracy.

    Examples
    --------
    >>> import numpy as np, pymc_abi as abi
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(1000, 2)), rng.normal(size=(1000, 2))
    >>> 0.45 < abi.c2st(a, b, random_seed=1) < 0.56
    True
    >>> abi.c2st(a, b + [1.0, 0.0], random_seed=1) > 0.6
    True

    Comparing an amortized posterior with NUTS (``var_names`` picks the free variables)::

        nuts = pm.sample(model=model)
        amortized = amortizer.sample(draws=4000)
        abi.c2st(nuts, amortized, var_names=["mu", "sigma"])
    """
    folds = int(folds)
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}.")
    names = [var_names] if isinstance(var_names, str) else var_names
    a, names = _as_matrix(samples_a, names)
    b, _ = _as_matrix(samples_b, names)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"samples_a has {a.shape[1]} dimensions per sample but samples_b has {b.shape[1]}."
        )
    for label, x in (("samples_a", a), ("samples_b", b)):
        repeated = 1.0 - len(np.unique(x, axis=0)) / max(len(x), 1)
        if repeated > _MAX_REPEATED:
            warnings.warn(
                f"{label} repeats {repeated:.0%} of its draws (importance-resampled draws?). "
                "A classifier tells repeated points apart from fresh ones, so the accuracy is "
                "biased upward. Compare distinct draws: the flow's own "
                "(amortizer.sample(..., importance_sampling=False)) or MCMC's.",
                PymcAbiWarning,
                stacklevel=2,
            )
    rng = np.random.default_rng(seed_int(random_seed))
    n = min(len(a), len(b))
    if n < folds:
        raise ValueError(f"Need at least folds={folds} samples in each set, got {n}.")
    a = a[rng.choice(len(a), n, replace=False)] if len(a) > n else a
    b = b[rng.choice(len(b), n, replace=False)] if len(b) > n else b
    mean, sd = a.mean(axis=0), a.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    x = (np.concatenate([a, b]) - mean) / sd
    y = np.concatenate([np.zeros(n), np.ones(n)])
    # stratified folds: each fold holds the same number of samples of each set
    fold = np.concatenate([rng.permutation(np.arange(n) % folds) for _ in range(2)])
    hidden = int(hidden_features or 10 * x.shape[1])
    torch_seed = int(rng.integers(2**63))
    return _fit_ensemble(x, y, fold, folds, hidden, int(max_epochs), int(batch_size), torch_seed)


def _as_matrix(samples: Samples, names: Sequence[str] | None) -> tuple[np.ndarray, list | None]:
    """Samples as a float array (n, D), and the variable names used (None for arrays)."""
    if _compat.is_result(samples):
        if "posterior" not in _compat.group_names(samples):
            raise ValueError("A result given as samples needs a posterior group.")
        samples = _compat.group(samples, "posterior")
    if isinstance(samples, xr.Dataset):
        names = list(samples.data_vars) if names is None else list(names)
        _check_names(names, list(samples.data_vars))
        columns = []
        for name in names:
            da = samples[name]
            lead = [d for d in ("chain", "draw") if d in da.dims]
            core = [d for d in da.dims if d not in lead]
            values = da.transpose(*lead, *core).values
            columns.append(values.reshape(int(np.prod(values.shape[: len(lead)])), -1))
        return _concat(columns), names
    if isinstance(samples, Mapping):
        names = list(samples) if names is None else list(names)
        _check_names(names, list(samples))
        columns = [np.asarray(samples[k], dtype=float) for k in names]
        return _concat([c.reshape(len(c), -1) for c in columns]), names
    x = np.asarray(samples, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim == 0:
        raise ValueError("Samples must have a leading sample axis.")
    return x.reshape(len(x), -1), names


def _check_names(names: list[str], available: list[str]) -> None:
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(f"Variables {missing} are missing from the samples ({available}).")


def _concat(columns: list[np.ndarray]) -> np.ndarray:
    sizes = {len(c) for c in columns}
    if len(sizes) != 1:
        raise ValueError(f"Variables hold different numbers of samples: {sorted(sizes)}.")
    x = np.concatenate(columns, axis=1).astype(float)
    if not np.isfinite(x).all():
        raise ValueError("Samples hold NaN or inf.")
    return x


def _fit_ensemble(x, y, fold, k, hidden, max_epochs, batch_size, seed) -> float:
    """Train one MLP per fold (batched), return the mean held-out accuracy."""
    alpha, tol, n_iter_no_change = 1e-4, 1e-4, 10
    generator = torch.Generator().manual_seed(seed)
    x_t = torch.as_tensor(x, dtype=torch.float32)
    y_t = torch.as_tensor(y, dtype=torch.float32)
    train = torch.as_tensor(fold[None, :] != np.arange(k)[:, None], dtype=torch.float32)
    n_train = train.sum(dim=1)
    sizes = [x.shape[1], hidden, hidden, 1]
    weights, biases = [], []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = np.sqrt(6.0 / (fan_in + fan_out))  # Glorot uniform, as scikit-learn
        w = (torch.rand(k, fan_in, fan_out, generator=generator) * 2 - 1) * bound
        b = (torch.rand(k, 1, fan_out, generator=generator) * 2 - 1) * bound
        weights.append(w.requires_grad_())
        biases.append(b.requires_grad_())
    params = [*weights, *biases]
    optimizer = torch.optim.Adam(params, lr=1e-3)

    def logits(xb: torch.Tensor) -> torch.Tensor:
        h = xb.expand(k, -1, -1)
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(weights) - 1:
                h = torch.relu(h)
        return h.squeeze(-1)  # (k, batch)

    n = len(x)
    batch_size = min(batch_size, n)
    best = torch.full((k,), float("inf"))
    stalled = torch.zeros(k, dtype=torch.long)
    done = torch.zeros(k, dtype=torch.bool)
    frozen = [p.detach().clone() for p in params]
    for _ in range(max_epochs):
        order = torch.randperm(n, generator=generator)
        epoch_loss = torch.zeros(k)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            mask = train[:, idx]
            count = mask.sum(dim=1).clamp(min=1.0)
            bce = torch.nn.functional.binary_cross_entropy_with_logits(
                logits(x_t[idx]), y_t[idx].expand(k, -1), reduction="none"
            )
            penalty = 0.5 * alpha * sum((w**2).sum(dim=(1, 2)) for w in weights)
            per_fold = (bce * mask).sum(dim=1) / count + penalty / count
            optimizer.zero_grad(set_to_none=True)
            per_fold.sum().backward()
            optimizer.step()
            epoch_loss += per_fold.detach() * count
        epoch_loss /= n_train
        # scikit-learn's rule: stop after n_iter_no_change epochs without a tol improvement
        stalled = torch.where(epoch_loss > best - tol, stalled + 1, torch.zeros_like(stalled))
        best = torch.minimum(best, epoch_loss)
        newly = (stalled > n_iter_no_change) & ~done
        if newly.any():
            for p, f in zip(params, frozen):
                f[newly] = p.detach()[newly]
            done |= newly
        if done.all():
            break
    with torch.no_grad():
        for p, f in zip(params, frozen):
            p[done] = f[done]
        predicted = (logits(x_t) > 0).float()
    correct = (predicted == y_t).float()
    test = 1.0 - train
    accuracy = (correct * test).sum(dim=1) / test.sum(dim=1)
    return float(accuracy.mean())
