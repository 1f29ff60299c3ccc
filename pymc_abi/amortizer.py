"""The amortizer: a PyMC model's simulator joined to a summary network and a flow.

This is the one module that holds both worlds: the model side (simulator, parameter space)
speaks numpy, the networks speak torch.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import pymc as pm
import torch
from pytensor.tensor.random.op import RandomVariable
from torch import nn

from pymc_abi._model import fingerprint
from pymc_abi.inference_data import _Layout, to_inference_data
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

FORMAT_VERSION = 1


# ---------------------------------------------------------------------- summaries
def _exchangeable_rows(rv) -> bool:
    """True when an observed RV's entries along its first axis are iid given the parameters."""
    node = rv.owner
    op = node.op
    if not isinstance(op, RandomVariable):
        return False
    batch_ndim = rv.ndim - op.ndim_supp
    if batch_ndim < 1:
        return False
    for param, core in zip(op.dist_params(node), op.ndims_params):
        param_batch = param.ndim - core
        if param_batch == batch_ndim and param.type.shape[0] != 1:
            return False
    return True


def _default_summary(rv, shape: tuple[int, ...]) -> str:
    if len(shape) >= 1 and shape[0] > 1 and _exchangeable_rows(rv):
        return "deepset"
    return "identity" if int(np.prod(shape, dtype=int)) <= 8 else "mlp"


