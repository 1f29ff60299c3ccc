"""Configuration of an amortizer, written once: the networks and the training run.

:class:`NetworkConfig` and :class:`TrainingConfig` are the single source of the defaults
and of their validation. :class:`~pymc_abi.Amortizer`, :meth:`~pymc_abi.Amortizer.fit`,
:func:`~pymc_abi.fit` and :meth:`~pymc_abi.Amortizer.load` all build them, from the same
keyword arguments, so the options cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pymc_abi._arguments import positive, real

__all__ = ["NetworkConfig", "TrainingConfig", "split_options"]

#: the flow's preconditioners (``NetworkConfig.preconditioner``)
PRECONDITIONERS = (None, "laplace")


@dataclass(frozen=True)
class NetworkConfig:
    """The networks of an amortizer.

    Parameters
    ----------
    inference_network : str or InferenceNetwork, default "nsf"
        ``"nsf"`` (spline coupling flow), ``"coupling"`` (affine coupling, RealNVP-style),
        ``"maf"`` (masked autoregressive affine), ``"nsf_ar"`` (autoregressive splines),
        ``"flow_matching"``, or a built :class:`~pymc_abi.networks.InferenceNetwork`.
    summary_network : str, nn.Module or dict, optional
        ``"identity"``, ``"mlp"``, ``"deepset"``, ``"set_transformer"`` or
        ``"time_series"``, a module, or a dict naming one per observed variable (and per
        covariate that is not row-aligned). A module needs an ``output_features``
        attribute; it receives standardized data as ``[B, P]`` (flattened), or as
        ``[B, N, F]`` when the first dim varies. By default: ``"time_series"`` for
        time-series distributions and data along ``time_dim``; ``"deepset"`` for iid
        observations (or rows aligned with per-dataset covariates); the identity for tiny
        data; an MLP otherwise.
    summary_features : int, optional
        Size of the data summary; default ``max(2 * D, 16)`` for ``D`` parameters.
    hidden_features : sequence of int, default (128, 128)
        Hidden layer widths of the flow's conditioners.
    transforms : int, optional
        Number of flow transforms (default depends on the flow; none for flow matching).
    recurrent_steps : int or None, default 64
        The most time steps the GRU of a ``"time_series"`` summary reads: longer series are
        averaged over windows of convolutional features first (5x faster training on 200
        steps). ``None`` reads every step (amortizers saved before this option).

    time_series_features : int, optional
        Channels of a ``"time_series"`` summary's convolutions and size of its GRU state;
        default ``max(32, 2 * summary_features)`` (32 for up to 8 parameters: a GRU of 64
        units costs twice as much per training step). Amortizers saved before this option
        have 64.
    full_resolution_layers : int or None, default 1
        The convolutions of a ``"time_series"`` summary that run at every time step before
        the windows of ``recurrent_steps`` are averaged; the rest, and the GRU, run on the
        windows (2.5x faster training on 200 steps than averaging after all of them).
        ``None``: all of them (amortizers saved before this option).
    preconditioner : {None, "laplace"}, default None
        ``"laplace"``: the flow learns each posterior relative to a Laplace fit of its
        dataset on the model's exact density (a centre and scale from damped Newton steps,
        :mod:`pymc_abi.preconditioner`), for training simulations and the user's data alike,
        so that posteriors far narrower than the prior (many rows, small noise) are
        resolved. Needs a model with a density; costs a fit of every simulation in training
        (about 2-4 ms each for a linear regression, one thread).

    Examples
    --------
    >>> NetworkConfig(hidden_features=[64, 64]).hidden_features
    (64, 64)
    """

    inference_network: Any = "nsf"
    summary_network: Any = None
    summary_features: int | None = None
    hidden_features: tuple[int, ...] = (128, 128)
    transforms: int | None = None
    recurrent_steps: int | None = 64
    full_resolution_layers: int | None = 1
    time_series_features: int | None = None
    preconditioner: str | None = None

    def __post_init__(self):
        if self.preconditioner not in PRECONDITIONERS:
            raise ValueError(
                f"preconditioner must be one of {PRECONDITIONERS}; got {self.preconditioner!r}."
            )
        hidden = self.hidden_features
        if isinstance(hidden, int | str) or not all(
            isinstance(h, int | np.integer) and not isinstance(h, bool) and h >= 1 for h in hidden
        ):
            raise ValueError(
                "hidden_features must be a sequence of positive layer widths, e.g. (128, 128); "
                f"got {hidden!r}."
            )
        for name in ("summary_features", "transforms", "recurrent_steps", "time_series_features"):
            object.__setattr__(self, name, positive(name, getattr(self, name), optional=True))
        layers = positive(
            "full_resolution_layers", self.full_resolution_layers, optional=True, minimum=0
        )
        object.__setattr__(self, "full_resolution_layers", layers)
        transforms = self.transforms
        if transforms is not None and self.inference_network == "flow_matching":
            raise ValueError(
                "transforms= sets the number of flow transforms; flow matching has none "
                "(its size is hidden_features)."
            )
        object.__setattr__(self, "hidden_features", tuple(int(h) for h in hidden))

    @property
    def named(self) -> bool:
        """Whether the inference network is named (and so can be saved and rebuilt)."""
        return isinstance(self.inference_network, str)

    def flow_options(self) -> dict[str, Any]:
        """Keyword arguments for a named inference network."""
        options: dict[str, Any] = {"hidden_features": self.hidden_features}
        if self.transforms is not None:
            options["transforms"] = self.transforms
        return options if self.named else {}

    @classmethod
    def from_saved(cls, config: Mapping[str, Any]) -> NetworkConfig:
        """The configuration in a saved amortizer's ``config`` dict."""
        return cls(
            inference_network=config["inference_network"],
            summary_network=dict(config["summary_kinds"]),
            summary_features=config["summary_features"],
            hidden_features=tuple(config["hidden_features"]),
            transforms=config["transforms"],
            # files saved before the option read every step
            recurrent_steps=config.get("recurrent_steps"),
            # files saved before the option averaged the windows after every convolution
            full_resolution_layers=config.get("full_resolution_layers"),
            # files saved before the option: the summary's fixed width
            time_series_features=config.get("time_series_features", 64),
            # files saved before the option: no preconditioner
            preconditioner=config.get("preconditioner"),
        )

    def time_series_width(self, summary_features: int) -> int:
        """Width of a time-series summary, for a summary of ``summary_features``."""
        return self.time_series_features or max(32, 2 * int(summary_features))


