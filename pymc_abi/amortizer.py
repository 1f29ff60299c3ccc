"""The amortizer: a PyMC model's simulator joined to a summary network and a flow.

This is the one module that holds both worlds: the model side (simulator, parameter space)
speaks numpy, the networks speak torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pymc as pm
import torch
import xarray as xr
from pymc.distributions.timeseries import GARCH11RV, AutoRegressiveRV, RandomWalkRV
from pymc.pytensorf import extract_obs_data
from pytensor.tensor.random.op import RandomVariable
from torch import nn

from pymc_abi import _compat
from pymc_abi._memory import release_memory
from pymc_abi._model import observe, observed_containers, observed_rvs
from pymc_abi._signature import differences, model_signature
from pymc_abi.bank import SIM_DIM, UNCONSTRAINED, check_bank, open_bank
from pymc_abi.importance import K_MAX, importance_resample
from pymc_abi.inference_data import Layout
from pymc_abi.logp import JointLogp
from pymc_abi.networks import (
    FusionSummary,
    InferenceNetwork,
    Standardize,
    build_inference_network,
    build_summary_network,
)
from pymc_abi.simulator import ModelSimulator, RandomSeed, _seed_int
from pymc_abi.training import History, train

__all__ = ["Amortizer", "fit"]

_log = logging.getLogger("pymc_abi")

FORMAT_VERSION = 2  # 2: the model signature replaces the structural fingerprint
# draws per pass through the flow: on a CPU, 4,096 rows run as fast as larger passes and
# keep the working memory of a pass near 60 MB (benchmarks/memory.py); a GPU wants large
# passes to fill its cores (256k rows of 128 features: ~134 MB a layer)
_ROWS_PER_PASS = {"cpu": 4096, "cuda": 262144}
_SEED_LOCK = threading.Lock()
_FLOAT32_MAX = float(np.finfo(np.float32).max)


# ---------------------------------------------------------------------- summaries
_TIME_SERIES_RVS = (RandomWalkRV, AutoRegressiveRV, GARCH11RV)
# summaries that take [B, N, F] with N free (sets and sequences)
_SEQUENCE_KINDS = ("deepset", "set_transformer", "time_series")


def _exchangeable_rows(rv, aligned: bool = False) -> bool:
    """True when an observed RV's entries along its first axis are iid given the parameters.

    With row-aligned covariates (``aligned``), rows of (observation, covariates) are
    exchangeable for any elementwise likelihood.
    """
    node = rv.owner
    op = node.op
    if not isinstance(op, RandomVariable):
        return False
    batch_ndim = rv.ndim - op.ndim_supp
    if batch_ndim < 1:
        return False
    if aligned:
        return True
    for param, core in zip(op.dist_params(node), op.ndims_params):
        param_batch = param.ndim - core
        if param_batch == batch_ndim and param.type.shape[0] != 1:
            return False
    return True


@dataclass
class _Input:
    """One input of the summary network: an observed variable with its row-aligned
    covariates, or a covariate on its own."""

    name: str
    variables: list[str]
    kind: str
    shape: tuple[int, ...]  # per simulation, of the first variable, at the model's sizes
    varying: str | None = None  # the dim along the first axis whose length varies

    @property
    def sequence(self) -> bool:
        """Fed as [B, N, F]: set and sequence networks, and custom modules for varying N."""
        return self.kind in _SEQUENCE_KINDS or (self.kind == "custom" and bool(self.varying))

    def assemble(self, values: Mapping[str, np.ndarray], batch: int) -> np.ndarray:
        """Per-simulation arrays -> [B, N, F] for sets and sequences, [B, P] otherwise."""
        parts = []
        for name in self.variables:
            a = np.asarray(values[name], dtype=np.float32)
            if self.sequence:
                n = a.shape[1] if a.ndim > 1 else 1
                parts.append(a.reshape(batch, n, -1))
            else:
                parts.append(a.reshape(batch, -1))
        return np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]


class _Posterior(nn.Module):
    """Standardization, summary network(s) and inference network, as one module."""

    def __init__(
        self,
        features: dict[str, int],
        summaries: dict[str, nn.Module],
        inference: InferenceNetwork,
        summary_features: int,
        ndim: int,
    ):
        super().__init__()
        self.names = tuple(features)
        # robust location and scale; heavy-tailed features squashed (chosen on the pilot)
        self.theta_std = Standardize(ndim, robust=True, squash="auto")
        self.data_std = nn.ModuleList(
            Standardize(features[n], robust=True, squash="auto") for n in self.names
        )
        if len(self.names) == 1:
            self.summary = summaries[self.names[0]]
        else:
            self.summary = FusionSummary(summaries, summary_features)
        self.inference = inference

    def context(self, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        std = {n: s(data[n]) for n, s in zip(self.names, self.data_std)}
        return self.summary(std[self.names[0]] if len(self.names) == 1 else std)

    def loss(self, batch) -> torch.Tensor:
        theta, data = batch
        return self.inference.loss(self.theta_std(theta), self.context(data))


def _chains(values: np.ndarray, chains: int) -> np.ndarray:
    """Independent draws (chains * draws, ...) laid out as (chains, draws, ...)."""
    return values.reshape(chains, -1, *values.shape[1:])


# a saved configuration may ask for layers this wide even if its weights look smaller
_SMALL_WIDTH = 1024


def _check_saved_sizes(config: Mapping, state: Mapping, path) -> None:
    """Refuse a saved configuration that asks for more than its weights hold, before any
    network is built (a crafted file must not make ``load`` allocate gigabytes)."""
    widest = max((max(t.shape, default=1) for t in state.values()), default=1)
    limit = max(widest, _SMALL_WIDTH)
    sizes = [*config.get("hidden_features", []), config.get("summary_features") or 1]
    transforms = config.get("transforms") or 1
    if (
        any(not isinstance(v, int) or not 1 <= v <= limit for v in sizes)
        or not isinstance(transforms, int)
        or not 1 <= transforms <= len(state)
    ):
        raise ValueError(
            f"{path} holds a network configuration ({dict(config)}) that its saved weights "
            "do not support: the file is damaged or was altered."
        )


def _float32_finite(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (B, P) that are finite once cast to float32."""
    x = np.asarray(x)
    if x.dtype.kind not in "fc":
        return np.ones(len(x), dtype=bool)
    with np.errstate(invalid="ignore"):
        return (np.abs(x) <= _FLOAT32_MAX).all(axis=1)  # NaN compares False


