"""The model's exact density at flow draws: importance sampling and the support check.

:class:`ModelDensity` joins a :class:`~pymc_abi.DataSpec` to the model's joint log density
(:class:`~pymc_abi.JointLogp`, compiled on first use). It says whether the model has a
density at all (a ``pm.Simulator`` has none), refuses observed values outside the
likelihood's support, and corrects flow draws by PSIS (:mod:`pymc_abi.importance`).
"""

from __future__ import annotations

import warnings

import numpy as np

from pymc_abi.data_spec import DataSpec
from pymc_abi.importance import K_MAX, importance_resample
from pymc_abi.logp import JointLogp

__all__ = ["ModelDensity"]


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
            except ValueError:
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

    def check_support(self, datasets, z: np.ndarray, single: bool, draws: int = 16) -> None:
        """Refuse observed values that the likelihood gives zero probability at every one
        of a few posterior draws: data outside its support. No density, no check."""
        if not self.has_density:
            return
        for i, dataset in enumerate(datasets):
            for name, term in self.pointwise(z[i][:draws], dataset).items():
                impossible = np.all(term == -np.inf, axis=0)
                if impossible.any():
                    where = "" if single else f"Dataset {i} of {len(datasets)}: "
                    index = np.unravel_index(int(np.flatnonzero(impossible)[0]), impossible.shape)
                    value = np.asarray(dataset[name])[index]
                    raise ValueError(
                        f"{where}'{name}' holds {int(impossible.sum())} value(s) with zero "
                        f"probability under its likelihood at every posterior draw, e.g. "
                        f"{name}[{', '.join(map(str, index))}] = {value}: outside the "
                        "distribution's support. Check the data (negative or fractional "
                        "counts, values outside the bounds)."
                    )

    def resample(self, propose, z, log_q, dataset, seeds: np.random.SeedSequence, index):
        """PSIS on one dataset's draws, with more proposals from ``propose(n, seed)`` as
        needed; returns the resampled draws, their stats and the diagnostics."""
        proposal_seeds = iter(seeds.spawn(1_000))
        result = importance_resample(
            lambda n: propose(n, int(next(proposal_seeds).generate_state(1)[0])),
            lambda zs: self(zs, dataset),
            len(z),
            np.random.default_rng(seeds),
            first=(z, log_q),
        )
        if not result.reliable:
            which = "" if index is None else f" (dataset {index})"
            warnings.warn(
                f"Pareto k̂ = {result.pareto_k:.2f} > {K_MAX}{which}, with an effective sample "
                f"size of {result.ess:.0f} of {result.proposals} proposals: the amortized "
                "posterior is too far from the model's posterior for importance sampling to "
                "correct it. Train longer or with a larger network, or use fallback='nuts'.",
                UserWarning,
                stacklevel=3,
            )
        stats = {"flow_log_prob": result.log_q, "model_log_prob": result.log_p}
        return result.z, stats, result.attrs()