class _Posterior(nn.Module):
    """Standardization, summary network(s) and inference network, as one module."""

    def __init__(
        self,
        kinds: dict[str, str],
        shapes: dict[str, tuple[int, ...]],
        summaries: dict[str, nn.Module],
        inference: InferenceNetwork,
        summary_features: int,
        ndim: int,
    ):
        super().__init__()
        self.names = tuple(kinds)
        self.kinds = dict(kinds)
        self.shapes = dict(shapes)
        self.theta_std = Standardize(ndim)
        self.data_std = nn.ModuleList(
            Standardize(_feature_shape(kinds[n], shapes[n])) for n in self.names
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


def _feature_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if kind == "deepset":
        return (int(np.prod(shape[1:], dtype=int)),)
    return (int(np.prod(shape, dtype=int)),)


def _as_network_input(kind: str, array: np.ndarray, batch: int) -> np.ndarray:
    """Observed data [B, *shape] -> [B, N, F] for sets, [B, P] otherwise."""
    if kind == "deepset":
        n = array.shape[1] if array.ndim > 1 else 1
        return array.reshape(batch, n, -1)
    return array.reshape(batch, -1)


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
        or a built :class:`~pymc_abi.networks.InferenceNetwork`.
    summary_network : str, nn.Module or dict, optional
        ``"identity"``, ``"mlp"`` or ``"deepset"``, a module, or a dict naming one per
        observed variable. By default a DeepSet for observations that are iid along their
        first axis, the identity for tiny data, an MLP otherwise.
    summary_features : int, optional
        Size of the data summary; default ``max(2 * D, 16)`` for ``D`` parameters.
    hidden_features : sequence of int, default (128, 128)
        Hidden layer widths of the flow's conditioners.
    transforms : int, optional
        Number of flow transforms (default depends on the flow).
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
        device: str | torch.device | None = None,
        random_seed: RandomSeed = None,
        _pilot: int = 4096,
    ):
        self.model = pm.modelcontext(model)
        self.device = torch.device(device) if device is not None else _default_device()
        self._seeds = np.random.SeedSequence(_seed_int(random_seed, np.random.default_rng()))
        self.simulator = ModelSimulator(self.model, random_seed=self._child_seed())
        self.parameters = self.simulator.parameters
        self.history = History()
        self.dropped_simulations = 0
        self._layout = _Layout(self.model)
        self.observed_names = list(self.simulator.observed_names)
        self.shapes = {
            name: tuple(np.shape(v))
            for name, v in zip(self.observed_names, self._model_observed().values())
        }
        ndim = self.parameters.ndim
        if ndim == 0:
            raise ValueError("The model has no free random variables to infer.")
        summary_features = int(summary_features or max(2 * ndim, 16))
        kinds, summaries = self._build_summaries(summary_network, summary_features)
        context = (
            next(iter(summaries.values())).output_features
            if len(summaries) == 1
            else summary_features
        )
        options = {"hidden_features": tuple(hidden_features)}
        if transforms is not None:
            options["transforms"] = int(transforms)
        with self._torch_seed():
            inference = build_inference_network(
                inference_network,
                ndim,
                context,
                **(options if isinstance(inference_network, str) else {}),
            )
            self.net = _Posterior(kinds, self.shapes, summaries, inference, summary_features, ndim)
        self.config = {
            "inference_network": inference_network if isinstance(inference_network, str) else None,
            "summary_kinds": kinds,
            "summary_features": summary_features,
            "hidden_features": list(hidden_features),
            "transforms": transforms,
            "shapes": {k: list(v) for k, v in self.shapes.items()},
        }
        self._fit_standardization(_pilot)
        self.net.to(self.device)

    # ------------------------------------------------------------------ set-up
    def _child_seed(self) -> int:
        return int(self._seeds.spawn(1)[0].generate_state(1)[0])

    @contextlib.contextmanager
    def _torch_seed(self, seed: int | None = None):
        """Seed torch inside the block only, leaving the global generator as it was."""
        devices = [self.device] if self.device.type == "cuda" else []
        seed = self._child_seed() if seed is None else seed
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    def _build_summaries(self, choice, features):
        kinds, nets = {}, {}
        for name in self.observed_names:
            shape = self.shapes[name]
            pick = choice.get(name) if isinstance(choice, Mapping) else choice
            if pick is None:
                pick = _default_summary(self.model[name], shape)
            if isinstance(pick, nn.Module):
                kinds[name] = "deepset" if hasattr(pick, "phi") else "custom"
                nets[name] = pick
                continue
            kinds[name] = pick
            in_shape = (
                (shape[0], int(np.prod(shape[1:], dtype=int))) if pick == "deepset" else shape
            )
            options = {"hidden_features": 64} if pick == "deepset" else {}
            nets[name] = build_summary_network(
                pick, in_shape, None if pick == "identity" else features, **options
            )
        return kinds, nets

    def _model_observed(self) -> dict[str, np.ndarray]:
        out = {}
        for rv in self.model.observed_RVs:
            value = self.model.rvs_to_values[rv]
            out[rv.name] = np.asarray(
                value.get_value() if hasattr(value, "get_value") else value.data
            )
        return out

    def _fit_standardization(self, n: int) -> None:
        theta, data = self._simulate_batch(n, self._child_seed(), device=torch.device("cpu"))
        self.net.theta_std.fit(theta)
        for name, std in zip(self.net.names, self.net.data_std):
            std.fit(data[name])

    # ------------------------------------------------------------------ data
    def _to_tensors(self, z: np.ndarray, observed: Mapping[str, np.ndarray], device):
        batch = z.shape[0]
        data = {
            name: torch.as_tensor(
                _as_network_input(self.net.kinds[name], np.asarray(observed[name], float), batch),
                dtype=torch.float32,
                device=device,
            )
            for name in self.observed_names
        }
        return torch.as_tensor(z, dtype=torch.float32, device=device), data

    def _simulate_batch(self, n: int, seed: int, device=None):
        sims = self.simulator.sample(n, random_seed=seed)
        z = self.parameters.to_unconstrained(sims)
        finite = np.isfinite(z).all(axis=1)
        for name in self.observed_names:
            finite &= np.isfinite(sims[name].reshape(n, -1)).all(axis=1)
        dropped = n - int(finite.sum())
        if dropped:
            self.dropped_simulations += dropped
            if dropped > n // 2:
                raise RuntimeError(
                    f"{dropped} of {n} simulations hold NaN or inf. Check the priors: values "
                    "they allow make the likelihood degenerate."
                )
            z = z[finite]
            sims = {k: v[finite] for k, v in sims.items()}
        return self._to_tensors(z, sims, device or self.device)

    def _online(self, batch_size: int) -> Iterator:
        while True:
            yield self._simulate_batch(batch_size, self._child_seed())

    @staticmethod
    def _offline(bank, batch_size: int, generator: torch.Generator) -> Iterator:
        theta, data = bank
        n = theta.shape[0]
        while True:
            order = torch.randperm(n, generator=generator)
            for start in range(0, n - batch_size + 1, batch_size):
                idx = order[start : start + batch_size].to(theta.device)
                yield theta[idx], {k: v[idx] for k, v in data.items()}

    # ------------------------------------------------------------------ training
    def fit(
        self,
        *,
        simulations: int | None = None,
        steps: int | None = None,
        epochs: int = 40,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        validation_simulations: int = 1024,
        validate_every: int | None = None,
        patience: int | None = 15,
        progressbar: bool = True,
        random_seed: RandomSeed = None,
    ) -> Amortizer:
        """Train (further) on simulations from the model.

        Parameters
        ----------
        simulations : int, optional
            ``None`` (default) trains online: fresh simulations at every step. An integer
            simulates a fixed bank of that size once and trains on it for ``epochs``.
        steps : int, optional
            Optimizer steps when training online (default 3000).
        epochs : int, default 40
            Passes over the bank when training offline.
        batch_size : int, default 256
        learning_rate, weight_decay : float
            AdamW settings; the learning rate follows a cosine schedule with warm-up.
        validation_simulations : int, default 1024
            Held-out simulations for validation and early stopping (taken from the bank
            when training offline).
        validate_every : int, optional
            Steps between validations (default: 100 online, one epoch offline).
        patience : int or None, default 15
            Validations without improvement before stopping early; the best weights are
            kept.
        progressbar : bool, default True
        random_seed : int, optional

        Returns
        -------
        Amortizer
            ``self``, trained.
        """
        if random_seed is not None:
            self._seeds = np.random.SeedSequence(_seed_int(random_seed, np.random.default_rng()))
        torch_seed = self._child_seed()
        if simulations is None:
            steps = int(steps or 3000)
            validation = self._simulate_batch(validation_simulations, self._child_seed())
            batches = self._online(batch_size)
            validate_every = validate_every or 100
        else:
            simulations = int(simulations)
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
            generator = torch.Generator().manual_seed(torch_seed)
            batches = self._offline(bank, batch_size, generator)
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
    def _observed_sets(self, observed) -> tuple[list[dict[str, np.ndarray]], bool]:
        if observed is None:
            return [self._model_observed()], True
        if isinstance(observed, Mapping):
            return [self._check_observed(observed)], True
        return [self._check_observed(o) for o in observed], False

    def _check_observed(self, observed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        unknown = set(observed) - set(self.observed_names)
        if unknown:
            raise ValueError(
                f"{sorted(unknown)} are not observed variables of the model "
                f"(observed: {self.observed_names})."
            )
        model_obs = None
        out = {}
        for name in self.observed_names:
            if name in observed:
                value = np.asarray(observed[name])
            else:
                model_obs = model_obs or self._model_observed()
                value = model_obs[name]
            if value.shape != self.shapes[name]:
                raise ValueError(
                    f"Observed '{name}' has shape {value.shape}, but the amortizer was trained "
                    f"on shape {self.shapes[name]}. Give data of that shape, or train on the "
                    "new size."
                )
            if not np.all(np.isfinite(value)):
                raise ValueError(
                    f"Observed '{name}' holds NaN or inf; the amortizer cannot condition on "
                    "missing values."
                )
            out[name] = value
        return out

    def _context(self, datasets: list[dict[str, np.ndarray]]) -> torch.Tensor:
        stacked = {n: np.stack([d[n] for d in datasets]) for n in self.observed_names}
        _, data = self._to_tensors(np.zeros((len(datasets), 0)), stacked, self.device)
        return self.net.context(data)

    @torch.no_grad()
    def sample(
        self,
        observed: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        draws: int = 1000,
        random_seed: RandomSeed = None,
    ) -> az.InferenceData | list[az.InferenceData]:
        """Draw from the amortized posterior of one or many datasets.

        Parameters
        ----------
        observed : dict or list of dict, optional
            ``None`` uses the model's own observed data; a dict maps observed variable
            names to new data; a list of dicts fits many datasets in one batched pass.
        draws : int, default 1000
        random_seed : int, optional

        Returns
        -------
        az.InferenceData or list of az.InferenceData
            With ``posterior`` (dims ``chain, draw, *model dims``, deterministics included),
            ``observed_data``, ``constant_data`` and ``sample_stats`` holding
            ``flow_log_prob``, the flow's log density of each draw in the unconstrained
            space.
        """
        self.net.eval()
        datasets, single = self._observed_sets(observed)
        seed = _seed_int(random_seed, np.random.default_rng(self._child_seed()))
        with self._torch_seed(seed):
            context = self._context(datasets)
            z_std, log_q = self.net.inference.sample_and_log_prob(draws, context)
            z = self.net.theta_std.inverse(z_std)
            log_q = log_q + self.net.theta_std.log_abs_det_jacobian()
        z = z.double().cpu().numpy()  # (draws, K, D)
        log_q = log_q.double().cpu().numpy()
        k = len(datasets)
        values = self.parameters.to_constrained(z.transpose(1, 0, 2).reshape(k * draws, -1))
        constant = {v.name: v.get_value() for v in self.model.data_vars}
        attrs = {
            "inference_library": "pymc_abi",
            "inference_network": str(self.config["inference_network"]),
        }
        results = []
        for i, obs in enumerate(datasets):
            posterior = {name: v[i * draws : (i + 1) * draws] for name, v in values.items()}
            results.append(
                to_inference_data(
                    self._layout,
                    posterior,
                    observed_data=obs,
                    constant_data=constant,
                    sample_stats={"flow_log_prob": log_q[:, i]},
                    attrs=attrs,
                )
            )
        return results[0] if single else results

    @torch.no_grad()
    def log_prob(
        self,
        values: az.InferenceData | Mapping[str, np.ndarray],
        observed: Mapping[str, Any] | None = None,
        *,
        jacobian: bool = True,
    ) -> np.ndarray:
        """Log density of the amortized posterior at given parameter values.

        Parameters
        ----------
        values : InferenceData or dict
            Posterior draws (its ``posterior`` group), or constrained values of every free
            variable with a leading batch axis.
        observed : dict, optional
            The dataset conditioned on; ``None`` uses the model's observed data.
        jacobian : bool, default True
            ``True`` gives the density of the unconstrained values (as PyMC's
            ``model.logp(jacobian=True)``); ``False`` the density of the constrained values.

        Returns
        -------
        ndarray
            Shape ``(chain, draw)`` for InferenceData, else ``(B,)``.
        """
        shape = None
        if isinstance(values, az.InferenceData):
            post = values.posterior
            shape = (post.sizes["chain"], post.sizes["draw"])
            values = {
                name: post[name].values.reshape(-1, *post[name].shape[2:])
                for name in self.parameters.free_names
            }
        z = self.parameters.to_unconstrained(values)
        [dataset], _ = self._observed_sets(observed)
        context = self._context([dataset]).expand(z.shape[0], -1)
        theta = torch.as_tensor(z, dtype=torch.float32, device=self.device)
        log_q = self.net.inference.log_prob(self.net.theta_std(theta), context)
        log_q = (log_q + self.net.theta_std.log_abs_det_jacobian()).double().cpu().numpy()
        if not jacobian:
            log_q = log_q - self.parameters.log_jacobian(z)
        return log_q.reshape(shape) if shape else log_q

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Save weights, configuration, standardization, history and model fingerprint.

        One file, read back by :meth:`Amortizer.load`.
        """
        if (
            self.config["inference_network"] is None
            or "custom" in self.config["summary_kinds"].values()
        ):
            raise ValueError(
                "Only amortizers built from named networks can be saved; save a custom "
                "module's state_dict yourself."
            )
        torch.save(
            {
                "format": "pymc-abi",
                "version": FORMAT_VERSION,
                "fingerprint": fingerprint(self.model),
                "config": self.config,
                "state": {k: v.cpu() for k, v in self.net.state_dict().items()},
                "history": self.history.to_dict(),
            },
            path,
        )

    @classmethod
    def load(
        cls, path: str | Path, model: pm.Model | None = None, *, device: str | None = None
    ) -> Amortizer:
        """Load an amortizer saved by :meth:`save`, for the same model.

        Raises
        ------
        ValueError
            If the file is not a pymc-abi amortizer, comes from an incompatible version, or
            was trained on a model with another structure.
        """
        model = pm.modelcontext(model)
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{path} is not a readable pymc-abi amortizer file: {err}") from err
        if not isinstance(blob, dict) or blob.get("format") != "pymc-abi":
            raise ValueError(f"{path} is not a pymc-abi amortizer file.")
        if blob.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{path} was saved in format version {blob.get('version')}; this pymc-abi "
                f"reads version {FORMAT_VERSION}. Retrain, or load it with the version that "
                "saved it."
            )
        if blob["fingerprint"] != fingerprint(model):
            raise ValueError(
                f"{path} was trained on a model with another structure (variables, "
                "distributions, shapes or transforms). Load it with the model it was trained on."
            )
        config = blob["config"]
        amortizer = cls(
            model,
            inference_network=config["inference_network"],
            summary_network=config["summary_kinds"],
            summary_features=config["summary_features"],
            hidden_features=config["hidden_features"],
            transforms=config["transforms"],
            device=device,
            random_seed=0,
            _pilot=16,
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
    simulations: int | None = None,
    steps: int | None = None,
    epochs: int = 40,
    batch_size: int = 256,
    inference_network: str | InferenceNetwork = "nsf",
    summary_network: str | nn.Module | Mapping[str, str | nn.Module] | None = None,
    summary_features: int | None = None,
    hidden_features: Sequence[int] = (128, 128),
    transforms: int | None = None,
    learning_rate: float = 1e-3,
    validation_simulations: int = 1024,
    patience: int | None = 15,
    device: str | torch.device | None = None,
    progressbar: bool = True,
    random_seed: RandomSeed = None,
) -> Amortizer:
    """Train an amortized posterior for a PyMC model on its own simulations.

    Parameters
    ----------
    model : pm.Model, optional
        ``None`` takes the model from the context.
    simulations : int, optional
        ``None`` trains online (fresh simulations each step, the default); an integer
        trains offline on a fixed bank of that many simulations for ``epochs``.
    steps, epochs, batch_size, learning_rate, validation_simulations, patience, progressbar
        See :meth:`Amortizer.fit`.
    inference_network, summary_network, summary_features, hidden_features, transforms, device
        See :class:`Amortizer`.
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
        device=device,
        random_seed=random_seed,
    )
    return amortizer.fit(
        simulations=simulations,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        validation_simulations=validation_simulations,
        patience=patience,
        progressbar=progressbar,
    )