def _positive(name: str, value, *, optional: bool = False) -> int | None:
    """A positive integer (or ``None`` where optional); anything else is refused, naming
    the argument."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        allowed = " (or None)" if optional else ""
        raise ValueError(f"{name} must be a positive integer{allowed}, got {value!r}.")
    return int(value)


def _check_network_options(summary_features, hidden_features, transforms, time_dim, model):
    """Refuse network settings that would fail deep inside torch or zuko, or be ignored."""
    if summary_features is not None and (
        isinstance(summary_features, bool) or int(summary_features) < 1
    ):
        raise ValueError(f"summary_features must be a positive integer, got {summary_features!r}.")
    if isinstance(hidden_features, int | str) or not all(
        isinstance(h, int | np.integer) and not isinstance(h, bool) and h >= 1
        for h in hidden_features
    ):
        raise ValueError(
            "hidden_features must be a sequence of positive layer widths, e.g. (128, 128); "
            f"got {hidden_features!r}."
        )
    if transforms is not None and (isinstance(transforms, bool) or int(transforms) < 1):
        raise ValueError(f"transforms must be a positive integer, got {transforms!r}.")
    if time_dim is not None and time_dim not in model.dim_lengths:
        raise ValueError(
            f"time_dim={time_dim!r} is not a dim of the model (dims: "
            f"{sorted(model.dim_lengths) or 'none'})."
        )


def _check_imputation(model) -> None:
    """Refuse models in which PyMC imputes missing observations as free variables."""
    observed = {rv.name for rv in observed_rvs(model)}
    for rv in model.free_RVs:
        base = rv.name.removesuffix("_unobserved")
        if base != rv.name and f"{base}_observed" in observed:
            raise ValueError(
                f"The observed data of '{base}' hold NaN, so PyMC imputes them as the free "
                f"variable '{rv.name}': the amortizer would learn missing data as parameters. "
                "Give complete placeholder data (any values of the right shape: pymc-abi "
                "simulates the data) and drop or impute missing values before sampling."
            )


def _torch_seed(seed: int) -> int:
    """A torch generator seed (63 bits) derived from any non-negative integer seed."""
    return int(np.random.SeedSequence(seed).generate_state(1, dtype=np.uint64)[0] >> 1)


def _version() -> str:
    from pymc_abi import __version__

    return __version__


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------------- amortizer
class Amortizer:
    """Amortized posterior of a PyMC model: fit once, then any dataset in milliseconds.

    Usually made by :func:`fit`. The constructor builds the simulator, takes standardization
    statistics from pilot simulations and builds untrained networks.

    Parameters
    ----------
    model : pm.Model, optional
        The model; ``None`` takes it from the context.
    inference_network : str or InferenceNetwork, default "nsf"
        ``"nsf"`` (spline coupling flow), ``"coupling"`` (affine coupling, RealNVP-style),
        ``"maf"`` (masked autoregressive affine), ``"nsf_ar"`` (autoregressive splines),
        ``"flow_matching"``, or a built :class:`~pymc_abi.networks.InferenceNetwork`.
    summary_network : str, nn.Module or dict, optional
        ``"identity"``, ``"mlp"``, ``"deepset"``, ``"set_transformer"`` or
        ``"time_series"``, a module, or a dict naming one per observed variable (and per
        covariate that is not row-aligned). A module needs an ``output_features``
        attribute; it receives standardized data as ``[B, P]`` (flattened), or as
        ``[B, N, F]`` when the first dim varies. By default: ``"time_series"`` for time-series
        distributions (GaussianRandomWalk, AR, GARCH11) and for data whose first dim is
        ``time_dim``; ``"deepset"`` for observations that are iid along their first axis
        (or rows aligned with per-dataset covariates); the identity for tiny data; an MLP
        otherwise.
    summary_features : int, optional
        Size of the data summary; default ``max(2 * D, 16)`` for ``D`` parameters.
    hidden_features : sequence of int, default (128, 128)
        Hidden layer widths of the flow's conditioners.
    transforms : int, optional
        Number of flow transforms (default depends on the flow).
    dim_lengths : dict, optional
        Train on datasets of varying size: ``{"obs": (10, 200)}`` draws the length of dim
        ``obs`` uniformly in that range for every training batch; an int fixes it.
    data : dict, optional
        Covariates drawn per dataset: ``{"X": fn}`` with ``fn(rng, n, dim_lengths)``
        returning ``n`` values of the ``pm.Data`` container ``X`` (leading axis ``n``) for
        the given dim lengths. The networks are conditioned on them; covariates that share
        their first dim with an observed variable are summarized with it, row by row.
    time_dim : str, optional
        Name of a dim that is time: observed data along it get the time-series summary.
    device : str or torch.device, optional
        CUDA when available, else CPU.
    random_seed : int, optional
        Seeds the pilot simulations, the network initialization and later training.

    Attributes
    ----------
    simulator : ModelSimulator
    parameters : ParameterSpace
    history : History
        Loss history of every training run.
    config : dict
        Everything needed to rebuild the networks (saved with the amortizer).
    """

    def __init__(
        self,
        model: pm.Model | None = None,
        *,
        inference_network: str | InferenceNetwork = "nsf",
        summary_network: str | nn.Module | Mapping[str, str | nn.Module] | None = None,
        summary_features: int | None = None,
        hidden_features: Sequence[int] = (128, 128),
        transforms: int | None = None,
        dim_lengths: Mapping[str, int | tuple[int, int]] | None = None,
        data: Mapping[str, Callable | None] | None = None,
        time_dim: str | None = None,
        device: str | torch.device | None = None,
        random_seed: RandomSeed = None,
        _pilot: int = 4096,
    ):
        self.model = pm.modelcontext(model)
        _check_network_options(summary_features, hidden_features, transforms, time_dim, self.model)
        _check_imputation(self.model)
        self.device = torch.device(device) if device is not None else _default_device()
        self._seeds = np.random.SeedSequence(_seed_int(random_seed, np.random.default_rng()))
        self.simulator = ModelSimulator(self.model, random_seed=self._child_seed())
        self.parameters = self.simulator.parameters
        self.history = History()
        self.dropped_simulations = 0
        self._logp: JointLogp | None = None
        self._has_density: bool | None = None
        self._layout = Layout(self.model)
        self.observed_names = list(self.simulator.observed_names)
        ndim = self.parameters.ndim
        if ndim == 0:
            raise ValueError("The model has no free random variables to infer.")
        self.dim_ranges = self._check_dim_lengths(dim_lengths)
        self.covariates = self._check_covariates(data)
        self.time_dim = time_dim
        # pm.Data holding observed values are data, neither covariates nor constants
        self._containers = observed_containers(self.model)
        # pm.Data the networks were trained with as they are: a change is refused, not ignored
        self._fixed_data = {
            v.name: np.array(v.get_value(), copy=True)
            for v in self.model.data_vars
            if v.name not in self.covariates and v.name not in self._containers
        }
        self._dtypes = {
            **{rv.name: rv.dtype for rv in observed_rvs(self.model)},
            **{name: self.model[name].dtype for name in self.covariates},
        }
        summary_features = int(summary_features or max(2 * ndim, 16))
        self.inputs = self._plan_inputs(summary_network)
        options = {"hidden_features": tuple(hidden_features)}
        if transforms is not None:
            if inference_network == "flow_matching":
                raise ValueError(
                    "transforms= sets the number of flow transforms; flow matching has none "
                    "(its size is hidden_features)."
                )
            options["transforms"] = int(transforms)
        with self._torch_seed():  # every network's initialization is seeded
            summaries, features = self._build_summaries(summary_network, summary_features)
            context = (
                next(iter(summaries.values())).output_features
                if len(summaries) == 1
                else summary_features
            )
            inference = build_inference_network(
                inference_network,
                ndim,
                context,
                **(options if isinstance(inference_network, str) else {}),
            )
            self.net = _Posterior(features, summaries, inference, summary_features, ndim)
        self.config = {
            "inference_network": inference_network if isinstance(inference_network, str) else None,
            "summary_kinds": {i.name: i.kind for i in self.inputs},
            "summary_features": summary_features,
            "hidden_features": list(hidden_features),
            "transforms": transforms,
            "dim_lengths": {k: list(v) for k, v in self.dim_ranges.items()},
            "covariates": list(self.covariates),
            "time_dim": time_dim,
        }
        if _pilot:
            self._fit_standardization(_pilot)
        self.net.to(self.device)

    # ------------------------------------------------------------------ set-up
    def _child_seed(self) -> int:
        with _SEED_LOCK:  # spawning counts children: one thread at a time
            return int(self._seeds.spawn(1)[0].generate_state(1)[0])

    @contextlib.contextmanager
    def _torch_seed(self, seed: int | None = None):
        """Seed torch inside the block only, leaving the global generator as it was."""
        devices = [self.device] if self.device.type == "cuda" else []
        seed = self._child_seed() if seed is None else seed
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    def _dims(self, name: str) -> tuple:
        return tuple(self.model.named_vars_to_dims.get(name, ()) or ())

    def _check_dim_lengths(self, dim_lengths) -> dict[str, tuple[int, int]]:
        ranges = {}
        for dim, value in (dim_lengths or {}).items():
            lo, hi = (value, value) if np.ndim(value) == 0 else tuple(value)
            lo, hi = int(lo), int(hi)
            if not 1 <= lo <= hi:
                raise ValueError(f"dim_lengths['{dim}'] must be a range 1 <= low <= high.")
            ranges[dim] = (lo, hi)
        # checked against the model by the simulator: unknown dims and parameter dims fail
        if ranges:
            self.simulator._inputs.resolve(1, None, {d: r[0] for d, r in ranges.items()})
        return ranges

    def _check_covariates(self, data) -> dict[str, Callable | None]:
        covariates = dict(data or {})
        known = {v.name for v in self.model.data_vars}
        for name, fn in covariates.items():
            if name not in known:
                raise ValueError(
                    f"'{name}' is not a pm.Data container of the model (containers: "
                    f"{sorted(known) or 'none'})."
                )
            if fn is not None and not callable(fn):
                raise TypeError(
                    f"data['{name}'] must be a function fn(rng, n, dim_lengths) that draws "
                    "covariates per dataset; a fixed array belongs in the model (pm.set_data)."
                )
        for dim in self.dim_ranges:
            for var in self.model.data_vars:
                if dim in self._dims(var.name) and var.name not in covariates:
                    raise ValueError(
                        f"dim '{dim}' varies during training, and pm.Data '{var.name}' has that "
                        f"dim: give data={{'{var.name}': fn}} to draw it at each size."
                    )
        return covariates

    def _plan_inputs(self, choice) -> list[_Input]:
        """Which variables feed which summary network, and the default kinds."""
        observed = self._model_observed()
        data_values = {v.name: v.get_value() for v in self.model.data_vars}
        # the shapes the networks are built for (read once, not per dataset at inference)
        self._shapes = {
            name: tuple(np.shape(observed[name] if name in observed else data_values[name]))
            for name in [*self.observed_names, *self.covariates]
        }
        aligned: dict[str, list[str]] = {name: [] for name in self.observed_names}
        alone = []
        for cov in self.covariates:
            target = self._aligned_observed(cov, data_values[cov], observed)
            (aligned[target].append(cov) if target else alone.append(cov))
        names = [*self.observed_names, *alone]
        if isinstance(choice, Mapping):
            unknown = sorted(set(choice) - set(names))
            if unknown:
                raise ValueError(
                    f"summary_network names {unknown}, which are not inputs of the summary "
                    f"networks; give one per observed variable or stand-alone covariate: "
                    f"{names}."
                )
        inputs = []
        for name in names:
            shape = tuple(np.shape(observed[name] if name in observed else data_values[name]))
            dims = self._dims(name)
            varying = dims[0] if dims and dims[0] in self.dim_ranges else None
            for axis, dim in enumerate(dims[1:], start=1):
                if dim in self.dim_ranges:
                    raise ValueError(
                        f"dim '{dim}' varies, but it is axis {axis} of '{name}'; only the first "
                        "axis of a variable can vary (it is summarized as a set or sequence)."
                    )
            pick = choice.get(name) if isinstance(choice, Mapping) else choice
            if isinstance(pick, nn.Module):
                kind = "custom"
            elif pick is not None:
                kind = pick
            else:
                kind = self._default_kind(name, shape, bool(aligned.get(name)), varying)
            if varying and kind not in _SEQUENCE_KINDS and kind != "custom":
                raise ValueError(
                    f"dim '{varying}' varies, so '{name}' needs a summary network that takes "
                    f"sets or sequences of any length ({', '.join(_SEQUENCE_KINDS)}), not "
                    f"'{kind}'."
                )
            inputs.append(_Input(name, [name, *aligned.get(name, [])], kind, shape, varying))
        return inputs

    def _aligned_observed(self, cov, value, observed) -> str | None:
        cov_dims = self._dims(cov)
        for name in self.observed_names:
            obs_dims = self._dims(name)
            if cov_dims and obs_dims:
                if cov_dims[0] is not None and cov_dims[0] == obs_dims[0]:
                    return name
            elif np.ndim(value) >= 1 and np.ndim(observed[name]) >= 1:
                if np.shape(value)[0] == np.shape(observed[name])[0]:
                    return name
        return None

    def _default_kind(self, name, shape, aligned, varying) -> str:
        dims = self._dims(name)
        rv = self.model[name] if name in self.observed_names else None
        if rv is not None and isinstance(rv.owner.op, _TIME_SERIES_RVS):
            return "time_series"
        if self.time_dim is not None and dims and dims[0] == self.time_dim:
            return "time_series"
        if rv is not None and shape and (shape[0] > 1 or varying):
            if _exchangeable_rows(rv, aligned):
                return "deepset"
        if varying:
            raise ValueError(
                f"dim '{varying}' varies, but the rows of '{name}' are not exchangeable and it "
                "is not a time series: choose its summary_network, or name the time dim with "
                "time_dim=."
            )
        return "identity" if int(np.prod(shape, dtype=int)) <= 8 else "mlp"

    def _build_summaries(self, choice, features):
        nets, sizes = {}, {}
        pilot = self._pilot_values()
        for inp in self.inputs:
            example = inp.assemble(pilot, 1)
            in_shape = example.shape[1:]
            sizes[inp.name] = in_shape[-1] if inp.sequence else int(np.prod(in_shape))
            pick = choice.get(inp.name) if isinstance(choice, Mapping) else choice
            if isinstance(pick, nn.Module):
                nets[inp.name] = build_summary_network(pick, in_shape)
                continue
            options = {"hidden_features": 64, "normalize": True} if inp.kind == "deepset" else {}
            nets[inp.name] = build_summary_network(
                inp.kind, in_shape, None if inp.kind == "identity" else features, **options
            )
        return nets, sizes

    def _pilot_values(self) -> dict[str, np.ndarray]:
        """One simulation (batch of 1) at the smallest sizes, for the network input shapes."""
        lengths = {d: r[0] for d, r in self.dim_ranges.items()}
        drawable = {name: fn for name, fn in self.covariates.items() if fn is not None}
        data = self._draw_covariates(np.random.default_rng(0), 1, lengths, drawable)
        for name in self.covariates.keys() - drawable.keys():
            # loaded without the function that draws it: only shapes matter here, so take the
            # model's own value, its varying first dim cut or repeated to the pilot length
            value = np.asarray(self.model[name].get_value())
            dims = self.model.named_vars_to_dims.get(name) or ()
            if dims and dims[0] in lengths:
                value = np.resize(value, (lengths[dims[0]], *value.shape[1:]))
            data[name] = value[None]
        sims = self.simulator.sample(1, random_seed=0, dim_lengths=lengths, data=data)
        sims.update(data)
        return sims

    def _model_observed(self) -> dict[str, np.ndarray]:
        """The model's current observed values, through whatever expression PyMC built
        (a constant, a ``pm.Data`` container, or a cast of one for discrete likelihoods)."""
        return {
            rv.name: np.asarray(extract_obs_data(self.model.rvs_to_values[rv]))
            for rv in observed_rvs(self.model)
        }

    def _fit_standardization(self, n: int) -> None:
        theta, data = self._simulate_batch(n, self._child_seed(), device=torch.device("cpu"))
        self.net.theta_std.fit(theta)
        for name, std in zip(self.net.names, self.net.data_std):
            std.fit(data[name])

    # ------------------------------------------------------------------ data
    def _draw_covariates(self, rng, n, lengths, functions=None) -> dict[str, np.ndarray]:
        out = {}
        for name, fn in (self.covariates if functions is None else functions).items():
            if fn is None:
                raise ValueError(
                    f"Training needs the function that draws covariate '{name}': pass "
                    f"data={{'{name}': fn}} (functions are not saved with an amortizer)."
                )
            value = np.asarray(fn(rng, n, dict(lengths)))
            expected = (n, *self._covariate_shape(name, lengths))
            if value.shape != expected:
                raise ValueError(
                    f"data['{name}'] returned shape {value.shape} for dim lengths "
                    f"{dict(lengths) or 'of the model'}; it must return {n} values of "
                    f"'{name}' stacked along a leading axis, shape {expected}."
                )
            out[name] = value
        return out

    def _signature(self) -> dict:
        """The model's signature, as this amortizer sees it (covariates and varying dims
        are the networks' inputs, not part of the model)."""
        return model_signature(self.model, covariates=self.covariates, varying_dims=self.dim_ranges)

    def _covariate_shape(self, name: str, lengths: Mapping[str, int]) -> tuple[int, ...]:
        """The shape one dataset's covariate must have: the model's, with varying dims at
        the lengths drawn for this batch."""
        shape = list(np.shape(self.model[name].get_value()))
        for axis, dim in enumerate(self._dims(name)):
            if dim in lengths:
                shape[axis] = int(lengths[dim])
        return tuple(shape)

    def _to_tensors(self, z: np.ndarray, values: Mapping[str, np.ndarray], device):
        batch = z.shape[0]
        data = {
            inp.name: torch.as_tensor(inp.assemble(values, batch), device=device)
            for inp in self.inputs
        }
        return torch.as_tensor(z, dtype=torch.float32, device=device), data

    def _finite_rows(self, z, values) -> np.ndarray:
        """Simulations the networks can take: finite in float32, the precision they see."""
        finite = _float32_finite(z)
        for name in self._bank_variables():
            finite &= _float32_finite(np.asarray(values[name]).reshape(len(z), -1))
        dropped = len(z) - int(finite.sum())
        if dropped:
            self.dropped_simulations += dropped
            if dropped > len(z) // 2:
                raise RuntimeError(
                    f"{dropped} of {len(z)} simulations hold NaN, inf or values beyond float32 "
                    f"(|x| > {_FLOAT32_MAX:.3g}). Check the priors: values they allow make the "
                    "likelihood degenerate or its draws overflow."
                )
        return finite

    def _simulate_batch(self, n: int, seed: int, device=None, lengths=None):
        rng = np.random.default_rng(seed)
        if lengths is None:
            lengths = {d: int(rng.integers(lo, hi + 1)) for d, (lo, hi) in self.dim_ranges.items()}
        covariates = self._draw_covariates(rng, n, lengths)
        sims = self.simulator.sample(
            n, random_seed=seed, dim_lengths=lengths or None, data=covariates or None
        )
        sims.update(covariates)
        z = self.parameters.to_unconstrained(sims)
        keep = self._finite_rows(z, sims)
        if not keep.all():
            z = z[keep]
            sims = {k: v[keep] for k, v in sims.items()}
        return self._to_tensors(z, sims, device or self.device)

    def _validation_set(self, n: int):
        """Held-out simulations; with varying sizes, a set at the low, middle and high end."""
        if not self.dim_ranges:
            return self._simulate_batch(n, self._child_seed())
        sets = []
        for q in (0.0, 0.5, 1.0):
            lengths = {d: int(round(lo + q * (hi - lo))) for d, (lo, hi) in self.dim_ranges.items()}
            sets.append(self._simulate_batch(max(1, n // 3), self._child_seed(), lengths=lengths))
        return sets

    def _online(self, batch_size: int) -> Iterator:
        while True:
            yield self._simulate_batch(batch_size, self._child_seed())

    @staticmethod
    def _shuffled(theta, data, batch_size: int, generator: torch.Generator) -> Iterator:
        order = torch.randperm(theta.shape[0], generator=generator)
        for start in range(0, theta.shape[0] - batch_size + 1, batch_size):
            idx = order[start : start + batch_size].to(theta.device)
            yield theta[idx], {k: v[idx] for k, v in data.items()}

    def _offline(self, bank, batch_size: int, generator: torch.Generator) -> Iterator:
        while True:
            yield from self._shuffled(*bank, batch_size, generator)

    def _bank_chunk(self, bank: xr.Dataset, start: int, stop: int):
        part = bank[[UNCONSTRAINED, *self._bank_variables()]].isel({SIM_DIM: slice(start, stop)})
        try:
            values = {k: np.asarray(v) for k, v in part.load().data_vars.items()}
        except (OSError, ValueError) as err:  # HDF5's and zarr's checksum failures
            raise ValueError(
                f"Simulations {start:,} to {stop:,} of the bank cannot be read ({err}): the "
                "file is damaged (a checksum failed, or it was truncated). Simulate the bank "
                "again."
            ) from err
        z = values.pop(UNCONSTRAINED)
        keep = self._finite_rows(z, values)
        if not keep.all():
            z = z[keep]
            values = {k: v[keep] for k, v in values.items()}
        return self._to_tensors(z, values, self.device)

    def _bank_variables(self) -> list[str]:
        return [v for inp in self.inputs for v in inp.variables]

    def _from_bank(self, bank, n_train, batch_size, chunk, generator) -> Iterator:
        """Minibatches read chunk by chunk from a (lazily opened) bank, never all at once."""
        starts = list(range(0, n_train, chunk))
        while True:
            for i in torch.randperm(len(starts), generator=generator).tolist():
                stop = min(starts[i] + chunk, n_train)
                theta, data = self._bank_chunk(bank, starts[i], stop)
                yield from self._shuffled(theta, data, min(batch_size, len(theta)), generator)

    # ------------------------------------------------------------------ training
    def fit(
        self,
        *,
        simulations: int | str | os.PathLike | xr.Dataset | None = None,
        steps: int | None = None,
        epochs: int = 40,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        validation_simulations: int = 1024,
        validate_every: int | None = None,
        patience: int | None = 5,
        min_delta: float | None = None,
        chunk_size: int = 8192,
        progressbar: bool = True,
        random_seed: RandomSeed = None,
    ) -> Amortizer:
        """Train (further) on simulations from the model, until the validation loss settles.

        Parameters
        ----------
        simulations : int, path or xarray.Dataset, optional
            ``None`` (default) trains online: fresh simulations at every step. An integer
            simulates a fixed bank of that size in memory and trains on it for ``epochs``.
            A path (or dataset) of a bank written by :func:`pymc_abi.simulate` trains from
            it, reading ``chunk_size`` simulations at a time.
        steps : int, optional
            The most optimizer steps when training online (default 10,000); offline, it
            overrides ``epochs``. Training usually stops well before: see ``patience``.
        epochs : int, default 40
            The most passes over the bank when training offline.
        batch_size : int, default 256
        learning_rate, weight_decay : float
            AdamW settings; the learning rate warms up over 200 steps, stays until the
            validation loss stops improving, then decays to zero (see ``patience``).
        validation_simulations : int, default 1024
            Held-out simulations for validation and stopping (taken from the end of the
            bank when training offline).
        validate_every : int, optional
            Steps between validations (default: 100 online, one epoch offline).
        patience : int or None, default 5
            Validations without an improvement of more than ``min_delta`` that make a
            plateau: the learning rate then decays to zero along a half cosine over 30% of
            all steps (3/7 of the steps so far), and training stops (the best weights are
            kept, and ``history.stops`` says why). Without a plateau the decay ends with
            the step budget. ``None`` trains for the whole budget.
        min_delta : float, optional
            The least improvement of the validation loss (nats) that counts; by default
            ``0.005`` per parameter, at least ``0.01``.
        chunk_size : int, default 8192
            Simulations read from a bank on disk at a time.
        progressbar : bool, default True
        random_seed : int, optional

        Returns
        -------
        Amortizer
            ``self``, trained.
        """
        steps = _positive("steps", steps, optional=True)
        epochs = _positive("epochs", epochs)
        batch_size = _positive("batch_size", batch_size)
        validation_simulations = _positive("validation_simulations", validation_simulations)
        validate_every = _positive("validate_every", validate_every, optional=True)
        patience = _positive("patience", patience, optional=True)
        chunk_size = _positive("chunk_size", chunk_size)
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate!r}.")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative, got {weight_decay!r}.")
        if random_seed is not None:
            self._seeds = np.random.SeedSequence(_seed_int(random_seed, np.random.default_rng()))
        torch_seed = self._child_seed()
        generator = torch.Generator().manual_seed(torch_seed)
        if min_delta is None:
            min_delta = max(0.01, 0.005 * self.parameters.ndim)
        if simulations is None:
            steps = steps or 10_000
            validation = self._validation_set(validation_simulations)
            batches = self._online(batch_size)
            validate_every = validate_every or 100
        elif isinstance(simulations, int | np.integer):
            simulations = _positive("simulations", simulations)
            if self.dim_ranges:
                raise ValueError(
                    "An in-memory bank has one size per simulation; with varying dim_lengths "
                    "train online (simulations=None)."
                )
            n_val = min(validation_simulations, max(1, simulations // 10))
            if simulations - n_val < batch_size:
                raise ValueError(
                    f"simulations={simulations} leaves fewer than batch_size={batch_size} "
                    "training simulations after the validation split; simulate more."
                )
            theta, data = self._simulate_batch(simulations, self._child_seed())
            validation = (theta[:n_val], {k: v[:n_val] for k, v in data.items()})
            bank = (theta[n_val:], {k: v[n_val:] for k, v in data.items()})
            per_epoch = (theta.shape[0] - n_val) // batch_size
            steps = int(steps or epochs * per_epoch)
            batches = self._offline(bank, batch_size, generator)
            validate_every = validate_every or per_epoch
        else:
            bank = simulations if isinstance(simulations, xr.Dataset) else open_bank(simulations)
            shapes = {}
            for inp in self.inputs:
                if not inp.varying:
                    shapes.update({v: self._shapes[v] for v in inp.variables})
            check_bank(bank, self._signature(), self._bank_variables(), shapes)
            total = bank.sizes[SIM_DIM]
            n_val = min(validation_simulations, max(1, total // 10))
            n_train = total - n_val
            if n_train < batch_size:
                raise ValueError(
                    f"The bank's {total} simulations leave fewer than batch_size={batch_size} "
                    "for training after the validation split; simulate more."
                )
            validation = self._bank_chunk(bank, n_train, total)
            batches = self._from_bank(bank, n_train, batch_size, chunk_size, generator)
            per_epoch = n_train // batch_size
            steps = int(steps or epochs * per_epoch)
            validate_every = validate_every or per_epoch
        with self._torch_seed(torch_seed):
            train(
                self.net,
                self.net.loss,
                batches,
                validation,
                steps=steps,
                validate_every=validate_every,
                history=self.history,
                learning_rate=learning_rate,
                weight_decay=weight_decay,
                patience=patience,
                min_delta=min_delta,
                progressbar=progressbar,
            )
        if self.dropped_simulations:
            warnings.warn(
                f"{self.dropped_simulations} simulations held NaN or inf and were dropped.",
                UserWarning,
                stacklevel=2,
            )
        return self

    # ------------------------------------------------------------------ inference
    def _datasets(self, observed, data) -> tuple[list[dict[str, np.ndarray]], bool]:
        """Check one dataset (a dict, or ``None`` for the model's own) or a list of them."""
        single = observed is None or isinstance(observed, Mapping)
        if single:
            observed = [observed]
        elif isinstance(observed, str | bytes) or not isinstance(observed, Sequence):
            raise TypeError(
                "observed must be a dict mapping observed variables to data, a list of such "
                f"dicts, or None for the model's own data; got {type(observed).__name__}."
            )
        elif len(observed) == 0:
            raise ValueError("observed is an empty list: give at least one dataset.")
        elif any(o is None for o in observed):
            i = next(i for i, o in enumerate(observed) if o is None)
            raise TypeError(
                f"Dataset {i} of {len(observed)} is None: give a dict of variable names to "
                "arrays for every dataset (None means the model's own data only on its own)."
            )
        if data is None or isinstance(data, Mapping):
            data = [data] * len(observed)
        elif isinstance(data, str | bytes) or not isinstance(data, Sequence):
            raise TypeError(
                f"data must be a dict or a list of dicts, one per dataset; got "
                f"{type(data).__name__}."
            )
        if len(data) != len(observed):
            raise ValueError(f"Got {len(observed)} observed datasets but {len(data)} sets of data.")
        datasets = []
        for i, (o, d) in enumerate(zip(observed, data)):
            try:
                datasets.append(self._check_dataset(o, d))
            except (TypeError, ValueError) as err:
                if single:
                    raise
                raise type(err)(f"Dataset {i} of {len(observed)}: {err}") from err
        return datasets, single

    def _check_dataset(self, observed, data) -> dict[str, np.ndarray]:
        """One dataset, checked: every observed variable, and the covariates."""
        for label, part in (("observed", observed), ("data", data)):
            if part is not None and not isinstance(part, Mapping):
                raise TypeError(
                    f"Each dataset's {label} must be a dict of variable names to arrays; got "
                    f"{type(part).__name__}."
                )
        given = {**(data or {}), **(observed or {})}
        fixed = {v.name for v in self.model.data_vars} - set(self.covariates)
        unknown = set(given) - set(self.observed_names) - set(self.covariates)
        if unknown & fixed:
            raise ValueError(
                f"{sorted(unknown & fixed)} were fixed while training, so the amortizer does "
                "not condition on them; train with data={name: fn} to vary them per dataset."
            )
        if unknown:
            raise ValueError(
                f"{sorted(unknown)} are not observed variables or covariates of the model "
                f"(observed: {self.observed_names}; covariates: {list(self.covariates)})."
            )
        if observed is not None:
            missing = [n for n in self.observed_names if n not in observed]
            if missing:
                raise ValueError(
                    f"The dataset lacks observed variable(s) {missing}: give every observed "
                    f"variable the amortizer conditions on ({self.observed_names})."
                )
        self._check_fixed_data()
        out = {}
        model_obs = self._model_observed() if observed is None else {}
        for name in [*self.observed_names, *self.covariates]:
            if name in given:
                value = given[name]
            elif name in model_obs:
                value = model_obs[name]
            else:  # a covariate the dataset does not give: the model's current value
                value = self.model[name].get_value()
            out[name] = self._check_values(name, value)
        lengths: dict[str, tuple[int, str]] = {}
        for inp in self.inputs:
            for name in inp.variables:
                self._check_shape(name, out[name], inp, lengths)
        return out

    def _check_values(self, name: str, value) -> np.ndarray:
        """Numbers the networks can take: numeric, finite in float32, integers where due."""
        try:
            array = np.asarray(value)
        except Exception as err:  # ragged lists and the like
            raise TypeError(f"'{name}' cannot be read as an array: {err}") from err
        if array.dtype.kind not in "biuf":
            raise TypeError(
                f"'{name}' must hold numbers; got an array of dtype {array.dtype} "
                f"({type(value).__name__})."
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(
                f"'{name}' holds NaN or inf; the amortizer cannot condition on missing values. "
                "Drop or impute them before sampling."
            )
        if np.any(np.abs(array) > _FLOAT32_MAX):
            raise ValueError(
                f"'{name}' holds values up to {np.abs(array).max():.3g}, beyond what float32 "
                f"(the networks' precision) represents ({_FLOAT32_MAX:.3g}); rescale the data "
                "and the model."
            )
        dtype = self._dtypes.get(name)
        if dtype is not None and np.dtype(dtype).kind in "biu" and array.dtype.kind == "f":
            if np.any(array != np.round(array)):
                raise ValueError(
                    f"'{name}' is a discrete variable ({dtype}) but holds non-integer values."
                )
        return array

    def _check_fixed_data(self) -> None:
        """Refuse pm.Data the amortizer was trained with fixed, changed since (pm.set_data)."""
        for name, trained in self._fixed_data.items():
            current = self.model[name].get_value()
            if np.shape(current) != np.shape(trained) or not np.array_equal(current, trained):
                raise ValueError(
                    f"pm.Data '{name}' has changed since the amortizer was trained (pm.set_data?), "
                    f"but the amortizer learned the posterior for its training value only. "
                    f"Restore it, or train with data={{'{name}': fn}} to condition on it per "
                    "dataset."
                )

    def _check_shape(self, name, value, inp: _Input, lengths) -> None:
        expected = self._shapes[name]
        if inp.varying:
            lo, hi = self.dim_ranges[inp.varying]
            n = value.shape[0] if value.ndim else 0
            if value.ndim != len(expected) or value.shape[1:] != expected[1:]:
                wanted = str(("n", *expected[1:])).replace("'", "")
                raise ValueError(
                    f"'{name}' has shape {value.shape}; the amortizer expects {wanted} with "
                    f"n in [{lo}, {hi}]."
                )
            if not lo <= n <= hi:
                raise ValueError(
                    f"'{name}' has {n} entries along dim '{inp.varying}', outside the range "
                    f"[{lo}, {hi}] the amortizer was trained on. Train on a range that "
                    "includes it."
                )
            seen = lengths.setdefault(inp.varying, (n, name))
            if seen[0] != n:
                raise ValueError(
                    f"'{name}' has {n} entries along dim '{inp.varying}', but '{seen[1]}' "
                    f"has {seen[0]}."
                )
        elif value.shape != expected:
            raise ValueError(
                f"'{name}' has shape {value.shape}, but the amortizer was trained on shape "
                f"{expected}. Give data of that shape, or train on varying sizes with "
                "dim_lengths=."
            )

    def _context(self, datasets: list[dict[str, np.ndarray]]) -> torch.Tensor:
        stacked = {n: np.stack([d[n] for d in datasets]) for n in self._bank_variables()}
        _, data = self._to_tensors(np.zeros((len(datasets), 0)), stacked, self.device)
        return self.net.context(data)

    def _groups(self, datasets, size: int) -> list[list[int]]:
        """Datasets of equal shapes, in groups of at most ``size``, to be passed together."""
        groups: dict[tuple, list[int]] = {}
        for i, d in enumerate(datasets):
            key = tuple(np.shape(d[n]) for n in self._bank_variables())
            groups.setdefault(key, []).append(i)
        return [g[j : j + size] for g in groups.values() for j in range(0, len(g), size)]

    def _dim_lengths_of(self, dataset) -> dict[str, int]:
        lengths = {}
        for inp in self.inputs:
            if inp.varying:
                lengths[inp.varying] = int(np.shape(dataset[inp.name])[0])
        return lengths

    @torch.no_grad()
    def _draw(self, datasets, draws: int, random_seed) -> tuple[np.ndarray, np.ndarray]:
        """Unconstrained draws (K, draws, D) and their flow log densities (K, draws).

        The flow runs in passes of at most ``_ROWS_PER_PASS`` rows (several datasets, or a
        part of one dataset's draws), so memory stays near the size of the result. All
        randomness comes from one torch generator seeded here: the same seed gives the
        same draws whatever ran before, in any thread.
        """
        self.net.eval()
        seed = _seed_int(random_seed, np.random.default_rng(self._child_seed()))
        generator = torch.Generator(device=self.device).manual_seed(_torch_seed(seed))
        k = len(datasets)
        z = np.empty((k, draws, self.parameters.ndim))
        log_q = np.empty((k, draws))
        rows = _ROWS_PER_PASS.get(self.device.type, _ROWS_PER_PASS["cpu"])
        for group in self._groups(datasets, max(1, rows // max(draws, 1))):
            context = self._context([datasets[i] for i in group])
            step = max(1, rows // len(group))
            for start in range(0, draws, step):
                n = min(step, draws - start)
                z_std, lq = self.net.inference.sample_and_log_prob(n, context, generator=generator)
                zg = self.net.theta_std.inverse(z_std)
                lq = lq + self.net.theta_std.log_abs_det_jacobian(zg)
                z[group, start : start + n] = zg.double().cpu().numpy().transpose(1, 0, 2)
                log_q[group, start : start + n] = lq.double().cpu().numpy().T
                del z_std, zg, lq
                release_memory()  # or the freed working memory of each pass piles up
        return z, log_q

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
        names = self._bank_variables()
        missing = [n for n in names if n not in simulations]
        if missing:
            raise ValueError(f"simulations lack {missing}.")
        k = len(simulations[names[0]])
        datasets = [{n: np.asarray(simulations[n][i]) for n in names} for i in range(k)]
        return self._draw(datasets, int(draws), random_seed)

    @torch.no_grad()
    def sample(
        self,
        observed: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        data: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        draws: int = 1000,
        chains: int = 4,
        importance_sampling: bool | None = None,
        fallback: str | None = None,
        log_likelihood: bool = False,
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
            times as many), and return draws taken from them by systematic resampling
            (see :mod:`pymc_abi.importance`). ``sample_stats`` holds ``model_log_prob``
            next to ``flow_log_prob``, and its attributes ``pareto_k``, ``ess``,
            ``ess_fraction``, ``proposals``, ``distinct_draws`` and ``reliable``: the draws
            are unreliable, and a warning says so, when k̂ > 0.7 and the weights are not
            nearly uniform (an effective sample size below 90% of the proposals).
        fallback : {None, "nuts"}
            With importance sampling: for datasets whose draws are not reliable, run
            ``pm.sample`` (NUTS), started from flow draws, and return its result instead
            (``attrs["fallback"]``).
        log_likelihood : bool, default False
            Add the ``log_likelihood`` group, the pointwise log-likelihood of every observed
            variable at every draw, as ``pm.sample(idata_kwargs={"log_likelihood": True})``
            does; ``az.loo`` and ``az.compare`` then work in one line.
        random_seed : int, optional

        Returns
        -------
        az.InferenceData or xarray.DataTree, or a list of them
            What ``pm.sample`` returns in this environment (``InferenceData`` with ArviZ
            0.x, ``DataTree`` with ArviZ 1.x), with ``posterior`` (dims ``chain, draw,
            *model dims``, deterministics included), ``observed_data``, ``constant_data``,
            ``sample_stats`` holding ``flow_log_prob``, the flow's log density of each draw
            in the unconstrained space, and ``log_likelihood`` if asked for.
        """
        if fallback not in (None, "nuts"):
            raise ValueError(f"fallback must be None or 'nuts', got {fallback!r}.")
        if importance_sampling is None:
            importance_sampling = bool(fallback) or self.has_density
        if importance_sampling:
            self._joint_logp()  # a model without a density says why here
        if fallback and not importance_sampling:
            raise ValueError(
                "fallback='nuts' acts on Pareto k̂, which needs importance sampling: do not "
                "set importance_sampling=False."
            )
        draws, chains = int(draws), int(chains)
        if draws < 1 or chains < 1:
            raise ValueError(f"draws and chains must be positive, got {draws} and {chains}.")
        datasets, single = self._datasets(observed, data)
        seed = _seed_int(random_seed, np.random.default_rng(self._child_seed()))
        total = chains * draws
        z, log_q = self._draw(datasets, total, seed)
        self._check_support(datasets, z, single)
        k = len(datasets)
        stats = [{"flow_log_prob": log_q[i]} for i in range(k)]
        is_attrs: list[dict] = [{} for _ in range(k)]
        if importance_sampling:
            seeds = np.random.SeedSequence(seed).spawn(k)
            for i in range(k):
                z[i], stats[i], is_attrs[i] = self._importance_resample(
                    z[i], log_q[i], datasets[i], seeds[i], i if not single else None
                )
        values = self._constrained(z, datasets)
        attrs = {
            "inference_library": "pymc_abi",
            "inference_library_version": _version(),
            "inference_network": str(self.config["inference_network"]),
        }
        model_data = {
            v.name: v.get_value() for v in self.model.data_vars if v.name not in self._containers
        }
        results = []
        for i, dataset in enumerate(datasets):
            if fallback == "nuts" and not is_attrs[i]["reliable"]:
                results.append(
                    self._nuts(
                        dataset, values[i], draws, chains, seed + i, is_attrs[i], log_likelihood
                    )
                )
                continue
            groups = {
                "posterior": values[i],
                "sample_stats": stats[i],
                "observed_data": {n: dataset[n] for n in self.observed_names},
                "constant_data": {**model_data, **{c: dataset[c] for c in self.covariates}},
            }
            if not groups["constant_data"]:
                del groups["constant_data"]
            if log_likelihood:
                groups["log_likelihood"] = self._pointwise_log_likelihood(z[i], dataset)
            groups = {
                g: {n: (v if g.endswith("_data") else _chains(v, chains)) for n, v in vs.items()}
                for g, vs in groups.items()
            }
            result = self._layout.result(groups, attrs=attrs)
            _compat.update_group_attrs(result, "sample_stats", is_attrs[i])
            results.append(result)
        return results[0] if single else results

    def _constrained(self, z: np.ndarray, datasets) -> list[dict[str, np.ndarray]]:
        """Free variables and deterministics of draws ``z`` (K, L, D), per dataset."""
        k, total, _ = z.shape
        if self.covariates or self.dim_ranges:  # deterministics may depend on the dataset
            return [
                self.parameters.to_constrained(
                    z[i],
                    data={c: datasets[i][c] for c in self.covariates} or None,
                    dim_lengths=self._dim_lengths_of(datasets[i]) or None,
                )
                for i in range(k)
            ]
        flat = self.parameters.to_constrained(z.reshape(k * total, -1))
        return [{n: v[i * total : (i + 1) * total] for n, v in flat.items()} for i in range(k)]

    def _pointwise_log_likelihood(self, z: np.ndarray, dataset) -> dict[str, np.ndarray]:
        return self._joint_logp().pointwise(
            z,
            {n: dataset[n] for n in self.observed_names},
            data={c: dataset[c] for c in self.covariates} or None,
            dim_lengths=self._dim_lengths_of(dataset) or None,
        )

    def _joint_logp(self) -> JointLogp:
        if self._logp is None:
            self._logp = JointLogp(self.parameters)
        return self._logp

    @property
    def has_density(self) -> bool:
        """Whether the model has an exact joint density (no ``pm.Simulator``, no
        ``CustomDist`` without ``logp``): importance sampling, its checks and
        ``fallback="nuts"`` need one."""
        if self._has_density is None:
            try:
                self._joint_logp()
                self._has_density = True
            except ValueError:
                self._has_density = False
        return self._has_density

    def _check_support(self, datasets, z: np.ndarray, single: bool, draws: int = 16) -> None:
        """Refuse observed values that the likelihood gives zero probability at every one
        of a few posterior draws: data outside its support (a negative or fractional count,
        a proportion above 1). Models without a density (``pm.Simulator``) are not checked."""
        if not self.has_density:
            return
        for i, dataset in enumerate(datasets):
            terms = self._pointwise_log_likelihood(z[i, :draws], dataset)
            for name, term in terms.items():
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

    def _importance_resample(self, z, log_q, dataset, seeds, index):
        """PSIS on one dataset's draws, with more proposals as needed; returns the
        resampled draws, their stats and the diagnostics (k̂, ESS, proposals)."""
        proposal_seeds = iter(seeds.spawn(1_000))

        def propose(n):
            zs, lq = self._draw([dataset], n, int(next(proposal_seeds).generate_state(1)[0]))
            return zs[0], lq[0]

        def log_density(zs):
            return self._joint_logp()(
                zs,
                {n: dataset[n] for n in self.observed_names},
                data={c: dataset[c] for c in self.covariates} or None,
                dim_lengths=self._dim_lengths_of(dataset) or None,
            )

        result = importance_resample(
            propose, log_density, len(z), np.random.default_rng(seeds), first=(z, log_q)
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

    def _nuts(
        self, dataset, values, draws, chains, seed, is_attrs, log_likelihood
    ) -> _compat.Result:
        """NUTS on one dataset, started from flow draws (the fallback for a high k̂)."""
        model = observe(self.model, {n: dataset[n] for n in self.observed_names})
        starts = np.random.default_rng(seed).choice(
            len(values[self.parameters.free_names[0]]), size=chains, replace=False
        )
        initvals = [{name: values[name][j] for name in self.parameters.free_names} for j in starts]
        with model:
            # a dataset of another size than the model's: its dims and coords follow the data
            for dim, length in self._dim_lengths_of(dataset).items():
                if model.dim_lengths[dim].eval() != length:
                    model.set_dim(dim, length, coord_values=range(length))
            if self.covariates:
                pm.set_data({c: dataset[c] for c in self.covariates})
            result = pm.sample(
                draws=draws,
                chains=chains,
                initvals=initvals,
                random_seed=seed,
                progressbar=False,
            )
            if log_likelihood:
                result = pm.compute_log_likelihood(result, progressbar=False)
        result.attrs["fallback"] = "nuts"
        _compat.update_group_attrs(result, "sample_stats", is_attrs)
        return result

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
        shape = None
        if _compat.is_result(values):
            post = _compat.group(values, "posterior")
            shape = (post.sizes["chain"], post.sizes["draw"])
            values = {
                name: post[name].values.reshape(-1, *post[name].shape[2:])
                for name in self.parameters.free_names
            }
        z = self.parameters.to_unconstrained(values)
        if observed is not None and not isinstance(observed, Mapping):
            raise TypeError("log_prob conditions on one dataset: give observed as a dict.")
        [dataset], _ = self._datasets(observed, data)
        context = self._context([dataset]).expand(z.shape[0], -1)
        theta = torch.as_tensor(z, dtype=torch.float32, device=self.device)
        log_q = self.net.inference.log_prob(self.net.theta_std(theta), context)
        log_q = log_q + self.net.theta_std.log_abs_det_jacobian(theta)
        log_q = log_q.double().cpu().numpy()
        if not jacobian:
            log_q = log_q - self.parameters.log_jacobian(z)
        return log_q.reshape(shape) if shape else log_q

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
        """
        if (
            self.config["inference_network"] is None
            or "custom" in self.config["summary_kinds"].values()
        ):
            raise ValueError(
                "Only amortizers built from named networks can be saved; save a custom "
                "module's state_dict yourself."
            )
        blob = {
            "format": "pymc-abi",
            "version": FORMAT_VERSION,
            "signature": self._signature(),
            "config": self.config,
            "state": {k: v.cpu() for k, v in self.net.state_dict().items()},
            "history": self.history.to_dict(),
        }
        path = Path(path)
        partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
        try:
            torch.save(blob, partial)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)

    @classmethod
    def load(
        cls,
        path: str | Path,
        model: pm.Model | None = None,
        *,
        data: Mapping[str, Callable] | None = None,
        device: str | None = None,
        allow_model_change: bool = False,
    ) -> Amortizer:
        """Load an amortizer saved by :meth:`save`, for the same model.

        Parameters
        ----------
        path : str or path
            A file written by :meth:`save`.
        model : pm.Model, optional
            The model it was trained on; ``None`` takes it from the context.
        data : dict, optional
            The functions that draw per-dataset covariates, needed only to train further.
        device : str, optional
            Where to put the networks (``"cpu"``, ``"cuda"``); default CUDA when available.
            Weights are saved on the CPU, so any device can load any file.
        allow_model_change : bool, default False
            Load even if the model differs from the one the amortizer was trained on (its
            priors, likelihood, constants, dim lengths or fixed ``pm.Data``), with a warning
            that lists the differences. The posterior is then that of the old model: use it
            only to start training on the new one.

        Returns
        -------
        Amortizer

        Raises
        ------
        ValueError
            If the file is not a pymc-abi amortizer, comes from an incompatible version, or
            was trained on another model (the message lists what differs).
        """
        model = pm.modelcontext(model)
        try:
            # weights and plain data only: never code (torch >= 2.6 makes this safe)
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:
            raise ValueError(
                f"{path} is not a readable pymc-abi amortizer file ({type(err).__name__}): it "
                "is damaged or not an amortizer. pymc-abi reads weights and plain data only."
            ) from None
        if not isinstance(blob, dict) or blob.get("format") != "pymc-abi":
            raise ValueError(f"{path} is not a pymc-abi amortizer file.")
        if blob.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{path} was saved in format version {blob.get('version')}; this pymc-abi "
                f"reads version {FORMAT_VERSION}. Retrain, or load it with the version that "
                "saved it."
            )
        config = blob["config"]
        _check_saved_sizes(config, blob["state"], path)
        current = model_signature(
            model, covariates=config["covariates"], varying_dims=config["dim_lengths"]
        )
        changed = differences(blob["signature"], current)
        if changed:
            listing = "; ".join(changed)
            if not allow_model_change:
                raise ValueError(
                    f"{path} was trained on another model: {listing}. Load it with the model "
                    "it was trained on, or pass allow_model_change=True to reuse its weights "
                    "as a start for training on this one."
                )
            warnings.warn(
                f"Loading {path} for a changed model ({listing}): its posterior is that of the "
                "old model until it is trained on this one.",
                UserWarning,
                stacklevel=2,
            )
        covariates = {name: (data or {}).get(name) for name in config["covariates"]}
        amortizer = cls(
            model,
            inference_network=config["inference_network"],
            summary_network=config["summary_kinds"],
            summary_features=config["summary_features"],
            hidden_features=config["hidden_features"],
            transforms=config["transforms"],
            dim_lengths={k: tuple(v) for k, v in config["dim_lengths"].items()},
            data=covariates,
            time_dim=config["time_dim"],
            device=device,
            random_seed=0,
            _pilot=0,
        )
        amortizer.net.load_state_dict(blob["state"])
        amortizer.history = History.from_dict(blob["history"])
        return amortizer

    def __repr__(self) -> str:
        trained = (
            f"trained {self.history.step[-1]} steps, val loss {self.history.val_loss[-1]:.3f}"
            if self.history.step
            else "untrained"
        )
        return (
            f"Amortizer(parameters={self.parameters.names}, observed={self.observed_names}, "
            f"inference_network={self.config['inference_network']!r}, "
            f"summaries={self.config['summary_kinds']}, {trained}, device={self.device})"
        )


def fit(
    model: pm.Model | None = None,
    *,
    simulations: int | str | os.PathLike | xr.Dataset | None = None,
    steps: int | None = None,
    epochs: int = 40,
    batch_size: int = 256,
    inference_network: str | InferenceNetwork = "nsf",
    summary_network: str | nn.Module | Mapping[str, str | nn.Module] | None = None,
    summary_features: int | None = None,
    hidden_features: Sequence[int] = (128, 128),
    transforms: int | None = None,
    dim_lengths: Mapping[str, int | tuple[int, int]] | None = None,
    data: Mapping[str, Callable] | None = None,
    time_dim: str | None = None,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    validation_simulations: int = 1024,
    validate_every: int | None = None,
    patience: int | None = 5,
    min_delta: float | None = None,
    chunk_size: int = 8192,
    device: str | torch.device | None = None,
    progressbar: bool = True,
    random_seed: RandomSeed = None,
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
    steps, epochs, batch_size, learning_rate, weight_decay, validation_simulations
        See :meth:`Amortizer.fit`.
    validate_every, patience, min_delta, chunk_size, progressbar
        See :meth:`Amortizer.fit`.
    inference_network, summary_network, summary_features, hidden_features, transforms
        See :class:`Amortizer`.
    dim_lengths, data, time_dim, device
        See :class:`Amortizer`: varying data sizes, per-dataset covariates, a time dim.
    random_seed : int, optional
        Makes simulations, initialization and training reproducible.

    Returns
    -------
    Amortizer

    Examples
    --------
    >>> with model:  # doctest: +SKIP
    ...     amortizer = abi.fit(random_seed=1)
    ...     idata = amortizer.sample(draws=1000)
    """
    amortizer = Amortizer(
        model,
        inference_network=inference_network,
        summary_network=summary_network,
        summary_features=summary_features,
        hidden_features=hidden_features,
        transforms=transforms,
        dim_lengths=dim_lengths,
        data=data,
        time_dim=time_dim,
        device=device,
        random_seed=random_seed,
    )
    return amortizer.fit(
        simulations=simulations,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        validation_simulations=validation_simulations,
        validate_every=validate_every,
        patience=patience,
        min_delta=min_delta,
        chunk_size=chunk_size,
        progressbar=progressbar,
    )
