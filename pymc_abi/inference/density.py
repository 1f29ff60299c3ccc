"""The model's exact density at flow draws: importance sampling and the support check.

:class:`ModelDensity` joins a :class:`~pymc_abi.data.spec.DataSpec` to the model's joint log density
(:class:`~pymc_abi.JointLogp`, compiled on first use). It says whether the model has a
density at all (a ``pm.Simulator`` has none), refuses observed values outside the
likelihood's support, and corrects flow draws by PSIS (:mod:`pymc_abi.inference.importance`).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np

from pymc_abi.core.errors import UnreliablePosteriorWarning
from pymc_abi.data.spec import DataSpec
from pymc_abi.inference.importance import K_MAX, importance_resample
from pymc_abi.inference.laplace import MixtureProposal, laplace_fit
from pymc_abi.model.logp import JointLogp, NoDensityError
from pymc_abi.model.preconditioner import LaplaceMaps, laplace_maps

__all__ = ["FlowProposal", "ModelDensity"]

_log = logging.getLogger("pymc_abi")


#: an ESS below this share of the flow's proposals: its draws are far too wide (or far
#: off), and the ladder moves on to its next tier rather than draw many more of them
TOO_WIDE = 0.1


class FlowProposal(NamedTuple):
    """The flow for one dataset, as the ladder uses it."""

    #: ``propose(n, seed)``: ``n`` draws (n, D) and their flow log densities (n,)
    propose: Callable[[int, int], tuple[np.ndarray, np.ndarray]]
    #: ``log_q(z)``: the flow's log density at draws ``z`` (n, D)
    log_q: Callable[[np.ndarray], np.ndarray]


class ModelDensity:
    """The model's joint density for the datasets a :class:`DataSpec` describes."""

    def __init__(self, spec: DataSpec):
        self.spec = spec
        self._logp: JointLogp | None = None
        self._has_density: bool | None = None

    @property
    def logp(self) -> JointLogp:
        """The compiled joint log density (raises for a model without one)."""
        if self._logp is None:
            self._logp = JointLogp(self.spec.simulator.parameters)
        return self._logp

    @property
    def has_density(self) -> bool:
        if self._has_density is None:
            try:
                _ = self.logp
                self._has_density = True
            except NoDensityError:  # any other error is a failure, and is raised
                self._has_density = False
        return self._has_density

    def _args(self, dataset):
        spec = self.spec
        return dict(
            data=spec.covariates_of(dataset), dim_lengths=spec.dim_lengths_of(dataset) or None
        )

    def __call__(self, z: np.ndarray, dataset) -> np.ndarray:
        """Joint log density of unconstrained draws ``z`` (L, D) given one dataset."""
        return self.logp(z, self.spec.observed_of(dataset), **self._args(dataset))

    def pointwise(self, z: np.ndarray, dataset) -> dict[str, np.ndarray]:
        """Pointwise log-likelihood of every observed variable at draws ``z``."""
        return self.logp.pointwise(z, self.spec.observed_of(dataset), **self._args(dataset))

    #: Prior draws at which data must be impossible, beside the posterior draws, before
    #: they are refused (:meth:`check_support`); model comparison checks at as many.
    PRIOR_DRAWS = 256

    def prior_points(self, dataset, draws: int | None = None, seed: int = 0) -> np.ndarray:
        """``draws`` unconstrained prior draws (default :attr:`PRIOR_DRAWS`) at the sizes
        of ``dataset``, cached per sizes and seed; a model without free variables has one
        point, the empty one."""
        draws = self.PRIOR_DRAWS if draws is None else int(draws)
        lengths = self.spec.dim_lengths_of(dataset) or None
        key = (tuple(sorted((lengths or {}).items())), draws, seed)
        cache = self.__dict__.setdefault("_prior_points", {})
        if key not in cache:
            simulator = self.spec.simulator
            if not simulator.parameters.free_names:
                cache[key] = np.zeros((1, 0))
            else:
                values = simulator.sample(draws, dim_lengths=lengths, random_seed=seed)
                cache[key] = simulator.parameters.to_unconstrained(values, dim_lengths=lengths)
        return cache[key]

    def check_support(self, datasets, z: np.ndarray, single: bool, draws: int = 16) -> None:
        """Refuse observed values that the likelihood gives zero density at every one of a
        few posterior draws and of :attr:`PRIOR_DRAWS` prior draws: data outside its
        support (or at a bound where its density is zero). No density, no check."""
        if not self.has_density:
            return
        for i, dataset in enumerate(datasets):
            # an element impossible at every draw makes the joint -inf at every draw: only
            # then are the pointwise terms (compiled on first use) needed to find it
            if np.any(self(z[i][:draws], dataset) > -np.inf):
                continue
            # the flow's draws may all miss where the data are possible (a poor fit, or a
            # bound set by a parameter): the prior's draws decide then
            prior = self.prior_points(dataset)
            if np.any(self(prior, dataset) > -np.inf):
                continue
            terms = self.pointwise(np.concatenate([z[i][:draws], prior]), dataset)
            covariates = sorted(self.spec.covariates_of(dataset) or ())
            also = (
                f" The covariates given with the data ({covariates}) enter the likelihood: "
                "check them too (a negative count n, a value outside a bound they set)."
                if covariates
                else ""
            )
            for name, term in terms.items():
                impossible = np.all(term == -np.inf, axis=0)
                if impossible.any():
                    where = "" if single else f"Dataset {i} of {len(datasets)}: "
                    index = np.unravel_index(int(np.flatnonzero(impossible)[0]), impossible.shape)
                    value = np.asarray(dataset[name])[index]
                    raise ValueError(
                        f"{where}'{name}' holds {int(impossible.sum())} value(s) with zero "
                        f"density under its likelihood at every one of {draws} posterior "
                        f"and {len(prior)} prior draws, e.g. "
                        f"{name}[{', '.join(map(str, index))}] = {value}: outside the "
                        "distribution's support, or at a bound where its density is zero. "
                        "Check the data (negative or fractional counts, values outside or "
                        "at the bounds)." + also
                    )
            # each value is possible at some draw, only no draw found makes them all
            # possible: data in a corner of the prior, which the ladder looks for

    def laplace_maps(self, values: Mapping[str, np.ndarray]) -> LaplaceMaps:
        """The Laplace maps (:mod:`pymc_abi.model.preconditioner`) of a batch of datasets of
        equal sizes: observed values and per-dataset covariates with a leading axis, as
        :meth:`DataSpec.network_inputs` gets them. Every fit starts at the model's initial
        point, so the maps are a function of the data alone."""
        spec = self.spec
        first = {name: np.asarray(values[name])[0] for name in spec.variables}
        lengths = spec.dim_lengths_of(first) or None
        observed = {name: np.asarray(values[name]) for name in spec.observed}
        covariates = {name: np.asarray(values[name]) for name in spec.covariates}
        return laplace_maps(self.logp, self.start, observed, covariates or None, lengths)

    @property
    def start(self) -> np.ndarray:
        """The model's initial point (PyMC's, seeded: random initvals too are fixed), flat and
        unconstrained."""
        if "_start" not in self.__dict__:
            parameters = self.spec.simulator.parameters
            point = parameters.model.initial_point(random_seed=0)  # same for "prior" initvals
            self._start = np.concatenate(
                [np.ravel(point[name]) for name in parameters.value_names]
            ).astype(np.float64)
        return self._start

    def value_and_grad(self, z: np.ndarray, dataset) -> tuple[np.ndarray, np.ndarray]:
        """Joint log density of draws ``z`` (L, D) given one dataset, and its gradient."""
        return self.logp.value_and_grad(z, self.spec.observed_of(dataset), **self._args(dataset))

    def warm_up(self, dataset) -> None:
        """Compile every function the ladder uses for datasets like ``dataset`` now, so that
        the first :meth:`resample` costs what later ones do."""
        if self.has_density:
            lengths = self.spec.dim_lengths_of(dataset) or None
            z = np.zeros((1, self.spec.simulator.parameters.ndim_for(lengths)))
            self(z, dataset)
            self.value_and_grad(z, dataset)

    def resample(
        self,
        flow,
        z,
        log_q,
        dataset,
        seeds: np.random.SeedSequence,
        index,
        *,
        refine,
        nuts_next,
        too_wide_advice: str = "",
    ):
        """The per-dataset ladder on one dataset's flow draws ``z`` (S, D).

        Tier 1: PSIS on the flow's draws, with more proposals from ``flow.propose(n, seed)``
        as needed. Tier 2, with ``refine``, where tier 1 is unreliable (k̂ > 0.7) or far too
        wide (an ESS below 10% of its proposals): a Laplace fit on the exact density from the
        best draw, and PSIS on the defensive mixture of the flow and the fit
        (:mod:`pymc_abi.inference.laplace`); the better of the two tiers answers, and a flow tier
        that was reliable but stopped short is then completed. Returns the resampled draws, their stats and the
        diagnostics of the tier that answered (``tier``, ``pareto_k``, ...; ``flow_pareto_k``
        is tier 1's, ``seconds`` the time of the whole ladder). Unreliable draws are
        flagged by a warning that says whether NUTS takes over (``nuts_next``).
        ``too_wide_advice`` is added to the warning, and to the log line of a Laplace tier
        that answered, where the flow's own draws were far too wide (an ESS below 10% of
        their proposals).
        """
        start = time.perf_counter()
        draws = len(z)
        next_seed = _seed_stream(seeds)

        def flow_tier(**give_up):
            return importance_resample(
                lambda n: flow.propose(n, next_seed()),
                lambda zs: self(zs, dataset),
                draws,
                np.random.default_rng(seeds),
                first=(z, log_q),
                **give_up,
            )

        # with a next tier, the flow's stops early where it is hopeless (k̂ > 0.7) or far
        # too wide (ESS below 10% of its proposals, as on informative data)
        result = flow_tier(**(dict(give_up_k=K_MAX, give_up_efficiency=TOO_WIDE) if refine else {}))
        flow_k, tier, tried, why_not = result.pareto_k, "flow", "flow", ""
        flow_log_q = result.log_q
        too_wide = result.ess_fraction < TOO_WIDE
        if refine and (result.gave_up or not result.reliable):
            fit = laplace_fit(
                lambda zs: self.value_and_grad(zs, dataset), result.z[np.argmax(result.log_p)]
            )
            if isinstance(fit, str):
                why_not = f" The Laplace fit failed: {fit}."
            else:
                tried = "flow and Laplace"
                mixture = MixtureProposal(fit, flow.propose, flow.log_q)
                tier_seeds = seeds.spawn(2)
                mixture_seed = _seed_stream(tier_seeds[0])
                refined = importance_resample(
                    lambda n: mixture(n, mixture_seed()),
                    lambda zs: self(zs, dataset),
                    draws,
                    np.random.default_rng(tier_seeds[1]),
                    give_up_k=K_MAX if nuts_next else None,
                )
                if refined.better_than(result):
                    result, tier = refined, "laplace"
                    flow_log_q = flow.log_q(result.z)
            if tier == "flow" and result.reliable:  # reliable but short: finish it
                result = flow_tier()
                flow_k, flow_log_q = result.pareto_k, result.log_q
        seconds = time.perf_counter() - start
        if not result.reliable:
            which = "" if index is None else f" (dataset {index})"
            warnings.warn(
                f"Pareto k̂ = {result.pareto_k:.2f} > {K_MAX}{which}, with an effective sample "
                f"size of {result.ess:.0f} of {result.proposals} proposals (tiers tried: "
                f"{tried}, {seconds:.1f} s): the amortized posterior is too far from the "
                f"model's posterior for importance sampling to correct it.{why_not} "
                + (
                    "NUTS takes over for this dataset."
                    if nuts_next
                    else "Train longer or with a larger network, or let NUTS take over "
                    "(fallback=None, the default)."
                )
                + (f" {too_wide_advice}" if too_wide and too_wide_advice else ""),
                UnreliablePosteriorWarning,
                stacklevel=3,
            )
        elif tier != "flow":
            _log.info(
                "Dataset%s: the flow alone was unreliable (k̂ = %.2f); the Laplace tier "
                "answered (k̂ = %.2f, %.2f s).%s",
                "" if index is None else f" {index}",
                flow_k,
                result.pareto_k,
                seconds,
                f" {too_wide_advice}" if too_wide and too_wide_advice else "",
            )
        stats = {"flow_log_prob": flow_log_q, "model_log_prob": result.log_p}
        attrs = {**result.attrs(), "tier": tier, "flow_pareto_k": flow_k, "seconds": seconds}
        return result.z, stats, attrs


def _seed_stream(sequence: np.random.SeedSequence) -> Callable[[], int]:
    """Integer seeds from the children of ``sequence``, one per call."""
    children = iter(sequence.spawn(1_000))
    return lambda: int(next(children).generate_state(1)[0])