@dataclass(frozen=True)
class TrainingConfig:
    """One training run.

    Parameters
    ----------
    steps : int, optional
        The most optimizer steps when training online (default 10,000); offline, it
        overrides ``epochs``. Training usually stops well before: see ``patience``.
    epochs : int, default 40
        The most passes over the bank when training offline.
    batch_size : int, default 256
    learning_rate : float, default 1e-3
    weight_decay : float, default 1e-4
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
        ``0.005`` per parameter, at least ``0.01`` (a two-level amortizer's loss is per
        parameter already, and its globals learn slowly: ``0.001``).
    chunk_size : int, default 8192
        Simulations read from a bank on disk at a time.

    Examples
    --------
    >>> TrainingConfig(steps=500).batch_size
    256
    """

    steps: int | None = None
    epochs: int = 40
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    validation_simulations: int = 1024
    validate_every: int | None = None
    patience: int | None = 5
    min_delta: float | None = None
    chunk_size: int = 8192

    def __post_init__(self):
        for name in ("steps", "validate_every", "patience"):
            object.__setattr__(self, name, positive(name, getattr(self, name), optional=True))
        for name in ("epochs", "batch_size", "validation_simulations", "chunk_size"):
            object.__setattr__(self, name, positive(name, getattr(self, name)))
        for name in ("learning_rate", "weight_decay"):
            object.__setattr__(self, name, real(name, getattr(self, name)))
        if self.min_delta is not None:
            object.__setattr__(self, "min_delta", real("min_delta", self.min_delta))
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}.")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay!r}.")
        if self.min_delta is not None and not self.min_delta >= 0:
            raise ValueError(
                f"min_delta must be non-negative (nats of validation loss), got "
                f"{self.min_delta!r}: a negative one counts a worse loss as an improvement."
            )


_NETWORK = {f.name for f in dataclasses.fields(NetworkConfig)}
_TRAINING = {f.name for f in dataclasses.fields(TrainingConfig)}


def split_options(
    options: Mapping[str, Any],
    network: NetworkConfig | None = None,
    training: TrainingConfig | None = None,
) -> tuple[NetworkConfig, TrainingConfig]:
    """Keyword options over the given (or default) configurations; unknown names fail."""
    unknown = sorted(set(options) - _NETWORK - _TRAINING)
    if unknown:
        raise TypeError(
            f"Unknown option(s) {unknown}: options are the fields of NetworkConfig "
            f"({sorted(_NETWORK)}) and TrainingConfig ({sorted(_TRAINING)})."
        )
    for name, given, kind in (
        ("network", network, NetworkConfig),
        ("training", training, TrainingConfig),
    ):
        if given is not None and not isinstance(given, kind):
            raise TypeError(
                f"{name} must be a {kind.__name__} (or None), got {type(given).__name__}: "
                f"write {name}=abi.{kind.__name__}(...), or pass its fields as keyword options."
            )
    net = {k: v for k, v in options.items() if k in _NETWORK}
    train = {k: v for k, v in options.items() if k in _TRAINING}
    return (
        dataclasses.replace(network or NetworkConfig(), **net),
        dataclasses.replace(training or TrainingConfig(), **train),
    )
