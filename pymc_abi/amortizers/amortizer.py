"""The amortizer: a PyMC model's simulator joined to a summary network and a flow.

This is the one module that holds both worlds: the model side (:class:`DataSpec`, the
simulator, the parameter space) speaks numpy, the networks speak torch. It composes the
parts; each job lives in its own module:

* what a dataset is, checks, simulation, network inputs: :mod:`pymc_abi.data.spec`;
* configuration: :mod:`pymc_abi.core.config`; seeds: :mod:`pymc_abi.core.seeds`;
* training sources: :mod:`pymc_abi.training.sources`; the loop: :mod:`pymc_abi.training.loop`;
* flow draws and results: :mod:`pymc_abi.inference.sampling`; importance sampling and support
  checks: :mod:`pymc_abi.inference.density`; the NUTS fallback: :mod:`pymc_abi.inference.nuts`;
* the saved file, its checks: :mod:`pymc_abi.amortizers.persistence`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pymc as pm
import torch
import xarray as xr

from pymc_abi.amortizers import persistence
from pymc_abi.core import _compat
from pymc_abi.core._arguments import covariate_functions, flag, positive
from pymc_abi.core.config import PILOT_SIMULATIONS, NetworkConfig, TrainingConfig, split_options
from pymc_abi.core.errors import DroppedSimulationsWarning
from pymc_abi.core.seeds import RandomSeed, SeedTree, scoped_torch_seed, torch_generator
from pymc_abi.data.spec import DataSpec, SummaryInput
from pymc_abi.inference import answers, sampling
from pymc_abi.inference.density import FlowProposal, ModelDensity
from pymc_abi.inference.results import Layout
from pymc_abi.model._model import check_imputation
from pymc_abi.model.simulator import ModelSimulator
from pymc_abi.networks.posterior import PosteriorNetwork
from pymc_abi.networks.summary import summary_kinds
from pymc_abi.training import _distributed
from pymc_abi.training._distributed import checked_device
from pymc_abi.training.loop import History, train
from pymc_abi.training.sources import BankSource, DropCounter, MemorySource, OnlineSource

__all__ = ["Amortizer", "register_saved_kind"]


def _version() -> str:
    from pymc_abi import __version__

    return __version__


#: subclasses by the key that marks their saved files, registered by their own modules
#: (:func:`register_saved_kind`), so that ``Amortizer.load`` reads any saved amortizer
#: without this module importing the subclasses
_SAVED_KINDS: dict[str, type[Amortizer]] = {}


def register_saved_kind(key: str, cls: type[Amortizer]) -> None:
    """Let :meth:`Amortizer.load` hand files whose configuration sets ``key`` to ``cls``."""
    _SAVED_KINDS[key] = cls


class Amortizer:
    """Amortized posterior of a PyMC model: fit once, then any dataset in milliseconds.

    Usually made by :func:`fit`. The constructor builds the simulator, takes standardization
    statistics from pilot simulations and builds untrained networks.

    Parameters
    ----------
    model : pm.Model, optional
        The model; ``None`` takes it from the context.
    network : NetworkConfig, optional
        The networks; the keyword options below override its fields.
    dim_lengths : dict, optional
        Train on datasets of varying size: ``{"obs": (10, 200)}`` draws the length of dim
        ``obs`` uniformly in that range for every training batch; an int fixes it.
    covariates : dict, optional
        Covariates drawn per dataset: ``{"X": fn}`` with ``fn(rng, n, dim_lengths)``
        returning ``n`` values of the ``pm.Data`` container ``X`` (leading axis ``n``) for
        the given dim lengths. The networks are conditioned on them; covariates that share
        their first dim with an observed variable are summarized with it, row by row. A
        dataset's own covariates are then given with its data, ``sample(data={"X": X,
        ...})``.
    time_dim : str, optional
        Name of a dim that is time: observed data along it get the time-series summary.
    device : str or torch.device, optional
        CUDA when available, else CPU.
    random_seed : int, optional
        The root of the amortizer's seed tree (:class:`~pymc_abi.core.seeds.SeedTree`): seeds the
        pilot simulations, the network initialization and later unseeded calls.
    data : dict, optional
        Deprecated: the old name of ``covariates`` (a :class:`FutureWarning`).
    **network_options
        Fields of :class:`NetworkConfig`: ``inference_network``, ``summary_network``,
        ``summary_features``, ``hidden_features``, ``transforms``.

    Attributes
    ----------
    simulator : ModelSimulator
    parameters : ParameterSpace
    data_spec : DataSpec
        What one dataset is: observed variables, covariates, varying dims, network inputs.
    network_config : NetworkConfig
    history : History
        Loss history of every training run.
    dropped_simulations : int
        Simulations dropped by the latest :meth:`fit` (NaN, inf or beyond float32); reset
        at the start of each call.
    config : dict
        Everything needed to rebuild the networks (saved with the amortizer).
    """

    #: whose defaults it takes (:data:`pymc_abi.core.config.KINDS`)
    KIND = "posterior"
    #: whether ``preconditioner=`` applies (the ladder's advice names it where it does)
    _can_precondition = True

    def __init__(
        self,
        model: pm.Model | None = None,
        *,
        network: NetworkConfig | None = None,
        dim_lengths: Mapping[str, int | tuple[int, int]] | None = None,
        covariates: Mapping[str, Callable | None] | None = None,
        time_dim: str | None = None,
        device: str | torch.device | None = None,
        random_seed: RandomSeed = None,
        data: Mapping[str, Callable | None] | None = None,
        _pilot: int = PILOT_SIMULATIONS["posterior"],
        **network_options,
    ):
        covariates = covariate_functions(covariates, data)
        config = self._set_up(model, network, network_options, device, random_seed)
        if time_dim is not None and time_dim not in self.model.dim_lengths:
            raise ValueError(
                f"time_dim={time_dim!r} is not a dim of the model (dims: "
                f"{sorted(self.model.dim_lengths) or 'none'})."
            )
        self.simulator = ModelSimulator(self.model, random_seed=self._seeds.child())
        self.parameters = self.simulator.parameters
        if self.parameters.ndim == 0:
            raise ValueError("The model has no free random variables to infer.")
        self.data_spec = DataSpec.from_model(
            self.simulator,
            dim_lengths=dim_lengths,
            covariates=covariates,
            time_dim=time_dim,
            summary_kinds=summary_kinds(config.summary_network),
        )
        self._density = ModelDensity(self.data_spec)
        if config.preconditioner is not None:
            if not self._density.has_density:
                raise ValueError(
                    f"preconditioner={config.preconditioner!r} fits every dataset on the "
                    "model's exact density, and this model has none (a pm.Simulator, or a "
                    "CustomDist without logp). Leave preconditioner=None."
                )
            self.data_spec = dataclasses.replace(
                self.data_spec, preconditioner=self._density.laplace_maps
            )
        self._layout = Layout(self.model)
        with scoped_torch_seed(self._seeds.child(), self.device):  # seeded initialization
            self.net = PosteriorNetwork.build(
                self.data_spec.inputs, self.data_spec.pilot(), config, self.parameters.ndim
            )
        if _pilot:
            sim = self.data_spec.simulate(_pilot, self._seeds.child())
            self.net.fit_standardization(
                *DropCounter().batch(self.data_spec, sim, torch.device("cpu"))
            )
        self.net.to(self.device)

    def _set_up(self, model, network, network_options, device, random_seed) -> NetworkConfig:
        """What every amortizer's ``__init__`` begins with: the model (checked), the
        network configuration, the device, the seeds and an empty history."""
        self.model = pm.modelcontext(model)
        unknown = sorted(set(network_options) - set(NetworkConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown option(s) {unknown}.")
        config, _ = split_options(network_options, network=network)
        check_imputation(self.model)
        self.network_config = config
        self.device = checked_device(device)
        self._seeds = SeedTree(random_seed)
        self.history = History()
        self.dropped_simulations = 0
        return config

    # ------------------------------------------------------------------ description
    @property
    def observed_names(self) -> list[str]:
        """The observed variables the amortizer conditions on."""
        return list(self.data_spec.observed)

    @property
    def covariates(self) -> Mapping[str, Callable | None]:
        """Per-dataset covariates and the functions that draw them."""
        return self.data_spec.covariates

    @property
    def dim_ranges(self) -> Mapping[str, tuple[int, int]]:
        """Varying dims and the ranges trained on."""
        return self.data_spec.dim_ranges

    @property
    def time_dim(self) -> str | None:
        return self.data_spec.time_dim

    @property
    def inputs(self) -> tuple[SummaryInput, ...]:
        """What feeds each summary network."""
        return self.data_spec.inputs

    @property
    def config(self) -> dict:
        """The saved configuration: networks and data description, as plain data."""
        net, spec = self.network_config, self.data_spec
        summary_features = net.summary_width(self.KIND, self.parameters.ndim)
        return {
            "inference_network": net.inference_network if net.named else None,
            "summary_kinds": {i.name: i.kind for i in spec.inputs},
            "summary_features": summary_features,
            "hidden_features": list(net.hidden_features),
            "transforms": net.transforms,
            "recurrent_steps": net.recurrent_steps,
            "full_resolution_layers": net.full_resolution_layers,
            "time_series_features": net.time_series_width(summary_features),
            "preconditioner": net.preconditioner,
            "dim_lengths": {k: list(v) for k, v in spec.dim_ranges.items()},
            "covariates": list(spec.covariates),
            "time_dim": spec.time_dim,
        }

    @property
    def has_density(self) -> bool:
        """Whether the model has an exact joint density (no ``pm.Simulator``, no
        ``CustomDist`` without ``logp``): importance sampling, its checks and
        ``fallback="nuts"`` need one."""
        return self._density.has_density

    # ------------------------------------------------------------------ training
    def _source(
        self, simulations, cfg: TrainingConfig, dropped: DropCounter, seeds, ranks, rank_seeds
    ):
        spec, n_val = self.data_spec, cfg.validation_simulations
        if simulations is None:
            return OnlineSource(
                spec,
                seeds,
                dropped,
                batch_size=cfg.batch_size,
                n_val=n_val,
                device=self.device,
                batch_seeds=rank_seeds,
            )
        if isinstance(simulations, bool | float | np.floating):
            raise ValueError(
                "simulations must be None (online training), a positive integer (a bank "
                f"simulated in memory), a bank's path or an xarray.Dataset; got {simulations!r}."
            )
        if isinstance(simulations, int | np.integer):
            return MemorySource.simulate(
                spec,
                seeds,
                dropped,
                n=positive("simulations", simulations),
                batch_size=cfg.batch_size,
                n_val=n_val,
                device=self.device,
                ranks=ranks,
                rank_seeds=rank_seeds,
            )
        return BankSource(
            spec,
            simulations,
            dropped,
            batch_size=cfg.batch_size,
            n_val=n_val,
            chunk=cfg.chunk_size,
            device=self.device,
            ranks=ranks,
        )

    def fit(
        self,
        *,
        simulations: int | str | os.PathLike | xr.Dataset | None = None,
        training: TrainingConfig | None = None,
        progressbar: bool = True,
        random_seed: RandomSeed = None,
        **options,
    ) -> Amortizer:
        """Train (further) on simulations from the model, until the validation loss settles.

        Parameters
        ----------
        simulations : int, path or xarray.Dataset, optional
            ``None`` (default) trains online: fresh simulations at every step. An integer
            simulates a fixed bank of that size in memory and trains on it for ``epochs``.
            A path (or dataset) of a bank written by :func:`pymc_abi.simulate` trains from
            it, reading ``chunk_size`` simulations at a time.
        training : TrainingConfig, optional
            The training run; the keyword options override its fields.
        progressbar : bool, default True
        random_seed : int, optional
            Restarts the amortizer's seed tree from this seed.
        **options
            Fields of :class:`TrainingConfig`: ``steps``, ``epochs``, ``batch_size``,
            ``learning_rate``, ``weight_decay``, ``validation_simulations``,
            ``validate_every``, ``patience``, ``min_delta``, ``chunk_size``, ``warmup``,
            ``clip_norm``, ``anneal``.

        Returns
        -------
        Amortizer
            ``self``, trained. ``dropped_simulations`` counts this run's dropped simulations.

        Notes
        -----
        **Data-parallel training.** Under ``torch.distributed`` (a default process group of
        several ranks, or ``torchrun``'s ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``
        environment, from which the group is initialized: NCCL with CUDA, else gloo), every
        rank trains the same networks with ``DistributedDataParallel``: rank 0's weights
        and standardization are broadcast first, ``batch_size`` is per rank (the effective
        batch is ``world_size * batch_size``), each rank simulates its own batches (online)
        or trains on its own shard of the bank (offline), the validation simulations and the
        stopping decisions are the same on every rank, and every rank ends with the same
        weights. Only rank 0 shows progress and warns; :meth:`save` writes on rank 0 only.
        See the "Scaling out" page of the docs.
        """
        unknown = sorted(set(options) - set(TrainingConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(f"Amortizer.fit got unknown option(s) {unknown}.")
        _, cfg = split_options(options, training=training)
        if "chunk_size" in options and (
            simulations is None or isinstance(simulations, int | np.integer)
        ):
            raise ValueError(
                "chunk_size= sets how many simulations are read at a time from a bank on disk; "
                "this fit simulates its own (simulations=None or an integer). Leave it out, "
                "or train from a bank: simulations=path."
            )
        ranks = _distributed.group()
        if random_seed is not None:
            self._seeds = SeedTree(random_seed)
        seeds, rank_seeds = self._seeds, None
        if ranks is not None:
            if self.device.type == "cuda":
                if self.device.index is None:
                    self.device = _distributed.local_device()
                torch.cuda.set_device(self.device)
                self.net.to(self.device)
            # one shared tree (validation), rank 0's; and one child of it per rank
            root = _distributed.broadcast_int(self._seeds.child(), self.device)
            seeds = SeedTree(root)
            rank_seeds = SeedTree(np.random.SeedSequence(root).spawn(ranks.world)[ranks.rank])
        torch_seed = (rank_seeds or seeds).child()
        generator = torch_generator(torch_seed, derive=False)
        dropped = DropCounter()
        self.dropped_simulations = 0
        try:
            source = self._source(simulations, cfg, dropped, seeds, ranks, rank_seeds)
            validation = source.validation()
            per_epoch = source.steps_per_epoch
            if per_epoch is not None and ranks is not None:  # the same on every rank
                per_epoch = int(_distributed.all_reduce([per_epoch], self.device, "min")[0])
            steps, every = cfg.budget(per_epoch)
            with scoped_torch_seed(torch_seed, self.device):
                train(
                    self.net,
                    self.net.loss,
                    source.batches(generator),
                    validation,
                    steps=steps,
                    validate_every=every,
                    history=self.history,
                    learning_rate=cfg.learning_rate,
                    weight_decay=cfg.weight_decay,
                    warmup=cfg.warmup,
                    clip_norm=cfg.clip_norm,
                    patience=cfg.patience,
                    min_delta=cfg.min_delta_for(self.KIND, self.parameters.ndim),
                    anneal=cfg.anneal,
                    progressbar=progressbar,
                    distributed=ranks is not None,
                )
        finally:
            self.dropped_simulations = dropped.count
        if ranks is not None:  # counted over all ranks
            self.dropped_simulations = int(_distributed.all_reduce([dropped.count], self.device)[0])
        if self.dropped_simulations and (ranks is None or ranks.main):
            warnings.warn(
                f"{self.dropped_simulations} simulations held NaN or inf and were dropped.",
                DroppedSimulationsWarning,
                stacklevel=2,
            )
        self.warm_up()
        return self

    def warm_up(self) -> None:
        """Compile the model's density and its gradient now.

        :meth:`fit` calls it, so that the first importance-sampled :meth:`sample` costs what
        later ones do (a few seconds of PyTensor compilation otherwise fall on it). A loaded
        amortizer compiles them on first use, or call this once after
        :meth:`Amortizer.load`. The pointwise terms (``log_likelihood=True``) compile on
        first use. Nothing to do for a model without a density. With a preconditioner,
        the density with a dataset per row, which its maps need, is compiled too.
        """
        if self.has_density:
            [dataset], _ = self.data_spec.datasets(None, None)
            self._density.warm_up(dataset)
            if self.data_spec.preconditioner is not None:
                self.data_spec.preconditioner(self.data_spec.stack([dataset]))

    # ------------------------------------------------------------------ inference
    def embed(self, datasets: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
        """The summary networks' output (the flow's context) for checked datasets.

        Parameters
        ----------
        datasets : list of dict
            Datasets (observed variables and covariates) of equal shapes; they are checked
            as :meth:`sample` checks them.

        Returns
        -------
        ndarray, shape (K, summary features)
        """
        datasets, _ = self.data_spec.datasets(
            [datasets] if isinstance(datasets, Mapping) else list(datasets)
        )
        self.net.eval()
        with torch.no_grad():
            ctx = sampling.context(self.net, self.data_spec, datasets, self.device)
        return ctx.double().cpu().numpy()

    def sample_unconstrained(
        self,
        simulations: Mapping[str, np.ndarray],
        *,
        draws: int = 500,
        random_seed: RandomSeed = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Flat unconstrained posterior draws for a batch of simulated datasets.

        The fast path for diagnostics such as SBC: no InferenceData is built.

        Parameters
        ----------
        simulations : dict of str to ndarray
            Observed variables (and per-dataset covariates) with a leading axis ``K``, as
            :meth:`ModelSimulator.sample` returns them.
        draws : int, default 500
        random_seed : int, optional

        Returns
        -------
        z : ndarray, shape (K, draws, D)
            Draws in the layout of :attr:`parameters`.
        log_q : ndarray, shape (K, draws)
            The flow's log density of each draw.
        """
        datasets = self.data_spec.unstack(simulations)
        return self._draw(datasets, positive("draws", draws), self._seeds.resolve(random_seed))

    def _draw(self, datasets, draws: int, seed: int, conditioned=None):
        return sampling.draw(
            self.net, self.data_spec, datasets, draws, seed, self.device, conditioned
        )

    @torch.no_grad()
    def sample(
        self,
        observed: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        data: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        draws: int = 1000,
        chains: int = 4,
        importance_sampling: bool | None = None,
        refine: bool | None = None,
        fallback: str | bool | None = None,
        log_likelihood: bool = False,
        dataset_dim: str | None = None,
        random_seed: RandomSeed = None,
    ) -> _compat.Result | list[_compat.Result]:
        """Draw from the amortized posterior of one or many datasets.

        Parameters
        ----------
        observed : dict or list of dict, optional
            ``None`` uses the model's own observed data; a dict maps observed variable
            names (and per-dataset covariates) to new data; a list of dicts fits many
            datasets in batched passes.
        data : dict or list of dict, optional
            Per-dataset covariates (``pm.Data`` the amortizer was trained to vary), for one
            dataset or one per observed dataset; they may also be given in ``observed``.
        draws : int, default 1000
            Draws per chain, as in ``pm.sample``.
        chains : int, default 4
            The ``chains * draws`` draws are independent; they are laid out as ``chains``
            chains of ``draws`` so that ArviZ's diagnostics apply unchanged (``r_hat`` about
            1, ``ess`` about the number of draws) and need no more than one chain.
        importance_sampling : bool, optional
            On by default wherever the model has a density (every model but likelihood-free
            ones, such as a ``pm.Simulator``): the draws are then corrected by the model and
            checked, at the cost of evaluating its density at the proposals (about 0.1-5 s
            per dataset on one CPU core in the accuracy benchmark, instead of milliseconds).
            ``False`` returns the flow's own draws, unchecked: the fastest, and right only
            as far as the flow is (see the accuracy table in the docs). ``True`` on a model
            without a density is an error.

            Importance sampling weighs flow draws by the model's exact joint density,
            ``log w = log p(θ, y) - log q(θ | y)`` (unconstrained, with Jacobian), smooth the
            weights with Pareto-smoothed importance sampling (PSIS), draw more proposals
            until their effective sample size is twice the draws asked for (at most 16
            times as many, at least 1,000; beyond 20,000 draws, one more per draw and at
            most 4 times as many), and return draws taken from them by systematic
            resampling (see :mod:`pymc_abi.inference.importance`). ``sample_stats`` holds ``model_log_prob``
            next to ``flow_log_prob``, and its attributes ``pareto_k``, ``ess``,
            ``ess_fraction``, ``proposals``, ``distinct_draws`` and ``reliable``: the draws
            are unreliable, and a warning says so, when k̂ > 0.7 and the weights are not
            nearly uniform (an effective sample size below 90% of the proposals).
        refine : bool, optional
            On by default with importance sampling: the second tier of the per-dataset
            ladder. Where the flow's importance-sampled draws are unreliable (on informative
            data, most often a flow far wider than the posterior), a Laplace fit of the
            exact density (L-BFGS from the best draw, the Hessian from exact gradients)
            joins the flow in a defensive mixture, which is importance-sampled in turn (see
            :mod:`pymc_abi.inference.laplace`); it costs tens to hundreds of gradient evaluations.
            ``sample_stats`` attributes say which tier answered (``tier``: ``"flow"``,
            ``"laplace"`` or ``"nuts"``), with its ``pareto_k``, the flow's own
            (``flow_pareto_k``) and the seconds the ladder took (``seconds``).
        fallback : {None, "nuts", False}
            The last tier of the ladder. For datasets whose draws are still not reliable,
            run ``pm.sample`` (NUTS) and return its result instead (``attrs["fallback"]``,
            ``tier = "nuts"``): its chains start at distinct draws of the best tier, with
            the mass matrix taken from them and a shorter tuning (see
            :mod:`pymc_abi.inference.nuts`). ``None`` (the default) does so wherever importance
            sampling is on; ``False`` never does, and returns the unreliable draws with a
            warning; ``"nuts"`` asks for it (an error without importance sampling).
        log_likelihood : bool, default False
            Add the ``log_likelihood`` group, the pointwise log-likelihood of every observed
            variable at every draw, as ``pm.sample(idata_kwargs={"log_likelihood": True})``
            does; ``az.loo`` and ``az.compare`` then work in one line.
        dataset_dim : str, optional
            For a list of datasets (of one shape): return *one* result in which every
            variable gets this dim after ``(chain, draw)``, one entry per dataset, instead of
            a list of results. It is built in one step, so it is as fast as the flow for
            thousands of datasets, and ``az.summary`` and xarray reductions
            (``result.posterior.mean(("chain", "draw"))``) work on all datasets at once. The
            importance-sampling diagnostics become ``sample_stats`` variables along the dim
            (``pareto_k``, ``ess``, ``ess_fraction``, ``reliable``, ...), and with
            ``fallback="nuts"`` a boolean ``fallback`` says which datasets NUTS fitted.
        random_seed : int, optional

        Returns
        -------
        az.InferenceData or xarray.DataTree, or a list of them
            What ``pm.sample`` returns in this environment (``InferenceData`` with ArviZ
            0.x, ``DataTree`` with ArviZ 1.x), with ``posterior`` (dims ``chain, draw,
            *model dims``, deterministics included), ``observed_data``, ``constant_data``,
            ``sample_stats`` holding ``flow_log_prob``, the flow's log density of each draw
            in the unconstrained space, and ``log_likelihood`` if asked for. One result for
            a dict or ``None``, a list for a list, one result for a list with
            ``dataset_dim``.
        """
        if not (fallback is None or fallback is False or fallback == "nuts"):
            raise ValueError(f"fallback must be None, 'nuts' or False, got {fallback!r}.")
        importance_sampling = flag("importance_sampling", importance_sampling, optional=True)
        refine = flag("refine", refine, optional=True)
        log_likelihood = flag("log_likelihood", log_likelihood)
        draws, chains = positive("draws", draws), positive("chains", chains)
        if importance_sampling is None:
            importance_sampling = fallback == "nuts" or self.has_density
        if importance_sampling:
            _ = self._density.logp  # a model without a density says why here
        if fallback and not importance_sampling:
            raise ValueError(
                "fallback='nuts' acts on Pareto k̂, which needs importance sampling: do not "
                "set importance_sampling=False."
            )
        if refine and not importance_sampling:
            raise ValueError(
                "refine=True acts where importance sampling is unreliable, so it needs "
                "importance sampling: do not set importance_sampling=False."
            )
        refine = importance_sampling if refine is None else refine
        if fallback is None:
            fallback = "nuts" if importance_sampling else False
        if dataset_dim is not None:
            taken = {"chain", "draw", *self.model.coords}
            if not isinstance(dataset_dim, str) or dataset_dim in taken:
                raise ValueError(
                    f"dataset_dim must be a new dim name (a str other than 'chain', 'draw' "
                    f"and the model's dims {sorted(self.model.coords)}), got {dataset_dim!r}."
                )
        datasets, single = self.data_spec.datasets(observed, data)
        if dataset_dim is not None and single:
            raise ValueError(
                "dataset_dim= stacks a list of datasets; give a list (of one or more)."
            )
        seed = self._seeds.resolve(random_seed)
        z, log_q = self._draw(datasets, chains * draws, seed)
        self._density.check_support(datasets, z, single)
        k = len(datasets)
        stats = [{"flow_log_prob": log_q[i]} for i in range(k)]
        is_attrs: list[dict] = [{} for _ in range(k)]
        if importance_sampling:
            seeds = np.random.SeedSequence(seed).spawn(k)
            for i in range(k):
                z[i], stats[i], is_attrs[i] = self._density.resample(
                    self._flow(datasets[i]),
                    z[i],
                    log_q[i],
                    datasets[i],
                    seeds[i],
                    None if single else i,
                    refine=refine,
                    nuts_next=fallback == "nuts",
                    too_wide_advice=self._too_wide_advice(),
                )
        attrs = {
            "inference_library": "pymc_abi",
            "inference_library_version": _version(),
            "inference_network": str(self.config["inference_network"]),
        }
        found = (self.data_spec, self._layout, self._density, datasets, z, stats, is_attrs)
        options = {
            "chains": chains,
            "draws": draws,
            "seed": seed,
            "attrs": attrs,
            "fallback": fallback,
            "log_likelihood": log_likelihood,
        }
        if dataset_dim is not None:
            return answers.stacked(*found, dim=dataset_dim, **options)
        results = answers.per_dataset(*found, **options)
        return results[0] if single else results

    def _too_wide_advice(self) -> str:
        """What the ladder tells a user whose flow draws were far too wide."""
        if self.data_spec.preconditioner is not None or not self._can_precondition:
            return ""
        return (
            "The flow's own draws were far too wide for this dataset: on informative data "
            "(a posterior far narrower than the prior), train with preconditioner='laplace' "
            "so that the flow alone resolves it (docs: networks, 'Informative data')."
        )

    def _flow(self, dataset) -> FlowProposal:
        # the dataset's context (and Laplace maps) once for every call of the ladder
        known = []

        def conditioned():
            if not known:
                known.append(self._conditioning(dataset))
            return known[0]

        def propose(n, seed):
            zs, lq = self._draw([dataset], n, seed, conditioned())
            return zs[0], lq[0]

        return FlowProposal(propose, lambda z: self._log_q(z, dataset, conditioned()))

    @torch.no_grad()
    def log_prob(
        self,
        values: _compat.Result | Mapping[str, np.ndarray],
        observed: Mapping[str, Any] | None = None,
        *,
        data: Mapping[str, Any] | None = None,
        jacobian: bool = True,
    ) -> np.ndarray:
        """Log density of the amortized posterior at given parameter values.

        Parameters
        ----------
        values : InferenceData, DataTree or dict
            Posterior draws (the ``posterior`` group of a result), or constrained values of every free
            variable with a leading batch axis.
        observed : dict, optional
            The dataset conditioned on; ``None`` uses the model's observed data.
        data : dict, optional
            Per-dataset covariates, as in :meth:`sample`.
        jacobian : bool, default True
            ``True`` gives the density of the unconstrained values (as PyMC's
            ``model.logp(jacobian=True)``); ``False`` the density of the constrained values.

        Returns
        -------
        ndarray
            Shape ``(chain, draw)`` for a result, else ``(B,)``.
        """
        jacobian = flag("jacobian", jacobian)
        shape = None
        if _compat.is_result(values):
            post = _compat.group(values, "posterior")
            shape = (post.sizes["chain"], post.sizes["draw"])
            values = {
                name: post[name].values.reshape(-1, *post[name].shape[2:])
                for name in self.parameters.free_names
            }
        if observed is not None and not isinstance(observed, Mapping):
            raise TypeError("log_prob conditions on one dataset: give observed as a dict.")
        [dataset], _ = self.data_spec.datasets(observed, data)
        # per-group parameters (a two-level amortizer) take the dataset's number of groups
        lengths = self.data_spec.dim_lengths_of(dataset) if self.parameters.leading else None
        z = self.parameters.to_unconstrained(values, dim_lengths=lengths)
        self.net.eval()
        log_q = self._log_q(z, dataset)
        if not jacobian:
            log_q = log_q - self.parameters.log_jacobian(z, dim_lengths=lengths)
        return log_q.reshape(shape) if shape else log_q

    @torch.no_grad()
    def _conditioning(self, dataset):
        """What the flow conditions on for one dataset: its context and maps."""
        return sampling.conditioning(self.net, self.data_spec, [dataset], self.device)

    @torch.no_grad()
    def _log_q(
        self, z: np.ndarray, dataset: Mapping[str, np.ndarray], conditioned=None
    ) -> np.ndarray:
        """``log q(z | dataset)`` of flat unconstrained draws ``(B, D)``; ``conditioned``
        is the dataset's :func:`sampling.conditioning`, where already computed."""
        context, maps = conditioned or self._conditioning(dataset)
        # float64 where the flow is preconditioned: the maps' centres need it
        dtype = torch.float32 if maps is None else torch.float64

        def chunk(rows):
            theta = torch.as_tensor(rows, dtype=dtype, device=self.device)
            return self.net.log_prob(theta, context.expand(len(rows), -1), maps)

        return sampling.in_passes(chunk, z, self.device)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Save weights, configuration, standardization, history and the model's signature.

        One file, read back by :meth:`Amortizer.load`. Functions that draw covariates are
        not saved: pass them again to ``load`` to train further. The file is written
        beside ``path`` and moved into place once complete, so a reader never sees half a
        file and an interrupted save leaves the previous file intact.

        Parameters
        ----------
        path : str or path
            The file to write (the extension is up to you; the docs use ``.abi``).

        Raises
        ------
        ValueError
            If the amortizer holds a custom network module, which cannot be rebuilt from a
            name; save its ``state_dict`` yourself.

        Notes
        -----
        Under data-parallel training (``torch.distributed``), only rank 0 writes; the other
        ranks, which hold the same weights, return without writing (and without waiting:
        call ``torch.distributed.barrier()`` after ``save`` if they are to read the file).
        """
        if not _distributed.is_main():
            return
        persistence.write(
            path,
            config=self.config,
            signature=self.data_spec.signature(),
            state=self.net.state_dict(),
            history=self.history.to_dict(),
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        model: pm.Model | None = None,
        *,
        covariates: Mapping[str, Callable] | None = None,
        device: str | None = None,
        allow_model_change: bool = False,
        group_sizes: Callable | None = None,
        data: Mapping[str, Callable] | None = None,
    ) -> Amortizer:
        """Load an amortizer saved by :meth:`save`, for the same model.

        Parameters
        ----------
        path : str or path
            A file written by :meth:`save`.
        model : pm.Model, optional
            The model it was trained on; ``None`` takes it from the context.
        covariates : dict, optional
            The functions that draw per-dataset covariates, needed only to train further.
        device : str, optional
            Where to put the networks (``"cpu"``, ``"cuda"``); default CUDA when available.
            Weights are saved on the CPU, so any device can load any file.
        allow_model_change : bool, default False
            Load even if the model differs from the one the amortizer was trained on (its
            priors, likelihood, constants, dim lengths or fixed ``pm.Data``), with a warning
            that lists the differences. The posterior is then that of the old model: use it
            only to start training on the new one.
        group_sizes : callable, optional
            A two-level amortizer's function that drew the observations per group, needed
            only to simulate (to train further, for SBC or misspecification checks; see
            :class:`~pymc_abi.TwoLevelAmortizer`).
        data : dict, optional
            Deprecated: the old name of ``covariates`` (a :class:`FutureWarning`).

        Returns
        -------
        Amortizer
            A :class:`~pymc_abi.TwoLevelAmortizer` where one was saved (the file is read
            once, and the kind it names builds the object).

        Raises
        ------
        ValueError
            If the file is not a pymc-abi amortizer, comes from an incompatible version, was
            trained on another model (the message lists what differs), or holds a kind that
            this class does not load (a flat amortizer, for ``TwoLevelAmortizer.load``).
        """
        covariates = covariate_functions(covariates, data)
        model = pm.modelcontext(model)
        saved = persistence.read(path, model, allow_model_change=allow_model_change)
        kind = next((k for k in _SAVED_KINDS if saved.config.get(k)), None)
        target = Amortizer if kind is None else _SAVED_KINDS[kind]
        if not issubclass(target, cls):
            raise ValueError(
                f"{path} holds a {'flat amortizer' if kind is None else kind + ' amortizer'}: "
                f"load it with {target.__name__}.load."
            )
        persistence.check_saved_covariates(covariates, saved.config, path)
        amortizer = target._from_saved(saved, path, model, covariates, device, group_sizes)
        amortizer.net.load_state_dict(saved.state)
        amortizer.history = History.from_dict(saved.history)
        return amortizer

    @classmethod
    def _from_saved(cls, saved, path, model, covariates, device, group_sizes) -> Amortizer:
        """The untrained object that the checked file ``saved`` describes (:meth:`load`
        loads the weights and history into it). Each kind in the registry has its own."""
        if group_sizes is not None:
            raise ValueError(f"{path} holds a flat amortizer: group_sizes= does not apply.")
        config = saved.config
        return cls(
            model,
            network=NetworkConfig.from_saved(config),
            dim_lengths={k: tuple(v) for k, v in config["dim_lengths"].items()},
            covariates={name: (covariates or {}).get(name) for name in config["covariates"]},
            time_dim=config["time_dim"],
            device=device,
            random_seed=0,
            _pilot=0,
        )

    def __repr__(self) -> str:
        trained = self.history.describe()
        return (
            f"Amortizer(parameters={self.parameters.names}, observed={self.observed_names}, "
            f"inference_network={self.config['inference_network']!r}, "
            f"summaries={self.config['summary_kinds']}, {trained}, device={self.device})"
        )
