"""Amortized Bayesian model comparison: which of several PyMC models made these data?

A classifier trained on simulations of every model gives posterior model probabilities
for any new dataset in milliseconds, for likelihood-free models (``pm.Simulator``) too.
This module joins the two worlds, as :mod:`pymc_abi.amortizers.amortizer` does: each model's
:class:`~pymc_abi.data.spec.DataSpec` simulates (numpy), :class:`~pymc_abi.networks.comparison.
ComparisonNetwork` classifies (torch), and :func:`pymc_abi.training.loop.train` trains it.
The mathematics (logits, Bayes factors, priors, temperature) are in
:mod:`pymc_abi.networks.comparison`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pymc as pm
import torch
import xarray as xr

from pymc_abi.amortizers import persistence
from pymc_abi.amortizers.amortizer import Amortizer
from pymc_abi.core._arguments import covariate_functions, flag, positive, real
from pymc_abi.core.config import PILOT_SIMULATIONS, NetworkConfig, TrainingConfig, split_options
from pymc_abi.core.errors import DroppedSimulationsWarning, ModelChangedError, PymcAbiWarning
from pymc_abi.core.seeds import RandomSeed, SeedTree, scoped_torch_seed, torch_generator
from pymc_abi.data.spec import DataSpec
from pymc_abi.inference.density import ModelDensity
from pymc_abi.model._model import check_imputation
from pymc_abi.model._signature import differences
from pymc_abi.model.simulator import ModelSimulator
from pymc_abi.networks.comparison import ComparisonNetwork, fit_temperature
from pymc_abi.networks.summary import summary_kinds
from pymc_abi.training import _distributed
from pymc_abi.training._distributed import checked_device
from pymc_abi.training.loop import History, train
from pymc_abi.training.sources import DropCounter

__all__ = ["ModelComparator"]

#: simulations per model that a temperature is fitted on, at least
MIN_CALIBRATION = 50
#: simulations of one simulate_logits call, at most (their logits are held in memory)
MAX_SIMULATIONS = 100_000_000
# simulations per model in one pass of the simulators (calibration, temperature)
_CHUNK = 1024


def _kind(dtype) -> str:
    kind = np.dtype(dtype).kind
    return "integer" if kind in "iub" else "float"


def check_shared_observed(names: Sequence[str], specs: Sequence[DataSpec]) -> None:
    """Refuse models that do not share their observed variables (names, dims, shapes,
    dtypes) and covariates; the error names the model and the variable."""
    first, ref = names[0], specs[0]
    for name, spec in zip(names[1:], specs[1:]):
        missing = sorted(set(ref.observed) - set(spec.observed))
        extra = sorted(set(spec.observed) - set(ref.observed))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"lacks observed variable(s) {missing}")
            if extra:
                parts.append(f"has observed variable(s) {extra} that '{first}' does not")
            raise ValueError(
                f"Model '{name}' {' and '.join(parts)}: the models compared must share their "
                f"observed variables (those of '{first}': {list(ref.observed)})."
            )
        for var in [*ref.observed, *ref.covariates]:
            what = "observed variable" if var in ref.observed else "covariate"
            if spec.dims(var) != ref.dims(var):
                raise ValueError(
                    f"The {what} '{var}' has dims {spec.dims(var)} in model '{name}' but "
                    f"{ref.dims(var)} in model '{first}': the models compared must give it "
                    "the same dims."
                )
            if spec.shapes[var] != ref.shapes[var]:
                raise ValueError(
                    f"The {what} '{var}' has shape {spec.shapes[var]} in model '{name}' but "
                    f"{ref.shapes[var]} in model '{first}': the models compared must give it "
                    "the same shape (and dim lengths)."
                )
            if _kind(spec.dtypes[var]) != _kind(ref.dtypes[var]):
                raise ValueError(
                    f"The {what} '{var}' is {_kind(spec.dtypes[var])} ({spec.dtypes[var]}) in "
                    f"model '{name}' but {_kind(ref.dtypes[var])} ({ref.dtypes[var]}) in model "
                    f"'{first}': data of one kind cannot come from both."
                )


def _check_prior(prior, names: Sequence[str]) -> np.ndarray:
    """Prior model probabilities as an array in the order of ``names``, normalized."""
    m = len(names)
    if prior is None:
        return np.full(m, 1.0 / m)
    if isinstance(prior, Mapping):
        unknown = sorted(set(prior) - set(names))
        missing = [n for n in names if n not in prior]
        if unknown or missing:
            raise ValueError(
                f"prior must give a probability for every model {list(names)}"
                + (f"; unknown name(s) {unknown}" if unknown else "")
                + (f"; missing {missing}" if missing else "")
                + "."
            )
        values = _probabilities([prior[n] for n in names])
    elif isinstance(prior, str | bytes) or not isinstance(prior, Sequence | np.ndarray):
        raise TypeError(
            "prior must be a dict of model names to probabilities or a sequence in the order "
            f"of the models {list(names)}; got {type(prior).__name__}."
        )
    else:
        values = _probabilities(prior).ravel()
        if values.shape != (m,):
            raise ValueError(
                f"prior has {values.size} entries for {m} models {list(names)}: give one each."
            )
    # scaled by the largest first: weights of 1e308 each (or 1e-320) are a uniform prior
    scaled = values / values.max() if np.all(np.isfinite(values)) and values.max() > 0 else values
    if not np.all(np.isfinite(values)) or np.any(values <= 0) or np.any(scaled <= 0):
        raise ValueError(
            f"prior model probabilities must be positive and finite (relative weights "
            f"within a factor 1e300 of each other), got {dict(zip(names, values.tolist()))}."
        )
    return scaled / scaled.sum()


def _probabilities(values) -> np.ndarray:
    """Numbers only: ``"0.2"`` or ``True`` as a probability is refused."""
    array = np.asarray(values, dtype=object).ravel()
    if not all(
        isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool | np.bool_)
        for v in array
    ):
        raise TypeError(
            f"prior probabilities must be numbers, got {list(array)}: give floats, e.g. "
            "{'a': 0.3, 'b': 0.7}."
        )
    return np.asarray(values, dtype=np.float64)


class ModelComparator:
    """Amortized posterior model probabilities for several PyMC models.

    Usually made by :func:`fit_comparison`. The constructor builds one simulator per model,
    checks that the models share their observed variables, takes standardization statistics
    from pilot simulations of every model and builds an untrained classifier.

    Parameters
    ----------
    models : dict of str to pm.Model
        The models to compare, by name (at least two). They must share their observed
        variables: names, dims, shapes at the models' sizes and kind (integer or float),
        and the covariates given in ``covariates``. Models without free variables (a fixed-p
        binomial) and likelihood-free models (``pm.Simulator``) are fine.
    prior : dict or sequence, optional
        Prior model probabilities, by name or in the order of ``models``; uniform by
        default. Changeable after training (:attr:`prior`): the classifier is trained
        under the uniform prior and other priors follow by Bayes' rule.
    dim_lengths : dict, optional
        Train on datasets of varying size, as for :class:`~pymc_abi.Amortizer`:
        ``{"obs": (10, 200)}``. All models share the lengths of one batch.
    covariates : dict, optional
        Covariates drawn per dataset, ``{"X": fn}`` with ``fn(rng, n, dim_lengths)``, as
        for :class:`~pymc_abi.Amortizer`; every model must have these ``pm.Data``
        containers, and the simulations of all models in one batch share the same draws.
    time_dim : str, optional
        A dim that is time (a dim of every model).
    network : NetworkConfig, optional
        The summary networks are chosen as for posteriors (``summary_network``,
        ``summary_features``, default 32); ``hidden_features`` sizes the classifier head.
    device : str or torch.device, optional
    random_seed : int, optional
        The root of the comparator's seed tree.
    data : dict, optional
        Deprecated: the old name of ``covariates`` (a :class:`FutureWarning`).
    **network_options
        Fields of :class:`~pymc_abi.NetworkConfig`.

    Attributes
    ----------
    names : list of str
        The models' names, in order: the ``model`` coordinate of every result.
    models : dict of str to pm.Model
    data_specs : dict of str to DataSpec
        One per model; the first model's assembles network inputs and checks datasets.
    net : ComparisonNetwork
    history : History
    temperature : float
        Divides the logits; fitted on held-out simulations by :meth:`fit` (1 before).
    dropped_simulations : int
        Simulations dropped by the latest :meth:`fit` (NaN, inf or beyond float32).
    config : dict
        Everything needed to rebuild the networks, and the prior (saved with the
        comparator by :meth:`save`).

    Examples
    --------
    >>> comparator = abi.fit_comparison({"m1": m1, "m2": m2}, random_seed=1)  # doctest: +SKIP
    >>> comparator.predict({"y": y})  # doctest: +SKIP
    <xarray.DataArray 'model_probability' (model: 2)> ...
    """

    #: whose defaults it takes (:data:`pymc_abi.core.config.KINDS`)
    KIND = "comparison"

    def __init__(
        self,
        models: Mapping[str, pm.Model],
        *,
        prior: Mapping[str, float] | Sequence[float] | None = None,
        dim_lengths: Mapping[str, int | tuple[int, int]] | None = None,
        covariates: Mapping[str, Callable | None] | None = None,
        time_dim: str | None = None,
        network: NetworkConfig | None = None,
        device: str | torch.device | None = None,
        random_seed: RandomSeed = None,
        data: Mapping[str, Callable | None] | None = None,
        _pilot: int = PILOT_SIMULATIONS["comparison"],
        **network_options,
    ):
        covariates = covariate_functions(covariates, data)
        if not isinstance(models, Mapping):
            raise TypeError(
                "models must be a dict of names to PyMC models, e.g. {'linear': m1, "
                f"'quadratic': m2}}; got {type(models).__name__}."
            )
        if len(models) < 2:
            raise ValueError(f"Model comparison needs at least two models, got {len(models)}.")
        for name, model in models.items():
            if not isinstance(name, str) or not isinstance(model, pm.Model):
                raise TypeError(
                    f"models must map names (str) to pm.Model; got {name!r}: "
                    f"{type(model).__name__}."
                )
            if not name.strip():
                raise ValueError(f"models: a model's name must not be blank, got {name!r}.")
        seen: dict[int, str] = {}
        for name, model in models.items():
            if id(model) in seen:
                raise ValueError(
                    f"models[{seen[id(model)]!r}] and models[{name!r}] are the same model: a "
                    "model compared with itself cannot be told apart. Give distinct models."
                )
            seen[id(model)] = name
        unknown = sorted(set(network_options) - set(NetworkConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(f"ModelComparator got unknown option(s) {unknown}.")
        config, _ = split_options(network_options, network=network)
        if config.preconditioner is not None:
            raise ValueError(
                "preconditioner= shapes a posterior flow; model comparison has none. Leave "
                "preconditioner=None."
            )
        self.names = list(models)
        self.models = dict(models)
        self._prior = _check_prior(prior, self.names)
        self.network_config = config
        self.device = checked_device(device)
        self._seeds = SeedTree(random_seed)
        self.history = History()
        self.dropped_simulations = 0
        self.data_specs: dict[str, DataSpec] = {}
        for name, model in self.models.items():
            check_imputation(model)
            try:
                simulator = ModelSimulator(model, random_seed=self._seeds.child())
                self.data_specs[name] = DataSpec.from_model(
                    simulator,
                    dim_lengths=dim_lengths,
                    covariates=covariates,
                    time_dim=time_dim,
                    summary_kinds=summary_kinds(config.summary_network),
                )
            except (ValueError, TypeError) as err:
                raise type(err)(f"Model '{name}': {err}") from err
        check_shared_observed(self.names, list(self.data_specs.values()))
        spec = self.data_spec
        with scoped_torch_seed(self._seeds.child(), self.device):
            self.net = ComparisonNetwork.build(spec.inputs, spec.pilot(), config, len(self.names))
        if _pilot:
            _, inputs = self._simulate(max(1, _pilot // len(self.names)), self._seeds.child())
            self.net.fit_standardization(inputs)
        self.net.to(self.device)

    # ------------------------------------------------------------------ description
    @property
    def data_spec(self) -> DataSpec:
        """The first model's :class:`~pymc_abi.data.spec.DataSpec`: it checks datasets and assembles
        network inputs for all models (they share their observed variables)."""
        return self.data_specs[self.names[0]]

    @property
    def observed_names(self) -> list[str]:
        return list(self.data_spec.observed)

    @property
    def config(self) -> dict:
        """The saved configuration: model names, networks, data description and prior, as
        plain data (the temperature is saved with the weights)."""
        net, spec = self.network_config, self.data_spec
        summary_features = net.summary_width(self.KIND, 0)
        return {
            "kind": "comparator",
            "names": list(self.names),
            "summary_kinds": {i.name: i.kind for i in spec.inputs},
            "summary_features": summary_features,
            "hidden_features": list(net.hidden_features),
            "recurrent_steps": net.recurrent_steps,
            "full_resolution_layers": net.full_resolution_layers,
            "time_series_features": net.time_series_width(summary_features),
            "dim_lengths": {k: list(v) for k, v in spec.dim_ranges.items()},
            "covariates": list(spec.covariates),
            "time_dim": spec.time_dim,
            "prior": self._prior.tolist(),
        }

    @property
    def prior(self) -> xr.DataArray:
        """Prior model probabilities (settable with a dict or a sequence; no retraining)."""
        return xr.DataArray(
            self._prior.copy(), dims=("model",), coords={"model": self.names}, name="prior"
        )

    @prior.setter
    def prior(self, value) -> None:
        if isinstance(value, xr.DataArray):
            if value.dims != ("model",):
                raise ValueError(
                    f"prior as a DataArray needs the one dim 'model' (coords: the model "
                    f"names), got dims {value.dims}; or give a dict of names to probabilities."
                )
            value = dict(zip(value["model"].values.tolist(), value.values.tolist()))
        self._prior = _check_prior(value, self.names)

    @property
    def temperature(self) -> float:
        return self.net.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        value = real("temperature", value)
        # the logits are float32: a temperature beyond its range makes them 0 or inf
        if not (np.isfinite(value) and 1e-30 <= value <= 1e30):
            raise ValueError(f"temperature must be positive, in [1e-30, 1e30], got {value!r}.")
        self.net.log_temperature.fill_(float(np.log(value)))

    # ------------------------------------------------------------------ simulation
    def _simulate(
        self, n: int, seed: int, dropped: DropCounter | None = None, lengths=None, counts=None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``n`` simulations of every model (or ``counts[m]`` of model ``m``) as
        ``(labels, inputs)`` tensors: one set of dim lengths and one draw of the
        covariates for all models."""
        dropped = DropCounter() if dropped is None else dropped
        spec = self.data_spec
        counts = [n] * len(self.names) if counts is None else list(counts)
        rng = np.random.default_rng(seed)
        lengths = spec.draw_lengths(rng) if lengths is None else dict(lengths)
        shared = spec.draw_covariates(rng, max(counts), lengths)
        seeds = np.random.SeedSequence(seed).spawn(len(self.names))
        labels, parts = [], []
        for m, name in enumerate(self.names):
            if counts[m] == 0:
                continue
            covariates = {k: v[: counts[m]] for k, v in shared.items()}
            sim = self.data_specs[name].simulate(
                counts[m],
                int(seeds[m].generate_state(1)[0]),
                dim_lengths=lengths,
                covariates=covariates,
            )
            z, values = dropped.keep(sim.z, sim.values, sim.finite)
            parts.append(spec.network_inputs(values, len(z)))
            labels.append(np.full(len(z), m, dtype=np.int64))
        inputs = {
            k: torch.as_tensor(np.concatenate([p[k] for p in parts]), device=self.device)
            for k in parts[0]
        }
        return torch.as_tensor(np.concatenate(labels), device=self.device), inputs

    def _validation(self, n_total: int, seeds: SeedTree, dropped: DropCounter):
        per = max(1, n_total // len(self.names))
        ranges = self.data_spec.dim_ranges
        if not ranges:
            return self._simulate(per, seeds.child(), dropped)
        sets = []
        for q in (0.0, 0.5, 1.0):
            lengths = {d: int(round(lo + q * (hi - lo))) for d, (lo, hi) in ranges.items()}
            sets.append(self._simulate(max(1, per // 3), seeds.child(), dropped, lengths))
        return sets

    def _online(self, per: int, seeds: SeedTree, dropped: DropCounter) -> Iterator:
        while True:
            yield self._simulate(per, seeds.child(), dropped)

    @staticmethod
    def _epochs(bank, batch_size: int, generator: torch.Generator) -> Iterator:
        labels, data = bank
        while True:
            order = torch.randperm(labels.shape[0], generator=generator)
            for start in range(0, labels.shape[0] - batch_size + 1, batch_size):
                idx = order[start : start + batch_size].to(labels.device)
                yield labels[idx], {k: v[idx] for k, v in data.items()}

    # ------------------------------------------------------------------ training
    def fit(
        self,
        *,
        simulations: int | None = None,
        training: TrainingConfig | None = None,
        calibrate: bool = True,
        progressbar: bool = True,
        random_seed: RandomSeed = None,
        **options,
    ) -> ModelComparator:
        """Train (further) on simulations of every model, until the validation loss settles.

        Parameters
        ----------
        simulations : int, optional
            ``None`` (default) trains online: every step simulates a fresh batch, an equal
            share from each model (``batch_size // M``), with one set of dim lengths and
            covariates for all. An integer simulates a fixed bank of that many simulations
            *per model* and trains on it for ``epochs``.
        training : TrainingConfig, optional
            The training run; the keyword options override its fields. ``batch_size`` and
            ``validation_simulations`` count all models together. ``min_delta`` defaults to
            0.005 nats of cross-entropy.
        calibrate : bool, default True
            Afterwards, fit the :attr:`temperature` on ``validation_simulations`` fresh
            held-out simulations (:meth:`calibrate_temperature`).
        progressbar : bool, default True
        random_seed : int, optional
            Restarts the comparator's seed tree from this seed.
        **options
            Fields of :class:`~pymc_abi.TrainingConfig`.

        Returns
        -------
        ModelComparator
            ``self``, trained.
        """
        unknown = sorted(set(options) - set(TrainingConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(f"ModelComparator.fit got unknown option(s) {unknown}.")
        _, cfg = split_options(options, training=training)
        _check_training_source(simulations, options)
        calibrate = flag("calibrate", calibrate)
        progressbar = flag("progressbar", progressbar)
        if calibrate and cfg.validation_simulations < MIN_CALIBRATION * len(self.names):
            raise ValueError(
                f"validation_simulations={cfg.validation_simulations} is too few to calibrate "
                f"the temperature on: give at least {MIN_CALIBRATION} per model "
                f"({MIN_CALIBRATION * len(self.names)}), or calibrate=False."
            )
        if random_seed is not None:
            self._seeds = SeedTree(random_seed)
        seeds = self._seeds
        m = len(self.names)
        per = max(1, cfg.batch_size // m)
        torch_seed = seeds.child()
        generator = torch_generator(torch_seed, derive=False)
        dropped = DropCounter()
        self.dropped_simulations = 0
        try:
            if simulations is None:
                validation = self._validation(cfg.validation_simulations, seeds, dropped)
                batches = self._online(per, seeds, dropped)
                steps, every = cfg.budget(None)
            else:
                n = positive("simulations", simulations)
                if self.data_spec.dim_ranges:
                    raise ValueError(
                        "An in-memory bank has one size per simulation; with varying "
                        "dim_lengths train online (simulations=None)."
                    )
                n_val = min(cfg.validation_simulations // m, max(1, n // 10))
                if n - n_val < per:
                    raise ValueError(
                        f"simulations={n} per model leaves fewer than batch_size // models = "
                        f"{per} for training after the validation split; simulate more."
                    )
                validation = self._simulate(max(1, n_val), seeds.child(), dropped)
                bank = self._simulate(n - n_val, seeds.child(), dropped)
                batches = self._epochs(bank, per * m, generator)
                steps, every = cfg.budget(max(1, bank[0].shape[0] // (per * m)))
            with scoped_torch_seed(torch_seed, self.device):
                train(
                    self.net,
                    self.net.loss,
                    batches,
                    validation,
                    steps=steps,
                    validate_every=every,
                    history=self.history,
                    learning_rate=cfg.learning_rate,
                    weight_decay=cfg.weight_decay,
                    warmup=cfg.warmup,
                    clip_norm=cfg.clip_norm,
                    patience=cfg.patience,
                    min_delta=cfg.min_delta_for(self.KIND, 0),
                    anneal=cfg.anneal,
                    progressbar=progressbar,
                )
        finally:
            self.dropped_simulations = dropped.count
        if self.dropped_simulations:
            warnings.warn(
                f"{self.dropped_simulations} simulations held NaN or inf and were dropped.",
                DroppedSimulationsWarning,
                stacklevel=2,
            )
        if calibrate:
            self.calibrate_temperature(cfg.validation_simulations, random_seed=seeds.child())
        return self

    def simulate_logits(
        self,
        num_simulations: int | None,
        *,
        counts: Sequence[int] | None = None,
        random_seed: RandomSeed = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits of fresh simulations, with the index of the model that made each.

        Parameters
        ----------
        num_simulations : int or None
            Simulations in all, an equal share from each model; ``None`` (or their sum)
            with ``counts``.
        counts : sequence of int, optional
            Simulations of each model, one non-negative integer per model, in the order of
            :attr:`names`.
        random_seed : int, optional

        Returns
        -------
        logits : ndarray, shape (N, M)
            Not divided by the temperature.
        labels : ndarray of int, shape (N,)
        """
        m = len(self.names)
        if counts is None:
            n = positive("num_simulations", num_simulations)
            counts = [n // m + (i < n % m) for i in range(m)]
        else:
            counts = self._counts(counts, num_simulations)
        if sum(counts) > MAX_SIMULATIONS:
            raise ValueError(
                f"{sum(counts):,} simulations at once exceed {MAX_SIMULATIONS:,} (their logits "
                "alone would not fit in memory); ask for fewer, in several calls."
            )
        seeds = SeedTree(self._seeds.resolve(random_seed))
        logits, labels = [], []
        remaining = np.array(counts)
        self.net.eval()
        while remaining.sum() > 0:
            take = np.minimum(remaining, _CHUNK)
            y, data = self._simulate(0, seeds.child(), counts=take)
            with torch.no_grad():
                logits.append(self.net.logits(data).double().cpu().numpy())
            labels.append(y.cpu().numpy())
            remaining -= take
        return np.concatenate(logits), np.concatenate(labels)

    def _counts(self, counts, num_simulations) -> list[int]:
        """``counts`` checked: one non-negative integer per model, not all zero."""
        if isinstance(counts, Mapping | str) or not isinstance(counts, Sequence | np.ndarray):
            raise TypeError(
                f"counts must be a sequence of one integer per model {list(self.names)}, got "
                f"{type(counts).__name__}."
            )
        if len(counts) != len(self.names):
            raise ValueError(
                f"counts has {len(counts)} entries for {len(self.names)} models "
                f"{list(self.names)}: give one each."
            )
        counts = [positive("counts", c, minimum=0) for c in counts]
        if not sum(counts):
            raise ValueError("counts are all 0: ask for at least one simulation.")
        if num_simulations is not None and num_simulations != sum(counts):
            raise ValueError(
                f"num_simulations={num_simulations!r} disagrees with counts (sum "
                f"{sum(counts)}): give num_simulations=None with counts."
            )
        return counts

    def calibrate_temperature(
        self, num_simulations: int = 2048, *, random_seed: RandomSeed = None
    ) -> float:
        """Fit the :attr:`temperature` on fresh held-out simulations (an equal share of
        each model, at least ``MIN_CALIBRATION`` each), minimizing their cross-entropy; see
        :func:`~pymc_abi.networks.comparison.fit_temperature`.

        Returns
        -------
        float
            The temperature, also stored (and saved with the weights).
        """
        n = positive("num_simulations", num_simulations)
        if n < MIN_CALIBRATION * len(self.names):
            raise ValueError(
                f"num_simulations={n} is too few to fit a temperature: give at least "
                f"{MIN_CALIBRATION} per model ({MIN_CALIBRATION * len(self.names)} in all); "
                "on fewer the fit is noise and ends on its bounds."
            )
        logits, labels = self.simulate_logits(n, random_seed=random_seed)
        self.temperature = fit_temperature(logits, labels)
        return self.temperature

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def logits(
        self,
        observed: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        data: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ) -> tuple[np.ndarray, bool]:
        """Temperature-scaled logits ``(K, M)`` of checked datasets, and whether one was
        given. Datasets of equal shapes share a pass."""
        datasets, single = self.data_spec.datasets(observed, data)
        return self._logits(datasets) / self.temperature, single

    def _logits(self, datasets) -> np.ndarray:
        spec = self.data_spec
        self.net.eval()
        out = np.empty((len(datasets), len(self.names)))
        for group in spec.groups(datasets, 4096):
            stacked = spec.stack([datasets[i] for i in group])
            inputs = spec.network_inputs(stacked, len(group))
            tensors = {k: torch.as_tensor(v, device=self.device) for k, v in inputs.items()}
            with torch.no_grad():
                out[group] = self.net.logits(tensors).double().cpu().numpy()
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if bad.size:
            which = "the data" if len(datasets) == 1 else f"dataset(s) {bad.tolist()[:10]}"
            raise ValueError(
                f"The classifier's logits of {which} are not finite: values this far beyond "
                "anything the models simulated overflow the network's float32 arithmetic. "
                "Check the data for extreme values (wrong units, a stray huge value)."
            )
        return out

    #: Prior draws at which the data must be possible under a model (see :meth:`predict`).
    SUPPORT_DRAWS = ModelDensity.PRIOR_DRAWS

    def _possible(self, datasets, single: bool) -> np.ndarray:
        """``(K, M)``: whether dataset ``k`` has nonzero density under model ``m`` at any of
        :attr:`SUPPORT_DRAWS` draws of that model's prior (models without a density, as
        ``pm.Simulator``, are not checked). Warns for each model a dataset rules out; raises
        where it rules out all."""
        possible = np.ones((len(datasets), len(self.names)), dtype=bool)
        if not hasattr(self, "_densities"):
            self._densities = {name: ModelDensity(self.data_specs[name]) for name in self.names}
        for m, name in enumerate(self.names):
            density = self._densities[name]
            if not density.has_density:
                continue
            for k, dataset in enumerate(datasets):
                points = density.prior_points(dataset, self.SUPPORT_DRAWS, seed=m)
                possible[k, m] = np.any(density(points, dataset) > -np.inf)
        for k in np.flatnonzero(~possible.any(axis=1)):
            where = "The data" if single else f"Dataset {k} of {len(datasets)}"
            raise ValueError(
                f"{where} have zero density under every model ({self.names}) at each of "
                f"{self.SUPPORT_DRAWS} prior draws: values outside the likelihoods' support "
                "(negative or fractional counts, values outside bounds). Check the data."
            )
        for k, m in zip(*np.nonzero(~possible)):
            where = "the data" if single else f"dataset {k}"
            warnings.warn(
                f"Model '{self.names[m]}' gives {where} zero density at each of "
                f"{self.SUPPORT_DRAWS} draws of its prior (values outside its likelihood's "
                "support): its probability is 0, and the other models share the rest.",
                PymcAbiWarning,
                stacklevel=3,
            )
        return possible

    def _probabilities(self, logits: np.ndarray, prior: np.ndarray) -> np.ndarray:
        # the network learned p(m | y) under the uniform prior; Bayes' rule reweighs it
        z = logits + np.log(prior)
        z -= z.max(axis=-1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=-1, keepdims=True)

    def predict(
        self,
        observed: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        data: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        prior: Mapping[str, float] | Sequence[float] | None = None,
    ) -> xr.DataArray:
        r"""Posterior model probabilities of one dataset or many.

        .. math::

            p(m \mid y) \propto \operatorname{softmax}(f(y) / T)_m \, \pi_m

        for the network's logits :math:`f`, trained under the uniform prior, the
        :attr:`temperature` :math:`T` and the prior :math:`\pi`.

        Each model's exact density checks the network: a model under which the data have
        zero density at every one of :attr:`SUPPORT_DRAWS` draws of its prior (values
        outside its likelihood's support, such as a negative value against a HalfNormal)
        gets probability 0, with a warning, and the other models share the rest.

        Parameters
        ----------
        observed : dict or list of dict, optional
            One dataset (observed variables, and covariates), or a list; ``None`` is the
            first model's own observed data.
        data : dict or list of dict, optional
            Per-dataset covariates, for every dataset or one per dataset.
        prior : dict or sequence, optional
            Prior model probabilities for this call; default :attr:`prior`.

        Raises
        ------
        ValueError
            If a dataset has zero density under every model.

        Returns
        -------
        xarray.DataArray
            ``model_probability``, dims ``("model",)`` for one dataset or
            ``("dataset", "model")`` for a list, coordinate ``model`` the model names.
            ``.to_pandas()`` gives a Series or a DataFrame.
        """
        prior = self._prior if prior is None else _check_prior(prior, self.names)
        datasets, single = self.data_spec.datasets(observed, data)
        logits = self._logits(datasets) / self.temperature
        possible = self._possible(datasets, single)
        p = self._probabilities(np.where(possible, logits, -np.inf), prior)
        attrs = {"temperature": self.temperature, "prior": prior.tolist()}
        if single:
            return xr.DataArray(
                p[0],
                dims=("model",),
                coords={"model": self.names},
                name="model_probability",
                attrs=attrs,
            )
        return xr.DataArray(
            p,
            dims=("dataset", "model"),
            coords={"dataset": np.arange(len(p)), "model": self.names},
            name="model_probability",
            attrs=attrs,
        )

    def log_bayes_factor(
        self,
        observed: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
        numerator: str,
        denominator: str,
        *,
        data: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ) -> float | np.ndarray:
        r"""The amortized log Bayes factor
        :math:`\log p(y \mid a) - \log p(y \mid b) \approx (f_a(y) - f_b(y)) / T`.

        Free of the prior model probabilities. Data with zero density under a model (see
        :meth:`predict`) give ``-inf`` in the numerator's place, ``inf`` in the
        denominator's.

        Parameters
        ----------
        observed : dict, list of dict or None
        numerator, denominator : str
            Model names, :math:`a` and :math:`b`.
        data : dict or list of dict, optional

        Returns
        -------
        float for one dataset, ndarray of shape (K,) for a list
        """
        for label, name in (("numerator", numerator), ("denominator", denominator)):
            if name not in self.names:
                raise ValueError(f"{label}={name!r} is not one of the models {self.names}.")
        datasets, single = self.data_spec.datasets(observed, data)
        logits = self._logits(datasets) / self.temperature
        a, b = self.names.index(numerator), self.names.index(denominator)
        # data with zero density under a model: its evidence is 0, exactly
        logits = np.where(self._possible(datasets, single), logits, -np.inf)
        with np.errstate(invalid="ignore"):
            out = logits[:, a] - logits[:, b]
        return float(out[0]) if single else out

    # ------------------------------------------------------------------ with posteriors
    def sample(
        self,
        observed: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
        amortizers: Mapping[str, Amortizer],
        *,
        which: str = "best",
        data: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        prior: Mapping[str, float] | Sequence[float] | None = None,
        **sample_kwargs,
    ) -> tuple[xr.DataArray, dict | list[dict]]:
        """Which model, and what parameters: model probabilities and posteriors in one call.

        Parameters
        ----------
        observed : dict, list of dict or None
        amortizers : dict of str to Amortizer
            Amortizers trained on (some of) the comparator's models, by model name; each
            must share the comparator's observed variables.
        which : {"best", "all"}
            The posterior of the most probable model per dataset, or of every model with
            an amortizer.
        data : dict or list of dict, optional
        prior : dict or sequence, optional
            Prior model probabilities for this call.
        **sample_kwargs
            Passed to :meth:`Amortizer.sample` (``draws``, ``chains``, ``random_seed``, ...).

        Returns
        -------
        probabilities : xarray.DataArray
            As :meth:`predict` returns them.
        posteriors : dict or list of dict
            Model name to the result of :meth:`Amortizer.sample`; one dict for one dataset,
            a list of dicts for a list.
        """
        if which not in ("best", "all"):
            raise ValueError(f"which must be 'best' or 'all', got {which!r}.")
        if not isinstance(amortizers, Mapping):
            raise TypeError(
                f"amortizers must be a dict of model names to Amortizers, got "
                f"{type(amortizers).__name__}: e.g. {{{self.names[0]!r}: amortizer}}."
            )
        if "dataset_dim" in sample_kwargs:
            raise ValueError(
                "dataset_dim= does not apply here: each dataset's posterior comes from the "
                "amortizer of its own most probable model, so posteriors are returned per "
                "dataset (a list of dicts). Call amortizer.sample(..., dataset_dim=...) "
                "yourself for one model's posteriors of many datasets."
            )
        for name, amortizer in amortizers.items():
            if name not in self.names:
                raise ValueError(f"amortizers[{name!r}]: no model of that name ({self.names}).")
            if not isinstance(amortizer, Amortizer):
                raise TypeError(
                    f"amortizers[{name!r}] is a {type(amortizer).__name__}, not an Amortizer."
                )
            theirs, ours = amortizer.data_spec, self.data_specs[name]
            if amortizer.model is not self.models[name]:
                try:
                    check_shared_observed([name, f"{name} (amortizer)"], [ours, theirs])
                except ValueError as err:
                    raise ValueError(
                        f"The amortizer for '{name}' was trained on a model whose data differ "
                        f"from the comparator's: {err}"
                    ) from err
                changed = differences(theirs.signature(), ours.signature())
                if changed:
                    raise ModelChangedError(
                        f"amortizers[{name!r}] was trained on another model than the "
                        f"comparator's '{name}': {'; '.join(changed)}. Pass the amortizer "
                        f"trained on that model (abi.fit(models[{name!r}]))."
                    )
        if not amortizers:
            raise ValueError("amortizers is empty: give at least one, by model name.")
        probs = self.predict(observed, data=data, prior=prior)
        datasets, single = self.data_spec.datasets(observed, data)
        p = np.atleast_2d(probs.values)
        best = [self.names[i] for i in p.argmax(axis=1)]
        if which == "best":
            missing = sorted({b for b in best if b not in amortizers})
            if missing:
                raise ValueError(
                    f"The most probable model of some dataset is {missing}, which has no "
                    "amortizer: pass one for every model that can win, or which='all'."
                )
        out: list[dict] = [{} for _ in datasets]
        for name, amortizer in amortizers.items():
            idx = [i for i in range(len(datasets)) if which == "all" or best[i] == name]
            if not idx:
                continue
            results = amortizer.sample([datasets[i] for i in idx], **sample_kwargs)
            for i, result in zip(idx, results):
                out[i][name] = result
        return probs, (out[0] if single else out)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Save weights, configuration, prior, temperature, history and the models' signatures.

        One file, read back by :meth:`ModelComparator.load` (not by :meth:`Amortizer.load`).
        Functions that draw covariates are not saved: pass them again to ``load`` to train
        further. The file is written beside ``path`` and moved into place once complete, so
        a reader never sees half a file and an interrupted save leaves the previous file
        intact.

        Parameters
        ----------
        path : str or path
            The file to write (the extension is up to you; the docs use ``.abi``).

        Raises
        ------
        ValueError
            If the comparator holds a custom summary module, which cannot be rebuilt from a
            name; save its ``state_dict`` yourself.

        Notes
        -----
        Under ``torch.distributed``, only rank 0 writes; the other ranks return without
        writing (and without waiting: call ``torch.distributed.barrier()`` after ``save``
        if they are to read the file).

        Examples
        --------
        >>> comparator.save("comparator.abi")  # doctest: +SKIP
        """
        if not _distributed.is_main():
            return
        persistence.write(
            path,
            config=self.config,
            signature={name: spec.signature() for name, spec in self.data_specs.items()},
            state=self.net.state_dict(),
            history=self.history.to_dict(),
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        models: Mapping[str, pm.Model],
        *,
        covariates: Mapping[str, Callable] | None = None,
        device: str | torch.device | None = None,
        allow_model_change: bool = False,
        data: Mapping[str, Callable] | None = None,
    ) -> ModelComparator:
        """Load a comparator saved by :meth:`save`, for the same models.

        Parameters
        ----------
        path : str or path
            A file written by :meth:`save`.
        models : dict of str to pm.Model
            The models it was trained on, by the names they had (in any order: the
            comparator keeps the saved order, that of its ``model`` coordinate).
        covariates : dict, optional
            The functions that draw per-dataset covariates, needed only to train further.
        device : str or torch.device, optional
            Where to put the networks; default CUDA when available. Weights are saved on
            the CPU, so any device can load any file.
        allow_model_change : bool, default False
            Load even if a model differs from the one of that name the comparator was
            trained on, with a warning that lists the differences. Its probabilities are
            then those of the old models: use it only to start training on the new ones.
        data : dict, optional
            Deprecated: the old name of ``covariates`` (a :class:`FutureWarning`).

        Returns
        -------
        ModelComparator
            With the saved weights, prior, temperature and history.

        Raises
        ------
        ValueError
            If the file is not a pymc-abi comparator (an amortizer file names
            :meth:`Amortizer.load`), comes from an incompatible version, was trained on
            models of other names, or one model differs from the one of its name (the
            message names it and lists what differs).

        Examples
        --------
        >>> comparator = abi.ModelComparator.load(  # doctest: +SKIP
        ...     "comparator.abi", {"linear": m1, "quadratic": m2}
        ... )
        """
        covariates = covariate_functions(covariates, data)
        config, state, history = persistence.read_comparator(
            path, models, allow_model_change=allow_model_change
        )
        persistence.check_saved_covariates(covariates, config, path)
        comparator = cls(
            {name: models[name] for name in config["names"]},
            prior=config["prior"],
            dim_lengths={k: tuple(v) for k, v in config["dim_lengths"].items()},
            covariates={name: (covariates or {}).get(name) for name in config["covariates"]},
            time_dim=config["time_dim"],
            network=NetworkConfig(
                summary_network=dict(config["summary_kinds"]),
                summary_features=config["summary_features"],
                hidden_features=tuple(config["hidden_features"]),
                recurrent_steps=config.get("recurrent_steps"),
                full_resolution_layers=config.get("full_resolution_layers"),
                time_series_features=config.get("time_series_features", 64),
            ),
            device=device,
            random_seed=0,
            _pilot=0,
        )
        comparator.net.load_state_dict(state)
        comparator.history = History.from_dict(history)
        return comparator

    def __repr__(self) -> str:
        trained = self.history.describe()
        return (
            f"ModelComparator(models={self.names}, observed={self.observed_names}, "
            f"temperature={self.temperature:.3g}, {trained}, device={self.device})"
        )


def _check_training_source(simulations, options) -> None:
    """Refuse what the comparator cannot train from: a bank on disk (and its
    ``chunk_size``), or data-parallel ranks."""
    if "chunk_size" in options:
        raise ValueError(
            "chunk_size= sets how many simulations are read at a time from a bank on disk; "
            "the comparator trains on its own simulations (online, or in memory). Leave it "
            "out."
        )
    # Why the comparator has neither disk banks nor data-parallel training: the shared
    # training sources (training/sources.py) draw batches of one model's simulations,
    # and a comparator's batch is an equal share of every model's, with one set of dim
    # lengths and covariates for all. Both are refused, not silently done otherwise.
    if simulations is not None and not isinstance(simulations, int | np.integer):
        raise ValueError(
            "The comparator trains online (simulations=None) or on a bank it simulates "
            "in memory (simulations=<number per model>); banks on disk are for "
            f"Amortizer.fit so far. Got simulations={simulations!r}."
        )
    if _distributed.group(init=False) is not None or _distributed.launched():
        raise ValueError(
            "ModelComparator.fit trains in one process: data-parallel training (torchrun, "
            "or an initialized torch.distributed group) is for Amortizer.fit so far. Run "
            "the comparison without the launcher."
        )
