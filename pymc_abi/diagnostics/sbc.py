"""Simulation-based calibration (SBC) of an amortized posterior.

For every simulation ``(θ*, y) ~ p(θ) p(y | θ)`` the amortized posterior ``q(θ | y)`` is
sampled ``L`` times and the rank of the true value among the draws is recorded,

.. math::

    r = \\#\\{\\ell : \\theta^{(\\ell)} < \\theta^*\\} \\in \\{0, \\dots, L\\}.

If ``q`` is the exact posterior, ``r`` is uniform on ``{0, ..., L}`` for every parameter
(Talts et al., 2018). Ranks of the flat unconstrained coordinates equal those of the
constrained values for elementwise monotone transforms (``log``, ``logodds``, ``interval``);
per model variable, ranks are computed on the constrained values themselves, so simplex and
ordered variables get one rank per element of the variable.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from pymc_abi.core import _compat
from pymc_abi.core._arguments import positive
from pymc_abi.core._progress import ProgressBar
from pymc_abi.core.errors import PymcAbiWarning
from pymc_abi.core.seeds import RandomSeed, seed_int
from pymc_abi.inference.results import Layout
from pymc_abi.inference.sampling import constrained

if TYPE_CHECKING:  # pragma: no cover
    from pymc_abi.amortizers.amortizer import Amortizer

__all__ = ["RANK_GROUP", "STATS_GROUP", "sbc", "sbc_group"]

#: Group of ranks per model variable (constrained values, model dims), as simuk lays it out.
RANK_GROUP = "prior_sbc"
#: Group of per-simulation summaries of each flat unconstrained coordinate.
STATS_GROUP = "sbc_stats"
# rows (datasets x draws) held in memory at a time
_ROWS_PER_CHUNK = 50_000


def sbc(
    amortizer: Amortizer,
    *,
    num_simulations: int = 1000,
    draws: int = 500,
    deterministics: bool = True,
    dim_lengths: Mapping[str, int] | None = None,
    chunk_size: int | None = None,
    random_seed: RandomSeed = None,
    progressbar: bool = True,
) -> _compat.Result:
    """Simulation-based calibration of an amortizer.

    Draws ``num_simulations`` parameter sets and datasets from the model's prior predictive
    distribution, samples the amortized posterior of every dataset ``draws`` times (in
    batched passes, ``chunk_size`` datasets at a time) and ranks the true values among the
    posterior draws.

    Parameters
    ----------
    amortizer : Amortizer
        A trained amortizer.
    num_simulations : int, default 1000
        Number of simulated datasets.
    draws : int, default 500
        Posterior draws per dataset; ranks lie in ``0, ..., draws``.
    deterministics : bool, default True
        Also rank the model's deterministics (constrained values computed from the draws).
    dim_lengths : dict of str to int, optional
        For an amortizer trained on varying data sizes: fixed lengths of the varying dims.
        By default every chunk of datasets draws its lengths from the training ranges; a
        two-level amortizer (:class:`~pymc_abi.TwoLevelAmortizer`) uses one number of
        groups, the model's unless given here, and draws the group sizes per chunk.
    chunk_size : int, optional
        Datasets per batched pass; by default ``50_000 // draws`` (at least 1, at most 1000),
        which bounds memory.
    random_seed : int, optional
        Seeds the simulations, the posterior draws and the breaking of ties.
    progressbar : bool, default True

    Returns
    -------
    az.InferenceData or xarray.DataTree
        What ``pm.sample`` returns in this environment, with groups

        - ``prior_sbc``: integer ranks of each free variable (and deterministic), dims
          ``(chain, draw, *model dims)``, ``chain`` of length 1 and ``draw`` of length
          ``num_simulations`` (the layout of ``simuk``);
        - ``prior``: the true (simulated) values of the same variables, same dims;
        - ``sbc_stats``: per flat unconstrained coordinate (dim ``parameter``, coords
          ``amortizer.parameters.names``, auxiliary coord ``variable`` naming the free
          variable), dims ``(chain, draw, parameter)``: ``rank``, ``true_value``,
          ``posterior_mean``, ``posterior_median``, ``posterior_sd``,
          ``z_score = (posterior_mean - true_value) / posterior_sd`` and
          ``contraction = 1 - posterior_sd**2 / prior_var``, with ``prior_var`` the
          variance of the true values over all simulations.

        Every group has the attrs ``draws`` (the largest possible rank), ``num_simulations``
        and ``dropped_simulations`` (simulations with NaN or inf, replaced by fresh ones).

    Notes
    -----
    Ties between a draw and the true value (a deterministic that is constant, say) are
    broken at random, so ranks stay uniform for a calibrated posterior.

    Examples
    --------
    >>> import pymc as pm, pymc_abi as abi
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 1)
    ...     y = pm.Normal("y", mu, 1, observed=[0.1, -0.3, 0.5])
    >>> amortizer = abi.fit(model, steps=200, random_seed=1, progressbar=False)
    >>> result = abi.sbc(amortizer, num_simulations=200, draws=100, random_seed=2,
    ...                  progressbar=False)
    >>> result.prior_sbc["mu"].shape
    (1, 200)
    >>> int(result.prior_sbc["mu"].max()) <= 100
    True
    """
    num_simulations = positive("num_simulations", num_simulations, minimum=2)
    draws = positive("draws", draws)
    if chunk_size is None:
        chunk_size = min(1000, max(1, _ROWS_PER_CHUNK // draws))
    chunk_size = positive("chunk_size", chunk_size)
    spec = amortizer.data_spec
    dim_lengths = _sbc_dim_lengths(spec, dim_lengths)
    params = amortizer.parameters
    names = [*params.free_names, *(params.deterministic_names if deterministics else [])]
    seeds = np.random.SeedSequence(seed_int(random_seed))
    tie_rng = np.random.default_rng(seeds.spawn(1)[0])

    flat: dict[str, list[np.ndarray]] = {
        k: [] for k in ("rank", "true_value", "posterior_mean", "posterior_median", "sd")
    }
    ranks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    truths: dict[str, list[np.ndarray]] = {n: [] for n in names}
    done = dropped = empty_rounds = 0
    bar = ProgressBar("SBC", num_simulations, enabled=progressbar)
    try:
        while done < num_simulations:
            n = min(chunk_size, num_simulations - done)
            chunk_seed = seeds.spawn(1)[0]
            sim_seed, draw_seed = (int(s.generate_state(1)[0]) for s in chunk_seed.spawn(2))
            sim = spec.simulate(n, sim_seed, dim_lengths=dim_lengths)
            if sim.dropped:
                dropped += sim.dropped
                if not sim.finite.any():
                    empty_rounds += 1
                    if empty_rounds >= 10:
                        raise RuntimeError("Every simulation holds NaN or inf; check the priors.")
                    continue
                sim = sim.finite_only()
            z_true, sims = sim.z, sim.values
            k = len(z_true)
            z, _ = amortizer.sample_unconstrained(sims, draws=draws, random_seed=draw_seed)
            flat["rank"].append(_ranks(z, z_true, tie_rng))
            flat["true_value"].append(z_true)
            flat["posterior_mean"].append(z.mean(axis=1))
            flat["posterior_median"].append(np.median(z, axis=1))
            flat["sd"].append(z.std(axis=1, ddof=1) if draws > 1 else np.zeros_like(z_true))
            values = _constrained(spec, z, sims)
            for name in names:
                draws_c = values[name].reshape(k, draws, *values[name].shape[1:])
                truth = np.asarray(sims[name])
                ranks[name].append(_ranks(draws_c, truth, tie_rng))
                truths[name].append(truth)
            done += k
            bar.update(done)
    finally:
        bar.close()

    attrs = {
        "draws": draws,
        "num_simulations": num_simulations,
        "dropped_simulations": dropped,
        "created_by": "pymc_abi.sbc",
    }
    rank_values, truth_values = {}, {}
    for name in names:
        shapes = {a.shape[1:] for a in ranks[name]}
        if len(shapes) > 1:
            warnings.warn(
                f"'{name}' changes shape with the data size; it is left out of the SBC ranks.",
                PymcAbiWarning,
                stacklevel=2,
            )
            continue
        rank_values[name] = np.concatenate(ranks[name])[None].astype(np.int64)
        truth_values[name] = np.concatenate(truths[name])[None]
    return Layout(amortizer.model).result(
        {RANK_GROUP: rank_values, "prior": truth_values},
        attrs=attrs,
        extra={STATS_GROUP: _stats_dataset(params, flat, attrs, dim_lengths)},
    )


def _sbc_dim_lengths(spec, dim_lengths):
    """The dim lengths to simulate at: only dims the amortizer varied may be given, and a
    two-level amortizer simulates one number of groups, the model's by default."""
    varying = set(spec.dim_ranges)
    if dim_lengths:
        unknown = set(dim_lengths) - varying
        if unknown:
            raise ValueError(
                f"dim_lengths names {sorted(unknown)}, which the amortizer was not trained to "
                f"vary (varying dims: {sorted(varying) or 'none'})."
            )
    hierarchy = getattr(spec, "hierarchy", None)
    if hierarchy is not None:
        group_dim = hierarchy.group_dim
        dim_lengths = {
            group_dim: int(spec.model.dim_lengths[group_dim].eval()),
            **(dim_lengths or {}),
        }
    return dim_lengths


