"""The verbs that build and train: ``abi.fit`` (an amortizer, flat or two-level) and
``abi.fit_comparison`` (a model comparator).

``fit`` lives apart from :mod:`pymc_abi.amortizers.amortizer` and
:mod:`pymc_abi.amortizers.two_level` because it chooses between them: neither of those
modules imports the other's class.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import pymc as pm
import torch
import xarray as xr

from pymc_abi.amortizers.amortizer import Amortizer
from pymc_abi.amortizers.comparison import ModelComparator
from pymc_abi.amortizers.two_level import two_level_or_flat
from pymc_abi.core._arguments import covariate_functions
from pymc_abi.core.config import NetworkConfig, TrainingConfig, split_options
from pymc_abi.core.seeds import RandomSeed

__all__ = ["fit", "fit_comparison"]


def fit(
    model: pm.Model | None = None,
    *,
    simulations: int | str | os.PathLike | xr.Dataset | None = None,
    dim_lengths: Mapping[str, int | tuple[int, int]] | None = None,
    covariates: Mapping[str, Callable] | None = None,
    time_dim: str | None = None,
    groups: str | None = None,
    group_sizes: tuple[int, int] | Callable | None = None,
    network: NetworkConfig | None = None,
    training: TrainingConfig | None = None,
    device: str | torch.device | None = None,
    progressbar: bool = True,
    random_seed: RandomSeed = None,
    data: Mapping[str, Callable] | None = None,
    **options,
) -> Amortizer:
    """Train an amortized posterior for a PyMC model on its own simulations.

    Parameters
    ----------
    model : pm.Model, optional
        ``None`` takes the model from the context.
    simulations : int, path or xarray.Dataset, optional
        ``None`` trains online (fresh simulations each step, the default); an integer
        trains offline on a fixed bank of that many simulations for ``epochs``; a bank
        written by :func:`pymc_abi.simulate` (its path, or the dataset) trains from it,
        chunk by chunk.
    dim_lengths, covariates, time_dim, device
        See :class:`Amortizer`: varying data sizes, the functions that draw per-dataset
        covariates (``{"X": fn}``), a time dim.
    groups : str, optional
        Amortize a multilevel model in two levels along this group dim (``"auto"`` finds
        it): a :class:`~pymc_abi.TwoLevelAmortizer`, trained for any number of groups in
        ``dim_lengths[groups]``, each with ``group_sizes`` observations. A model that does
        not factor into global and per-group parameters gets the flat amortizer, with a
        warning that says why (silently for ``"auto"``). See the "Multilevel models" page.
    group_sizes : (int, int) or callable, optional
        Observations per group while training (see :class:`~pymc_abi.TwoLevelAmortizer`).
    network : NetworkConfig, optional
        The networks (see :class:`NetworkConfig`).
    training : TrainingConfig, optional
        The training run (see :class:`TrainingConfig`).
    progressbar : bool, default True
    random_seed : int, optional
        Makes simulations, initialization and training reproducible.
    data : dict, optional
        Deprecated: the old name of ``covariates`` (a :class:`FutureWarning`).
    **options
        Any field of :class:`NetworkConfig` (``inference_network``, ``summary_network``,
        ``summary_features``, ``hidden_features``, ``transforms``) or of
        :class:`TrainingConfig` (``steps``, ``epochs``, ``batch_size``, ``learning_rate``,
        ``weight_decay``, ``validation_simulations``, ``validate_every``, ``patience``,
        ``min_delta``, ``chunk_size``, ``warmup``, ``clip_norm``, ``anneal``), overriding
        ``network`` and ``training``.

    Returns
    -------
    Amortizer

    Examples
    --------
    >>> with model:  # doctest: +SKIP
    ...     amortizer = abi.fit(random_seed=1)
    ...     idata = amortizer.sample(draws=1000)
    """
    covariates = covariate_functions(covariates, data)
    network, training = split_options(options, network, training)
    if groups is not None:
        amortizer = two_level_or_flat(
            model,
            groups,
            group_sizes=group_sizes,
            dim_lengths=dim_lengths,
            covariates=covariates,
            time_dim=time_dim,
            network=network,
            device=device,
            random_seed=random_seed,
        )
        return amortizer.fit(simulations=simulations, training=training, progressbar=progressbar)
    if group_sizes is not None:
        raise ValueError("group_sizes= applies to multilevel models: give groups= too.")
    amortizer = Amortizer(
        model,
        network=network,
        dim_lengths=dim_lengths,
        covariates=covariates,
        time_dim=time_dim,
        device=device,
        random_seed=random_seed,
    )
    return amortizer.fit(simulations=simulations, training=training, progressbar=progressbar)


def fit_comparison(
    models: Mapping[str, pm.Model],
    *,
    prior: Mapping[str, float] | Sequence[float] | None = None,
    simulations: int | None = None,
    dim_lengths: Mapping[str, int | tuple[int, int]] | None = None,
    covariates: Mapping[str, Callable] | None = None,
    time_dim: str | None = None,
    network: NetworkConfig | None = None,
    training: TrainingConfig | None = None,
    calibrate: bool = True,
    device: str | torch.device | None = None,
    progressbar: bool = True,
    random_seed: RandomSeed = None,
    data: Mapping[str, Callable] | None = None,
    **options,
) -> ModelComparator:
    """Train an amortized model comparator on simulations of several PyMC models.

    Parameters
    ----------
    models : dict of str to pm.Model
        The models, by name; they must share their observed variables.
    prior : dict or sequence, optional
        Prior model probabilities (uniform by default; changeable later).
    simulations : int, optional
        ``None`` trains online (default); an integer trains on a fixed bank of that many
        simulations per model.
    dim_lengths, covariates, time_dim, device
        See :class:`ModelComparator`.
    network, training : NetworkConfig, TrainingConfig, optional
    calibrate : bool, default True
        Fit the temperature on held-out simulations after training.
    progressbar : bool, default True
    random_seed : int, optional
    data : dict, optional
        Deprecated: the old name of ``covariates`` (a :class:`FutureWarning`).
    **options
        Fields of :class:`~pymc_abi.NetworkConfig` or :class:`~pymc_abi.TrainingConfig`.

    Returns
    -------
    ModelComparator

    Examples
    --------
    >>> comparator = abi.fit_comparison(  # doctest: +SKIP
    ...     {"linear": m1, "quadratic": m2, "robust": m3}, random_seed=1
    ... )
    >>> comparator.predict([{"y": y1}, {"y": y2}]).to_pandas()  # doctest: +SKIP
    """
    covariates = covariate_functions(covariates, data)
    network, training = split_options(options, network, training)
    comparator = ModelComparator(
        models,
        prior=prior,
        dim_lengths=dim_lengths,
        covariates=covariates,
        time_dim=time_dim,
        network=network,
        device=device,
        random_seed=random_seed,
    )
    return comparator.fit(
        simulations=simulations,
        training=training,
        calibrate=calibrate,
        progressbar=progressbar,
    )