def sbc_group(result: _compat.Result, group: str) -> xr.Dataset:
    """One group of a result of :func:`sbc`, with a clear error for any other input.

    Parameters
    ----------
    result : az.InferenceData or xarray.DataTree
        The result of :func:`sbc`.
    group : str
        ``"prior_sbc"``, ``"prior"`` or ``"sbc_stats"``.

    Returns
    -------
    xarray.Dataset
    """
    names = _compat.group_names(result) if _compat.is_result(result) else None
    if names is None or group not in names:
        raise ValueError(
            f"Expected the result of pymc_abi.sbc, with a '{group}' group; got "
            f"{'groups ' + str(names) if names is not None else type(result).__name__}."
        )
    return _compat.group(result, group)


def _constrained(spec, z, sims) -> dict[str, np.ndarray]:
    """Constrained free variables and deterministics of draws ``z`` (K, L, D), stacked."""
    parts = constrained(spec, z, spec.unstack(sims))
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _ranks(draws: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ranks of ``truth`` (K, ...) among ``draws`` (K, L, ...), ties broken at random."""
    truth = truth[:, None]
    below = (draws < truth).sum(axis=1)
    ties = (draws == truth).sum(axis=1)
    if ties.any():
        below = below + rng.integers(0, ties + 1)
    return below.astype(np.int64)


def _stats_dataset(params, flat, attrs, dim_lengths=None) -> xr.Dataset:
    rank = np.concatenate(flat["rank"])
    truth = np.concatenate(flat["true_value"])
    mean = np.concatenate(flat["posterior_mean"])
    median = np.concatenate(flat["posterior_median"])
    sd = np.concatenate(flat["sd"])
    prior_var = truth.var(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        z_score = (mean - truth) / sd
        contraction = 1.0 - sd**2 / prior_var
    labels, variable = params.coordinates(dim_lengths)
    variable = np.asarray(variable, dtype=object)
    dims = ("chain", "draw", "parameter")
    data = {
        "rank": rank,
        "true_value": truth,
        "posterior_mean": mean,
        "posterior_median": median,
        "posterior_sd": sd,
        "z_score": z_score,
        "contraction": contraction,
    }
    coords = {
        "chain": [0],
        "draw": np.arange(len(rank)),
        "parameter": labels,
        "variable": ("parameter", variable.astype(str)),
    }
    return xr.Dataset(
        {k: (dims, v[None]) for k, v in data.items()},
        coords=coords,
        attrs={**attrs, "space": "unconstrained"},
    )
